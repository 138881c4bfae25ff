#!/usr/bin/env python3
"""An iotsync HTTP/2 (gRPC) consumer built only from the published .proto (SPEC §7), with
Python's grpcio, for the server's tests. The stubs are generated at start with
grpcio-tools from proto/iotsync/sync/v1/sync.proto; the metadata is signed here.

Prints one JSON object per line on stdout:
  {"event":"ready"}                          the call is started
  {"event":"message", "topic", "messageId", "generateTime", "payload" (base64), "attempt"}
  {"event":"acked", "messageId", "success"}  an ack was queued
  {"event":"status", "code", "details"}      the call ended with this gRPC status
  {"event":"done"}                           --max messages acked: half-closed, finished
  {"event":"fatal", "description"}           a missing peer library or a failed protoc

Policies: --fail-first N answers "commit failure" to the first delivery of the first N
messages and acks their redelivery; --ack-first N acks only the first N messages and
holds the rest unacknowledged (e.g. to be killed, or switched away); --ack-held-on-stdin
acks every held message when a line arrives on stdin; --max N half-closes after N
successful acks.
"""
import argparse, base64, hashlib, hmac, json, os, queue, sys, tempfile, threading, time


def out(**kw):
    print(json.dumps(kw), flush=True)


try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # the test turns this into a clear failure
    out(event="fatal", description="grpcio / grpcio-tools not installed: %s" % e)
    sys.exit(3)


def load_stubs(proto_root):
    gen = tempfile.mkdtemp(prefix="iotsync-grpc-py-")
    proto = os.path.join(proto_root, "iotsync", "sync", "v1", "sync.proto")
    rc = protoc.main(["grpc_tools.protoc", "-I" + proto_root, "--python_out=" + gen,
                      "--grpc_python_out=" + gen, proto])
    if rc != 0:
        out(event="fatal", description="grpc_tools.protoc failed with %d" % rc)
        sys.exit(3)
    sys.path.insert(0, gen)
    from iotsync.sync.v1 import sync_pb2, sync_pb2_grpc  # noqa: E402
    return sync_pb2, sync_pb2_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="host:port")
    ap.add_argument("--proto-root", required=True)
    ap.add_argument("--app-key", required=True)
    ap.add_argument("--app-secret", required=True)
    ap.add_argument("--group")
    ap.add_argument("--random-offset-ms", type=int, default=0)
    ap.add_argument("--bad-sign", action="store_true")
    ap.add_argument("--credit", type=int, default=16)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--ack-first", type=int, default=-1)
    ap.add_argument("--max", type=int, default=0)
    ap.add_argument("--ack-held-on-stdin", action="store_true")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--ca", help="PEM CA file: connect with TLS")
    a = ap.parse_args()

    pb, pb_grpc = load_stubs(a.proto_root)

    random = int(time.time() * 1000) + a.random_offset_ms
    sign = hmac.new(a.app_secret.encode(), ("random=%d" % random).encode(), hashlib.sha256).hexdigest()
    if a.bad_sign:
        sign = "0" * 64
    md = [("x-auth-name", "appkey"), ("x-auth-param-app-key", a.app_key),
          ("x-auth-param-sign-method", "SHA256"), ("x-auth-param-random", str(random)),
          ("x-auth-param-sign", sign), ("x-client-id", "grpcio-test-peer")]
    if a.group:
        md.append(("x-auth-param-group", a.group))

    q = queue.Queue()

    def requests():
        yield pb.ConsumeRequest(credit=pb.Credit(max_in_flight=a.credit))
        while True:
            item = q.get()
            if item is None:
                return
            yield item

    if a.ca:
        with open(a.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(a.target, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = grpc.insecure_channel(a.target)
    stub = pb_grpc.SyncServiceStub(channel)
    call = stub.Consume(requests(), metadata=md)
    timer = threading.Timer(a.timeout, call.cancel)
    timer.daemon = True
    timer.start()
    out(event="ready")

    seen = set()
    failed = set()
    acked = set()
    held = []
    lock = threading.Lock()

    def ack_held():
        for _line in sys.stdin:
            with lock:
                ids, held[:] = list(held), []
            for mid in ids:
                q.put(pb.ConsumeRequest(ack=pb.Ack(message_id=mid, success=True)))
                out(event="acked", messageId=mid, success=True)

    if a.ack_held_on_stdin:
        threading.Thread(target=ack_held, daemon=True).start()
    try:
        for resp in call:
            if not resp.HasField("message"):
                continue
            m = resp.message
            out(event="message", topic=m.topic, messageId=m.message_id, generateTime=m.generate_time,
                payload=base64.b64encode(m.payload).decode(), attempt=m.attempt)
            first = m.message_id not in seen
            seen.add(m.message_id)
            if first and len(failed) < a.fail_first:
                failed.add(m.message_id)
                q.put(pb.ConsumeRequest(ack=pb.Ack(message_id=m.message_id, success=False)))
                out(event="acked", messageId=m.message_id, success=False)
                continue
            if a.ack_first >= 0 and len(acked) >= a.ack_first and m.message_id not in acked:
                with lock:
                    held.append(m.message_id)
                continue  # held unacknowledged
            q.put(pb.ConsumeRequest(ack=pb.Ack(message_id=m.message_id, success=True)))
            acked.add(m.message_id)
            out(event="acked", messageId=m.message_id, success=True)
            if a.max and len(acked) >= a.max:
                q.put(None)  # half-close after the acks: the server finishes the stream
                break
        out(event="status", code="OK", details="")
    except grpc.RpcError as e:
        out(event="status", code=e.code().name, details=e.details() or "")
    if a.max and len(acked) >= a.max:
        # Let the acks reach the server before the channel goes.
        try:
            for _ in call:
                pass
        except grpc.RpcError:
            pass
        out(event="done")
    timer.cancel()
    channel.close()


if __name__ == "__main__":
    main()
