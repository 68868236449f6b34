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
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final

from .errors import SecurityConfigError

__all__ = [
    "BOUND_HEADERS",
    "ENVELOPE_KEY",
    "ENVELOPE_VERSION",
    "Envelope",
    "first_mismatch",
    "install_sealer",
    "make_envelope",
    "parse_envelope",
]

#: Key of the envelope inside the protocol 2 ``embed`` mapping.
ENVELOPE_KEY: Final = "security_lib"
ENVELOPE_VERSION: Final = 1

#: Headers bound into the signature. ``task`` (what runs), ``id`` (replay key,
#: result routing), ``eta``/``expires`` (when), ``retries`` and
#: ``replaced_task_nesting`` (Celery re-sends a retried/replaced task with the
#: same id; they keep those messages distinct), ``shadow`` (the name shown in
#: logs), ``timelimit`` (an attacker must not lift time limits), ``group``,
#: ``root_id``, ``parent_id`` (workflow bookkeeping). ``argsrepr``/
#: ``kwargsrepr``/``origin`` are informational and left out.
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
)

_MARK: Final = "__security_lib_sealer__"


def normalize(value: Any) -> Any:
    """Return ``value`` as it looks after a JSON round trip (tuples become lists).

    Headers cross AMQP tables and the envelope crosses JSON; comparing both in
    JSON form avoids false mismatches such as ``(None, None)`` vs ``[None, None]``.
    """
    return json.loads(json.dumps(value, default=str, sort_keys=True))


class Envelope:
    """A parsed envelope (the signed copy of the bound headers)."""

    __slots__ = ("headers", "signer", "timestamp")

    def __init__(self, headers: Mapping[str, Any], signer: str, timestamp: float) -> None:
        self.headers = headers
        self.signer = signer
        self.timestamp = timestamp


def make_envelope(
    headers: Mapping[str, Any], signer_fingerprint: str, now: float | None = None
) -> dict[str, Any]:
    """Build the envelope for ``headers`` (a plain JSON-able dict)."""
    return {
        "v": ENVELOPE_VERSION,
        "signer": signer_fingerprint,
        "ts": time.time() if now is None else now,
        "headers": {name: normalize(headers.get(name)) for name in BOUND_HEADERS},
    }


def seal_body(body: Any, headers: Mapping[str, Any], signer_fingerprint: str) -> None:
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
    body[2][ENVELOPE_KEY] = make_envelope(headers, signer_fingerprint)


def parse_envelope(body: Any) -> Envelope | None:
    """Return the envelope of a decoded protocol 2 body, or None if absent/malformed."""
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[2], dict)):  # noqa: PLR2004
        return None
    raw = body[2].get(ENVELOPE_KEY)
    if not isinstance(raw, dict) or raw.get("v") != ENVELOPE_VERSION:
        return None
    headers, signer, ts = raw.get("headers"), raw.get("signer"), raw.get("ts")
    if (
        not isinstance(headers, dict)
        or set(headers) != set(BOUND_HEADERS)
        or not isinstance(signer, str)
        or not isinstance(ts, (int, float))
        or isinstance(ts, bool)
    ):
        return None
    return Envelope(headers=headers, signer=signer, timestamp=float(ts))


def first_mismatch(envelope: Envelope, headers: Mapping[str, Any]) -> str | None:
    """Return the first bound header whose value differs from the signed copy, else None."""
    for name in BOUND_HEADERS:
        if normalize(headers.get(name)) != envelope.headers.get(name):
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
        seal_body(body, message_headers, signer_fingerprint())
        return original(producer, name, message, *args, **kwargs)

    setattr(send_task_message, _MARK, True)
    amqp.send_task_message = send_task_message
