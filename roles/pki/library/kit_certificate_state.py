#!/usr/bin/python3
"""Ansible module: is one kit certificate on this host exactly as issue.yml would leave it?

The fast path of roles/pki/tasks/issue.yml: one round trip that reads the
key, the certificate, their directories and the expiry manifest, and says
``current: true`` only when every task of the full path would report "ok"
(same key type and size, owners and modes, a certificate for this key with
exactly the requested subject, names and usages, issued and signed by the
deployment CA, outside the renewal window, listed in the manifest).
``ca_certificate`` may hold several CA certificates (a bundle: the old and
the new CA while a CA rotation is under way); the certificate must then have
been issued by one of them. issue.yml passes only the CA that issues now, so
a certificate of the other one is re-issued.
Anything else (including a check it cannot make) is ``current: false`` with
the reasons, and the caller runs the full path, which decides and changes.
So this module may only ever err towards "not current". It changes nothing.
"""

from __future__ import annotations

import datetime
import grp
import ipaddress
import os
import pwd
import stat
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: kit_certificate_state
short_description: Tell whether a kit certificate and its key need no change (read only)
description:
  - Used by the pki role's issue.yml to skip its full path on a converged host.
options:
  key_path: {type: path, required: true, description: The private key.}
  key_type: {type: str, required: true, choices: [rsa, ed25519, ecdsa-p256], description: The key's type.}
  key_size: {type: int, default: 3072, description: RSA modulus size.}
  key_owner: {type: str, required: true, description: Owner of the key.}
  key_group: {type: str, required: true, description: Group of the key.}
  key_mode: {type: str, required: true, description: Mode of the key, octal string.}
  key_dir_owner: {type: str, required: true, description: Owner of the key's directory.}
  key_dir_group: {type: str, required: true, description: Group of the key's directory.}
  key_dir_mode: {type: str, required: true, description: Mode of the key's directory.}
  cert_path: {type: path, required: true, description: The certificate (root:root 0644).}
  check_cert_dir: {type: bool, default: true, description: Whether the certificate's directory must be root:root 0755.}
  supplementary_group: {type: str, description: A group the key's owner must be a member of.}
  common_name: {type: str, required: true, description: The subject's only attribute.}
  subject_alt_names: {type: list, elements: str, default: [], description: "DNS:/IP: names, exactly these."}
  key_usage: {type: list, elements: str, required: true, description: keyUsage (critical), exactly these.}
  extended_key_usage: {type: list, elements: str, default: [], description: extendedKeyUsage, exactly these.}
  ca_certificate:
    type: str
    required: true
    description: PEM of the CA that must have issued the certificate, or of several CAs (a bundle), one of which must have.
  renew_before_days: {type: int, required: true, description: Renewal window.}
  manifest_path: {type: path, required: true, description: The expiry report's list, which must hold cert_path.}
"""

RETURN = r"""
current: {type: bool, returned: always, description: Nothing needs to change.}
reasons: {type: list, elements: str, returned: always, description: Why not current.}
"""

# keyUsage names as community.crypto writes them -> cryptography's attributes.
KEY_USAGES = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
}
EXTENDED_KEY_USAGES = {
    "serverAuth": "1.3.6.1.5.5.7.3.1",
    "clientAuth": "1.3.6.1.5.5.7.3.2",
    "codeSigning": "1.3.6.1.5.5.7.3.3",
}


def file_problems(path: str, owner: str, group: str, mode: str, *, directory: bool) -> list[str]:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return [f"{path}: {exc.strerror}"]
    problems = []
    if directory != stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
        problems.append(f"{path}: not a {'directory' if directory else 'regular file'}")
    try:
        if st.st_uid != pwd.getpwnam(owner).pw_uid:
            problems.append(f"{path}: owner is not {owner}")
        if st.st_gid != grp.getgrnam(group).gr_gid:
            problems.append(f"{path}: group is not {group}")
    except KeyError as exc:
        problems.append(f"{path}: unknown user or group {exc}")
    if stat.S_IMODE(st.st_mode) != int(mode, 8):
        problems.append(f"{path}: mode is {stat.S_IMODE(st.st_mode):04o}, not {mode}")
    return problems


def key_problems(key: Any, key_type: str, key_size: int) -> list[str]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size != key_size:
            return [f"the key is not RSA-{key_size}"]
    elif key_type == "ed25519":
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            return ["the key is not Ed25519"]
    elif not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        return ["the key is not ECDSA P-256"]
    return []


def same_public_key(a: Any, b: Any) -> bool:
    from cryptography.hazmat.primitives import serialization

    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(a.public_bytes(der, spki) == b.public_bytes(der, spki))


def signed_by(cert: Any, ca: Any) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    public = ca.public_key()
    try:
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                          cert.signature_hash_algorithm)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def general_names(names: list[str]) -> set[str]:
    out = set()
    for name in names:
        kind, _, value = name.partition(":")
        if kind == "IP":
            value = str(ipaddress.ip_address(value))
        out.add(f"{kind}:{value}")
    return out


BEGIN = b"-----BEGIN CERTIFICATE-----"


def load_bundle(pem: bytes) -> list[Any]:
    """Every certificate of a PEM bundle (one or more); ValueError when there is none."""
    from cryptography import x509

    blocks = [BEGIN + part for part in pem.split(BEGIN)[1:]]
    if not blocks:
        raise ValueError("no PEM certificate")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def issued_by_any(cert: Any, cas: list[Any]) -> bool:
    """The issuer name matches one of the CAs and that CA's key verifies the signature.

    Several CAs may share one subject (a rotated CA keeps its name): the name
    alone does not tell them apart, the signature does.
    """
    return any(cert.issuer == ca.subject and signed_by(cert, ca) for ca in cas)


def certificate_problems(p: dict[str, Any], key: Any) -> list[str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        with open(p["cert_path"], "rb") as handle:
            cert = x509.load_pem_x509_certificate(handle.read())
        cas = load_bundle(p["ca_certificate"].encode())
    except (OSError, ValueError) as exc:
        return [f"{p['cert_path']}: cannot read the certificate or the CA ({exc})"]
    problems = []
    if key is not None and not same_public_key(cert.public_key(), key.public_key()):
        problems.append("the certificate is not for this key")
    attributes = [(a.oid, a.value) for a in cert.subject]
    if attributes != [(NameOID.COMMON_NAME, p["common_name"])]:
        problems.append(f"the subject is not CN={p['common_name']}")
    if not issued_by_any(cert, cas):
        problems.append("the certificate was not issued by the deployment CA")
    end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.UTC)
    if end - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(days=p["renew_before_days"]):
        problems.append("the certificate is inside its renewal window")
    return problems + extension_problems(p, cert)


def san_strings(names: Any) -> set[str]:
    from cryptography import x509

    out = set()
    for name in names:
        if isinstance(name, x509.DNSName):
            out.add(f"DNS:{name.value}")
        elif isinstance(name, x509.IPAddress):
            out.add(f"IP:{name.value}")
        else:
            out.add(f"other:{name}")
    return out


def extension_problems(p: dict[str, Any], cert: Any) -> list[str]:
    """Exactly the extensions issue.yml requests: CA:FALSE, keyUsage, extendedKeyUsage, subjectAltName."""
    from cryptography.x509.oid import ExtensionOID

    problems: list[str] = []
    unknown = [u for u in p["key_usage"] if u not in KEY_USAGES]
    unknown += [u for u in p["extended_key_usage"] if u not in EXTENDED_KEY_USAGES]
    if unknown:
        return [f"usages this check does not know: {', '.join(unknown)}"]
    extensions = {e.oid: e for e in cert.extensions}
    basic = extensions.get(ExtensionOID.BASIC_CONSTRAINTS)
    if basic is None or not basic.critical or basic.value.ca:
        problems.append("basicConstraints is not a critical CA:FALSE")
    usage = extensions.get(ExtensionOID.KEY_USAGE)
    wanted = {KEY_USAGES[u] for u in p["key_usage"]}
    if usage is None or not usage.critical:
        problems.append("keyUsage is missing or not critical")
    else:
        have = {attr for attr in KEY_USAGES.values()
                if attr not in ("encipher_only", "decipher_only") and getattr(usage.value, attr)}
        if have != wanted:
            problems.append("keyUsage differs")
    eku = extensions.get(ExtensionOID.EXTENDED_KEY_USAGE)
    have_eku = {oid.dotted_string for oid in eku.value} if eku is not None else set()
    if have_eku != {EXTENDED_KEY_USAGES[u] for u in p["extended_key_usage"]}:
        problems.append("extendedKeyUsage differs")
    san = extensions.get(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    if san_strings(san.value if san is not None else []) != general_names(p["subject_alt_names"]):
        problems.append("subjectAltName differs")
    known = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
             ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
             ExtensionOID.AUTHORITY_KEY_IDENTIFIER}
    if set(extensions) - known:
        problems.append("the certificate carries extensions the kit does not issue")
    return problems


def state(p: dict[str, Any]) -> list[str]:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return ["python3-cryptography is not installed"]
    key_dir = os.path.dirname(p["key_path"])
    cert_dir = os.path.dirname(p["cert_path"])
    problems = file_problems(key_dir, p["key_dir_owner"], p["key_dir_group"], p["key_dir_mode"], directory=True)
    if p["check_cert_dir"]:
        problems += file_problems(cert_dir, "root", "root", "0755", directory=True)
    problems += file_problems(p["key_path"], p["key_owner"], p["key_group"], p["key_mode"], directory=False)
    problems += file_problems(p["cert_path"], "root", "root", "0644", directory=False)
    if p["supplementary_group"]:
        try:
            if p["key_owner"] not in grp.getgrnam(p["supplementary_group"]).gr_mem:
                problems.append(f"{p['key_owner']} is not a member of {p['supplementary_group']}")
        except KeyError:
            problems.append(f"no group {p['supplementary_group']}")
    key = None
    try:
        with open(p["key_path"], "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        problems += key_problems(key, p["key_type"], p["key_size"])
    except (OSError, ValueError, TypeError) as exc:
        problems.append(f"{p['key_path']}: cannot read the key ({exc.__class__.__name__})")
    if not problems:
        problems += certificate_problems(p, key)
    problems += file_problems(p["manifest_path"], "root", "root", "0644", directory=False)
    try:
        with open(p["manifest_path"], encoding="utf-8") as handle:
            if p["cert_path"] not in handle.read().splitlines():
                problems.append(f"{p['cert_path']} is not in {p['manifest_path']}")
    except OSError:
        problems.append(f"no {p['manifest_path']}")
    return problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "key_path": {"type": "path", "required": True},
            "key_type": {"type": "str", "required": True, "choices": ["rsa", "ed25519", "ecdsa-p256"]},
            "key_size": {"type": "int", "default": 3072},
            "key_owner": {"type": "str", "required": True},
            "key_group": {"type": "str", "required": True},
            "key_mode": {"type": "str", "required": True},
            "key_dir_owner": {"type": "str", "required": True},
            "key_dir_group": {"type": "str", "required": True},
            "key_dir_mode": {"type": "str", "required": True},
            "cert_path": {"type": "path", "required": True},
            "check_cert_dir": {"type": "bool", "default": True},
            "supplementary_group": {"type": "str"},
            "common_name": {"type": "str", "required": True},
            "subject_alt_names": {"type": "list", "elements": "str", "default": []},
            "key_usage": {"type": "list", "elements": "str", "required": True},
            "extended_key_usage": {"type": "list", "elements": "str", "default": []},
            "ca_certificate": {"type": "str", "required": True},
            "renew_before_days": {"type": "int", "required": True},
            "manifest_path": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    reasons = state(module.params)
    module.exit_json(changed=False, current=not reasons, reasons=reasons)


if __name__ == "__main__":
    main()
