"""The signed envelope: the header fields the kit binds into what is signed.

Celery's ``auth`` serializer signs only the message *body* (protocol 2:
``[args, kwargs, embed]``); the headers that decide *what* runs (``task``,
``id``, ``eta``, ``expires``...) travel unsigned. The kit copies those
header values, the signer's certificate fingerprint and a timestamp into the
``embed`` mapping of the body before it is signed, under the key
:data:`ENVELOPE_KEY`. The worker gate compares them with the headers that
arrived and rejects any difference before any task code runs.

The producer side hooks ``app.amqp.send_task_message`` (per app) so that the
envelope is built from the final headers (after ``apply_async(headers=...)``
has been merged) right before kombu serializes and signs the body.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

from celery._state import get_current_worker_task

from .errors import SecurityConfigError

__all__ = [
    "BOUND_HEADERS",
    "ENVELOPE_KEY",
    "ENVELOPE_VERSION",
    "ROOT_HEADER",
    "Envelope",
    "first_mismatch",
    "install_sealer",
    "make_envelope",
    "parse_envelope",
    "route_of",
]

#: Key of the envelope inside the protocol 2 ``embed`` mapping.
ENVELOPE_KEY: Final = "security_lib"
#: Version 2 added the route (exchange, routing key), version 3 the AMQP
#: properties ``reply_to``, ``correlation_id`` and ``priority``, version 4 the
#: headers ``group_index``, ``stamped_headers`` and ``stamps``; older
#: envelopes are refused (upgrade producers and workers together).
ENVELOPE_VERSION: Final = 4

#: Timestamps outside this range (seconds since the epoch) are absurd: refused.
MIN_TIMESTAMP: Final = 1_000_000_000.0  # 2001
MAX_TIMESTAMP: Final = 10_000_000_000.0  # 2286

#: Headers bound into the signature. ``task`` (what runs), ``id`` (replay key,
#: result routing), ``eta``/``expires`` (when), ``retries`` and
#: ``replaced_task_nesting`` (Celery re-sends a retried/replaced task with the
#: same id; they keep those messages distinct), ``shadow`` (the name shown in
#: logs), ``timelimit`` (an attacker must not lift time limits), ``group``,
#: ``root_id``, ``parent_id`` (workflow bookkeeping), ``argsrepr``/
#: ``kwargsrepr``/``origin`` (what logs, events and failure reports show: a
#: captured message must not show fake arguments), ``ignore_result`` (changes
#: behaviour), ``group_index`` (where a chord header's result lands in the list
#: the body receives, with Redis), ``stamped_headers``/``stamps`` (Celery 5.3+
#: stamping: what ``revoke_by_stamped_headers`` matches). The AMQP properties
#: ``reply_to``, ``correlation_id`` and ``priority`` are bound separately.
BOUND_HEADERS: Final = (
    "task",
    "id",
    "eta",
    "expires",
    "retries",
    "replaced_task_nesting",
    "shadow",
    "timelimit",
    "group",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "group_index",
    "stamped_headers",
    "stamps",
)

_MARK: Final = "__security_lib_sealer__"

#: Message header the worker's gate sets (overwriting whatever arrived) to the
#: signed payload of the message's *root*: the producer's original for a
#: follow-up it accepted on the original signer's behalf, the message itself
#: otherwise. Celery copies headers into ``task.request``; the sealer reads it
#: there when the task publishes a follow-up and never publishes the header.
ROOT_HEADER: Final = "security_lib_root"


def current_root() -> str | None:
    """Return the root payload of the task this thread is running in a worker, if any."""
    task = get_current_worker_task()
    if task is None:
        return None
    root = getattr(task.request, ROOT_HEADER, None)
    return root if isinstance(root, str) and root else None


def normalize(value: Any) -> Any:
    """Return ``value`` as it looks after a JSON round trip (tuples become lists).

    Headers cross AMQP tables and the envelope crosses JSON; comparing both in
    JSON form avoids false mismatches such as ``(None, None)`` vs ``[None, None]``.
    """
    if value is None or isinstance(value, (str, int)):  # bool is an int: unchanged by JSON
        return value  # the common case, without the round trip (per header, per message)
    if not value and isinstance(value, (dict, list, tuple)):
        return {} if isinstance(value, dict) else []  # e.g. Celery's default stamps={}
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def bound_properties(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the AMQP properties bound into the envelope, normalised.

    ``reply_to`` decides where an ``rpc://`` result goes and ``correlation_id``
    which caller it is matched to; ``priority`` can reorder a queue. Absent
    and empty are the same (transports fill in defaults differently).
    """
    props: Mapping[str, Any] = properties or {}
    priority = props.get("priority") or 0
    return {
        "reply_to": str(props.get("reply_to") or "") or None,
        "correlation_id": str(props.get("correlation_id") or "") or None,
        "priority": priority if isinstance(priority, int) else str(priority),
    }


