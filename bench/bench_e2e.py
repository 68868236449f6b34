#!/usr/bin/env python3
"""End-to-end Celery throughput (tasks/s): plain, TLS, stock Celery signing, and the kit per key type.

Not a test: a measurement. It starts one throwaway container (``kit-bench``,
from the lab image; never one of the lab's hardened hosts) with its own
RabbitMQ listening on loopback in plain AMQP (5672) and in mutual TLS (5671,
a throwaway CA made inside the container), installs the wheelhouse into a
venv there, and for each mode runs a real Celery worker (prefork, like the
lab's) and a producer that sends N ``add`` tasks and waits for every result
over ``rpc://``:

* ``plain+json``  amqp://, json serializer (what Celery does by default, minus pickle)
* ``tls+json``    amqps:// with client certificate, json
* ``tls+auth``    amqps:// with client certificate, stock Celery's ``auth``
                  serializer (``setup_security()``), the same RSA-3072 signer as ``tls+kit-rsa``
* ``tls+kit-<key>`` amqps:// with client certificate, ``security_lib.harden()``
                  (signed envelope, worker gate, replay cache, allowlist) with
                  an RSA-3072, Ed25519 or ECDSA P-256 signer

Figures are printed with their ratio to ``plain+json``, from one run, and the
goals of issue 17: kit with RSA >= 0.95x ``tls+auth``, kit with the default
EC key (Ed25519) >= 0.85x ``tls+json``.

    bench/bench_e2e.py [--tasks 1000] [--rounds 3] [--concurrency 2] [--modes ...] [--keep]

The wheelhouse comes from ``playbooks/wheelhouse.yml``
(``~/.cache/celery-kit/lab/wheelhouse``, the lab deployment's, or ``$CELERY_KIT_WHEELHOUSE``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

IMAGE = os.environ.get("KIT_LAB_IMAGE", "celery-kit/debian:bookworm")
CONTAINER = "kit-bench"
WHEELHOUSE = Path(os.environ.get("CELERY_KIT_WHEELHOUSE", Path.home() / ".cache/celery-kit/lab/wheelhouse"))
KEY_TYPES = ("rsa", "ed25519", "ecdsa-p256")
MODES = ("plain+json", "tls+json", "tls+auth", *(f"tls+kit-{key}" for key in KEY_TYPES))
DEFAULT_EC = "ed25519"  # the pki role's default pki_issue_key_type for signing certificates

SETUP = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
if ! command -v rabbitmq-server >/dev/null; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rabbitmq-server python3-venv openssl >/dev/null
fi
mkdir -p /bench/pki && cd /bench/pki
if [ ! -f client.pem ]; then
  umask 077
  openssl req -x509 -newkey rsa:3072 -nodes -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
  for n in server client signer-rsa; do
    openssl req -newkey rsa:3072 -nodes -subj /CN=$n -keyout $n.key -out $n.csr 2>/dev/null
  done
  openssl genpkey -algorithm ed25519 -out signer-ed25519.key
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signer-ecdsa-p256.key
  for k in ed25519 ecdsa-p256; do
    openssl req -new -key signer-$k.key -subj /CN=signer-$k -out signer-$k.csr 2>/dev/null
  done
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n' > signer.ext
  for n in server client; do
    openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile $n.ext -out $n.pem 2>/dev/null
  done
  for k in rsa ed25519 ecdsa-p256; do
    openssl x509 -req -in signer-$k.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile signer.ext -out signer-$k.pem 2>/dev/null
    mkdir -p store-$k && cp signer-$k.pem store-$k/
  done
  chmod 0644 *.pem && chown rabbitmq server.key
fi
# BENCH_LISTEN: bench/bench_cluster.py's nodes listen on their network address.
cat > /etc/rabbitmq/rabbitmq.conf <<EOF
listeners.tcp.default = ${BENCH_LISTEN:-127.0.0.1}:5672
listeners.ssl.default = ${BENCH_LISTEN:-127.0.0.1}:5671
ssl_options.cacertfile = /bench/pki/ca.pem
ssl_options.certfile = /bench/pki/server.pem
ssl_options.keyfile = /bench/pki/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
ssl_options.versions.1 = tlsv1.3
ssl_options.versions.2 = tlsv1.2
EOF
chmod 0644 /etc/rabbitmq/rabbitmq.conf
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  (su rabbitmq -s /bin/sh -c 'rabbitmq-server' >/var/log/bench-rabbit.log 2>&1 &)
  for i in $(seq 1 60); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 2; done
fi
rabbitmqctl -q add_user bench benchbenchbenchbench 2>/dev/null || true
rabbitmqctl -q set_permissions -p / bench '.*' '.*' '.*'
# No wheelhouse: a node of bench/bench_cluster.py that only serves the queues.
if [ -d /bench/wheelhouse ] && [ ! -x /bench/venv/bin/celery ]; then
  python3 -m venv /bench/venv
  /bench/venv/bin/pip install -q --no-index --find-links /bench/wheelhouse celery celery-kit-security-lib
fi
"""

