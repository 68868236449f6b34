"""Attack tests against a real Celery worker (in-memory transport, solo pool).

Every test that expects a rejection also proves that the task body never
ran: after the rejection is logged, a legitimate "barrier" task is sent and
awaited; the solo pool runs messages in order, so had the rejected message
been executed (or redelivered), it would show up in ``RAN`` first.
"""

from __future__ import annotations

import datetime as dt
import pickle
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from attack import (
    Forger,
    ListHandler,
    Message,
    pack,
    pki_for_each_key_type,  # noqa: F401 (the module's pki fixture: each test runs per signer key type)
    tamper_body,
    task,
    wait_for,
)
from celery import Celery, Task, current_task
from celery.contrib.testing.worker import start_worker
from celery.worker.request import Request
from conftest import PKI

import security_lib
from security_lib.gate import REJECT_PREFIX

RAN: list[tuple[str, str, Any]] = []


class AuditedRequest(Request):  # type: ignore[misc]  # celery is untyped
    """A custom Request class, as some apps use: the gate must not depend on it."""


class CustomBase(Task):  # type: ignore[misc]  # celery is untyped
    Request = AuditedRequest
    Strategy = "celery.worker.strategy:default"


class Boom:
    """Unpickling this creates a file: the proof that pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


@dataclass
class Kit:
    app: Celery
    pki: PKI
    log: ListHandler
    worker: Forger  # signs as the worker's own identity (signer-worker)
    client: Forger  # signer-client: allowed kit.safe, kit.custom
    other: Forger  # signer-other: allowed kit.other_only (by fingerprint)
    rogue: Forger  # cert from another CA, not in the store

    def ran(self, task_id: str) -> bool:
        return any(tid == task_id for _, tid, _ in RAN)

    def wait_ran(self, task_id: str) -> None:
        wait_for(lambda: self.ran(task_id))

    def barrier(self) -> None:
        """Send a legitimate task and wait for it; everything queued before it is done."""
        msg = self.client.publish(self.client.signed("kit.safe", ("barrier",)))
        self.wait_ran(msg.id)

    def rejected(self, message: Message) -> str:
        """Wait for the rejection of ``message``; check it never ran; return the reason."""
        matches = wait_for(lambda: self.log.rejections(message.id))
        self.barrier()
        assert not self.ran(message.id), "task body ran despite rejection"
        assert len(self.log.rejections(message.id)) == 1, "rejected message was redelivered"
        return str(matches[0]["reason"])


@pytest.fixture(scope="module")
def kit(pki: PKI) -> Iterator[Kit]:
    # Celery keeps the callable first registered under a task name, also for a
    # later app of the same process (this fixture runs once per key type):
    # the task bodies find their request through current_task, not a closure.
    app = Celery("kit", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}

    @task(app, "kit.safe")
    def safe(x: Any = None) -> Any:
        RAN.append(("kit.safe", current_task.request.id, x))
        return x

    @task(app, "kit.dangerous")
    def dangerous(x: Any = None) -> None:
        RAN.append(("kit.dangerous", current_task.request.id, x))

    @task(app, "kit.other_only")
    def other_only() -> None:
        RAN.append(("kit.other_only", current_task.request.id, None))

    @task(app, "kit.custom", base=CustomBase)
    def custom(x: Any = None) -> None:
        RAN.append(("kit.custom", current_task.request.id, x))

    @task(app, "kit.add")
    def add(x: int, y: int) -> int:
        RAN.append(("kit.add", current_task.request.id, (x, y)))
        return x + y

    @task(app, "kit.retry_once", bind=True)
    def retry_once(self: Task) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=1)
        RAN.append(("kit.retry_once", self.request.id, self.request.retries))
        return "retried"

    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={
            "signer-worker": ["kit.*"],
            "signer-client": ["kit.safe", "kit.custom"],
            # by fingerprint, with colons, as `openssl x509 -fingerprint -sha256` prints it
            ":".join(pki.other.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper(): [
                "kit.other_*"
            ],
        },
        allow_insecure_broker=True,
        replay_window=60,
        clock_skew=5,
    )
    handler = ListHandler()
    logger = security_lib.gate.logger
    logger.addHandler(handler)
    try:
        with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
            yield Kit(
                app,
                pki,
                handler,
                Forger(app, pki.worker),
                Forger(app, pki.client),
                Forger(app, pki.other),
                Forger(app, pki.rogue),
            )
    finally:
        logger.removeHandler(handler)


# --- the happy paths ---------------------------------------------------------


def test_signed_round_trip_with_result(kit: Kit) -> None:
    result = kit.app.send_task("kit.add", (2, 3))
    assert result.get(timeout=10) == 5


def test_allowed_client_signer_runs(kit: Kit) -> None:
    msg = kit.client.publish(kit.client.signed("kit.safe", ("hello",)))
    kit.wait_ran(msg.id)
    assert ("kit.safe", msg.id, "hello") in RAN


def test_payload_is_verified_and_decoded_once(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate's verification is the only one: Celery gets the body it verified.

    Stock Celery would verify and parse the payload again for the Request and
    again for the trace. The task still gets exactly the signed arguments.
    """
    from security_lib.serializer import KitSerializer

    calls: list[int] = []
    original = KitSerializer.verify

    def counting(self: KitSerializer, payload: bytes | str, **kwargs: Any) -> Any:
        calls.append(len(payload))
        return original(self, payload, **kwargs)

    monkeypatch.setattr(KitSerializer, "verify", counting)
    msg = kit.client.publish(kit.client.signed("kit.safe", ({"n": [1, 2.5, "x" * 100]},)))
    kit.wait_ran(msg.id)
    assert ("kit.safe", msg.id, {"n": [1, 2.5, "x" * 100]}) in RAN
    assert calls == [len(msg.payload)]


