r"""The kit's signing serializer: Celery's ``auth`` wire format, plus the verified signer.

It keeps Celery's wire format byte for byte (``base64(signer_id) \\x00\\x01
base64(signature) \\x00\\x01 content_type \\x00\\x01 content_encoding \\x00\\x01
body``, all base64-encoded). With an RSA signer a stock Celery worker can
still verify kit messages. With an Ed25519 or ECDSA signer (much cheaper to
sign, see :mod:`security_lib.signing`) it cannot: stock Celery refuses
non-RSA certificates in its store, so it knows no certificate for the signer
id, logs ``Unknown certificate`` and drops the message without running it.
What it changes:

* :meth:`KitSerializer.verify` returns *which* certificate verified the
  signature (:class:`~security_lib.certs.SignerIdentity`), looked up in the
  trusted store, so the worker gate can apply the allowlist to the real
  signer, never to a claim inside the message. The signature algorithm is
  the one of that certificate's key, never a field of the message.
* The inner content type is pinned to JSON. Stock Celery deserializes the
  signed body with ``loads(..., force=True)`` using the *unsigned* inner
  content-type field, so a signed body can be fed to any registered decoder
  (pickle included). The kit refuses anything but JSON.
* Certificates are re-checked for validity (not-before and not-after) at
  verification time, and errors carry a short, stable ``reason``.
* Per message it does only per-message work: keys, verifiers, padding and
  the constant fields of the wire format are prepared once; the body is
  verified where it lies in the decoded payload (no copy) and parsed once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from celery.exceptions import ImproperlyConfigured
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from kombu.serialization import disable_insecure_serializers, registry
from kombu.utils import json as kombu_json

from .certs import SignerIdentity, StoreEntry, identity_of
from .errors import SecurityConfigError
from .results import is_result_record
from .signing import PrivateKey, Verify, signer_for, verifier_for

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryptography import x509

__all__ = [
    "AUTH_CONTENT_TYPE",
    "DIGESTS",
    "KitSerializer",
    "VerificationError",
    "Verified",
    "digest_algorithm",
    "register_kit_serializer",
    "setup_kit_security",
]

# kombu's JSON (it round-trips datetimes, UUIDs... the way Celery's json serializer does).
_json_dumps: Callable[[Any], str] = kombu_json.dumps
_json_loads: Callable[[str], Any] = kombu_json.loads
_register: Callable[..., None] = registry.register

AUTH_CONTENT_TYPE: Final = "application/data"
INNER_CONTENT_TYPE: Final = "application/json"
SEPARATOR: Final = b"\x00\x01"

#: Digests accepted for ``security_digest``: SHA-256 or stronger.
DIGESTS: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
    "sha3_256": hashes.SHA3_256,
    "sha3_384": hashes.SHA3_384,
    "sha3_512": hashes.SHA3_512,
}


def digest_algorithm(name: str) -> hashes.HashAlgorithm:
    """Return the hash for ``name``; refuse anything weaker than SHA-256."""
    try:
        return DIGESTS[name.lower()]()
    except KeyError:
        raise SecurityConfigError(
            "digest",
            f"{name!r} is not an accepted signing digest",
            f"use one of {', '.join(DIGESTS)} (sha256 or stronger)",
        ) from None


class VerificationError(Exception):
    """A message failed verification; ``reason`` is the stable short code that is logged."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Verified:
    """A verified message body and the identity of the certificate that verified it."""

    signer: SignerIdentity
    data: Any


def _b64e(data: bytes) -> bytes:
    return base64.b64encode(data)


def _b64d(data: bytes | str) -> bytes:
    return base64.b64decode(data, validate=True)


_SEP_LEN: Final = len(SEPARATOR)
#: The fields between the signature and the body, the same in every kit message.
_INNER_FIELDS: Final = SEPARATOR + INNER_CONTENT_TYPE.encode() + SEPARATOR + b"utf-8" + SEPARATOR


