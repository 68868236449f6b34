#!/usr/bin/env python3
"""Lab probe for the rabbitmq scenario's attack tests (runs in the lab containers).

`tls`  : one TLS handshake, then the AMQP protocol header; "accepted" only
         when the broker answers with a Connection.Start frame. Under TLS 1.3
         a missing client certificate is refused *after* the handshake, so a
         printed cipher proves nothing: reading the broker's answer does.
`amqp` : log in with py-amqp over mutual TLS and run operations, each on a
         fresh channel, reporting the broker's reply code for each.
Output is one JSON object on stdout.
"""

import argparse
import json
import socket
import ssl
import sys

import amqp

VERSIONS = {
    "tls1.0": ssl.TLSVersion.TLSv1,
    "tls1.1": ssl.TLSVersion.TLSv1_1,
    "tls1.2": ssl.TLSVersion.TLSv1_2,
    "tls1.3": ssl.TLSVersion.TLSv1_3,
}


def tls_context(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca:
        ctx.load_verify_locations(args.ca)
        ctx.check_hostname = True
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    if args.version:
        # Debian's OpenSSL refuses TLS < 1.2 on the client side at security
        # level 2; lower it so that any refusal comes from the broker.
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = VERSIONS[args.version]
        ctx.maximum_version = VERSIONS[args.version]
    if args.ciphers:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(args.ciphers + ":@SECLEVEL=0")
    return ctx


def probe_tls(args):
    out = {"target": f"{args.host}:{args.port}"}
    try:
        sock = socket.create_connection((args.host, args.port), timeout=10)
    except OSError as exc:
        out.update(result="refused", stage="tcp", reason=type(exc).__name__, error=str(exc))
        return out
    try:
        tls = tls_context(args).wrap_socket(sock, server_hostname=args.host)
        out.update(version=tls.version(), cipher=tls.cipher()[0])
        tls.sendall(b"AMQP\x00\x00\x09\x01")
        frame = tls.recv(7)
        if frame[:1] == b"\x01":
            out.update(result="accepted")
        else:
            out.update(result="refused", stage="amqp", reason="closed", error=repr(frame))
    except ssl.SSLError as exc:
        out.update(result="refused", stage="tls", reason=exc.reason or type(exc).__name__, error=str(exc))
    except OSError as exc:
        out.update(result="refused", stage="tls", reason=type(exc).__name__, error=str(exc))
    finally:
        sock.close()
    return out


def text(body):
    return body.decode() if isinstance(body, bytes) else body


def run_op(conn, op):  # noqa: PLR0912 - one flat branch per probe operation reads best
    kind, _, rest = op.partition(":")
    parts = rest.split(":") if rest else []
    res = {"op": op}
    ch = conn.channel()
    try:
        if kind == "publish":
            # A refused publish closes the channel asynchronously; reading
            # the connection for a while surfaces that close as the broker's
            # error. (Publisher confirms would be neater, but py-amqp 5.1.1
            # loses the error there: AttributeError on a closed channel.)
            ch.basic_publish(amqp.Message(parts[2] if len(parts) > 2 else "probe", delivery_mode=2),
                             exchange=parts[0], routing_key=parts[1])
            try:
                conn.drain_events(timeout=3)
            except TimeoutError:
                pass
        elif kind == "get":
            msg = ch.basic_get(queue=parts[0], no_ack=True)
            res["body"] = text(msg.body) if msg is not None else None
        elif kind == "consume":
            got = []
            ch.basic_consume(queue=parts[0], callback=lambda m: got.append(text(m.body)), no_ack=True)
            try:
                conn.drain_events(timeout=5)
            except TimeoutError:
                pass
            res["body"] = got[0] if got else None
        elif kind == "declare":
            ch.queue_declare(queue=parts[0], durable=False, auto_delete=True)
        elif kind == "declare_exchange":
            ch.exchange_declare(exchange=parts[0], type="direct", durable=False, auto_delete=True)
        elif kind == "passive":
            ok = ch.queue_declare(queue=parts[0], passive=True)
            res["messages"] = ok.message_count
        elif kind == "delete":
            ch.queue_delete(queue=parts[0])
        elif kind == "purge":
            ch.queue_purge(queue=parts[0])
        elif kind == "bind":
            ch.queue_bind(queue=parts[0], exchange=parts[1], routing_key=parts[2])
        else:
            raise SystemExit(f"unknown operation {kind}")
        res["ok"] = True
        if ch.is_open:
            ch.close()
    except amqp.exceptions.AMQPError as exc:
        res.update(ok=False, code=getattr(exc, "reply_code", None), error=str(exc))
    return res


def probe_amqp(args):
    out = {"user": args.user, "vhost": args.vhost}
    sslopts = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": args.ca, "server_hostname": args.host}
    if args.cert:
        sslopts.update(certfile=args.cert, keyfile=args.key)
    kwargs = {}
    if args.external:
        kwargs["login_method"] = "EXTERNAL"
    conn = amqp.Connection(host=f"{args.host}:{args.port}", userid=args.user, password=args.password,
                           virtual_host=args.vhost, ssl=sslopts, connect_timeout=10, **kwargs)
    try:
        conn.connect()
    except (amqp.exceptions.AMQPError, OSError) as exc:
        out.update(connect="refused", code=getattr(exc, "reply_code", None),
                   error=f"{type(exc).__name__}: {exc}")
        return out
    out["connect"] = "ok"
    out["ops"] = [run_op(conn, op) for op in args.ops]
    try:
        conn.close()
    except (amqp.exceptions.AMQPError, OSError):
        pass
    return out


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("tls", "amqp"):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, default=5671)
        p.add_argument("--ca")
        p.add_argument("--cert")
        p.add_argument("--key")
    sub.choices["tls"].add_argument("--version", choices=sorted(VERSIONS))
    sub.choices["tls"].add_argument("--ciphers")
    a = sub.choices["amqp"]
    a.add_argument("--user", default="")
    a.add_argument("--password-file", help="file holding the password (keeps it out of argv)")
    a.add_argument("--vhost", default="/")
    a.add_argument("--external", action="store_true")
    a.add_argument("ops", nargs="*")
    args = parser.parse_args()
    if args.cmd == "tls":
        out = probe_tls(args)
    else:
        args.password = ""
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as fh:
                args.password = fh.read().strip()
        out = probe_amqp(args)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
