"""The app side of the cluster with real signed Celery tasks.

The client's demo app (celery_app role) lists every broker in its failover
URL and publishes with confirms; the worker runs with acks_late (the
scenario's demo entry sets acks_late: true). Each load test sends 2,000
signed demo.tasks.record tasks with known ids while something fails; the
task appends its id to a file on the worker once it ran, so executions are
counted by id.

What is counted (a LOAD line per test in the "cluster failure figures"
section at the end of the run): sent = tasks the sender was asked to send;
confirmed = sends the broker confirmed; send errors = sends that raised (each
is sent again with the same id); ran = distinct ids executed; lost =
confirmed ids never executed (must be 0); duplicates = executions beyond the
first of an id (allowed and reported: acks_late is at least once, a task whose
ack was lost with its connection runs again).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import time
from collections.abc import Callable

from kit_testlib import address, lab, quote, wait_for

from conftest import FIGURES

BROKERS = ["clu-broker1", "clu-broker2", "clu-broker3"]
NODES = [f"rabbit@{b}" for b in BROKERS]
COUNT = 2000
WORKER_UNIT = "celery-worker@demo"
EXECUTIONS = "/var/lib/celery-kit/demo/executions"
APP_PYTHON = "runuser -u celery-demo -- env PYTHONPATH=/etc/celery-kit/demo /opt/celery-kit/demo/venv/bin/python"


def all_running() -> bool:
    for broker in BROKERS:
        result = lab(broker).run("rabbitmqctl -q cluster_status --formatter json")
        if result.rc == 0:
            return sorted(json.loads(result.stdout)["running_nodes"]) == NODES
    return False


def connected_nodes(user: str) -> list[str]:
    """The brokers holding a connection of ``user`` (list_connections is cluster-wide).

    Its JSON shows pids without the node name, so the node is found by the
    address the connection was made to (``host``).
    """
    by_address = {address(b): b for b in BROKERS}
    for broker in BROKERS:
        result = lab(broker).run("rabbitmqctl -q list_connections user host --formatter json")
        if result.rc == 0:
            hosts = {_address(c["host"]) for c in json.loads(result.stdout) if c["user"] == user}
            return sorted(by_address.get(h, h) for h in hosts)
    return []


def _address(host: object) -> str:
    """rabbitmqctl's JSON gives an address as a list of integers (IPv4-mapped IPv6 here)."""
    if isinstance(host, list) and len(host) == 8:
        ip = ipaddress.IPv6Address(b"".join(int(x).to_bytes(2, "big") for x in host))
        return str(ip.ipv4_mapped or ip)
    if isinstance(host, list) and len(host) == 4:
        return ".".join(str(x) for x in host)
    return str(host)


def worker_node() -> str:
    """A node the worker is connected to (the first of its list when all are up)."""
    nodes = connected_nodes("demo-worker")
    assert nodes, "the worker holds no broker connection"
    return nodes[0]


def left(node: str) -> bool:
    """The worker is connected again, and no longer to ``node``."""
    nodes = connected_nodes("demo-worker")
    return bool(nodes) and node not in nodes


def worker_pid() -> str:
    return lab("clu-worker").check_output(f"systemctl show -p MainPID --value {WORKER_UNIT}").strip()


def worker_children() -> list[str]:
    """The pids of the worker's pool processes.

    The lab image has no procps (pgrep printed nothing, so the kill test
    killed nothing) and its kernel no /proc/<pid>/task/<tid>/children: the
    parent is read from each process's status file.
    """
    pid = worker_pid()
    out = lab("clu-worker").run(f"grep -lx 'PPid:[[:space:]]*{pid}' /proc/[0-9]*/status").stdout
    return [line.split("/")[2] for line in out.split()]


def executions() -> list[str]:
    return lab("clu-worker").run(f"cat {EXECUTIONS}").stdout.split()


def send(tag: str, out: str, **options: object) -> None:
    """Start the sender in the background on the client (its JSON lands in ``out``)."""
    extra = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    lab("clu-client").check_output(
        f"rm -f {out}; nohup {APP_PYTHON} /usr/local/lib/cluster_send.py --tag {tag} --out {out} {extra} > {out}.log 2>&1 &"
    )


def sent(out: str, timeout: float = 600) -> dict:
    """The sender's report, once it wrote all of it (a partly written file does not parse)."""
    client = lab("clu-client")

    def report() -> dict | None:
        try:
            return json.loads(client.run(f"cat {out}").stdout)
        except ValueError:
            return None

    done = wait_for(report, timeout=timeout, interval=2)
    assert done, client.run(f"cat {out}.log").stdout
    return done


