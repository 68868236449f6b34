"""Remote control and events: off by default; when enabled they still work (signed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker
from conftest import PKI

import security_lib


def test_remote_control_and_events_work_when_enabled(pki: PKI) -> None:
    app = Celery("rc", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}
    decorator: Callable[[Callable[..., Any]], Any] = app.task(name="rc.add")

    @decorator
    def add(x: int, y: int) -> int:
        return x + y

    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["rc.*"]},
        allow_insecure_broker=True,
        enable_remote_control=True,
    )
    app.conf.worker_send_task_events = True  # events are signed with event_serializer='auth'
    with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
        replies = app.control.ping(timeout=2)
        assert replies
        assert next(iter(replies[0].values())) == {"ok": "pong"}
        assert app.send_task("rc.add", (1, 2)).get(timeout=10) == 3
