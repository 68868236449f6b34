#!/usr/bin/python3
"""Ansible module: rename a checked next certificate and key over the live ones, back to back.

Used by roles/pki/tasks/rotate_tls.yml (playbooks/rotate.yml) after the next
pair was checked. Two renames inside one directory each (atomic per file), one
right after the other: a reader that opens the two paths between them is the
only one that can see a new certificate with the old key, for microseconds
(two copy tasks left about a second between them). Both files get the time
of the swap as their modification time first: a reader that caches by
modification time sees both as changed at once. Erlang's PEM cache (RabbitMQ)
re-reads, at its periodic check, only the files modified since the previous
check: a next key made by an earlier run, renamed in with a new certificate,
would be kept cached while the new certificate is read, and RabbitMQ would
serve the new certificate with the old key, failing every handshake, until
the cache is cleared (seen with Erlang 25's ssl 10.8.7). The certificate goes
first: a run stopped between the two leaves the next key, and the re-run signs
a new certificate for it. Owners and modes are the next files' own (the tasks
made them as the live ones must be). Nothing to rename: not changed.
"""

from __future__ import annotations

import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: kit_tls_swap
short_description: Rename a next certificate and key over the live pair (certificate first)
description:
  - Used by the pki role's rotate_tls.yml once the next pair was checked.
options:
  cert_src: {type: path, required: true, description: The next certificate.}
  cert_dest: {type: path, required: true, description: The live certificate (same directory as cert_src).}
  key_src: {type: path, required: true, description: The next key.}
  key_dest: {type: path, required: true, description: The live key (same directory as key_src).}
"""

RETURN = r"""
renamed: {type: list, elements: str, returned: always, description: The live paths replaced (or that would be).}
"""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "cert_src": {"type": "path", "required": True},
            "cert_dest": {"type": "path", "required": True},
            "key_src": {"type": "path", "required": True},
            "key_dest": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    pairs = [(p["cert_src"], p["cert_dest"]), (p["key_src"], p["key_dest"])]
    for src, dest in pairs:
        if os.path.dirname(src) != os.path.dirname(dest):
            module.fail_json(msg=f"{src} and {dest} must be in one directory (a rename across file systems is a copy)")
    todo = [(src, dest) for src, dest in pairs if os.path.lexists(src)]
    done: list[str] = []
    if todo and not module.check_mode:
        for src, _ in todo:
            try:
                os.utime(src)
            except OSError as exc:
                module.fail_json(msg=f"cannot touch {src}: {exc.strerror}", renamed=done)
        for src, dest in todo:
            try:
                os.rename(src, dest)
            except OSError as exc:
                module.fail_json(msg=f"cannot rename {src} to {dest}: {exc.strerror}", changed=bool(done), renamed=done)
            done.append(dest)
    module.exit_json(changed=bool(todo), renamed=[dest for _, dest in todo])


if __name__ == "__main__":
    main()
