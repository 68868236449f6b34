"""Failure tests: confirmed messages with known ids under load while a broker
node restarts or is killed. Publishers use confirms and fail over to the next
node; the consumer acks after handling and fails over too.

What is counted (printed for the report, per test): lost = ids never
delivered (must be 0); duplicates = deliveries beyond the first (allowed:
this is at-least-once delivery, a redelivery after a lost ack or a resend
after a lost confirm shows up here).
"""

from __future__ import annotations

import json
import time

import pytest
from kit_testlib import lab, quote, wait_for

BROKERS = ["clu-broker1", "clu-broker2", "clu-broker3"]
NODES = [f"rabbit@{b}" for b in BROKERS]
COUNT = 2000


def all_running() -> bool:
    for broker in BROKERS:
        result = lab(broker).run("rabbitmqctl -q cluster_status --formatter json")
        if result.rc == 0:
            return sorted(json.loads(result.stdout)["running_nodes"]) == NODES
    return False


def start(action: str, tag: str, hosts: list[str], out: str, **kw: object) -> None:
    extra = " ".join(f"--{k} {quote(str(v))}" for k, v in kw.items())
    lab("clu-client").check_output(
        f"rm -f {out}; nohup cluster-probe {action} --hosts {','.join(hosts)} --tag {tag} --count {COUNT} {extra} "
        f"> {out}.tmp 2> {out}.err && mv {out}.tmp {out} &")


def result(out: str, timeout: float) -> dict:
    client = lab("clu-client")
    done = wait_for(lambda: client.file(out).exists, timeout=timeout, interval=2)
    assert done, client.run(f"cat {out}.err").stdout
    return json.loads(client.check_output(f"cat {out}"))


def kill_broker(broker: str) -> None:
    """kill -9 the node's Erlang VM (the unit's main process); systemd brings it back."""
    pid = lab(broker).check_output("systemctl show -p MainPID --value rabbitmq-server").strip()
    assert pid not in ("", "0")
    lab(broker).check_output(f"kill -9 {pid}")
    time.sleep(3)
    lab(broker).run("systemctl start rabbitmq-server")


def restart_broker(broker: str) -> None:
    lab(broker).check_output("systemctl restart rabbitmq-server")


def rolling_restart(_: str) -> None:
    for broker in BROKERS:
        restart_broker(broker)
        assert wait_for(all_running, timeout=180, interval=3), f"{broker} did not rejoin"


@pytest.mark.parametrize(("disrupt", "pace"), [(restart_broker, 0.003), (kill_broker, 0.003), (rolling_restart, 0.05)],
                         ids=["restart-one-node", "kill-9-one-node", "rolling-restart"])
def test_no_confirmed_message_is_lost_when_brokers_fail_under_load(disrupt, pace):
    """pace spreads the publishes so that the load spans the whole disruption."""
    assert wait_for(all_running, timeout=180, interval=3)
    lab("clu-client").check_output("cluster-probe drain --host clu-broker1")
    tag = f"{disrupt.__name__}-{int(time.time())}"
    # Both start on the node that fails, so both must fail over.
    order = ["clu-broker2", "clu-broker3", "clu-broker1"]
    start("load-consume", tag, order, "/tmp/consume.json", idle=90)
    start("load-publish", tag, order, "/tmp/publish.json", pace=pace)
    time.sleep(4)
    disrupt("clu-broker2")
    published = result("/tmp/publish.json", timeout=600)
    consumed = result("/tmp/consume.json", timeout=600)
    print(f"LOAD {disrupt.__name__}: published={published} consumed={consumed}")
    assert published["published"] == COUNT
    assert consumed["lost"] == 0, consumed
    # Twin: the disruption really hit the load (both started on the failing node).
    assert published["failovers"] >= 1 and consumed["failovers"] >= 1, (published, consumed)
    assert wait_for(all_running, timeout=180, interval=3), "the cluster did not come back to 3 running nodes"
