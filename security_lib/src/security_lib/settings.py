"""The Celery settings the kit applies, and the checks that they still hold.

What :func:`security_lib.harden` sets (and why):

* ``task_serializer='auth'``, ``accept_content=['auth']``: every task is signed,
  only signed tasks are accepted (``setup_security`` insists on exactly this).
* ``event_serializer='auth'``: events are signed too (the guide's example).
* Results: ``sign_results=False`` → ``result_serializer='json'`` and
  ``result_accept_content=['json']`` *explicitly* (Celery falls back to
  ``accept_content`` when it is unset, so a client would otherwise expect
  signed results); JSON cannot execute code, but results are not
  authenticated: protect the result backend itself. ``sign_results=True`` →
  ``'auth'`` for both (callers need the workers' certificates in their store).
* ``security_*``: key, certificate, store, digest (sha256 or stronger), password.
* ``task_protocol=2``: the envelope lives in the protocol 2 body.
* ``worker_enable_remote_control=False`` unless asked: remote control
  (``celery.pidbox``) is a second command channel that the gate does not cover.
* ``broker_use_ssl``: ``cert_reqs=CERT_REQUIRED``, CA, client cert and key,
  ``server_hostname`` (py-amqp checks the broker's name only when it is set).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from kombu import compression as kombu_compression
from kombu.exceptions import ContentDisallowed
from kombu.serialization import registry

from .errors import BrokerTLSError, SecurityConfigError, SerializerError
from .files import check_private_key_file, check_readable_file

__all__ = [
    "UNSAFE_SERIALIZERS",
    "broker_tls_settings",
    "check_broker_connection",
    "check_broker_connections",
    "enabled_unsafe_decoders",
    "refuse_unsafe_serializer_choices",
    "security_settings",
    "verify_applied",
]

#: Serializer names/content types that can execute code or are not signed.
UNSAFE_SERIALIZERS: Final = frozenset(
    {
        "pickle",
        "yaml",
        "msgpack",
        "application/x-python-serialize",
        "application/x-yaml",
        "application/x-msgpack",
    }
)

_SERIALIZER_SETTINGS: Final = (
    "task_serializer",
    "result_serializer",
    "event_serializer",
    "accept_content",
    "result_accept_content",
)

_loads: Callable[[bytes, str, str], Any] = registry.loads

# Harmless payloads (None) used to probe whether kombu would decode a format.
_PROBES: Final = {"pickle": b"N.", "yaml": b"null", "msgpack": b"\xc0"}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def refuse_unsafe_serializer_choices(conf: Any) -> None:
    """Refuse an app whose configuration explicitly asks for pickle/yaml/msgpack."""
    for setting in _SERIALIZER_SETTINGS:
        unsafe = sorted(set(_as_list(conf.get(setting))) & UNSAFE_SERIALIZERS)
        if unsafe:
            raise SerializerError(
                setting,
                f"{setting} includes {', '.join(unsafe)}, which can execute code on load",
                f"remove {', '.join(unsafe)} from {setting}; harden() sets safe values",
            )


def enabled_unsafe_decoders() -> list[str]:
    """Return the unsafe formats kombu would still decode without an accept list."""
    enabled = []
    for name, probe in _PROBES.items():
        content_type = registry.name_to_type.get(name)
        if content_type is None:
            continue
        try:
            _loads(probe, content_type, "binary")
        except ContentDisallowed:
            continue
        except Exception:  # noqa: BLE001,S112 - not installed/undecodable is also "not enabled"
            continue
        enabled.append(name)
    return enabled


def security_settings(
    *,
    key: str,
    cert: str,
    cert_store: str,
    digest: str,
    key_password: bytes | None,
    sign_results: bool,
    enable_remote_control: bool,
) -> dict[str, Any]:
    """Return the Celery settings for signing (see the module docstring)."""
    result = "auth" if sign_results else "json"
    return {
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "event_serializer": "auth",
        "result_serializer": result,
        "result_accept_content": [result],
        "security_key": key,
        "security_certificate": cert,
        "security_cert_store": cert_store,
        "security_digest": digest,
        "security_key_password": key_password,
        "task_protocol": 2,
        "worker_enable_remote_control": enable_remote_control,
    }


def broker_urls(conf: Any) -> list[str]:
    """Return every broker URL Celery may connect to (failover lists included)."""
    urls: list[str] = []
    for setting in ("broker_url", "broker_read_url", "broker_write_url"):
        value = conf.get(setting)
        for item in _as_list(value):
            urls.extend(u.strip() for u in item.split(";") if u.strip())
    return urls or ["amqp://guest@localhost//"]  # Celery's default


def broker_tls_settings(
    conf: Any,
    *,
    broker_ca: str | None,
    broker_cert: str | None,
    broker_key: str | None,
    server_hostname: str | None,
    allow_insecure: bool,
) -> tuple[dict[str, Any] | None, list[str]]:
    """Validate the broker URL(s) and TLS files; return ``broker_use_ssl`` and warnings.

    Returns ``(None, warnings)`` only when ``allow_insecure`` is set and no TLS
    material was given (lab use).
    """
    warnings: list[str] = []
    urls = broker_urls(conf)
    plain = [u for u in urls if urlsplit(u).scheme != "amqps"]
    given = [p for p in (broker_ca, broker_cert, broker_key) if p]
    if plain:
        shown = ", ".join(urlsplit(u).scheme + "://" + (urlsplit(u).hostname or "") for u in plain)
        if not allow_insecure:
            raise BrokerTLSError(
                "broker_url",
                f"broker URL(s) {shown} do not use amqps:// (TLS)",
                "use amqps://<broker>:5671/<vhost>; allow_insecure_broker=True is for labs only",
            )
        warnings.append(f"insecure broker allowed (lab only): {shown}")
    if not given and allow_insecure:
        warnings.append("no broker TLS client certificate configured (lab only)")
        return None, warnings
    missing = [
        name
        for name, value in (
            ("broker_ca", broker_ca),
            ("broker_cert", broker_cert),
            ("broker_key", broker_key),
        )
        if not value
    ]
    if missing:
        raise BrokerTLSError(
            ", ".join(missing),
            "broker TLS needs the CA bundle, a client certificate and its key",
            "pass broker_ca=, broker_cert= and broker_key= to harden()",
        )
    for url in urls:
        overrides = sorted(k for k in parse_qs(urlsplit(url).query) if k.startswith("ssl"))
        if overrides:
            raise BrokerTLSError(
                "broker_url",
                f"the broker URL sets {', '.join(overrides)} in its query, which kombu applies "
                "over broker_use_ssl (?ssl=1 means no CA check, no client certificate)",
                "remove the query options; harden() sets the TLS options",
            )
    ca = str(check_readable_file(str(broker_ca), "broker_ca"))
    certfile = str(check_readable_file(str(broker_cert), "broker_cert"))
    keyfile = str(check_private_key_file(str(broker_key), "broker_key"))
    if server_hostname is None:
        hosts = [urlsplit(u).hostname for u in urls if urlsplit(u).scheme == "amqps"]
        server_hostname = next((h for h in hosts if h), None)
    if not server_hostname:
        raise BrokerTLSError(
            "broker_server_hostname",
            "cannot tell which name the broker certificate must carry",
            "pass broker_server_hostname= (the name in the broker's certificate)",
        )
    return {
        "ca_certs": ca,
        "certfile": certfile,
        "keyfile": keyfile,
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": server_hostname,
    }, warnings


def verify_applied(app: Any, *, sign_results: bool | None = None) -> None:
    """Raise :class:`SerializerError` if the hardened settings no longer hold.

    Called again when the worker starts consuming, so a setting changed after
    ``harden()`` (or pickle re-enabled in kombu) stops the worker.
    """
    conf = app.conf
    expected: dict[str, Any] = {
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "event_serializer": "auth",
    }
    for setting, value in expected.items():
        actual = conf.get(setting)
        if (list(actual) if isinstance(actual, (list, tuple)) else actual) != value:
            raise SerializerError(
                setting,
                f"{setting} is {actual!r}, not {value!r} (changed after harden()?)",
                f"do not override {setting} after security_lib.harden()",
            )
    result_accept = conf.get("result_accept_content")
    allowed_results = (["auth"],) if sign_results else (["json"], ["auth"])
    if result_accept is None or list(result_accept) not in allowed_results:
        raise SerializerError(
            "result_accept_content",
            f"result_accept_content is {result_accept!r}; unset it falls back to accept_content",
            "set it explicitly (harden() sets ['json'], or ['auth'] with sign_results=True)",
        )
    refuse_unsafe_serializer_choices(conf)
    unsafe = enabled_unsafe_decoders()
    if unsafe:
        raise SerializerError(
            "kombu serializers",
            f"{', '.join(unsafe)} decoding is enabled in kombu's registry",
            "do not call kombu.enable_insecure_serializers(); harden() disables them",
        )
    refuse_code_changing_control(conf)
    expanding = expanding_decompressors()
    if expanding:
        raise SerializerError(
            "kombu compression",
            f"{', '.join(expanding)} still decompress in kombu's registry (decompression bombs)",
            "do not register compression methods after security_lib.harden()",
        )


def refuse_code_changing_control(conf: Any, *, enable_remote_control: bool | None = None) -> None:
    """Refuse remote control together with ``worker_pool_restarts``.

    A ``pool_restart`` command (any trusted signer can send one when remote
    control is on) re-imports modules and restarts the pool: code and pool
    changed from the broker. The gate survives it, the operator's intent may not.
    """
    enabled = (
        conf.get("worker_enable_remote_control")
        if enable_remote_control is None
        else enable_remote_control
    )
    if enabled and conf.get("worker_pool_restarts"):
        raise SecurityConfigError(
            "worker_pool_restarts",
            "remote control is enabled together with worker_pool_restarts=True (a pool_restart "
            "command from the broker re-imports modules and restarts the pool)",
            "set worker_pool_restarts=False, or keep remote control off (the default)",
        )


#: What the kit's decoders return instead of expanding a compressed body.
REFUSED_COMPRESSED: Final = b"security_lib: compressed body refused"


def _refuse_compressed(data: bytes) -> bytes:
    """Kombu decoder for every compression method: never expand (the gate refuses the message)."""
    del data
    return REFUSED_COMPRESSED


def refuse_compression() -> None:
    """Replace every decoder in kombu's compression registry with one that never expands.

    Kombu decompresses a message body carrying a ``compression`` header while
    it builds the message, before any Celery or kit code runs: a few hundred
    bytes of bzip2 can expand to gigabytes. The kit's producers never
    compress; the gate rejects any message with that header (``compressed``).
    """
    decoders = kombu_compression._decoders  # kombu has no public way to unregister
    for name in list(decoders):
        decoders[name] = _refuse_compressed


def refuse_compression_settings(conf: Any) -> None:
    """Refuse ``task_compression``/``result_compression``: workers refuse compressed messages."""
    for setting in ("task_compression", "result_compression"):
        if conf.get(setting):
            raise SerializerError(
                setting,
                f"{setting}={conf.get(setting)!r}: workers refuse compressed messages "
                "(kombu would expand them before any check: decompression bombs)",
                f"leave {setting} unset",
            )


def expanding_decompressors() -> list[str]:
    """Return the compression methods kombu would still expand."""
    decoders = kombu_compression._decoders
    return sorted(name for name, fun in decoders.items() if fun is not _refuse_compressed)


def _connection_problem(conn: Any, expected_ssl: Any) -> str | None:
    """Return what is wrong with one kombu connection, or None if it is the hardened one."""
    try:
        driver = conn.transport.driver_type
    except Exception as exc:  # noqa: BLE001 - an unknown transport is a refusal, not a crash
        return f"unusable transport ({exc})"
    if driver != "amqp":
        return f"transport {driver!r} (not AMQP over TLS)"
    actual = conn.ssl
    if not isinstance(actual, dict):
        return f"ssl={actual!r} (a URL query such as ?ssl=1 replaces broker_use_ssl)"
    changed = sorted(
        k
        for k in set(actual) | set(expected_ssl)
        if actual.get(k) != expected_ssl.get(k)
        and not (k == "server_hostname" and _names_the_dialled_node(conn, actual.get(k)))
    )
    if changed:
        return f"TLS options differ from what harden() set: {changed}"
    return None


def _names_the_dialled_node(conn: Any, name: Any) -> bool:
    """Whether ``name`` is a per-node certificate check: the host this connection dials.

    In a cluster each node's certificate carries its own name, and a
    connection that fails over checks the name of the node it reaches (None:
    kombu's pyamqp transport fills in the URL's host when it connects). Any
    other name is refused like any other changed TLS option.
    """
    host = getattr(conn, "hostname", None)
    return bool(host) and name in (None, host)


def check_broker_connection(conn: Any, expected_ssl: dict[str, Any]) -> None:
    """Refuse the consumer's live connection unless it is AMQP with exactly ``expected_ssl``."""
    problem = _connection_problem(conn, expected_ssl)
    if problem is not None:
        raise BrokerTLSError(
            "broker_url (worker connection)",
            f"the worker connected to {conn.as_uri()} with {problem}",
            "remove CELERY_BROKER_URL / -b overrides and URL query options",
        )


def check_broker_connections(app: Any, expected_ssl: dict[str, Any], **kwargs: Any) -> None:
    """Refuse unless every connection Celery will open is AMQP with exactly ``expected_ssl``.

    Builds (without connecting) the connections Celery itself builds, for
    reading and writing and for every failover URL, after every override
    source (``CELERY_BROKER_URL``, ``celery -b``, URL query options) has been
    applied. ``kwargs`` are passed to Celery's connection factories (``ssl=``
    before the settings are applied).
    """
    for setting, factory in (
        ("broker_read_url", app.connection_for_read),
        ("broker_write_url", app.connection_for_write),
    ):
        first = factory(**kwargs)
        urls = list(getattr(first, "alt", None) or [])
        connections = [factory(url, **kwargs) for url in urls] if urls else [first]
        for conn in connections:
            problem = _connection_problem(conn, expected_ssl)
            if problem is not None:
                shown = conn.as_uri() if hasattr(conn, "as_uri") else "?"
                raise BrokerTLSError(
                    f"broker_url ({setting})",
                    f"Celery would connect to {shown} with {problem}",
                    "use amqps://<broker>:5671/<vhost> without query options; set no "
                    "CELERY_BROKER_URL / -b override; let harden() set broker_use_ssl",
                )