def count(ids: list[str], settle: float = 10) -> tuple[list[str], dict[str, int]]:
    """Wait until every id ran (or the replay window is over), then for late duplicates; return lost, duplicates."""
    wanted = set(ids)
    wait_for(lambda: wanted <= set(executions()), timeout=330, interval=3)
    time.sleep(settle)
    runs = collections.Counter(executions())
    lost = sorted(wanted - set(runs))
    duplicates = {i: n - 1 for i, n in runs.items() if n > 1}
    return lost, duplicates


def run_load(name: str, disrupt: Callable[[], object], *, pace: float = 0.01, **options: object) -> dict:
    """COUNT tasks while ``disrupt`` runs (once a few hundred have run); return the numbers."""
    assert wait_for(all_running, timeout=180, interval=3), "the cluster is not at 3 running nodes"
    assert wait_for(lambda: connected_nodes("demo-worker"), timeout=120, interval=3), "the worker is not connected"
    lab("clu-worker").check_output(f"truncate -c -s 0 {EXECUTIONS}")
    tag = f"{name}-{int(time.time())}"
    out = f"/tmp/sent-{name}.json"
    send(tag, out, count=COUNT, pace=pace, **options)
    assert wait_for(lambda: len(executions()) >= 200, timeout=180, interval=1), "the load did not start"
    effect = disrupt()
    report = sent(out)
    lost, duplicates = count(report["ids"])
    ran = set(executions()) & set(report["ids"])
    numbers = {
        "sent": COUNT,
        "confirmed": report["confirmed"],
        "ran": len(ran),
        "lost": len(lost),
        "duplicates": sum(duplicates.values()),
        "send_errors": report["errors"],
        "send_seconds": report["seconds"],
        "error_kinds": report.get("error_kinds", {}),
        "effect": effect,
    }
    FIGURES.append(
        f"LOAD {name}: sent={COUNT} confirmed={report['confirmed']} ran={len(ran)} lost={len(lost)} "
        f"duplicates={numbers['duplicates']} send_errors={report['errors']} "
        f"(sending took {report['seconds']} s; {effect}; errors: {numbers['error_kinds'] or 'none'})"
    )
    print(f"LOAD {name}: {json.dumps(numbers)}")
    assert report["confirmed"] == COUNT, report["last_error"]
    assert not lost, f"{len(lost)} confirmed tasks never ran, e.g. {lost[:5]}"
    assert wait_for(all_running, timeout=180, interval=3), "the cluster did not come back to 3 running nodes"
    return numbers


# --- TLS names across failover -------------------------------------------------


