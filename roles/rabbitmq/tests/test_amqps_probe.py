"""Unit tests of kit_amqps_probe against an in-process TLS server that acts as an AMQPS listener.

Run: ``pytest roles/rabbitmq/tests`` (cryptography and ansible-core, in the kit's virtualenv). The server
requires a client certificate from its trusted CAs (TLS 1.3, so a refusal comes as an alert after the
handshake, as with RabbitMQ) and answers the protocol header with a method frame.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import pathlib
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "library"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, LIBRARY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


probe_mod = load("kit_amqps_probe")


class Ca:
    def __init__(self, name: str = "Celery kit CA (unit)") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, directory: pathlib.Path, name: str, usage: Any) -> tuple[str, str, int]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=3))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256()))
        key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return str(cert_path), str(key_path), serial


def pem(*cas: Ca) -> bytes:
    return b"".join(ca.cert.public_bytes(serialization.Encoding.PEM) for ca in cas)


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[dict[str, Any]]:
    """A broker trusting the old CA only (its server certificate from the old CA), and the old and new CAs."""
    old, new = Ca(), Ca()  # one name, two keys: a rotated CA
    trusted = tmp_path / "broker-trust.pem"
    trusted.write_bytes(pem(old))
    server_cert, server_key, server_serial = old.issue(tmp_path, "broker", ExtendedKeyUsageOID.SERVER_AUTH)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(trusted))
    context.load_cert_chain(server_cert, server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    if tls.recv(8) == probe_mod.AMQP_HEADER:
                        tls.sendall(b"\x01\x00\x00\x00\x00\x00\x04")
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_bundle = tmp_path / "client-trust.pem"
    client_bundle.write_bytes(pem(old, new))
    yield {"old": old, "new": new, "port": listener.getsockname()[1], "dir": tmp_path, "bundle": str(client_bundle),
           "trusted": trusted, "server_serial": f"{server_serial:x}"}
    stop.set()
    thread.join(2)
    listener.close()


def run(lab: dict[str, Any], ca: Ca, name: str) -> dict[str, Any]:
    cert, key, _ = ca.issue(lab["dir"], name, ExtendedKeyUsageOID.CLIENT_AUTH)
    return probe_mod.probe({"host": "127.0.0.1", "port": lab["port"], "server_hostname": "broker",
                            "ca_path": lab["bundle"], "cert_path": cert, "key_path": key, "timeout": 5})


def test_a_client_of_a_trusted_ca_is_accepted(lab: dict[str, Any]) -> None:
    result = run(lab, lab["old"], "client-old")
    assert result["accepted"], result
    assert result["served_serial"] == lab["server_serial"]


def test_a_client_of_a_ca_the_broker_does_not_trust_yet_is_refused(lab: dict[str, Any]) -> None:
    """The handshake completes on the client's side (TLS 1.3); the refusal is the alert at the first read."""
    result = run(lab, lab["new"], "client-new")
    assert not result["accepted"], result
    assert "SSL" in result["detail"] or "no Connection.Start" in result["detail"], result


def test_a_server_certificate_for_another_name_is_refused(lab: dict[str, Any]) -> None:
    cert, key, _ = lab["old"].issue(lab["dir"], "client-old", ExtendedKeyUsageOID.CLIENT_AUTH)
    result = probe_mod.probe({"host": "127.0.0.1", "port": lab["port"], "server_hostname": "other",
                              "ca_path": lab["bundle"], "cert_path": cert, "key_path": key, "timeout": 5})
    assert not result["accepted"] and "CERTIFICATE_VERIFY_FAILED" in result["detail"], result
