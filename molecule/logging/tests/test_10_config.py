"""What the roles wrote and started: listeners, modes, validation, journald."""

from __future__ import annotations

from conftest import CLIENT, SERVER, lab


def test_rsyslog_runs_and_its_configuration_validates():
    for name in (SERVER, CLIENT):
        host = lab(name)
        assert host.service("rsyslog").is_running, name
        assert host.service("rsyslog").is_enabled, name
        res = host.run("rsyslogd -N1")
        assert res.rc == 0, f"{name}: {res.stderr}"


def test_the_server_listens_on_6514_only_and_never_on_514():
    listeners = lab(SERVER).check_output("ss -Hltnu")
    ports = {line.split()[4].rsplit(":", 1)[1] for line in listeners.splitlines()
             if not line.split()[4].startswith("127.0.0.11:")}  # Docker's embedded DNS
    assert ports == {"6514"}, listeners
    assert "514" not in lab(CLIENT).check_output("ss -Hltnu | awk '{print $5}' | sed 's/.*://'").split()


def test_no_plain_syslog_input_and_no_imklog_is_loaded():
    for name in (SERVER, CLIENT):
        conf = lab(name).check_output("cat /etc/rsyslog.conf /etc/rsyslog.d/*.conf 2>/dev/null | grep -v '^\\s*#'")
        for module in ("imudp", "imtcp", "imptcp", "imklog"):
            assert module not in conf, f"{name} loads {module}"
        # Only the running daemon counts: Debian's stock config (before the role ran) loaded imklog.
        journal = lab(name).check_output(
            "journalctl --no-pager -o cat _PID=$(systemctl show -p MainPID --value rsyslog)")
        assert "imklog" not in journal, journal


def test_per_host_files_have_safe_modes():
    host = lab(SERVER)
    root = host.file("/var/log/remote")
    assert (root.user, root.group, root.mode) == ("root", "adm", 0o750)
    dirs = host.check_output("find /var/log/remote -mindepth 1 -maxdepth 1 -type d").split()
    assert dirs, "no per-host directory yet"
    # Named by the connection's source (reverse DNS in the lab network).
    assert any(d.rsplit("/", 1)[1].startswith(CLIENT) for d in dirs), dirs
    for directory in dirs:
        d = host.file(directory)
        assert (d.user, d.group, d.mode) == ("root", "adm", 0o750), directory
        f = host.file(directory + "/syslog.log")
        assert (f.user, f.group, f.mode) == ("root", "adm", 0o640), directory


def test_the_server_keeps_its_own_logs_locally_and_forwards_nowhere():
    conf = lab(SERVER).file("/etc/rsyslog.conf").content_string
    assert "omrelp" not in conf.split("#### Forwarding ####")[1].split("#### Local files ####")[0].replace(
        "# No log server", "")
    assert "target=" not in conf
    client_conf = lab(CLIENT).file("/etc/rsyslog.conf").content_string
    assert 'target="logging-server"' in client_conf
    assert 'windowSize="16"' in client_conf
    assert 'queue.saveOnShutdown="on"' in client_conf and 'action.resumeRetryCount="-1"' in client_conf


def test_journald_rate_limits_are_raised_and_syslog_socket_forwarding_is_off():
    for name in (SERVER, CLIENT):
        conf = lab(name).check_output("systemd-analyze cat-config systemd/journald.conf")
        assert "RateLimitBurst=50000" in conf and "ForwardToSyslog=no" in conf, name


def test_logrotate_configuration_is_valid():
    res = lab(SERVER).run("logrotate --debug /etc/logrotate.d/celery-kit-log-server")
    assert res.rc == 0, res.stderr
    assert "/var/log/remote/*/*.log" in res.stderr + res.stdout
