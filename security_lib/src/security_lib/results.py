"""Signed results (``sign_results=True``): only from the workers, bound to the task id.

With ``sign_results=True`` results are encoded with the kit's ``auth``
serializer, so any certificate in the store would verify one. Two checks close
what that leaves open:

* **Who may sign a result**: a decoded value that is a result record (a
  mapping with ``task_id``, ``status`` and ``result``) is accepted only if the
  certificate that verified it is one of the ``follow_up_signers`` (the
  workers); a producer's key cannot forge a result.
* **Which task it belongs to**: the signed record names its task; a record
  read for another task id (a signed result copied under another key of the
  backend, or an ``rpc://`` reply re-published with another
  ``correlation_id``) is refused with :class:`celery.exceptions.SecurityError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from celery.exceptions import SecurityError

__all__ = ["bind_results", "is_result_record"]

_RESULT_KEYS: Final = frozenset({"task_id", "status", "result"})
_MARK: Final = "__security_lib_results__"


def is_result_record(data: Any) -> bool:
    """Return True if ``data`` is a Celery result record (what a backend stores)."""
    return isinstance(data, Mapping) and data.keys() >= _RESULT_KEYS


def _bind(backend: Any) -> Any:
    """Wrap ``backend.get_task_meta`` so a record for another task id is refused."""
    get_task_meta: Callable[..., Any] = backend.get_task_meta
    if getattr(get_task_meta, _MARK, False):
        return backend

    def bound_get_task_meta(task_id: Any, *args: Any, **kwargs: Any) -> Any:
        meta = get_task_meta(task_id, *args, **kwargs)
        named = meta.get("task_id") if isinstance(meta, Mapping) else None
        if named is not None and str(named) != str(task_id):
            raise SecurityError(
                f"security_lib: the result read for task {task_id} is signed for task {named}"
            )
        return meta

    setattr(bound_get_task_meta, _MARK, True)
    backend.get_task_meta = bound_get_task_meta
    return backend


def bind_results(app: Any) -> None:
    """Bind results to their task id on ``app``'s backend (current and future instances)."""
    make: Callable[[], Any] = app._get_backend  # Celery builds the backend lazily here
    if not getattr(make, _MARK, False):

        def get_backend() -> Any:
            return _bind(make())

        setattr(get_backend, _MARK, True)
        app._get_backend = get_backend
    current = getattr(app, "_backend", None)
    if current is not None:
        _bind(current)
