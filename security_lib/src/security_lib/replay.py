"""Replay protection that neither loses tasks nor forgets.

A captured signed message stays valid forever with stock Celery. The kit
rejects envelopes older than ``window`` seconds (or dated more than
``clock_skew`` seconds in the future) and remembers every accepted message
until it would be refused as expired anyway, so a copy inside the window is
refused as a duplicate and a copy outside it as expired.

Redelivery is not replay. Every remembered message is in one of two states:

* **pending**: the gate let it through on connection number ``generation``,
  but Celery has neither acknowledged nor rejected it yet (it waits in the
  prefetch buffer, for a pool slot or for its ETA);
* **done**: Celery acknowledged it (for the default ``acks_late=False`` that
  happens when the task starts) or rejected it without requeue.

When the connection to the broker is lost, Celery drops its pending copies
(they cannot be acknowledged on a new channel) and the broker redelivers
them with ``redelivered=True``. Such a redelivery is accepted once per new
connection if the message is still pending from an *earlier* connection;
everything else seen before is a replay: a copy of a done message, a
second copy on the same connection, a copy without the broker's
redelivered flag.

State survives restarts when a journal file is given: an append-only file
of JSON lines (one line per accepted message, one when it is done), written
with a single ``write()`` each, compacted through a temporary file that
replaces it atomically. After a restart, pending entries count as from an
earlier connection (the broker redelivers what the old process never
acknowledged).

Bounds: an entry lives until its message expires (``timestamp + window +
clock_skew``), expired entries go first, and each signer may hold at most
``max_per_signer`` entries: a signer that fills its share is refused
(``replay-cache-full``), other signers are not affected.

The cache lives in the worker's consumer (main) process, one per worker
node: two worker *nodes* consuming the same queue do not share it. See the
README.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import heapq
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Final

from .errors import SecurityConfigError

__all__ = ["MAX_CLOCK_SKEW", "MAX_REPLAY_WINDOW", "ReplayCache", "check_state_dir"]

logger = logging.getLogger("security_lib")

#: Largest accepted ``replay_window`` (one day) and ``clock_skew`` (one hour):
#: beyond that the cache would have to remember too much, or the window means
#: nothing.
MAX_REPLAY_WINDOW: Final = 86_400.0
MAX_CLOCK_SKEW: Final = 3_600.0

PENDING: Final = "p"
DONE: Final = "d"
#: Generation given to pending entries loaded from the journal: older than any
#: connection of this process.
PREVIOUS_PROCESS: Final = -1

Key = tuple[str, ...]


class _Entry:
    __slots__ = ("deadline", "generation", "signer", "state")

    def __init__(self, deadline: float, signer: str, state: str, generation: int) -> None:
        self.deadline = deadline
        self.signer = signer
        self.state = state
        self.generation = generation


def check_state_dir(path: str | os.PathLike[str], setting: str = "replay_state_dir") -> Path:
    """Return ``path`` if it is a real directory of the running user, not writable by others."""
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise SecurityConfigError(
            setting, f"{p} does not exist", f"create it (owner: the worker's user, mode 0700): {p}"
        ) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SecurityConfigError(
            setting, f"{p} is not a directory (or is a symlink)", "point it at a real directory"
        )
    if st.st_uid != os.geteuid():
        raise SecurityConfigError(
            setting,
            f"{p} is owned by uid {st.st_uid}, not by the running user (uid {os.geteuid()})",
            f"chown it to the worker's user: {p}",
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise SecurityConfigError(
            setting,
            f"{p} has mode {stat.S_IMODE(st.st_mode):04o} (writable by group/others)",
            f"chmod 0700 {p}",
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise SecurityConfigError(setting, f"{p} is not writable", f"fix the mode of {p}")
    return p


class ReplayCache:
    """Freshness window and duplicate detection, bounded in time and per signer."""

    def __init__(
        self,
        window: float,
        clock_skew: float,
        *,
        max_per_signer: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = float(window)
        self.clock_skew = float(clock_skew)
        self.max_per_signer = max_per_signer
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}
        self._expiry: list[tuple[float, int, Hashable]] = []
        self._counter = 0
        self._per_signer: dict[str, int] = {}
        self._full_logged: set[str] = set()
        self._lock = threading.Lock()
        self.generation = 0
        self._journal: int | None = None
        self._journal_path: Path | None = None
        self._journal_lines = 0

    def __len__(self) -> int:
        """Return the number of remembered messages."""
        return len(self._entries)

    # -- connections ----------------------------------------------------------
    def new_connection(self) -> int:
        """Start a new broker connection: pending entries of older ones may be redelivered."""
        with self._lock:
            self.generation += 1
            return self.generation

    # -- the check ------------------------------------------------------------
    def now(self) -> float:
        """Return the current time of this cache's clock."""
        return self._clock()

    def deadline(self, timestamp: float) -> float:
        """Return the first moment at which a message dated ``timestamp`` is expired."""
        return timestamp + self.window + self.clock_skew

    def check(  # noqa: PLR0911 - one return per outcome
        self,
        key: Hashable,
        timestamp: float,
        *,
        signer: str = "-",
        redelivered: bool = False,
        label: str | None = None,
    ) -> str | None:
        """Record ``key`` and return None if it may run, else the rejection reason.

        ``signer`` is whose share the entry uses (a fingerprint); ``label`` its
        name for the log line (default: ``signer``).

        The boundary is exact: a message dated ``ts`` is accepted while
        ``ts - clock_skew <= now < ts + window + clock_skew`` and remembered
        exactly that long. Reasons: ``expired-envelope``, ``future-envelope``,
        ``replay``, ``replay-cache-full``.
        """
        now = self._clock()
        if not math.isfinite(timestamp):
            return "expired-envelope"
        deadline = self.deadline(timestamp)
        if now >= deadline:
            return "expired-envelope"
        if timestamp - self.clock_skew > now:
            return "future-envelope"
        with self._lock:
            self._purge(now)
            entry = self._entries.get(key)
            if entry is not None:
                if (
                    redelivered
                    and entry.state == PENDING
                    and entry.generation < self.generation
                    and entry.signer == signer
                ):
                    entry.generation = self.generation
                    return None
                return "replay"
            held = self._per_signer.get(signer, 0)
            if held >= self.max_per_signer:
                if signer not in self._full_logged:
                    self._full_logged.add(signer)
                    logger.error(
                        "security_lib replay cache: signer %s holds %d entries (its share); "
                        "its messages are refused until they expire; other signers are not "
                        "affected",
                        signer if label is None else f"{label} ({signer})",
                        held,
                    )
                return "replay-cache-full"
            self._entries[key] = _Entry(deadline, signer, PENDING, self.generation)
            self._per_signer[signer] = held + 1
            self._counter += 1
            heapq.heappush(self._expiry, (deadline, self._counter, key))
            self._write((PENDING, deadline, signer, *_key_parts(key)))
        return None

    def done(self, key: Hashable) -> None:
        """Mark ``key`` as acknowledged (or rejected for good): any later copy is a replay."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.state == DONE:
                return
            entry.state = DONE
            self._write((DONE, entry.deadline, entry.signer, *_key_parts(key)))

    def requeued(self, key: Hashable) -> None:
        """Celery rejected ``key`` with requeue: the broker's redelivery may run once."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.state == PENDING:
                entry.generation = PREVIOUS_PROCESS

    def _purge(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            deadline, _, key = heapq.heappop(expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.deadline == deadline:
                del self._entries[key]
                left = self._per_signer.get(entry.signer, 1) - 1
                if left > 0:
                    self._per_signer[entry.signer] = left
                else:
                    self._per_signer.pop(entry.signer, None)
                self._full_logged.discard(entry.signer)

    # -- the journal ----------------------------------------------------------
    def open_journal(self, path: str | os.PathLike[str]) -> None:
        """Load the state kept in ``path`` (if any), compact it and append from now on.

        The file is locked (one worker process per file), created 0600, never
        followed through a symlink.
        """
        target = Path(path)
        with self._lock:
            if self._journal is not None:
                return
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(target, flags, 0o600)
            except OSError as exc:
                raise SecurityConfigError(
                    "replay_state_dir",
                    f"cannot open the replay journal {target}: {exc.strerror}",
                    "check that it is a regular file of the worker's user (not a symlink)",
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise SecurityConfigError(
                        "replay_state_dir",
                        f"{target} is in use by another process",
                        "give each worker process its own state directory or --hostname",
                    ) from None
                raise
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                os.close(fd)
                raise SecurityConfigError(
                    "replay_state_dir",
                    f"{target} is not a 0600 regular file of uid {os.geteuid()}",
                    f"remove {target}; the worker recreates it",
                )
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as reader:
                self._load(reader.read().split("\n"), target)
            self._journal_path = target
            self._compact_locked(fd)

    def _load(self, lines: list[str], target: Path) -> None:
        now = self._clock()
        last = len(lines) - 1
        for number, line in enumerate(lines):
            if not line:
                continue
            try:
                state, deadline, signer, *parts = json.loads(line)
                if state not in (PENDING, DONE) or not isinstance(deadline, (int, float)):
                    raise ValueError(state)  # noqa: TRY301 - one error path for bad lines
            except (ValueError, TypeError):
                if number == last:  # torn last write (crash): it was never acted upon
                    continue
                raise SecurityConfigError(
                    "replay_state_dir",
                    f"{target} line {number + 1} is corrupt",
                    f"inspect {target}; remove it only if replays within the window are acceptable",
                ) from None
            if not math.isfinite(deadline) or deadline <= now:
                continue
            key = tuple(str(p) for p in parts)
            entry = self._entries.get(key)
            if entry is None:
                self._entries[key] = _Entry(
                    float(deadline), str(signer), str(state), PREVIOUS_PROCESS
                )
                self._per_signer[str(signer)] = self._per_signer.get(str(signer), 0) + 1
                self._counter += 1
                heapq.heappush(self._expiry, (float(deadline), self._counter, key))
            elif state == DONE:
                entry.state = DONE

    def _compact_locked(self, fd: int) -> None:
        """Rewrite the journal with the live entries only (temp file + atomic rename)."""
        if self._journal_path is None:
            return
        target = self._journal_path
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(out, "w", encoding="utf-8") as writer:
            for key, entry in self._entries.items():
                writer.write(_line((entry.state, entry.deadline, entry.signer, *_key_parts(key))))
            writer.flush()
            os.fsync(writer.fileno())
        new_fd = os.open(tmp, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp.replace(target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        if self._journal is not None and self._journal != fd:
            os.close(self._journal)
        os.close(fd)
        self._journal = new_fd
        self._journal_lines = len(self._entries)

    def _write(self, record: tuple[object, ...]) -> None:
        if self._journal is None:
            return
        os.write(self._journal, _line(record).encode("utf-8"))
        self._journal_lines += 1
        if self._journal_lines > max(100_000, 4 * len(self._entries)):
            self._compact_locked(self._journal)

    def close(self) -> None:
        """Close the journal (tests; a worker keeps it until it exits)."""
        with self._lock:
            if self._journal is not None:
                os.close(self._journal)
                self._journal = None


def _key_parts(key: Hashable) -> tuple[str, ...]:
    return tuple(str(p) for p in key) if isinstance(key, tuple) else (str(key),)


def _line(record: tuple[object, ...]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"
