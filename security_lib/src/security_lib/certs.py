"""Certificates and keys: loading, validity, key/cert match and signer identity.

Celery's own classes check less than a deployment needs (no not-before check,
no key/cert match, a terse error). These helpers work on ``cryptography``
objects directly and raise :class:`~security_lib.errors.SecurityConfigError`
subclasses that say which file is wrong and what to do.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .errors import CertificateError, CertStoreError, KeyCertMismatchError
from .files import check_private_key_file, check_readable_file, expand_cert_store, read_bytes
from .signing import PrivateKey, PublicKey, supported_key

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "SignerIdentity",
    "StoreEntry",
    "celery_cert_id",
    "check_key_matches_cert",
    "check_validity",
    "identity_of",
    "load_cert_store",
    "load_certificate",
    "load_private_key",
    "normalize_fingerprint",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class SignerIdentity:
    """Who signed a message, taken from the certificate that verified it.

    ``common_name`` is the subject CN (``signer-<identity>`` by the kit's PKI
    contract), ``fingerprint`` the lowercase hex SHA-256 of the DER
    certificate, and ``celery_id`` the issuer+serial key Celery uses to look
    the certificate up in its store.
    """

    common_name: str
    fingerprint: str
    celery_id: str

    def label(self) -> str:
        """Return the short name used in log lines (the CN, else the fingerprint)."""
        return self.common_name or self.fingerprint


@dataclass(frozen=True)
class StoreEntry:
    """One trusted signer certificate and where it came from."""

    path: Path
    certificate: x509.Certificate
    public_key: PublicKey
    identity: SignerIdentity


def _attr_text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def celery_cert_id(cert: x509.Certificate) -> str:
    """Return the id Celery's ``Certificate.get_id()`` computes (issuer values + serial).

    It is what the ``auth`` wire format carries as the signer reference, so we
    must compute it byte for byte the same way.
    """
    issuer = " ".join(_attr_text(attr.value) for attr in cert.issuer)
    return f"{issuer} {cert.serial_number}"


def identity_of(cert: x509.Certificate) -> SignerIdentity:
    """Return the :class:`SignerIdentity` of a certificate."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = _attr_text(cns[0].value) if cns else ""
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    return SignerIdentity(common_name=cn, fingerprint=fingerprint, celery_id=celery_cert_id(cert))


def normalize_fingerprint(text: str) -> str | None:
    """Return a lowercase, colon-free SHA-256 fingerprint, or None if ``text`` is not one."""
    candidate = text.strip().lower().replace(":", "")
    return candidate if _HEX64.match(candidate) else None


def load_certificate(path: str | os.PathLike[str], setting: str) -> x509.Certificate:
    """Load a PEM certificate whose key the kit verifies with (RSA, Ed25519, ECDSA P-256/P-384)."""
    p = check_readable_file(path, setting)
    try:
        cert = x509.load_pem_x509_certificate(read_bytes(p, setting))
    except ValueError as exc:
        raise CertificateError(
            setting, f"{p} is not a PEM certificate ({exc})", "install the PEM certificate there"
        ) from exc
    unsupported = supported_key(cert.public_key())
    if unsupported is not None:
        raise CertificateError(
            setting,
            f"{p} holds {unsupported}",
            "issue a signing certificate with pki_issue_key_type ed25519, ecdsa-p256 or rsa",
        )
    return cert


def load_private_key(
    path: str | os.PathLike[str], password: str | bytes | None, setting: str = "key"
) -> PrivateKey:
    """Load a signing key (RSA, Ed25519, ECDSA P-256/P-384) after checking its owner and mode."""
    p = check_private_key_file(path, setting)
    pw = password.encode() if isinstance(password, str) else password
    try:
        key = serialization.load_pem_private_key(read_bytes(p, setting), password=pw)
    except TypeError as exc:
        # cryptography: "Password was not given but private key is encrypted" or the reverse.
        raise CertificateError(
            setting, f"private key {p}: {exc}", "pass key_password only for an encrypted key"
        ) from exc
    except ValueError as exc:
        raise CertificateError(
            setting,
            f"private key {p} cannot be loaded (wrong key_password or not a PEM key)",
            "check the file and key_password",
        ) from exc
    unsupported = supported_key(key)
    if unsupported is not None or not isinstance(key, PrivateKey):
        raise CertificateError(
            setting,
            f"private key {p} is {unsupported or 'of an unsupported type'}",
            "generate an Ed25519, ECDSA P-256 or RSA (3072 bits) key",
        )
    return key


