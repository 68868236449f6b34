"""Hardening for Celery on RabbitMQ: one call, fail closed.

Public API (what an app needs): :func:`harden` (options as keywords or one
frozen :class:`Policy`) and the :class:`Hardening` record it returns,
:data:`ALLOW_ANY_SIGNER`, the error types, and the log contract
(:data:`REJECT_PREFIX`, :data:`REASONS`). The audit is a command
(``python -m security_lib audit``, ``celery-kit-audit``), not an import.
See the README for the threat model.
"""

from __future__ import annotations

from .errors import (
    BrokerTLSError,
    CertificateError,
    CertStoreError,
    FilePermissionError,
    KeyCertMismatchError,
    MissingFileError,
    PolicyError,
    SecurityConfigError,
    SerializerError,
)
from .gate import REASONS, REJECT_PREFIX
from .hardening import Hardening, Policy, harden
from .policy import ALLOW_ANY_SIGNER

__all__ = [
    "ALLOW_ANY_SIGNER",
    "REASONS",
    "REJECT_PREFIX",
    "BrokerTLSError",
    "CertStoreError",
    "CertificateError",
    "FilePermissionError",
    "Hardening",
    "KeyCertMismatchError",
    "MissingFileError",
    "Policy",
    "PolicyError",
    "SecurityConfigError",
    "SerializerError",
    "harden",
]

__version__ = "0.1.0"
