#!/usr/bin/env python3
"""Calls the iotsync cloud API the way an enterprise server written for the platform
does: API-gateway signature computed here from the spec (SPEC §9), standard library only.

Prints {"status": HTTP status, "body": parsed JSON answer} on stdout.
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.request
import uuid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="http://host:port")
    ap.add_argument("--app-key", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--params", default="{}")
    ap.add_argument("--token", default="")
    ap.add_argument("--ts", type=int, default=0, help="X-Ca-Timestamp (ms); default now")
    ap.add_argument("--nonce", default="")
    ap.add_argument("--tamper", action="store_true", help="sign, then change the body")
    a = ap.parse_args()

    request = {"apiVer": "1.0.0"}
    if a.token:
        request["cloudToken"] = a.token
    body = json.dumps({"id": str(uuid.uuid4()), "version": "1.0", "request": request,
                       "params": json.loads(a.params)}).encode()
    ts = str(a.ts or int(time.time() * 1000))
    nonce = a.nonce or str(uuid.uuid4())
    accept = "application/json"
    content_type = "application/octet-stream; charset=utf-8"
    content_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    headers = {
        "Accept": accept,
        "Content-Type": content_type,
        "Content-MD5": content_md5,
        "X-Ca-Key": a.app_key,
        "X-Ca-Timestamp": ts,
        "X-Ca-Nonce": nonce,
        "X-Ca-Signature-Method": "HmacSHA256",
        "X-Ca-Signature-Headers": "x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp",
    }
    signed = sorted(h.lower() for h in headers["X-Ca-Signature-Headers"].split(","))
    lower = {k.lower(): v for k, v in headers.items()}
    string_to_sign = "POST\n" + accept + "\n" + content_md5 + "\n" + content_type + "\n" + "" + "\n"
    for name in signed:
        string_to_sign += name + ":" + lower[name] + "\n"
    string_to_sign += a.path
    headers["X-Ca-Signature"] = base64.b64encode(
        hmac.new(a.secret.encode(), string_to_sign.encode(), hashlib.sha256).digest()).decode()
    if a.tamper:
        body = body.replace(b'"version": "1.0"', b'"version": "1.1"')
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()

    req = urllib.request.Request(a.base + a.path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({"status": status, "body": parsed}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
