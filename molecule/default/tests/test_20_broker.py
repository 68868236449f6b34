"""The broker as the app hosts see it: TLS only, mutual TLS, least-privilege users.

Every probe runs on the client (a managed host with a broker client
certificate) against kit-broker, with the client's own venv python.
"""

from __future__ import annotations

import pathlib

import pytest

from conftest import BROKER, TOOLS, as_app_user, json_line

SECRETS = pathlib.Path.home() / ".local/share/celery-kit/lab/secrets"
CERT = "/etc/ssl/certs/celery-demo-broker-client.pem"
KEY = "/etc/ssl/private/celery-demo-broker-client.key"
PROBE = f"{TOOLS}/probe.py"


def lab_password(user: str) -> str:
    return (SECRETS / f"rabbitmq-{user}").read_text().strip()


def probe(client, *args: str, stdin: str | None = None) -> dict:
    return json_line(as_app_user(client, PROBE, *args, stdin=stdin))


def amqp(client, user: str, password: str, op: str, arg: str = "") -> dict:
    args = ["amqp", BROKER, "5671", "/demo", user, op]
    if arg:
        args.append(arg)
    return probe(client, *args, "--cert", CERT, "--key", KEY, stdin=password)


def test_plain_amqp_port_5672_is_refused(client, broker):
    result = probe(client, "tcp", BROKER, "5672")
    assert result["connected"] is False, result
    # In the full stack the firewall drops it (a time-out) before RabbitMQ
    # could refuse it; the broker itself must not listen there either.
    error = result["error"].lower()
    assert "refused" in error or "timed out" in error, result
    assert ":5672 " not in broker.check_output("ss -Hltn")


def test_tls_with_the_client_certificate_is_accepted(client):
    result = probe(client, "tls", BROKER, "5671", "--cert", CERT, "--key", KEY)
    assert result["accepted"] is True, result
    assert result["version"] in ("TLSv1.2", "TLSv1.3")


def test_tls_without_a_client_certificate_is_refused(client):
    result = probe(client, "tls", BROKER, "5671")
    assert result["accepted"] is False, result
    print(result)


@pytest.fixture(scope="module")
def foreign_cert(client):
    """A client certificate from a CA the broker does not trust, CN = a real user."""
    script = r"""
import datetime as dt, os
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
now = dt.datetime.now(dt.timezone.utc)
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ca = (x509.CertificateBuilder().subject_name(name("Foreign CA")).issuer_name(name("Foreign CA"))
      .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
      .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
cert = (x509.CertificateBuilder().subject_name(name("demo-producer")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
os.makedirs("/var/lib/celery-kit/demo/foreign", mode=0o700, exist_ok=True)
open("/var/lib/celery-kit/demo/foreign/client.pem", "wb").write(cert.public_bytes(serialization.Encoding.PEM))
fd = os.open("/var/lib/celery-kit/demo/foreign/client.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
os.close(fd)
"""
    result = as_app_user(client, "-c", script)
    assert result.rc == 0, result.stderr
    yield "/var/lib/celery-kit/demo/foreign/client.pem", "/var/lib/celery-kit/demo/foreign/client.key"
    client.run("rm -rf /var/lib/celery-kit/demo/foreign")


def test_client_certificate_from_another_ca_is_refused(client, foreign_cert):
    cert, key = foreign_cert
    result = probe(client, "tls", BROKER, "5671", "--cert", cert, "--key", key)
    assert result["accepted"] is False, result
    print(result)


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_versions_are_refused(client, version):
    result = probe(client, "tls", BROKER, "5671", "--cert", CERT, "--key", KEY, "--max-version", version)
    assert result["accepted"] is False, result
    assert result["stage"] == "handshake", result
    print(result)


def test_guest_cannot_log_in(client):
    result = amqp(client, "guest", "guest", "login")
    assert result["allowed"] is False and result["stage"] == "login", result


def test_producer_can_log_in_and_publish_to_its_exchange(client):
    # The positive control for the refusals below (unroutable routing key:
    # nothing reaches the worker).
    result = amqp(client, "demo-producer", lab_password("demo-producer"), "publish", "celery")
    assert result["allowed"] is True, result


@pytest.mark.parametrize(
    ("op", "arg"),
    [("consume", "celery"), ("declare", "celery"), ("declare", "evil"), ("delete", "celery")],
)
def test_producer_cannot_consume_declare_or_delete_queues(client, op, arg):
    result = amqp(client, "demo-producer", lab_password("demo-producer"), op, arg)
    assert result["allowed"] is False, result
    assert "ACCESS_REFUSED" in result["error"] or "403" in result["error"], result


def test_producer_cannot_publish_to_the_default_exchange(client):
    result = amqp(client, "demo-producer", lab_password("demo-producer"), "publish", "")
    assert result["allowed"] is False, result


def test_monitor_cannot_publish(client):
    result = amqp(client, "demo-monitor", lab_password("demo-monitor"), "publish", "celery")
    assert result["allowed"] is False, result
    assert "ACCESS_REFUSED" in result["error"] or "403" in result["error"], result


def test_worker_credentials_cannot_publish_tasks(client):
    result = amqp(client, "demo-worker", lab_password("demo-worker"), "publish", "celery")
    assert result["allowed"] is False, result
