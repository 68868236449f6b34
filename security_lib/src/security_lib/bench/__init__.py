"""``python -m security_lib.bench``: the per-message benchmark (source tree only, no wheel)."""