class KitSerializer:
    """Sign (with our key) and verify (against the trusted store) task bodies."""

    def __init__(
        self,
        *,
        key: PrivateKey | None,
        cert: x509.Certificate | None,
        store: Mapping[str, StoreEntry],
        digest: str = "sha256",
        result_signer: Callable[[SignerIdentity], bool] | None = None,
    ) -> None:
        self._key = key
        #: With sign_results: who may sign a result record (None: no check).
        self._result_signer = result_signer
        self._signer = identity_of(cert) if cert is not None else None
        self._store = dict(store)
        self._digest = digest_algorithm(digest)
        self._sign = signer_for(key, self._digest) if key is not None else None
        self._signer_field = (
            _b64e(self._signer.celery_id.encode("utf-8")) + SEPARATOR
            if self._signer is not None
            else b""
        )
        #: Per trusted certificate: its entry and its verifier, built once.
        self._verifiers: dict[str, tuple[StoreEntry, Verify]] = {
            ref: (entry, verifier_for(entry.public_key, self._digest))
            for ref, entry in self._store.items()
        }

    @property
    def signer(self) -> SignerIdentity | None:
        """Return the identity this serializer signs as (None for a verify-only serializer)."""
        return self._signer

    @property
    def store(self) -> Mapping[str, StoreEntry]:
        """Return the trusted signer certificates, by Celery certificate id."""
        return self._store

    def replace_store(self, store: Mapping[str, StoreEntry]) -> None:
        """Trust exactly ``store`` from now on (a signer store reload).

        The verifiers are built first and swapped in with the store, so a
        verification sees either the old store or the new one, never a mix.
        """
        verifiers = {
            ref: (entry, verifier_for(entry.public_key, self._digest))
            for ref, entry in store.items()
        }
        self._store, self._verifiers = dict(store), verifiers

    # -- signing ---------------------------------------------------------
    def serialize(self, data: Any) -> str:
        """Serialize ``data`` as JSON, sign it and pack it in Celery's auth format."""
        if self._sign is None:
            raise VerificationError("no-signing-key", "this process has no signing key")
        body = _json_dumps(data).encode("utf-8")
        fields = b"".join((self._signer_field, _b64e(self._sign(body)), _INNER_FIELDS, body))
        return _b64e(fields).decode("ascii")

    # -- verification ----------------------------------------------------
    def verify(self, payload: bytes | str, *, now: dt.datetime | None = None) -> Verified:
        """Verify ``payload`` and return the decoded body with the verifying signer.

        Raises :class:`VerificationError` with reason ``unsigned``, ``malformed``,
        ``unknown-signer``, ``expired-signer``, ``bad-signature`` or
        ``bad-content-type``.
        """
        try:
            raw = _b64d(payload)  # accepts ASCII text too: no encode() copy first
            # The first four separators, as Celery's split(sep, maxsplit=4) finds them.
            ends = [raw.find(SEPARATOR)]
            for _ in range(3):
                ends.append(raw.find(SEPARATOR, ends[-1] + _SEP_LEN) if ends[-1] >= 0 else -1)
            if ends[-1] < 0:
                raise VerificationError("unsigned", "not a signed payload")
            signer_ref = _b64d(raw[: ends[0]]).decode("utf-8")
            signature = _b64d(raw[ends[0] + _SEP_LEN : ends[1]])
        except (binascii.Error, ValueError) as exc:
            raise VerificationError("unsigned", "not a signed payload") from exc
        content_type = raw[ends[1] + _SEP_LEN : ends[2]]
        content_encoding = raw[ends[2] + _SEP_LEN : ends[3]]
        # The body is verified and parsed where it lies: a view, not a copy.
        body = memoryview(raw)[ends[3] + _SEP_LEN :]

        found = self._verifiers.get(signer_ref)
        if found is None:
            raise VerificationError("unknown-signer", f"no trusted certificate {signer_ref!r}")
        entry, verify_signature = found
        moment = now or dt.datetime.now(dt.timezone.utc)
        cert = entry.certificate
        if not cert.not_valid_before_utc <= moment < cert.not_valid_after_utc:
            raise VerificationError("expired-signer", f"{entry.identity.label()} is not valid now")
        try:
            verify_signature(signature, body)
        except InvalidSignature:
            raise VerificationError("bad-signature", entry.identity.label()) from None
        if content_type != INNER_CONTENT_TYPE.encode() or content_encoding.lower() != b"utf-8":
            raise VerificationError(
                "bad-content-type", content_type.decode("ascii", "replace")[:40]
            )
        try:
            data = _json_loads(str(body, "utf-8"))
        except ValueError as exc:
            raise VerificationError("malformed", "signed body is not JSON") from exc
        return Verified(signer=entry.identity, data=data)

    def deserialize(self, payload: bytes | str) -> Any:
        """Kombu decoder: verify and return the body (used by Celery's own decode paths).

        A result record (``sign_results=True``) signed by a certificate that is
        not a result signer (a worker) is refused.
        """
        verified = self.verify(payload)
        if (
            self._result_signer is not None
            and is_result_record(verified.data)
            and not self._result_signer(verified.signer)
        ):
            raise VerificationError("result-signer-not-allowed", verified.signer.label())
        return verified.data


