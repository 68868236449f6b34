"""Attack tests against the real broker, from the client (kit certificates)
and from the outsider (no kit certificate, a foreign CA). Every defence has a
positive control next to it, so a refusal cannot come from a broken probe."""

import json
import os
import shlex
import uuid

import pytest
import testinfra
from kit_testlib import lab

testinfra_hosts = ["rmq-client"]

INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
BROKER = "rmq-broker"
CA = "/etc/ssl/certs/celery-kit-ca.pem"
CERT = "/etc/ssl/certs/lab-client.pem"
KEY = "/etc/ssl/private/lab-client.key"
PASSWORDS = "/root/lab-passwords"
ACCESS_REFUSED = 403
NOT_ALLOWED = 530


def lab_host(name):
    # docker exec: many times faster than one Ansible call per probe.
    return lab(name)


@pytest.fixture(scope="module")
def client():
    return lab_host("rmq-client")


@pytest.fixture(scope="module")
def outsider():
    return lab_host("rmq-outsider")


def probe(host, *args):
    cmd = host.run("amqp-probe " + " ".join(shlex.quote(str(a)) for a in args))
    assert cmd.rc == 0, cmd.stderr
    return json.loads(cmd.stdout)


def tls(host, *extra, port=5671):
    return probe(host, "tls", "--host", BROKER, "--port", port, *extra)


def amqp(host, user, *ops, vhost="/demo", credentials_of=None):
    return probe(host, "amqp", "--host", BROKER, "--ca", CA, "--cert", CERT, "--key", KEY,
                 "--user", user, "--password-file", f"{PASSWORDS}/{credentials_of or user}",
                 "--vhost", vhost, *ops)


def op_results(result):
    assert result["connect"] == "ok", result
    return result["ops"]


# --- transport ------------------------------------------------------------

@pytest.mark.parametrize("port", [5672, 4369, 25672, 15672, 15671])
@pytest.mark.parametrize("who", ["client", "outsider"])
def test_only_amqps_is_reachable(request, who, port):
    """Plain AMQP, epmd, distribution and management are closed from the network."""
    host = request.getfixturevalue(who)
    result = tls(host, port=port)
    assert result["result"] == "refused" and result["stage"] == "tcp", result
    assert result["reason"] == "ConnectionRefusedError", result


@pytest.mark.parametrize("version", ["tls1.3", "tls1.2"])
def test_mutual_tls_with_kit_certificate_is_accepted(client, version):
    result = tls(client, "--ca", CA, "--cert", CERT, "--key", KEY, "--version", version)
    assert result["result"] == "accepted", result
    assert result["version"] == {"tls1.3": "TLSv1.3", "tls1.2": "TLSv1.2"}[version]


def test_default_negotiation_is_tls13(client):
    result = tls(client, "--ca", CA, "--cert", CERT, "--key", KEY)
    assert result["result"] == "accepted" and result["version"] == "TLSv1.3", result


@pytest.mark.parametrize("version", ["tls1.3", "tls1.2"])
@pytest.mark.parametrize("who", ["client", "outsider"])
def test_tls_without_client_certificate_is_refused(request, who, version):
    # Under TLS 1.3 the handshake "completes" on the client side and the
    # refusal arrives as an alert when data is read: the probe reads it.
    result = tls(request.getfixturevalue(who), "--version", version)
    assert result["result"] == "refused" and result["stage"] == "tls", result
    # The alert usually arrives; under load the broker may close first (EOF).
    assert result["reason"] in {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE",
                                "SSLEOFError", "UNEXPECTED_EOF_WHILE_READING", "ConnectionResetError"}, result


def test_client_certificate_from_another_ca_is_refused(outsider):
    result = tls(outsider, "--cert", "/root/foreign/client.pem", "--key", "/root/foreign/client.key")
    assert result["result"] == "refused" and result["stage"] == "tls", result
    assert result["reason"] in {"TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLEOFError",
                                "UNEXPECTED_EOF_WHILE_READING", "ConnectionResetError"}, result


