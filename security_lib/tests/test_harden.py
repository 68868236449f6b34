"""Fail-closed configuration: each unsafe setup raises a SecurityConfigError naming the fix."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from conftest import PKI, write_private
from kombu.connection import Connection
from kombu.serialization import enable_insecure_serializers

import security_lib
from security_lib import (
    ALLOW_ANY_SIGNER,
    BrokerTLSError,
    CertificateError,
    CertStoreError,
    FilePermissionError,
    KeyCertMismatchError,
    MissingFileError,
    PolicyError,
    SecurityConfigError,
    SerializerError,
)
from security_lib.certs import identity_of
from security_lib.settings import check_broker_connection, check_broker_connections, verify_applied

DAY = dt.timedelta(days=1)


def make_app(broker: str = "memory://") -> Celery:
    return Celery("t", broker=broker, set_as_current=False)


def harden(app: Celery, pki: PKI, **overrides: Any) -> security_lib.Hardening:
    kwargs: dict[str, Any] = {
        "key": pki.worker.key,
        "cert": pki.worker.cert,
        "cert_store": pki.store,
        "allowed_tasks": {"signer-client": ["kit.*"]},
        "allow_insecure_broker": True,
    }
    kwargs.update(overrides)
    return security_lib.harden(app, **kwargs)


def test_valid_configuration_is_applied(pki: PKI) -> None:
    app = make_app()
    result = harden(app, pki)
    conf = app.conf
    assert conf.task_serializer == "auth"
    assert conf.accept_content == ["auth"]
    assert conf.event_serializer == "auth"
    assert conf.result_serializer == "json"
    assert conf.result_accept_content == ["json"]  # explicit: no fallback to accept_content
    assert conf.security_digest == "sha256"
    assert conf.worker_enable_remote_control is False
    assert result.signer.common_name == "signer-worker"


def test_sign_results_uses_auth_for_results(pki: PKI) -> None:
    app = make_app()
    harden(app, pki, sign_results=True)
    assert app.conf.result_serializer == "auth"
    assert app.conf.result_accept_content == ["auth"]


def test_missing_key_file(pki: PKI, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    with pytest.raises(MissingFileError, match=r"nope\.key does not exist"):
        harden(make_app(), pki, key=missing)


def test_key_path_is_a_directory(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not a regular file"):
        harden(make_app(), pki, key=tmp_path)


def test_unreadable_cert(pki: PKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert = tmp_path / "c.pem"
    shutil.copy(pki.worker.cert, cert)
    cert.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate what an unprivileged user sees
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if Path(p) == cert else real_access(p, mode)
        )
    with pytest.raises(MissingFileError, match="not readable"):
        harden(make_app(), pki, cert=cert)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_readable_by_others(pki: PKI, tmp_path: Path, mode: int) -> None:
    key = write_private(tmp_path / "k.key", pki.worker.key.read_bytes(), mode)
    with pytest.raises(FilePermissionError, match=rf"mode {mode:04o}.*chmod 0600"):
        harden(make_app(), pki, key=key)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_key_owned_by_another_user(pki: PKI, tmp_path: Path) -> None:
    key = write_private(tmp_path / "k.key", pki.worker.key.read_bytes())
    os.chown(key, 4242, 4242)
    with pytest.raises(FilePermissionError, match="owned by uid 4242"):
        harden(make_app(), pki, key=key)


def test_key_and_cert_do_not_match(pki: PKI) -> None:
    with pytest.raises(KeyCertMismatchError, match="does not match certificate"):
        harden(make_app(), pki, key=pki.client.key)


def test_expired_cert(pki: PKI) -> None:
    old = pki.ca.issue("signer-old", not_before=-10 * DAY, not_after=-DAY)
    with pytest.raises(CertificateError, match="expired on"):
        harden(make_app(), pki, key=old.key, cert=old.cert)


def test_not_yet_valid_cert(pki: PKI) -> None:
    early = pki.ca.issue("signer-early", not_before=2 * DAY, not_after=30 * DAY)
    with pytest.raises(CertificateError, match="not valid before"):
        harden(make_app(), pki, key=early.key, cert=early.cert)


def test_cert_expiring_soon_warns(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    soon = pki.ca.issue("signer-soon", not_after=5 * DAY)
    store = pki.new_store("soon", soon, pki.client)
    caplog.set_level("WARNING", logger="security_lib")
    result = harden(make_app(), pki, key=soon.key, cert=soon.cert, cert_store=store)
    assert any("expires in 4 days" in w or "expires in 5 days" in w for w in result.warnings)
    assert "expires in" in caplog.text


def test_empty_cert_store(pki: PKI, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CertStoreError, match="no certificate matches"):
        harden(make_app(), pki, cert_store=empty)


def test_missing_cert_store(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(CertStoreError, match="neither a directory nor a glob"):
        harden(make_app(), pki, cert_store=tmp_path / "absent")


def test_glob_matching_nothing(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(CertStoreError, match="no certificate matches"):
        harden(make_app(), pki, cert_store=str(tmp_path / "*.pem"))


def test_cert_store_with_expired_cert(pki: PKI) -> None:
    old = pki.ca.issue("signer-old2", not_before=-10 * DAY, not_after=-DAY)
    store = pki.new_store("with-expired", pki.worker, pki.client, old)
    with pytest.raises(CertStoreError, match=r"signer-old2\.pem expired on"):
        harden(make_app(), pki, cert_store=store)


def test_cert_store_with_garbage(pki: PKI) -> None:
    store = pki.new_store("garbage", pki.worker)
    (store / "notes.txt").write_text("hello")
    with pytest.raises(CertStoreError, match=r"notes\.txt is not a PEM certificate"):
        harden(make_app(), pki, cert_store=store)


def test_plain_amqp_broker_is_refused(pki: PKI) -> None:
    app = make_app("amqp://guest@rabbit:5672//")
    with pytest.raises(BrokerTLSError, match=r"do not use amqps://.*allow_insecure_broker"):
        harden(app, pki, allow_insecure_broker=False)
    assert app.conf.task_serializer != "auth"  # nothing applied on failure


def test_amqps_without_client_cert_is_refused(pki: PKI) -> None:
    app = make_app("amqps://rabbit:5671//")
    with pytest.raises(BrokerTLSError, match="broker_ca, broker_cert, broker_key"):
        harden(app, pki, allow_insecure_broker=False)


def test_amqps_with_tls_material(pki: PKI) -> None:
    app = make_app("amqps://kit-broker:5671/kit")
    harden(
        app,
        pki,
        allow_insecure_broker=False,
        broker_ca=pki.ca.pem,
        broker_cert=pki.client.cert,
        broker_key=pki.client.key,
    )
    ssl_opts = app.conf.broker_use_ssl
    assert ssl_opts["cert_reqs"] == 2  # ssl.CERT_REQUIRED
    assert ssl_opts["server_hostname"] == "kit-broker"
    assert ssl_opts["ca_certs"] == str(pki.ca.pem)


def test_key_folder_writable_by_others_is_refused(pki: PKI, tmp_path: Path) -> None:
    folder = tmp_path / "signing"
    folder.mkdir()
    key = folder / "signer.key"
    key.write_bytes(pki.worker.key.read_bytes())
    key.chmod(0o600)
    folder.chmod(0o777)
    app = Celery("keydir", broker="memory://", set_as_current=False)
    kwargs: dict[str, Any] = {
        "key": key,
        "cert": pki.worker.cert,
        "cert_store": pki.store,
        "allowed_tasks": {"signer-worker": ["x"]},
        "allow_insecure_broker": True,
    }
    with pytest.raises(FilePermissionError, match=r"folder .* mode 0777.*chmod go-w"):
        security_lib.harden(app, **kwargs)
    folder.chmod(0o700)  # the positive twin
    security_lib.harden(app, **kwargs)


def test_broker_key_mode_is_checked(pki: PKI, tmp_path: Path) -> None:
    key = write_private(tmp_path / "b.key", pki.client.key.read_bytes(), 0o644)
    app = make_app("amqps://kit-broker:5671/kit")
    with pytest.raises(FilePermissionError, match="broker_key"):
        harden(app, pki, broker_ca=pki.ca.pem, broker_cert=pki.client.cert, broker_key=key)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("accept_content", ["json", "pickle"]),
        ("result_accept_content", ["application/x-python-serialize"]),
        ("task_serializer", "pickle"),
        ("result_serializer", "yaml"),
    ],
)
def test_unsafe_serializer_requested(pki: PKI, setting: str, value: Any) -> None:
    app = make_app()
    app.conf[setting] = value
    with pytest.raises(SerializerError, match=rf"{setting}.*can execute code"):
        harden(app, pki)


def test_unsafe_serializer_enabled_after_harden_stops_worker(pki: PKI) -> None:
    app = make_app()
    harden(app, pki)
    verify_applied(app)
    app.conf.accept_content = ["auth", "pickle"]
    with pytest.raises(SerializerError, match="accept_content"):
        verify_applied(app)
    app.conf.accept_content = ["auth"]
    enable_insecure_serializers(["pickle"])  # type: ignore[no-untyped-call]
    try:
        with pytest.raises(SerializerError, match="pickle decoding is enabled"):
            verify_applied(app)
    finally:
        harden(app, pki)  # setup_security disables pickle again
    verify_applied(app)


def test_allowlist_none_is_refused(pki: PKI) -> None:
    with pytest.raises(PolicyError, match="ALLOW_ANY_SIGNER"):
        harden(make_app(), pki, allowed_tasks=None)


def test_allowlist_string_instead_of_list(pki: PKI) -> None:
    with pytest.raises(PolicyError, match="a list, not a string"):
        harden(make_app(), pki, allowed_tasks={"signer-client": "kit.*"})


def test_allow_any_signer_warns(pki: PKI) -> None:
    result = harden(make_app(), pki, allowed_tasks=ALLOW_ANY_SIGNER)
    assert any("ALLOW_ANY_SIGNER" in w for w in result.warnings)


def test_weak_digest_is_refused(pki: PKI) -> None:
    with pytest.raises(SecurityConfigError, match="sha256 or stronger"):
        harden(make_app(), pki, digest="sha1")


def test_error_names_setting_and_fix(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(SecurityConfigError) as info:
        harden(make_app(), pki, key=tmp_path / "x.key")
    assert info.value.setting.startswith("key")
    assert "Fix:" in str(info.value)


def test_publish_fails_closed_if_auth_serializer_was_replaced(pki: PKI) -> None:
    app = make_app()
    harden(app, pki)
    app.setup_security()  # Celery's stock serializer replaces the kit's
    try:
        with pytest.raises(SecurityConfigError, match="setup_security"):
            app.send_task("kit.anything")
    finally:
        harden(app, pki)


@pytest.mark.parametrize("query", ["?ssl=1", "?ssl_cert_reqs=0", "?ssl=true&x=1"])
def test_url_query_that_overrides_tls_options_is_refused(pki: PKI, query: str) -> None:
    app = make_app(f"amqps://kit-broker:5671/kit{query}")
    with pytest.raises(BrokerTLSError, match=r"broker_url: .*query.*ssl"):
        harden(app, pki, **tls_args(pki))
    assert app.conf.task_serializer != "auth"  # nothing applied


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("broker_url", "amqps://kit-broker:5671/kit;amqp://kit-broker-2:5672/kit"),
        ("broker_url", "amqps://kit-broker:5671/kit;amqps://kit-broker-2:5671/kit?ssl=1"),
        ("broker_read_url", "memory://"),
        ("broker_write_url", "amqp://kit-broker:5672/kit"),
    ],
)
def test_every_connection_celery_may_open_is_checked(pki: PKI, setting: str, value: str) -> None:
    """A failover URL, the read URL and the write URL: each is a connection Celery opens."""
    app = make_app("amqps://kit-broker:5671/kit")
    app.conf[setting] = value
    with pytest.raises(BrokerTLSError, match="broker_"):
        harden(app, pki, **tls_args(pki))
    assert app.conf.task_serializer != "auth"  # nothing applied


def test_failover_and_read_write_urls_over_tls_pass(pki: PKI) -> None:
    """The positive twin: every URL amqps:// with the kit's TLS options."""
    app = make_app("amqps://kit-broker:5671/kit;amqps://kit-broker-2:5671/kit")
    app.conf.broker_read_url = "amqps://kit-broker:5671/kit"
    app.conf.broker_write_url = "amqps://kit-broker:5671/kit"
    harden(app, pki, **tls_args(pki))
    assert app.conf.task_serializer == "auth"


