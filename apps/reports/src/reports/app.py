"""The reports Celery app, hardened by the host's config module for this app.

``celery_kit_config`` is the module the kit's ``celery_app`` role writes to
``/etc/celery-kit/reports`` (on ``PYTHONPATH`` for this app only). Importing
this module fails when ``security_lib.harden()`` refuses the host's files.
"""

from __future__ import annotations

import celery_kit_config
from celery import Celery

app = Celery("reports", include=["reports.tasks"])
celery_kit_config.harden_app(app)