@pytest.mark.parametrize("version", ["tls1.0", "tls1.1"])
def test_old_tls_versions_are_refused_by_the_broker(client, version):
    result = tls(client, "--ca", CA, "--cert", CERT, "--key", KEY, "--version", version)
    assert result["result"] == "refused" and result["stage"] == "tls", result
    # A protocol-version alert comes from the broker; "no protocols
    # available" would mean the client refused and the test proved nothing.
    assert result["reason"] in {"TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"}, result
    assert "NO_PROTOCOLS_AVAILABLE" not in result["error"]


@pytest.mark.parametrize("cipher", ["AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA",
                                    "DHE-RSA-AES128-GCM-SHA256"])
def test_weak_or_non_forward_secret_ciphers_are_refused(client, cipher):
    result = tls(client, "--ca", CA, "--cert", CERT, "--key", KEY, "--ciphers", cipher)
    assert result["result"] == "refused" and result["stage"] == "tls", result


def test_strong_tls12_cipher_is_accepted(client):
    result = tls(client, "--ca", CA, "--cert", CERT, "--key", KEY, "--ciphers", "ECDHE-RSA-AES256-GCM-SHA384")
    assert result["result"] == "accepted", result


# --- authentication -------------------------------------------------------

def test_guest_cannot_log_in(client):
    result = amqp(client, "guest", vhost="/demo", credentials_of="guest")
    assert result["connect"] == "refused", result
    assert result["code"] == ACCESS_REFUSED or "ACCESS_REFUSED" in result["error"], result


def test_wrong_password_is_refused(client):
    result = amqp(client, "demo-worker", credentials_of="demo-producer")
    assert result["connect"] == "refused", result


@pytest.mark.parametrize("user,vhost", [("demo-worker", "/billing"), ("billing-producer", "/demo"),
                                        ("demo-monitor", "/billing")])
def test_users_cannot_open_another_apps_vhost(client, user, vhost):
    result = amqp(client, user, vhost=vhost)
    assert result["connect"] == "refused", result
    assert result["code"] == NOT_ALLOWED or "NOT_ALLOWED" in result["error"], result


# --- authorisation (demo app: results over rpc://) ------------------------

def test_producer_publishes_and_worker_consumes(client):
    body = f"task-{uuid.uuid4()}"
    published = op_results(amqp(client, "demo-producer", f"publish:celery:celery:{body}"))
    assert published[0]["ok"], published
    consumed = op_results(amqp(client, "demo-worker", "consume:celery"))
    assert consumed[0]["ok"] and consumed[0]["body"] == body, consumed


@pytest.mark.parametrize("op", [
    "consume:celery",              # cannot read the worker queue
    "get:celery",
    "purge:celery",
    "declare:evil",                # cannot configure
    "delete:celery",
    "declare_exchange:evil",
    "publish::celery",             # no default exchange: cannot bypass the app exchange
    "publish:celery.pidbox:x",     # no remote control
    "publish:celeryev:worker.x",   # no forged events
    "bind:celery:amq.direct:steal",
])
def test_producer_cannot_consume_configure_or_publish_elsewhere(client, op):
    (res,) = op_results(amqp(client, "demo-producer", op))
    assert not res["ok"] and res["code"] == ACCESS_REFUSED, res


def test_producer_may_declare_and_read_its_rpc_reply_queue(client):
    reply = str(uuid.uuid4())
    declared, got = op_results(amqp(client, "demo-producer", f"declare:{reply}", f"get:{reply}"))
    assert declared["ok"] and got["ok"], (declared, got)


@pytest.mark.parametrize("op", [
    "publish:celery:celery",       # cannot forge tasks through the app exchange
    "declare:evil",
    "delete:celery",
    "publish:celery.pidbox:x",
    "declare_exchange:celeryev",   # no events in the demo app
])
def test_worker_cannot_configure_or_forge(client, op):
    (res,) = op_results(amqp(client, "demo-worker", op))
    assert not res["ok"] and res["code"] == ACCESS_REFUSED, res


