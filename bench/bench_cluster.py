#!/usr/bin/env python3
"""End-to-end signed Celery throughput (tasks/s) through a three-node RabbitMQ cluster vs a single node.

Not a test: a measurement. It reuses bench/bench_e2e.py (its container
setup, its worker and producer, its kit mode with an Ed25519 signer over
mutual TLS) on three throwaway containers ``clu-bench1..3`` on their own
Docker network ``clu-bench`` (never one of the lab's hosts), joined into one
cluster, and runs, in alternating rounds (each mode keeps its best):

* ``single``   the kit's single-node settings: one node (``clu-bench1`` only
               in the URL), a classic queue on it, no publisher confirms,
               early acknowledgement, prefetch multiplier 4
* ``quorum``   every node in the URL, a quorum queue (three members), the
               single-node delivery settings: what replication alone costs
* ``cluster``  every node in the URL, a quorum queue, and what celery_app
               sets in a cluster for an app with ``acks_late: true``:
               ``confirm_publish``, ``task_acks_late``,
               ``task_reject_on_worker_lost``, prefetch multiplier 1

The worker and the producer run on ``clu-bench1`` (the queue leader, as the
queue is declared there), so ``single`` has no network hop and the cluster
modes pay the replication to the two other nodes. The bench's nodes share one
server certificate (name ``localhost``) and speak the Erlang distribution in
plain TCP: they measure the message path, not the kit's hardening of the
cluster (molecule/cluster tests that).

    bench/bench_cluster.py [--tasks 1000] [--rounds 3] [--concurrency 2] [--keep]

The wheelhouse is bench_e2e's (``$CELERY_KIT_WHEELHOUSE`` or the lab's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import DEFAULT_EC, IMAGE, INNER, SETUP, WHEELHOUSE, run_mode, sh  # noqa: E402 - needs the path above

NETWORK = "clu-bench"
NODES = ("clu-bench1", "clu-bench2", "clu-bench3")
KIT_MODE = f"tls+kit-{DEFAULT_EC}"
MODES: dict[str, dict[str, str]] = {
    "single": {"BENCH_BROKERS": NODES[0], "BENCH_QUEUE": "bench-classic"},
    "quorum": {"BENCH_BROKERS": ",".join(NODES), "BENCH_QUEUE": "bench-quorum", "BENCH_QUEUE_TYPE": "quorum"},
    "cluster": {
        "BENCH_BROKERS": ",".join(NODES),
        "BENCH_QUEUE": "bench-quorum",
        "BENCH_QUEUE_TYPE": "quorum",
        "BENCH_DELIVERY": "cluster",
    },
}
COOKIE = "/var/lib/rabbitmq/.erlang.cookie"


def setup(node: str) -> subprocess.Popen[str]:
    """bench_e2e's container setup on one node, listening on its network address."""
    return subprocess.Popen(
        ["docker", "exec", "-i", "-e", "BENCH_LISTEN=0.0.0.0", node, "sh"],
        stdin=subprocess.PIPE,
        text=True,
    )


def run_setups(nodes: tuple[str, ...]) -> None:
    procs = [(node, setup(node)) for node in nodes]
    for _, proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(SETUP)
        proc.stdin.close()
    failed = [node for node, proc in procs if proc.wait() != 0]
    if failed:
        sys.exit(f"the setup failed on {failed}")


def form_cluster() -> None:
    """Give the other nodes the first node's cookie and CA, restart them, join them to it."""
    with tempfile.TemporaryDirectory() as tmp:
        sh("docker", "cp", f"{NODES[0]}:/bench/pki", f"{tmp}/pki")
        sh("docker", "cp", f"{NODES[0]}:{COOKIE}", f"{tmp}/cookie")
        for node in NODES[1:]:
            sh("docker", "exec", node, "rabbitmqctl", "-q", "stop", capture_output=True)
            sh("docker", "exec", node, "rm", "-rf", "/bench/pki")
            sh("docker", "cp", f"{tmp}/pki", f"{node}:/bench/pki")
            sh("docker", "cp", f"{tmp}/cookie", f"{node}:{COOKIE}")
            sh("docker", "exec", node, "sh", "-c",
               f"chown rabbitmq:rabbitmq {COOKIE} /bench/pki/server.key && chmod 0400 {COOKIE}")
    # bench_e2e's setup again: it starts the node, now with the shared cookie and CA.
    run_setups(NODES[1:])
    for node in NODES[1:]:
        for step in (["stop_app"], ["join_cluster", f"rabbit@{NODES[0]}"], ["start_app"]):
            sh("docker", "exec", node, "rabbitmqctl", "-q", *step, capture_output=True)
    status = json.loads(sh("docker", "exec", NODES[0], "rabbitmqctl", "-q", "cluster_status", "--formatter", "json",
                           capture_output=True).stdout)
    running = sorted(status["running_nodes"])
    if running != sorted(f"rabbit@{n}" for n in NODES):
        sys.exit(f"the bench cluster did not form: running {running}")


