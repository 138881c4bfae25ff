#!/usr/bin/env python3
"""An iotsync AMQP 1.0 consumer written with Apache Qpid Proton, for the server's tests.

Prints one JSON object per line on stdout:
  {"event":"message", "topic", "messageId", "generateTime", "amqpMessageId", "payload", "deliveryCount"}
  {"event":"settled", "messageId", "outcome"}
  {"event":"error", "scope": "transport|connection|link", "condition", "description"}
  {"event":"opened"} / {"event":"done"}

Credentials: --username/--password as given, or computed from --app-key/--app-secret
(app-key form: Base64(HMAC-SHA256(secret, "random=<ms>"))) or --auth aksign with
--sign-method (access-key form).
"""
import argparse, base64, hashlib, hmac, json, sys

try:
    from proton import SSLDomain
    from proton.handlers import MessagingHandler
    from proton.reactor import Container
except ImportError as e:  # the test turns this into a clear failure
    print(json.dumps({"event": "fatal", "description": "python-qpid-proton is not installed: %s" % e}), flush=True)
    sys.exit(3)


def out(**kw):
    print(json.dumps(kw), flush=True)


def credentials(a):
    if a.username is not None:
        return a.username, a.password or ""
    group = ",groupId=%s" % a.group if a.group else ""
    if a.auth == "appkey":
        user = "%s|authMode=appkey,signMethod=SHA256,random=%d,appKey=%s%s|" % (a.client_id, a.ts, a.app_key, group)
        mac = hmac.new(a.app_secret.encode(), ("random=%d" % a.ts).encode(), hashlib.sha256).digest()
    else:
        group = ",consumerGroupId=%s" % a.group if a.group else ""
        user = "%s|authMode=aksign,signMethod=%s,timestamp=%d,authId=%s,iotInstanceId=%s|" % (
            a.client_id, a.sign_method, a.ts, a.app_key, group)
        digest = {"hmacmd5": hashlib.md5, "hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256}[a.sign_method]
        mac = hmac.new(a.app_secret.encode(), ("authId=%s&timestamp=%d" % (a.app_key, a.ts)).encode(), digest).digest()
    return user, base64.b64encode(mac).decode()


class Consumer(MessagingHandler):
    def __init__(self, a):
        super().__init__(prefetch=a.credit, auto_accept=False, auto_settle=True)
        self.a = a
        self.received = 0
        self.seen = set()
        self.reported = False

    def on_start(self, event):
        user, password = credentials(self.a)
        kw = dict(user=user, password=password, allowed_mechs="PLAIN", sasl_enabled=True, reconnect=False)
        if self.a.ca:
            domain = SSLDomain(SSLDomain.MODE_CLIENT)
            domain.set_trusted_ca_db(self.a.ca)
            domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
            kw.update(ssl_domain=domain, virtual_host="localhost")
        else:
            kw.update(allow_insecure_mechs=True)
        self.conn = event.container.connect(self.a.url, **kw)
        if self.a.mode == "send":
            event.container.create_sender(self.conn, "default")
        elif self.a.mode != "idle":
            event.container.create_receiver(self.conn, "default")

    def on_connection_opened(self, event):
        out(event="opened")
        if self.a.mode == "login":
            out(event="done")
            event.connection.close()

    def on_message(self, event):
        m = event.message
        props = m.properties or {}
        mid = props.get("messageId")
        body = m.body
        if isinstance(body, memoryview):
            body = body.tobytes()
        out(event="message", topic=props.get("topic"), messageId=mid,
            generateTime=props.get("generateTime"), generateTimeType=type(props.get("generateTime")).__name__,
            amqpMessageId=m.id, bodyType=type(m.body).__name__,
            payload=json.loads(bytes(body).decode("utf-8")), deliveryCount=m.delivery_count)
        self.received += 1
        d = self.a.disposition
        if d == "release-first":
            d = "accept" if mid in self.seen else "release"
        self.seen.add(mid)
        if d == "accept":
            self.accept(event.delivery)
        elif d == "release":
            self.release(event.delivery, delivered=False)
        elif d == "modify":
            self.release(event.delivery, delivered=True)
        elif d == "reject":
            self.reject(event.delivery)
        if d != "none":
            out(event="settled", messageId=mid, outcome=d)
        if self.a.count and self.received >= self.a.count and d != "none":
            out(event="done")
            # Detach first: the link's last dispositions reach the server before the
            # connection closes; the connection is closed once the detach is answered.
            event.receiver.close()

    def on_link_closed(self, event):
        event.connection.close()

    def _err(self, scope, cond):
        if cond is not None and not self.reported:
            self.reported = True
            out(event="error", scope=scope, condition=cond.name, description=cond.description)

    def on_transport_error(self, event):
        self._err("transport", event.transport.condition)
        event.connection.close()

    def on_connection_error(self, event):
        self._err("connection", event.connection.remote_condition)
        event.connection.close()

    def on_link_error(self, event):
        self._err("link", event.link.remote_condition)
        event.connection.close()

    def on_connection_closed(self, event):
        out(event="closed")

    def on_disconnected(self, event):
        # A close frame followed at once by end-of-stream may reach us only here.
        if not self.reported and event.connection is not None:
            self._err("connection", event.connection.remote_condition)
        out(event="disconnected")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--app-key")
    p.add_argument("--app-secret")
    p.add_argument("--ts", type=int)
    p.add_argument("--group")
    p.add_argument("--client-id", default="py-client")
    p.add_argument("--auth", default="appkey", choices=["appkey", "aksign"])
    p.add_argument("--sign-method", default="hmacsha256")
    p.add_argument("--ca")
    p.add_argument("--credit", type=int, default=10)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--mode", default="receive", choices=["receive", "login", "send", "idle"])
    p.add_argument("--disposition", default="accept",
                   choices=["accept", "release", "modify", "reject", "none", "release-first"])
    a = p.parse_args()
    Container(Consumer(a)).run()
    out(event="exit")


if __name__ == "__main__":
    main()
