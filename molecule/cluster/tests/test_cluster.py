"""The three-node cluster: formation, the Erlang distribution over mutual TLS,
who may reach epmd and the distribution port, and quorum queues that keep a
confirmed message when their leader stops.

Every refusal has a twin that shows the same probe seeing success.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from kit_testlib import PROJECT, ForeignPki, foreign_ca, lab, quote, tls_handshake, wait_for

BROKERS = ["clu-broker1", "clu-broker2", "clu-broker3"]
NODES = [f"rabbit@{b}" for b in BROKERS]
CA = "/etc/ssl/certs/celery-kit-ca.pem"
DIST_CERT = "/etc/ssl/certs/rabbitmq-dist.pem"
DIST_KEY = "/etc/ssl/private/rabbitmq-dist.key"
OPTFILE = "/etc/rabbitmq/inter_node_tls.config"
COOKIE = "/var/lib/rabbitmq/.erlang.cookie"
EPMD, DIST = 4369, 25672

# The probes read and write the app's queue directly (conftest.py).
pytestmark = pytest.mark.usefixtures("worker_stopped")


def cluster_status(broker: str) -> dict:
    return json.loads(lab(broker).check_output("rabbitmqctl -q cluster_status --formatter json"))


def all_running(broker: str) -> bool:
    result = lab(broker).run("rabbitmqctl -q cluster_status --formatter json")
    return result.rc == 0 and sorted(json.loads(result.stdout)["running_nodes"]) == NODES


def quorum_queue(broker: str, name: str = "celery") -> dict:
    """type, leader and members as the cluster reports them (a cluster-wide query)."""
    out = lab(broker).check_output("rabbitmqctl -q list_queues -p /demo --formatter json name type leader members")
    return next(q for q in json.loads(out) if q["name"] == name)


def queue_arguments(broker: str, name: str) -> dict:
    # export_definitions holds password hashes too: only the queue is kept.
    data = json.loads(lab(broker).check_output("rabbitmqctl -q export_definitions -"))
    return next(q["arguments"] for q in data["queues"] if q["vhost"] == "/demo" and q["name"] == name)


# --- formation ------------------------------------------------------------------

@pytest.mark.parametrize("broker", BROKERS)
def test_every_node_sees_three_running_members_and_the_cluster_name(broker):
    status = cluster_status(broker)
    assert sorted(status["disk_nodes"]) == NODES
    assert sorted(status["running_nodes"]) == NODES
    assert status["cluster_name"] == "celery-kit"
    assert not status.get("partitions"), status.get("partitions")


@pytest.mark.parametrize("broker", BROKERS)
def test_partition_handling_is_pause_minority(broker):
    out = lab(broker).check_output(
        "rabbitmqctl -q eval 'application:get_env(rabbit, cluster_partition_handling).'")
    assert out.strip() == "{ok,pause_minority}"


def test_one_cookie_0400_on_every_node_and_kept_outside_the_repository():
    sums = set()
    for broker in BROKERS:
        f = lab(broker).file(COOKIE)
        assert (f.user, f.group, f.mode) == ("rabbitmq", "rabbitmq", 0o400), broker
        sums.add(lab(broker).check_output(f"sha256sum {COOKIE}").split()[0])
    assert len(sums) == 1, "the members hold different cookies"
    cookie = lab(BROKERS[0]).check_output(f"cat {COOKIE}").strip()
    tracked = [p for p in PROJECT.rglob("*") if p.is_file() and ".git" not in p.parts and p.stat().st_size < 1_000_000]
    assert not [p for p in tracked if cookie.encode() in p.read_bytes()], "the cookie is in the worktree"
    # Generated once on the controller, outside the repository.
    controller = pathlib.Path.home() / ".local/share/celery-kit/molecule-cluster/rabbitmq/erlang.cookie"
    assert controller.read_text().strip() == cookie
    assert PROJECT not in controller.resolve().parents


# --- the distribution over mutual TLS ------------------------------------------------

@pytest.mark.parametrize("broker", BROKERS)
def test_the_cli_works_and_the_node_speaks_tls_distribution(broker):
    # rabbitmqctl itself reaches the node over the TLS distribution.
    out = lab(broker).check_output("rabbitmqctl -q eval 'init:get_argument(proto_dist).'")
    assert out.strip() == '{ok,[["inet_tls"]]}'
    assert lab(broker).check_output("rabbitmq-diagnostics -q ping").strip().endswith("succeeded")


@pytest.mark.parametrize("broker", BROKERS)
def test_dist_certificate_has_server_and_client_usage_and_a_private_key(broker):
    text = lab(broker).check_output(f"openssl x509 -in {DIST_CERT} -noout -text")
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert f"DNS:{broker}" in text
    key = lab(broker).file(DIST_KEY)
    assert (key.user, key.mode) == ("rabbitmq", 0o600)


def test_dist_port_refuses_a_tls_client_without_a_certificate_and_accepts_a_kit_peer():
    # From a peer broker: the firewall lets it through, so the refusal is the node's own.
    peer = lab("clu-broker2")
    without = tls_handshake(peer, "clu-broker1", DIST, ca=CA, server_name="clu-broker1")
    assert not without.accepted, without.output
    assert "certificate required" in without.output
    with_cert = tls_handshake(peer, "clu-broker1", DIST, ca=CA, server_name="clu-broker1",
                              cert=DIST_CERT, key=DIST_KEY)
    assert with_cert.accepted, with_cert.output


def test_dist_port_refuses_a_certificate_from_another_ca():
    peer = lab("clu-broker2")
    foreign: ForeignPki = foreign_ca(peer, "/root/foreign-dist", "clu-broker2")
    result = tls_handshake(peer, "clu-broker1", DIST, ca=CA, server_name="clu-broker1",
                           cert=foreign.cert, key=foreign.key)
    assert not result.accepted, result.output


@pytest.mark.parametrize("tls", [False, True], ids=["plain-with-cookie", "tls-with-kit-cert"])
def test_only_a_tls_peer_with_a_kit_certificate_can_join_the_distribution(tls):
    """Even the right cookie is not enough: a plain-distribution node gets pang, a TLS one pong."""
    peer = lab("clu-broker2")
    dist = f"-proto_dist inet_tls -ssl_dist_optfile {OPTFILE}" if tls else ""
    name = "probe_tls" if tls else "probe_plain"
    result = peer.run(
        f"cd /tmp && timeout 60 erl -sname {name} -setcookie \"$(cat {COOKIE})\" {dist} -noshell "
        "-eval \"io:format(\\\"~p~n\\\", [net_adm:ping('rabbit@clu-broker1')]), halt().\"")
    assert result.stdout.strip().splitlines()[-1:] == (["pong"] if tls else ["pang"]), result.stdout + result.stderr


# --- who reaches epmd and the distribution port ------------------------------------

def tcp_open(src: str, dst: str, port: int) -> bool:
    return lab(src).run(f"timeout 4 bash -c {quote(f'</dev/tcp/{dst}/{port}')}").rc == 0


def input_dropped(broker: str) -> int:
    """Packets the broker's firewall dropped on input (its named counter)."""
    out = lab(broker).check_output("nft -j list counter inet celery_kit_fw input_dropped")
    return next(int(i["counter"]["packets"]) for i in json.loads(out)["nftables"] if "counter" in i)


