#!/usr/bin/python3
"""Ansible module: the days left of every certificate the kit issued on this host (read only).

Reads the list the pki role keeps on the host and the CA bundle, as the
daily expiry alarm does, in one round trip (a loop of
x509_certificate_info made one per certificate). Every certificate of a
bundle counts (old and new CA during a rotation).
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
"""

RETURN = r"""
certificates:
  type: list
  elements: dict
  returned: always
  description: One entry per certificate - path, common_name, not_after (ISO 8601), days_left, renewal_due; or path and error.
"""

BEGIN = b"-----BEGIN CERTIFICATE-----"


def read(path: str, renew_before_days: int, now: datetime.datetime) -> list[dict[str, Any]]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        data = pathlib.Path(path).read_bytes()
        blocks = [BEGIN + part for part in data.split(BEGIN)[1:]]
        if not blocks:
            raise ValueError("no PEM certificate in the file")
        certs = [x509.load_pem_x509_certificate(block) for block in blocks]
    except (OSError, ValueError) as exc:
        return [{"path": path, "error": str(exc)}]
    out = []
    for cert in certs:
        # not_valid_after_utc exists from cryptography 42 (Debian 13); 38 (Debian 12) is naive UTC.
        end = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.UTC)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        out.append({
            "path": path,
            "common_name": str(names[0].value) if names else "?",
            "not_after": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": (end - now).days,
            "renewal_due": end - now <= datetime.timedelta(days=renew_before_days),
        })
    return out


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "manifest_path": {"type": "path", "required": True},
            "extra_paths": {"type": "list", "elements": "path", "default": []},
            "renew_before_days": {"type": "int", "required": True},
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
        certificates = [entry for path in paths for entry in read(path, p["renew_before_days"], now)]
    except ImportError:
        module.fail_json(msg="python3-cryptography is not installed on the host")
    module.exit_json(changed=False, certificates=certificates)


if __name__ == "__main__":
    main()
