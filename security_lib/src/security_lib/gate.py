"""Worker-side gate: verify every task message before any task code runs.

Where it sits (and why there):

* Celery signal receivers cannot stop a task (the dispatcher logs and
  swallows their exceptions), and a custom ``Task.Request``/``Strategy`` is
  per task class, so a task with its own base class would escape it.
* Every task message a worker receives goes through
  ``consumer.on_task_received`` → ``consumer.strategies[task_name](...)``.
  :class:`GateStep`, a consumer bootstep that runs right after Celery's
  ``Tasks`` step (which rebuilds the strategies on every (re)connect), wraps
  *every* entry of ``consumer.strategies``. The wrapper runs :meth:`Gate.inspect`
  in the consumer (main) process; a message that fails is logged, rejected
  with ``requeue=False`` and never reaches the Request/pool. Messages for
  unregistered task names never reach a strategy (Celery rejects them).

Rejections are logged at ERROR on logger ``security_lib`` as::

    security_lib rejected message: reason=<reason> task=<task> id=<id> signer=<cn|->

(optionally followed by `` detail=<...>``).

See :data:`REASONS` for the stable reason codes.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from celery import bootsteps

from .envelope import ROOT_HEADER, Envelope, first_mismatch, parse_envelope, route_of
from .errors import SecurityConfigError
from .policy import CanvasTooLargeError, tasks_a_message_can_run
from .serializer import AUTH_CONTENT_TYPE, VerificationError

if TYPE_CHECKING:
    from pathlib import Path

    from .certs import SignerIdentity
    from .policy import SignerPolicy
    from .reload import StoreReloader
    from .replay import ReplayCache
    from .serializer import KitSerializer

__all__ = [
    "REASONS",
    "REJECT_PREFIX",
    "Gate",
    "GateStep",
    "Verdict",
    "VerifiedMessage",
    "gate_for",
    "install_gate",
]

logger = logging.getLogger("security_lib")

REJECT_PREFIX: Final = "security_lib rejected message:"

#: Stable rejection reasons (the Ansible/molecule tests grep for them).
REASONS: Final[Mapping[str, str]] = {
    "unsupported-protocol": "not a Celery protocol 2 task message (protocol 1/hybrid)",
    "unsigned": "content type is not the auth serializer's, or the payload is not signed",
    "malformed": "signed payload or body cannot be parsed",
    "unknown-signer": "signed by a certificate that is not in the trusted store",
    "expired-signer": "the signer certificate is expired or not yet valid",
    "bad-signature": "the signature does not match the body (tampered body)",
    "bad-content-type": "the signed inner content type is not JSON (e.g. pickle)",
    "bad-envelope": "validly signed but without the kit's envelope (stock Celery producer?)",
    "signer-mismatch": "the envelope names another signer than the verifying certificate",
    "header-mismatch:<field>": "a bound header (task, id, eta...) differs from the signed copy",
    "signer-not-allowed": "the allowlist does not let this signer run this task",
    "expired-envelope": "older than replay_window (+ clock_skew)",
    "future-envelope": "dated further in the future than clock_skew",
    "route-mismatch": "delivered through another exchange/routing key than it was signed for",
    "replay": "a copy of a message already run, or a second copy (not a broker redelivery)",
    "replay-cache-full": "this signer filled its share of the replay cache; fail closed",
    "compressed": "the message carries a compression header (never decompressed: bomb guard)",
    "gate-error": "internal error while checking; fail closed",
    "unknown-task": "no such task registered on this worker (Celery rejects it; logged by the kit)",
    "unknown-message": "not a task message (Celery rejects it; logged by the kit)",
    "invalid-task": "Celery found the task message invalid (logged by the kit)",
    "undecodable": "a protocol 1 body failed to decode/verify (Celery drops it; logged by the kit)",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+=-]")
_FILE_UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")
_MARK: Final = "__security_lib_gate__"
#: Verified original messages kept for their follow-ups (chain steps, retries).
_ORIGINALS_CACHED: Final = 1024


def _clean(value: Any, limit: int = 200) -> str:
    """Render an attacker-controlled header value for a single log line (no spaces/newlines)."""
    if value is None:
        return "-"
    return _UNSAFE.sub("?", str(value))[:limit] or "-"


class Gate:
    """The checks applied to every incoming task message."""

    def __init__(
        self,
        serializer: KitSerializer,
        policy: SignerPolicy,
        replay: ReplayCache,
        state_dir: Path | None = None,
        follow_up_signers: tuple[str, ...] = (),
    ) -> None:
        self.serializer = serializer
        self.policy = policy
        self.replay = replay
        self.state_dir = state_dir
        #: Signers (CN or fingerprint) whose follow-ups are judged on behalf
        #: of the original signer: the workers.
        self.follow_up_signers = follow_up_signers
        self._originals: dict[str, tuple[SignerIdentity, float, frozenset[str], float]] = {}
        #: Whether a task name can run on this worker (its registry), bound by
        #: :class:`GateStep`; None: every mapping with a ``task`` is a signature.
        self.is_task: Callable[[str], bool] | None = None
        #: Re-reads the signer store on SIGUSR2 (set by harden(); None: never).
        self.reloader: StoreReloader | None = None
        #: The consumer timer entry that applies a requested reload without traffic.
        self.reload_timer: Any = None

    def forget_originals(self) -> None:
        """Drop the cached verified originals (after a store reload: re-verify them)."""
        self._originals = {}

    def check(
        self,
        headers: Mapping[str, Any] | None,
        content_type: str | None,
        payload: Any,
        delivery_info: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> tuple[str | None, SignerIdentity | None, str]:
        """Return ``(reason, signer, detail)``; ``reason`` is None when the message may run.

        ``delivery_info`` is kombu's (exchange, routing key, redelivered flag):
        the broker sets it, the publisher cannot.
        """
        verdict = self.judge(headers, content_type, payload, delivery_info, properties)
        return verdict.reason, verdict.signer, verdict.detail

    def judge(  # noqa: PLR0911 - one early return per rejection reason
        self,
        headers: Mapping[str, Any] | None,
        content_type: str | None,
        payload: Any,
        delivery_info: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Check one message; the verdict also carries its root (see :data:`ROOT_HEADER`)."""
        if not isinstance(headers, Mapping) or "task" not in headers or "id" not in headers:
            return Verdict("unsupported-protocol")
        if headers.get("compression") is not None:
            # Never expanded: the kit's kombu decoders refuse every compression.
            return Verdict("compressed", None, f"compression={headers.get('compression')}")
        if (content_type or AUTH_CONTENT_TYPE) != AUTH_CONTENT_TYPE:
            return Verdict("unsigned", None, f"content_type={content_type}")
        if not isinstance(payload, (bytes, str)):
            return Verdict("unsigned", None, "payload is not text")
        try:
            verified = self.serializer.verify(payload)
        except VerificationError as exc:
            return Verdict(exc.reason, None, exc.detail)
        signer = verified.signer
        envelope = parse_envelope(verified.data)
        if envelope is None:
            return Verdict("bad-envelope", signer)
        if envelope.signer != signer.fingerprint:
            return Verdict("signer-mismatch", signer)
        field = first_mismatch(envelope, headers, properties)
        if field is not None:
            return Verdict(f"header-mismatch:{field}", signer)
        info: Mapping[str, Any] = delivery_info if isinstance(delivery_info, Mapping) else {}
        route = route_of(info.get("exchange"), info.get("routing_key"))
        if route != envelope.route:
            return Verdict("route-mismatch", signer, f"signed-for={'/'.join(envelope.route)}")
        root = payload.decode("ascii") if isinstance(payload, bytes) else payload
        refused, root, accountable = self.allowlist(
            signer, envelope, str(headers["task"]), verified.data, root
        )
        if refused is not None:
            return Verdict("signer-not-allowed", signer, refused)
        reason = self.replay.check(
            replay_key(headers),
            envelope.timestamp,
            signer=accountable.fingerprint,
            redelivered=info.get("redelivered") is True,
            label=accountable.label(),
        )
        return Verdict(reason, signer, "", root, verified.data)

    def allowlist(
        self, signer: SignerIdentity, envelope: Envelope, task_name: str, body: Any, root: str
    ) -> tuple[str | None, str, SignerIdentity]:
        """Apply the allowlist; return ``(refusal detail or None, root payload, accountable)``.

        A follow-up a worker published while running a task is judged by the
        original signer and what the original message listed; anything else
        (a producer's message, or something a worker sends that the original
        did not list) by the sender's own allowlist entry, including every
        task it can make run afterwards or around it (links, errbacks, chains,
        chords, canvases in ``celery.*`` arguments), before anything runs.
        ``accountable`` is the signer whose replay-cache share the message
        uses: the original signer for a follow-up accepted on its behalf, so
        that one producer's workflows cannot fill the workers' share and lock
        every other producer's follow-ups out.
        """
        refused: str | None = None
        if envelope.root is not None and self.may_vouch(signer):
            refused, original = self.on_behalf_refused(envelope.root, task_name, body)
            if refused is None and original is not None:
                return None, envelope.root, original
        if not self.policy.allows(signer, task_name):
            return refused or "-", root, signer
        own = self.follow_up_refused(signer, body)
        if own is not None:
            return own, root, signer
        return None, root, signer

    def may_vouch(self, signer: SignerIdentity) -> bool:
        """Return True if ``signer`` may publish follow-ups on another signer's behalf."""
        return any(self.policy.matches_signer(key, signer) for key in self.follow_up_signers)

    def on_behalf_refused(  # noqa: PLR0911
        self, root: str, task_name: str, body: Any
    ) -> tuple[str | None, SignerIdentity | None]:
        """Return why a follow-up may not run on behalf of ``root``'s signer, and that signer.

        ``(None, original signer)``: it may.

        ``root`` is the signed payload of the original message. The follow-up
        (its own task and everything it can make run) must be among the task
        names the original itself made possible (its own task: retry/replace;
        its links, errbacks, chain, chord and nested signatures), the original
        must still be inside the replay window, and the *original* signer must
        be allowed to run each of them.
        """
        original = self._original(root)
        if isinstance(original, str):
            return original, None
        signer, timestamp, listed, valid_until = original
        now = self.replay.now()
        if not timestamp - self.replay.clock_skew <= now < self.replay.deadline(timestamp):
            return "root-expired", None
        if now >= valid_until:
            return "root-expired-signer", None
        try:
            wanted = tasks_a_message_can_run(body, self.is_task)
        except CanvasTooLargeError:
            return "canvas-too-large", None
        wanted.add(task_name)
        for name in sorted(wanted):
            if name not in listed:
                return f"not-in-original={name}", None
            if not self.policy.allows(signer, name):
                return f"on-behalf-of={signer.common_name}", None
        return None, signer

    def _original(  # noqa: PLR0911 - one early return per reason
        self, root: str
    ) -> tuple[SignerIdentity, float, frozenset[str], float] | str:
        """Verify an original message once: ``(signer, ts, names it listed, cert end)`` or why not.

        A chain's steps and a task's retries carry the same original: the signature
        verification and the canvas walk are cached (bounded, successes only).
        """
        cached = self._originals.get(root)
        if cached is not None:
            return cached
        try:
            original = self.serializer.verify(root)
        except VerificationError as exc:
            return f"root-{exc.reason}"
        envelope = parse_envelope(original.data)
        if envelope is None or envelope.signer != original.signer.fingerprint:
            return "root-bad-envelope"
        if envelope.root is not None:
            return "root-is-a-follow-up"
        try:
            listed = tasks_a_message_can_run(original.data, self.is_task)
        except CanvasTooLargeError:
            return "canvas-too-large"
        listed.add(str(envelope.headers.get("task")))
        entry = self.serializer.store.get(original.signer.celery_id)
        if entry is None:  # the store was reloaded between verify and here
            return "root-unknown-signer"
        result = (
            original.signer,
            envelope.timestamp,
            frozenset(listed),
            entry.certificate.not_valid_after_utc.timestamp(),
        )
        if len(self._originals) >= _ORIGINALS_CACHED:
            del self._originals[next(iter(self._originals))]  # the oldest
        self._originals[root] = result
        return result

    def follow_up_refused(self, signer: SignerIdentity, body: Any) -> str | None:
        """Return a detail if ``body`` can make run a task ``signer`` may not run."""
        if self.policy.allow_any:
            return None
        try:
            follow_ups = tasks_a_message_can_run(body, self.is_task)
        except CanvasTooLargeError:
            return "canvas-too-large"
        for name in sorted(follow_ups):
            if not self.policy.allows(signer, name):
                return f"follow-up={name}"
        return None

    def inspect(self, message: Any, body: Any) -> Verdict:
        """Check a kombu message as the strategy receives it; log a rejection."""
        headers = getattr(message, "headers", None)
        verdict: Verdict
        if self.reloader is not None and self.reloader.requested:
            # Before this message, not in the middle of judging one (see reload.py).
            self.reloader.reload_if_requested()
        try:
            if body is not None:
                # Celery only pre-decodes protocol 1 messages (no 'task' header).
                verdict = Verdict("unsupported-protocol")
            else:
                verdict = self.judge(
                    headers,
                    getattr(message, "content_type", None),
                    getattr(message, "body", None),
                    getattr(message, "delivery_info", None),
                    getattr(message, "properties", None) or {},
                )
        except Exception:
            logger.exception("security_lib gate failed while checking a message")
            verdict = Verdict("gate-error")
        if verdict.reason is None:
            return verdict
        hdrs: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
        if "task" not in hdrs and isinstance(body, Mapping):
            hdrs = body  # protocol 1 carries task and id in the (already decoded) body
        log_rejection(
            verdict.reason, hdrs.get("task"), hdrs.get("id"), verdict.signer, verdict.detail
        )
        return verdict


