"""The pki role, checked on the hosts and on the controller.

What a security reviewer asks: are the keys where they should be, owned and
moded tightly, do the certificates chain to the deployment CA with the right
names and usages, and did no private key reach the controller?
"""

from __future__ import annotations

import datetime
import pathlib

import pytest
import testinfra
from kit_testlib import (
    Case,
    PlaybookRun,
    Verdict,
    assert_refused_and_unchanged,
    assert_verdict,
    lab,
    playbook,
    run_preflight_cases,
)

PLAYBOOK = pathlib.Path(__file__).resolve().parents[3] / "playbooks" / "pki.yml"
CA_DIR = pathlib.Path.home() / ".local/share/celery-kit/molecule-pki/ca"
CA_BUNDLE = "/etc/ssl/certs/celery-kit-ca.pem"
HOSTS = ["pki-broker", "pki-worker"]


def _host(name: str) -> testinfra.host.Host:
    return lab(name)


@pytest.fixture(params=HOSTS)
def node(request: pytest.FixtureRequest) -> tuple[str, testinfra.host.Host]:
    return request.param, _host(request.param)


def test_ca_bundle_is_installed_world_readable(node):
    _, host = node
    bundle = host.file(CA_BUNDLE)
    assert bundle.exists
    assert (bundle.user, bundle.group, bundle.mode) == ("root", "root", 0o644)
    assert bundle.content_string == (CA_DIR / "ca.pem").read_text()


def _subject(host: testinfra.host.Host, pem: str) -> str:
    # RFC 2253 prints "subject=CN=x" on OpenSSL 3.0 (Debian 12) and 3.5
    # (Debian 13) alike; the default format changed from "CN = x" to "CN=x".
    return host.check_output(f"openssl x509 -in {pem} -noout -subject -nameopt RFC2253")


def test_host_key_is_private_to_root(node):
    name, host = node
    key = host.file(f"/etc/ssl/private/{name}.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    private_dir = host.file("/etc/ssl/private")
    assert (private_dir.user, private_dir.group, private_dir.mode) == ("root", "ssl-cert", 0o710)


def test_host_cert_chains_to_the_deployment_ca(node):
    name, host = node
    cert = host.file(f"/etc/ssl/certs/{name}.pem")
    assert cert.mode == 0o644
    verify = host.run(f"openssl verify -CAfile {CA_BUNDLE} -purpose sslserver /etc/ssl/certs/{name}.pem")
    assert verify.rc == 0, verify.stderr
    verify = host.run(f"openssl verify -CAfile {CA_BUNDLE} -purpose sslclient /etc/ssl/certs/{name}.pem")
    assert verify.rc == 0, verify.stderr


def test_host_key_matches_its_cert(node):
    name, host = node
    key_pub = host.check_output(f"openssl pkey -in /etc/ssl/private/{name}.key -pubout")
    cert_pub = host.check_output(f"openssl x509 -in /etc/ssl/certs/{name}.pem -noout -pubkey")
    assert key_pub == cert_pub


def test_host_cert_names_the_host_and_its_addresses(node):
    name, host = node
    text = host.check_output(f"openssl x509 -in /etc/ssl/certs/{name}.pem -noout -ext subjectAltName")
    assert f"DNS:{name}" in text
    for address in host.interface("eth0").addresses:
        if ":" not in address:
            assert f"IP Address:{address}" in text
    assert _subject(host, f"/etc/ssl/certs/{name}.pem") == f"subject=CN={name}"


def test_signing_cert_is_not_a_tls_identity():
    host = _host("pki-worker")
    key = host.file("/etc/celery-kit/signing/signer.key")
    assert (key.user, key.mode) == ("root", 0o600)
    pem = "/etc/celery-kit/signing/signer.pem"
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} {pem}").rc == 0
    # codeSigning only: it must not pass as a server or client cert.
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} -purpose sslserver {pem}").rc != 0
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} -purpose sslclient {pem}").rc != 0
    assert _subject(host, pem) == "subject=CN=signer-demo-worker"
    usage = host.check_output(f"openssl x509 -in {pem} -noout -ext keyUsage")
    assert "Digital Signature" in usage and "Key Encipherment" not in usage


def test_signing_key_without_a_type_is_rsa_3072():
    """pki_issue_default_key_type (rsa) when the caller names no type: what stock Celery can verify."""
    host = _host("pki-worker")
    text = host.check_output("openssl pkey -in /etc/celery-kit/signing/signer.key -noout -text | head -1")
    assert "3072 bit" in text


EC_SIGNERS = {
    # file stem: (what `openssl pkey -text` prints first, curve line or None)
    "signer-ed25519": ("ED25519 Private-Key:", None),
    "signer-ecdsa-p256": ("Private-Key: (256 bit", "ASN1 OID: prime256v1"),
}


@pytest.mark.parametrize("stem", sorted(EC_SIGNERS))
def test_ec_signing_certificate_has_the_asked_key_type(stem):
    """key_type ed25519 / ecdsa-p256: that key on the host, its certificate from the CA, codeSigning only."""
    host = _host("pki-worker")
    key, pem = f"/etc/celery-kit/signing/{stem}.key", f"/etc/celery-kit/signing/{stem}.pem"
    assert (host.file(key).user, host.file(key).mode) == ("root", 0o600)
    first, curve = EC_SIGNERS[stem]
    text = host.check_output(f"openssl pkey -in {key} -noout -text")
    assert text.startswith(first), text[:80]
    if curve:
        assert curve in text
    # The certificate holds the public key of this very key.
    assert host.check_output(f"openssl pkey -in {key} -pubout") == host.check_output(
        f"openssl x509 -in {pem} -noout -pubkey")
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} {pem}").rc == 0
    assert host.run(f"openssl verify -CAfile {CA_BUNDLE} -purpose sslclient {pem}").rc != 0
    assert _subject(host, pem) == f"subject=CN={stem.replace('signer-', 'signer-demo-')}"


