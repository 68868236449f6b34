"""Helpers shared by the firewall scenario's tests: lab hosts, probes."""

from __future__ import annotations

import json
import pathlib
import sys
import uuid

import pytest

# The kit's shared test helpers (molecule/shared/kit_testlib.py).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "shared"))
from kit_testlib import address, lab, wait_for  # noqa: E402  (re-exported for the tests)

TABLE = "inet celery_kit_fw"
CHECK = "/usr/local/sbin/celery-kit-fw-check"
STATUS = "/usr/local/sbin/celery-kit-fw-status"
EXIT_OK, EXIT_CHANGED, EXIT_MISSING = 0, 3, 4

# A connection that the firewall drops times out; 3 s is plenty on a
# bridge where an accepted connection answers in milliseconds.
_TCP_PROBE = (
    "python3 -c 'import socket,sys; "
    "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); "
    "print(s.recv(32).decode().strip())' {addr} {port}"
)
_UDP_PROBE = (
    "python3 -c 'import socket,sys; "
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
    's.sendto(b"probe", (sys.argv[1], int(sys.argv[2]))); '
    "print(s.recvfrom(64)[0].decode())' {addr} {port}"
)


def tcp_reachable(src: str, dst: str, port: int) -> bool:
    res = lab(src).run(_TCP_PROBE.format(addr=address(dst), port=port))
    return res.rc == 0 and res.stdout.strip() == f"ok {port}"


def udp_reachable(src: str, dst: str, port: int) -> bool:
    res = lab(src).run(_UDP_PROBE.format(addr=address(dst), port=port))
    return res.rc == 0 and res.stdout.strip() == "probe"


def counter(host: str, name: str) -> int:
    out = lab(host).check_output(f"nft -j list counter {TABLE} {name}")
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise AssertionError(f"counter {name} not found on {host}: {out}")


def journal_since(host: str, marker: str) -> str:
    """The firewall's syslog lines after the marker line (see mark_journal)."""
    out = lab(host).run("journalctl -q --no-pager -t celery-kit-fw -o cat").stdout
    _, found, after = out.partition(marker)
    return after if found else ""


def mark_journal(host: str) -> str:
    """Write a unique marker line under the firewall's tag; later lines are new."""
    marker = f"test-marker {uuid.uuid4()}"
    lab(host).check_output(f"logger -t celery-kit-fw -p auth.info '{marker}'")
    assert wait_for(
        lambda: marker in lab(host).run("journalctl -q --no-pager -t celery-kit-fw -o cat").stdout,
        20,
    )
    return marker


def restore(host: str) -> None:
    """Reload the kit's table from its file and confirm the check is clean."""
    h = lab(host)
    h.check_output("systemctl restart celery-kit-fw.service")
    h.check_output("systemctl reset-failed celery-kit-fw-check.service || true")
    assert h.run(CHECK + " --no-syslog").rc == EXIT_OK


@pytest.fixture
def restored():
    """Names of hosts a test tampers with; their table is restored afterwards."""
    hosts: list[str] = []
    yield hosts
    for name in hosts:
        restore(name)
