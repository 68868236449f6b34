"""Re-read the trusted signer store in a running worker (signer rotation, no restart).

Why a signal, and which one. Celery's worker already uses SIGHUP (restart by
``exec``: the consumer goes away, prefetched messages are redelivered), SIGUSR1
(stack dump) and SIGTERM/SIGINT/SIGQUIT (shutdown). SIGUSR2 is used only by
Celery's remote debugger, and only when ``CELERY_RDBSIG`` is set; a hardened
worker refuses that setting (an open debugger port is not hardening). The kit
takes SIGUSR2: ``systemctl reload celery-worker@<app>`` sends it (ExecReload).
A file-mtime check in the gate was the other option; it costs system calls on
every message, cannot tell a half-copied store from a finished one and gives
the operator no moment at which the reload is known to have happened.

Why the handler does not reload. A Python signal handler runs between two
bytecodes of the main thread, possibly in the middle of the gate judging a
message; swapping the store there could judge one message against two stores.
The handler only sets a flag. The reload runs in the consumer's own thread
where no message is half-judged: before the next message is judged
(:meth:`security_lib.gate.Gate.inspect`) and on a one-second timer of the
consumer's event loop, so it happens (and is logged) without traffic too.

All or nothing. The new store passes exactly the checks :func:`harden` applies
at start (parseable, supported key, valid now, no duplicate, not empty, issued
by ``cert_store_ca`` when given), then replaces the old one in one assignment.
A refused store keeps the signers loaded before and logs, at ERROR, a line
starting with :data:`RELOAD_REFUSED_PREFIX` that names the file and the fix.

What it does not reload: the signing key of this process and the allowlist
(it lives in the config module, Python code: a change there restarts the
worker). A rotated signer keeps its CN (``signer-<identity>``), so the
allowlist, which names signers by CN, needs no change.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Final

from .certs import check_store_issuer, load_cert_store
from .errors import SecurityConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .certs import SignerIdentity, StoreEntry
    from .policy import SignerPolicy
    from .serializer import KitSerializer

__all__ = [
    "RELOADED_PREFIX",
    "RELOAD_REFUSED_PREFIX",
    "RELOAD_SIGNAL",
    "StoreReloader",
    "install_reload_signal",
]

logger = logging.getLogger("security_lib")

#: The signal that asks a worker to re-read its signer store.
RELOAD_SIGNAL: Final = signal.SIGUSR2
#: Log line prefixes (the rotation playbook and its tests wait for them).
RELOADED_PREFIX: Final = "security_lib signer store reloaded:"
RELOAD_REFUSED_PREFIX: Final = "security_lib signer store reload refused:"
#: How often the consumer's event loop looks at the reload flag (seconds).
POLL_INTERVAL: Final = 1.0


def _labels(store: Mapping[str, StoreEntry]) -> list[str]:
    return sorted(f"{e.identity.label()}#{e.certificate.serial_number:x}" for e in store.values())


class StoreReloader:
    """Reload the trusted signer store of one hardened process on request."""

    def __init__(
        self,
        *,
        serializer: KitSerializer,
        policy: SignerPolicy,
        cert_store: str | os.PathLike[str],
        cert_store_ca: str | os.PathLike[str] | None,
        warning_days: int,
        on_reloaded: Callable[[Mapping[str, StoreEntry]], None] | None = None,
    ) -> None:
        self.serializer = serializer
        self.policy = policy
        self.cert_store = os.fspath(cert_store)
        self.cert_store_ca = None if cert_store_ca is None else os.fspath(cert_store_ca)
        self.warning_days = warning_days
        #: Called with the new store after a successful reload (gate cache, audit record).
        self.on_reloaded = on_reloaded
        self._requested = False
        self._lock = threading.Lock()

    @property
    def requested(self) -> bool:
        """Return whether a reload was asked for and has not run yet."""
        return self._requested

    def request(self, *_: Any) -> None:
        """Ask for a reload (the signal handler: sets a flag, nothing else)."""
        self._requested = True

    def reload_if_requested(self) -> bool | None:
        """Reload if asked to; return None when not asked, else whether it succeeded."""
        if not self._requested:
            return None
        self._requested = False
        return self.reload()

    def reload(self, *, now: dt.datetime | None = None) -> bool:
        """Load, check and install the store; on any problem keep the old one and log why."""
        setting = "cert_store (security_cert_store)"
        with self._lock:
            old = self.serializer.store
            moment = now or dt.datetime.now(dt.timezone.utc)
            try:
                store, warnings = load_cert_store(
                    self.cert_store, now=moment, warning_days=self.warning_days, setting=setting
                )
                if self.cert_store_ca is not None:
                    check_store_issuer(store, self.cert_store_ca, "cert_store_ca")
            except SecurityConfigError as exc:
                logger.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                    "%s %s; keeping the %d signer(s) loaded before: %s",
                    RELOAD_REFUSED_PREFIX,
                    exc,
                    len(old),
                    " ".join(_labels(old)),
                )
                return False
            except Exception:  # fail safe: a bug here must not stop the worker
                logger.exception(
                    "%s internal error; keeping the %d signer(s) loaded before",
                    RELOAD_REFUSED_PREFIX,
                    len(old),
                )
                return False
            self.serializer.replace_store(store)
            if self.on_reloaded is not None:
                self.on_reloaded(store)
        identities: list[SignerIdentity] = [e.identity for e in store.values()]
        for message in warnings:
            logger.warning("security_lib: %s", message)
        for key in self.policy.signer_keys:
            if not any(self.policy.matches_signer(key, ident) for ident in identities):
                logger.warning("security_lib: allowed_tasks names %r, matching no store cert", key)
        before, after = set(_labels(old)), set(_labels(store))
        logger.info(
            "%s trusted=%d added=%s removed=%s",
            RELOADED_PREFIX,
            len(store),
            ",".join(sorted(after - before)) or "-",
            ",".join(sorted(before - after)) or "-",
        )
        return True


def install_reload_signal(reloader: StoreReloader) -> bool:
    """Make :data:`RELOAD_SIGNAL` request a reload; return False where it cannot be installed.

    Refuses ``CELERY_RDBSIG`` (Celery's remote debugger would own the signal).
    Signal handlers can only be installed from the main thread: a worker run
    in a thread (tests) reloads through :meth:`StoreReloader.request` instead.
    """
    if os.environ.get("CELERY_RDBSIG"):
        raise SecurityConfigError(
            "CELERY_RDBSIG",
            "Celery's remote debugger is enabled; it opens a debugger port and takes SIGUSR2, "
            "the signal that reloads the signer store",
            "unset CELERY_RDBSIG in the worker's environment",
        )
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(RELOAD_SIGNAL, reloader.request)
    return True
