"""Signature algorithms the kit signs and verifies with: RSA-PSS, Ed25519, ECDSA.

The algorithm is a property of the *key* (of the certificate that verifies),
never of a field in the message: a signer's certificate decides how its
signature is checked, so a message cannot ask for a weaker check.

* RSA (2048 bits or more): RSA-PSS with MGF1 and the maximum salt, the
  digest of ``security_digest``, exactly as Celery's ``auth`` serializer
  signs, so a stock Celery worker can verify RSA-signed kit messages.
* Ed25519: pure Ed25519 (RFC 8032); the digest setting does not apply.
* ECDSA on P-256 or P-384 with the digest of ``security_digest`` (DER
  signature). Stock Celery cannot verify Ed25519 or ECDSA: its ``auth``
  serializer refuses non-RSA certificates.

Everything that can be prepared once (padding objects, hash objects, the
bound method) is prepared when the signer or verifier is built, not per
message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes

__all__ = [
    "KEY_TYPES",
    "MIN_RSA_BITS",
    "PrivateKey",
    "PublicKey",
    "Sign",
    "Verify",
    "key_type",
    "signer_for",
    "supported_key",
    "verifier_for",
]

#: A private key the kit signs with.
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
#: A public key the kit verifies with.
PublicKey: TypeAlias = rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
#: ``sign(data) -> signature``.
Sign: TypeAlias = Callable[[bytes], bytes]
#: ``verify(signature, data)`` (data: any buffer, e.g. a view into the payload);
#: raises ``cryptography.exceptions.InvalidSignature``.
Verify: TypeAlias = Callable[[bytes, "bytes | memoryview"], None]

#: Below 2048 bits RSA is not a signature anyone should trust (NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048
#: ECDSA curves accepted (by the curve's name in ``cryptography``).
_CURVES: Final = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}
#: The key types the kit signs with, as ``key_type`` names them (RSA with its size).
KEY_TYPES: Final = ("rsa-2048", "rsa-3072", "rsa-4096", "ed25519", "ecdsa-p256", "ecdsa-p384")


def key_type(key: object) -> str | None:
    """Return the kit's name for ``key``'s type (``rsa-3072``, ``ed25519``...), None if unsupported.

    Works for private and public keys alike.
    """
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return f"rsa-{key.key_size}"
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return _CURVES.get(key.curve.name)
    return None


def supported_key(key: object) -> str | None:
    """Return why ``key`` cannot sign for the kit, or None if it can."""
    kind = key_type(key)
    if kind is None:
        curve = getattr(getattr(key, "curve", None), "name", None)
        what = f"an ECDSA key on curve {curve}" if curve else f"a {type(key).__name__}"
        return f"{what} (supported: RSA >= {MIN_RSA_BITS} bits, Ed25519, ECDSA P-256/P-384)"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size < MIN_RSA_BITS:
        return f"an RSA key of {key.key_size} bits (at least {MIN_RSA_BITS} are needed)"
    return None


def _pss(digest: hashes.HashAlgorithm) -> padding.PSS:
    # Same padding as celery.security (PSS, MGF1 with the message digest, max salt).
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)


def signer_for(key: PrivateKey, digest: hashes.HashAlgorithm) -> Sign:
    """Return ``sign(data)`` for ``key``, with its padding and hash prepared once."""
    if isinstance(key, rsa.RSAPrivateKey):
        pss, rsa_sign = _pss(digest), key.sign

        def sign_rsa(data: bytes) -> bytes:
            return rsa_sign(data, pss, digest)

        return sign_rsa
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign
    ecdsa, ec_sign = ec.ECDSA(digest), key.sign

    def sign_ec(data: bytes) -> bytes:
        return ec_sign(data, ecdsa)

    return sign_ec


def verifier_for(key: PublicKey, digest: hashes.HashAlgorithm) -> Verify:
    """Return ``verify(signature, data)`` for ``key``, with its padding and hash prepared once."""
    if isinstance(key, rsa.RSAPublicKey):
        pss, rsa_verify = _pss(digest), key.verify

        def verify_rsa(signature: bytes, data: bytes | memoryview) -> None:
            # cryptography reads any buffer (a view into the payload); its stub says bytes.
            rsa_verify(signature, data, pss, digest)  # type: ignore[arg-type]

        return verify_rsa
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key.verify
    ecdsa, ec_verify = ec.ECDSA(digest), key.verify

    def verify_ec(signature: bytes, data: bytes | memoryview) -> None:
        ec_verify(signature, data, ecdsa)

    return verify_ec
