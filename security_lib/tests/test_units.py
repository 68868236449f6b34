"""Unit tests of the building blocks (no worker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from conftest import PKI

from security_lib import PolicyError, SecurityConfigError
from security_lib.certs import identity_of, normalize_fingerprint
from security_lib.envelope import BOUND_HEADERS, first_mismatch, make_envelope, parse_envelope
from security_lib.gate import GateStep
from security_lib.policy import SignerPolicy
from security_lib.replay import ReplayCache
from security_lib.serializer import KitSerializer, VerificationError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_replay_window_and_duplicates() -> None:
    clock = Clock()
    cache = ReplayCache(60, 5, clock=clock)
    assert cache.check("a", clock.now) is None
    assert cache.check("a", clock.now) == "replay"
    assert cache.check("b", clock.now - 66) == "expired-envelope"
    assert cache.check("c", clock.now + 6) == "future-envelope"
    assert cache.check("d", clock.now - 64) is None  # inside window + skew


def test_replay_cache_forgets_only_what_has_expired() -> None:
    clock = Clock()
    cache = ReplayCache(60, 5, clock=clock)
    cache.check("a", clock.now)
    clock.now += 64
    assert cache.check("a", clock.now - 64) == "replay"  # still remembered
    clock.now += 10
    assert cache.check("a", clock.now - 74) == "expired-envelope"  # too old anyway
    assert cache.check("fresh", clock.now) is None
    assert len(cache) == 1  # "a" was purged


def test_replay_cache_fails_closed_when_full() -> None:
    clock = Clock()
    cache = ReplayCache(60, 5, max_per_signer=2, clock=clock)
    assert cache.check(1, clock.now) is None
    assert cache.check(2, clock.now) is None
    assert cache.check(3, clock.now) == "replay-cache-full"


def test_policy_by_cn_and_fingerprint(pki: PKI) -> None:
    client, other = identity_of(pki.client.certificate), identity_of(pki.other.certificate)
    colon_fp = ":".join(other.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    policy = SignerPolicy({"signer-client": ["proj.tasks.*"], colon_fp: ["proj.admin.purge"]})
    assert policy.allows(client, "proj.tasks.add")
    assert not policy.allows(client, "proj.admin.purge")
    assert not policy.allows(client, "proj.tasksX")
    assert policy.allows(other, "proj.admin.purge")
    assert not policy.allows(other, "proj.tasks.add")


@pytest.mark.parametrize(
    "bad",
    [None, {}, [], {"signer-x": [""]}, {"signer-x": "proj.*"}, {"": ["a"]}],
)
def test_policy_rejects_malformed(bad: Any) -> None:
    with pytest.raises(PolicyError):
        SignerPolicy(bad)


def test_empty_entry_allows_nothing(pki: PKI) -> None:
    """A worker's signer may be listed with no task at all (its follow-ups are vouched)."""
    worker = identity_of(pki.worker.certificate)
    policy = SignerPolicy({"signer-worker": [], "signer-client": ["proj.tasks.add"]})
    assert not policy.allows(worker, "proj.tasks.add")
    assert policy.allows(identity_of(pki.client.certificate), "proj.tasks.add")


def test_fingerprint_normalization() -> None:
    fp = "ab" * 32
    assert normalize_fingerprint(fp.upper()) == fp
    assert normalize_fingerprint(":".join(["AB"] * 32)) == fp
    assert normalize_fingerprint("signer-web") is None


def test_envelope_round_trip_and_mismatch() -> None:
    headers = {
        "task": "t",
        "id": "1",
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": (None, None),
    }
    env = make_envelope(headers, "fp")
    body = [[], {}, {"security_lib": env}]
    parsed = parse_envelope(body)
    assert parsed is not None
    assert set(parsed.headers) == set(BOUND_HEADERS)
    assert first_mismatch(parsed, headers) is None  # tuple vs list is not a mismatch
    assert first_mismatch(parsed, {**headers, "task": "u"}) == "task"
    assert first_mismatch(parsed, {**headers, "retries": 3}) == "retries"
    assert parse_envelope([[], {}, {}]) is None
    assert parse_envelope({"task": "t"}) is None


def test_serializer_verifies_and_names_the_signer(pki: PKI) -> None:
    from security_lib.certs import StoreEntry

    cert = pki.client.certificate
    ident = identity_of(cert)
    store = {ident.celery_id: StoreEntry(pki.client.cert, cert, cert.public_key(), ident)}  # type: ignore[arg-type]
    signer = KitSerializer(key=pki.client.private_key, cert=cert, store={})
    verifier = KitSerializer(key=None, cert=None, store=store)
    verified = verifier.verify(signer.serialize([[1], {}, {}]))
    assert verified.signer.common_name == "signer-client"
    assert verified.data == [[1], {}, {}]
    with pytest.raises(VerificationError) as info:
        verifier.verify("not base64 at all!")
    assert info.value.reason == "unsigned"
    with pytest.raises(VerificationError):
        verifier.serialize([])  # verify-only: no key


def test_gate_step_refuses_an_app_that_was_not_hardened() -> None:
    consumer = SimpleNamespace(app=Celery("plain", set_as_current=False), strategies={})
    step = GateStep.__new__(GateStep)
    with pytest.raises(SecurityConfigError, match=r"not hardened"):
        step.start(consumer)


def test_bare_mappings_with_a_task_count_as_signatures() -> None:
    """Celery calls ``signature(d)`` on any mapping: {"task": name} alone can run."""
    from security_lib.policy import tasks_a_message_can_run

    body = [[], {"task": {"task": "proj.wipe"}, "data": {"task": "not a task name"}}, {}]
    registered = {"proj.wipe"}.__contains__
    assert tasks_a_message_can_run(body, registered) == {"proj.wipe"}
    # a full signature counts even if it runs elsewhere (that worker checks it again)
    full = [[], {}, {"callbacks": [{"task": "elsewhere.x", "options": {}}]}]
    assert tasks_a_message_can_run(full, registered) == {"elsewhere.x"}
    # without the registry every mapping with a string "task" counts (fail closed)
    assert tasks_a_message_can_run(body) == {"proj.wipe", "not a task name"}
    # a plain task name is a signature to Celery too (errback "proj.wipe", map's task=)
    named = [[], {"task": "proj.wipe", "it": ["proj.wipe-not"]}, {"errbacks": ["proj.wipe"]}]
    assert tasks_a_message_can_run(named, registered) == {"proj.wipe"}
    # the kit's envelope is not walked (Celery never reads it)
    sealed = [[], {}, {"security_lib": {"headers": {"task": "proj.wipe"}}}]
    assert tasks_a_message_can_run(sealed, registered) == set()
