"""Who may not write to the server: another CA, no certificate, plain TCP/UDP, old TLS."""

from __future__ import annotations

import os
import time

import pytest
from kit_testlib import Handshake, foreign_ca, quote, sign_with_kit_ca, tls_handshake, wait_for

from conftest import CLIENT, REMOTE_FILES, SERVER, found_on_server, lab, marker

ROGUE = "/tmp/rogue"
CA = "/etc/ssl/certs/celery-kit-ca.pem"
CERT = f"/etc/ssl/certs/{CLIENT}.pem"
KEY = f"/etc/ssl/private/{CLIENT}.key"


@pytest.fixture(scope="module")
def rogue_pki():
    """A second CA made in the test (never committed), and a cert that claims the client's own name."""
    pki = foreign_ca(lab(CLIENT), ROGUE, CLIENT)
    yield pki.cert, pki.key
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


def _delivered_by_second_rsyslog(name: str, cert: str, key: str, *, peer: str = SERVER, timeout: float = 20,
                                 path: str = "/var/log") -> bool:
    """Send one marked line through a second rsyslogd using CERT (logger must succeed); whether it arrived."""
    sock = _second_rsyslog(name, cert, key, peer)
    text = marker(f"{name}-sender-")
    try:
        lab(CLIENT).check_output(f"logger -u {sock} -t {name} {quote(text)}")
        return found_on_server(text, timeout=timeout, path=path)
    finally:
        _stop_second_rsyslog(name)


def test_control_a_second_sender_with_the_kit_cert_does_deliver(rogue_pki):
    """Proves the rogue test below fails for the certificate, not for the way it sends."""
    assert _delivered_by_second_rsyslog("control", CERT, KEY, timeout=60, path=REMOTE_FILES)


def test_a_client_with_a_cert_from_another_ca_cannot_write(rogue_pki):
    cert, key = rogue_pki
    assert not _delivered_by_second_rsyslog("rogue", cert, key)
    # The server saw and refused the handshake.
    journal = lab(SERVER).check_output("journalctl -u rsyslog --since '-2min' --no-pager -o cat")
    assert "imrelp" in journal or "relp" in journal.lower(), journal


def _relp_session(handshake: Handshake) -> bool:
    """Did the server accept the TLS session?

    The probe's line is no RELP frame: librelp answers "0 serverclose 0" and
    drops the TCP connection without a TLS close_notify, which OpenSSL 3.5's
    s_client (Debian 13) reports as "unexpected eof", whenever that answer
    arrives before s_client quits. An answer at the RELP layer means the server
    accepted the session, so it counts as accepted too.
    """
    verified = "Verify return code: 0 (ok)" in handshake.output
    return handshake.accepted or (verified and "serverclose" in handshake.output)


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_the_tls_handshake_fails_for_a_foreign_cert_and_succeeds_for_the_kit_cert(rogue_pki, version):
    cert, key = rogue_pki
    good = tls_handshake(lab(CLIENT), SERVER, 6514, ca=CA, cert=CERT, key=KEY, version=version, server_name=SERVER)
    assert _relp_session(good), good.output
    bad = tls_handshake(lab(CLIENT), SERVER, 6514, ca=CA, cert=cert, key=key, version=version, server_name=SERVER)
    assert not _relp_session(bad), bad.output


def test_a_client_without_a_certificate_is_refused():
    """The positive twin is the kit-cert handshake above, through the same probe."""
    out = tls_handshake(lab(CLIENT), SERVER, 6514, ca=CA, server_name=SERVER)
    assert not _relp_session(out), out.output
    assert "certificate required" in out.output or "alert" in out.output.lower(), out.output


@pytest.mark.parametrize("old", ["-tls1", "-tls1_1"])
def test_tls_before_1_2_is_refused(old):
    # SECLEVEL=0 lets our own client offer the old version, so the refusal is the server's.
    out = lab(CLIENT).run(
        f"echo | timeout 10 openssl s_client -connect {SERVER}:6514 {old} -cipher 'DEFAULT:@SECLEVEL=0' "
        f"-CAfile {CA} -cert {CERT} -key {KEY} 2>&1").stdout
    assert "protocol version" in out or "no protocols available" in out, out
    assert "Cipher is (NONE)" in out or "no protocols available" in out, out


PLAIN_CONTROL = "/tmp/plain-control"
PLAIN_CONTROL_PORT = 10514


