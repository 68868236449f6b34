"""``harden()``: validate everything, then configure the app in one go.

Order matters: every check runs before the app is touched, so a failure
leaves the app as it was and a worker never starts half-hardened.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final

from celery.exceptions import ImproperlyConfigured, SecurityError

from .certs import (
    SignerIdentity,
    StoreEntry,
    check_key_matches_cert,
    check_store_issuer,
    check_validity,
    identity_of,
    load_cert_store,
    load_certificate,
    load_private_key,
)
from .envelope import install_sealer
from .errors import PolicyError, SecurityConfigError
from .gate import Gate, install_gate
from .policy import AllowAnySigner, SignerPolicy
from .reload import StoreReloader
from .replay import MAX_CLOCK_SKEW, MAX_REPLAY_WINDOW, ReplayCache, check_state_dir
from .results import bind_results
from .serializer import (
    KitSerializer,
    active_signer_fingerprint,
    digest_algorithm,
    setup_kit_security,
)
from .settings import (
    broker_tls_settings,
    check_broker_connections,
    refuse_code_changing_control,
    refuse_compression,
    refuse_compression_settings,
    refuse_unsafe_serializer_choices,
    security_settings,
    verify_applied,
)

__all__ = ["Hardening", "Policy", "harden", "hardening_of"]

logger = logging.getLogger("security_lib")

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Hardening:
    """What :func:`harden` configured (returned, and kept for the audit)."""

    signer: SignerIdentity
    trusted_signers: tuple[SignerIdentity, ...]
    policy: SignerPolicy
    replay_window: float
    clock_skew: float
    expiry_warning_days: int
    sign_results: bool
    insecure_broker: bool
    key: str
    cert: str
    cert_store: str
    broker_key: str | None
    warnings: tuple[str, ...] = field(default=())
    #: The ``broker_use_ssl`` harden() set (None: insecure lab broker allowed).
    broker_ssl: dict[str, Any] | None = None
    #: Signers whose follow-ups are judged on the original signer's behalf (the workers).
    follow_up_signers: tuple[str, ...] = ()


_STATE: weakref.WeakKeyDictionary[Any, Hardening] = weakref.WeakKeyDictionary()


#: What the first harden() of this process registered process-wide (kombu's
#: ``auth`` serializer: the signing key, the trusted store, the digest).
_PROCESS_IDENTITY: list[tuple[str, frozenset[str], str]] = []


def _refuse_another_identity(
    me: SignerIdentity, trusted: list[SignerIdentity], digest: str
) -> None:
    """Refuse a second harden() that would switch the process-wide signer or store.

    Kombu's serializer registry and Celery's ``setup_security()`` are
    process-global: a second identity would silently sign (and verify) for
    every app already hardened in this process.
    """
    identity = (me.fingerprint, frozenset(t.fingerprint for t in trusted), digest.lower())
    if _PROCESS_IDENTITY and _PROCESS_IDENTITY[0] != identity:
        raise SecurityConfigError(
            "harden",
            f"this process was already hardened with another signing identity, cert store or "
            f"digest (first signer fingerprint {_PROCESS_IDENTITY[0][0][:16]}..., now "
            f"{me.label()}); the signer and store are process-wide in Celery and kombu",
            "call harden() with one key, cert, cert_store and digest per process; run another "
            "identity in its own process",
        )


def _forget_process_identity() -> None:
    """Forget the process identity (tests only: each test stands for a process)."""
    _PROCESS_IDENTITY.clear()


def _store_reloaded(app: Any, gate: Gate, store: Mapping[str, StoreEntry]) -> None:
    """Record a reloaded store: the audit's record, the process identity, the gate's cache."""
    trusted = tuple(entry.identity for entry in store.values())
    record = _STATE.get(app)
    if record is not None:
        _STATE[app] = replace(record, trusted_signers=trusted)
    if _PROCESS_IDENTITY:
        me, _, digest = _PROCESS_IDENTITY[0]
        _PROCESS_IDENTITY[:] = [(me, frozenset(t.fingerprint for t in trusted), digest)]
    gate.forget_originals()


def hardening_of(app: Any) -> Hardening | None:
    """Return what :func:`harden` configured on ``app`` (None if never hardened)."""
    return _STATE.get(app)


def _number(name: str, value: object, *, low: float, high: float, allow_low: bool) -> float:
    """Return ``value`` as a float if it is a finite number in range, else refuse it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SecurityConfigError(name, f"{value!r} is not a number", f"pass {name}=<number>")
    if not math.isfinite(value):
        raise SecurityConfigError(name, f"{value!r} is not finite", f"pass a finite {name}")
    if value > high or value < low or (value == low and not allow_low):
        bound = ">=" if allow_low else ">"
        raise SecurityConfigError(
            name, f"{value!r} is out of range", f"pass {name} {bound} {low:g} and <= {high:g}"
        )
    return float(value)


