"""sign_results=True against a real worker: results only from workers, bound to the task id."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.exceptions import SecurityError
from celery.result import AsyncResult
from conftest import PKI, Issued

import security_lib
from security_lib.serializer import KitSerializer


@pytest.fixture(scope="module")
def signed_results(pki: PKI) -> Iterator[Celery]:
    app = Celery("res", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name="res.value")

    @decorator
    def value(x: Any) -> Any:
        return x

    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["res.value"], "signer-client": []},
        allow_insecure_broker=True,
        sign_results=True,
    )
    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
        yield app


def _store(app: Celery, task_id: str, payload: str) -> None:
    backend = app.backend
    backend.set(backend.get_key_for_task(task_id), payload)


def _record(task_id: str, result: Any) -> dict[str, Any]:
    return {
        "status": "SUCCESS",
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": None,
        "task_id": task_id,
    }


def _signed(issued: Issued, data: Any) -> str:
    return KitSerializer(
        key=issued.private_key, cert=issued.certificate, store={}, digest="sha256"
    ).serialize(data)


def test_signed_result_round_trip(signed_results: Celery) -> None:
    assert signed_results.send_task("res.value", (41,)).get(timeout=10) == 41


def test_result_copied_to_another_task_id_is_refused(signed_results: Celery) -> None:
    app = signed_results
    done = app.send_task("res.value", ("secret-of-a",))
    assert done.get(timeout=10) == "secret-of-a"
    backend = app.backend
    other = str(uuid.uuid4())
    _store(app, other, backend.get(backend.get_key_for_task(done.id)))
    with pytest.raises(SecurityError, match="signed for task"):
        AsyncResult(other, app=app).get(timeout=5)


def test_result_signed_by_a_producer_key_is_refused(signed_results: Celery, pki: PKI) -> None:
    app = signed_results
    forged = str(uuid.uuid4())
    _store(app, forged, _signed(pki.client, _record(forged, 666)))
    with pytest.raises(Exception, match="result-signer-not-allowed"):
        AsyncResult(forged, app=app).get(timeout=5)
    # the positive twin: the same record signed by a worker's key is read
    genuine = str(uuid.uuid4())
    _store(app, genuine, _signed(pki.worker, _record(genuine, 667)))
    assert AsyncResult(genuine, app=app).get(timeout=5) == 667
