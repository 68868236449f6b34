"""Who may not write to the server: another CA, no certificate, plain TCP/UDP, old TLS."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import pytest

from conftest import CLIENT, SERVER, found_on_server, lab, marker

ROGUE = "/tmp/rogue"
CA = "/etc/ssl/certs/celery-kit-ca.pem"
CERT = f"/etc/ssl/certs/{CLIENT}.pem"
KEY = f"/etc/ssl/private/{CLIENT}.key"


@pytest.fixture(scope="module")
def rogue_pki():
    """A second CA made in the test (never committed), and a cert that claims the client's own name."""
    lab(CLIENT).check_output(
        f"set -e; rm -rf {ROGUE}; install -d -m 0700 {ROGUE}; cd {ROGUE}; "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj '/CN=Rogue CA' 2>/dev/null; "
        f"printf 'subjectAltName=DNS:{CLIENT}\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ext.cnf; "
        f"openssl req -newkey rsa:2048 -nodes -keyout host.key -out host.csr -subj '/CN={CLIENT}' 2>/dev/null; "
        "openssl x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out host.pem -days 1 "
        "-extfile ext.cnf 2>/dev/null")
    yield f"{ROGUE}/host.pem", f"{ROGUE}/host.key"
    lab(CLIENT).run(f"rm -rf {ROGUE}")


def _second_rsyslog(name: str, cert: str, key: str, peer: str = SERVER) -> str:
    """Start a separate rsyslogd on the client that forwards to the server with CERT; return its socket."""
    work = f"{ROGUE}/{name}"
    conf = f"""global(workDirectory="{work}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" socket="{work}/log.sock")
module(load="omrelp" tls.tlslib="openssl")
action(type="omrelp" target="{SERVER}" port="6514" tls="on" tls.cacert="{CA}"
  tls.mycert="{cert}" tls.myprivkey="{key}" tls.authMode="name" tls.permittedPeer=["{peer}"]
  tls.tlsCfgCmd="MinProtocol=TLSv1.2" action.resumeRetryCount="-1" action.resumeInterval="2")
"""
    host = lab(CLIENT)
    host.check_output(f"install -d -m 0700 {work} && cat > {work}/rsyslog.conf <<'EOF'\n{conf}EOF")
    host.check_output(f"rsyslogd -f {work}/rsyslog.conf -i {work}/pid")
    time.sleep(1)
    return f"{work}/log.sock"


def _stop_second_rsyslog(name: str) -> None:
    lab(CLIENT).run(f"kill $(cat {ROGUE}/{name}/pid)")


def test_control_a_second_sender_with_the_kit_cert_does_deliver(rogue_pki):
    """Proves the rogue test below fails for the certificate, not for the way it sends."""
    sock = _second_rsyslog("control", CERT, KEY)
    text = marker("control-sender-")
    try:
        lab(CLIENT).check_output(f"logger -u {sock} -t control '{text}'")
        assert found_on_server(text, timeout=60)
    finally:
        _stop_second_rsyslog("control")


def test_a_client_with_a_cert_from_another_ca_cannot_write(rogue_pki):
    cert, key = rogue_pki
    sock = _second_rsyslog("rogue", cert, key)
    text = marker("rogue-sender-")
    try:
        lab(CLIENT).check_output(f"logger -u {sock} -t rogue '{text}'")
        assert not found_on_server(text, timeout=20, path="/var/log")
    finally:
        _stop_second_rsyslog("rogue")
    # The server saw and refused the handshake.
    journal = lab(SERVER).check_output("journalctl -u rsyslog --since '-2min' --no-pager -o cat")
    assert "imrelp" in journal or "relp" in journal.lower(), journal


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_the_tls_handshake_fails_for_a_foreign_cert_and_succeeds_for_the_kit_cert(rogue_pki, version):
    cert, key = rogue_pki
    probe = (f"echo | timeout 10 openssl s_client -connect {SERVER}:6514 {version} -CAfile {CA} "
             f"-verify_hostname {SERVER} -verify_return_error -cert {{cert}} -key {{key}} 2>&1; "
             # TLS 1.3 refuses a client cert after the handshake: read the alert.
             "true")
    good = lab(CLIENT).run(probe.format(cert=CERT, key=KEY)).stdout
    assert "Verify return code: 0 (ok)" in good, good
    assert "alert" not in good.lower(), good
    bad = lab(CLIENT).run(
        f"(sleep 2; printf '1 open 0 \\n\\n') | timeout 10 openssl s_client -connect {SERVER}:6514 {version} "
        f"-CAfile {CA} -cert {cert} -key {key} 2>&1").stdout
    assert "alert" in bad.lower() or "errno" in bad.lower(), bad


