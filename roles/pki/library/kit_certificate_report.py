#!/usr/bin/python3
"""Ansible module: the days left of every certificate the kit issued on this host (read only).

Reads the list the pki role keeps on the host and the CA bundle, as the
daily expiry alarm does, in one round trip (a loop of
x509_certificate_info made one per certificate). Every certificate of a
bundle counts (old and new CA during a rotation).

With ``ca_certificates`` (PEM of one or more CAs) each entry also says which
of them signed it (``issued_by``: the CA's SHA-256 fingerprint, or an empty
string for none of them): a CA rotation's retire step refuses to take the old
CA out of the bundle while any certificate on the host was issued by it.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: kit_certificate_report
short_description: Read the validity of the kit's certificates on the host
options:
  manifest_path: {type: path, required: true, description: The list of certificate paths the pki role keeps.}
  extra_paths: {type: list, elements: path, default: [], description: Further PEM files, e.g. the CA bundle.}
  renew_before_days: {type: int, required: true, description: The renewal window.}
  ca_certificates: {type: str, default: "", description: PEM of the CAs to name the issuer among (issued_by).}
"""

RETURN = r"""
certificates:
  type: list
  elements: dict
  returned: always
  description:
    - One entry per certificate - path, common_name, serial (hex), not_after (ISO 8601), days_left, renewal_due;
      or path and error.
    - With ca_certificates also issued_by, the SHA-256 fingerprint (hex) of the CA among them that signed it, or "".
"""

BEGIN = b"-----BEGIN CERTIFICATE-----"


def load_bundle(data: bytes) -> list[Any]:
    from cryptography import x509

    blocks = [BEGIN + part for part in data.split(BEGIN)[1:]]
    if not blocks:
        raise ValueError("no PEM certificate in the file")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def signed_by(cert: Any, ca: Any) -> bool:
    """Whether ``ca``'s key signed ``cert`` (Debian 12's cryptography 38 lacks verify_directly_issued_by)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    if cert.issuer != ca.subject:
        return False
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


def issuer_of(cert: Any, cas: list[tuple[str, Any]]) -> str:
    return next((fingerprint for fingerprint, ca in cas if signed_by(cert, ca)), "")


def read(path: str, renew_before_days: int, now: datetime.datetime,
         cas: list[tuple[str, Any]] | None = None) -> list[dict[str, Any]]:
    from cryptography.x509.oid import NameOID

    try:
        certs = load_bundle(pathlib.Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        return [{"path": path, "error": str(exc)}]
    out = []
    for cert in certs:
        # not_valid_after_utc exists from cryptography 42 (Debian 13); 38 (Debian 12) is naive UTC.
        end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.UTC)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        entry = {
            "path": path,
            "common_name": str(names[0].value) if names else "?",
            "serial": f"{cert.serial_number:x}",
            "not_after": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": (end - now).days,
            "renewal_due": end - now <= datetime.timedelta(days=renew_before_days),
        }
        if cas is not None:
            entry["issued_by"] = issuer_of(cert, cas)
        out.append(entry)
    return out


def fingerprinted(pem: str) -> list[tuple[str, Any]]:
    from cryptography.hazmat.primitives import hashes

    return [(ca.fingerprint(hashes.SHA256()).hex(), ca) for ca in load_bundle(pem.encode())]


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "manifest_path": {"type": "path", "required": True},
            "extra_paths": {"type": "list", "elements": "path", "default": []},
            "renew_before_days": {"type": "int", "required": True},
            "ca_certificates": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        listed = pathlib.Path(p["manifest_path"]).read_text(encoding="utf-8").splitlines()
    except OSError:
        listed = []
    paths = [x for x in dict.fromkeys([*listed, *p["extra_paths"]]) if x.strip()]
    now = datetime.datetime.now(datetime.UTC)
    try:
        cas = fingerprinted(p["ca_certificates"]) if p["ca_certificates"].strip() else None
        certificates = [entry for path in paths for entry in read(path, p["renew_before_days"], now, cas)]
    except ImportError:
        module.fail_json(msg="python3-cryptography is not installed on the host")
    except ValueError as exc:
        module.fail_json(msg=f"ca_certificates holds no readable CA certificate ({exc})")
    module.exit_json(changed=False, certificates=certificates)


if __name__ == "__main__":
    main()
