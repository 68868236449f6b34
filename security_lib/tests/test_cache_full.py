"""A full replay cache refuses only the signer that filled it (real worker, memory transport).

Each signer may hold ``replay_cache_size`` entries (here 8). A follow-up the
worker publishes on behalf of an original message (a chain step) uses the
*original* signer's share, not the worker's: otherwise one producer's long
workflows would fill the workers' share and every other producer's chains
would stop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack import Forger, ListHandler, wait_for
from celery import Celery, Task
from celery.contrib.testing.worker import start_worker
from conftest import PKI

import security_lib

SHARE = 8
QUEUE = "cache-full"
RAN: list[tuple[str, Any]] = []
_LOCK = threading.Lock()


def ran(x: Any) -> bool:
    with _LOCK:
        return any(v == x for _, v in RAN)


@dataclass
class Flood:
    app: Celery
    log: ListHandler
    client: Forger  # the honest producer
    other: Forger  # floods with plain messages
    third: Forger  # floods with chains (follow-ups published by the worker)

    def sig(self, name: str) -> dict[str, Any]:
        return dict(self.app.signature(name))

    def lines(self, needle: str) -> list[str]:
        return [ln for ln in list(self.log.lines) if needle in ln]


@pytest.fixture(scope="module")
def flood(pki: PKI) -> Iterator[Flood]:
    app = Celery("cf", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}
    app.conf.task_default_queue = QUEUE  # not the other modules' "celery" queue

    def step(self: Task, x: Any = None) -> str:
        with _LOCK:
            RAN.append((str(self.request.id), x))
        return f"{x}+"

    decorate: Callable[[Callable[..., Any]], Any] = app.task(name="cf.step", bind=True)
    decorate(step)
    third = pki.ca.issue("signer-third")
    store = pki.new_store("cache-full", pki.worker, pki.client, pki.other, third)
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=store,
        allowed_tasks={
            "signer-worker": [],
            "signer-client": ["cf.step"],
            "signer-other": ["cf.step"],
            "signer-third": ["cf.step"],
        },
        allow_insecure_broker=True,
        replay_window=60,
        clock_skew=5,
        replay_cache_size=SHARE,
    )
    handler = ListHandler()
    security_lib.gate.logger.addHandler(handler)
    try:
        with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
            yield Flood(
                app,
                handler,
                Forger(app, pki.client, routing_key=QUEUE),
                Forger(app, pki.other, routing_key=QUEUE),
                Forger(app, third, routing_key=QUEUE),
            )
    finally:
        security_lib.gate.logger.removeHandler(handler)


def test_a_flooding_signer_locks_only_itself_out(flood: Flood) -> None:
    for i in range(SHARE):
        flood.other.publish(flood.other.signed("cf.step", (f"other-{i}",)))
    wait_for(lambda: ran(f"other-{SHARE - 1}"))
    refused = flood.other.publish(flood.other.signed("cf.step", ("other-over",)))
    line = wait_for(lambda: flood.lines(f" id={refused.id} "))[0]
    assert "reason=replay-cache-full" in line
    assert "signer=signer-other" in line
    notice = flood.lines("security_lib replay cache: signer signer-other (")
    assert len(notice) == 1, "the full share is logged once, with the signer's name"
    # the positive twin: another signer's message still runs
    ok = flood.client.publish(flood.client.signed("cf.step", ("client-1",)))
    wait_for(lambda: ran("client-1"))
    assert not ran("other-over")
    assert ok.id


def test_follow_ups_use_the_original_signers_share(flood: Flood) -> None:
    """signer-third's chains fill *its* share; signer-client's chain still runs to the end."""
    for n in range(2):  # 2 chains of 1 + 4 steps: 10 entries for a share of 8
        chain = [flood.sig("cf.step") for _ in range(4)]
        flood.third.publish(flood.third.signed("cf.step", (f"third-{n}",), chain=chain))
        if n == 0:
            wait_for(lambda: ran("third-0++++"))
    # the step the worker published for third's chain: refused, charged to third
    full = "reason=replay-cache-full task=cf.step"
    wait_for(lambda: [ln for ln in flood.lines(full) if ln.endswith("signer=signer-worker")])
    assert flood.lines("security_lib replay cache: signer signer-third (")
    time.sleep(0.2)
    chain = [flood.sig("cf.step")]
    flood.client.publish(flood.client.signed("cf.step", ("client-chain",), chain=chain))
    wait_for(lambda: ran("client-chain+"))
    assert not ran("third-1++++")  # the flooder's own last steps were refused