def check_key_matches_cert(
    key: PrivateKey, cert: x509.Certificate, key_path: str, cert_path: str
) -> None:
    """Refuse a key that does not belong to the certificate.

    Otherwise every message would be signed with a key the workers cannot
    verify, and the first sign of trouble would be rejected tasks in production.
    """
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    # The DER SubjectPublicKeyInfo names the algorithm and the key: equal for every key type.
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise KeyCertMismatchError(
            "key/cert",
            f"private key {key_path} does not match certificate {cert_path}",
            "install the certificate issued for this key (or the key of this certificate)",
        )


def check_validity(
    cert: x509.Certificate,
    where: str,
    setting: str,
    *,
    now: dt.datetime,
    warning_days: int,
    error_cls: type[CertificateError] | type[CertStoreError] = CertificateError,
) -> str | None:
    """Raise if ``cert`` is expired or not yet valid; return a warning if it expires soon."""
    if now < cert.not_valid_before_utc:
        raise error_cls(
            setting,
            f"certificate {where} is not valid before {cert.not_valid_before_utc.isoformat()}",
            "check the host clock, or wait/re-issue the certificate",
        )
    if now >= cert.not_valid_after_utc:
        raise error_cls(
            setting,
            f"certificate {where} expired on {cert.not_valid_after_utc.isoformat()}",
            "renew it (re-run the pki play) and remove the expired file",
        )
    remaining = cert.not_valid_after_utc - now
    if remaining <= dt.timedelta(days=warning_days):
        return (
            f"certificate {where} expires in {remaining.days} days "
            f"({cert.not_valid_after_utc.isoformat()}); renew it"
        )
    return None


def load_cert_store(
    spec: str | os.PathLike[str],
    *,
    now: dt.datetime,
    warning_days: int,
    setting: str = "cert_store",
) -> tuple[dict[str, StoreEntry], list[str]]:
    """Load and validate every certificate Celery would trust from ``spec``.

    Returns the entries indexed by Celery's certificate id and the expiry
    warnings. Fails on an empty store, an unsupported key type or unparsable file, an
    expired or not-yet-valid certificate, or a duplicate issuer+serial
    (Celery itself aborts on the last two, with a less helpful message).
    """
    entries: dict[str, StoreEntry] = {}
    warnings: list[str] = []
    for path in expand_cert_store(spec, setting):
        try:
            cert = load_certificate(path, setting)
        except CertificateError as exc:
            raise CertStoreError(
                setting, f"cert store file {exc.problem}", f"remove {path} or {exc.fix}"
            ) from exc
        warning = check_validity(
            cert,
            str(path),
            setting,
            now=now,
            warning_days=warning_days,
            error_cls=CertStoreError,
        )
        if warning:
            warnings.append(warning)
        identity = identity_of(cert)
        same_cn = next(
            (e for e in entries.values() if e.identity.common_name == identity.common_name), None
        )
        if same_cn is not None and same_cn.certificate.issuer != cert.issuer:
            # The allowlist names signers by CN: two certificates with one CN from
            # two issuers (one maybe a foreign CA) would both get that CN's rights.
            # Two from one issuer are a signer rotation: the old and the new
            # certificate of one signer, trusted side by side until the old retires.
            raise CertStoreError(
                setting,
                f"{path} and {same_cn.path} have the same CN {identity.common_name!r} "
                "from different issuers",
                "keep one issuer per signer CN in the store (remove the foreign one)",
            )
        if identity.celery_id in entries:
            raise CertStoreError(
                setting,
                f"{path} and {entries[identity.celery_id].path} have the same issuer and serial",
                "keep one copy of each signer certificate in the store",
            )
        public_key = cert.public_key()
        if not isinstance(public_key, PublicKey):  # load_certificate checked; for mypy
            raise CertStoreError(setting, f"{path} has an unsupported key type", "remove it")
        entries[identity.celery_id] = StoreEntry(path, cert, public_key, identity)
    return entries, warnings


def check_store_issuer(
    store: Mapping[str, StoreEntry], ca_path: str | os.PathLike[str], setting: str
) -> None:
    """Refuse a store certificate that the CA(s) in ``ca_path`` did not issue.

    Optional second line of defence: the store stays the trust list (each
    signer is trusted because its certificate is there), but a certificate
    dropped into the store by mistake (or by someone who could write there)
    that the kit's CA never signed is refused by file name.
    """
    pem = read_bytes(check_readable_file(ca_path, setting), setting)
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CertificateError(
            setting, f"{ca_path} holds no PEM certificate ({exc})", "point it at the CA bundle"
        ) from None
    for entry in store.values():
        if not any(_issued_by(entry.certificate, ca) for ca in cas):
            raise CertStoreError(
                setting,
                f"store certificate {entry.path} ({entry.identity.label()}) was not issued by "
                f"the CA in {ca_path}",
                f"remove {entry.path} from the store, or re-issue it from that CA",
            )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Return True if ``ca`` signed ``cert`` (issuer name and signature)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
