"""Celery's canvas from a real producer, against a real worker (memory transport, solo pool).

The producer is Celery itself (``chord(...)()``, ``xstarmap``, ``xmap``,
``chunks``), signing with the producer's key (see ``attack.producer_app``),
not hand-built messages. The worker's own signer has an empty allowlist
entry: whatever it publishes (a chord's body, a replacement) runs only on
behalf of the original message's signer and only if that message listed it.

* chord: a body the producer may not run refuses every header message before
  anything runs; an allowed chord runs end to end (the body is published by
  the worker as a follow-up of the last header task).
* ``celery.starmap``/``celery.map``/``chunks``: the worker calls the task in
  their arguments in-process, without any message: the gate checks it first.
* ``Task.replace()``: a replacement the original listed runs, another is refused.
* Patterns: ``*`` matches dots; an entry without ``*``, ``?``, ``[`` is exact.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from attack import Forger, ListHandler, producer_app, task, wait_for
from celery import Celery, Task, chord, group
from celery.canvas import Signature, chunks, xmap, xstarmap
from celery.contrib.testing.worker import start_worker
from conftest import PKI

import security_lib

RAN: list[tuple[str, str, Any]] = []
_LOCK = threading.Lock()


def ran(name: str) -> list[Any]:
    """Return the arguments ``name`` ran with, in order."""
    with _LOCK:
        return [x for n, _, x in RAN if n == name]


@dataclass
class Canvas:
    app: Celery  # the worker's app (signer-worker: runs nothing on its own)
    log: ListHandler
    client: Celery  # a real producer signing as signer-client
    other: Celery  # a real producer signing as signer-other (pattern tests)
    forger: Forger  # hand-built messages signed as signer-client

    def sig(self, name: str, *args: Any, producer: Celery | None = None) -> Signature:
        return (producer or self.client).signature(name, args=args)

    def refusals(self, task_name: str, detail: str) -> list[str]:
        return [
            ln
            for ln in list(self.log.lines)
            if f"task={task_name} " in ln and ln.endswith(f"detail={detail}")
        ]

    def barrier(self) -> None:
        """A legitimate task through the same queue: everything before it was handled."""
        tag = f"barrier-{time.time()}"
        assert self.sig("cv.add", tag, "").delay().get(timeout=20) == tag


@pytest.fixture(scope="module")
def canvas(pki: PKI) -> Iterator[Canvas]:
    app = Celery("cv", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.broker_transport_options = {"polling_interval": 0.005}

    def recorder(name: str, fn: Callable[..., Any]) -> None:
        def body(self: Task, *args: Any) -> Any:
            with _LOCK:
                RAN.append((name, str(self.request.id), args))
            return fn(*args)

        task(app, name, bind=True)(body)

    recorder("cv.add", lambda x, y: x + y)
    recorder("cv.double", lambda x: 2 * x)
    recorder("cv.tsum", sum)
    recorder("cv.dangerous", lambda *a: "pwned")
    for name in ("cv.pub.report", "cv.pub.admin.wipe", "cv.exact", "cv.exactly", "cv.exact.sub"):
        recorder(name, lambda *a: "ok")

    @task(app, "cv.dangerous3")
    def dangerous3(request: Any, exc: Any, traceback: Any) -> str:
        # Takes (request, exc, traceback): Celery calls such an errback in the
        # worker, without any message.
        with _LOCK:
            RAN.append(("cv.dangerous", "errback", (str(exc),)))
        return "pwned"

    # Replaces itself with a task chosen by a code, so that the original
    # message does not name it (a task name in the arguments counts as listed).
    targets = {"self": "cv.replacer", "add": "cv.add"}

    @task(app, "cv.replacer", bind=True)
    def replacer(self: Task, code: str, x: Any) -> Any:
        with _LOCK:
            RAN.append(("cv.replacer", str(self.request.id), (code, x)))
        if code == "-":
            return x
        target = targets[code]
        # Celery publishes the replacement from the worker (same task id, nesting + 1).
        raise self.replace(
            app.signature(target, args=("-", x) if target == "cv.replacer" else (x,))
        )

    security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allowed_tasks={
            "signer-worker": [],
            # exact names only, and the two built-ins the tests use
            "signer-client": [
                "cv.add",
                "cv.double",
                "cv.tsum",
                "cv.replacer",
                "celery.starmap",
                "celery.map",
                "celery.group",
            ],
            "signer-other": ["cv.pub.*", "cv.exact"],
        },
        allow_insecure_broker=True,
        replay_window=60,
        clock_skew=5,
    )
    handler = ListHandler()
    security_lib.gate.logger.addHandler(handler)
    try:
        with start_worker(app, perform_ping_check=False, pool="solo", loglevel="WARNING"):
            yield Canvas(
                app,
                handler,
                producer_app("cv-client", pki.client),
                producer_app("cv-other", pki.other),
                Forger(app, pki.client),
            )
    finally:
        security_lib.gate.logger.removeHandler(handler)


# --- chord ---------------------------------------------------------------------


def test_allowed_chord_runs_end_to_end(canvas: Canvas) -> None:
    """Positive twin: header on the producer's key, body published by the worker."""
    header = [canvas.sig("cv.add", i, 100) for i in range(3)]
    result = chord(header, canvas.sig("cv.tsum"))()
    assert result.get(timeout=30) == 303
    assert all((i, 100) in ran("cv.add") for i in range(3))
    assert [sorted(v[0]) for v in ran("cv.tsum")] == [[100, 101, 102]]


