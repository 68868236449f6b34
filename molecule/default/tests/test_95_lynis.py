"""Lynis on every managed host of the converged full stack: hardening index of 80 or more.

Runs last (file order): it must not disturb the other tests. Lynis is Debian's package,
fetched by the log server (the only managed host whose egress reaches the mirror after
the firewall play) and unpacked into each host's /tmp with dpkg-deb -x, not installed:
installing it would add files below the AIDE-protected /usr/sbin and /etc, and the
worker's egress filter keeps apt away from the mirror. Lynis writes its report to
/var/log, which AIDE excludes.
"""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from conftest import MANAGED, get_host

LYNIS_MIN = 80
WORKDIR = "/tmp/celery-kit-lynis"


@pytest.fixture(scope="module")
def lynis_deb(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    logserver = get_host("kit-logserver")
    fetch = logserver.run(
        f"rm -rf {WORKDIR}-dl && mkdir -p {WORKDIR}-dl && cd {WORKDIR}-dl && "
        "(apt-get download lynis || (apt-get update -qq && apt-get download lynis))"
    )
    assert fetch.rc == 0, f"the log server could not download lynis from Debian: {fetch.stderr}"
    name = logserver.check_output(f"ls {WORKDIR}-dl").split()[0]
    local = tmp_path_factory.mktemp("lynis") / name
    subprocess.run(["docker", "cp", f"kit-logserver:{WORKDIR}-dl/{name}", str(local)], check=True)
    logserver.run(f"rm -rf {WORKDIR}-dl")
    return local


@pytest.mark.parametrize("name", MANAGED)
def test_lynis_hardening_index(name: str, lynis_deb: pathlib.Path) -> None:
    host = get_host(name)
    subprocess.run(["docker", "cp", str(lynis_deb), f"{name}:/tmp/{lynis_deb.name}"], check=True)
    # Lynis finds ./include and ./default.prf when started from its own folder.
    unpack = host.run(
        f"rm -rf {WORKDIR} && dpkg-deb -x /tmp/{lynis_deb.name} {WORKDIR} && rm -f /tmp/{lynis_deb.name} && "
        f"cp -r {WORKDIR}/etc/lynis/default.prf {WORKDIR}/etc/lynis/plugins {WORKDIR}/usr/share/lynis/"
    )
    assert unpack.rc == 0, unpack.stderr
    run = host.run(f"cd {WORKDIR}/usr/share/lynis && sh {WORKDIR}/usr/sbin/lynis audit system --quick --no-colors")
    host.run(f"rm -rf {WORKDIR}")
    assert run.rc == 0, run.stdout[-2000:] + run.stderr
    report = host.file("/var/log/lynis-report.dat").content_string.splitlines()
    index = int(next(line.split("=", 1)[1] for line in report if line.startswith("hardening_index=")))
    remaining = [line for line in report if line.startswith(("suggestion[]=", "warning[]="))]
    print(f"\nLynis hardening index of {name}: {index}; {len(remaining)} suggestions and warnings left:")
    print("\n".join(remaining))
    assert index >= LYNIS_MIN, f"{name}: Lynis hardening index {index} < {LYNIS_MIN}"
    assert not host.package("lynis").is_installed, "Lynis must not stay installed below AIDE-protected paths"
