"""The demo Celery app: built here, hardened by the host's config module.

``celery_kit_config`` is dropped on every app host by the kit's ``celery_app``
role (``/etc/celery-kit``, on ``PYTHONPATH``). It fills in the broker, the
queues and the host's key paths and calls ``security_lib.harden()``, which
raises on any problem: importing this module then fails and the worker does
not start. There is deliberately no fallback to an unhardened app.
"""

from __future__ import annotations

import celery_kit_config
from celery import Celery

app = Celery("demo", include=["demo.tasks"])
celery_kit_config.harden_app(app)
