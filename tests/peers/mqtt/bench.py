#!/usr/bin/env python3
"""Gateway benchmark peer (not a test): raw-socket MQTT 3.1.1 clients, standard library.

  idle     --devices FILE (JSON [[pk, dn, secret], ...]) or --anonymous N: open one
           connection per device, wait for every CONNACK, print {"event":"held", ...},
           hold them until stdin closes. Keep-alive 300 s, no pings needed meanwhile.
  publish  --devices FILE --rate R --seconds S: one connection per device (round-robin),
           QoS 1 property posts at a steady total rate; each carries its send time (ms)
           as the item time, so the consumer computes publish → delivery latency.
"""
import argparse, hashlib, hmac, json, os, resource, selectors, socket, struct, sys, time


def enc_str(b):
    return struct.pack("!H", len(b)) + b


def enc_len(n):
    out = bytearray()
    while True:
        d = n % 128
        n //= 128
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(pk, dn, secret, any_id, keepalive=300):
    if pk is None:
        cid, user, pw = any_id, None, None
    else:
        ts = str(int(time.time() * 1000))
        cid = f"{any_id}|securemode=3,signmethod=hmacsha256,timestamp={ts}|"
        user = f"{dn}&{pk}"
        pw = hmac.new(secret.encode(), f"clientId{any_id}deviceName{dn}productKey{pk}timestamp{ts}".encode(),
                      hashlib.sha256).hexdigest()
    flags = 0x02 | (0xC0 if user else 0)
    body = enc_str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + enc_str(cid.encode())
    if user:
        body += enc_str(user.encode()) + enc_str(pw.encode())
    return bytes([0x10]) + enc_len(len(body)) + body


def publish_packet(topic, payload, pid):
    body = enc_str(topic.encode()) + struct.pack("!H", pid) + payload
    return bytes([0x32]) + enc_len(len(body)) + body


def open_all(host, port, specs):
    socks = []
    t0 = time.time()
    for i, (pk, dn, secret) in enumerate(specs):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(connect_packet(pk, dn, secret, f"bench{i}"))
        socks.append(s)
    refused = 0
    for s in socks:
        b = b""
        while len(b) < 4:
            chunk = s.recv(4 - len(b))
            if not chunk:
                break
            b += chunk
        if len(b) < 4 or b[3] != 0:
            refused += 1
    return socks, refused, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--devices")
    ap.add_argument("--anonymous", type=int, default=0)
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if a.devices:
        specs = json.load(open(a.devices))
    else:
        specs = [(None, None, None)] * a.anonymous
    socks, refused, took = open_all(a.host, a.port, specs)
    print(json.dumps({"event": "held", "connections": len(socks), "refused": refused,
                      "seconds": round(took, 2)}), flush=True)
    if a.mode == "idle":
        sys.stdin.read()
        return 0
    # publish
    n = 0
    start = time.time()
    interval = 1.0 / a.rate
    acks = 0
    while time.time() - start < a.seconds:
        i = n % len(socks)
        pk, dn, _ = specs[i]
        now = int(time.time() * 1000)
        body = json.dumps({"id": str(n), "version": "1.0", "method": "thing.event.property.post",
                           "params": {"Seq": {"value": n, "time": now}}}).encode()
        socks[i].sendall(publish_packet(f"/sys/{pk}/{dn}/thing/event/property/post", body, (n % 65535) + 1))
        n += 1
        target = start + n * interval
        d = target - time.time()
        if d > 0:
            time.sleep(d)
    print(json.dumps({"event": "published", "count": n}), flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
