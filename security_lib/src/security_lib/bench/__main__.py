"""Benchmark: per-message sign and verify cost per signer key type and message size.

Not a test, and not part of the installed wheel (``pyproject.toml`` excludes
this subpackage). Run from ``security_lib/``::

    PYTHONPATH=src python -m security_lib.bench [--iterations N] [--rounds R]
        [--key-types rsa-3072,ed25519,ecdsa-p256] [--sizes small,10k,100k]

Keys and certificates are generated in memory for the run. For every key type
and message size (a protocol 2 body of about 300 bytes, 10 KiB and 100 KiB of
JSON) it times, per message:

* ``raw sign`` / ``raw verify``: the bare ``cryptography`` operation on the
  same JSON bytes (RSA-PSS, Ed25519, ECDSA) - the floor;
* ``kit sign``: what a producer pays (envelope, JSON, signature, wire format);
* ``kit verify+decode``: what a worker pays before a task runs (base64,
  signature, JSON, envelope, allowlist, replay cache); the gate hands Celery
  the decoded body, so nothing is verified or parsed again after it;
* ``stock auth sign`` / ``stock auth verify+decode`` (RSA only): Celery's own
  ``auth`` serializer, for comparison (a stock worker decodes twice: once for
  the Request, once in the pool).

Paths are interleaved round by round and each keeps its best round, so a busy
host distorts the ratios less. The goal lines compare the worker's
verify+decode of a 10 KiB message with the raw verify (goal: at most 4x).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from kombu import serialization as kombu_serialization

from security_lib.certs import StoreEntry, identity_of
from security_lib.envelope import seal_body
from security_lib.gate import Gate
from security_lib.policy import SignerPolicy
from security_lib.replay import ReplayCache
from security_lib.serializer import KitSerializer
from security_lib.signing import KEY_TYPES as SUPPORTED
from security_lib.signing import PrivateKey, signer_for, verifier_for

__all__ = ["main", "run"]

dumps: Callable[..., tuple[str, str, Any]] = kombu_serialization.dumps
SIZES = {"small": 0, "10k": 10 * 1024, "100k": 100 * 1024}
KEY_TYPES = ("rsa-3072", "ed25519", "ecdsa-p256")
WORKER_GOAL = 4.0  # issue 17: worker verify+decode of 10 KiB <= 4x the raw verify


def new_key(kind: str) -> PrivateKey:
    """Return a fresh key of ``kind`` (``rsa-<bits>``, ``ed25519``, ``ecdsa-p256``)."""
    if kind.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(kind[4:]))
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    raise SystemExit(f"unknown key type {kind!r} (rsa-<bits>, ed25519, ecdsa-p256, ecdsa-p384)")


def _certificate(key: PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer-bench")])
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    return builder.sign(
        key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    )


def _message(task_id: str, pad: str) -> tuple[dict[str, Any], list[Any]]:
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
        "stamped_headers": None,
        "stamps": {},
    }
    body = [
        [2, 3],
        {"note": "x" * 200, "data": pad},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]
    return headers, body


@dataclass
class Measured:
    """One measured path: ``setup(n)`` (untimed) returns ``fn(i)`` timed for i < n."""

    label: str
    baseline: str  # label of the row this one is compared with
    setup: Callable[[int], Callable[[int], object]]


def _measure(paths: Sequence[Measured], per_round: int, rounds: int) -> dict[str, float]:
    best = {p.label: float("inf") for p in paths}
    for p in paths:
        p.setup(1)(0)  # warm up
    for _ in range(rounds):
        for p in paths:
            fn = p.setup(per_round)
            start = time.perf_counter()
            for i in range(per_round):
                fn(i)
            best[p.label] = min(best[p.label], (time.perf_counter() - start) / per_round)
    return best


def paths_for(kind: str, size: int) -> list[Measured]:
    """Return the measured paths of one key type and body size."""
    key = new_key(kind)
    cert = _certificate(key)
    digest = hashes.SHA256()
    ident = identity_of(cert)
    entry = StoreEntry(Path("bench.pem"), cert, key.public_key(), ident)
    kit = KitSerializer(key=key, cert=cert, store={ident.celery_id: entry})
    policy = SignerPolicy({"signer-bench": ["proj.tasks.*"]})
    route = ["proj", "proj"]
    delivery = {"exchange": "proj", "routing_key": "proj", "redelivered": False}
    pad = "p" * size
    _, body = _message(str(uuid.uuid4()), pad)
    raw_body = dumps(body, serializer="json")[2].encode()
    sign, verify = signer_for(key, digest), verifier_for(key.public_key(), digest)
    raw_signature = sign(raw_body)

    def raw_sign(_: int) -> Callable[[int], object]:
        return lambda _i: sign(raw_body)

    def raw_verify(_: int) -> Callable[[int], object]:
        return lambda _i: verify(raw_signature, raw_body)

    def kit_message(i: int) -> tuple[dict[str, Any], dict[str, Any], str]:
        hdrs, bdy = _message(f"bench-{i}-{uuid.uuid4()}", pad)
        props = {"correlation_id": hdrs["id"], "reply_to": "proj-client", "priority": 0}
        seal_body(bdy, hdrs, ident.fingerprint, route, properties=props)
        return hdrs, props, kit.serialize(bdy)

    def kit_sign(_: int) -> Callable[[int], object]:
        return kit_message

    def kit_verify(n: int) -> Callable[[int], object]:
        messages = [kit_message(i) for i in range(n)]
        gate = Gate(kit, policy, ReplayCache(300, 30))
        gate.is_task = {"proj.tasks.add"}.__contains__

        def check(i: int) -> object:
            hdrs, props, payload = messages[i]
            verdict = gate.judge(hdrs, "application/data", payload, delivery, props)
            if verdict.reason is not None:
                raise RuntimeError(f"{verdict.reason} {verdict.detail}")
            gate.replay.done((hdrs["id"], "0", "0"))  # what the ack hook does
            return verdict.body

        return check

    paths = [
        Measured("raw sign", "raw sign", raw_sign),
        Measured("kit sign", "raw sign", kit_sign),
    ]
    if isinstance(key, rsa.RSAPrivateKey):
        from celery.security.certificate import Certificate, CertStore  # noqa: PLC0415
        from celery.security.key import PrivateKey as StockKey  # noqa: PLC0415
        from celery.security.serialization import SecureSerializer  # noqa: PLC0415

        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        store = CertStore()
        store.add_cert(Certificate(cert_pem))
        stock = SecureSerializer(StockKey(key_pem), Certificate(cert_pem), store, "sha256")
        stock_payload = stock.serialize(body)

        def stock_sign(_: int) -> Callable[[int], object]:
            return lambda _i: stock.serialize(body)

        def stock_verify(_: int) -> Callable[[int], object]:
            return lambda _i: stock.deserialize(stock_payload)

        paths.append(Measured("stock auth sign", "raw sign", stock_sign))
    paths += [
        Measured("raw verify", "raw verify", raw_verify),
        Measured("kit verify+decode", "raw verify", kit_verify),
    ]
    if isinstance(key, rsa.RSAPrivateKey):
        paths.append(Measured("stock auth verify+decode", "raw verify", stock_verify))
    return paths


def run(
    key_types: Sequence[str] = KEY_TYPES,
    sizes: Sequence[str] = tuple(SIZES),
    per_round: int = 100,
    rounds: int = 5,
) -> list[tuple[str, str, str, float, float, int]]:
    """Return ``(key type, size, path, seconds per message, ratio, body bytes)`` rows."""
    rows = []
    for kind in key_types:
        for size in sizes:
            paths = paths_for(kind, SIZES[size])
            best = _measure(paths, per_round, rounds)
            body_bytes = len(dumps(_message("x", "p" * SIZES[size])[1], serializer="json")[2])
            for p in paths:
                ratio = best[p.label] / best[p.baseline]
                rows.append((kind, size, p.label, best[p.label], ratio, body_bytes))
    return rows


def render(
    rows: Sequence[tuple[str, str, str, float, float, int]], per_round: int, rounds: int
) -> str:
    """Return the table and the goal lines."""
    out = [
        (
            f"Per-message cost, sha256 where a digest applies, {per_round} messages per round, "
            f"best of {rounds} interleaved rounds; ratio: to the raw op of the same key"
        ),
        f"{'key':<11} {'size':<6} {'body B':>7}  {'path':<26} {'us/msg':>9} {'x raw':>7}",
    ]
    for kind, size, label, seconds, ratio, body_bytes in rows:
        out.append(
            f"{kind:<11} {size:<6} {body_bytes:>7}  {label:<26} {seconds * 1e6:>9.1f} {ratio:>7.2f}"
        )
    out.append("")
    for kind, size, label, _, ratio, _ in rows:
        if size == "10k" and label == "kit verify+decode":
            verdict = "met" if ratio <= WORKER_GOAL else "NOT met"
            out.append(
                f"goal worker verify+decode of 10 KiB <= {WORKER_GOAL:.0f}x raw verify, "
                f"{kind}: {ratio:.2f}x {verdict}"
            )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m security_lib.bench")
    parser.add_argument("--iterations", type=int, default=100, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--key-types", default=",".join(KEY_TYPES))
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args(argv)
    kinds = [k for k in args.key_types.split(",") if k]
    unsupported = sorted(set(kinds) - set(SUPPORTED))
    if unsupported:
        raise SystemExit(f"unsupported key types {unsupported} (use {', '.join(SUPPORTED)})")
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        raise SystemExit(f"unknown sizes {unknown} (use {', '.join(SIZES)})")
    rows = run(kinds, sizes, args.iterations, args.rounds)
    print(render(rows, args.iterations, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
