"""Demo Celery app for the celery kit (see README.md)."""
