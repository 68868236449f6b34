"""Helpers for the attack tests: forge, tamper with and replay task messages."""

from __future__ import annotations

import base64
import copy
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from conftest import ATTACK_KEY_TYPES, PKI, Issued
from kombu.serialization import registry

from security_lib.envelope import install_sealer, make_envelope
from security_lib.serializer import AUTH_CONTENT_TYPE, SEPARATOR, KitSerializer

LINE = re.compile(
    r"^security_lib rejected message: reason=(?P<reason>\S+) task=(?P<task>\S+) "
    r"id=(?P<id>\S+) signer=(?P<signer>\S+)( detail=\S+)?$"
)


class ListHandler(logging.Handler):
    """Collect the kit's log lines (thread-safe; the worker runs in a thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.lines.append(record.getMessage())

    def rejections(self, task_id: str) -> list[re.Match[str]]:
        with self._lock2:
            found = [LINE.match(line) for line in self.lines]
        return [m for m in found if m is not None and m["id"] == task_id]


def task(app: Celery, name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Return ``app.task(...)`` typed (Celery's decorator is untyped)."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name=name, **options)
    return decorator


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("timed out waiting")


@dataclass
class Message:
    """A task message as it goes on the wire: headers, properties, raw payload."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    payload: str | bytes
    content_type: str = "application/data"

    @property
    def id(self) -> str:
        return str(self.headers["id"])

    def copy(self, **header_changes: Any) -> Message:
        headers = copy.deepcopy(self.headers)
        headers.update(header_changes)
        return Message(headers, dict(self.properties), self.payload, self.content_type)


@dataclass
class Forger:
    """Builds messages like a producer signing with ``signer`` would (or worse)."""

    app: Celery
    signer: Issued | None
    routing_key: str = "celery"
    sent: list[Message] = field(default_factory=list)

    def serializer(self) -> KitSerializer:
        if self.signer is None:
            raise AssertionError("no signer")
        return KitSerializer(
            key=self.signer.private_key, cert=self.signer.certificate, store={}, digest="sha256"
        )

    def build(
        self,
        name: str,
        args: tuple[Any, ...] = (),
        *,
        envelope: bool = True,
        ts: float | None = None,
        envelope_signer: str | None = None,
        route: list[str] | None = None,
        root: str | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = self.app.amqp.create_task_message(
            task_id, name, args, kwargs or {}, **options
        )
        if envelope:
            fp = envelope_signer or (self.signer.fingerprint if self.signer else "")
            body[2]["security_lib"] = make_envelope(
                headers,
                fp,
                now=ts,
                route=route or ["", self.routing_key],
                root=root,
                properties=properties,
            )
        return headers, properties, body

    def signed(self, name: str, args: tuple[Any, ...] = (), **kwargs: Any) -> Message:
        headers, properties, body = self.build(name, args, **kwargs)
        return Message(headers, properties, self.serializer().serialize(body))

    def publish(self, message: Message) -> Message:
        with self.app.connection_for_write() as conn:
            producer = conn.Producer()
            producer.publish(
                message.payload,
                exchange="",
                routing_key=self.routing_key,
                headers=copy.deepcopy(message.headers),
                content_type=message.content_type,
                content_encoding="utf-8" if message.content_type != "binary" else "binary",
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
                priority=message.properties.get("priority"),
                retry=False,
            )
        self.sent.append(message)
        return message


def tamper_body(payload: str | bytes, old: bytes, new: bytes) -> str:
    """Change bytes inside the signed body without re-signing."""
    raw = base64.b64decode(payload)
    parts = raw.split(SEPARATOR, 4)
    assert old in parts[4]
    parts[4] = parts[4].replace(old, new)
    return base64.b64encode(SEPARATOR.join(parts)).decode()


def pack(signer_id: str, signature: bytes, content_type: str, encoding: str, body: bytes) -> str:
    """Pack fields in Celery's auth wire format."""
    fields = SEPARATOR.join(
        [
            base64.b64encode(signer_id.encode()),
            base64.b64encode(signature),
            content_type.encode(),
            encoding.encode(),
            body,
        ]
    )
    return base64.b64encode(fields).decode()


def producer_app(name: str, signer: Issued, **conf: Any) -> Celery:
    """Return a real Celery producer (memory transport) that signs as ``signer``.

    harden() allows one signing identity per process and the in-process worker
    holds it; a producer with another key would need another process, which
    the memory transport cannot reach. This app uses the kit's own
    serializer and sealer with ``signer``'s key under a second kombu encoder
    name (same content type, no decoder: the worker's decoding stays the
    kit's), so Celery's canvas code (chords, starmap, chunks...) publishes
    exactly what a hardened producer with that key publishes.
    """
    kit = KitSerializer(key=signer.private_key, cert=signer.certificate, store={}, digest="sha256")
    encoder = f"auth-as-{signer.cn}"
    owner = registry.type_to_name.get(AUTH_CONTENT_TYPE)
    register: Callable[..., None] = registry.register  # kombu is untyped
    register(encoder, kit.serialize, None, AUTH_CONTENT_TYPE, "utf-8")
    if owner is not None:
        registry.type_to_name[AUTH_CONTENT_TYPE] = owner  # decoding is the worker's
    app = Celery(name, broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        task_serializer=encoder,
        result_serializer="json",
        result_accept_content=["json"],
        broker_transport_options={"polling_interval": 0.005},
    )
    app.conf.update(conf)
    install_sealer(app.amqp, lambda: signer.fingerprint)
    return app


@pytest.fixture(scope="module", params=ATTACK_KEY_TYPES, name="pki")
def pki_for_each_key_type(request: pytest.FixtureRequest, pki_of: Callable[[str], PKI]) -> PKI:
    """A module's ``pki`` when it imports this fixture: its tests run once per signer key type.

    Each key type's worker stands for another process: the identity the
    previous one hardened with (a module fixture, set up before the per-test
    reset) is forgotten here.
    """
    from security_lib.hardening import _forget_process_identity

    _forget_process_identity()
    key_type: str = request.param
    return pki_of(key_type)