class _PerNodeConnection(Connection):
    """As the kit's config module in a cluster: each connection checks its own node's name."""

    def _init_params(self, **params: Any) -> None:  # type: ignore[override] # kombu passes keywords
        if isinstance(params.get("ssl"), dict):
            params["ssl"] = dict(params["ssl"], server_hostname=None)
        super()._init_params(**params)  # type: ignore[no-untyped-call]


def test_failover_connections_that_check_each_nodes_own_name_pass(pki: PKI) -> None:
    """A cluster: each connection checks the node it dials (None: kombu fills in its host)."""
    app = make_app("amqps://kit-broker:5671/kit;amqps://kit-broker-2:5671/kit")
    expected = harden(app, pki, **tls_args(pki)).broker_ssl
    assert expected is not None
    app.amqp.Connection = _PerNodeConnection
    check_broker_connections(app, expected)
    second = app.connection_for_write("amqps://kit-broker-2:5671/kit")
    second.ssl["server_hostname"] = "kit-broker-2"  # as kombu sets it when it connects
    check_broker_connection(second, expected)


def test_a_connection_checking_another_nodes_name_is_refused(pki: PKI) -> None:
    """The twin: a name neither configured nor the dialled node's is a changed option."""
    app = make_app("amqps://kit-broker:5671/kit;amqps://kit-broker-2:5671/kit")
    expected = harden(app, pki, **tls_args(pki)).broker_ssl
    assert expected is not None
    conn = app.connection_for_write("amqps://kit-broker-2:5671/kit")
    conn.ssl = dict(conn.ssl, server_hostname="elsewhere")
    with pytest.raises(BrokerTLSError, match=r"server_hostname"):
        check_broker_connection(conn, expected)


