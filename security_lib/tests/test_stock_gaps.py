"""The three gaps, shown on stock Celery 5.x (no kit gate): why the kit exists.

A plain Celery app with the stock ``auth`` serializer (``setup_security()``)
runs a re-targeted message and a replayed message. These tests pass on stock
Celery; the same attacks are rejected in ``test_worker.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from attack import Forger, wait_for
from celery import Celery
from celery.contrib.testing.worker import start_worker
from conftest import PKI

STOCK_RAN: list[tuple[str, str]] = []


@pytest.fixture(scope="module")
def stock(pki: PKI) -> Iterator[Celery]:
    app = Celery("stock", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        broker_transport_options={"polling_interval": 0.005},
        task_serializer="auth",
        accept_content=["auth"],
        result_accept_content=["json"],
        security_key=str(pki.worker.key),
        security_certificate=str(pki.worker.cert),
        security_cert_store=str(pki.store),
    )

    def task(name: str) -> Callable[[Callable[..., Any]], Any]:
        decorator: Callable[[Callable[..., Any]], Any] = app.task(name=name, bind=True)
        return decorator

    @task("stock.safe")
    def safe(self: Any, x: Any = None) -> None:
        STOCK_RAN.append(("stock.safe", self.request.id))

    @task("stock.dangerous")
    def dangerous(self: Any, x: Any = None) -> None:
        STOCK_RAN.append(("stock.dangerous", self.request.id))

    app.setup_security()
    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
        yield app


def test_stock_celery_runs_a_retargeted_message(stock: Celery, pki: PKI) -> None:
    client = Forger(stock, pki.client)
    msg = client.signed("stock.safe", ("signed-for-safe",), envelope=False)
    client.publish(msg.copy(task="stock.dangerous"))
    wait_for(lambda: ("stock.dangerous", msg.id) in STOCK_RAN)


def test_stock_celery_runs_a_replayed_message_twice(stock: Celery, pki: PKI) -> None:
    client = Forger(stock, pki.client)
    msg = client.signed("stock.safe", envelope=False)
    client.publish(msg)
    client.publish(msg)
    wait_for(lambda: STOCK_RAN.count(("stock.safe", msg.id)) == 2)