class Verdict:
    """The gate's decision on one message (``reason`` None: it may run)."""

    __slots__ = ("body", "detail", "reason", "root", "signer")

    def __init__(
        self,
        reason: str | None,
        signer: SignerIdentity | None = None,
        detail: str = "",
        root: str | None = None,
        body: Any = None,
    ) -> None:
        self.reason = reason
        self.signer = signer
        self.detail = detail
        #: The signed payload follow-ups of this message are judged by.
        self.root = root
        #: The body the gate verified and decoded (``[args, kwargs, embed]``).
        self.body = body


class VerifiedMessage:
    """The kombu message as Celery's strategy sees it once the gate accepted it.

    Celery would otherwise verify and parse the signed payload twice more:
    ``message.payload`` in the consumer (for the ``Request``) and ``loads()``
    in the pool process (the trace). This view hands Celery the body the gate
    verified, in Celery's own already-decoded form (``content_type`` None: the
    trace unpacks the body instead of decoding it), so the payload is verified
    and parsed exactly once, in the consumer, before anything runs. Everything
    else (headers, properties, delivery info, ack and reject) is the real
    message's; the real message keeps its raw body, so a transport that
    re-publishes unacknowledged messages (kombu's virtual transports) restores
    the original bytes.
    """

    __slots__ = ("_decoded_cache", "_message", "body", "payload")

    content_type = None
    content_encoding = None

    def __init__(self, message: Any, body: Any) -> None:
        self._message = message
        self.body = self.payload = self._decoded_cache = body

    def decode(self) -> Any:
        """Return the verified body (kombu's ``Message.decode``)."""
        return self.payload

    def __getattr__(self, name: str) -> Any:
        """Delegate everything else to the real kombu message."""
        return getattr(self._message, name)


