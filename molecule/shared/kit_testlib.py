"""Test helpers shared by every molecule scenario of the kit.

Each scenario's tests/conftest.py puts this directory on sys.path (molecule
runs pytest from the scenario's tests directory); tests import from here what
used to be copied per scenario: host getters, polling with a deadline,
running playbooks with readable output, "bad input is refused and nothing
changed", one TLS handshake probe and one foreign-CA builder.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import shlex
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import testinfra
import yaml

PROJECT = pathlib.Path(__file__).resolve().parents[2]
ROLES = PROJECT / "roles"
T = TypeVar("T")

# One quoting rule for commands run in the lab (two hand-made quote()
# helpers escaped differently before).
quote = shlex.quote


# --- hosts ------------------------------------------------------------------

@functools.cache
def lab(name: str) -> testinfra.host.Host:
    """A lab container by its platform name (= container name).

    docker exec is many times faster than one Ansible call per command and
    runs as root, as the Ansible backend did with celery_kit_become=false.
    """
    return testinfra.get_host(f"docker://{name}")


@functools.cache
def address(name: str) -> str:
    """The container's IPv4 address on its scenario network."""
    out = lab(name).check_output("ip -4 -o addr show dev eth0")
    return out.split()[3].split("/")[0]


# --- polling ----------------------------------------------------------------

