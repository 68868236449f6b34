"""A real RabbitMQ in a Docker container, on loopback only, for reconnect tests.

The image ``celery-kit/test-rabbitmq:bookworm`` is the lab image with Debian's
rabbitmq-server installed; it is built (a few seconds with a warm apt cache)
when absent. The broker listens on plain AMQP, published on 127.0.0.1 only:
the tests are about what the worker does when the broker goes away, not TLS.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

IMAGE = "celery-kit/test-rabbitmq:bookworm"
BASE_IMAGE = os.environ.get("KIT_LAB_IMAGE", "celery-kit/debian:bookworm")


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI (fixed arguments built here, never from input)."""
    docker = shutil.which("docker") or "docker"
    return subprocess.run(  # noqa: S603 - arguments are built by this module
        [docker, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def docker_available() -> str | None:
    """Return None if a Docker engine answers, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    probe = _run(["info", "--format", "{{.ServerVersion}}"], timeout=30)
    if probe.returncode != 0:
        return f"no Docker engine: {probe.stderr.strip()[:200]}"
    return None


def _docker(*args: str, timeout: float = 300) -> str:
    done = _run(list(args), timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def ensure_image() -> None:
    """Build the broker image from the lab image when it is absent."""
    probe = _run(["image", "inspect", IMAGE])
    if probe.returncode == 0:
        return
    builder = f"seclib-rmq-build-{os.getpid()}"
    _docker("run", "-d", "--name", builder, BASE_IMAGE, "sleep", "infinity")
    try:
        _docker(
            "exec",
            "-e",
            "DEBIAN_FRONTEND=noninteractive",
            builder,
            "sh",
            "-c",
            "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
            "rabbitmq-server >/dev/null",
            timeout=900,
        )
        _docker("commit", "-c", 'CMD ["/usr/sbin/rabbitmq-server"]', builder, IMAGE)
    finally:
        _run(["rm", "-f", builder])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RabbitMQ:
    """One broker container; ``restart()`` restarts the whole node."""

    name: str
    port: int
    user: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{self.port}//"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = _run(
                ["exec", self.name, "rabbitmq-diagnostics", "-q", "check_port_connectivity"]
            )
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"RabbitMQ in {self.name} did not become ready")

    def restart(self) -> None:
        """Stop the broker node gracefully (every connection drops) and start it again.

        ``rabbitmqctl stop`` is what ``systemctl restart`` does: queues are
        flushed to disk first. (A SIGTERM to the container loses persistent
        messages that were still in memory: a crash, not a restart.)
        """
        _docker("exec", self.name, "rabbitmqctl", "-q", "stop", timeout=120)
        _docker("wait", self.name, timeout=120)
        _docker("start", self.name)
        self.wait_ready()

    def remove(self) -> None:
        _run(["rm", "-f", self.name])


def start() -> RabbitMQ:
    """Start a broker on 127.0.0.1:<free port> with its own user (guest is loopback-only)."""
    ensure_image()
    broker = RabbitMQ(
        name=f"seclib-test-rabbitmq-{os.getpid()}",
        port=_free_port(),
        user="kit",
        password=secrets.token_hex(12),
    )
    broker.remove()
    _docker(
        "run", "-d", "--init", "--name", broker.name, "--hostname", "rmq",
        "-e", "RABBITMQ_NODENAME=rabbit@localhost",
        "-p", f"127.0.0.1:{broker.port}:5672",
        IMAGE,
    )  # fmt: skip
    try:
        broker.wait_ready()
        _docker("exec", broker.name, "rabbitmqctl", "-q", "add_user", broker.user, broker.password)
        _docker(
            "exec", broker.name, "rabbitmqctl", "-q", "set_permissions", "-p", "/",
            broker.user, ".*", ".*", ".*",
        )  # fmt: skip
    except BaseException:
        broker.remove()
        raise
    return broker
