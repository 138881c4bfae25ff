#!/usr/bin/env python3
"""A legacy HTTP push receiver (SPEC §8) on Python's http.server, for the server's tests.
It checks the MD5 sign itself: md5("appKey=${appKey}&message=${message}&msgCode=${msgCode}"
+ appSecret), lowercase hex.

Answers the n-th push with the n-th status of --plan (the last one repeats); a 200 comes
with the body {"code":200,"message":"success"}, anything else with {"code":<status>}.
A push with a bad sign is answered 401. With --verdicts stdin each push is printed first
and answered with the status read from the next line of stdin (the test decides).

Prints one JSON object per line on stdout:
  {"event":"listening", "port"}
  {"event":"push", "n", "path", "appKey", "msgCode", "message", "signOk", "status"}
"""
import argparse, hashlib, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


def out(**kw):
    print(json.dumps(kw), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--app-key", required=True)
    ap.add_argument("--app-secret", required=True)
    ap.add_argument("--plan", default="200", help="comma-separated statuses, e.g. 500,200")
    ap.add_argument("--verdicts", choices=["plan", "stdin"], default="plan")
    a = ap.parse_args()
    plan = [int(s) for s in a.plan.split(",")]
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n).decode("utf-8")
            form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
            app_key = form.get("appKey", "")
            msg_code = form.get("msgCode", "")
            message = form.get("message", "")
            signed = "appKey=%s&message=%s&msgCode=%s%s" % (app_key, message, msg_code, a.app_secret)
            sign_ok = (hashlib.md5(signed.encode("utf-8")).hexdigest() == form.get("sign", "").lower()
                       and app_key == a.app_key)
            with lock:
                count[0] += 1
                i = count[0]
            if not sign_ok:
                status = 401
            elif a.verdicts == "stdin":
                with lock:
                    out(event="push", n=i, path=self.path, appKey=app_key, msgCode=msg_code,
                        message=message, signOk=sign_ok, status=None)
                    status = int(sys.stdin.readline().strip() or 0) or 500
            else:
                status = plan[min(i, len(plan)) - 1]
            reply = {"code": 200, "message": "success"} if status == 200 else {"code": status}
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if a.verdicts == "stdin" and sign_ok:
                return
            out(event="push", n=i, path=self.path, appKey=app_key, msgCode=msg_code, message=message,
                signOk=sign_ok, status=status)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    out(event="listening", port=srv.server_address[1])
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