def test_chord_body_the_producer_may_not_run_is_refused_before_anything_runs(
    canvas: Canvas,
) -> None:
    header = [canvas.sig("cv.add", i, 200) for i in range(3)]
    chord(header, canvas.sig("cv.dangerous", "via-chord-body"))()
    # Every header message names the body: each one is refused on arrival.
    wait_for(lambda: len(canvas.refusals("cv.add", "follow-up=cv.dangerous")) == 3)
    canvas.barrier()
    assert not any(y == 200 for _, y in ran("cv.add")), "a header task ran"
    assert ran("cv.dangerous") == []


def test_chord_body_hidden_in_a_nested_chord_is_refused(canvas: Canvas) -> None:
    # A chord linked to the body travels as the built-in celery.chord, which
    # the worker would run in-process: the first name found that the producer
    # may not run is that built-in (names are checked in sorted order).
    before = len(canvas.refusals("cv.add", "follow-up=celery.chord"))
    inner = chord([canvas.sig("cv.add", 1, 300)], canvas.sig("cv.dangerous", "nested"))
    outer = chord([canvas.sig("cv.add", 2, 300)], canvas.sig("cv.tsum"))
    outer.body.link(inner)
    outer()
    wait_for(lambda: len(canvas.refusals("cv.add", "follow-up=celery.chord")) == before + 1)
    canvas.barrier()
    assert not any(y == 300 for _, y in ran("cv.add"))
    assert ran("cv.dangerous") == []


# --- a group as a link: the worker publishes each member on the producer's behalf ---


def test_group_link_with_a_task_the_producer_may_not_run_is_refused(canvas: Canvas) -> None:
    before = len(canvas.refusals("cv.add", "follow-up=cv.dangerous"))
    first = canvas.sig("cv.add", 1, 600)
    first.link(group(canvas.sig("cv.double"), canvas.sig("cv.dangerous")))
    first.delay()
    wait_for(lambda: len(canvas.refusals("cv.add", "follow-up=cv.dangerous")) == before + 1)
    canvas.barrier()
    assert (1, 600) not in ran("cv.add")
    assert ran("cv.dangerous") == []