def test_a_client_without_a_certificate_is_refused():
    out = lab(CLIENT).run(
        f"(sleep 2; printf '1 open 0 \\n\\n') | timeout 10 openssl s_client -connect {SERVER}:6514 -CAfile {CA} 2>&1"
    ).stdout
    assert "certificate required" in out or "alert" in out.lower(), out


@pytest.mark.parametrize("old", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_is_refused(old):
    # SECLEVEL=0 lets our own client offer the old version, so the refusal is the server's.
    out = lab(CLIENT).run(
        f"echo | timeout 10 openssl s_client -connect {SERVER}:6514 {old} -cipher 'DEFAULT:@SECLEVEL=0' "
        f"-CAfile {CA} -cert {CERT} -key {KEY} 2>&1").stdout
    assert "protocol version" in out or "no protocols available" in out, out
    assert "Cipher is (NONE)" in out or "no protocols available" in out, out


@pytest.mark.parametrize("how", [
    "logger -n {server} -P 514 -d",        # plain UDP syslog
    "logger -n {server} -P 514 -T",        # plain TCP syslog
    "logger -n {server} -P 6514 -T",       # plain TCP to the TLS port
    "logger -n {server} -P 6514 -d",       # UDP to the TLS port
])
def test_plain_senders_cannot_write(how):
    text = marker("plain-sender-")
    lab(CLIENT).run(how.format(server=SERVER) + f" -t plain '{text}'")
    assert not found_on_server(text, timeout=10, path="/var/log")


# The lab CA made by the pki role on the controller (molecule.yml: pki_deployment molecule-logging).
KIT_CA_DIR = os.path.expanduser("~/.local/share/celery-kit/molecule-logging/ca")


@pytest.fixture(scope="module")
def kit_cert_with_an_unlisted_name(rogue_pki):
    """A certificate of the kit's own CA whose name is not a managed host: chain valid, name refused."""
    host = lab(CLIENT)
    csr = host.check_output(
        f"openssl req -new -newkey rsa:2048 -nodes -keyout {ROGUE}/intruder.key -subj '/CN=intruder' 2>/dev/null")
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "req.csr"), "w", encoding="ascii") as handle:
            handle.write(csr + "\n")
        with open(os.path.join(tmp, "ext.cnf"), "w", encoding="ascii") as handle:
            handle.write("subjectAltName=DNS:intruder\nextendedKeyUsage=serverAuth,clientAuth\n")
        subprocess.run(["openssl", "x509", "-req", "-in", "req.csr", "-CA", os.path.join(KIT_CA_DIR, "ca.pem"),
                        "-CAkey", os.path.join(KIT_CA_DIR, "ca.key"), "-set_serial", "4242", "-days", "1",
                        "-extfile", "ext.cnf", "-out", "cert.pem"], cwd=tmp, check=True, capture_output=True)
        with open(os.path.join(tmp, "cert.pem"), encoding="ascii") as handle:
            pem = handle.read()
    host.check_output(f"cat > {ROGUE}/intruder.pem <<'EOF'\n{pem}EOF")
    host.check_output(f"openssl verify -CAfile {CA} {ROGUE}/intruder.pem")
    return f"{ROGUE}/intruder.pem", f"{ROGUE}/intruder.key"


def test_a_kit_certificate_with_a_name_not_permitted_cannot_write(kit_cert_with_an_unlisted_name):
    cert, key = kit_cert_with_an_unlisted_name
    sock = _second_rsyslog("intruder", cert, key)
    text = marker("intruder-sender-")
    try:
        lab(CLIENT).check_output(f"logger -u {sock} -t intruder '{text}'")
        assert not found_on_server(text, timeout=20, path="/var/log")
    finally:
        _stop_second_rsyslog("intruder")
    # Refused for its name, after the chain checked out (rsyslog's spelling).
    journal = lab(SERVER).check_output("journalctl -u rsyslog --since '-3min' --no-pager -o cat")
    assert "no permited name found', peer is 'DNSname: intruder" in journal, journal


def test_a_client_refuses_a_server_whose_certificate_names_another_host(rogue_pki):
    """The client side of the name check: the real server's cert does not name 'not-the-log-server'."""
    sock = _second_rsyslog("wrongpeer", CERT, KEY, peer="not-the-log-server")
    text = marker("wrong-peer-")
    try:
        lab(CLIENT).check_output(f"logger -u {sock} -t wrongpeer '{text}'")
        assert not found_on_server(text, timeout=20, path="/var/log")
    finally:
        _stop_second_rsyslog("wrongpeer")