def test_retry_is_not_taken_for_a_replay(kit: Kit) -> None:
    result = kit.app.send_task("kit.retry_once")
    assert result.get(timeout=10) == "retried"


# --- unsigned, unknown signer, tampering -------------------------------------


def test_unsigned_json_is_rejected(kit: Kit) -> None:
    headers, props, body = kit.client.build("kit.safe", ("unsigned",))
    import json

    msg = Message(headers, props, json.dumps(body), content_type="application/json")
    assert kit.rejected(kit.client.publish(msg)) == "unsigned"


def test_unsigned_payload_claiming_auth_is_rejected(kit: Kit) -> None:
    headers, props, _ = kit.client.build("kit.safe", ("x",))
    msg = Message(headers, props, '[["x"], {}, {}]')
    assert kit.rejected(kit.client.publish(msg)) == "unsigned"


def test_unknown_signer_is_rejected(kit: Kit) -> None:
    # Same CN as an allowed signer, issued by another CA: CN claims do not help.
    msg = kit.rogue.publish(kit.rogue.signed("kit.safe", ("rogue",)))
    assert kit.rejected(msg) == "unknown-signer"


def test_tampered_body_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("pay-10",))
    forged = Message(msg.headers, msg.properties, tamper_body(msg.payload, b"pay-10", b"pay-99"))
    assert kit.rejected(kit.client.publish(forged)) == "bad-signature"


# --- header re-targeting -----------------------------------------------------


def test_retargeted_task_header_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("args-for-safe",))
    attack = msg.copy(task="kit.dangerous")
    assert kit.rejected(kit.client.publish(attack)) == "header-mismatch:task"
    assert not any(name == "kit.dangerous" for name, _, _ in RAN)


def test_retargeting_a_task_with_custom_base_and_request_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",))
    assert kit.rejected(kit.client.publish(msg.copy(task="kit.custom"))) == "header-mismatch:task"
    legit = kit.client.publish(kit.client.signed("kit.custom", ("ok",)))
    kit.wait_ran(legit.id)


def test_changed_id_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",))
    attack = msg.copy(id=str(uuid.uuid4()))
    assert kit.rejected(kit.client.publish(attack)) == "header-mismatch:id"


def test_changed_eta_is_rejected(kit: Kit) -> None:
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    msg = kit.client.signed("kit.safe", ("x",), eta=later)
    attack = msg.copy(eta=dt.datetime.now(dt.timezone.utc).isoformat())  # run it now instead
    assert kit.rejected(kit.client.publish(attack)) == "header-mismatch:eta"


def test_changed_expires_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",), expires=30)
    attack = msg.copy(expires=None)  # make a short-lived message immortal
    assert kit.rejected(kit.client.publish(attack)) == "header-mismatch:expires"


@pytest.mark.parametrize(
    ("header", "value"),
    [("argsrepr", "('harmless',)"), ("kwargsrepr", "{'shown': 1}"), ("origin", "gen1@trusted"),
     ("ignore_result", True), ("group_index", 7), ("stamped_headers", ["tenant"]),
     ("stamps", {"tenant": "other"})],
)  # fmt: skip
def test_changed_informational_header_is_rejected(kit: Kit, header: str, value: Any) -> None:
    msg = kit.client.signed("kit.safe", ("secret-args",))
    assert kit.rejected(kit.client.publish(msg.copy(**{header: value}))) == (
        f"header-mismatch:{header}"
    )


