#!/usr/bin/env python3
"""A minimal python-qpid-proton receiver for the HTTP/2 → AMQP switching test: prints the
raw bytes of each message's Data section (base64), so they can be compared byte for byte
with what grpcio received over HTTP/2. App-key credentials of SPEC §6, computed here.

Prints {"event":"message", "topic", "messageId", "generateTime", "payload"} per message
(accepting each), {"event":"done"} after --count messages, {"event":"error", ...} on a
refused connection, {"event":"fatal", ...} when proton is missing.
"""
import argparse, base64, hashlib, hmac, json, sys, time


def out(**kw):
    print(json.dumps(kw), flush=True)


try:
    from proton.handlers import MessagingHandler
    from proton.reactor import Container
except ImportError as e:
    out(event="fatal", description="python-qpid-proton is not installed: %s" % e)
    sys.exit(3)


class Receiver(MessagingHandler):
    def __init__(self, a):
        super().__init__(prefetch=a.credit, auto_accept=False)
        self.a = a
        self.n = 0

    def on_start(self, event):
        ts = int(time.time() * 1000)
        user = "py-switch|authMode=appkey,signMethod=SHA256,random=%d,appKey=%s|" % (ts, self.a.app_key)
        pw = base64.b64encode(hmac.new(self.a.app_secret.encode(), ("random=%d" % ts).encode(),
                                       hashlib.sha256).digest()).decode()
        conn = event.container.connect(self.a.url, user=user, password=pw, allowed_mechs="PLAIN",
                                       allow_insecure_mechs=True, sasl_enabled=True, reconnect=False)
        event.container.create_receiver(conn, "default")

    def on_message(self, event):
        m = event.message
        props = m.properties or {}
        body = m.body
        if isinstance(body, memoryview):
            body = body.tobytes()
        if isinstance(body, str):
            body = body.encode("utf-8")
        out(event="message", topic=props.get("topic"), messageId=props.get("messageId"),
            generateTime=props.get("generateTime"), payload=base64.b64encode(bytes(body)).decode())
        self.accept(event.delivery)
        self.n += 1
        if self.a.count and self.n >= self.a.count:
            out(event="done")
            event.connection.close()

    def on_transport_error(self, event):
        c = event.transport.condition
        out(event="error", condition=c and c.name, description=c and c.description)
        event.connection.close()

    def on_connection_error(self, event):
        c = event.connection.remote_condition
        out(event="error", condition=c and c.name, description=c and c.description)
        event.connection.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--app-key", required=True)
    p.add_argument("--app-secret", required=True)
    p.add_argument("--credit", type=int, default=50)
    p.add_argument("--count", type=int, default=0)
    Container(Receiver(p.parse_args())).run()


if __name__ == "__main__":
    main()