def replay_key(headers: Mapping[str, Any]) -> tuple[str, str, str]:
    """Return the replay key of a task message (Celery re-sends retries with the same id)."""
    return (
        str(headers["id"]),
        str(headers.get("retries")),
        str(headers.get("replaced_task_nesting")),
    )


_GATES: weakref.WeakKeyDictionary[Any, Gate] = weakref.WeakKeyDictionary()


def install_gate(app: Any, gate: Gate) -> None:
    """Attach ``gate`` to ``app`` and add :class:`GateStep` to its consumer blueprint."""
    _GATES[app] = gate
    app.steps["consumer"].add(GateStep)


def gate_for(app: Any) -> Gate | None:
    """Return the gate installed on ``app`` by :func:`security_lib.harden`, if any."""
    try:
        return _GATES.get(app)
    except TypeError:  # not weak-referenceable: certainly not a hardened Celery app
        return None


StrategyHandler = Callable[..., Any]


def gated_strategy(inner: StrategyHandler, gate: Gate, consumer: Any) -> StrategyHandler:
    """Wrap one task strategy so that :meth:`Gate.inspect` runs first."""
    connection_errors = consumer.connection_errors

    replay = gate.replay

    def task_message_handler(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, *args: Any, **kwargs: Any
    ) -> Any:
        verdict = gate.inspect(message, body)
        if verdict.reason is not None:
            # requeue=False: dead-lettered or dropped by the broker, never redelivered.
            reject(logger, connection_errors, False)  # noqa: FBT003 - Celery's positional API
            return None
        # Overwrites whatever a publisher put there; Celery copies it into
        # task.request, where the sealer finds it for follow-ups.
        message.headers[ROOT_HEADER] = verdict.root
        # Anything that still asks the real message decodes nothing again.
        message._decoded_cache = verdict.body
        key = replay_key(message.headers)

        # Celery acknowledges when the task starts (acks_late: when it ends) and
        # rejects with requeue=False for good: from then on a copy is a replay.
        # Marked before the broker call: if the ack is lost with the connection,
        # the broker's redelivery of a task that already started is refused.
        def on_ack(*a: Any, **kw: Any) -> Any:
            replay.done(key)
            return ack(*a, **kw)

        def on_reject(*a: Any, **kw: Any) -> Any:
            requeue = kw.get("requeue", a[2] if len(a) > 2 else False)  # noqa: PLR2004
            if requeue:
                replay.requeued(key)
            else:
                replay.done(key)
            return reject(*a, **kw)

        verified = VerifiedMessage(message, verdict.body)
        return inner(verified, body, on_ack, on_reject, callbacks, *args, **kwargs)

    setattr(task_message_handler, _MARK, True)
    return task_message_handler