def test_worker_may_publish_rpc_results(client):
    reply = str(uuid.uuid4())
    (declared,) = op_results(amqp(client, "demo-producer", f"declare:{reply}"))
    assert declared["ok"]
    (published,) = op_results(amqp(client, "demo-worker", f"publish::{reply}:result"))
    assert published["ok"], published


@pytest.mark.parametrize("op", ["publish:celery:celery", "publish::celery", "consume:celery", "get:celery",
                                "declare:evil", "delete:celery", "purge:celery"])
def test_monitor_is_read_only(client, op):
    (res,) = op_results(amqp(client, "demo-monitor", op))
    assert not res["ok"] and res["code"] == ACCESS_REFUSED, res


def test_monitor_can_read_queue_depth(client):
    (res,) = op_results(amqp(client, "demo-monitor", "passive:celery"))
    assert res["ok"] and isinstance(res["messages"], int), res


# --- authorisation (billing app: no results, events on) -------------------

def test_billing_without_rpc_denies_default_exchange_and_reply_queues(client):
    reply = str(uuid.uuid4())
    (worker_default,) = op_results(amqp(client, "billing-worker", "publish::billing", vhost="/billing"))
    (producer_reply,) = op_results(amqp(client, "billing-producer", f"declare:{reply}", vhost="/billing"))
    assert not worker_default["ok"] and worker_default["code"] == ACCESS_REFUSED, worker_default
    assert not producer_reply["ok"] and producer_reply["code"] == ACCESS_REFUSED, producer_reply


def test_billing_worker_may_send_events_only_to_celeryev(client):
    declared, published, other = op_results(amqp(
        client, "billing-worker", "declare_exchange:celeryev", "publish:celeryev:worker.heartbeat",
        "declare_exchange:celeryev2", vhost="/billing"))
    assert declared["ok"] and published["ok"], (declared, published)
    assert not other["ok"] and other["code"] == ACCESS_REFUSED, other


def test_billing_round_trip_on_both_queues(client):
    for queue in ("billing", "billing.priority"):
        body = f"{queue}-{uuid.uuid4()}"
        (pub,) = op_results(amqp(client, "billing-producer", f"publish:{queue}:{queue}:{body}",
                                 vhost="/billing"))
        (got,) = op_results(amqp(client, "billing-worker", f"get:{queue}", vhost="/billing"))
        assert pub["ok"] and got["ok"] and got["body"] == body, (pub, got)


# --- password rotation (community.rabbitmq#184 on Debian 12 / 3.10.8) -----

def test_password_change_through_the_module_takes_effect(client):
    """The role relies on rabbitmq_user(update_password=always) to rotate
    passwords; prove on this broker that a rotation really changes the
    password, with a throwaway user so the role's users stay untouched."""
    # host.ansible() runs a module: only the Ansible backend offers it.
    broker = testinfra.get_host(f"ansible://{BROKER}?ansible_inventory={INVENTORY}")
    user = "rotation-probe"
    old, new = f"Old{uuid.uuid4().hex}", f"New{uuid.uuid4().hex}"

    def ensure(password, state="present"):
        args = {"user": user, "password": password, "update_password": "always", "node": "rabbit@localhost",
                "permissions": [{"vhost": "/demo", "configure_priv": "^$", "write_priv": "^$",
                                 "read_priv": "^$"}],
                "state": state}
        return broker.ansible("community.rabbitmq.rabbitmq_user", json.dumps(args), check=False)

    def login(password):
        path = f"{PASSWORDS}/{user}"
        client.run(f"install -m 0600 /dev/null {path} && printf %s {shlex.quote(password)} > {path}")
        return amqp(client, user)["connect"]

    try:
        assert ensure(old)["changed"]
        assert login(old) == "ok"
        assert ensure(new)["changed"], "rotation reported no change"
        assert login(new) == "ok", "new password refused after rotation"
        assert login(old) == "refused", "old password still accepted after rotation"
        assert not ensure(new)["changed"], "unchanged password reported as changed"
    finally:
        ensure(new, state="absent")
        client.run(f"rm -f {PASSWORDS}/{user}")
