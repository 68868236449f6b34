"""Error types of the kit.

One domain error, :class:`SecurityConfigError`, with a subclass per kind of
problem so that callers (and tests) can tell them apart. Every message names
the file or setting at fault and says how to fix it: an operator reading a
failed worker start-up in the journal must not need the source to act.
"""

from __future__ import annotations

__all__ = [
    "BrokerTLSError",
    "CertStoreError",
    "CertificateError",
    "FilePermissionError",
    "KeyCertMismatchError",
    "MissingFileError",
    "PolicyError",
    "SecurityConfigError",
    "SerializerError",
]


class SecurityConfigError(Exception):
    """The configuration is not safe to run; nothing was (or will be) started.

    Raised by :func:`security_lib.harden` before it changes anything, so an
    app never runs half-hardened.
    """

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}. Fix: {fix}")


class MissingFileError(SecurityConfigError):
    """A key, certificate or certificate store path is missing or unreadable."""


class FilePermissionError(SecurityConfigError):
    """A private key is readable by others or owned by another user."""


class KeyCertMismatchError(SecurityConfigError):
    """The private key does not belong to the certificate."""


class CertificateError(SecurityConfigError):
    """A certificate is invalid, has an unsupported key type, is expired or not yet valid."""


class CertStoreError(SecurityConfigError):
    """The signer certificate store is empty, or holds an unusable certificate."""


class BrokerTLSError(SecurityConfigError):
    """The broker connection is not TLS with peer verification."""


class SerializerError(SecurityConfigError):
    """An unsafe serializer (pickle, yaml, msgpack, plain json for tasks) is accepted."""


class PolicyError(SecurityConfigError):
    """The signer allowlist (``allowed_tasks``) is missing or malformed."""
