"""Benchmark: per-message cost of signing + verifying, kit vs stock Celery vs JSON vs raw RSA.

Not a test, and not part of the installed package. Run from ``security_lib/``:
``PYTHONPATH=src python bench/bench_lib.py [--iterations N] [--key-size BITS]``.
Keys and certificates are generated in memory for the run (RSA 3072 by
default, as the kit's PKI issues). Each row is one full producer + worker
round of the serializer work for the same protocol 2 message; ratios are
from this single run. Paths are interleaved over 10 rounds and each row
reports its best round, so that a busy host distorts the ratios less.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from kombu import serialization as kombu_serialization

from security_lib.certs import StoreEntry, identity_of
from security_lib.envelope import seal_body
from security_lib.gate import Gate
from security_lib.policy import SignerPolicy
from security_lib.replay import ReplayCache
from security_lib.serializer import KitSerializer

__all__ = ["main", "run"]

dumps: Callable[..., tuple[str, str, Any]] = kombu_serialization.dumps
loads: Callable[..., Any] = kombu_serialization.loads


def _make_signer(bits: int) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer-bench")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _message(task_id: str) -> tuple[dict[str, Any], tuple[Any, ...]]:
    headers: dict[str, Any] = {
        "lang": "py",
        "task": "proj.tasks.add",
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "replaced_task_nesting": 0,
        # as Celery 5.7 sends them (bound since envelope v4)
        "stamped_headers": None,
        "stamps": {},
    }
    body = (
        [2, 3],
        {"note": "x" * 200},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    return headers, body


def _measure(
    paths: Sequence[tuple[str, Callable[[int], object]]], iterations: int, rounds: int
) -> list[tuple[str, float]]:
    """Return the best per-message time of each path.

    Paths are interleaved round by round, so a busy host slows all of them
    alike, and the best round of each path is kept.
    """
    per_round = max(1, iterations // rounds)
    best = {label: float("inf") for label, _ in paths}
    counter = 0
    for _, fn in paths:
        fn(-1)  # warm up
    for _ in range(rounds):
        for label, fn in paths:
            start = time.perf_counter()
            for _ in range(per_round):
                fn(counter)
                counter += 1
            best[label] = min(best[label], (time.perf_counter() - start) / per_round)
    return [(label, best[label]) for label, _ in paths]


def run(  # noqa: PLR0915 - a flat list of measured paths
    iterations: int = 200, key_size: int = 3072, rounds: int = 10
) -> list[tuple[str, float]]:
    """Return ``(label, seconds per message)`` for every measured path."""
    from celery.security.certificate import Certificate, CertStore  # noqa: PLC0415
    from celery.security.key import PrivateKey  # noqa: PLC0415
    from celery.security.serialization import SecureSerializer  # noqa: PLC0415

    key, cert = _make_signer(key_size)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    _, body = _message(str(uuid.uuid4()))

    # plain JSON (kombu), what an unsigned deployment does
    def plain_json(_: int) -> object:
        ctype, enc, data = dumps(body, serializer="json")
        return loads(data, ctype, enc)

    # raw cryptography: RSA-PSS sign + verify of the same JSON bytes
    raw_body = dumps(body, serializer="json")[2].encode()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    public = key.public_key()

    def raw_rsa(_: int) -> object:
        signature = key.sign(raw_body, pss, hashes.SHA256())
        public.verify(signature, raw_body, pss, hashes.SHA256())
        return signature

    # stock Celery auth serializer
    store = CertStore()
    store.add_cert(Certificate(cert_pem.decode()))
    stock = SecureSerializer(
        PrivateKey(key_pem.decode()), Certificate(cert_pem.decode()), store, "sha256"
    )

    def stock_auth(_: int) -> object:
        return stock.deserialize(stock.serialize(body))

    # the kit: envelope + sign (producer), gate check (worker)
    ident = identity_of(cert)
    entry = StoreEntry(Path("bench.pem"), cert, public, ident)
    kit = KitSerializer(key=key, cert=cert, store={ident.celery_id: entry})
    policy = SignerPolicy({"signer-bench": ["proj.tasks.*"]})
    gate = Gate(kit, policy, ReplayCache(300, 30))
    journal_dir = tempfile.TemporaryDirectory(prefix="seclib-bench-")
    journaled = ReplayCache(300, 30)
    journaled.open_journal(Path(journal_dir.name) / "replay-bench.jsonl")
    gate_with_journal = Gate(kit, policy, journaled)
    follow_gate = Gate(kit, policy, ReplayCache(300, 30), follow_up_signers=("signer-bench",))
    # As on a worker: GateStep binds the app's task registry (names in bodies count).
    registry = {"proj.tasks.add", "proj.tasks.report", "celery.chord_unlock"}.__contains__
    for each in (gate, gate_with_journal, follow_gate):
        each.is_task = registry
    route = ["proj", "proj"]
    delivery = {"exchange": "proj", "routing_key": "proj", "redelivered": False}
    original: list[str] = []

    def kit_message(i: int, root: str | None = None) -> tuple[dict[str, Any], dict[str, Any], str]:
        hdrs, bdy = _message(f"bench-{i}-{uuid.uuid4()}")
        props = {"correlation_id": hdrs["id"], "reply_to": "proj-client", "priority": 0}
        seal_body(bdy, hdrs, ident.fingerprint, route, root=root, properties=props)
        return hdrs, props, kit.serialize(bdy)

    def checked(which: Gate, i: int, root: str | None = None) -> str:
        hdrs, props, payload = kit_message(i, root)
        reason, _, detail = which.check(hdrs, "application/data", payload, delivery, props)
        if reason is not None:
            raise RuntimeError(f"{reason} {detail}")
        which.replay.done((hdrs["id"], "0", "0"))  # what the ack hook does
        return payload

    def kit_follow_up(i: int) -> object:
        # A retry published by a worker: carries the original, verified once more.
        if not original:
            original.append(kit_message(-1)[2])
        return checked(follow_gate, i, original[0])

    def kit_gate(i: int) -> object:
        return checked(gate, i)

    def kit_gate_journal(i: int) -> object:
        return checked(gate_with_journal, i)

    def kit_worker(i: int) -> object:
        # As deployed: the gate verifies, then Celery decodes the body twice more
        # (Request in the consumer, the trace in the pool), each through the kit serializer.
        payload = kit_gate(i)
        kit.deserialize(payload)  # type: ignore[arg-type]
        return kit.deserialize(payload)  # type: ignore[arg-type]

    return _measure(
        [
            ("plain json (no signing)", plain_json),
            ("raw RSA-PSS sign+verify", raw_rsa),
            ("stock Celery auth", stock_auth),
            ("kit: envelope+sign+gate", kit_gate),
            ("kit as on a worker (+2 decodes)", kit_worker),
            ("kit gate + replay journal", kit_gate_journal),
            ("kit follow-up (+ original verified)", kit_follow_up),
        ],
        iterations,
        rounds,
    )


def render(rows: Sequence[tuple[str, float]], iterations: int, key_size: int) -> str:
    """Return the results as a text table with ratios."""
    base_json = rows[0][1]
    base_rsa = rows[1][1]
    width = max(len(label) for label, _ in rows)
    out = [
        f"RSA {key_size}, sha256, {iterations} messages per row, best of 10 interleaved rounds",
        f"{'path':<{width}}  {'us/msg':>9}  {'x json':>8}  {'x raw RSA':>9}",
    ]
    for label, seconds in rows:
        out.append(
            f"{label:<{width}}  {seconds * 1e6:>9.1f}  {seconds / base_json:>8.1f}  "
            f"{seconds / base_rsa:>9.2f}"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="bench/bench_lib.py")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--key-size", type=int, default=3072)
    args = parser.parse_args(argv)
    print(render(run(args.iterations, args.key_size), args.iterations, args.key_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
