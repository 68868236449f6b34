"""Reachability through the kit's firewall, from allowed and outside hosts."""

from __future__ import annotations

import pytest

from conftest import (
    EXIT_OK,
    STATUS,
    TABLE,
    address,
    counter,
    lab,
    tcp_reachable,
    udp_reachable,
)

MANAGED = ["fw-broker1", "fw-broker2", "fw-worker", "fw-client", "fw-logserver"]

# (source, destination, port, reachable). fw-client plays the admin
# workstation (firewall_admin_networks); fw-outsider is in no allowlist.
INBOUND = [
    # The outsider on the same Docker network reaches nothing.
    ("fw-outsider", "fw-broker1", 5671, False),
    ("fw-outsider", "fw-broker1", 15671, False),
    ("fw-outsider", "fw-broker1", 4369, False),
    ("fw-outsider", "fw-broker1", 25672, False),
    ("fw-outsider", "fw-broker1", 22, False),
    ("fw-outsider", "fw-logserver", 6514, False),
    ("fw-outsider", "fw-logserver", 22, False),
    ("fw-outsider", "fw-worker", 22, False),
    # AMQPS: only from app hosts.
    ("fw-client", "fw-broker1", 5671, True),
    ("fw-worker", "fw-broker1", 5671, True),
    ("fw-worker", "fw-broker2", 5671, True),
    ("fw-logserver", "fw-broker1", 5671, False),
    # Management and SSH: only from the admin network.
    ("fw-client", "fw-broker1", 15671, True),
    ("fw-broker2", "fw-broker1", 15671, False),
    ("fw-client", "fw-broker1", 22, True),
    ("fw-client", "fw-logserver", 22, True),
    ("fw-broker2", "fw-broker1", 22, False),
    # Erlang distribution and epmd: only between cluster peers.
    ("fw-broker2", "fw-broker1", 4369, True),
    ("fw-broker2", "fw-broker1", 25672, True),
    ("fw-broker1", "fw-broker2", 25672, True),
    ("fw-client", "fw-broker1", 4369, False),
    ("fw-client", "fw-broker1", 25672, False),
    # Syslog over TLS: from every managed host.
    ("fw-broker1", "fw-logserver", 6514, True),
    ("fw-client", "fw-logserver", 6514, True),
    ("fw-worker", "fw-logserver", 6514, True),
]


@pytest.mark.parametrize("src,dst,port,reachable", INBOUND, ids=[f"{s}->{d}:{p}" for s, d, p, _ in INBOUND])
def test_inbound_allowlists(src, dst, port, reachable):
    assert tcp_reachable(src, dst, port) is reachable


def test_outsider_drops_are_counted():
    before = counter("fw-broker1", "input_dropped")
    assert not tcp_reachable("fw-outsider", "fw-broker1", 5671)
    assert counter("fw-broker1", "input_dropped") > before


@pytest.mark.parametrize(
    "port,proto",
    [(9000, "tcp"), (53, "udp"), (53, "tcp"), (123, "udp")],
    ids=["extra-egress-9000", "dns-udp", "dns-tcp", "ntp-udp"],
)
def test_worker_egress_allows_listed_destinations(port, proto):
    probe = udp_reachable if proto == "udp" else tcp_reachable
    assert probe("fw-worker", "fw-outsider", port)


def test_worker_egress_drops_and_counts_everything_else():
    # The control: the listener is up and a host without egress filtering reaches it.
    assert tcp_reachable("fw-client", "fw-outsider", 8080)
    before = counter("fw-worker", "worker_egress_dropped")
    assert not tcp_reachable("fw-worker", "fw-outsider", 8080)
    after_tcp = counter("fw-worker", "worker_egress_dropped")
    assert after_tcp > before
    # Another lab container that accepts SSH from the client only...
    assert not tcp_reachable("fw-worker", "fw-broker1", 15671)
    # ...and a UDP port that is not DNS/NTP.
    assert not udp_reachable("fw-worker", "fw-outsider", 9000)
    assert counter("fw-worker", "worker_egress_dropped") > after_tcp


def test_other_hosts_have_no_egress_filter():
    for name in ["fw-broker1", "fw-client", "fw-logserver"]:
        out = lab(name).check_output(f"nft -s list table {TABLE}")
        assert "chain output" not in out
        assert "worker_egress_dropped" not in out


@pytest.mark.parametrize("name", MANAGED)
def test_docker_dns_between_containers_still_works(name):
    for other in ["fw-broker1", "fw-logserver", "fw-outsider"]:
        res = lab(name).run(f"getent ahostsv4 {other}")
        assert res.rc == 0, res.stderr
        assert address(other) in res.stdout


@pytest.mark.parametrize("name", MANAGED)
def test_only_the_kits_table_is_ours_and_dockers_stays(name):
    host = lab(name)
    tables = host.check_output("nft list tables").splitlines()
    assert f"table {TABLE}" in tables
    # Docker's embedded-DNS NAT in the container is still there.
    assert "table ip nat" in tables
    assert "127.0.0.11" in host.check_output("nft -s list table ip nat")


@pytest.mark.parametrize("name", MANAGED)
def test_units_and_status(name):
    host = lab(name)
    assert host.service("celery-kit-fw.service").is_enabled
    assert host.service("celery-kit-fw-check.timer").is_enabled
    assert host.service("celery-kit-fw-check.timer").is_running
    # The flushing distribution ruleset can never be started.
    assert host.run("systemctl is-enabled nftables.service").stdout.strip() == "masked"
    ruleset = host.file("/etc/celery-kit-fw/ruleset.nft").content_string
    assert not [line for line in ruleset.splitlines() if line.strip().startswith("flush")]
    status = host.run(STATUS)
    assert status.rc == EXIT_OK, status.stdout + status.stderr
    assert "verdict: OK" in status.stdout
    assert "input_dropped:" in status.stdout
