#!/usr/bin/env python3
"""Lab probe for the cluster scenario (runs on the client container).

`publish`: publish COUNT persistent messages "<tag>-<i>" to the app's
           exchange with publisher confirms: each publish returns only once
           the broker confirmed it (for a quorum queue: written on a majority).
`drain`  : basic_get (with ack) until the queue is empty; print the bodies.
`load-publish`: publish COUNT confirmed messages, moving to the next node of
           --hosts when a connection breaks, and re-sending the message whose
           confirm never came (at least once: it may reach the queue twice).
`load-consume`: consume with manual acks (prefetch 20) until COUNT distinct
           bodies of --tag were seen or nothing came for --idle seconds,
           moving to the next node when a connection breaks; print the counts.
Passwords are read from /root/lab-passwords/<user>, never from argv.
Output is one JSON object on stdout.
"""

import argparse
import collections
import json
import pathlib
import ssl
import time

import amqp


def connect(args, user):
    password = pathlib.Path("/root/lab-passwords", user).read_text(encoding="utf-8")
    sslopts = {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": args.ca, "server_hostname": args.host,
               "certfile": args.cert, "keyfile": args.key}
    conn = amqp.Connection(host=f"{args.host}:{args.port}", userid=user, password=password,
                           virtual_host=args.vhost, ssl=sslopts, connect_timeout=10,
                           confirm_publish=True)
    conn.connect()
    return conn


def publish(args):
    conn = connect(args, args.user or "demo-producer")
    ch = conn.channel()
    sent = 0
    for i in range(args.count):
        ch.basic_publish(amqp.Message(f"{args.tag}-{i}", delivery_mode=2),
                         exchange=args.queue, routing_key=args.queue)
        sent += 1
    conn.close()
    return {"published": sent}


def drain(args):
    conn = connect(args, args.user or "demo-worker")
    ch = conn.channel()
    bodies = []
    while True:
        msg = ch.basic_get(queue=args.queue, no_ack=False)
        if msg is None:
            break
        body = msg.body.decode() if isinstance(msg.body, bytes) else msg.body
        bodies.append(body)
        ch.basic_ack(msg.delivery_tag)
    conn.close()
    return {"bodies": bodies}


RECOVERABLE = (OSError, amqp.exceptions.AMQPError, amqp.exceptions.RecoverableConnectionError)


def rotate(args, user, attempt):
    hosts = args.hosts.split(",")
    for step in range(len(hosts) * 20):
        args.host = hosts[(attempt + step) % len(hosts)]
        try:
            return connect(args, user), attempt + step + 1
        except RECOVERABLE:
            time.sleep(0.5)
    raise SystemExit("no node accepted a connection")


def load_publish(args):
    conn, attempt = rotate(args, "demo-producer", 0)
    ch = conn.channel()
    resent = failovers = 0
    for i in range(args.count):
        while True:
            try:
                ch.basic_publish(amqp.Message(f"{args.tag}-{i}", delivery_mode=2),
                                 exchange=args.queue, routing_key=args.queue)
                break
            except RECOVERABLE:
                resent += 1
                failovers += 1
                conn, attempt = rotate(args, "demo-producer", attempt)
                ch = conn.channel()
        if args.pace:
            time.sleep(args.pace)
    conn.close()
    return {"published": args.count, "resent": resent, "failovers": failovers}


def load_consume(args):
    seen = collections.Counter()
    conn, attempt = rotate(args, "demo-worker", 0)
    failovers = 0
    last = time.monotonic()

    def on_message(msg):
        nonlocal last
        body = msg.body.decode() if isinstance(msg.body, bytes) else msg.body
        seen[body] += 1
        last = time.monotonic()
        msg.channel.basic_ack(msg.delivery_tag)

    def subscribe(conn):
        ch = conn.channel()
        ch.basic_qos(prefetch_size=0, prefetch_count=20, a_global=False)
        ch.basic_consume(queue=args.queue, callback=on_message)

    subscribe(conn)
    wanted = {f"{args.tag}-{i}" for i in range(args.count)}
    while not wanted <= set(seen) and time.monotonic() - last < args.idle:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            continue
        except RECOVERABLE:
            failovers += 1
            conn, attempt = rotate(args, "demo-worker", attempt)
            subscribe(conn)
    conn.close()
    ours = {k: v for k, v in seen.items() if k in wanted}
    return {"distinct": len(ours), "lost": len(wanted - set(ours)),
            "duplicates": sum(v - 1 for v in ours.values()), "foreign": sum(v for k, v in seen.items() if k not in wanted),
            "failovers": failovers}


ACTIONS = {"publish": publish, "drain": drain, "load-publish": load_publish, "load-consume": load_consume}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("--host", default="")
    parser.add_argument("--hosts", default="", help="comma-separated nodes for the load actions")
    parser.add_argument("--pace", type=float, default=0.0, help="seconds between two publishes")
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=5671)
    parser.add_argument("--vhost", default="/demo")
    parser.add_argument("--queue", default="celery")
    parser.add_argument("--user")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--tag", default="probe")
    parser.add_argument("--ca", default="/etc/ssl/certs/celery-kit-ca.pem")
    parser.add_argument("--cert", default="/etc/ssl/certs/lab-client.pem")
    parser.add_argument("--key", default="/etc/ssl/private/lab-client.key")
    args = parser.parse_args()
    print(json.dumps(ACTIONS[args.action](args)))


if __name__ == "__main__":
    main()