def _replay_numbers(
    replay_window: object, clock_skew: object, rate: object, cache_size: object
) -> tuple[float, float, int]:
    """Return window, skew and the per-signer cache share, refusing absurd values."""
    window = _number("replay_window", replay_window, low=0, high=MAX_REPLAY_WINDOW, allow_low=False)
    skew = _number("clock_skew", clock_skew, low=0, high=MAX_CLOCK_SKEW, allow_low=True)
    per_second = _number("replay_max_rate", rate, low=0, high=1e6, allow_low=False)
    if cache_size is None:
        return window, skew, math.ceil(per_second * (window + 2 * skew))
    share = _number("replay_cache_size", cache_size, low=1, high=1e8, allow_low=True)
    return window, skew, int(share)


def _refuse_unsafe_settings(conf: Any, *, enable_remote_control: bool) -> None:
    """Refuse serializer, compression and remote-control settings the kit cannot gate."""
    refuse_unsafe_serializer_choices(conf)
    refuse_code_changing_control(conf, enable_remote_control=enable_remote_control)
    refuse_compression_settings(conf)


def _follow_up_signers(value: object, me: SignerIdentity) -> tuple[str, ...]:
    """Return the signers whose follow-ups are judged on the original's behalf."""
    if value is None:
        return (me.common_name,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PolicyError(
            "follow_up_signers",
            f"expected a list of signer names, got {value!r}",
            'pass e.g. follow_up_signers=["signer-worker"] (a list, not a string)',
        )
    names = tuple(value)
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise PolicyError(
            "follow_up_signers",
            f"every entry must be a certificate CN or fingerprint, got {names!r}",
            "list the workers' signer names",
        )
    return names


#: Default per-signer message rate the replay cache is sized for (messages/s).
DEFAULT_REPLAY_RATE: Final = 1000.0


@dataclass(frozen=True)
class Policy:
    """The security options of :func:`harden` in one frozen object.

    ``harden(app, key=..., cert=..., cert_store=..., policy=Policy(...))`` is
    the same as passing these as keywords (the older form, still accepted);
    passing both is refused. Files and broker TLS stay keywords: they are
    where this host keeps things, not what it allows. Values are checked by
    :func:`harden`, with the same errors as the keywords.
    """

    allowed_tasks: Mapping[str, Iterable[str]] | AllowAnySigner | None = None
    follow_up_signers: Iterable[str] | None = None
    digest: str = "sha256"
    replay_window: float = 300
    clock_skew: float = 30
    replay_max_rate: float = DEFAULT_REPLAY_RATE
    replay_cache_size: int | None = None
    replay_state_dir: PathLike | None = None
    expiry_warning_days: int = 30
    sign_results: bool = False
    enable_remote_control: bool = False

    def __post_init__(self) -> None:
        """Freeze the allowlist and the signer list (a later edit must not change the policy)."""
        allowed = self.allowed_tasks
        if isinstance(allowed, Mapping):
            frozen = {
                k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in allowed.items()
            }
            object.__setattr__(self, "allowed_tasks", MappingProxyType(frozen))
        if isinstance(self.follow_up_signers, list):
            object.__setattr__(self, "follow_up_signers", tuple(self.follow_up_signers))


def _one_policy(policy: Policy | None, keywords: Policy) -> Policy:
    """Return the policy to apply: ``policy=`` or the keyword form, never both."""
    if policy is None:
        return keywords
    if not isinstance(policy, Policy):
        raise PolicyError(
            "policy", f"expected a security_lib.Policy, got {policy!r}", "pass Policy(...)"
        )
    if keywords != Policy():
        given = sorted(
            f.name for f in fields(Policy) if getattr(keywords, f.name) != getattr(Policy(), f.name)
        )
        raise PolicyError(
            "policy",
            f"policy= given together with the keyword(s) {', '.join(given)}",
            "put every option in the Policy(...) or pass none of them as keywords",
        )
    return policy


def harden(  # noqa: PLR0912,PLR0915 - one linear sequence: every check, then configure
    app: Any,
    *,
    key: PathLike,
    cert: PathLike,
    cert_store: PathLike,
    broker_ca: PathLike | None = None,
    broker_cert: PathLike | None = None,
    broker_key: PathLike | None = None,
    key_password: str | bytes | None = None,
    digest: str = "sha256",
    allowed_tasks: Mapping[str, Iterable[str]] | AllowAnySigner | None = None,
    replay_window: float = 300,
    clock_skew: float = 30,
    expiry_warning_days: int = 30,
    allow_insecure_broker: bool = False,
    broker_server_hostname: str | None = None,
    sign_results: bool = False,
    enable_remote_control: bool = False,
    replay_cache_size: int | None = None,
    replay_state_dir: PathLike | None = None,
    replay_max_rate: float = DEFAULT_REPLAY_RATE,
    follow_up_signers: Iterable[str] | None = None,
    policy: Policy | None = None,
    cert_store_ca: PathLike | None = None,
) -> Hardening:
    """Harden a Celery app: signed tasks with a bound envelope, broker TLS, fail closed.

    Arguments are file paths (``cert_store`` a directory or a glob of signer
    certificates). ``allowed_tasks`` maps a signer (certificate CN or SHA-256
    fingerprint) to task-name patterns; ``None`` is refused, pass
    :data:`security_lib.ALLOW_ANY_SIGNER` to opt out visibly. Raises a
    :class:`~security_lib.SecurityConfigError` subclass naming the problem
    and the fix. Every check runs before the app is touched, so a refused
    configuration leaves the app unchanged; if Celery's own ``setup_security()``
    fails afterwards, no gate is installed and the worker refuses to start.

    Replay cache: each signer may hold ``replay_cache_size`` entries (default:
    ``replay_max_rate`` messages/s over ``replay_window + 2 * clock_skew``);
    ``replay_state_dir`` (the worker's own 0700 directory) keeps it across
    restarts, in a journal file per worker node name.

    ``follow_up_signers`` (default: this process's own certificate CN) are the
    workers: a message they publish while running a task (chain step, link,
    errback, retry, replace, chord callback) names the original message, and
    the gate judges it by the *original* signer and what that message listed.

    ``cert_store_ca`` (optional): a CA bundle that must have issued every
    certificate in the store (a stray certificate is refused by file name).

    ``policy`` (a :class:`Policy`) groups the options above; the keywords are
    the older form of the same thing.
    """
    p = _one_policy(
        policy,
        Policy(
            allowed_tasks=allowed_tasks,
            follow_up_signers=follow_up_signers,
            digest=digest,
            replay_window=replay_window,
            clock_skew=clock_skew,
            replay_max_rate=replay_max_rate,
            replay_cache_size=replay_cache_size,
            replay_state_dir=replay_state_dir,
            expiry_warning_days=expiry_warning_days,
            sign_results=sign_results,
            enable_remote_control=enable_remote_control,
        ),
    )
    (allowed_tasks, follow_up_signers, digest, replay_window, clock_skew, replay_max_rate) = (
        p.allowed_tasks, p.follow_up_signers, p.digest, p.replay_window, p.clock_skew,
        p.replay_max_rate,
    )  # fmt: skip
    (replay_cache_size, replay_state_dir, expiry_warning_days, sign_results) = (
        p.replay_cache_size, p.replay_state_dir, p.expiry_warning_days, p.sign_results,
    )  # fmt: skip
    enable_remote_control = p.enable_remote_control
    now = dt.datetime.now(dt.timezone.utc)
    window, skew, per_signer = _replay_numbers(
        replay_window, clock_skew, replay_max_rate, replay_cache_size
    )
    warn_days = int(
        _number("expiry_warning_days", expiry_warning_days, low=0, high=3650, allow_low=True)
    )
    state_dir = None if replay_state_dir is None else check_state_dir(replay_state_dir)
    digest_algorithm(digest)
    warnings: list[str] = []

    # 1. Our own signing key and certificate.
    private_key = load_private_key(key, key_password, "key (security_key)")
    certificate = load_certificate(cert, "cert (security_certificate)")
    expiring = check_validity(
        certificate, str(cert), "cert (security_certificate)", now=now, warning_days=warn_days
    )
    if expiring:
        warnings.append(expiring)
    check_key_matches_cert(private_key, certificate, str(key), str(cert))

    # 2. The trusted signer store.
    store, store_warnings = load_cert_store(
        cert_store, now=now, warning_days=warn_days, setting="cert_store (security_cert_store)"
    )
    warnings.extend(store_warnings)
    if cert_store_ca is not None:
        check_store_issuer(store, cert_store_ca, "cert_store_ca")
    me = identity_of(certificate)
    if me.celery_id not in store:
        warnings.append(
            f"this process's certificate ({me.label()}) is not in the cert store; messages it "
            "sends (retries, chains) are only accepted by workers that trust it"
        )

    # 3. Signer allowlist.
    allowlist = SignerPolicy(allowed_tasks)
    if allowlist.allow_any:
        warnings.append("allowed_tasks=ALLOW_ANY_SIGNER: every trusted signer may run every task")
    identities = [entry.identity for entry in store.values()]
    _refuse_another_identity(me, identities, digest)
    for signer_key in allowlist.signer_keys:
        if not any(allowlist.matches_signer(signer_key, ident) for ident in identities):
            warnings.append(f"allowed_tasks names {signer_key!r}, which matches no store cert")

    vouchers = _follow_up_signers(follow_up_signers, me)
    if sign_results and follow_up_signers is None:
        warnings.append(
            f"sign_results=True: results are accepted only when signed by {me.common_name} "
            "(this process); on a producer pass follow_up_signers=[<the workers' signers>]"
        )

    # 4. Serializers and compression the app asked for, remote control, the broker.
    _refuse_unsafe_settings(app.conf, enable_remote_control=enable_remote_control)
    broker_ssl, broker_warnings = broker_tls_settings(
        app.conf,
        broker_ca=None if broker_ca is None else os.fspath(broker_ca),
        broker_cert=None if broker_cert is None else os.fspath(broker_cert),
        broker_key=None if broker_key is None else os.fspath(broker_key),
        server_hostname=broker_server_hostname,
        allow_insecure=allow_insecure_broker,
    )
    warnings.extend(broker_warnings)
    if broker_ssl is not None:
        check_broker_connections(app, broker_ssl, ssl=broker_ssl)
    if state_dir is None:
        warnings.append(
            "replay_state_dir not set: a worker restart forgets which messages already ran, "
            "so each message of the last replay_window can be replayed once more"
        )

    # Everything checked: configure.
    password = key_password.encode() if isinstance(key_password, str) else key_password
    settings = security_settings(
        key=os.fspath(key),
        cert=os.fspath(cert),
        cert_store=os.fspath(cert_store),
        digest=digest,
        key_password=password,
        sign_results=sign_results,
        enable_remote_control=enable_remote_control,
    )
    if broker_ssl is not None:
        settings["broker_use_ssl"] = broker_ssl
    app.conf.update(settings)
    serializer = KitSerializer(
        key=private_key,
        cert=certificate,
        store=store,
        digest=digest,
        result_signer=(
            (lambda ident: any(allowlist.matches_signer(k, ident) for k in vouchers))
            if sign_results
            else None
        ),
    )
    try:
        setup_kit_security(app, serializer)
    except (ImproperlyConfigured, SecurityError, OSError, ValueError) as exc:
        raise SecurityConfigError(
            "setup_security", f"Celery refused the security settings: {exc}", "see the message"
        ) from exc
    _PROCESS_IDENTITY[:] = [
        (me.fingerprint, frozenset(i.fingerprint for i in identities), digest.lower())
    ]
    refuse_compression()
    verify_applied(app, sign_results=sign_results)
    install_sealer(app.amqp, active_signer_fingerprint)
    if sign_results:
        bind_results(app)
    gate = Gate(
        serializer,
        allowlist,
        ReplayCache(window, skew, max_per_signer=per_signer),
        state_dir=state_dir,
        follow_up_signers=vouchers,
    )
    gate.reloader = StoreReloader(
        serializer=serializer,
        policy=allowlist,
        cert_store=cert_store,
        cert_store_ca=cert_store_ca,
        warning_days=warn_days,
        on_reloaded=lambda new: _store_reloaded(app, gate, new),
    )
    install_gate(app, gate)
    hardening = Hardening(
        signer=me,
        trusted_signers=tuple(identities),
        policy=allowlist,
        replay_window=window,
        clock_skew=skew,
        expiry_warning_days=warn_days,
        sign_results=sign_results,
        insecure_broker=broker_ssl is None or allow_insecure_broker,
        key=os.fspath(key),
        cert=os.fspath(cert),
        cert_store=os.fspath(cert_store),
        broker_key=None if broker_key is None else os.fspath(broker_key),
        warnings=tuple(warnings),
        broker_ssl=broker_ssl,
        follow_up_signers=vouchers,
    )
    _STATE[app] = hardening
    for message in warnings:
        logger.warning("security_lib: %s", message)
    logger.info(
        "security_lib hardened app %s: signer=%s trusted=%d replay_window=%ss",
        getattr(app, "main", None),
        me.label(),
        len(identities),
        window,
    )
    return hardening
