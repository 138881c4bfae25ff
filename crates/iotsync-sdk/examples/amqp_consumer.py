"""Consume a project's sync messages over AMQP 1.0 with python-qpid-proton and print them.

    pip install python-qpid-proton
    IOTSYNC_ENDPOINT=amqp://127.0.0.1:5682 IOTSYNC_APP_KEY=... IOTSYNC_APP_SECRET=... \
        python3 amqp_consumer.py

IOTSYNC_GROUP names a consumer group (default: the AppKey's default group).
IOTSYNC_MAX_MESSAGES stops after that many messages (default: run until interrupted).
Delivery is at-least-once: de-duplicate by messageId.
"""
import base64
import hashlib
import hmac
import os
import time

from proton.handlers import MessagingHandler
from proton.reactor import Container

ENDPOINT = os.environ["IOTSYNC_ENDPOINT"]
APP_KEY = os.environ["IOTSYNC_APP_KEY"]
APP_SECRET = os.environ["IOTSYNC_APP_SECRET"]  # shown once when the project was created
GROUP = os.environ.get("IOTSYNC_GROUP", APP_KEY)
MAX_MESSAGES = int(os.environ.get("IOTSYNC_MAX_MESSAGES", "0"))


class Consumer(MessagingHandler):
    def __init__(self):
        super().__init__(prefetch=64, auto_accept=False)
        self.received = 0

    def on_start(self, event):
        ms = str(int(time.time() * 1000))
        user = (f"example-consumer|authMode=appkey,signMethod=SHA256,"
                f"random={ms},appKey={APP_KEY},groupId={GROUP}|")
        password = base64.b64encode(hmac.new(APP_SECRET.encode(), f"random={ms}".encode(),
                                             hashlib.sha256).digest()).decode()
        conn = event.container.connect(ENDPOINT, user=user, password=password,
                                       allowed_mechs="PLAIN", allow_insecure_mechs=True,
                                       heartbeat=60)
        event.container.create_receiver(conn, "default")

    def on_message(self, event):
        props = event.message.properties      # topic, messageId, generateTime
        payload = bytes(event.message.body)   # UTF-8 JSON
        print(props["generateTime"], props["messageId"], props["topic"], payload.decode(),
              flush=True)
        self.accept(event.delivery)           # ack; self.release(...) = deliver again later
        self.received += 1
        if MAX_MESSAGES and self.received >= MAX_MESSAGES:
            event.connection.close()


Container(Consumer()).run()
