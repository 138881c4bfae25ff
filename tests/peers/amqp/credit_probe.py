#!/usr/bin/env python3
"""Apache Qpid Proton probes of an iotsync AMQP 1.0 server's flow rules, for the
server's tests (crates/iotsync-server/tests/amqp_rules.rs). JSON lines on stdout.

--mode credit: grants --credit once (no automatic prefetch), holds what arrives until
  the credit is used up, then waits --hold-ms (the server must send nothing meanwhile),
  accepts everything held and grants the same credit again; stops after --count
  messages. Prints {"event":"message","unsettled":N} per message and
  {"event":"done","received":N,"max_unsettled":M,"over_credit":K}.
--mode heartbeat: connects with a local idle time-out of --idle-ms (Proton closes the
  connection if the server sends nothing for that long), attaches a receiver, prints
  {"event":"alive"} after --wait-ms if the connection is still open, then receives
  --count messages (accepting each) and prints {"event":"done"}.
Errors: {"event":"error","scope","condition","description"}.
"""
import argparse, base64, hashlib, hmac, json, sys

try:
    from proton.handlers import MessagingHandler
    from proton.reactor import Container
except ImportError as e:  # the test turns this into a clear failure
    print(json.dumps({"event": "fatal", "description": "python-qpid-proton is not installed: %s" % e}), flush=True)
    sys.exit(3)


def out(**kw):
    print(json.dumps(kw), flush=True)


class Probe(MessagingHandler):
    def __init__(self, a):
        # prefetch=0: no automatic credit; the probe grants it by hand.
        super().__init__(prefetch=0 if a.mode == "credit" else a.credit, auto_accept=False, auto_settle=True)
        self.a = a
        self.held = []
        self.received = 0
        self.max_unsettled = 0
        self.over_credit = 0
        self.holding = False
        self.reported = False
        self.receiver = None

    def on_start(self, event):
        a = self.a
        user = "%s|authMode=appkey,signMethod=SHA256,random=%d,appKey=%s|" % (a.client_id, a.ts, a.app_key)
        mac = hmac.new(a.app_secret.encode(), ("random=%d" % a.ts).encode(), hashlib.sha256).digest()
        kw = dict(user=user, password=base64.b64encode(mac).decode(), allowed_mechs="PLAIN",
                  allow_insecure_mechs=True, sasl_enabled=True, reconnect=False)
        if a.mode == "heartbeat":
            kw["heartbeat"] = a.idle_ms / 1000.0
        self.conn = event.container.connect(a.url, **kw)
        self.receiver = event.container.create_receiver(self.conn, "default")
        if a.mode == "heartbeat":
            event.container.schedule(a.wait_ms / 1000.0, self)

    def on_link_opened(self, event):
        if self.a.mode == "credit" and event.receiver is not None:
            event.receiver.flow(self.a.credit)
            out(event="opened")
        elif event.receiver is not None:
            out(event="opened")

    def on_timer_task(self, event):
        if self.a.mode == "heartbeat":
            if not self.reported and self.conn.state & self.conn.REMOTE_ACTIVE:
                out(event="alive")
            return
        # credit mode: the hold is over; settle and grant again.
        n = len(self.held)
        for d in self.held:
            self.accept(d)
        self.held = []
        self.holding = False
        if self.received >= self.a.count:
            out(event="done", received=self.received, max_unsettled=self.max_unsettled, over_credit=self.over_credit)
            self.receiver.close()
        else:
            self.receiver.flow(n)

    def on_message(self, event):
        self.received += 1
        if self.a.mode == "heartbeat":
            self.accept(event.delivery)
            out(event="message", messageId=(event.message.properties or {}).get("messageId"))
            if self.received >= self.a.count:
                out(event="done")
                event.receiver.close()
            return
        self.held.append(event.delivery)
        unsettled = len(self.held)
        self.max_unsettled = max(self.max_unsettled, unsettled)
        if unsettled > self.a.credit:
            self.over_credit += 1
        out(event="message", unsettled=unsettled)
        if (unsettled >= self.a.credit or self.received >= self.a.count) and not self.holding:
            self.holding = True
            event.container.schedule(self.a.hold_ms / 1000.0, self)

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

    def on_disconnected(self, event):
        if not self.reported and event.connection is not None:
            self._err("connection", event.connection.remote_condition)
        out(event="disconnected")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--app-key", required=True)
    p.add_argument("--app-secret", required=True)
    p.add_argument("--ts", type=int, required=True)
    p.add_argument("--client-id", default="py-probe")
    p.add_argument("--mode", default="credit", choices=["credit", "heartbeat"])
    p.add_argument("--credit", type=int, default=5)
    p.add_argument("--count", type=int, default=50)
    p.add_argument("--hold-ms", type=int, default=300)
    p.add_argument("--idle-ms", type=int, default=2000)
    p.add_argument("--wait-ms", type=int, default=7000)
    a = p.parse_args()
    Container(Probe(a)).run()
    out(event="exit")


if __name__ == "__main__":
    main()