_ACTIVE: list[KitSerializer] = []


def register_kit_serializer(serializer: KitSerializer) -> None:
    """Register ``serializer`` as kombu's ``auth`` serializer (replacing Celery's).

    Kombu's registry is process-global, like Celery's ``setup_security``: one
    signing identity per process (the last ``harden()`` wins).
    """
    _ACTIVE[:] = [serializer]
    _register(
        "auth",
        serializer.serialize,
        serializer.deserialize,
        content_type=AUTH_CONTENT_TYPE,
        content_encoding="utf-8",
    )


def setup_kit_security(app: Any, serializer: KitSerializer) -> None:
    """Do what Celery's ``app.setup_security()`` does, with the kit's serializer.

    Celery's own reads the key, certificate and store with its RSA-only
    classes (``Non-RSA keys are not supported``), so an Ed25519 or ECDSA signer
    (or one such certificate in the store) could not be set up through it. The
    steps are the same: refuse the app unless it signs and accepts only
    ``auth``, disable every other decoder (``allowed_serializers=None``),
    register the ``auth`` serializer and make it the default.
    """
    conf = app.conf
    accept = conf.accept_content
    if conf.task_serializer != "auth" or list(accept or ()) != ["auth"]:
        raise ImproperlyConfigured("task_serializer and accept_content must be 'auth'")
    _disable: Callable[[Any], None] = disable_insecure_serializers
    _disable(None)
    register_kit_serializer(serializer)
    set_default: Callable[[str], None] = registry._set_default_serializer  # no public setter
    set_default("auth")  # as Celery's setup_security() does


def registered_auth_is_kit() -> bool:
    """Return True if kombu's ``auth`` encoder is the kit serializer registered last."""
    encoder = registry._encoders.get("auth")  # kombu has no public getter
    owner = getattr(getattr(encoder, "encoder", None), "__self__", None)
    return bool(_ACTIVE) and owner is _ACTIVE[0]


def active_signer_fingerprint() -> str:
    """Return the fingerprint of the certificate that will sign the next message.

    The envelope must name the key kombu will actually sign with; the producer
    hook calls this per message and fails the publish if kombu's ``auth``
    serializer is no longer the kit's (e.g. ``setup_security()`` called again).
    """
    signer = _ACTIVE[0].signer if _ACTIVE and registered_auth_is_kit() else None
    if signer is None:
        raise SecurityConfigError(
            "auth serializer",
            "kombu's 'auth' serializer is not the kit's (setup_security() called after harden()?)",
            "call security_lib.harden() after any setup_security() call, and only once per process",
        )
    return signer.fingerprint
