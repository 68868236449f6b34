"""Lab-only attack tool: publish forged, re-targeted and replayed task messages.

Runs on a lab app host as the app user with the app's venv and the host's
config module (PYTHONPATH=/etc/celery-kit/<app>), i.e. with the producer's broker
credentials but, for the forgeries, without a trusted signing key. Every
command prints one JSON line: the task id(s) it published, so the tests can
find the worker's rejection line for exactly that message.

    attack.py unsigned MARKER          JSON (unsigned) message for demo.tasks.dangerous
    attack.py foreign MARKER           signed by a fresh key/cert outside the signer store
    attack.py retarget MARKER          signed demo.tasks.add message, 'task' header changed to dangerous
    attack.py replay MARKER            one signed dangerous message published twice
    attack.py build TASK ARG...        build and sign a message with this host's identity, print it
    attack.py publish-file FILE        publish a message printed by 'build' (e.g. signed elsewhere)
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from kombu import Producer
from kombu.serialization import dumps

DANGEROUS = "demo.tasks.dangerous"
ADD = "demo.tasks.add"


class _Capture:
    """Stands in for a kombu Producer: keeps what Celery would publish."""

    body: Any
    options: dict[str, Any]

    def publish(self, body: Any, **options: Any) -> None:
        self.body, self.options = body, options


def _app() -> Any:
    from demo.app import app  # hardens the app with this host's identity

    return app


def build(app: Any, task: str, args: list[Any]) -> dict[str, Any]:
    """Build a message exactly as the hardened app would send it (sealed and signed)."""
    task_id = str(uuid.uuid4())
    route = app.amqp.router.route({}, task, args, {})
    message = app.amqp.create_task_message(task_id, task, args, {})
    capture = _Capture()
    # The kit's sealer wraps send_task_message: the envelope is added here.
    app.amqp.send_task_message(capture, task, message, retry=False, **route)
    opts = capture.options
    content_type, encoding, payload = dumps(capture.body, serializer=opts["serializer"])
    raw = payload if isinstance(payload, bytes) else payload.encode(encoding or "utf-8")
    return {
        "id": task_id,
        "exchange": opts["exchange"],
        "routing_key": opts["routing_key"],
        "headers": opts["headers"],
        "properties": {k: opts[k] for k in ("correlation_id", "reply_to") if opts.get(k)},
        "content_type": content_type,
        "content_encoding": encoding,
        "body_b64": base64.b64encode(raw).decode(),
    }


def unsigned(app: Any, task: str, args: list[Any]) -> dict[str, Any]:
    """A protocol 2 message in plain JSON, as a stock Celery producer would send it."""
    task_id = str(uuid.uuid4())
    headers, properties, body, _ = app.amqp.create_task_message(task_id, task, args, {})
    return {
        "id": task_id,
        "exchange": "celery",
        "routing_key": "celery",
        "headers": headers,
        "properties": {"correlation_id": task_id},
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "body_b64": base64.b64encode(json.dumps(list(body)).encode()).decode(),
    }


def publish(app: Any, message: dict[str, Any]) -> None:
    """Publish the exact bytes of ``message`` with this host's broker credentials."""
    headers = json.loads(json.dumps(message["headers"], default=str))
    with app.connection_for_write() as conn:
        producer = Producer(conn.default_channel, auto_declare=False)
        producer.publish(
            base64.b64decode(message["body_b64"]),
            exchange=message["exchange"],
            routing_key=message["routing_key"],
            headers=headers,
            content_type=message["content_type"],
            content_encoding=message["content_encoding"],
            delivery_mode=2,
            retry=False,
            declare=[],
            **message["properties"],
        )


def _foreign_identity(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A key and self-signed certificate the workers do not trust (same CN as a real signer)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "foreign.key", directory / "store" / "foreign.pem"
    cert_path.parent.mkdir(mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def foreign(task: str, args: list[Any]) -> dict[str, Any]:
    """Sign with an untrusted key that claims the producer's CN, through a kit-hardened app."""
    import celery_kit_config
    from celery import Celery

    with tempfile.TemporaryDirectory() as tmp:
        key, cert = _foreign_identity(Path(tmp), "signer-demo-producer")
        # The config module reads these at call time: same broker, other signer.
        celery_kit_config.SIGNING_KEY = str(key)
        celery_kit_config.SIGNING_CERT = str(cert)
        celery_kit_config.SIGNER_STORE = str(cert.parent)
        celery_kit_config.ALLOWED_TASKS = {"signer-demo-producer": ["demo.tasks.*"]}
        app = Celery("demo-forger")
        celery_kit_config.harden_app(app)
        message = build(app, task, args)
        publish(app, message)
    return message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["unsigned", "foreign", "retarget", "replay", "build", "publish-file"])
    parser.add_argument("rest", nargs="+")
    ns = parser.parse_args(argv)
    cmd, rest = ns.command, ns.rest
    ids: list[str]
    if cmd == "foreign":
        ids = [foreign(DANGEROUS, [rest[0]])["id"]]
    elif cmd == "build":
        print(json.dumps(build(_app(), rest[0], [json.loads(a) for a in rest[1:]]), default=str))
        return 0
    else:
        app = _app()
        if cmd == "unsigned":
            message = unsigned(app, DANGEROUS, [rest[0]])
            publish(app, message)
        elif cmd == "retarget":
            # Legitimately signed for the harmless task, then pointed elsewhere.
            message = build(app, ADD, [rest[0], ""])
            message["headers"]["task"] = DANGEROUS
            publish(app, message)
        elif cmd == "replay":
            message = build(app, DANGEROUS, [rest[0]])
            publish(app, message)
            publish(app, message)
        else:  # publish-file
            message = json.loads(Path(rest[0]).read_text())
            publish(app, message)
        ids = [message["id"]]
    print(json.dumps({"command": cmd, "ids": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
