"""Lab-only broker probe: what the broker lets a peer do, as one JSON line.

Runs with the app venv's python (py-amqp) on a lab host. Passwords come on
stdin, never in argv.

    probe.py tcp HOST PORT                       plain TCP connect
    probe.py tls HOST PORT [--cert C --key K] [--max-version V]
                                                 TLS handshake, then an AMQP header, read the answer
    probe.py amqp HOST PORT VHOST USER OP [ARG] --ca CA --cert C --key K   (password on stdin)
        OP: login | consume QUEUE | declare QUEUE | passive QUEUE | delete QUEUE | publish EXCHANGE
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
from typing import Any

CA = "/etc/ssl/certs/celery-kit-ca.pem"


def _print(**fields: Any) -> int:
    print(json.dumps(fields))
    return 0


def tcp(host: str, port: int) -> int:
    try:
        with socket.create_connection((host, port), timeout=5):
            return _print(connected=True, error=None)
    except OSError as exc:
        return _print(connected=False, error=f"{type(exc).__name__}: {exc}")


def tls(host: str, port: int, cert: str | None, key: str | None, max_version: str | None) -> int:
    ctx = ssl.create_default_context(cafile=CA)
    if max_version:
        # Let the client offer old versions at all (Debian's OpenSSL refuses them by default),
        # so that any refusal is the broker's.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = getattr(ssl.TLSVersion, max_version)
    if cert:
        ctx.load_cert_chain(cert, key)
    stage = "connect"
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            stage = "handshake"
            with ctx.wrap_socket(raw, server_hostname=host) as conn:
                version = conn.version()
                # Under TLS 1.3 a missing/foreign client certificate is refused
                # after the handshake, with an alert: send data and read.
                stage = "amqp"
                conn.sendall(b"AMQP\x00\x00\x09\x01")
                data = conn.recv(7)
                accepted = len(data) > 0
                return _print(
                    accepted=accepted, version=version, stage=stage,
                    error=None if accepted else "connection closed without an answer",
                )
    except (OSError, ssl.SSLError) as exc:
        return _print(accepted=False, version=None, stage=stage, error=f"{type(exc).__name__}: {exc}")


def amqp_op(ns: argparse.Namespace, password: str) -> int:
    import amqp

    # The same TLS options Celery passes (broker_use_ssl).
    tls_options = {
        "ca_certs": ns.ca, "certfile": ns.cert, "keyfile": ns.key,
        "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": ns.host,
    }
    conn = amqp.Connection(
        host=f"{ns.host}:{ns.port}", userid=ns.user, password=password,
        virtual_host=ns.vhost, ssl=tls_options, connect_timeout=5,
        # Publisher confirms: a refused publish raises instead of passing silently.
        confirm_publish=True,
    )
    stage = "login"
    try:
        conn.connect()
        ch = conn.channel()
        stage = ns.op
        if ns.op == "consume":
            ch.basic_consume(ns.arg, callback=lambda m: None)
        elif ns.op == "declare":
            ch.queue_declare(ns.arg, durable=True, auto_delete=False)
        elif ns.op == "passive":
            ch.queue_declare(ns.arg, passive=True)
        elif ns.op == "delete":
            ch.queue_delete(ns.arg)
        elif ns.op == "publish":
            # An unroutable routing key: even an allowed publish delivers nothing.
            ch.basic_publish(amqp.Message(b"probe"), exchange=ns.arg, routing_key="probe.nowhere")
        return _print(allowed=True, stage=stage, error=None)
    except Exception as exc:  # noqa: BLE001 - every refusal is the answer
        return _print(allowed=False, stage=stage, error=f"{type(exc).__name__}: {exc}")
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001,S110 - already closed by the broker
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("tcp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p = sub.add_parser("tls")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--max-version", choices=["TLSv1", "TLSv1_1", "TLSv1_2", "TLSv1_3"])
    p = sub.add_parser("amqp")
    for name in ("host", "port", "vhost", "user", "op"):
        p.add_argument(name, type=int if name == "port" else str)
    p.add_argument("arg", nargs="?", default="")
    p.add_argument("--ca", default=CA)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    ns = parser.parse_args()
    if ns.kind == "tcp":
        return tcp(ns.host, ns.port)
    if ns.kind == "tls":
        return tls(ns.host, ns.port, ns.cert, ns.key, ns.max_version)
    return amqp_op(ns, sys.stdin.read().strip())


if __name__ == "__main__":
    sys.exit(main())