class Envelope:
    """A parsed envelope (the signed copy of the bound headers)."""

    __slots__ = ("headers", "properties", "root", "route", "signer", "timestamp")

    def __init__(
        self,
        headers: Mapping[str, Any],
        signer: str,
        timestamp: float,
        route: list[str],
        *,
        root: str | None = None,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        self.headers = headers
        self.properties = properties if properties is not None else bound_properties(None)
        self.signer = signer
        self.timestamp = timestamp
        self.route = route
        #: A follow-up's proof: the signed payload of the message it follows
        #: (the producer's original), as the worker's gate accepted it.
        self.root = root


def route_of(exchange: Any, routing_key: Any) -> list[str]:
    """Return the destination as bound: ``[exchange name, routing key]`` ('' for none)."""
    name = getattr(exchange, "name", exchange)
    return [str(name or ""), str(routing_key or "")]


def make_envelope(
    headers: Mapping[str, Any],
    signer_fingerprint: str,
    now: float | None = None,
    *,
    route: list[str] | None = None,
    root: str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the envelope for ``headers`` (a plain JSON-able dict) sent to ``route``.

    ``root`` (a follow-up published by a worker while it runs a task): the
    signed payload of the original message, so that the receiving gate can
    judge the follow-up by the original signer and what it listed.
    """
    envelope = {
        "v": ENVELOPE_VERSION,
        "signer": signer_fingerprint,
        "ts": time.time() if now is None else now,
        "route": route or ["", ""],
        "headers": {name: normalize(headers.get(name)) for name in BOUND_HEADERS},
        "props": bound_properties(properties),
    }
    if root is not None:
        envelope["root"] = root
    return envelope


def seal_body(
    body: Any,
    headers: Mapping[str, Any],
    signer_fingerprint: str,
    route: list[str] | None = None,
    *,
    root: str | None = None,
    properties: Mapping[str, Any] | None = None,
) -> None:
    """Insert the envelope into a protocol 2 body ``(args, kwargs, embed)`` in place."""
    if not (
        isinstance(body, (tuple, list))
        and len(body) == 3  # noqa: PLR2004 - protocol 2 body has three parts
        and isinstance(body[2], MutableMapping)
    ):
        raise SecurityConfigError(
            "task_protocol",
            "the message body is not Celery protocol 2 ([args, kwargs, embed])",
            "leave task_protocol at 2 (harden() sets it)",
        )
    body[2][ENVELOPE_KEY] = make_envelope(
        headers, signer_fingerprint, route=route, root=root, properties=properties
    )


def parse_envelope(body: Any) -> Envelope | None:
    """Return the envelope of a decoded protocol 2 body, or None if absent/malformed."""
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], dict)):  # noqa: PLR2004
        return None
    raw = body[2].get(ENVELOPE_KEY)
    if not isinstance(raw, dict) or raw.get("v") != ENVELOPE_VERSION:
        return None
    headers, signer, ts = raw.get("headers"), raw.get("signer"), raw.get("ts")
    route, root, props = raw.get("route"), raw.get("root"), raw.get("props")
    if (
        not isinstance(headers, dict)
        or set(headers) != set(BOUND_HEADERS)
        or not isinstance(signer, str)
        or not isinstance(ts, (int, float))
        or isinstance(ts, bool)
        # NaN/inf would never expire; a date before 2001 or after 2286 is no clock.
        or not math.isfinite(ts)
        or not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP
        or not isinstance(route, list)
        or len(route) != 2  # noqa: PLR2004 - exchange and routing key
        or not all(isinstance(part, str) for part in route)
        or not (root is None or (isinstance(root, str) and root))
        or not isinstance(props, dict)
        or set(props) != _PROPERTY_NAMES
    ):
        return None
    return Envelope(headers, signer, float(ts), route, root=root, properties=props)


_PROPERTY_NAMES: Final = frozenset(bound_properties(None))


def first_mismatch(
    envelope: Envelope,
    headers: Mapping[str, Any],
    properties: Mapping[str, Any] | None = None,
) -> str | None:
    """Return the first bound header (or property) that differs from the signed copy, else None.

    ``properties`` None skips the property comparison (callers that have none,
    e.g. the benchmark); the worker's gate always passes the message's.
    """
    for name in BOUND_HEADERS:
        if normalize(headers.get(name)) != envelope.headers.get(name):
            return name
    if properties is not None:
        for name, value in bound_properties(properties).items():
            if value != envelope.properties.get(name):
                return name
    return None


SendTaskMessage = Callable[..., Any]


def install_sealer(amqp: Any, signer_fingerprint: Callable[[], str]) -> None:
    """Wrap ``amqp.send_task_message`` so that every task message gets an envelope.

    ``amqp`` is ``app.amqp``; the wrapper is per app (Celery's
    ``before_task_publish`` signal is global and cannot tell apps apart).
    ``signer_fingerprint`` is called per message so that the envelope names the
    key kombu will actually sign with (the registry is process-global).
    """
    original: SendTaskMessage = amqp.send_task_message
    if getattr(original, _MARK, False):
        return

    def send_task_message(
        producer: Any,
        name: str,
        message: Any,
        *args: Any,
        headers: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        message_headers, _properties, body, _sent_event = message
        if headers:
            # Celery merges these into the message headers; do it first so the
            # envelope binds the values that are actually published.
            message_headers.update(headers)
        # A retry copies the running task's headers: never publish the gate's.
        message_headers.pop(ROOT_HEADER, None)
        # Celery resolves the final exchange and routing key inside
        # send_task_message; the producer's publish() sees them, so the body
        # is sealed there, right before kombu serializes and signs it.
        sealing = _SealingProducer(producer, signer_fingerprint, body, current_root())
        return original(sealing, name, message, *args, **kwargs)

    setattr(send_task_message, _MARK, True)
    amqp.send_task_message = send_task_message


class _SealingProducer:
    """A kombu Producer proxy whose ``publish`` seals the body for its final destination."""

    __slots__ = ("_body", "_fingerprint", "_inner", "_root")

    def __init__(
        self, inner: Any, fingerprint: Callable[[], str], body: Any, root: str | None
    ) -> None:
        self._inner = inner
        self._fingerprint = fingerprint
        self._body = body
        self._root = root

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> Any:
        """Seal the task body with the headers, exchange and routing key it is published with.

        Anything else published through this producer (the ``task-sent``
        event) passes unchanged.
        """
        if body is self._body:
            headers = kwargs.get("headers") or {}
            route = route_of(kwargs.get("exchange"), kwargs.get("routing_key"))
            seal_body(body, headers, self._fingerprint(), route, root=self._root, properties=kwargs)
        return self._inner.publish(body, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
