"""A chord through ``celery.chord_unlock`` from a real producer, against a real worker.

Own module: Celery's test worker makes its app the process's current app, and
two test workers alive at once confuse result storage; each module's worker
is stopped before the next module starts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack import ListHandler, producer_app, task, wait_for
from celery import Celery, Task, chord
from celery.contrib.testing.worker import start_worker
from conftest import PKI

import security_lib

RAN: list[tuple[str, str, Any]] = []
_LOCK = threading.Lock()


def ran(name: str) -> list[Any]:
    """Return the arguments ``name`` ran with, in order."""
    with _LOCK:
        return [x for n, _, x in RAN if n == name]


# Backends without an atomic counter (here the filesystem backend; also the
# database backend) make the *producer* send celery.chord_unlock, which polls
# the header results (retrying itself) and then sends the body: a follow-up of
# the unlock message, which lists the body in its arguments.

UNLOCK_QUEUE = "chord-unlock"


@dataclass
class Unlock:
    log: ListHandler
    client: Celery


@pytest.fixture(scope="module")
def unlock(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unlock]:
    results = tmp_path_factory.mktemp("chord-results")
    backend = f"file://{results}"
    app = Celery("cvu", broker="memory://", backend=backend, set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}
    app.conf.task_default_queue = UNLOCK_QUEUE  # not the canvas worker's queue

    def recorder(name: str, fn: Callable[..., Any]) -> None:
        def body(self: Task, *args: Any) -> Any:
            with _LOCK:
                RAN.append((name, str(self.request.id), args))
            return fn(*args)

        task(app, name, bind=True)(body)

    recorder("cvu.add", lambda x, y: x + y)
    recorder("cvu.tsum", sum)
    recorder("cvu.dangerous", lambda *a: "pwned")
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={
            "signer-worker": [],
            "signer-client": ["cvu.add", "cvu.tsum", "celery.chord_unlock"],
        },
        allow_insecure_broker=True,
        replay_window=60,
        clock_skew=5,
    )
    handler = ListHandler()
    security_lib.gate.logger.addHandler(handler)
    try:
        with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
            yield Unlock(
                handler,
                producer_app(
                    "cvu-client",
                    pki.client,
                    result_backend=backend,
                    task_default_queue=UNLOCK_QUEUE,
                ),
            )
    finally:
        security_lib.gate.logger.removeHandler(handler)


def test_chord_through_chord_unlock_runs_end_to_end(unlock: Unlock) -> None:
    """Positive twin: the unlock task polls (retrying itself), then the worker sends the body."""
    assert not unlock.client.backend.implements_incr  # so the producer sends chord_unlock
    header = [unlock.client.signature("cvu.add", args=(i, 400)) for i in range(3)]
    result = chord(header, unlock.client.signature("cvu.tsum"))()
    assert result.get(timeout=60) == 1203
    assert [sorted(v[0]) for v in ran("cvu.tsum")] == [[400, 401, 402]]
    assert not [ln for ln in unlock.log.lines if "rejected" in ln]


def test_chord_unlock_with_a_body_the_producer_may_not_run_is_refused(unlock: Unlock) -> None:
    header = [unlock.client.signature("cvu.add", args=(i, 500)) for i in range(3)]
    chord(header, unlock.client.signature("cvu.dangerous", args=("via-unlock",)))()

    def refused(task_name: str) -> list[str]:
        return [
            ln
            for ln in list(unlock.log.lines)
            if f"task={task_name} " in ln and ln.endswith("detail=follow-up=cvu.dangerous")
        ]

    # three header messages and the producer's unlock message, each naming the body
    wait_for(lambda: len(refused("cvu.add")) == 3 and len(refused("celery.chord_unlock")) == 1)
    assert unlock.client.signature("cvu.add", args=(1, 1)).delay().get(timeout=20) == 2
    assert not any(y == 500 for _, y in ran("cvu.add"))
    assert ran("cvu.dangerous") == []
