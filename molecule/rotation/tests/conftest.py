"""Puts molecule/shared on sys.path (kit_testlib), holds the load helpers every rotation test uses
and prints the rotation figures at the end of the run."""

from __future__ import annotations

import pathlib
import re
import sys
import uuid
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))

from kit_testlib import PROJECT, lab, quote, wait_for  # noqa: E402 - needs the path above

BROKER = "rot-broker"
PORT = 5671
CA_BUNDLE = "/etc/ssl/certs/celery-kit-ca.pem"

#: One line per rotation: tasks sent / run / rejected and the time it took (for the lead's note).
FIGURES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures even when pytest captures the tests' output (molecule verify)."""
    if FIGURES:
        terminalreporter.section("rotation figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


APP = "demo"
SERVICE = f"celery-worker@{APP}.service"
STORE = f"/etc/celery-kit/{APP}/signers"
SIGNING = f"/etc/celery-kit/{APP}/signing"
HOME = f"/var/lib/celery-kit/{APP}"
VENV_PY = f"/opt/celery-kit/{APP}/venv/bin/python"
LOAD = "/usr/local/lib/rotation_load.py"
EXPIRY_CHECK = "/usr/local/sbin/celery-kit-cert-expiry"
MANIFEST = "/etc/ssl/celery-kit-certificates.list"
ROTATE = PROJECT / "playbooks" / "rotate.yml"
REJECTED = "security_lib rejected message:"
CLIENT, WORKER = "rot-client", "rot-worker"
BATCH = 5


def as_app_user(pythonpath: str, *argv: str) -> str:
    return " ".join(
        ["runuser", "-u", f"celery-{APP}", "--", "env", f"PYTHONPATH={pythonpath}",
         "PYTHONDONTWRITEBYTECODE=1", VENV_PY, *map(quote, argv)])


def serial(host: str, path: str) -> str:
    return lab(host).check_output(f"openssl x509 -noout -serial -in {quote(path)}").split("=", 1)[1]


def store_serials(host: str = WORKER) -> list[str]:
    """The serials of the producer's certificates in a host's signer store (workers and producers hold one)."""
    names = lab(host).check_output(f"ls {STORE}").split()
    return sorted(serial(host, f"{STORE}/{n}") for n in names if n.startswith(CLIENT))


def stores() -> dict[str, list[str]]:
    return {host: store_serials(host) for host in (WORKER, CLIENT)}


def main_pid() -> str:
    return lab(WORKER).check_output(f"systemctl show -p MainPID --value {SERVICE}")


def worker_log(since: str = "") -> str:
    when = f" --since @{since}" if since else ""
    return lab(WORKER).check_output(f"journalctl -u {SERVICE} --no-pager -o cat{when}")


@dataclass
class Load:
    """Batches of signed tasks from new producer processes on the client, until stopped."""

    prefix: str
    since: str = ""

    def __post_init__(self) -> None:
        # Unique per run: the worker's journal keeps earlier runs' ids.
        self.prefix = f"{self.prefix}-{uuid.uuid4().hex[:6]}"

    def start(self) -> Load:
        self.since = lab(WORKER).check_output("date +%s")
        p = quote(f"/tmp/{self.prefix}")  # noqa: S108 - a lab container's own /tmp
        loop = (f"i=0; while [ ! -e {p}.stop ]; do "
                f"{as_app_user(f'/etc/celery-kit/{APP}', LOAD, self.prefix, '$i', str(BATCH))} "
                f">> {p}.out 2>> {p}.err; i=$((i+1)); done; touch {p}.done")
        loop = loop.replace(quote("$i"), "$i")
        lab(CLIENT).check_output(f"rm -f {p}.*; nohup bash -c {quote(loop)} >/dev/null 2>&1 &")
        return self

    def answered(self) -> list[str]:
        return lab(CLIENT).run(f"cat /tmp/{self.prefix}.out").stdout.splitlines()

    def wait_batches(self, more: int, timeout: float = 180) -> None:
        target = len(self.answered()) + more * BATCH
        assert wait_for(lambda: len(self.answered()) >= target, timeout), self.report()

    def stop(self) -> tuple[int, int, int]:
        """Stop, then return (sent, run exactly once on the worker, rejected)."""
        lab(CLIENT).check_output(f"touch /tmp/{self.prefix}.stop")
        assert wait_for(lambda: lab(CLIENT).file(f"/tmp/{self.prefix}.done").exists, 240), self.report()
        lines = self.answered()
        sent = [line.split()[1] for line in lines]
        failed = [line for line in lines if not line.startswith("ok ")]
        log = worker_log(self.since)
        runs = re.findall(rf"Task demo\.tasks\.add\[({re.escape(self.prefix)}-[0-9-]+)\] succeeded", log)
        rejected = [line for line in log.splitlines() if REJECTED in line and f"id={self.prefix}-" in line]
        assert not failed, f"{failed[:5]}\n{self.report()}"
        assert not rejected, rejected[:5]
        assert sorted(runs) == sorted(sent), "every task runs exactly once"
        return len(sent), len(set(runs)), len(rejected)

    def report(self) -> str:
        return lab(CLIENT).run(f"tail -n 5 /tmp/{self.prefix}.out /tmp/{self.prefix}.err").stdout


def served(x509_args: str = "") -> str:
    """The certificate a NEW connection from the client gets (openssl s_client from outside), through openssl x509."""
    return lab(CLIENT).check_output(
        f"timeout 15 openssl s_client -connect {BROKER}:{PORT} -servername {BROKER} -CAfile {CA_BUNDLE} </dev/null "
        f"2>/dev/null | openssl x509 {x509_args}")


# A fresh AMQP connection with a given client pair: the TLS handshake (the broker checks the client
# certificate; under TLS 1.3 a refusal arrives as an alert at the first read) and the broker's
# Connection.Start answer to the protocol header. Root reads the app's key.
_AMQP_START = """
import socket, ssl, sys
host, port, ca, cert, key = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname=host) as tls:
    tls.sendall(b"AMQP\\x00\\x00\\x09\\x01")
    frame = tls.recv(7)
    print("accepted" if frame[:1] == b"\\x01" else f"refused {frame!r}")
"""


def fresh_connection(host: str, cert: str, key: str) -> str:
    """'accepted' when the broker takes a new connection made with this pair, else what happened."""
    out = lab(host).run(f"python3 -c {quote(_AMQP_START)} {BROKER} {PORT} {CA_BUNDLE} {cert} {key}")
    return out.stdout.strip() or out.stderr.strip()[-500:]
