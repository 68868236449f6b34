"""Signer key types: RSA, Ed25519 and ECDSA P-256 sign and verify; anything else is refused."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest
from attack import pack
from celery import Celery
from conftest import PKI, write_private
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

import security_lib
from security_lib import CertificateError, CertStoreError, KeyCertMismatchError
from security_lib.certs import (
    StoreEntry,
    identity_of,
    load_cert_store,
    load_certificate,
    load_private_key,
)
from security_lib.serializer import KitSerializer, VerificationError
from security_lib.signing import key_type

KEY_TYPES = ("rsa", "ed25519", "ecdsa-p256")


def serializers(pki: PKI) -> tuple[KitSerializer, KitSerializer]:
    """Return (client signer, verifier trusting every store signer) built as harden() does."""
    store = {}
    for issued in (pki.worker, pki.client, pki.other):
        ident = identity_of(issued.certificate)
        public = issued.certificate.public_key()
        store[ident.celery_id] = StoreEntry(issued.cert, issued.certificate, public, ident)  # type: ignore[arg-type]
    signer = KitSerializer(key=pki.client.private_key, cert=pki.client.certificate, store={})
    return signer, KitSerializer(key=None, cert=None, store=store)


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_each_key_type_signs_and_verifies(pki_of: Callable[[str], PKI], kind: str) -> None:
    signer, verifier = serializers(pki_of(kind))
    body = [[1, "x" * 10_000], {"k": "v"}, {"security_lib": None}]
    verified = verifier.verify(signer.serialize(body))
    assert verified.data == body
    assert verified.signer.common_name == "signer-client"
    assert key_type(pki_of(kind).client.private_key) in {"rsa-2048", "ed25519", "ecdsa-p256"}


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_each_key_type_refuses_a_tampered_body(pki_of: Callable[[str], PKI], kind: str) -> None:
    signer, verifier = serializers(pki_of(kind))
    raw = base64.b64decode(signer.serialize([["pay 10"], {}, {}]))
    forged = base64.b64encode(raw.replace(b"pay 10", b"pay 99"))
    with pytest.raises(VerificationError) as info:
        verifier.verify(forged)
    assert info.value.reason == "bad-signature"


@pytest.mark.parametrize(("claimed", "real"), [("ed25519", "rsa"), ("rsa", "ed25519")])
def test_the_certificate_decides_the_algorithm(
    pki_of: Callable[[str], PKI], claimed: str, real: str
) -> None:
    """A signature by another key (of another type) under a signer's id is a bad signature."""
    _, verifier = serializers(pki_of(claimed))
    body = b'[["x"], {}, {}]'
    ident = identity_of(pki_of(claimed).client.certificate)
    payload = pack(
        ident.celery_id, pki_of(real).client.sign(body), "application/json", "utf-8", body
    )
    with pytest.raises(VerificationError) as info:
        verifier.verify(payload)
    assert info.value.reason == "bad-signature"


def test_ecdsa_signer_hardens_an_app(pki_of: Callable[[str], PKI]) -> None:
    """harden() no longer goes through Celery's RSA-only setup_security()."""
    ec_pki = pki_of("ecdsa-p256")
    app = Celery("ec", broker="memory://", set_as_current=False)
    result = security_lib.harden(
        app,
        key=ec_pki.worker.key,
        cert=ec_pki.worker.cert,
        cert_store=ec_pki.store,
        allowed_tasks={"signer-client": ["ec.*"]},
        allow_insecure_broker=True,
    )
    assert result.signer.common_name == "signer-worker"
    assert app.conf.task_serializer == "auth"


def _self_signed(
    tmp_path: Path, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> Path:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"signer-{name}")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        tmp_path / f"{name}.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return path


@pytest.mark.parametrize(
    ("name", "make", "why"),
    [
        ("p521", lambda: ec.generate_private_key(ec.SECP521R1()), "curve secp521r1"),
        (
            "rsa1024",
            lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505 - the weak key to refuse
            "RSA key of 1024 bits",
        ),
    ],
)
def test_unsupported_keys_are_refused_by_name(
    tmp_path: Path, name: str, make: Callable[[], rsa.RSAPrivateKey], why: str
) -> None:
    cert = _self_signed(tmp_path, name, make())
    with pytest.raises(CertificateError, match=why) as info:
        load_certificate(cert, "cert")
    assert str(cert) in str(info.value)
    with pytest.raises(CertificateError, match=why):
        load_private_key(tmp_path / f"{name}.key", None)
    store = tmp_path / "store"
    store.mkdir()
    (store / cert.name).write_bytes(cert.read_bytes())
    with pytest.raises(CertStoreError, match=why):
        load_cert_store(store, now=dt.datetime.now(dt.timezone.utc), warning_days=1)


def test_good_keys_load(pki_of: Callable[[str], PKI]) -> None:
    """The positive twin of the refusals above."""
    for kind in KEY_TYPES:
        issued = pki_of(kind).client
        assert load_certificate(issued.cert, "cert") == issued.certificate
        load_private_key(issued.key, None)


def test_key_of_another_type_does_not_match_the_certificate(pki_of: Callable[[str], PKI]) -> None:
    app = Celery("mismatch", broker="memory://", set_as_current=False)
    ec_pki, ed_pki = pki_of("ecdsa-p256"), pki_of("ed25519")
    with pytest.raises(KeyCertMismatchError):
        security_lib.harden(
            app,
            key=ed_pki.worker.key,
            cert=ec_pki.worker.cert,
            cert_store=ec_pki.store,
            allowed_tasks={"signer-client": ["x.*"]},
            allow_insecure_broker=True,
        )
    assert app.conf.task_serializer != "auth"  # nothing applied
