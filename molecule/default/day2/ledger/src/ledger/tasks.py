"""The ledger's one task."""

from __future__ import annotations

from ledger.app import app


@app.task(name="ledger.tasks.post")
def post(account: str, amount: int) -> str:
    """Return the posting as the ledger would record it."""
    return f"{account}:{amount}"