@pytest.fixture(scope="module")
def plain_listener():
    """A throwaway plain syslog listener on the server (TCP and UDP): where plain senders DO get through."""
    server = lab(SERVER)
    conf = f"""global(workDirectory="{PLAIN_CONTROL}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" port="{PLAIN_CONTROL_PORT}")
input(type="imudp" port="{PLAIN_CONTROL_PORT}")
action(type="omfile" file="{PLAIN_CONTROL}/plain.log")
"""
    server.check_output(f"rm -rf {PLAIN_CONTROL}; install -d -m 0700 {PLAIN_CONTROL} && "
                        f"cat > {PLAIN_CONTROL}/rsyslog.conf <<'EOF'\n{conf}EOF")
    server.check_output(f"rsyslogd -f {PLAIN_CONTROL}/rsyslog.conf -i {PLAIN_CONTROL}/pid")
    assert wait_for(lambda: server.run(f"ss -Htln 'sport = :{PLAIN_CONTROL_PORT}'").rc == 0 and server.run(
        f"ss -Htln 'sport = :{PLAIN_CONTROL_PORT}'").stdout.strip() != "", 20)
    yield PLAIN_CONTROL_PORT
    server.run(f"kill $(cat {PLAIN_CONTROL}/pid); rm -rf {PLAIN_CONTROL}")


@pytest.mark.parametrize("flag", ["-T", "-d"], ids=["tcp", "udp"])
def test_control_a_plain_sender_reaches_a_plain_listener(plain_listener, flag):
    """Proves the plain-sender probe below can see a delivery: same logger, same grep, a listener that accepts."""
    text = marker("plain-control-")
    sent = lab(CLIENT).run(f"logger -n {SERVER} -P {plain_listener} {flag} -t plain {quote(text)}")
    assert sent.rc == 0, sent.stderr
    assert found_on_server(text, timeout=20, path=PLAIN_CONTROL)


# (how, logger's exit code): UDP sends without an answer; plain TCP to the
# TLS port is accepted by the kernel and then dropped by rsyslog; plain TCP to
# 514 finds no listener, so logger itself must fail.
@pytest.mark.parametrize(("how", "rc_ok"), [
    ("-P 514 -d", True),      # plain UDP syslog
    ("-P 514 -T", False),     # plain TCP syslog: nothing listens
    ("-P 6514 -T", True),     # plain TCP to the TLS port
    ("-P 6514 -d", True),     # UDP to the TLS port
], ids=["udp-514", "tcp-514", "tcp-6514", "udp-6514"])
def test_plain_senders_cannot_write(how, rc_ok):
    text = marker("plain-sender-")
    sent = lab(CLIENT).run(f"logger -n {SERVER} {how} -t plain {quote(text)}")
    assert (sent.rc == 0) is rc_ok, f"rc={sent.rc} {sent.stderr}"
    assert not found_on_server(text, timeout=10, path="/var/log")


# The lab CA made by the pki role on the controller (molecule.yml: pki_deployment molecule-logging).
KIT_CA_DIR = os.path.expanduser("~/.local/share/celery-kit/molecule-logging/ca")


@pytest.fixture(scope="module")
def kit_cert_with_an_unlisted_name(rogue_pki):
    """A certificate of the kit's own CA whose name is not a managed host: chain valid, name refused."""
    host = lab(CLIENT)
    pem = sign_with_kit_ca(host, KIT_CA_DIR, f"{ROGUE}/intruder.key", "intruder")
    host.check_output(f"cat > {ROGUE}/intruder.pem <<'EOF'\n{pem}EOF")
    host.check_output(f"openssl verify -CAfile {CA} {ROGUE}/intruder.pem")
    return f"{ROGUE}/intruder.pem", f"{ROGUE}/intruder.key"


def test_a_kit_certificate_with_a_name_not_permitted_cannot_write(kit_cert_with_an_unlisted_name):
    cert, key = kit_cert_with_an_unlisted_name
    assert not _delivered_by_second_rsyslog("intruder", cert, key)
    # Refused for its name, after the chain checked out (rsyslog's spelling).
    journal = lab(SERVER).check_output("journalctl -u rsyslog --since '-3min' --no-pager -o cat")
    assert "no permited name found', peer is 'DNSname: intruder" in journal, journal


def test_a_client_refuses_a_server_whose_certificate_names_another_host(rogue_pki):
    """The client side of the name check: the real server's cert does not name 'not-the-log-server'."""
    assert not _delivered_by_second_rsyslog("wrongpeer", CERT, KEY, peer="not-the-log-server")
