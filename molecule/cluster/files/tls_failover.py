"""Fail over from an unreachable first node to a second one, over the app's hardened TLS settings.

Run on the client as the app user with the app's venv (see cluster_send.py).
``kit``: the app's own connection class (celery_kit_config); ``stock``: plain
kombu.Connection with the same broker_use_ssl (one fixed server_hostname: the
first node's). The first URL is the first node on a closed port, so every
connection must fail over to the second node. Prints JSON: the host reached
and the name checked, or the error.
"""

from __future__ import annotations

import json
import sys

import celery_kit_config
from celery import Celery
from kombu import Connection


def main() -> int:
    mode = sys.argv[1]
    app = Celery("tls-failover")
    celery_kit_config.harden_app(app)
    urls = app.conf.broker_url.split(";")
    first_host = celery_kit_config.BROKER_HOSTS[0]
    port = celery_kit_config.BROKER_PORT
    dead = urls[0].replace(f"@{first_host}:{port}/", f"@{first_host}:1/")
    second = urls[1]
    if mode == "stock":
        app.amqp.Connection = Connection
    conn = app.connection_for_write(url=f"{dead};{second}", connect_timeout=3)
    try:
        # Two attempts: the dead first URL, then the second node (a third would
        # cycle back to the dead one and hide the second node's error).
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.5, interval_max=1)
    except Exception as exc:  # noqa: BLE001 - the error is the result
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    checked = conn.ssl.get("server_hostname") if isinstance(conn.ssl, dict) else None
    print(json.dumps({"reached": conn.hostname, "checked": checked}))
    conn.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
