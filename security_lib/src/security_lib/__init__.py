"""Hardening for Celery on RabbitMQ: one call, fail closed.

Public API: :func:`harden` (options as keywords or one frozen :class:`Policy`),
:data:`ALLOW_ANY_SIGNER`, the error types and the audit entry point :func:`audit`.
See the README for the threat model.
"""

from __future__ import annotations

from .audit import AuditCheck, audit
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
from .hardening import Hardening, Policy, harden, hardening_of
from .policy import ALLOW_ANY_SIGNER

__all__ = [
    "ALLOW_ANY_SIGNER",
    "REASONS",
    "REJECT_PREFIX",
    "AuditCheck",
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
    "audit",
    "harden",
    "hardening_of",
]

__version__ = "0.1.0"