def test_controller_holds_only_the_ca_key():
    keys = sorted(p.name for p in CA_DIR.rglob("*") if p.is_file() and p.suffix in {".key", ".csr"})
    assert keys == ["ca.key"]
    assert (CA_DIR / "ca.key").stat().st_mode & 0o777 == 0o600
    assert CA_DIR.stat().st_mode & 0o777 == 0o700


def test_expiry_report_lists_every_certificate(node):
    name, host = node
    listed = host.file("/etc/ssl/celery-kit-certificates.list").content_string.split()
    assert f"/etc/ssl/certs/{name}.pem" in listed


def _run_playbook(*extra: str) -> PlaybookRun:
    return playbook(PLAYBOOK, *extra)


def _fingerprints() -> list[str]:
    return [
        _host(n).check_output(
            f"openssl x509 -in /etc/ssl/certs/{n}.pem -noout -fingerprint -sha256; sha256sum /etc/ssl/private/{n}.key")
        for n in HOSTS
    ]


# Each refusal message is the role's own (argument spec or preflight), never a
# task name: task names are printed on every run, refused or not.
PREFLIGHT_CASES = [
    Case("good-defaults", "pki", "pki-broker", {}, None),
    Case("good-longer-window", "pki", "pki-broker", {"pki_renew_before_days": 60}, None),
    Case("weak-key", "pki", "pki-broker", {"pki_key_size": 1024},
         "value of pki_key_size must be one of: 2048, 3072, 4096, got: 1024"),
    Case("email-purpose", "pki", "pki-worker",
         {"pki_certificates": [{"name": "x", "common_name": "x", "purpose": "email"}]},
         "and a 'purpose' among"),
    Case("good-ec-key-types", "pki", "pki-worker",
         {"pki_certificates": [{"name": "a", "common_name": "a", "purpose": "signing", "key_type": "ed25519"},
                               {"name": "b", "common_name": "b", "purpose": "signing", "key_type": "ecdsa-p256"}]},
         None),
    Case("dsa-key-type", "pki", "pki-worker",
         {"pki_certificates": [{"name": "x", "common_name": "x", "purpose": "signing", "key_type": "dsa"}]},
         "a 'key_type', if given, must be among rsa, ed25519, ecdsa-p256"),
    Case("bad-default-key-type", "pki", "pki-broker", {"pki_issue_default_key_type": "ecdsa-p521"},
         "value of pki_issue_default_key_type must be one of: rsa, ed25519, ecdsa-p256, got: ecdsa-p521"),
    Case("window-longer-than-lifetime", "pki", "pki-broker", {"pki_renew_before_days": 400},
         "must be greater than pki_renew_before_days (400)"),
    Case("relative-ca-dir", "pki", "pki-broker", {"pki_ca_dir": "relative/ca"},
         "pki_ca_dir must be an absolute path on the controller (got 'relative/ca')"),
    Case("changed-ca-common-name", "pki", "pki-broker", {"pki_ca_common_name": "Another CA"},
         'pki_ca_common_name is "Another CA" but the live CA'),
]


@pytest.fixture(scope="module")
def preflight_verdicts() -> dict[str, Verdict]:
    return run_preflight_cases(PREFLIGHT_CASES)


@pytest.mark.parametrize("case", PREFLIGHT_CASES, ids=lambda c: c.name)
def test_preflight_refuses_bad_input_and_accepts_good(case, preflight_verdicts):
    assert_verdict(case, preflight_verdicts[case.name])


def test_bad_input_stops_the_real_play_before_any_change():
    """The role's own entry point runs its checks first: no host changes, no key or cert is replaced."""
    assert_refused_and_unchanged(
        lambda: _run_playbook("-e", '{"pki_key_size": 1024}'),
        "value of pki_key_size must be one of: 2048, 3072, 4096, got: 1024",
        HOSTS,
        _fingerprints,
    )


def _days_left(host: testinfra.host.Host, pem: str) -> int:
    end = host.check_output(f"openssl x509 -in {pem} -noout -enddate").split("=", 1)[1]
    expires = datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=datetime.UTC)
    return (expires - datetime.datetime.now(datetime.UTC)).days


def test_renewal_window_reissues_the_cert():
    """A certificate inside pki_renew_before_days is re-issued, the key kept."""
    host = _host("pki-broker")
    pem = "/etc/ssl/certs/pki-broker.pem"
    key_before = host.check_output("sha256sum /etc/ssl/private/pki-broker.key")
    cert_before = host.check_output(f"openssl x509 -in {pem} -noout -serial")
    # Put the current certificate inside the window, whatever its lifetime.
    window = _days_left(host, pem) + 5
    result = _run_playbook(
        "-e", f'{{"pki_renew_before_days": {window}, "pki_cert_valid_days": {window + 30}}}',
        "--limit", "pki-broker",
    )
    assert result.returncode == 0, result.tail()
    assert host.check_output("sha256sum /etc/ssl/private/pki-broker.key") == key_before
    assert host.check_output(f"openssl x509 -in {pem} -noout -serial") != cert_before
    assert _days_left(host, pem) >= window + 28
    # With the defaults the new certificate is kept: nothing more to do.
    again = _run_playbook("--limit", "pki-broker")
    assert again.returncode == 0, again.tail()
    assert again.changed("pki-broker") == 0, again.tail()
