"""Unit tests of the pki role's read-only modules with CAs made in a temp dir (no host, no Ansible run).

Run: ``pytest roles/pki/tests`` (needs cryptography and ansible-core, both in the kit's virtualenv).
The CA rotation relies on these: a certificate of either CA of a bundle is issued by the
deployment CA for kit_certificate_state, and kit_certificate_report names which CA signed each
certificate, even when the old and the new CA share one subject (a rotated CA keeps its name).
"""

from __future__ import annotations

import datetime as dt
import grp
import importlib.util
import os
import pathlib
import pwd
import sys
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "library"
CA_NAME = "Celery kit CA (unit)"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


state_mod = load("kit_certificate_state")
report_mod = load("kit_certificate_report")


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(name: str = CA_NAME) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca: tuple[Any, x509.Certificate], key: Any, cn: str = "host1", days: int = 365) -> x509.Certificate:
    ca_key, ca_cert = ca
    now = dt.datetime.now(dt.UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(ca_key, hashes.SHA256()))


@pytest.fixture
def host(tmp_path: pathlib.Path) -> dict[str, Any]:
    """A key and its certificate from the old CA in tmp_path, owned by the test's own user."""
    old, new = make_ca(), make_ca()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_dir, cert_dir = tmp_path / "private", tmp_path / "certs"
    key_dir.mkdir(mode=0o700)
    cert_dir.mkdir(mode=0o755)
    key_path, cert_path = key_dir / "host1.key", cert_dir / "host1.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(pem(issue(old, key)))
    cert_path.chmod(0o644)
    manifest = tmp_path / "certificates.list"
    manifest.write_text(f"{cert_path}\n")
    manifest.chmod(0o644)
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    params = {
        "key_path": str(key_path), "key_type": "rsa", "key_size": 2048, "key_owner": user, "key_group": group,
        "key_mode": "0600", "key_dir_owner": user, "key_dir_group": group, "key_dir_mode": "0700",
        "cert_path": str(cert_path), "check_cert_dir": False, "supplementary_group": None,
        "common_name": "host1", "subject_alt_names": ["DNS:host1"], "key_usage": ["digitalSignature", "keyEncipherment"],
        "extended_key_usage": ["serverAuth"], "ca_certificate": pem(old[1]).decode(), "renew_before_days": 30,
        "manifest_path": str(manifest),
    }
    return {"old": old, "new": new, "key": key, "params": params, "cert_path": cert_path, "manifest": manifest}


def reasons(params: dict[str, Any]) -> list[str]:
    # The manifest and the files belong to the test's user, not root: only these two checks differ.
    return [r for r in state_mod.state(params) if "owner is not root" not in r and "group is not root" not in r]


def test_state_current_for_the_ca_that_issued_it(host: dict[str, Any]) -> None:
    assert reasons(host["params"]) == []


def test_state_refuses_a_same_named_ca_with_another_key(host: dict[str, Any]) -> None:
    """A rotated CA keeps the old one's subject: the issuer name matches, only the signature tells."""
    params = dict(host["params"], ca_certificate=pem(host["new"][1]).decode())
    assert host["new"][1].subject == host["old"][1].subject
    assert reasons(params) == ["the certificate was not issued by the deployment CA"]


@pytest.mark.parametrize("order", ["old-first", "new-first"])
def test_state_accepts_a_certificate_of_either_ca_of_a_bundle(host: dict[str, Any], order: str) -> None:
    cas = [pem(host["old"][1]), pem(host["new"][1])]
    bundle = b"".join(cas if order == "old-first" else cas[::-1]).decode()
    params = dict(host["params"], ca_certificate=bundle)
    assert reasons(params) == []
    host["cert_path"].write_bytes(pem(issue(host["new"], host["key"])))
    assert reasons(params) == []
    # ... and a certificate of a third CA is still refused.
    host["cert_path"].write_bytes(pem(issue(make_ca(), host["key"])))
    assert reasons(params) == ["the certificate was not issued by the deployment CA"]


def test_state_refuses_an_empty_ca(host: dict[str, Any]) -> None:
    problems = reasons(dict(host["params"], ca_certificate="not a PEM"))
    assert len(problems) == 1 and "cannot read the certificate or the CA" in problems[0]


def test_report_names_the_ca_that_signed_each_certificate(host: dict[str, Any], tmp_path: pathlib.Path) -> None:
    old, new = host["old"][1], host["new"][1]
    bundle = tmp_path / "celery-kit-ca.pem"
    bundle.write_bytes(pem(old) + pem(new))
    other = tmp_path / "other.pem"
    other.write_bytes(pem(issue(host["new"], host["key"], cn="other")))
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(pem(issue(make_ca(), host["key"], cn="stranger")))
    cas = report_mod.fingerprinted((pem(old) + pem(new)).decode())
    now = dt.datetime.now(dt.UTC)
    entries = [e for p in (host["cert_path"], other, stranger, bundle) for e in report_mod.read(str(p), 30, now, cas)]
    fp_old, fp_new = (c.fingerprint(hashes.SHA256()).hex() for c in (old, new))
    assert [(e["common_name"], e["issued_by"]) for e in entries] == [
        ("host1", fp_old), ("other", fp_new), ("stranger", ""), (CA_NAME, fp_old), (CA_NAME, fp_new)]
    assert entries[0]["serial"] == f"{x509.load_pem_x509_certificate(host['cert_path'].read_bytes()).serial_number:x}"


def test_report_without_cas_says_nothing_about_issuers(host: dict[str, Any]) -> None:
    entries = report_mod.read(str(host["cert_path"]), 30, dt.datetime.now(dt.UTC))
    assert "issued_by" not in entries[0] and entries[0]["days_left"] >= 364


def test_report_marks_a_missing_file_unreadable(tmp_path: pathlib.Path) -> None:
    entries = report_mod.read(str(tmp_path / "gone.pem"), 30, dt.datetime.now(dt.UTC), [])
    assert entries[0]["path"].endswith("gone.pem") and "error" in entries[0]


def test_report_refuses_a_ca_list_without_certificates() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        report_mod.fingerprinted("nothing here")
