#!/usr/bin/env python3
"""A fleet of paho-mqtt (v2) devices for the cluster tests: each device publishes numbered
property reports (params {"Seq": n}) at QoS 1, one at a time, to one node of the
cluster; when its connection ends or cannot be made it connects to the next node of
--ports and publishes the unacknowledged report again (at-least-once, as a real device
does).

Devices come as --devices dn:secret,dn:secret,...; device i starts on port i % len(ports).
Runs until stdin closes (or --seconds). Prints one JSON object per line:
  {"event":"ready"}
  {"event":"acked","dn","seq","port"}           PUBACK received for report seq
  {"event":"moved","dn","from","to","reason"}   reconnected to another node
  {"event":"done","dn","acked"}                 per device at the end
  {"event":"finished"}
"""
import argparse
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

sys.path.insert(0, __import__("os").path.dirname(__file__))
from device import credentials  # noqa: E402

LOCK = threading.Lock()


def out(**kw):
    line = json.dumps(kw)
    with LOCK:
        print(line, flush=True)


def run_device(i, dn, secret, a, ports, stop):
    at = i % len(ports)
    seq = 0
    acked = 0
    topic = f"/sys/{a.pk}/{dn}/thing/event/property/post"
    while not stop.is_set():
        port = ports[at]
        client_id, username, password = credentials(a.pk, dn, secret, f"fleet-{dn}")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(username, password)
        up = threading.Event()
        gone = threading.Event()

        def on_connect(cl, u, f, rc, p=None, up=up):
            if (rc.value if hasattr(rc, "value") else int(rc)) == 0:
                up.set()

        def on_disconnect(cl, u, f, rc, p=None, gone=gone):
            gone.set()

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        reason = "connect failed"
        try:
            c.connect("127.0.0.1", port, keepalive=30)
            c.loop_start()
            if up.wait(5):
                reason = "connection lost"
                while not stop.is_set() and not gone.is_set():
                    body = {"id": str(seq), "version": "1.0", "method": "thing.event.property.post",
                            "params": {"Seq": seq}}
                    info = c.publish(topic, json.dumps(body), qos=1)
                    deadline = time.time() + 5
                    while not info.is_published() and time.time() < deadline and not gone.is_set():
                        time.sleep(0.002)
                    if not info.is_published():
                        break  # not acknowledged: publish seq again on the next node
                    out(event="acked", dn=dn, seq=seq, port=port)
                    seq += 1
                    acked += 1
                    if a.interval > 0:
                        time.sleep(a.interval)
        except Exception as e:  # refused at TCP level: the node is down
            reason = f"connect failed: {e}"
        finally:
            try:
                c.loop_stop()
                c.disconnect()
            except Exception:
                pass
        if stop.is_set():
            break
        nxt = (at + 1) % len(ports)
        out(event="moved", dn=dn, **{"from": port}, to=ports[nxt], reason=reason)
        at = nxt
        time.sleep(0.2)
    out(event="done", dn=dn, acked=acked)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", required=True, help="comma-separated MQTT ports of the nodes")
    ap.add_argument("--pk", required=True)
    ap.add_argument("--devices", required=True, help="dn:secret,dn:secret,...")
    ap.add_argument("--interval", type=float, default=0.01)
    ap.add_argument("--seconds", type=float, default=120)
    a = ap.parse_args()
    ports = [int(p) for p in a.ports.split(",") if p]
    devices = [d.split(":", 1) for d in a.devices.split(",") if d]
    stop = threading.Event()
    threads = [threading.Thread(target=run_device, args=(i, dn, s, a, ports, stop))
               for i, (dn, s) in enumerate(devices)]
    for t in threads:
        t.start()
    out(event="ready")

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(a.seconds)
    stop.set()
    for t in threads:
        t.join()
    out(event="finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
