"""Filters of the rabbitmq role: the users the apps need, and which of them the broker lacks.

One ``rabbitmqctl export_definitions`` gives every user, password hash, tag
and permission the broker has. Comparing it here, on the controller, tells
which users need community.rabbitmq.rabbitmq_user at all: that module makes
five CLI calls per user (each one starts an Erlang VM) even when nothing is
to change. The comparison errs towards "update": anything it does not
recognise (another hashing algorithm, a malformed hash) sends the user to
the module, which then decides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

# rabbit_password_hashing_*: base64(salt[4] + H(salt[4] + utf8(password))).
_HASHES = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


def password_matches(password_hash: str, algorithm: str, password: str) -> bool:
    """Whether ``password`` is the one RabbitMQ stored as ``password_hash`` with ``algorithm``."""
    digest = _HASHES.get(algorithm)
    if digest is None or not password_hash:
        return False
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return False
    salt, stored = raw[:4], raw[4:]
    return len(salt) == 4 and hmac.compare_digest(stored, digest(salt + password.encode()).digest())


def rabbitmq_app_users(apps: Sequence[Mapping[str, Any]], uuid_regex: str) -> list[dict[str, Any]]:
    """The three users of every app with their tags and permissions (roles/rabbitmq/README.md).

    - producer: publishes to its app's exchanges only; with rpc:// results it
      also declares and reads its own reply queue (named by a UUID);
    - worker: consumes its app's queues; publishes results to the default
      exchange (rpc://) and events to celeryev only when the app uses them;
    - monitor: may open the vhost and passively declare queues (which returns
      their depth) but neither configure, publish nor consume.
    """
    users: list[dict[str, Any]] = []
    for app in apps:
        rpc = app.get("results", "none") == "rpc"
        events = bool(app.get("events", False))
        queues = "^(" + "|".join(_regex_escape(q) for q in app["queues"]) + ")$"
        reply = f"^{uuid_regex}$"
        write = (["amq\\.default"] if rpc else []) + (["celeryev"] if events else [])
        users.append(_user(app["producer_user"], [], app["vhost"], configure=reply if rpc else "^$", write=queues,
                           read=reply if rpc else "^$"))
        users.append(_user(app["worker_user"], [], app["vhost"], configure="^celeryev$" if events else "^$",
                           write="^(" + "|".join(write) + ")$" if write else "^$", read=queues))
        users.append(_user(app["monitor_user"], ["monitoring"], app["vhost"], configure="^$", write="^$", read="^$"))
    return users


def rabbitmq_users_to_update(export: Mapping[str, Any], wanted: Sequence[Mapping[str, Any]],
                             passwords: Mapping[str, str]) -> list[str]:
    """Names of the wanted users whose password, tags or permissions the broker's export does not match.

    ``export`` is the parsed ``rabbitmqctl export_definitions`` output; every
    wanted entry has ``user``, ``tags`` and ``permissions`` (a list of
    ``vhost``/``configure_priv``/``write_priv``/``read_priv``), as the
    rabbitmq_user module takes them; the user must hold exactly these
    permissions and no topic permission (the module removes the others).
    """
    users = {u.get("name"): u for u in export.get("users") or []}
    permissions: dict[str, set[tuple[str, str, str, str]]] = {}
    for p in export.get("permissions") or []:
        permissions.setdefault(p.get("user"), set()).add((p.get("vhost"), p.get("configure"), p.get("write"),
                                                          p.get("read")))
    topic_users = {p.get("user") for p in export.get("topic_permissions") or []}
    out = []
    for entry in wanted:
        name = entry["user"]
        have = users.get(name)
        want_perms = {(p["vhost"], p["configure_priv"], p["write_priv"], p["read_priv"])
                      for p in entry["permissions"]}
        if (have is None
                or sorted(_tags(have.get("tags"))) != sorted(entry["tags"])
                or permissions.get(name, set()) != want_perms
                or name in topic_users
                or not password_matches(str(have.get("password_hash") or ""), str(have.get("hashing_algorithm")),
                                        str(passwords.get(name, "")))):
            out.append(name)
    return out


def _user(name: str, tags: list[str], vhost: str, *, configure: str, write: str, read: str) -> dict[str, Any]:
    return {"user": name, "tags": tags,
            "permissions": [{"vhost": vhost, "configure_priv": configure, "write_priv": write, "read_priv": read}]}


def _tags(value: Any) -> list[str]:
    # 3.10 exports a list; older releases a comma-separated string.
    if isinstance(value, str):
        return [t for t in value.split(",") if t]
    return [str(t) for t in value or []]


def _regex_escape(text: str) -> str:
    # As Ansible's regex_escape (Python's re.escape), so the regexes are the ones the README shows.
    import re

    return re.escape(text)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "rabbitmq_app_users": rabbitmq_app_users,
            "rabbitmq_users_to_update": rabbitmq_users_to_update,
        }
