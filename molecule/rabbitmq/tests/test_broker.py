"""Broker-side checks: what listens where, file modes, users, vhosts, permissions, queues."""

import json
import re
import shlex

import pytest

testinfra_hosts = ["rmq-broker"]

APPS = {
    "/demo": {"queues": ["celery"]},
    "/billing": {"queues": ["billing", "billing.priority"]},
}
UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# The exact permissions the role must grant (configure, write, read).
EXPECTED_PERMISSIONS = {
    "demo-producer": ("/demo", f"^{UUID}$", "^(celery)$", f"^{UUID}$"),
    "demo-worker": ("/demo", "^$", "^(amq\\.default)$", "^(celery)$"),
    "demo-monitor": ("/demo", "^$", "^$", "^$"),
    "billing-producer": ("/billing", "^$", "^(billing|billing\\.priority)$", "^$"),
    "billing-worker": ("/billing", "^celeryev$", "^(celeryev)$", "^(billing|billing\\.priority)$"),
    "billing-monitor": ("/billing", "^$", "^$", "^$"),
}


def ctl_json(host, *args):
    cmd = host.run("rabbitmqctl -q " + " ".join(args) + " --formatter json")
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def listening(host):
    """(address, port) pairs of TCP listeners."""
    out = host.check_output("ss -ltnH")
    pairs = set()
    for line in out.splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        pairs.add((address.strip("[]"), int(port)))
    return pairs


def test_service_running_and_enabled(host):
    service = host.service("rabbitmq-server")
    assert service.is_running
    assert service.is_enabled


def test_only_amqps_listens_on_the_network(host):
    pairs = listening(host)
    ports = {port for _, port in pairs}
    assert 5671 in ports
    assert 5672 not in ports, "plain AMQP listener is open"
    assert not ports & {15671, 15672}, "management listener open while management is off"
    assert {a for a, p in pairs if p == 4369} == {"127.0.0.1"}, "epmd must listen on loopback only"
    assert {a for a, p in pairs if p == 25672} == {"127.0.0.1"}, "distribution must listen on loopback only"


def test_rabbitmq_reports_tls_listener_only(host):
    out = host.check_output("rabbitmq-diagnostics -q listeners")
    ports = set(re.findall(r"port: (\d+)", out))
    assert ports == {"5671", "25672"}, out
    assert "amqp/ssl" in out


def test_erlang_cookie(host):
    cookie = host.file("/var/lib/rabbitmq/.erlang.cookie")
    assert cookie.user == "rabbitmq"
    assert cookie.mode == 0o400
    assert len(cookie.content_string.strip()) >= 32


@pytest.mark.parametrize(
    "path,user,group,mode",
    [
        ("/etc/rabbitmq", "root", "rabbitmq", 0o750),
        ("/etc/rabbitmq/rabbitmq.conf", "root", "rabbitmq", 0o640),
        ("/etc/rabbitmq/rabbitmq-env.conf", "root", "rabbitmq", 0o640),
        ("/etc/rabbitmq/enabled_plugins", "root", "rabbitmq", 0o640),
        ("/etc/ssl/private/rabbitmq.key", "rabbitmq", "rabbitmq", 0o600),
        ("/etc/ssl/certs/rabbitmq.pem", "root", "root", 0o644),
    ],
)
def test_file_owners_and_modes(host, path, user, group, mode):
    f = host.file(path)
    assert f.exists
    assert (f.user, f.group, f.mode) == (user, group, mode)


def test_install_guard_removed(host):
    assert not host.file("/usr/sbin/policy-rc.d").exists


def test_guest_and_default_vhost_removed(host):
    users = {u["user"] for u in ctl_json(host, "list_users")}
    assert "guest" not in users
    assert users == set(EXPECTED_PERMISSIONS), f"unexpected users: {users}"
    vhosts = {v["name"] for v in ctl_json(host, "list_vhosts")}
    assert vhosts == set(APPS)


@pytest.mark.parametrize("user", sorted(EXPECTED_PERMISSIONS))
def test_permissions_are_exact(host, user):
    vhost, configure, write, read = EXPECTED_PERMISSIONS[user]
    perms = ctl_json(host, "list_user_permissions", user)
    assert perms == [{"vhost": vhost, "configure": configure, "write": write, "read": read}]


def test_no_plugin_enabled_by_default(host):
    # Management and x509 EXTERNAL are both off by default.
    assert host.check_output("rabbitmq-plugins -q list --enabled --minimal").strip() == ""


@pytest.mark.parametrize("vhost", sorted(APPS))
def test_app_queues_are_durable_and_bound(host, vhost):
    queues = {q["name"]: q
              for q in ctl_json(host, "list_queues", "-p", vhost, "name", "durable", "auto_delete")}
    exchanges = {e["name"]: e
                 for e in ctl_json(host, "list_exchanges", "-p", vhost, "name", "type", "durable")}
    bindings = ctl_json(host, "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key")
    for name in APPS[vhost]["queues"]:
        assert queues[name]["durable"] is True and queues[name]["auto_delete"] is False
        assert exchanges[name]["type"] == "direct" and exchanges[name]["durable"] is True
        assert {"source_name": name, "destination_name": name, "routing_key": name} in bindings


def test_config_checker_accepts_the_live_file(host):
    cmd = host.run("/usr/local/sbin/rabbitmq-conf-check /etc/rabbitmq/rabbitmq.conf")
    assert cmd.rc == 0, cmd.stderr


@pytest.mark.parametrize(
    "content,message",
    [
        ("listeners.tcp = none\nlistenrs.ssl.default = 5671\n", "unknown variable"),
        ("listeners.tcp = none\nssl_options.verify = verify_pear\n", "not a valid enum value"),
        ("listeners.tcp = = none\n", "listeners.tcp"),
        ("ssl_options.fail_if_no_peer_cert = maybe\n", "fail_if_no_peer_cert"),
    ],
)
def test_config_checker_rejects_bad_files(host, content, message):
    path = "/tmp/bad-rabbitmq.conf"
    host.run(f"printf %s {shlex.quote(content)} > {path}")
    cmd = host.run(f"/usr/local/sbin/rabbitmq-conf-check {path}")
    assert cmd.rc == 1
    assert message in cmd.stderr
