#!/usr/bin/python3
"""Ansible module: does the broker accept a NEW AMQPS connection made with this client pair? (read only)

Used by the rabbitmq role's rotate_ca.yml: once the host identity was
re-issued by the next CA, a connection with it shows from the broker's own host
whether RabbitMQ trusts the next CA for client certificates before any client
depends on it. A TLS handshake alone does not tell: under TLS 1.3 the server
judges the client certificate after the client's Finished, and a refusal
arrives as an alert at the first read. So the probe sends the AMQP 0-9-1
protocol header and reads the answer: a Connection.Start method frame (type 1)
means the certificate passed; an alert, a closed connection or anything else
is a refusal, with what happened. The client checks the broker's certificate
against ``ca_path`` and ``server_hostname`` as the apps do. Nothing is logged
in: the probe closes before any authentication.
"""

from __future__ import annotations

import socket
import ssl

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: kit_amqps_probe
short_description: Whether RabbitMQ accepts a new AMQPS connection with a client certificate (read only)
options:
  host: {type: str, default: 127.0.0.1, description: Address to connect to.}
  port: {type: int, default: 5671, description: The AMQPS port.}
  server_hostname: {type: str, required: true, description: Name the broker's certificate must carry (SNI and check).}
  ca_path: {type: path, required: true, description: CA bundle that must have issued the broker's certificate.}
  cert_path: {type: path, required: true, description: The client certificate presented.}
  key_path: {type: path, required: true, description: Its key.}
  timeout: {type: float, default: 10, description: Seconds for the connection and the answer.}
"""

RETURN = r"""
accepted: {type: bool, returned: always, description: The broker answered the protocol header with Connection.Start.}
detail: {type: str, returned: always, description: What happened (the refusal's alert or error when not accepted).}
served_serial: {type: str, returned: when the handshake completed, description: Serial (hex) of the broker's certificate.}
"""

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def probe(p: dict) -> dict:
    context = ssl.create_default_context(cafile=p["ca_path"])
    context.load_cert_chain(p["cert_path"], p["key_path"])
    result: dict = {"accepted": False, "detail": ""}
    try:
        with socket.create_connection((p["host"], p["port"]), timeout=p["timeout"]) as raw, \
                context.wrap_socket(raw, server_hostname=p["server_hostname"]) as tls:
            der = tls.getpeercert(binary_form=True)
            if der:
                result["served_serial"] = served_serial(der)
            tls.sendall(AMQP_HEADER)
            frame = tls.recv(7)
            if frame[:1] == b"\x01":
                result.update(accepted=True, detail="Connection.Start received")
            else:
                result["detail"] = f"no Connection.Start (got {frame!r})"
    except (OSError, ssl.SSLError) as exc:
        result["detail"] = f"{exc.__class__.__name__}: {exc}"
    return result


def served_serial(der: bytes) -> str:
    try:
        from cryptography import x509
    except ImportError:
        return ""
    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "default": "127.0.0.1"},
            "port": {"type": "int", "default": 5671},
            "server_hostname": {"type": "str", "required": True},
            "ca_path": {"type": "path", "required": True},
            "cert_path": {"type": "path", "required": True},
            "key_path": {"type": "path", "required": True},
            "timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    try:
        result = probe(module.params)
    except (OSError, ssl.SSLError) as exc:
        module.fail_json(msg=f"cannot load the client pair or the CA bundle: {exc}")
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