def failover(mode: str) -> dict:
    result = lab("clu-client").run(f"{APP_PYTHON} /usr/local/lib/tls_failover.py {mode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_app_fails_over_to_another_node_and_checks_that_nodes_name():
    assert failover("kit") == {"reached": "clu-broker2", "checked": "clu-broker2"}


def test_one_fixed_server_hostname_would_break_failover():
    """Twin: kombu's own Connection keeps the first node's name for every node, and the check is on."""
    error = failover("stock")["error"]
    assert "Hostname mismatch" in error and "clu-broker1" in error, error


def test_app_config_declares_quorum_queues_confirms_and_acks_late():
    script = (
        "import json, celery_kit_config as c; from celery import Celery; a = Celery('x'); c.harden_app(a); "
        "q = a.conf.task_queues[0]; print(json.dumps({'args': q.queue_arguments, 'no_declare': q.no_declare, "
        "'confirm': a.conf.broker_transport_options.get('confirm_publish'), 'acks_late': a.conf.task_acks_late, "
        "'lost': a.conf.task_reject_on_worker_lost, 'prefetch': a.conf.worker_prefetch_multiplier, "
        "'hosts': [u.split('@')[1].split(':')[0] for u in a.conf.broker_url.split(';')]}))"
    )
    conf = json.loads(lab("clu-worker").check_output(f"{APP_PYTHON} -c {quote(script)}"))
    assert conf == {
        "args": {
            "x-queue-type": "quorum",
            "x-delivery-limit": 5,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "celery.dead-letter",
        },
        "no_declare": True,
        "confirm": True,
        "acks_late": True,
        "lost": True,
        "prefetch": 1,
        "hosts": BROKERS,
    }
    # Celery saw the quorum queue: per-consumer QoS instead of the global
    # QoS quorum queues do not support.
    assert lab("clu-worker").run(f"journalctl -u {WORKER_UNIT} --no-pager -o cat | grep -c 'Global QoS is disabled'").rc == 0


# --- failures under load -----------------------------------------------------------


def test_restart_the_workers_broker_node_under_load():
    before = worker_node()
    run_load("restart-node", lambda: lab(before).check_output("systemctl restart rabbitmq-server"))
    # Twin: the disruption hit the worker's own node, and it failed over.
    assert wait_for(lambda: left(before), timeout=60), before


def test_kill_9_the_workers_broker_node_under_load():
    before = worker_node()

    def kill() -> str:
        pid = lab(before).check_output("systemctl show -p MainPID --value rabbitmq-server").strip()
        assert pid not in ("", "0")
        lab(before).check_output(f"kill -9 {pid}")
        time.sleep(3)
        lab(before).run("systemctl start rabbitmq-server")
        return f"killed {before} pid {pid}"

    run_load("kill-9-node", kill)
    assert wait_for(lambda: left(before), timeout=60), before


def test_stop_the_producers_node_while_it_publishes():
    """Every send returns confirmed or raises: none is lost silently when the producer's own node stops."""
    nodes: dict[str, object] = {}

    def stop_producers_node() -> str:
        before = wait_for(lambda: connected_nodes("demo-producer"), timeout=30, interval=0.5)
        assert before, "the producer holds no broker connection"
        node = nodes["stopped"] = before[0]
        lab(node).check_output("systemctl stop rabbitmq-server")
        try:
            # Twin: the sender really was on the stopped node and went on
            # publishing through another one.
            nodes["after"] = wait_for(lambda: [n for n in connected_nodes("demo-producer") if n != node],
                                      timeout=60, interval=1)
        finally:
            lab(node).check_output("systemctl start rabbitmq-server")
        return f"stopped {node}, the producer moved to {nodes['after']}"

    run_load("stop-producer-node", stop_producers_node, pace=0.03)
    assert nodes["after"], f"the producer did not move away from {nodes['stopped']}"


def test_rolling_restart_of_all_three_nodes_under_load():
    def rolling() -> list[str]:
        for broker in BROKERS:
            lab(broker).check_output("systemctl restart rabbitmq-server")
            assert wait_for(all_running, timeout=180, interval=3), f"{broker} did not rejoin"
        return BROKERS

    run_load("rolling-restart", rolling, pace=0.05)


def test_restart_the_worker_service_under_load():
    before = worker_pid()
    run_load("restart-worker", lambda: lab("clu-worker").check_output(f"systemctl restart {WORKER_UNIT}"))
    assert worker_pid() not in ("", "0", before)


def test_kill_9_worker_processes_mid_task_with_acks_late():
    """Every 20th task sleeps 0.5 s; children are killed with -9 while they run, and their tasks run again."""
    since = lab("clu-worker").check_output("date +%s").strip()

    def kill_children() -> int:
        killed = 0
        for _ in range(3):
            children = worker_children()
            if children:
                lab("clu-worker").run(f"kill -9 {children[0]}")
                killed += 1
            time.sleep(3)
        return killed

    numbers = run_load("kill-9-worker-child", kill_children, seconds=0.5, slow_every=20)
    assert numbers["effect"] >= 1
    # Twin: at least one kill hit a running task (Celery reports the lost
    # worker), so "lost 0" above is the requeue working, not luck.
    journal = lab("clu-worker").check_output(f"journalctl -u {WORKER_UNIT} --since @{since} --no-pager -o cat")
    assert "WorkerLostError" in journal


# --- eta / countdown on quorum queues -------------------------------------------------


def test_countdown_tasks_run_on_quorum_queues_after_their_countdown():
    """Celery's native delayed delivery needs topic exchanges and declarations the app may not make:
    with the kit's direct exchanges the worker holds a countdown task until it is due (found here)."""
    lab("clu-worker").check_output(f"truncate -c -s 0 {EXECUTIONS}")
    out = "/tmp/sent-countdown.json"
    send(f"countdown-{int(time.time())}", out, count=20, countdown=8)
    report = sent(out, timeout=120)
    assert report["confirmed"] == 20
    early = executions()
    lost, duplicates = count(report["ids"], settle=2)
    ran = set(executions()) & set(report["ids"])
    FIGURES.append(
        f"LOAD countdown (8 s): sent=20 confirmed={report['confirmed']} ran={len(ran)} lost={len(lost)} "
        f"duplicates={sum(duplicates.values())} send_errors={report['errors']} ran_before_due={len(early)}"
    )
    print(f"LOAD countdown: early={len(early)} lost={len(lost)} duplicates={sum(duplicates.values())}")
    assert not lost
    # Twin: none ran before its countdown was over (sending took a few seconds).
    assert early == [], "the countdown was not honoured"