def test_group_link_of_allowed_tasks_runs(canvas: Canvas) -> None:
    """Positive twin: both members run, published by the worker (signer-worker: [])."""
    first = canvas.sig("cv.add", 2, 700)
    first.link(group(canvas.sig("cv.double"), canvas.sig("cv.double")))
    first.delay()
    wait_for(lambda: ran("cv.double").count((702,)) == 2)


# --- built-in tasks that call a task from their arguments -----------------------

BUILT_INS: dict[str, Callable[[Canvas, str], Any]] = {
    "starmap": lambda c, name: xstarmap(c.sig(name), [(1, 2), (3, 4)], app=c.client),
    "map": lambda c, name: xmap(c.sig(name), [1, 2], app=c.client),
    "chunks": lambda c, name: chunks(c.sig(name), [(1, 1), (2, 2), (3, 3)], 2, app=c.client),
}
BUILT_IN_TASK = {"starmap": "celery.starmap", "map": "celery.map", "chunks": "celery.starmap"}
MESSAGES = {"starmap": 1, "map": 1, "chunks": 2}


@pytest.mark.parametrize("kind", list(BUILT_INS))
def test_built_in_calling_a_task_the_producer_may_not_run_is_refused(
    canvas: Canvas, kind: str
) -> None:
    before = len(canvas.refusals(BUILT_IN_TASK[kind], "follow-up=cv.dangerous"))
    BUILT_INS[kind](canvas, "cv.dangerous").apply_async()
    wait_for(
        lambda: (
            len(canvas.refusals(BUILT_IN_TASK[kind], "follow-up=cv.dangerous"))
            == before + MESSAGES[kind]
        )
    )
    canvas.barrier()
    assert ran("cv.dangerous") == []


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("starmap", "cv.add", [3, 7]),
        ("map", "cv.double", [2, 4]),
        ("chunks", "cv.add", [[2, 4], [6]]),
    ],
)
def test_built_in_calling_an_allowed_task_runs(
    canvas: Canvas, kind: str, name: str, expected: Any
) -> None:
    """Positive twin: the same built-ins over a task the producer may run."""
    assert BUILT_INS[kind](canvas, name).apply_async().get(timeout=30) == expected


# --- bare signatures: Celery takes any mapping with a "task" key as one -----------
#
# A dict without "options"/"subtask_type" is still a signature to Celery: an
# errback is called in the worker (no message) when the task takes more than
# one argument, and celery.starmap/map only look up ``signature(task).type``.


@pytest.mark.parametrize("form", ["mapping", "name"])
@pytest.mark.parametrize("where", ["errback", "starmap", "map"])
def test_bare_signature_the_producer_may_not_run_is_refused(
    canvas: Canvas, where: str, form: str
) -> None:
    """``{"task": name}`` or just the task name: Celery makes a signature of either."""
    wanted = "cv.dangerous3" if where == "errback" else "cv.dangerous"
    bare: Any = {"task": wanted, "args": [], "kwargs": {}} if form == "mapping" else wanted
    if where == "errback":
        # cv.add with one argument fails (TypeError) and would call the errback
        msg = canvas.forger.signed("cv.add", (f"bare-{where}",), errbacks=[bare])
    else:
        name = f"celery.{where}"
        item: Any = [f"bare-{where}"] if where == "starmap" else f"bare-{where}"
        msg = canvas.forger.signed(name, (), kwargs={"task": bare, "it": [item]})
    canvas.forger.publish(msg)
    line = wait_for(lambda: next((ln for ln in list(canvas.log.lines) if msg.id in ln), None))
    assert "reason=signer-not-allowed" in line
    assert line.endswith(f"detail=follow-up={wanted}")
    canvas.barrier()
    assert ran("cv.dangerous") == []


def test_bare_signature_of_an_allowed_task_runs(canvas: Canvas) -> None:
    """Positive twin: the same bare form over a task the producer may run."""
    msg = canvas.forger.signed(
        "celery.map", (), kwargs={"task": {"task": "cv.double"}, "it": ["bare-ok"]}
    )
    canvas.forger.publish(msg)
    wait_for(lambda: ("bare-ok",) in ran("cv.double"))


