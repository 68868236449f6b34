"""Issue 11 round 3 against a real Celery worker (memory transport, solo pool).

* Follow-ups (chain steps, links, errbacks, retries) carry the original
  message and are judged by the *original* signer: the worker's own signer
  has an empty allowlist entry here and runs nothing on its own.
* What a stolen worker key can and cannot do with that.
* The gate survives every strategy rebuild Celery 5.7 has.
* Compressed messages are never expanded (decompression bombs).
"""

from __future__ import annotations

import bz2
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack import (
    Forger,
    ListHandler,
    Message,
    pki_for_each_key_type,  # noqa: F401 (the module's pki fixture: each test runs per signer key type)
    tamper_body,
    task,
    wait_for,
)
from celery import Celery, Task
from celery.contrib.testing.worker import start_worker
from conftest import PKI

import security_lib
from security_lib.gate import GatedStrategies

RAN: list[tuple[str, str, Any]] = []


@dataclass
class FollowKit:
    app: Celery
    worker: Any  # celery's TestWorkController
    log: ListHandler
    client: Forger  # signer-client: fu.first, fu.second, fu.third, fu.retry, fu.spawn, fu.fail
    thief: Forger  # the worker's own key (signer-worker: empty allowlist entry)
    other: Forger  # signer-other: fu.other only, not a follow-up signer

    def ran(self, name: str, x: Any) -> bool:
        return (name, x) in [(n, v) for n, _, v in RAN]

    def barrier(self) -> None:
        msg = self.client.publish(self.client.signed("fu.first", (f"barrier-{time.time()}",)))
        wait_for(lambda: any(tid == msg.id for _, tid, _ in RAN))

    def line(self, task_id: str) -> str:
        """Wait for the rejection line of ``task_id`` and return it."""
        found: str = wait_for(
            lambda: next((ln for ln in list(self.log.lines) if f" id={task_id} " in ln), None)
        )
        return found


@pytest.fixture(scope="module")
def fkit(pki: PKI) -> Iterator[FollowKit]:
    app = Celery("fu", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}

    for name in ("fu.first", "fu.second", "fu.third", "fu.dangerous", "fu.other"):

        def make(task_name: str) -> Callable[..., Any]:
            def body(self: Task, x: Any = None, *rest: Any) -> Any:
                RAN.append((task_name, str(self.request.id), x))
                return f"{task_name}:{x}"

            return body

        task(app, name, bind=True)(make(name))

    @task(app, "fu.retry", bind=True)
    def retry_once(self: Task, x: Any = None) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0, max_retries=1)
        RAN.append(("fu.retry", str(self.request.id), x))
        return "retried"

    @task(app, "fu.spawn", bind=True)
    def spawn(self: Task, x: Any = None) -> None:
        # Sends a task the original message did not list (not a follow-up).
        RAN.append(("fu.spawn", str(self.request.id), x))
        self.app.send_task("fu.second", (f"spawned-{x}",))  # this run's app, not a closure

    @task(app, "fu.fail", bind=True)
    def fail(self: Task, x: Any = None) -> None:
        raise RuntimeError(f"fu.fail {x}")

    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={
            "signer-worker": [],  # runs nothing on its own: follow-ups are vouched
            "signer-client": [
                "fu.first",
                "fu.second",
                "fu.third",
                "fu.retry",
                "fu.spawn",
                "fu.fail",
            ],
            "signer-other": ["fu.other"],
        },
        allow_insecure_broker=True,
        replay_window=60,
        clock_skew=5,
    )
    handler = ListHandler()
    logger = security_lib.gate.logger
    logger.addHandler(handler)
    try:
        with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING") as w:
            yield FollowKit(
                app,
                w,
                handler,
                Forger(app, pki.client),
                Forger(app, pki.worker),
                Forger(app, pki.other),
            )
    finally:
        logger.removeHandler(handler)


def sig(kit: FollowKit, name: str, *args: Any) -> dict[str, Any]:
    return dict(kit.app.signature(name, args=args))


def rejection_lines(kit: FollowKit) -> list[str]:
    return [ln for ln in kit.log.lines if ln.startswith(security_lib.REJECT_PREFIX)]


# --- follow-ups run on behalf of the original signer (positive) -------------


def test_chain_runs_on_behalf_of_the_producer(fkit: FollowKit) -> None:
    before = len(rejection_lines(fkit))
    # Celery pops the chain from its end: fu.second runs next, then fu.third.
    chain = [sig(fkit, "fu.third"), sig(fkit, "fu.second")]
    fkit.client.publish(fkit.client.signed("fu.first", ("c1",), chain=chain))
    wait_for(lambda: fkit.ran("fu.third", "fu.second:fu.first:c1"))
    assert fkit.ran("fu.second", "fu.first:c1")
    assert len(rejection_lines(fkit)) == before