@pytest.mark.parametrize(
    ("prop", "value"),
    [("reply_to", "attacker-reply-queue"), ("correlation_id", "someone-else"), ("priority", 9)],
)
def test_changed_amqp_property_is_rejected(kit: Kit, prop: str, value: Any) -> None:
    """reply_to decides where an rpc:// result goes; priority reorders: both are bound."""
    msg = kit.client.signed("kit.safe", ("props",))
    msg.properties[prop] = value
    assert kit.rejected(kit.client.publish(msg)) == f"header-mismatch:{prop}"


def test_priority_and_reply_to_set_by_the_producer_run(kit: Kit) -> None:
    """The positive twin: the real producer path binds what it publishes."""
    result = kit.app.send_task("kit.add", (20, 22), priority=7)
    assert result.get(timeout=10) == 42


def test_envelope_naming_another_signer_is_rejected(kit: Kit) -> None:
    # signer-other signs, but claims to be signer-client inside the message.
    msg = kit.other.signed("kit.safe", ("x",), envelope_signer=kit.pki.client.fingerprint)
    assert kit.rejected(kit.other.publish(msg)) == "signer-mismatch"


def test_signed_message_without_envelope_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",), envelope=False)  # a stock Celery producer
    assert kit.rejected(kit.client.publish(msg)) == "bad-envelope"


# --- replay -------------------------------------------------------------------


def test_replayed_message_is_rejected(kit: Kit) -> None:
    msg = kit.client.publish(kit.client.signed("kit.safe", ("once",)))
    kit.wait_ran(msg.id)
    kit.client.publish(msg)  # the captured copy, byte for byte
    reasons = wait_for(lambda: kit.log.rejections(msg.id))
    assert reasons[0]["reason"] == "replay"
    kit.barrier()
    assert sum(1 for _, tid, _ in RAN if tid == msg.id) == 1


def test_message_older_than_window_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("old",), ts=time.time() - 3600)
    assert kit.rejected(kit.client.publish(msg)) == "expired-envelope"


def test_message_from_the_future_is_rejected(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("future",), ts=time.time() + 3600)
    assert kit.rejected(kit.client.publish(msg)) == "future-envelope"


def test_copy_published_to_another_route_is_rejected(kit: Kit) -> None:
    # Signed for another worker's queue, re-published into this one.
    msg = kit.client.signed("kit.safe", ("elsewhere",), route=["jobs", "other-node"])
    assert kit.rejected(kit.client.publish(msg)) == "route-mismatch"
    # The positive twin: the same kind of message signed for this queue runs.
    ok = kit.client.publish(kit.client.signed("kit.safe", ("here",), route=["", "celery"]))
    kit.wait_ran(ok.id)


# --- canvas: everything a message can make run ------------------------------


def _sig(kit: Kit, name: str, **kwargs: Any) -> dict[str, Any]:
    return dict(kit.app.signature(name, kwargs=kwargs))


@pytest.mark.parametrize(
    "option",
    ["callbacks", "errbacks", "chain", "chord", "nested"],
)
def test_follow_up_the_signer_may_not_run_is_refused(kit: Kit, option: str) -> None:
    """signer-client may run kit.safe, not kit.dangerous: not as a link, chain, chord either."""
    bad = _sig(kit, "kit.dangerous", x="via-" + option)
    table: dict[str, dict[str, Any]] = {
        "callbacks": {"callbacks": [bad]},
        "errbacks": {"errbacks": [bad]},
        "chain": {"chain": [bad]},
        "chord": {"chord": bad},
        # a signature hidden in the kwargs of an allowed callback
        "nested": {"callbacks": [_sig(kit, "kit.safe", x=_sig(kit, "kit.dangerous"))]},
    }
    options = table[option]
    msg = kit.client.publish(kit.client.signed("kit.safe", ("canvas",), **options))
    assert kit.rejected(msg) == "signer-not-allowed"
    assert not any(name == "kit.dangerous" for name, _, _ in RAN)


def test_allowed_follow_up_runs(kit: Kit) -> None:
    """The positive twin: a link to a task the signer may run is accepted and runs."""

    def firsts() -> int:  # RAN is shared by the runs of every key type
        return sum(1 for name, _, x in RAN if name == "kit.safe" and x == "first")

    before = firsts()
    msg = kit.client.publish(
        kit.client.signed("kit.safe", ("first",), callbacks=[_sig(kit, "kit.safe")])
    )
    kit.wait_ran(msg.id)
    wait_for(lambda: firsts() == before + 2)