@pytest.mark.parametrize("port", [EPMD, DIST])
@pytest.mark.parametrize("src", ["clu-outsider", "clu-client"])
def test_non_brokers_reach_neither_epmd_nor_the_distribution_port(src, port):
    dropped = input_dropped("clu-broker1")
    assert not tcp_open(src, "clu-broker1", port)
    # The probe reached the broker and its firewall dropped it (not a routing failure).
    assert input_dropped("clu-broker1") > dropped
    if src == "clu-client":
        # Twin: the same host reaches the broker's AMQPS port, so the probe works.
        assert tcp_open(src, "clu-broker1", 5671)
    else:
        # Twin: the outsider may reach nothing on a broker; the same probe from it
        # sees a listener on that port number (its own, on its network address).
        lab(src).check_output(
            f"nohup timeout 30 python3 -c {quote(LISTENER)} {port} > /dev/null 2>&1 &")
        assert wait_for(lambda: tcp_open(src, src, port), timeout=15)


LISTENER = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); s.accept()")


@pytest.mark.parametrize("port", [EPMD, DIST])
@pytest.mark.parametrize("src", ["clu-broker2", "clu-broker3"])
def test_brokers_reach_each_others_epmd_and_distribution_port(src, port):
    assert tcp_open(src, "clu-broker1", port)


# --- quorum queues ------------------------------------------------------------------

def test_app_queue_is_a_quorum_queue_on_all_three_nodes_with_a_delivery_limit():
    # list_queues is cluster-wide: the other members answer the CLI node on
    # its own distribution port (35672-35682), which the firewall opens
    # between brokers; without it this query times out.
    queue = quorum_queue("clu-broker1")
    assert queue["type"] == "quorum"
    assert sorted(queue["members"]) == NODES
    args = queue_arguments("clu-broker2", "celery")
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] == 5
    assert args["x-dead-letter-exchange"] == ""
    assert args["x-dead-letter-routing-key"] == "celery.dead-letter"
    dead = quorum_queue("clu-broker1", "celery.dead-letter")
    assert dead["type"] == "quorum" and sorted(dead["members"]) == NODES


def probe(action: str, host: str, **kw: object) -> dict:
    extra = " ".join(f"--{k} {quote(str(v))}" for k, v in kw.items())
    return json.loads(lab("clu-client").check_output(f"cluster-probe {action} --host {host} {extra}"))


def test_confirmed_messages_survive_stopping_the_queue_leader():
    probe("drain", "clu-broker1")
    leader = quorum_queue("clu-broker1")["leader"].split("@", 1)[1]
    others = [b for b in BROKERS if b != leader]
    tag = f"survive-{os.getpid()}"
    assert probe("publish", others[0], count=50, tag=tag) == {"published": 50}
    lab(leader).check_output("systemctl stop rabbitmq-server")
    try:
        new_leader = wait_for(lambda: (q := quorum_queue(others[1]))["leader"] != f"rabbit@{leader}" and q["leader"],
                              timeout=60)
        assert new_leader, "no new leader was elected"
        bodies = probe("drain", others[1])["bodies"]
        assert sorted(bodies) == sorted(f"{tag}-{i}" for i in range(50))
    finally:
        lab(leader).check_output("systemctl start rabbitmq-server")
        assert wait_for(lambda: all_running(others[0]), timeout=180), "the stopped node did not rejoin"