def test_link_and_errback_run_on_behalf_of_the_producer(fkit: FollowKit) -> None:
    fkit.client.publish(fkit.client.signed("fu.first", ("l1",), callbacks=[sig(fkit, "fu.second")]))
    wait_for(lambda: fkit.ran("fu.second", "fu.first:l1"))
    fkit.client.publish(fkit.client.signed("fu.fail", ("e1",), errbacks=[sig(fkit, "fu.third")]))
    # Celery 5.7 calls an errback that takes no request in the worker or sends
    # it as a message; either way it runs once, vouched by the original.
    wait_for(lambda: any(n == "fu.third" for n, _, _ in RAN))


def test_retry_runs_on_behalf_of_the_producer(fkit: FollowKit) -> None:
    fkit.client.publish(fkit.client.signed("fu.retry", ("r1",)))
    wait_for(lambda: fkit.ran("fu.retry", "r1"))


# --- what the worker sends that the original did not list -------------------


def test_task_sending_an_unlisted_task_is_refused(fkit: FollowKit) -> None:
    msg = fkit.client.publish(fkit.client.signed("fu.spawn", ("s1",)))
    wait_for(lambda: fkit.ran("fu.spawn", "s1"))
    line = wait_for(
        lambda: next((ln for ln in list(fkit.log.lines) if "task=fu.second" in ln and
                      "not-in-original=fu.second" in ln), None)
    )  # fmt: skip
    assert "reason=signer-not-allowed" in line
    assert "signer=signer-worker" in line
    fkit.barrier()
    assert not fkit.ran("fu.second", "spawned-s1")
    assert msg.id


# --- a stolen worker key ----------------------------------------------------


def test_worker_key_alone_runs_nothing(fkit: FollowKit) -> None:
    msg = fkit.thief.publish(fkit.thief.signed("fu.first", ("stolen",)))
    line = fkit.line(msg.id)
    fkit.barrier()
    assert "reason=signer-not-allowed" in line
    assert not fkit.ran("fu.first", "stolen")


@pytest.mark.parametrize(
    ("forged_task", "root_options", "detail"),
    [
        ("fu.dangerous", {}, "not-in-original=fu.dangerous"),
        ("fu.second", {}, "not-in-original=fu.second"),
        # the original listed it, but its signer may not run it
        ("fu.dangerous", {"callbacks": ["fu.dangerous"]}, "on-behalf-of=signer-client"),
    ],
)
def test_stolen_worker_key_cannot_leave_the_original(
    fkit: FollowKit, forged_task: str, root_options: dict[str, Any], detail: str
) -> None:
    options = {k: [sig(fkit, n) for n in v] for k, v in root_options.items()}
    original = fkit.client.signed("fu.first", ("captured",), **options)  # captured, not sent
    forged = fkit.thief.signed(forged_task, ("evil",), root=str(original.payload))
    fkit.thief.publish(forged)
    line = fkit.line(forged.id)
    fkit.barrier()
    assert "reason=signer-not-allowed" in line
    assert f"detail={detail}" in line
    assert not fkit.ran(forged_task, "evil")


def test_stolen_worker_key_can_run_what_a_fresh_original_listed(fkit: FollowKit) -> None:
    """The residual risk, shown: a listed follow-up with arguments of the thief's choice."""
    original = fkit.client.signed("fu.first", ("captured",), callbacks=[sig(fkit, "fu.second")])
    forged = fkit.thief.publish(
        fkit.thief.signed("fu.second", ("thief-args",), root=str(original.payload))
    )
    wait_for(lambda: any(tid == forged.id for _, tid, _ in RAN))
    assert fkit.ran("fu.second", "thief-args")


def test_stale_or_tampered_original_is_refused(fkit: FollowKit) -> None:
    listed = {"callbacks": [sig(fkit, "fu.second")]}
    old = fkit.client.signed("fu.first", ("old",), ts=time.time() - 3600, **listed)
    stale = fkit.thief.publish(fkit.thief.signed("fu.second", ("x",), root=str(old.payload)))
    assert "detail=root-expired" in fkit.line(stale.id)
    fresh = fkit.client.signed("fu.first", ("pay-10",), **listed)
    bad = tamper_body(fresh.payload, b"pay-10", b"pay-99")
    tampered = fkit.thief.publish(fkit.thief.signed("fu.second", ("y",), root=bad))
    assert "detail=root-bad-signature" in fkit.line(tampered.id)
    fkit.barrier()
    assert not fkit.ran("fu.second", "x")
    assert not fkit.ran("fu.second", "y")


def test_only_follow_up_signers_may_vouch(fkit: FollowKit) -> None:
    original = fkit.client.signed("fu.first", ("captured",), callbacks=[sig(fkit, "fu.second")])
    forged = fkit.other.publish(
        fkit.other.signed("fu.second", ("other",), root=str(original.payload))
    )
    line = fkit.line(forged.id)
    fkit.barrier()
    assert "reason=signer-not-allowed" in line
    assert "signer=signer-other" in line
    assert not fkit.ran("fu.second", "other")
    # the positive twin: signer-other's own task runs
    ok = fkit.other.publish(fkit.other.signed("fu.other", ("mine",)))
    wait_for(lambda: any(tid == ok.id for _, tid, _ in RAN))


