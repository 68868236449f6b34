"""The three gaps, shown on stock Celery 5.x (no kit gate): why the kit exists.

A plain Celery app with the stock ``auth`` serializer (``setup_security()``)
runs a re-targeted message and a replayed message. These tests pass on stock
Celery; the same attacks are rejected in ``test_worker.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from attack import Forger, ListHandler, wait_for
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SecurityError
from celery.security.certificate import FSCertStore
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


# --- an Ed25519/ECDSA-signed kit message meets a stock Celery worker -----------


def test_stock_celery_refuses_an_ec_signed_kit_message(
    stock: Celery, pki: PKI, pki_of: Callable[[str], PKI]
) -> None:
    """The trade-off of EC signers: stock Celery cannot verify them, and runs nothing.

    Its store cannot hold an EC certificate, so the signer id is unknown: the
    consumer logs the decode error and drops the message. The positive twin
    is the same kind of kit message signed with RSA, sent right after: the
    stock worker verifies and runs it (so the probe sees a run when there is one).
    """
    ec_client = Forger(stock, pki_of("ed25519").client)
    rsa_client = Forger(stock, pki.client)
    handler = ListHandler()
    celery_logger = logging.getLogger("celery")
    celery_logger.addHandler(handler)
    try:
        refused = ec_client.publish(ec_client.signed("stock.safe", ("ec-signed",)))
        wait_for(lambda: any("Unknown certificate" in line for line in handler.lines))
        twin = rsa_client.publish(rsa_client.signed("stock.safe", ("rsa-signed",)))
        wait_for(lambda: ("stock.safe", twin.id) in STOCK_RAN)
    finally:
        celery_logger.removeHandler(handler)
    assert ("stock.safe", refused.id) not in STOCK_RAN
    decode_errors = [line for line in handler.lines if "Can't decode message body" in line]
    assert len(decode_errors) == 1, handler.lines


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa-p256"])
def test_stock_celery_cannot_load_an_ec_signer(pki_of: Callable[[str], PKI], key_type: str) -> None:
    """A stock worker cannot be configured with an EC key or trust an EC certificate."""
    ec_pki = pki_of(key_type)
    app = Celery("stock-ec", broker="memory://", set_as_current=False)
    app.conf.update(
        task_serializer="auth",
        accept_content=["auth"],
        security_key=str(ec_pki.worker.key),
        security_certificate=str(ec_pki.worker.cert),
        security_cert_store=str(ec_pki.store),
    )
    with pytest.raises(SecurityError, match="Non-RSA keys are not supported"):
        app.setup_security()
    with pytest.raises(SecurityError, match="Non-RSA certificates are not supported"):
        FSCertStore(str(ec_pki.store))
