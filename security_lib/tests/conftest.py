"""Test PKI made at test time (never committed): a CA, signers, bad certificates."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rabbitmq as rabbitmq_container
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from security_lib.signing import PrivateKey, signer_for

KEY_SIZE = 2048  # production uses 3072; 2048 keeps the test run fast
#: Signer key types the attack tests run with: every type the kit signs with
#: (RSA, what stock Celery can verify; Ed25519, the default; ECDSA P-256).
ATTACK_KEY_TYPES = ("rsa", "ed25519", "ecdsa-p256")


def new_key(key_type: str) -> PrivateKey:
    """Return a fresh signing key of ``key_type`` (rsa, ed25519, ecdsa-p256)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(key_type)


@dataclass(frozen=True)
class Issued:
    cn: str
    key: Path
    cert: Path
    certificate: x509.Certificate
    private_key: PrivateKey

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` as the kit does with this key (sha256 where a digest applies)."""
        return signer_for(self.private_key, hashes.SHA256())(data)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(mode)
    return path


class CA:
    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.dir / "ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        cn: str,
        *,
        not_before: dt.timedelta = dt.timedelta(days=-1),
        not_after: dt.timedelta = dt.timedelta(days=365),
        name: str | None = None,
        key_type: str = "rsa",
    ) -> Issued:
        key = new_key(key_type)
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + not_before)
            .not_valid_after(now + not_after)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        stem = name or cn
        key_path = write_private(
            self.dir / f"{stem}.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        cert_path = self.dir / f"{stem}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return Issued(cn, key_path, cert_path, cert, key)


@dataclass(frozen=True)
class PKI:
    root: Path
    ca: CA
    other_ca: CA
    worker: Issued
    client: Issued
    other: Issued
    rogue: Issued  # issued by another CA, not in the store
    store: Path  # directory with worker, client, other

    def new_store(self, name: str, *issued: Issued) -> Path:
        directory = self.root / "stores" / name
        directory.mkdir(parents=True, exist_ok=True)
        for item in issued:
            (directory / item.cert.name).write_bytes(item.cert.read_bytes())
        return directory


@pytest.fixture(autouse=True)
def _one_identity_per_test() -> None:
    """harden() refuses a second identity per process; each test is its own "process"."""
    from security_lib.hardening import _forget_process_identity

    _forget_process_identity()


def make_pki(root: Path, key_type: str = "rsa") -> PKI:
    """Return a test PKI whose signers have ``key_type`` keys (the CAs stay RSA)."""
    ca = CA("Kit Test CA", root / "ca")
    other_ca = CA("Other CA", root / "other-ca")
    worker = ca.issue("signer-worker", key_type=key_type)
    client = ca.issue("signer-client", key_type=key_type)
    other = ca.issue("signer-other", key_type=key_type)
    rogue = other_ca.issue("signer-client", name="rogue", key_type=key_type)  # same CN, wrong CA
    store = root / "signers"
    store.mkdir()
    for item in (worker, client, other):
        (store / item.cert.name).write_bytes(item.cert.read_bytes())
    return PKI(root, ca, other_ca, worker, client, other, rogue, store)


@pytest.fixture(scope="session")
def pki_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], PKI]:
    """Return a function giving the (session-wide) test PKI of one signer key type."""
    made: dict[str, PKI] = {}

    def of(key_type: str) -> PKI:
        if key_type not in made:
            made[key_type] = make_pki(tmp_path_factory.mktemp(f"pki-{key_type}"), key_type)
        return made[key_type]

    return of


@pytest.fixture(scope="session")
def pki(pki_of: Callable[[str], PKI]) -> PKI:
    """RSA signers; the attack test modules override this with one PKI per key type."""
    return pki_of("rsa")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[rabbitmq_container.RabbitMQ]:
    """A real RabbitMQ on 127.0.0.1 (Docker); skipped without an engine unless required."""
    why = rabbitmq_container.docker_available()
    if why is not None:
        if os.environ.get("SECLIB_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SECLIB_REQUIRE_DOCKER=1 but {why}")
        pytest.skip(f"needs a Docker engine to run a real RabbitMQ ({why})")
    broker = rabbitmq_container.start()
    try:
        yield broker
    finally:
        broker.remove()