def tls_args(pki: PKI) -> dict[str, Any]:
    return {
        "allow_insecure_broker": False,
        "broker_ca": pki.ca.pem,
        "broker_cert": pki.client.cert,
        "broker_key": pki.client.key,
    }


def test_two_store_certificates_with_one_cn_are_refused(pki: PKI) -> None:
    # signer-client from the kit CA and a "signer-client" from another CA.
    store = pki.new_store("dup-cn", pki.worker, pki.client, pki.rogue)
    with pytest.raises(CertStoreError, match="same CN 'signer-client'"):
        harden(make_app(), pki, cert_store=store)
    harden(make_app(), pki, cert_store=pki.new_store("one-cn", pki.worker, pki.client))


def test_group_writable_store_directory_is_refused(pki: PKI) -> None:
    store = pki.new_store("loose", pki.worker, pki.client)
    store.chmod(0o775)
    with pytest.raises(CertStoreError, match="writable by group/others"):
        harden(make_app(), pki, cert_store=store)
    store.chmod(0o755)
    harden(make_app(), pki, cert_store=store)


def test_store_symlink_into_a_writable_directory_is_refused(pki: PKI, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    target = shared / "planted.pem"
    target.write_bytes(pki.other.cert.read_bytes())
    store = pki.new_store("linked", pki.worker, pki.client)
    (store / "planted.pem").symlink_to(target)
    with pytest.raises(CertStoreError, match="writable by group/others"):
        harden(make_app(), pki, cert_store=store)
    # the positive twin: the same symlink into a directory only its owner can write
    shared.chmod(0o755)
    harden(make_app(), pki, cert_store=store)


@pytest.mark.parametrize("setting", ["task_compression", "result_compression"])
def test_compression_settings_are_refused(pki: PKI, setting: str) -> None:
    """Workers refuse compressed messages (bombs): a producer must not send them."""
    app = make_app()
    app.conf[setting] = "gzip"
    with pytest.raises(SerializerError, match=setting):
        harden(app, pki)
    assert app.conf.task_serializer != "auth"  # nothing applied
    app.conf[setting] = None  # the positive twin
    harden(app, pki)
    assert app.conf.task_serializer == "auth"


def test_public_api_is_what_apps_need() -> None:
    """Pinned: a new export is a decision (README "The public API is ...")."""
    assert sorted(security_lib.__all__) == sorted(
        [
            "harden",
            "Policy",
            "ALLOW_ANY_SIGNER",
            "Hardening",
            "REASONS",
            "REJECT_PREFIX",
            "SecurityConfigError",
            "BrokerTLSError",
            "CertStoreError",
            "CertificateError",
            "FilePermissionError",
            "KeyCertMismatchError",
            "MissingFileError",
            "PolicyError",
            "SerializerError",
        ]
    )


def test_second_harden_with_another_identity_is_refused(pki: PKI) -> None:
    first = make_app()
    harden(first, pki)
    second = make_app()
    with pytest.raises(SecurityConfigError, match=r"already hardened with another signing"):
        harden(second, pki, key=pki.client.key, cert=pki.client.cert)
    assert second.conf.task_serializer != "auth"  # nothing applied
    # the positive twin: the same identity for another app (other allowlist) is fine
    harden(second, pki, allowed_tasks={"signer-client": ["other.*"]})


def test_policy_object_is_the_keyword_form(pki: PKI) -> None:
    allowed = {"signer-client": ["kit.safe"]}
    policy = security_lib.Policy(allowed_tasks=allowed, replay_window=120, clock_skew=10)
    allowed["signer-client"].append("kit.dangerous")  # a later edit changes nothing
    app = make_app()
    result = security_lib.harden(
        app,
        key=pki.worker.key,
        cert=pki.worker.cert,
        cert_store=pki.store,
        allow_insecure_broker=True,
        policy=policy,
    )
    assert result.replay_window == 120
    assert result.clock_skew == 10
    client = identity_of(pki.client.certificate)
    assert result.policy.allows(client, "kit.safe")
    assert not result.policy.allows(client, "kit.dangerous")
    with pytest.raises(AttributeError):
        policy.replay_window = 1  # type: ignore[misc]  # frozen


def test_policy_and_keywords_together_are_refused(pki: PKI) -> None:
    app = make_app()
    with pytest.raises(PolicyError, match=r"policy= given together with the keyword\(s\) replay"):
        security_lib.harden(
            app,
            key=pki.worker.key,
            cert=pki.worker.cert,
            cert_store=pki.store,
            allow_insecure_broker=True,
            policy=security_lib.Policy(allowed_tasks={"signer-client": ["kit.safe"]}),
            replay_window=60,
        )
    assert app.conf.task_serializer != "auth"


def test_policy_values_are_checked_like_keywords(pki: PKI) -> None:
    with pytest.raises(PolicyError, match="allowed_tasks"):
        security_lib.harden(
            make_app(),
            key=pki.worker.key,
            cert=pki.worker.cert,
            cert_store=pki.store,
            allow_insecure_broker=True,
            policy=security_lib.Policy(allowed_tasks={"signer-client": "kit.*"}),
        )


def test_store_certificate_from_another_ca_is_refused(pki: PKI) -> None:
    mixed = pki.new_store("mixed-ca", pki.worker, pki.rogue)
    with pytest.raises(CertStoreError, match=r"rogue.pem .* not issued by the CA"):
        harden(make_app(), pki, cert_store=mixed, cert_store_ca=pki.ca.pem)
    # the positive twin: every certificate of the kit's store comes from the CA
    harden(make_app(), pki, cert_store_ca=pki.ca.pem)
