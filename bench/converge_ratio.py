#!/usr/bin/env python3
"""Time the first converge of the full stack and an idempotent re-run of site.yml.

Prints both wall times, their ratio (the goal of issue 15: the re-run takes at
most 25 % of the first converge) and where the time goes, per role and per
task, from the profile_roles/profile_tasks callbacks. A measurement, not a
test: it never fails on the ratio.

Run from the checkout's root, holding the scenario's lock on a shared machine:

    kit-lock default python3 bench/converge_ratio.py            # default scenario
    kit-lock pki python3 bench/converge_ratio.py --scenario pki  # any scenario

The lab is destroyed before and after (``--keep`` leaves it up).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Ansible's log file holds the callbacks' output unwrapped, after this prefix.
LOG_PREFIX = re.compile(r"^\S+ \S+ p=\d+ u=\S+ n=\S+(?: \w+)?\| ?")
PROFILE_LINE = re.compile(r"^(?P<name>.+?)\s-{3,}\s+(?P<secs>\d+\.\d+)s\s*$")


def molecule(scenario: str, command: str, log: pathlib.Path | None = None) -> float:
    env = dict(os.environ)
    if log is not None:
        env.update(
            ANSIBLE_LOG_PATH=str(log),
            ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks,ansible.posix.profile_roles",
            # Long enough to list every task and role, not only the top 20.
            PROFILE_TASKS_TASK_OUTPUT_LIMIT="all",
        )
    start = time.monotonic()
    proc = subprocess.run(["molecule", command, "-s", scenario], cwd=ROOT, env=env, check=False,
                          stdout=subprocess.DEVNULL if log is not None else None)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"molecule {command} -s {scenario} failed (rc={proc.returncode}); see {log or 'the output above'}")
    return elapsed


def profile(log: pathlib.Path) -> tuple[dict[str, float], dict[str, float]]:
    """Per-role and per-task seconds from the recaps of profile_roles and profile_tasks."""
    roles: dict[str, float] = {}
    tasks: dict[str, float] = {}
    section: dict[str, float] | None = None
    for raw in log.read_text(errors="replace").splitlines():
        line = LOG_PREFIX.sub("", raw)
        if "ROLES RECAP" in line:
            section = roles
        elif "TASKS RECAP" in line:
            section = tasks
        elif line.startswith("PLAY RECAP") or line.startswith("PLAY ["):
            section = None
        elif section is not None:
            match = PROFILE_LINE.match(line.strip())
            if match and match["name"].strip() != "total":
                name = match["name"].strip()
                section[name] = section.get(name, 0.0) + float(match["secs"])
    return roles, tasks


def top(table: dict[str, float], n: int) -> list[str]:
    return [f"  {secs:8.2f} s  {name}" for name, secs in sorted(table.items(), key=lambda kv: -kv[1])[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="default")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="converge-ratio-") as tmp:
        logs = [pathlib.Path(tmp, "first.log"), pathlib.Path(tmp, "again.log")]
        molecule(args.scenario, "destroy")
        molecule(args.scenario, "create")
        if (ROOT / "molecule" / args.scenario / "prepare.yml").exists():
            molecule(args.scenario, "prepare")
        first = molecule(args.scenario, "converge", logs[0])
        again = molecule(args.scenario, "converge", logs[1])
        if not args.keep:
            molecule(args.scenario, "destroy")

        print(f"scenario {args.scenario}: first converge {first:.0f} s, idempotent re-run {again:.0f} s, "
              f"ratio {100 * again / first:.0f} % (goal: at most 25 %)")
        for label, log in zip(("first converge", "idempotent re-run"), logs, strict=True):
            roles, tasks = profile(log)
            print(f"\n{label}: roles by time")
            print("\n".join(top(roles, args.top)) or "  (no profile_roles output)")
            print(f"{label}: top {args.top} tasks by time")
            print("\n".join(top(tasks, args.top)) or "  (no profile_tasks output)")


if __name__ == "__main__":
    main()
