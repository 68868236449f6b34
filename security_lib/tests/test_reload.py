"""Signer store reload in a running worker (SIGUSR2 / systemctl reload): rotation without restart.

Each refusal (negative) has a positive twin: the same probe sees the new
signer accepted after a good reload, so a probe that cannot see success
cannot pass the negative tests by accident.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from attack import Forger, ListHandler
from celery import Celery
from conftest import PKI, Issued

import security_lib
from security_lib.errors import SecurityConfigError
from security_lib.gate import Gate, gate_for
from security_lib.hardening import hardening_of
from security_lib.reload import (
    RELOAD_REFUSED_PREFIX,
    RELOAD_SIGNAL,
    RELOADED_PREFIX,
    StoreReloader,
    install_reload_signal,
)

DAY = dt.timedelta(days=1)
ROUTE = {"exchange": "", "routing_key": "celery", "redelivered": False}


def _store(tmp_path: Path, *issued: Issued) -> Path:
    directory = tmp_path / "signers"
    directory.mkdir(mode=0o755, exist_ok=True)
    for item in issued:
        shutil.copyfile(item.cert, directory / item.cert.name)
    return directory


def _harden(pki: PKI, store: Path, **extra: Any) -> tuple[Celery, Gate]:
    app = Celery("reload", broker="memory://", set_as_current=False)
    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=store,
        allowed_tasks={"signer-client": ["kit.*"]},
        allow_insecure_broker=True,
        **extra,
    )
    gate = gate_for(app)
    assert gate is not None
    assert gate.reloader is not None
    return app, gate


def _verdict(gate: Gate, app: Celery, signer: Issued) -> str | None:
    """Judge a fresh message signed by ``signer`` the way the consumer does."""
    msg = Forger(app, signer).signed("kit.add", (1, 2))
    message = SimpleNamespace(
        headers=dict(msg.headers),
        content_type=msg.content_type,
        body=msg.payload,
        delivery_info=ROUTE,
        properties=msg.properties,
    )
    return gate.inspect(message, None).reason


@pytest.fixture
def new_client(pki: PKI) -> Issued:
    """The rotated producer signer: same CN, same CA, new key (new file name)."""
    return pki.ca.issue("signer-client", name="signer-client-rotated")


@pytest.fixture
def log() -> Any:
    handler = ListHandler()
    logger = logging.getLogger("security_lib")
    level = logger.level
    logger.setLevel(logging.INFO)  # the reload's success line is INFO
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_rotation_in_the_safe_order_without_restart(
    pki: PKI, new_client: Issued, tmp_path: Path, log: ListHandler
) -> None:
    store = _store(tmp_path, pki.worker, pki.client)
    app, gate = _harden(pki, store)
    assert gate.reloader is not None
    # Negative: the new signer is unknown until the worker re-reads its store.
    assert _verdict(gate, app, new_client) == "unknown-signer"
    # 1. The new certificate joins the store next to the old one (same CN, same CA).
    shutil.copyfile(new_client.cert, store / new_client.cert.name)
    assert _verdict(gate, app, new_client) == "unknown-signer"  # not re-read yet
    gate.reloader.request()  # what the SIGUSR2 handler does
    # Positive twin: applied before the next message is judged; both signers run.
    assert _verdict(gate, app, new_client) is None
    assert _verdict(gate, app, pki.client) is None
    assert any(
        line.startswith(RELOADED_PREFIX) and "added=signer-client#" in line for line in log.lines
    )
    record = hardening_of(app)
    assert record is not None
    assert {s.fingerprint for s in record.trusted_signers} >= {new_client.fingerprint}
    # 2. The old certificate retires: refused from the next reload on.
    (store / pki.client.cert.name).unlink()
    assert gate.reloader.reload() is True
    assert _verdict(gate, app, pki.client) == "unknown-signer"
    assert _verdict(gate, app, new_client) is None


def _unparseable(store: Path, pki: PKI, tmp_path: Path) -> str:
    (store / "broken.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a cert\n")
    return "broken.pem"


def _empty(store: Path, pki: PKI, tmp_path: Path) -> str:
    for path in store.iterdir():
        path.unlink()
    return "no certificate matches"


def _wrong_ca(store: Path, pki: PKI, tmp_path: Path) -> str:
    foreign = pki.other_ca.issue("signer-new", name="foreign-signer-new")
    shutil.copyfile(foreign.cert, store / "foreign.pem")
    return "was not issued by the CA"


def _same_cn_foreign_ca(store: Path, pki: PKI, tmp_path: Path) -> str:
    shutil.copyfile(pki.rogue.cert, store / "rogue.pem")
    return "same CN 'signer-client' from different issuers"


def _expired(store: Path, pki: PKI, tmp_path: Path) -> str:
    old = pki.ca.issue(
        "signer-old",
        name="expired-signer-old",
        not_before=-2 * DAY,
        not_after=-DAY,
    )
    shutil.copyfile(old.cert, store / "old.pem")
    return "expired on"


@pytest.mark.parametrize(
    "spoil",
    [_unparseable, _empty, _wrong_ca, _same_cn_foreign_ca, _expired],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_bad_new_store_keeps_the_old_one_and_says_why(
    spoil: Any, pki: PKI, new_client: Issued, tmp_path: Path, log: ListHandler
) -> None:
    store = _store(tmp_path, pki.worker, pki.client)
    app, gate = _harden(pki, store, cert_store_ca=pki.ca.pem)
    assert gate.reloader is not None
    before = dict(gate.serializer.store)
    # The operator adds the new signer and, by mistake, something bad.
    shutil.copyfile(new_client.cert, store / new_client.cert.name)
    expected = spoil(store, pki, tmp_path)
    assert gate.reloader.reload() is False
    refused = [line for line in log.lines if line.startswith(RELOAD_REFUSED_PREFIX)]
    assert len(refused) == 1, log.lines
    assert expected in refused[0]
    assert "keeping the 2 signer(s) loaded before" in refused[0]
    # Nothing half-applied: the old store, whole; the old signer still runs, the new does not.
    assert dict(gate.serializer.store) == before
    assert _verdict(gate, app, pki.client) is None
    assert _verdict(gate, app, new_client) == "unknown-signer"
    # Positive twin: the same store, repaired, is taken.
    for path in store.iterdir():
        path.unlink()
    _store(tmp_path, pki.worker, pki.client, new_client)
    assert gate.reloader.reload() is True
    assert _verdict(gate, app, new_client) is None


def _requested(reloader: StoreReloader) -> bool:
    return reloader.requested


def test_the_reload_signal_only_sets_a_flag(pki: PKI, tmp_path: Path) -> None:
    _, gate = _harden(pki, _store(tmp_path, pki.worker, pki.client))
    reloader = gate.reloader
    assert reloader is not None
    previous = signal.getsignal(RELOAD_SIGNAL)
    try:
        assert install_reload_signal(reloader) is True
        assert not _requested(reloader)
        os.kill(os.getpid(), RELOAD_SIGNAL)
        assert _requested(reloader)  # handled between bytecodes, in the main thread
        assert reloader.reload_if_requested() is True
        assert reloader.requested is False
        assert reloader.reload_if_requested() is None  # nothing asked: nothing done
    finally:
        signal.signal(RELOAD_SIGNAL, previous)


def test_celery_remote_debugger_is_refused(
    pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, gate = _harden(pki, _store(tmp_path, pki.worker, pki.client))
    assert isinstance(gate.reloader, StoreReloader)
    monkeypatch.setenv("CELERY_RDBSIG", "1")
    with pytest.raises(SecurityConfigError, match="unset CELERY_RDBSIG"):
        install_reload_signal(gate.reloader)
    monkeypatch.delenv("CELERY_RDBSIG")
    previous = signal.getsignal(RELOAD_SIGNAL)
    try:
        assert install_reload_signal(gate.reloader) is True
    finally:
        signal.signal(RELOAD_SIGNAL, previous)


def test_one_cn_from_one_issuer_is_a_rotation_not_a_duplicate(
    pki: PKI, new_client: Issued, tmp_path: Path
) -> None:
    store = _store(tmp_path, pki.worker, pki.client, new_client)
    _, gate = _harden(pki, store)
    assert len(gate.serializer.store) == 3
