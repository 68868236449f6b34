"""Second example app of the celery kit (see README.md)."""