# Runs inside the container: one worker per mode, one producer, rpc:// results.
INNER = r'''
import json, os, ssl, subprocess, sys, time
from celery import Celery

MODE = os.environ.get("BENCH_MODE", "")
PKI = "/bench/pki"
# bench/bench_cluster.py: the nodes to list in the URL, the queue and its
# type, and the kit's cluster delivery settings.
HOSTS = os.environ.get("BENCH_BROKERS", "localhost").split(",")
QUEUE = os.environ.get("BENCH_QUEUE", "celery")
QUEUE_TYPE = os.environ.get("BENCH_QUEUE_TYPE", "")

def make_app():
    scheme, port = ("amqp", 5672) if MODE == "plain+json" else ("amqps", 5671)
    urls = ";".join(f"{scheme}://bench:benchbenchbenchbench@{host}:{port}//" for host in HOSTS)
    app = Celery("benchapp", broker=urls, backend="rpc://")
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json",
                    result_accept_content=["json"], worker_prefetch_multiplier=4,
                    broker_connection_retry_on_startup=True)
    if QUEUE != "celery" or QUEUE_TYPE:
        from kombu import Queue
        arguments = {"x-queue-type": QUEUE_TYPE} if QUEUE_TYPE else {}
        app.conf.update(task_default_queue=QUEUE, task_queues=[Queue(QUEUE, queue_arguments=arguments)])
    if os.environ.get("BENCH_DELIVERY") == "cluster":
        # What celery_app's config module sets in a cluster for an app with acks_late: true.
        app.conf.update(broker_transport_options={"confirm_publish": True}, task_acks_late=True,
                        task_reject_on_worker_lost=True, worker_prefetch_multiplier=1)
    if MODE in ("tls+json", "tls+auth"):
        app.conf.broker_use_ssl = {"ca_certs": f"{PKI}/ca.pem", "certfile": f"{PKI}/client.pem",
                                   "keyfile": f"{PKI}/client.key", "cert_reqs": ssl.CERT_REQUIRED,
                                   "server_hostname": "localhost"}
    if MODE == "tls+auth":
        # Stock Celery signing with the same RSA-3072 signer as tls+kit-rsa.
        app.conf.update(task_serializer="auth", accept_content=["auth"], event_serializer="auth",
                        security_key=f"{PKI}/signer-rsa.key", security_certificate=f"{PKI}/signer-rsa.pem",
                        security_cert_store=f"{PKI}/store-rsa")
        app.setup_security()
    if MODE.startswith("tls+kit-"):
        import security_lib
        key = MODE.removeprefix("tls+kit-")
        security_lib.harden(app, key=f"{PKI}/signer-{key}.key", cert=f"{PKI}/signer-{key}.pem",
                            cert_store=f"{PKI}/store-{key}",
                            broker_ca=f"{PKI}/ca.pem", broker_cert=f"{PKI}/client.pem",
                            broker_key=f"{PKI}/client.key", broker_server_hostname="localhost",
                            allowed_tasks={f"signer-{key}": ["benchapp.*"]})
    return app

app = make_app()

@app.task(name="benchapp.add")
def add(x, y):
    return x + y

if __name__ == "__main__":
    n, concurrency = int(sys.argv[1]), sys.argv[2]
    env = dict(os.environ, PYTHONPATH="/bench")
    worker = subprocess.Popen(
        ["/bench/venv/bin/celery", "-A", "benchapp", "worker", "--pool=prefork", f"--concurrency={concurrency}",
         "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"bench-{os.getpid()}@%h"],
        env=env, cwd="/bench")
    try:
        subprocess.run(["rabbitmqctl", "-q", "purge_queue", QUEUE], check=False, capture_output=True)
        # Warm-up: the worker is up and connections are open.
        add.delay(1, 1).get(timeout=120)
        [r.get(timeout=120) for r in [add.delay(i, i) for i in range(50)]]
        start = time.perf_counter()
        results = [add.delay(i, i) for i in range(n)]
        values = [r.get(timeout=600) for r in results]
        elapsed = time.perf_counter() - start
        assert values == [2 * i for i in range(n)]
        print(json.dumps({"mode": MODE, "tasks": n, "seconds": elapsed, "tasks_per_s": n / elapsed}))
    finally:
        worker.terminate()
        worker.wait(timeout=60)
'''


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, text=True, **kw)