# --- allowlist ----------------------------------------------------------------


def test_signer_not_allowed_for_task_is_rejected(kit: Kit) -> None:
    msg = kit.other.publish(kit.other.signed("kit.safe", ("x",)))
    assert kit.rejected(msg) == "signer-not-allowed"
    msg = kit.client.publish(kit.client.signed("kit.dangerous", ("x",)))
    assert kit.rejected(msg) == "signer-not-allowed"


def test_signer_allowed_by_fingerprint_runs(kit: Kit) -> None:
    msg = kit.other.publish(kit.other.signed("kit.other_only"))
    kit.wait_ran(msg.id)


# --- pickle and protocol ------------------------------------------------------


def test_pickle_payload_is_not_deserialized(kit: Kit, tmp_path: Path) -> None:
    proof = tmp_path / "pickle-ran"
    headers, props, _ = kit.client.build("kit.safe")
    msg = Message(headers, props, pickle.dumps(Boom(proof)), "application/x-python-serialize")
    reason = kit.rejected(kit.client.publish(msg))
    assert reason == "unsigned"
    assert not proof.exists()


def signed_pickle(kit: Kit, proof: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A trusted signer's signature over a pickle body, inner content type pickle."""
    headers, props, _ = kit.client.build("kit.safe")
    body = pickle.dumps(Boom(proof))
    ser = kit.client.serializer()
    signer = ser.signer
    assert signer is not None
    signature = kit.pki.client.sign(body)
    return (
        headers,
        props,
        pack(signer.celery_id, signature, "application/x-python-serialize", "binary", body),
    )


def test_signed_pickle_body_is_not_deserialized(kit: Kit, tmp_path: Path) -> None:
    proof = tmp_path / "signed-pickle-ran"
    headers, props, payload = signed_pickle(kit, proof)
    reason = kit.rejected(kit.client.publish(Message(headers, props, payload)))
    assert reason == "bad-content-type"
    assert not proof.exists()


def test_stock_auth_serializer_would_unpickle_that_body(kit: Kit, tmp_path: Path) -> None:
    """Why the kit pins the inner content type: stock Celery loads it with force=True."""
    from celery.exceptions import SecurityError
    from celery.security.certificate import Certificate, CertStore
    from celery.security.serialization import SecureSerializer
    from cryptography.hazmat.primitives.asymmetric import rsa

    proof = tmp_path / "stock-unpickled"
    _, _, payload = signed_pickle(kit, proof)
    store = CertStore()
    if not isinstance(kit.pki.client.private_key, rsa.RSAPrivateKey):
        # Stock Celery cannot even load an Ed25519/ECDSA signer: nothing to unpickle with.
        with pytest.raises(SecurityError, match="Non-RSA certificates are not supported"):
            Certificate(kit.pki.client.cert.read_text())
        return
    store.add_cert(Certificate(kit.pki.client.cert.read_text()))
    SecureSerializer(cert_store=store, digest="sha256").deserialize(payload)
    assert proof.exists()


def test_protocol_1_message_is_rejected(kit: Kit) -> None:
    task_id = str(uuid.uuid4())
    body = {"task": "kit.safe", "id": task_id, "args": ["p1"], "kwargs": {}}
    msg = Message({}, {}, kit.client.serializer().serialize(body))
    kit.client.publish(msg)
    wait_for(lambda: any(f"id={task_id}" in line for line in kit.log.lines))
    kit.barrier()
    assert not kit.ran(task_id)
    assert any("reason=unsupported-protocol" in line for line in kit.log.lines)


# --- the log line -------------------------------------------------------------


def test_rejection_log_line_format(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",))
    attack = msg.copy(id=msg.id + "\nsecurity_lib rejected message: reason=fake")
    kit.client.publish(attack)
    wait_for(lambda: any(msg.id in line for line in kit.log.lines))
    line = next(line for line in kit.log.lines if msg.id in line)
    assert "\n" not in line  # no log injection through headers
    assert line == (
        f"{REJECT_PREFIX} reason=header-mismatch:id task=kit.safe "
        f"id={msg.id}?security_lib?rejected?message:?reason=fake signer=signer-client"
    )


def test_unknown_task_name_is_rejected_and_logged(kit: Kit) -> None:
    msg = kit.client.signed("kit.safe", ("x",))
    assert kit.rejected(kit.client.publish(msg.copy(task="kit.nonexistent"))) == "unknown-task"


def test_remote_control_is_disabled_by_default(kit: Kit) -> None:
    assert kit.app.conf.worker_enable_remote_control is False
    assert kit.app.control.ping(timeout=0.5) == []
