"""Replay cache: exact window, numbers, redelivery, per-signer share, journal across restarts."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
from conftest import PKI

import security_lib
from security_lib.envelope import make_envelope, parse_envelope
from security_lib.errors import SecurityConfigError
from security_lib.replay import ReplayCache, check_state_dir

W, S = 60.0, 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_window_boundary_is_exact(clock: Clock) -> None:
    cache = ReplayCache(W, S, clock=clock)
    ts = clock.now
    assert cache.check("a", ts) is None
    clock.now = ts + W + S - 0.001
    assert cache.check("a", ts) == "replay"  # remembered until the very end
    clock.now = ts + W + S
    assert cache.check("a", ts) == "expired-envelope"  # and refused from then on
    assert cache.check("b", clock.now + S) is None  # the skew limit itself is accepted
    assert cache.check("c", clock.now + S + 0.001) == "future-envelope"


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_non_finite_timestamp_is_refused(clock: Clock, ts: float) -> None:
    assert ReplayCache(W, S, clock=clock).check("a", ts) == "expired-envelope"
    env = make_envelope({"task": "t", "id": "1"}, "fp", now=ts)
    assert parse_envelope([[], {}, {"security_lib": env}]) is None


@pytest.mark.parametrize("ts", [0.0, -1.0, 1e12, 12345.0])
def test_absurd_timestamp_is_refused(ts: float) -> None:
    env = make_envelope({"task": "t", "id": "1"}, "fp", now=ts)
    assert parse_envelope([[], {}, {"security_lib": env}]) is None
    good = make_envelope({"task": "t", "id": "1"}, "fp")
    assert parse_envelope([[], {}, {"security_lib": good}]) is not None


def test_envelope_without_route_is_refused() -> None:
    env = make_envelope({"task": "t", "id": "1"}, "fp")
    del env["route"]
    assert parse_envelope([[], {}, {"security_lib": env}]) is None


def test_redelivery_of_a_pending_message_runs_once_per_new_connection(clock: Clock) -> None:
    cache = ReplayCache(W, S, clock=clock)
    cache.new_connection()
    assert cache.check("k", clock.now, signer="A") is None
    # Same connection: a second copy is a replay even if marked redelivered.
    assert cache.check("k", clock.now, signer="A", redelivered=True) == "replay"
    cache.new_connection()  # connection lost: Celery dropped its pending copy
    assert cache.check("k", clock.now, signer="A") == "replay"  # not the broker's redelivery
    assert cache.check("k", clock.now, signer="B", redelivered=True) == "replay"  # other signer
    assert cache.check("k", clock.now, signer="A", redelivered=True) is None  # the redelivery
    assert cache.check("k", clock.now, signer="A", redelivered=True) == "replay"  # only once


def test_redelivery_of_an_acknowledged_message_is_a_replay(clock: Clock) -> None:
    cache = ReplayCache(W, S, clock=clock)
    assert cache.check("k", clock.now, signer="A") is None
    cache.done("k")  # Celery acknowledged it (the task started)
    cache.new_connection()
    assert cache.check("k", clock.now, signer="A", redelivered=True) == "replay"


def test_requeued_message_may_come_back_once(clock: Clock) -> None:
    cache = ReplayCache(W, S, clock=clock)
    assert cache.check("k", clock.now, signer="A") is None
    cache.requeued("k")
    assert cache.check("k", clock.now, signer="A", redelivered=True) is None
    assert cache.check("k", clock.now, signer="A", redelivered=True) == "replay"


def test_full_share_refuses_only_the_signer_that_filled_it(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = ReplayCache(W, S, max_per_signer=3, clock=clock)
    for i in range(3):
        assert cache.check(("flood", i), clock.now, signer="flooder") is None
    with caplog.at_level(logging.ERROR, logger="security_lib"):
        assert cache.check(("flood", 3), clock.now, signer="flooder") == "replay-cache-full"
    assert any("signer flooder holds 3 entries" in r.getMessage() for r in caplog.records)
    assert cache.check("honest", clock.now, signer="honest") is None
    # Expired entries go first: once the flood is out of the window, the signer is back.
    clock.now += W + S
    assert cache.check(("flood", 4), clock.now, signer="flooder") is None
    assert len(cache) == 1


# Keys are tuples of strings, as the gate builds them (task id, retries, nesting).


def _state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return state


def test_journal_keeps_state_across_a_restart(clock: Clock, tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    first = ReplayCache(W, S, clock=clock)
    first.open_journal(state / "replay-w.jsonl")
    first.new_connection()
    assert first.check(("ran",), clock.now, signer="A") is None
    first.done(("ran",))
    assert first.check(("waiting",), clock.now, signer="A") is None  # prefetched, never acked
    first.close()
    assert (state / "replay-w.jsonl").stat().st_mode & 0o777 == 0o600

    second = ReplayCache(W, S, clock=clock)  # the worker process restarted
    second.open_journal(state / "replay-w.jsonl")
    second.new_connection()
    assert second.check(("ran",), clock.now, signer="A", redelivered=True) == "replay"
    assert second.check(("waiting",), clock.now, signer="A") == "replay"  # a plain copy
    assert second.check(("waiting",), clock.now, signer="A", redelivered=True) is None
    second.close()
    # Compaction drops expired entries.
    clock.now += W + S
    third = ReplayCache(W, S, clock=clock)
    third.open_journal(state / "replay-w.jsonl")
    assert len(third) == 0
    third.close()
    assert (state / "replay-w.jsonl").read_text() == ""


def test_journal_ignores_a_torn_last_line_and_refuses_corruption(
    clock: Clock, tmp_path: Path
) -> None:
    state = _state_dir(tmp_path)
    journal = state / "replay-w.jsonl"
    cache = ReplayCache(W, S, clock=clock)
    cache.open_journal(journal)
    cache.check(("a",), clock.now, signer="A")
    cache.close()
    with journal.open("a") as fh:
        fh.write('["p", 17000')  # a write cut short by a crash
    again = ReplayCache(W, S, clock=clock)
    again.open_journal(journal)
    assert again.check(("a",), clock.now, signer="A") == "replay"
    again.close()
    journal.write_text('garbage\n["p", 1, "A", "x"]\n')
    with pytest.raises(SecurityConfigError, match="line 1 is corrupt"):
        ReplayCache(W, S, clock=clock).open_journal(journal)


def test_journal_is_locked_and_never_followed_through_a_symlink(
    clock: Clock, tmp_path: Path
) -> None:
    state = _state_dir(tmp_path)
    holder = ReplayCache(W, S, clock=clock)
    holder.open_journal(state / "replay-w.jsonl")
    with pytest.raises(SecurityConfigError, match="in use by another process"):
        ReplayCache(W, S, clock=clock).open_journal(state / "replay-w.jsonl")
    holder.close()
    target = tmp_path / "elsewhere"
    target.write_text("")
    (state / "replay-link.jsonl").symlink_to(target)
    with pytest.raises(SecurityConfigError, match="cannot open the replay journal"):
        ReplayCache(W, S, clock=clock).open_journal(state / "replay-link.jsonl")


def test_state_dir_must_be_private(tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    assert check_state_dir(state) == state
    state.chmod(0o770)
    with pytest.raises(SecurityConfigError, match="writable by group/others"):
        check_state_dir(state)
    state.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(state)
    with pytest.raises(SecurityConfigError, match="symlink"):
        check_state_dir(link)
    with pytest.raises(SecurityConfigError, match="does not exist"):
        check_state_dir(tmp_path / "missing")


def _harden(pki: PKI, **kwargs: Any) -> security_lib.Hardening:
    from celery import Celery

    app = Celery("numbers", broker="memory://", set_as_current=False)
    return security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={"signer-worker": ["x"]},
        allow_insecure_broker=True,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("replay_window", math.nan),
        ("replay_window", math.inf),
        ("replay_window", 0),
        ("replay_window", 10 * 86_400),
        ("clock_skew", math.nan),
        ("clock_skew", -1),
        ("clock_skew", 86_400),
        ("replay_max_rate", math.inf),
        ("replay_cache_size", 0),
    ],
)
def test_harden_refuses_non_finite_or_absurd_numbers(pki: PKI, setting: str, value: float) -> None:
    with pytest.raises(SecurityConfigError, match=setting):
        _harden(pki, **{setting: value})


def test_harden_sizes_the_share_from_window_and_rate(pki: PKI, tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    hardening = _harden(
        pki, replay_window=100, clock_skew=10, replay_max_rate=50, replay_state_dir=state
    )
    assert hardening.replay_window == 100
    gate = security_lib.gate.gate_for(hardening_app(hardening))
    assert gate is not None
    assert gate.replay.max_per_signer == 50 * 120
    assert gate.state_dir == state


def hardening_app(hardening: security_lib.Hardening) -> Any:
    from security_lib.hardening import _STATE

    return next(app for app, h in _STATE.items() if h is hardening)


def test_harden_refuses_an_unsafe_state_dir(pki: PKI, tmp_path: Path) -> None:
    state = _state_dir(tmp_path)
    state.chmod(0o770)
    with pytest.raises(SecurityConfigError, match="replay_state_dir"):
        _harden(pki, replay_state_dir=state)