def run_mode(mode: str, tasks: int, concurrency: int, container: str = CONTAINER,
             env: dict[str, str] | None = None) -> dict | None:
    """Run one mode in the container; return its result row (None: it failed, output printed).

    ``env``: more BENCH_* variables for the inner script (bench/bench_cluster.py's).
    """
    extra = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={v}")]
    out = sh("docker", "exec", "-e", f"BENCH_MODE={mode}", "-e", "PYTHONPATH=/bench", *extra, "-w", "/bench",
             container, "/bench/venv/bin/python", "/bench/benchapp.py", str(tasks), str(concurrency),
             capture_output=True)
    line = [row for row in out.stdout.splitlines() if row.startswith("{")]
    if not line:
        print(out.stdout, out.stderr, file=sys.stderr)
        return None
    row = json.loads(line[-1])
    print(f"  {row['tasks_per_s']:.1f} tasks/s", file=sys.stderr)
    return row


def report(rows: list[dict], tasks: int, rounds: int, concurrency: int, cpus: str) -> None:
    """Print the table, ratios to plain+json, and the goals of issue 17."""
    base = rows[0]["tasks_per_s"]
    print(f"\nEnd-to-end Celery throughput, {tasks} tasks/mode, best of {rounds} alternating rounds, "
          f"prefork x{concurrency}, "
          f"rpc:// results, broker and worker on loopback in one container ({cpus} CPUs seen)")
    print(f"{'mode':<18} {'tasks/s':>10} {'ratio':>8}")
    for row in rows:
        print(f"{row['mode']:<18} {row['tasks_per_s']:>10.1f} {row['tasks_per_s'] / base:>8.2f}")
    rate = {row["mode"]: row["tasks_per_s"] for row in rows}
    for label, mode, against, goal in (
        ("kit with RSA vs stock TLS+auth (same key)", "tls+kit-rsa", "tls+auth", 0.95),
        (f"kit with {DEFAULT_EC} vs TLS+json", f"tls+kit-{DEFAULT_EC}", "tls+json", 0.85),
    ):
        if mode in rate and against in rate:
            ratio = rate[mode] / rate[against]
            print(f"goal {label}: {ratio:.2f} (>= {goal}) {'met' if ratio >= goal else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per mode (default 1000)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2, as in the lab)")
    parser.add_argument("--keep", action="store_true", help="leave the kit-bench container running")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; each mode keeps its best (default 3)")
    ns = parser.parse_args()
    if not any(WHEELHOUSE.glob("celery_kit_security_lib-*.whl")):
        sys.exit(f"no wheelhouse in {WHEELHOUSE}: run ansible-playbook playbooks/wheelhouse.yml first")

    exists = sh("docker", "ps", "-a", "-q", "-f", f"name=^{CONTAINER}$", capture_output=True).stdout.strip()
    if not exists:
        sh("docker", "run", "-d", "--name", CONTAINER, "--label", "celery-kit=bench", "--tmpfs", "/tmp",
           IMAGE, "sleep", "infinity", capture_output=True)
    else:
        sh("docker", "start", CONTAINER, capture_output=True)
    try:
        sh("docker", "exec", CONTAINER, "mkdir", "-p", "/bench/wheelhouse")
        sh("docker", "cp", f"{WHEELHOUSE}/.", f"{CONTAINER}:/bench/wheelhouse/")
        print("setting up the bench container (RabbitMQ, certificates, venv)...", file=sys.stderr)
        sh("docker", "exec", "-i", CONTAINER, "sh", input=SETUP)
        sh("docker", "exec", "-i", CONTAINER, "sh", "-c", "cat > /bench/benchapp.py", input=INNER)
        cpus = sh("docker", "exec", CONTAINER, "nproc", capture_output=True).stdout.strip()
        rows = []
        modes = [m for m in ns.modes.split(",") if m]
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            sys.exit(f"unknown modes {unknown}")
        # Modes alternate round by round and each keeps its best round, so load
        # that changes during the run (a shared host) does not favour one mode.
        best: dict[str, dict] = {}
        for round_no in range(1, ns.rounds + 1):
            for mode in modes:
                print(f"round {round_no}/{ns.rounds}: {mode} ({ns.tasks} tasks)...", file=sys.stderr)
                row = run_mode(mode, ns.tasks, ns.concurrency)
                if row is None:
                    return 1
                if mode not in best or row["tasks_per_s"] > best[mode]["tasks_per_s"]:
                    best[mode] = row
        rows = [best[mode] for mode in modes]
    finally:
        if not ns.keep:
            sh("docker", "rm", "-f", CONTAINER, capture_output=True, check=False)

    report(rows, ns.tasks, ns.rounds, ns.concurrency, cpus)
    return 0


if __name__ == "__main__":
    sys.exit(main())
