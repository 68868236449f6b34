"""Lynis on every managed host of the converged full stack: a hardening index of 80 or more.

Runs last (file order), after every service test, so its scan disturbs none of them. Lynis is
Debian's package, installed by prepare.yml before converge (the workers' egress filter keeps
apt away from the mirror afterwards); the baseline role neither needs nor reads it. It writes
only below /var/log, which AIDE does not protect. The four scans run in parallel.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass

import pytest

from conftest import MANAGED, get_host

LYNIS_MIN = 80


@dataclass(frozen=True)
class Scan:
    rc: int
    output: str
    index: int | None
    remaining: list[str]


def scan(name: str) -> Scan:
    host = get_host(name)
    run = host.run("lynis audit system --quick --no-colors")
    report = host.run("cat /var/log/lynis-report.dat").stdout.splitlines()
    index = next((int(line.split("=", 1)[1]) for line in report if line.startswith("hardening_index=")), None)
    remaining = [line for line in report if line.startswith(("suggestion[]=", "warning[]="))]
    return Scan(run.rc, run.stdout[-2000:] + run.stderr, index, remaining)


@pytest.fixture(scope="module")
def scans() -> dict[str, Scan]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(MANAGED)) as pool:
        return dict(zip(MANAGED, pool.map(scan, MANAGED), strict=True))


@pytest.mark.parametrize("name", MANAGED)
def test_lynis_hardening_index(name: str, scans: dict[str, Scan], capsys: pytest.CaptureFixture[str]) -> None:
    result = scans[name]
    assert result.rc == 0 and result.index is not None, f"{name}: Lynis did not finish: {result.output}"
    # Printed also when the test passes: the run's log is where the index is read.
    with capsys.disabled():
        print(f"\nLynis hardening index of {name}: {result.index}; {len(result.remaining)} suggestions and warnings left:")
        print("\n".join(result.remaining))
    assert result.index >= LYNIS_MIN, f"{name}: Lynis hardening index {result.index} < {LYNIS_MIN}"