def start_containers() -> None:
    """The bench's network and its three containers (created, or started again with --keep)."""
    if not sh("docker", "network", "ls", "-q", "-f", f"name=^{NETWORK}$", capture_output=True).stdout.strip():
        sh("docker", "network", "create", "--label", "celery-kit=bench", NETWORK, capture_output=True)
    for node in NODES:
        if not sh("docker", "ps", "-a", "-q", "-f", f"name=^{node}$", capture_output=True).stdout.strip():
            sh("docker", "run", "-d", "--name", node, "--hostname", node, "--network", NETWORK,
               "--label", "celery-kit=bench", "--tmpfs", "/tmp", IMAGE, "sleep", "infinity", capture_output=True)
        else:
            sh("docker", "start", node, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per mode and round (default 1000)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2, as in the lab)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each mode keeps its best (default 3)")
    parser.add_argument("--keep", action="store_true", help="leave the clu-bench containers and network in place")
    ns = parser.parse_args()
    if not any(WHEELHOUSE.glob("celery_kit_security_lib-*.whl")):
        sys.exit(f"no wheelhouse in {WHEELHOUSE}: run ansible-playbook playbooks/wheelhouse.yml first")

    started = time.monotonic()
    try:
        start_containers()
        sh("docker", "exec", NODES[0], "mkdir", "-p", "/bench/wheelhouse")
        sh("docker", "cp", f"{WHEELHOUSE}/.", f"{NODES[0]}:/bench/wheelhouse/")
        print("setting up three nodes (RabbitMQ, certificates, the venv on the first)...", file=sys.stderr)
        run_setups(NODES)
        form_cluster()
        sh("docker", "exec", "-i", NODES[0], "sh", "-c", "cat > /bench/benchapp.py", input=INNER)
        cpus = sh("docker", "exec", NODES[0], "nproc", capture_output=True).stdout.strip()
        setup_seconds = time.monotonic() - started
        best: dict[str, dict] = {}
        for round_no in range(1, ns.rounds + 1):
            for mode, env in MODES.items():
                print(f"round {round_no}/{ns.rounds}: {mode} ({ns.tasks} tasks)...", file=sys.stderr)
                row = run_mode(KIT_MODE, ns.tasks, ns.concurrency, container=NODES[0], env=env)
                if row is None:
                    return 1
                if mode not in best or row["tasks_per_s"] > best[mode]["tasks_per_s"]:
                    best[mode] = row
        members = json.loads(sh("docker", "exec", NODES[0], "rabbitmqctl", "-q", "list_queues", "name", "type",
                                "members", "--formatter", "json", capture_output=True).stdout)
    finally:
        if not ns.keep:
            for node in NODES:
                sh("docker", "rm", "-f", node, capture_output=True, check=False)
            sh("docker", "network", "rm", NETWORK, capture_output=True, check=False)

    base = best["single"]["tasks_per_s"]
    print(f"\nEnd-to-end signed Celery throughput ({KIT_MODE}: security_lib over mutual TLS), "
          f"{ns.tasks} tasks/mode, best of {ns.rounds} alternating rounds, prefork x{ns.concurrency}, "
          f"rpc:// results, worker and producer on {NODES[0]} ({cpus} CPUs seen; setup {setup_seconds:.0f} s)")
    print(f"{'mode':<10} {'tasks/s':>10} {'ratio':>8}")
    for mode in MODES:
        rate = best[mode]["tasks_per_s"]
        print(f"{mode:<10} {rate:>10.1f} {rate / base:>8.2f}")
    for queue in members:
        if queue["name"].startswith("bench-"):
            print(f"queue {queue['name']}: {queue['type']}, members {sorted(queue.get('members') or [])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
