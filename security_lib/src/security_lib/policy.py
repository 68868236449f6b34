"""Signer allowlist: which signer may run which tasks.

With stock Celery every certificate in the store may sign every task. The kit
maps a signer (its certificate CN, or the SHA-256 fingerprint of the
certificate, hex with or without colons) to a list of task-name patterns
(:func:`fnmatch.fnmatchcase`, e.g. ``"proj.tasks.*"``). The signer is always
the certificate that verified the signature, never a name in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

from .certs import normalize_fingerprint
from .envelope import ENVELOPE_KEY
from .errors import PolicyError

if TYPE_CHECKING:
    from .certs import SignerIdentity

__all__ = ["ALLOW_ANY_SIGNER", "AllowAnySigner", "SignerPolicy", "tasks_a_message_can_run"]

#: Bounds on the walk through a message body (a deeper or larger canvas is refused).
MAX_DEPTH: Final = 32
MAX_NODES: Final = 100_000


class CanvasTooLargeError(ValueError):
    """The body nests deeper or holds more items than the walk accepts (fail closed)."""


def tasks_a_message_can_run(body: Any, is_task: Callable[[str], bool] | None = None) -> set[str]:
    """Return every task name a protocol 2 body can make run besides its own ``task``.

    Celery runs (or publishes, signed with the worker's key) what travels in
    the body: ``callbacks`` (link), ``errbacks`` (link_error, some called in
    the worker without a message), ``chain`` and ``chord`` in the embed, and
    signatures in the arguments of the built-in ``celery.*`` tasks (group,
    chord, map, starmap, chunks), nested to any depth.

    Celery turns *any* mapping into a signature: a bare ``{"task": name}``
    errback is called in the worker, and ``celery.starmap``/``celery.map``
    only look up ``signature(task).type``. So a mapping with a string
    ``task`` is taken as a signature, wherever it sits, when it has a
    ``subtask_type`` or ``options`` key (it may be published to another
    worker, whose gate checks it again) or when ``task`` names a task that can
    run here (``is_task``, the worker's registry). Without ``is_task`` every
    mapping with a string ``task`` counts. Celery also makes a signature of a
    plain task *name* (an errback ``"proj.wipe"``, ``celery.map``'s
    ``task="proj.wipe"``): every string value that names a task registered
    here counts too. Over-approximation: fail closed. The kit's own envelope
    (``embed["security_lib"]``, which Celery never interprets) is not walked.
    Raises :class:`CanvasTooLargeError` beyond :data:`MAX_DEPTH`/:data:`MAX_NODES`.
    """
    names: set[str] = set()
    stack: list[tuple[Any, int]] = [(body, 0)]
    if isinstance(body, (list, tuple)) and len(body) == 3 and isinstance(body[2], Mapping):  # noqa: PLR2004 - protocol 2 body
        embed = {k: v for k, v in body[2].items() if k != ENVELOPE_KEY}
        stack = [(body[0], 1), (body[1], 1), (embed, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if depth > MAX_DEPTH or seen > MAX_NODES:
            raise CanvasTooLargeError("canvas too deep or too large")
        if isinstance(node, Mapping):
            name = node.get("task")
            if isinstance(name, str) and (
                "subtask_type" in node or "options" in node or is_task is None or is_task(name)
            ):
                names.add(name)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((value, depth + 1) for value in node)
        elif isinstance(node, str) and is_task is not None and is_task(node):
            names.add(node)
    return names


class AllowAnySigner:
    """Type of :data:`ALLOW_ANY_SIGNER`: an explicit, visible opt-out of the allowlist."""

    _instance: AllowAnySigner | None = None

    def __new__(cls) -> AllowAnySigner:
        """Return the single instance."""
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        """Return the public name."""
        return "security_lib.ALLOW_ANY_SIGNER"


#: Pass as ``allowed_tasks`` to let every trusted signer run every task (logged
#: as a warning and reported by the audit). ``allowed_tasks=None`` is an error.
ALLOW_ANY_SIGNER: Final = AllowAnySigner()

AllowedTasks = Mapping[str, Iterable[str]]


class SignerPolicy:
    """Compiled allowlist."""

    def __init__(self, allowed: object) -> None:
        # Typed loosely on purpose: the value comes from a rendered config file and
        # every shape is checked at run time.
        self.allow_any = isinstance(allowed, AllowAnySigner)
        self._by_cn: dict[str, tuple[str, ...]] = {}
        self._by_fp: dict[str, tuple[str, ...]] = {}
        if allowed is None:
            raise PolicyError(
                "allowed_tasks",
                "no signer allowlist given (every trusted signer could run every task)",
                'pass allowed_tasks={"signer-<name>": ["proj.tasks.*"]}, or '
                "allowed_tasks=security_lib.ALLOW_ANY_SIGNER to opt out visibly",
            )
        if isinstance(allowed, AllowAnySigner):
            return
        if not isinstance(allowed, Mapping) or not allowed:
            raise PolicyError(
                "allowed_tasks",
                f"expected a non-empty mapping of signer -> task patterns, got {allowed!r}",
                'use e.g. {"signer-web": ["proj.tasks.*"]}',
            )
        for signer, patterns in allowed.items():
            if not isinstance(signer, str) or not signer.strip():
                raise PolicyError(
                    "allowed_tasks",
                    f"signer key {signer!r} is not a name",
                    "use a CN or fingerprint",
                )
            if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Iterable):
                raise PolicyError(
                    "allowed_tasks",
                    f"patterns for {signer!r} must be a list of strings, got {patterns!r}",
                    f'write {{"{signer}": ["{patterns!s}"]}} (a list, not a string)',
                )
            # An empty list is allowed on purpose: a worker's signer that runs
            # nothing on its own (its follow-ups are judged by the original signer).
            compiled = tuple(patterns)
            if not all(isinstance(p, str) and p for p in compiled):
                raise PolicyError(
                    "allowed_tasks",
                    f"patterns for {signer!r} must be non-empty strings, got {compiled!r}",
                    "list task names or fnmatch patterns such as proj.tasks.*",
                )
            fingerprint = normalize_fingerprint(signer)
            if fingerprint is not None:
                self._by_fp[fingerprint] = self._by_fp.get(fingerprint, ()) + compiled
            else:
                self._by_cn[signer] = self._by_cn.get(signer, ()) + compiled

    @property
    def signer_keys(self) -> tuple[str, ...]:
        """Return the configured signer names (CNs, then fingerprints)."""
        return (*self._by_cn, *self._by_fp)

    def matches_signer(self, key: str, identity: SignerIdentity) -> bool:
        """Return True if the allowlist key ``key`` designates ``identity``."""
        fingerprint = normalize_fingerprint(key)
        if fingerprint is not None:
            return fingerprint == identity.fingerprint
        return key == identity.common_name

    def patterns(self, identity: SignerIdentity) -> tuple[str, ...]:
        """Return the task patterns ``identity`` has (by CN and by fingerprint)."""
        return self._by_cn.get(identity.common_name, ()) + self._by_fp.get(identity.fingerprint, ())

    def allows(self, identity: SignerIdentity, task_name: str) -> bool:
        """Return True if ``identity`` may run ``task_name``."""
        if self.allow_any:
            return True
        return any(fnmatchcase(task_name, pattern) for pattern in self.patterns(identity))
