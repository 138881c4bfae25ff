#!/usr/bin/env python3
"""A device written with paho-mqtt (v2), computing its own SPEC §10 credentials.

Prints one JSON object per line on stdout for the Rust test to read.

modes:
  post          connect, property post (QoS 1), event post (QoS 1), malformed JSON,
                unknown method, then DISCONNECT
  connect-only  connect, report the CONNACK, stay until stdin closes or --seconds pass
  foreign       connect, publish (QoS 1) on another device's topic, report the disconnect
  serve         connect, subscribe to the device's service topics, answer property sets
                and service calls, until stdin closes or --seconds pass
"""
import argparse
import hashlib
import hmac
import json
import queue
import sys
import threading
import time

import paho.mqtt.client as mqtt


def out(**kw):
    print(json.dumps(kw), flush=True)


def credentials(pk, dn, secret, any_id):
    ts = str(int(time.time() * 1000))
    client_id = f"{any_id}|securemode=3,signmethod=hmacsha256,timestamp={ts}|"
    username = f"{dn}&{pk}"
    content = f"clientId{any_id}deviceName{dn}productKey{pk}timestamp{ts}"
    password = hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest()
    return client_id, username, password


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pk", required=True)
    ap.add_argument("--dn", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--mode", default="post")
    ap.add_argument("--foreign-dn", default="someone-else")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--tls-ca", default="")
    a = ap.parse_args()

    client_id, username, password = credentials(a.pk, a.dn, a.secret, "paho-" + a.dn)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(username, password)
    if a.tls_ca:
        c.tls_set(ca_certs=a.tls_ca)
    inbox = queue.Queue()
    connected = threading.Event()
    gone = threading.Event()
    state = {}

    def on_connect(client, userdata, flags, rc, props=None):
        state["connack"] = rc.value if hasattr(rc, "value") else int(rc)
        connected.set()

    def on_disconnect(client, userdata, flags, rc, props=None):
        state["disconnect"] = rc.value if hasattr(rc, "value") else int(rc)
        gone.set()

    def on_message(client, userdata, msg):
        inbox.put((msg.topic, msg.payload))

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    try:
        c.connect(a.host, a.port, keepalive=a.keepalive)
    except Exception as e:  # refused at TCP level
        out(event="connect_error", error=str(e))
        return 1
    c.loop_start()
    if not connected.wait(10):
        out(event="connack", code=-1)
        return 1
    out(event="connack", code=state["connack"])
    if state["connack"] != 0:
        c.loop_stop()
        return 0

    sys_prefix = f"/sys/{a.pk}/{a.dn}/"

    def wait_reply(topic, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                t, p = inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if t == topic:
                return json.loads(p)
        return None

    if a.mode == "post":
        c.subscribe(sys_prefix + "thing/event/+/post_reply", qos=1)
        time.sleep(0.2)
        prop = sys_prefix + "thing/event/property/post"
        body = {"id": "1", "version": "1.0", "method": "thing.event.property.post",
                "params": {"LightSwitch": 1, "Brightness": {"value": 42, "time": 1700000000123}}}
        info = c.publish(prop, json.dumps(body), qos=1)
        info.wait_for_publish(10)
        out(event="puback", step="property", acked=info.is_published())
        out(event="reply", step="property", reply=wait_reply(prop + "_reply"))

        ev = sys_prefix + "thing/event/Alarm/post"
        body = {"id": "2", "version": "1.0", "method": "thing.event.Alarm.post",
                "params": {"value": {"Level": 3}, "time": 1700000000456}}
        info = c.publish(ev, json.dumps(body), qos=1)
        info.wait_for_publish(10)
        out(event="puback", step="event", acked=info.is_published())
        out(event="reply", step="event", reply=wait_reply(ev + "_reply"))

        info = c.publish(prop, b"{this is not json", qos=1)
        info.wait_for_publish(10)
        out(event="reply", step="malformed", reply=wait_reply(prop + "_reply"))

        body = {"id": "4", "version": "1.0", "method": "thing.event.nope.post", "params": {"A": 1}}
        info = c.publish(prop, json.dumps(body), qos=1)
        info.wait_for_publish(10)
        out(event="reply", step="unknown_method", reply=wait_reply(prop + "_reply"))
        out(event="still_connected", value=not gone.is_set())
        c.disconnect()
        c.loop_stop()
        out(event="done")
        return 0

    if a.mode == "foreign":
        topic = f"/sys/{a.pk}/{a.foreign_dn}/thing/event/property/post"
        body = {"id": "9", "version": "1.0", "params": {"LightSwitch": 0}}
        c.publish(topic, json.dumps(body), qos=1)
        out(event="disconnected", value=gone.wait(10))
        c.loop_stop()
        return 0

    if a.mode in ("connect-only", "serve"):
        if a.mode == "serve":
            c.subscribe(sys_prefix + "thing/service/#", qos=1)
            time.sleep(0.2)
        out(event="ready")
        stop = threading.Event()

        def watch_stdin():
            sys.stdin.read()
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        deadline = time.time() + a.seconds
        while time.time() < deadline and not stop.is_set() and not gone.is_set():
            try:
                t, p = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                req = json.loads(p)
            except ValueError:
                continue
            out(event="downlink", topic=t, request=req)
            if t == sys_prefix + "thing/service/property/set":
                c.publish(t + "_reply", json.dumps({"id": req["id"], "code": 200, "data": {}}), qos=0)
            elif t.startswith(sys_prefix + "thing/service/") and not t.endswith("_reply"):
                args = req.get("params", {})
                c.publish(t + "_reply", json.dumps(
                    {"id": req["id"], "code": 200, "data": {"echo": args, "ok": True}}), qos=0)
        if gone.is_set():
            out(event="disconnected", value=True, rc=state.get("disconnect"))
        else:
            c.disconnect()
        c.loop_stop()
        out(event="done")
        return 0

    out(event="error", error=f"unknown mode {a.mode}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