class GatedStrategies(dict[str, StrategyHandler]):
    """``consumer.strategies`` that gates every strategy as it is stored.

    Celery rebuilds strategies in place (``Consumer.update_strategies``: on
    every consumer (re)start through the ``Tasks`` step, and on
    ``WorkController.reload``, which a remote-control ``pool_restart``
    reaches): each new entry goes through ``__setitem__`` and is wrapped there,
    so no rebuild can leave an ungated strategy behind.
    """

    def __init__(self, gate: Gate, consumer: Any, items: Mapping[str, StrategyHandler]) -> None:
        super().__init__()
        self._gate = gate
        self._consumer = consumer
        self.update(items)

    def __setitem__(self, name: str, strategy: StrategyHandler) -> None:
        """Store ``strategy`` wrapped by the gate (unless it already is)."""
        if not getattr(strategy, _MARK, False):
            strategy = gated_strategy(strategy, self._gate, self._consumer)
        super().__setitem__(name, strategy)

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Store every entry through :meth:`__setitem__`."""
        for name, strategy in dict(*args, **kwargs).items():
            self[name] = strategy

    def setdefault(self, name: str, default: Any = None) -> Any:
        """Store through :meth:`__setitem__`."""
        if name not in self:
            self[name] = default
        return self[name]


_CELERY_REJECTIONS: Final = {
    "on_unknown_task": "unknown-task",
    "on_unknown_message": "unknown-message",
    "on_invalid_task": "invalid-task",
    "on_decode_error": "undecodable",
}


def _logged_rejection(handler: Callable[..., Any], reason: str) -> Callable[..., Any]:
    """Wrap one of Celery's own rejection callbacks so it also logs our line."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        message = next((a for a in args if hasattr(a, "headers") and hasattr(a, "body")), None)
        headers = getattr(message, "headers", None)
        hdrs: Mapping[str, Any] = headers if isinstance(headers, Mapping) else {}
        log_rejection(reason, hdrs.get("task"), hdrs.get("id"), None, "")
        return handler(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def journal_name(consumer: Any) -> str:
    """Return the replay journal's file name for this worker node (one file per node name)."""
    node = _FILE_UNSAFE.sub("_", str(getattr(consumer, "hostname", None) or "worker"))
    return f"replay-{node[:200]}.jsonl"


def log_rejection(
    reason: str, task: Any, task_id: Any, signer: SignerIdentity | None, detail: str
) -> None:
    """Log the contract line for one rejected message."""
    logger.error(
        "%s reason=%s task=%s id=%s signer=%s%s",
        REJECT_PREFIX,
        reason,
        _clean(task),
        _clean(task_id),
        _clean(signer.label()) if signer is not None else "-",
        f" detail={_clean(detail)}" if detail else "",
    )


class GateStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """Consumer bootstep wrapping every task strategy with the gate.

    Fails the worker start (``SecurityConfigError``) if the app was not
    hardened in this process, if the hardened settings were changed after
    :func:`security_lib.harden`, or if Celery's consumer no longer exposes
    ``strategies`` (a future Celery): never consume half-hardened.
    """

    name = "security_lib.gate"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        """Wrap the strategies Celery just (re)built."""
        from .hardening import hardening_of  # noqa: PLC0415 - avoid an import cycle
        from .settings import (  # noqa: PLC0415
            check_broker_connection,
            check_broker_connections,
            verify_applied,
        )

        gate = gate_for(c.app)
        if gate is None:
            raise SecurityConfigError(
                "worker",
                "the worker's app was not hardened by security_lib.harden() in this process",
                "call security_lib.harden(app, ...) in the module the worker imports",
            )
        verify_applied(c.app)
        hardening = hardening_of(c.app)
        if hardening is not None and hardening.broker_ssl is not None:
            # After every override (CELERY_BROKER_URL, -b, URL query): the
            # connection the consumer really opened, and the ones it may open.
            check_broker_connection(c.connection, hardening.broker_ssl)
            check_broker_connections(c.app, hardening.broker_ssl)
        # Bare {"task": name} mappings count as signatures when name can run here.
        gate.is_task = c.app.tasks.__contains__
        generation = gate.replay.new_connection()
        if gate.state_dir is not None:
            gate.replay.open_journal(gate.state_dir / journal_name(c))
        strategies = getattr(c, "strategies", None)
        if not isinstance(strategies, dict):
            raise SecurityConfigError(
                "worker",
                "this Celery version's consumer has no 'strategies' mapping to gate",
                "pin celery to a version supported by celery-kit-security-lib",
            )
        if isinstance(strategies, GatedStrategies):
            strategies.update(strategies)  # re-check every entry (already gated: no-op)
        else:
            # From now on every strategy stored is gated as it is stored.
            c.strategies = strategies = GatedStrategies(gate, c, strategies)
        # Messages Celery itself refuses before any strategy (unknown task name,
        # not a task message, undecodable protocol 1 body) get our log line too,
        # so that every refused message can be found by its prefix.
        for attribute, reason in _CELERY_REJECTIONS.items():
            handler = getattr(c, attribute, None)
            if callable(handler) and not getattr(handler, _MARK, False):
                setattr(c, attribute, _logged_rejection(handler, reason))
        self._start_reloads(c, gate)
        logger.info(
            "security_lib gate active on %d task(s), connection %d", len(strategies), generation
        )

    @staticmethod
    def _start_reloads(c: Any, gate: Gate) -> None:
        """Take SIGUSR2 for store reloads and apply a requested one once a second."""
        from .reload import POLL_INTERVAL, RELOAD_SIGNAL, install_reload_signal  # noqa: PLC0415

        reloader = gate.reloader
        if reloader is None:
            return
        if install_reload_signal(reloader):
            logger.info(
                "security_lib: signal %s (systemctl reload) re-reads the signer store %s",
                RELOAD_SIGNAL.name,
                reloader.cert_store,
            )
        timer = getattr(c, "timer", None)
        if gate.reload_timer is not None:  # a consumer restart: one timer entry, not two
            gate.reload_timer.cancel()
            gate.reload_timer = None
        if timer is not None and hasattr(timer, "call_repeatedly"):
            gate.reload_timer = timer.call_repeatedly(POLL_INTERVAL, reloader.reload_if_requested)

    def shutdown(self, c: Any) -> None:
        """Release the replay journal when the worker stops (kept across reconnects)."""
        gate = gate_for(c.app)
        if gate is not None:
            if gate.reload_timer is not None:
                gate.reload_timer.cancel()
                gate.reload_timer = None
            gate.replay.close()