def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 1.0) -> T:
    """Call predicate until it returns something truthy or the deadline passes; return its last value.

    The predicate is always called once more at (or after) the deadline, so a
    slow machine does not turn a late success into a failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# --- playbooks --------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


@dataclasses.dataclass
class PlaybookRun:
    """One ansible-playbook run: exit code, output without colours, the recap per host."""

    argv: list[str]
    returncode: int
    output: str

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        part = self.output.rsplit("PLAY RECAP", 1)
        if len(part) < 2:
            return {}
        return {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
                for m in _RECAP.finditer(part[1])}

    def said(self, text: str) -> bool:
        """Whether the output says text (Ansible wraps and indents long messages)."""
        return squash(text) in squash(self.output)

    def changed(self, host: str) -> int:
        recap = self.recap
        assert host in recap, f"{host} is not in the recap of {' '.join(self.argv)}:\n{self.tail()}"
        return recap[host]["changed"]

    def tail(self, chars: int = 6000) -> str:
        return self.output[-chars:]


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def ansible_env(**extra: str) -> dict[str, str]:
    """The environment for an ansible-playbook run from a test: molecule's, with colours off.

    molecule exports ANSIBLE_FORCE_COLOR, and colour codes split the recap;
    the kit's roles come from the checkout under test.
    """
    env = dict(os.environ)
    cfg = pathlib.Path(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")) / "ansible.cfg"
    if cfg.exists():
        env["ANSIBLE_CONFIG"] = str(cfg)
    env.update(
        ANSIBLE_ROLES_PATH=str(ROLES),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_STDOUT_CALLBACK="default",
    )
    env.update(extra)
    return env


def playbook(path: str | os.PathLike[str], *args: str, timeout: float = 1200, **env: str) -> PlaybookRun:
    """Run a playbook against the scenario's inventory; print the command and the output's tail."""
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(path), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=PROJECT, env=ansible_env(**env))
    run = PlaybookRun(argv, proc.returncode, _ANSI.sub("", proc.stdout + proc.stderr))
    print(f"$ {' '.join(shlex.quote(a) for a in argv)}\nrc={run.returncode}\n{run.tail()}")
    return run


def assert_refused_and_unchanged(
    run_bad: Callable[[], PlaybookRun],
    message: str | Iterable[str],
    hosts: str | Iterable[str],
    fingerprint: Callable[[], Any],
) -> PlaybookRun:
    """Bad input: the run fails, says why, every host's recap shows a failure and no change, the state is the same.

    ``message`` is the expected text (or several acceptable ones); it must not
    be a task name, since task names are printed on every run.
    """
    before = fingerprint()
    run = run_bad()
    assert run.returncode != 0, run.tail()
    messages = [message] if isinstance(message, str) else list(message)
    assert any(run.said(m) for m in messages), f"none of {messages!r} in:\n{run.tail()}"
    for host in [hosts] if isinstance(hosts, str) else list(hosts):
        assert run.changed(host) == 0, f"{host} changed:\n{run.tail()}"
        assert run.recap[host]["failed"] >= 1, f"{host} did not fail:\n{run.tail()}"
    assert fingerprint() == before
    return run


# --- preflight cases in one run ---------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    """One set of variables for a role's argument checks and what must come of it.

    ``refused`` is the text the refusal must contain, or None when the case
    must be accepted (the positive twin that shows the probe can see success).
    """

    name: str
    role: str
    host: str
    variables: Mapping[str, Any]
    refused: str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class Verdict:
    accepted: bool
    message: str


# A failed loop (e.g. an assert per list entry) says only "One or more items
# failed"; the entries' own messages are what the operator reads.
_FAILURE_TEXT = (
    "{{ ([ansible_failed_result.msg | default('') | string]"
    " + (ansible_failed_result.results | default([]) | selectattr('failed', 'defined') | selectattr('failed')"
    " | map(attribute='msg', default='') | map('string') | list)) | join(' | ') }}"
)
_VERDICT = re.compile(r"^KIT-CASE (\S+) (accepted|refused)(?:: )?(.*)$", re.DOTALL)


_SPEC_KEYS = {"type", "elements", "choices", "options"}


def _strip_spec(options: Mapping[str, Any], top: bool) -> dict[str, Any]:
    """The parts of an argument spec that judge a given value.

    Role defaults are not loaded before the check (Ansible validates inside
    the role), so spec defaults (some are prose) and top-level ``required``
    are dropped: what a case and the inventory set is checked, the rest is
    the role's defaults. Descriptions go too: they would be templated.
    """
    keys = _SPEC_KEYS if top else _SPEC_KEYS | {"required"}
    out: dict[str, Any] = {}
    for name, option in options.items():
        kept = {k: v for k, v in option.items() if k in keys}
        if "options" in kept:
            kept["options"] = _strip_spec(kept["options"], top=False)
        out[name] = kept
    return out


@functools.cache
def _checkable_spec(role: str) -> dict[str, Any]:
    data = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    return _strip_spec(data["argument_specs"]["main"].get("options") or {}, top=True)


def run_preflight_cases(cases: Iterable[Case], gather: Mapping[str, str] | None = None) -> dict[str, Verdict]:
    """Run many independent cases of roles' argument checks in one ansible-playbook run.

    Each case validates the role's argument spec (the ``main`` entry point,
    as a real run does, see _strip_spec) and includes only ``tasks_from: preflight``, inside a
    block whose rescue records the refusal, so one refused case does not stop
    the next. Facts are gathered only where asked (``gather``: host pattern
    -> gather_subset, e.g. the firewall's checks read addresses from facts).
    The run itself must finish without failures and change nothing.
    """
    cases = list(cases)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), f"duplicate case names: {names}"
    plays: list[dict[str, Any]] = [
        {"name": f"Gather facts of {pattern}", "hosts": pattern, "gather_facts": True,
         "gather_subset": subset.split(","), "tasks": []}
        for pattern, subset in (gather or {}).items()
    ]
    for case in cases:
        plays.append({
            "name": f"Case {case.name}",
            "hosts": case.host,
            "gather_facts": False,
            "tasks": [{
                "name": f"Check case {case.name}",
                "vars": dict(case.variables),
                "block": [
                    {"name": "Validate the role's argument spec",
                     "ansible.builtin.validate_argument_spec": {"argument_spec": _checkable_spec(case.role)}},
                    {"name": "Run the role's preflight",
                     "ansible.builtin.include_role": {"name": case.role, "tasks_from": "preflight"}},
                    {"name": "Report acceptance", "ansible.builtin.debug": {"msg": f"KIT-CASE {case.name} accepted"}},
                ],
                "rescue": [
                    {"name": "Report refusal", "ansible.builtin.debug": {
                        "msg": f"KIT-CASE {case.name} refused: {_FAILURE_TEXT}"}},
                ],
            }],
        })
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "preflight-cases.yml"
        path.write_text(json.dumps(plays, indent=1))
        run = playbook(path, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    assert run.returncode == 0, run.tail()
    # Other callbacks (profile_tasks) may print lines around the JSON document.
    start = 0 if run.output.startswith("{") else run.output.index("\n{") + 1
    data, _ = json.JSONDecoder().raw_decode(run.output, start)
    verdicts: dict[str, Verdict] = {}
    for play in data["plays"]:
        for task in play["tasks"]:
            for result in task["hosts"].values():
                match = _VERDICT.match(str(result.get("msg", "")))
                if match:
                    verdicts[match[1]] = Verdict(match[2] == "accepted", match[3])
    for host, stats in data["stats"].items():
        assert stats["changed"] == 0, f"the preflight run changed {host}: {stats}"
    missing = set(names) - set(verdicts)
    assert not missing, f"no verdict for {sorted(missing)}:\n{run.tail()}"
    return verdicts


def assert_verdict(case: Case, verdict: Verdict) -> None:
    if case.refused is None:
        assert verdict.accepted, f"{case.name}: good input was refused: {verdict.message}"
        return
    assert not verdict.accepted, f"{case.name}: bad input was accepted"
    expected = (case.refused,) if isinstance(case.refused, str) else case.refused
    assert any(squash(e) in squash(verdict.message) for e in expected), (
        f"{case.name}: refused, but not with {expected!r}: {verdict.message}")


# --- TLS --------------------------------------------------------------------

@dataclasses.dataclass
class Handshake:
    """What openssl s_client saw: whether the peer accepted us after the handshake, and the transcript."""

    accepted: bool
    version: str
    output: str


def tls_handshake(host: testinfra.host.Host, target: str, port: int, *, ca: str,
                  cert: str | None = None, key: str | None = None, version: str | None = None,
                  server_name: str | None = None, extra: str = "") -> Handshake:
    """Connect with openssl s_client from a lab host and decide whether the server accepted us.

    Under TLS 1.3 a server refuses a client certificate only after the
    handshake, as an alert; s_client still prints "Cipher is ...". So the
    probe keeps the connection open for 2 s, sends a line, and counts as
    accepted only a verified server with no alert and no error.
    """
    args = [f"-connect {quote(target)}:{port}", f"-CAfile {quote(ca)}", "-verify_return_error"]
    if server_name:
        args.append(f"-verify_hostname {quote(server_name)} -servername {quote(server_name)}")
    if cert and key:
        args.append(f"-cert {quote(cert)} -key {quote(key)}")
    if version:
        args.append(f"-{version}")
    if extra:
        args.append(extra)
    out = host.run(f"(sleep 2; printf 'probe\\n\\n') | timeout 10 openssl s_client {' '.join(args)} 2>&1").stdout
    match = re.search(r"Protocol\s*:\s*(\S+)|New, (TLSv[\d.]+), Cipher", out)
    proto = (match[1] or match[2]) if match else ""
    refused = re.search(r"alert|:error:|Cipher is \(NONE\)|no peer certificate", out, re.IGNORECASE)
    accepted = "Verify return code: 0 (ok)" in out and not refused
    return Handshake(accepted, proto, out)


# --- a foreign CA -------------------------------------------------------------

@dataclasses.dataclass
class ForeignPki:
    """A CA made at test time (never committed) and a leaf it signed, on a lab host."""

    directory: str
    ca: str
    cert: str
    key: str


def foreign_ca(host: testinfra.host.Host, directory: str, common_name: str,
               names: Iterable[str] = ()) -> ForeignPki:
    """Make a CA nobody trusts and a client/server leaf that claims ``common_name`` (and ``names``)."""
    sans = ",".join(f"DNS:{n}" for n in [common_name, *names])
    d = quote(directory)
    host.check_output(
        f"set -e; rm -rf {d}; install -d -m 0700 {d}; cd {d}; "
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 "
        "-subj '/CN=Foreign test CA' 2>/dev/null; "
        f"printf '%s\\n' 'subjectAltName={sans}' 'extendedKeyUsage=serverAuth,clientAuth' > ext.cnf; "
        f"openssl req -newkey rsa:2048 -nodes -keyout host.key -out host.csr -subj {quote('/CN=' + common_name)} "
        "2>/dev/null; "
        "openssl x509 -req -in host.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out host.pem -days 1 "
        "-extfile ext.cnf 2>/dev/null")
    return ForeignPki(directory, f"{directory}/ca.pem", f"{directory}/host.pem", f"{directory}/host.key")


def sign_with_kit_ca(host: testinfra.host.Host, ca_dir: str | os.PathLike[str], key_path: str,
                     common_name: str, serial: int = 4242) -> str:
    """A leaf for ``common_name`` signed by the kit's controller CA (valid chain, unlisted name).

    The key stays on the lab host; only the CSR travels to the controller.
    """
    csr = host.check_output(
        f"openssl req -new -newkey rsa:2048 -nodes -keyout {quote(key_path)} "
        f"-subj {quote('/CN=' + common_name)} 2>/dev/null")
    with tempfile.TemporaryDirectory() as tmp:
        pathlib.Path(tmp, "req.csr").write_text(csr + "\n", encoding="ascii")
        pathlib.Path(tmp, "ext.cnf").write_text(
            f"subjectAltName=DNS:{common_name}\nextendedKeyUsage=serverAuth,clientAuth\n", encoding="ascii")
        subprocess.run(["openssl", "x509", "-req", "-in", "req.csr", "-CA", os.path.join(ca_dir, "ca.pem"),
                        "-CAkey", os.path.join(ca_dir, "ca.key"), "-set_serial", str(serial), "-days", "1",
                        "-extfile", "ext.cnf", "-out", "cert.pem"], cwd=tmp, check=True, capture_output=True)
        return pathlib.Path(tmp, "cert.pem").read_text(encoding="ascii")


# --- certificates with chosen end dates ---------------------------------------

_MAKE_PROBE_CERT = """
import datetime as dt, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
path, days, cn = sys.argv[1], float(sys.argv[2]), sys.argv[3]
key = ec.generate_private_key(ec.SECP256R1())
now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
end = now + dt.timedelta(days=days)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(min(now, end) - dt.timedelta(days=30))
        .not_valid_after(end).sign(key, hashes.SHA256()))
open(path, "wb").write(cert.public_bytes(serialization.Encoding.PEM))
"""


def probe_certificate(host: testinfra.host.Host, days: float) -> tuple[str, str]:
    """A self-signed certificate in /tmp on the host ending ``days`` from now (negative: already ended).

    Made with the host's python3-cryptography (the pki role installs it); for
    checks that judge end dates without touching the kit's real certificates.
    Returns its path and its unique common name.
    """
    cn = f"probe-{uuid.uuid4().hex[:8]}"
    path = f"/tmp/{cn}.pem"
    host.check_output(f"python3 -c {quote(_MAKE_PROBE_CERT)} {path} {days} {cn}")
    return path, cn
