"""Audit a hardened app: a table of checks with pass/warn/fail, non-zero exit on failure.

``python -m security_lib audit --app module:app [--json]`` or
``celery-kit-audit --app module:app [--json]``. The module is imported as the
worker would import it (so its ``harden()`` call runs); if that call raises,
the audit reports it as a failure instead of a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from .certs import check_validity, load_cert_store, load_certificate
from .errors import SecurityConfigError
from .files import check_private_key_file
from .gate import GateStep, gate_for
from .hardening import Hardening, hardening_of
from .serializer import DIGESTS, registered_auth_is_kit
from .settings import broker_urls, check_broker_connections, verify_applied

__all__ = ["AuditCheck", "audit", "main"]

Status = Literal["PASS", "WARN", "FAIL"]


@dataclass(frozen=True)
class AuditCheck:
    """One line of the audit table."""

    name: str
    status: Status
    detail: str


def _serializers(app: Any, h: Hardening) -> AuditCheck:
    verify_applied(app, sign_results=h.sign_results)
    odd = sorted(
        f"{name}={task.serializer}"
        for name, task in app.tasks.items()
        if getattr(task, "serializer", None) not in (None, "auth")
    )
    if odd:
        return AuditCheck("serializers", "FAIL", f"tasks with their own serializer: {odd}")
    results = (
        "results signed (auth)"
        if h.sign_results
        else "results JSON, result_accept_content=['json'] (not signed: protect the backend)"
    )
    return AuditCheck(
        "serializers", "PASS", f"tasks/events auth only; pickle/yaml/msgpack disabled; {results}"
    )


def _signing(app: Any, h: Hardening) -> AuditCheck:
    conf = app.conf
    digest = str(conf.get("security_digest") or "").lower()
    if digest not in DIGESTS:
        return AuditCheck("signing", "FAIL", f"security_digest={digest!r} (need sha256+)")
    if not registered_auth_is_kit():
        return AuditCheck("signing", "FAIL", "kombu 'auth' is not the kit serializer")
    if gate_for(app) is None or GateStep not in app.steps["consumer"]:
        return AuditCheck("signing", "FAIL", "worker gate not installed")
    return AuditCheck(
        "signing",
        "PASS",
        f"signer={h.signer.label()} digest={digest} envelope+gate on, "
        f"replay_window={h.replay_window:g}s",
    )


def _broker(app: Any, h: Hardening) -> AuditCheck:
    if h.broker_ssl is not None:
        # The connections Celery will really open, after CELERY_BROKER_URL, -b
        # and URL query options (raises BrokerTLSError: reported as FAIL).
        check_broker_connections(app, h.broker_ssl)
    plain = [u for u in broker_urls(app.conf) if urlsplit(u).scheme != "amqps"]
    opts = app.conf.get("broker_use_ssl")
    if plain:
        return AuditCheck(
            "broker TLS", "FAIL", f"not amqps://: {[urlsplit(u).scheme for u in plain]}"
        )
    if not isinstance(opts, dict):
        return AuditCheck("broker TLS", "FAIL", "broker_use_ssl is not set")
    if opts.get("cert_reqs") != ssl.CERT_REQUIRED:
        return AuditCheck("broker TLS", "FAIL", "broker_use_ssl cert_reqs is not CERT_REQUIRED")
    missing = [k for k in ("ca_certs", "certfile", "keyfile", "server_hostname") if not opts.get(k)]
    if missing:
        return AuditCheck("broker TLS", "FAIL", f"broker_use_ssl lacks {missing}")
    if h.insecure_broker:
        return AuditCheck("broker TLS", "WARN", "allow_insecure_broker=True")
    return AuditCheck(
        "broker TLS", "PASS", f"amqps, CERT_REQUIRED, client cert, host {opts['server_hostname']}"
    )


def _file_modes(app: Any, h: Hardening) -> AuditCheck:
    checked = [str(check_private_key_file(h.key, "security_key"))]
    opts = app.conf.get("broker_use_ssl")
    if isinstance(opts, dict) and opts.get("keyfile"):
        checked.append(str(check_private_key_file(str(opts["keyfile"]), "broker_key")))
    return AuditCheck("file modes", "PASS", f"0600 and owned by uid {os.geteuid()}: {checked}")


def _expiry(app: Any, h: Hardening) -> AuditCheck:
    now = dt.datetime.now(dt.timezone.utc)
    cert = load_certificate(h.cert, "security_certificate")
    notes = [
        check_validity(
            cert, h.cert, "security_certificate", now=now, warning_days=h.expiry_warning_days
        )
    ]
    store, store_notes = load_cert_store(h.cert_store, now=now, warning_days=h.expiry_warning_days)
    notes.extend(store_notes)
    soon = [n for n in notes if n]
    if soon:
        return AuditCheck("expiry", "WARN", "; ".join(soon))
    return AuditCheck(
        "expiry",
        "PASS",
        f"certificate and {len(store)} store cert(s) valid > {h.expiry_warning_days} days",
    )


def _allowlist(app: Any, h: Hardening) -> AuditCheck:
    policy = h.policy
    if policy.allow_any:
        return AuditCheck("allowlist", "WARN", "ALLOW_ANY_SIGNER: every signer may run every task")
    unknown = [
        k
        for k in policy.signer_keys
        if not any(policy.matches_signer(k, ident) for ident in h.trusted_signers)
    ]
    if unknown:
        return AuditCheck("allowlist", "WARN", f"names matching no store cert: {unknown}")
    # The workers' signers need no entry (their follow-ups are judged by the
    # original signer); a wildcard there runs anything matching with a stolen key.
    broad = sorted(
        f"{ident.common_name}: {pattern}"
        for ident in h.trusted_signers
        if any(policy.matches_signer(k, ident) for k in h.follow_up_signers)
        for pattern in policy.patterns(ident)
        if any(c in pattern for c in "*?[")
    )
    if broad:
        return AuditCheck(
            "allowlist",
            "WARN",
            f"worker signer(s) with wildcard patterns {broad}: give them [] or exact names",
        )
    return AuditCheck(
        "allowlist", "PASS", f"{len(policy.signer_keys)} signer(s) with task patterns"
    )


def _remote_control(app: Any, h: Hardening) -> AuditCheck:
    if app.conf.get("worker_enable_remote_control"):
        return AuditCheck(
            "remote control", "WARN", "enabled: pidbox commands are not covered by the gate"
        )
    return AuditCheck("remote control", "PASS", "disabled (worker_enable_remote_control=False)")


_CHECKS: tuple[tuple[str, Callable[[Any, Hardening], AuditCheck]], ...] = (
    ("serializers", _serializers),
    ("signing", _signing),
    ("broker TLS", _broker),
    ("file modes", _file_modes),
    ("expiry", _expiry),
    ("allowlist", _allowlist),
    ("remote control", _remote_control),
)


def audit(app: Any) -> list[AuditCheck]:
    """Run every check on ``app`` (already hardened in this process) and return the results."""
    h = hardening_of(app)
    if h is None:
        return [AuditCheck("hardened", "FAIL", "security_lib.harden() was not called on this app")]
    results = [
        AuditCheck("hardened", "WARN", "; ".join(h.warnings))
        if h.warnings
        else AuditCheck("hardened", "PASS", "harden() applied without warnings")
    ]
    for name, check in _CHECKS:
        try:
            results.append(check(app, h))
        except SecurityConfigError as exc:
            results.append(AuditCheck(name, "FAIL", str(exc)))
    return results


def load_app(spec: str) -> Any:
    """Import ``module:attribute`` (or ``module`` with an ``app`` attribute) like the worker."""
    module_name, _, attr = spec.partition(":")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    return obj


def render_table(checks: Sequence[AuditCheck]) -> str:
    """Return the checks as a fixed-width text table."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'CHECK':<{width}}  STATUS  DETAIL", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {c.detail}" for c in checks]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 if nothing failed, 1 on any FAIL, 2 on usage errors."""
    parser = argparse.ArgumentParser(
        prog="celery-kit-audit", description="Audit the security settings of a Celery app."
    )
    parser.add_argument("--app", required=True, help="module:app of the Celery app to audit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        checks = audit(load_app(args.app))
    except SecurityConfigError as exc:
        checks = [AuditCheck("hardened", "FAIL", f"harden() refused the configuration: {exc}")]
    except (ImportError, AttributeError) as exc:
        print(f"celery-kit-audit: cannot load {args.app!r}: {exc}", file=sys.stderr)
        return 2
    failed = any(c.status == "FAIL" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        print(render_table(checks))
    return 1 if failed else 0