def test_forged_root_header_is_overwritten(fkit: FollowKit) -> None:
    """A publisher cannot set the gate's header: the gate overwrites it."""
    original = fkit.client.signed("fu.first", ("o",), callbacks=[sig(fkit, "fu.dangerous")])
    msg = fkit.client.signed("fu.retry", ("hdr",))
    msg.headers["security_lib_root"] = str(original.payload)
    fkit.client.publish(msg)
    wait_for(lambda: fkit.ran("fu.retry", "hdr"))  # the retry was vouched by msg itself


# --- the gate survives every strategy rebuild ---------------------------------


def _attack_refused_and_legit_runs(fkit: FollowKit, tag: str) -> None:
    attack = fkit.client.signed("fu.first", (tag,)).copy(task="fu.dangerous")
    fkit.client.publish(attack)
    assert "reason=header-mismatch:task" in fkit.line(attack.id)
    fkit.barrier()
    assert not fkit.ran("fu.dangerous", tag)


def test_gate_survives_update_strategies(fkit: FollowKit) -> None:
    consumer = fkit.worker.consumer
    consumer.update_strategies()  # what the Tasks step and reload() call
    assert isinstance(consumer.strategies, GatedStrategies)
    assert all(getattr(s, "__security_lib_gate__", False) for s in consumer.strategies.values())
    _attack_refused_and_legit_runs(fkit, "after-update-strategies")


def test_gate_survives_reload(fkit: FollowKit) -> None:
    """WorkController.reload is what a remote-control pool_restart runs."""
    fkit.worker.reload(reload=False)
    _attack_refused_and_legit_runs(fkit, "after-reload")


def test_gate_survives_a_plain_dict_assignment(fkit: FollowKit) -> None:
    consumer = fkit.worker.consumer
    consumer.strategies["fu.dangerous"] = consumer.app.tasks["fu.dangerous"].start_strategy(
        consumer.app, consumer
    )
    _attack_refused_and_legit_runs(fkit, "after-assignment")


# --- decompression bombs ------------------------------------------------------

BOMB_MIB = 256


def bz2_bomb() -> bytes:
    """A few hundred bytes that expand to BOMB_MIB MiB (concatenated bzip2 streams)."""
    stream = bz2.compress(b"\0" * (16 << 20), 9)
    return stream * (BOMB_MIB // 16)


def test_compressed_bomb_is_never_expanded(fkit: FollowKit) -> None:
    bomb = bz2_bomb()
    assert len(bomb) < 1024
    msg = fkit.client.signed("fu.first", ("bomb",))
    msg.headers["compression"] = "application/x-bz2"
    bombed = Message(msg.headers, msg.properties, bomb, content_type="application/data")
    tracemalloc.start()
    try:
        fkit.client.publish(bombed)
        line = fkit.line(bombed.id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "reason=compressed" in line
    assert peak < 32 << 20, f"peak {peak >> 20} MiB while refusing a compressed message"
    fkit.barrier()


def test_the_memory_probe_sees_an_expanded_bomb() -> None:
    """Positive twin: the same probe sees the expansion stock kombu would do."""
    tracemalloc.start()
    try:
        size = len(bz2.decompress(bz2_bomb()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == BOMB_MIB << 20
    assert peak >= BOMB_MIB << 20


# --- refused configuration ----------------------------------------------------


def test_remote_control_with_pool_restarts_is_refused(pki: PKI) -> None:
    app = Celery("rc-pool", broker="memory://", set_as_current=False)
    app.conf.worker_pool_restarts = True
    with pytest.raises(security_lib.SecurityConfigError, match="worker_pool_restarts"):
        security_lib.harden(
            app,
            key=pki.worker.key,
            cert=pki.worker.cert,
            cert_store=pki.store,
            allowed_tasks={"signer-worker": ["x"]},
            allow_insecure_broker=True,
            enable_remote_control=True,
        )
    assert app.conf.task_serializer != "auth"  # nothing applied
    # the positive twin: pool restarts without remote control are harmless
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["x"]},
        allow_insecure_broker=True,
    )
    assert app.conf.task_serializer == "auth"


def test_pool_restarts_switched_on_after_harden_stop_the_worker(pki: PKI) -> None:
    from security_lib.settings import verify_applied

    app = Celery("rc-late", broker="memory://", set_as_current=False)
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["x"]},
        allow_insecure_broker=True,
        enable_remote_control=True,
    )
    verify_applied(app)  # the positive twin: remote control alone passes the start check
    app.conf.worker_pool_restarts = True
    with pytest.raises(security_lib.SecurityConfigError, match="worker_pool_restarts"):
        verify_applied(app)  # what GateStep runs when the consumer starts
