"""The ledger Celery app, hardened by the config module the celery_app role writes for it."""

from __future__ import annotations

import celery_kit_config
from celery import Celery

app = Celery("ledger", include=["ledger.tasks"])
celery_kit_config.harden_app(app)
