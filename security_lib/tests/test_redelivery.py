"""Redelivery is not replay: a real RabbitMQ restarted under a real worker.

A broker restart (or any connection loss) makes RabbitMQ redeliver every
message the worker had received but not acknowledged: prefetched messages
waiting for a pool slot and ETA/countdown messages held in the worker's timer.
Celery drops its own copies of those on connection loss (they could not be
acknowledged on the new channel), so the redelivered copy is the only one:
refusing it as a replay loses the task. A copy of a message that already ran
must still be refused, before and after the reconnect.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from attack import Forger, ListHandler, wait_for
from celery import Celery
from celery.contrib.testing.worker import start_worker
from conftest import PKI
from rabbitmq import RabbitMQ

import security_lib
from security_lib.gate import gate_for

EXECUTED: list[str] = []
_LOCK = threading.Lock()


def executions(task_id: str) -> int:
    with _LOCK:
        return EXECUTED.count(task_id)


def _app(rabbitmq: RabbitMQ, queue: str) -> Celery:
    app = Celery("redelivery", broker=rabbitmq.url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        worker_prefetch_multiplier=100,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_ignore_result=True,
    )

    # bind=True: Celery 5.7 routes a task name to the callable registered
    # first in the process, so the id must come from the running task itself.
    def record(self: Any, n: int) -> int:
        with _LOCK:
            EXECUTED.append(str(self.request.id))
        time.sleep(0.003)
        return n

    app.task(name="kit.record", bind=True)(record)
    return app


@pytest.fixture
def redelivery_kit(
    rabbitmq: RabbitMQ, pki: PKI
) -> Iterator[tuple[Celery, ListHandler, Callable[[], int]]]:
    app = _app(rabbitmq, f"redelivery-{uuid.uuid4().hex[:8]}")
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["kit.record"]},
        allow_insecure_broker=True,
        replay_window=120,
        clock_skew=5,
    )
    handler = ListHandler()
    security_lib.gate.logger.addHandler(handler)
    gate = gate_for(app)
    assert gate is not None
    try:
        with start_worker(
            app,
            perform_ping_check=False,
            pool="threads",
            concurrency=2,
            loglevel="WARNING",
            shutdown_timeout=30,
        ):
            yield app, handler, lambda: len(gate.replay)
    finally:
        security_lib.gate.logger.removeHandler(handler)


def test_broker_restart_under_load_runs_every_task_exactly_once(
    rabbitmq: RabbitMQ, redelivery_kit: tuple[Celery, ListHandler, Callable[[], int]]
) -> None:
    app, log, seen = redelivery_kit
    # Held in the worker's timer, unacknowledged, when the broker goes away.
    delayed = [app.send_task("kit.record", (i,), countdown=4).id for i in range(30)]
    wait_for(lambda: seen() >= len(delayed), timeout=30)
    # A burst: most of it is prefetched and waiting for one of two threads.
    burst = [app.send_task("kit.record", (i,)).id for i in range(600)]
    wait_for(lambda: len(EXECUTED) >= 50, timeout=30)
    rabbitmq.restart()
    expected = delayed + burst

    def all_ran() -> bool:
        return all(executions(i) >= 1 for i in expected)

    try:
        wait_for(all_ran, timeout=90)
    except AssertionError:
        lost = [i for i in expected if executions(i) == 0]
        replays = [line for line in log.lines if "reason=replay" in line]
        pytest.fail(
            f"{len(lost)} of {len(expected)} tasks never ran "
            f"({sum(1 for i in delayed if executions(i) == 0)} of the delayed ones); "
            f"{len(replays)} 'replay' rejections; kit log: {log.lines[-5:]}"
        )
    time.sleep(1)  # a late duplicate would show up here
    with _LOCK:
        counts = Counter(EXECUTED)
    twice = {i: n for i, n in counts.items() if i in set(expected) and n > 1}
    assert not twice, f"tasks ran more than once: {twice}"


def test_copy_of_executed_message_is_refused_across_a_reconnect(
    rabbitmq: RabbitMQ,
    pki: PKI,
    redelivery_kit: tuple[Celery, ListHandler, Callable[[], int]],
) -> None:
    app, log, _ = redelivery_kit
    queue = app.conf.task_default_queue
    forger = Forger(app, pki.worker, routing_key=queue)
    message = forger.publish(forger.signed("kit.record", (1,)))
    wait_for(lambda: executions(message.id) == 1, timeout=30)
    forger.publish(message)  # the captured copy, byte for byte
    wait_for(lambda: log.rejections(message.id), timeout=30)
    rabbitmq.restart()
    forger.publish(message)  # again after the reconnect
    wait_for(lambda: len(log.rejections(message.id)) == 2, timeout=60)
    assert [m["reason"] for m in log.rejections(message.id)] == ["replay", "replay"]
    assert executions(message.id) == 1
    # The consumer restart rebuilt the strategies: the allowlist still holds
    # (signer-client has no entry here), and a fresh legitimate message runs.
    client = Forger(app, pki.client, routing_key=queue)
    refused = client.publish(client.signed("kit.record", (2,)))
    wait_for(lambda: log.rejections(refused.id), timeout=30)
    assert [m["reason"] for m in log.rejections(refused.id)] == ["signer-not-allowed"]
    fresh = forger.publish(forger.signed("kit.record", (3,)))
    wait_for(lambda: executions(fresh.id) == 1, timeout=30)
    assert executions(refused.id) == 0


def test_worker_restart_keeps_the_replay_state(rabbitmq: RabbitMQ, pki: PKI, tmp_path: Any) -> None:
    """A restarted worker (new app, new cache) still refuses a copy of what already ran."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    handler = ListHandler()
    security_lib.gate.logger.addHandler(handler)
    message = None
    try:
        for run in range(2):
            app = _app(rabbitmq, queue)
            security_lib.harden(
                app,
                key=pki.worker.key,
                cert=pki.worker.cert,
                cert_store=pki.store,
                allowed_tasks={"signer-worker": ["kit.record"]},
                allow_insecure_broker=True,
                replay_window=120,
                clock_skew=5,
                replay_state_dir=state,
            )
            forger = Forger(app, pki.worker, routing_key=queue)
            with start_worker(
                app,
                hostname="restart@test",
                perform_ping_check=False,
                pool="threads",
                concurrency=1,
                loglevel="WARNING",
                shutdown_timeout=30,
            ):
                if run == 0:
                    message = forger.publish(forger.signed("kit.record", (1,)))
                    first_id = message.id
                    wait_for(lambda: executions(first_id) == 1, timeout=30)  # noqa: B023 - awaited at once
                else:
                    assert message is not None
                    forger.publish(message)  # the captured copy, to the restarted worker
                    wait_for(lambda: handler.rejections(first_id), timeout=30)  # noqa: B023 - awaited at once
                    fresh_id = forger.publish(forger.signed("kit.record", (2,))).id
                    wait_for(lambda: executions(fresh_id) == 1, timeout=30)  # noqa: B023 - awaited at once
    finally:
        security_lib.gate.logger.removeHandler(handler)
    assert message is not None
    assert [m["reason"] for m in handler.rejections(message.id)] == ["replay"]
    assert executions(message.id) == 1
    assert [p.name for p in state.iterdir()] == ["replay-restart@test.jsonl"]