# --- replace() --------------------------------------------------------------------


def test_replacement_the_original_listed_runs(canvas: Canvas) -> None:
    """cv.replacer replaces itself with cv.replacer (its own task: listed by the original)."""
    assert canvas.sig("cv.replacer", "self", "again").delay().get(timeout=30) == "again"
    assert ("-", "again") in ran("cv.replacer")


def test_replacement_the_original_did_not_list_is_refused(canvas: Canvas) -> None:
    """The producer may run cv.add, but the original message did not list it."""
    canvas.sig("cv.replacer", "add", "swap").delay()
    line = wait_for(lambda: canvas.refusals("cv.add", "not-in-original=cv.add"))[0]
    assert "signer=signer-worker" in line
    canvas.barrier()
    assert ("swap",) not in ran("cv.add")


# --- patterns ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("cv.pub.report", True),
        ("cv.pub.admin.wipe", True),  # '*' matches dots too: documented, shown here
        ("cv.exact", True),  # an entry without * ? [ is an exact name
        ("cv.exactly", False),  # ...not a prefix
        ("cv.exact.sub", False),
        ("cv.add", False),
    ],
)
def test_patterns_match_as_documented(canvas: Canvas, name: str, runs: bool) -> None:
    result = canvas.sig(name, "pattern", producer=canvas.other).delay()
    if runs:
        assert result.get(timeout=20) == "ok"
        return
    wait_for(lambda: any(f" id={result.id} " in ln for ln in list(canvas.log.lines)))
    canvas.barrier()
    assert not any(tid == result.id for _, tid, _ in RAN)


# --- numbers in a signed envelope ------------------------------------------------------


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf, 1e12])
def test_signed_non_finite_or_absurd_timestamp_is_refused(canvas: Canvas, ts: float) -> None:
    """JSON carries NaN/Infinity; such a message would never expire: refused as malformed."""
    msg = canvas.forger.publish(canvas.forger.signed("cv.double", (ts,), ts=ts))
    line = wait_for(lambda: next((ln for ln in list(canvas.log.lines) if msg.id in ln), None))
    assert "reason=bad-envelope" in line
    canvas.barrier()
    assert not any(tid == msg.id for _, tid, _ in RAN)
    # the positive twin: the same message with a real timestamp runs
    ok = canvas.forger.publish(canvas.forger.signed("cv.double", (21,), ts=time.time()))
    wait_for(lambda: any(tid == ok.id for _, tid, _ in RAN))


# --- the walk is bounded ------------------------------------------------------------


def test_body_beyond_the_walk_bounds_is_refused(canvas: Canvas) -> None:
    """More than 100,000 values (or nesting deeper than 32) is refused, not walked forever."""
    big = canvas.forger.publish(canvas.forger.signed("cv.tsum", ([1] * 100_001,)))
    line = wait_for(lambda: next((ln for ln in list(canvas.log.lines) if big.id in ln), None))
    assert line.endswith(
        "reason=signer-not-allowed task=cv.tsum id="
        + big.id
        + " signer=signer-client detail=canvas-too-large"
    )
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    nested = canvas.forger.publish(canvas.forger.signed("cv.tsum", (deep,)))
    line = wait_for(lambda: next((ln for ln in list(canvas.log.lines) if nested.id in ln), None))
    assert line.endswith("detail=canvas-too-large")
    canvas.barrier()
    assert not any(tid in (big.id, nested.id) for _, tid, _ in RAN)
    # the positive twin: a large body inside the bounds runs
    ok = canvas.forger.publish(canvas.forger.signed("cv.tsum", ([1] * 50_000,)))
    wait_for(lambda: any(tid == ok.id for _, tid, _ in RAN), timeout=30)
