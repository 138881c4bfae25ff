#!/usr/bin/env python3
"""Independent test vectors for iotsync_core::sign (SPEC §6-§10).

Uses only Python's hmac, hashlib and base64, not the Rust code, so the Rust tests in
sign_vectors.rs check the implementation against a second one. Prints Rust `const`
lines; paste them into sign_vectors.rs.

    python3 crates/iotsync-core/tests/gen_sign_vectors.py
"""
import base64
import hashlib
import hmac

APP_KEY = "28596712"
APP_SECRET = "e2a7b0c9d41f4c3e8b6a5d7f9c0e1a2b"
MS = 1700000000123
DEVICE_SECRET = "Zx9QwErTyUiOp1234567890AsDfGhJkL"
METHODS = {"hmacmd5": hashlib.md5, "hmacsha1": hashlib.sha1, "hmacsha256": hashlib.sha256}


def mac(method, key, msg):
    return hmac.new(key.encode(), msg.encode(), METHODS[method]).digest()


def b64(b):
    return base64.b64encode(b).decode()


def const(name, value):
    # Rust string literal; every value here is ASCII or plain UTF-8 without quotes.
    esc = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    print(f'const {name}: &str = "{esc}";')


# §6 AMQP, app-key form
const("AMQP_APPKEY_PASSWORD", b64(mac("hmacsha256", APP_SECRET, f"random={MS}")))
# §6 AMQP, access-key form, each method
for m in METHODS:
    const(f"AMQP_AKSIGN_{m.upper()}_PASSWORD",
          b64(mac(m, APP_SECRET, f"authId={APP_KEY}&timestamp={MS}")))

# §7 HTTP/2
const("HTTP2_SIGN", mac("hmacsha256", APP_SECRET, f"random={MS}").hex())

# §8 webhook: MD5(appKey=..&message=..&msgCode=.. + secret), lowercase hex
WEBHOOK_MESSAGE = '{"identityId":"50f1a2b3c4","nickName":"温度计"}'
WEBHOOK_CODE = "account.create"
const("WEBHOOK_SIGN", hashlib.md5(
    f"appKey={APP_KEY}&message={WEBHOOK_MESSAGE}&msgCode={WEBHOOK_CODE}{APP_SECRET}".encode()
).hexdigest())

# §9 API gateway, a POST with a body and query parameters
BODY = '{"id":"42","version":"1.0","request":{"apiVer":"1.0.0"},"params":{"grantType":"project","res":"p1"}}'
content_md5 = b64(hashlib.md5(BODY.encode()).digest())
headers = {
    "accept": "application/json",
    "content-md5": content_md5,
    "content-type": "application/json; charset=utf-8",
    "date": "Tue, 14 Nov 2023 22:13:20 GMT",
    "x-ca-key": APP_KEY,
    "x-ca-timestamp": str(MS),
    "x-ca-nonce": "c9f2a3e4-5b6c-4d7e-8f90-a1b2c3d4e5f6",
    "x-ca-signature-method": "HmacSHA256",
    "x-ca-signature-headers": "x-ca-timestamp,x-ca-key,x-ca-signature-method,x-ca-nonce",
}
signed = sorted(h.strip().lower() for h in headers["x-ca-signature-headers"].split(","))
query = [("pageSize", "20"), ("pageNo", "1")]
sts = "POST\n" + "\n".join(headers.get(h, "") for h in
                           ["accept", "content-md5", "content-type", "date"]) + "\n"
sts += "".join(f"{h}:{headers.get(h, '')}\n" for h in signed)
sts += "/cloud/token" + "?" + "&".join(f"{k}={v}" for k, v in sorted(query))
const("GATEWAY_BODY", BODY)
const("GATEWAY_CONTENT_MD5", content_md5)
const("GATEWAY_STRING_TO_SIGN", sts)
const("GATEWAY_SIGNATURE", b64(mac("hmacsha256", APP_SECRET, sts)))

# §9 API gateway, an empty body, no Date, no query
sts2 = "POST\napplication/json\n\napplication/json\n\n"
sts2 += f"x-ca-key:{APP_KEY}\nx-ca-nonce:n-2\nx-ca-signature-method:HmacSHA256\nx-ca-timestamp:{MS}\n"
sts2 += "/cloud/sync/stats/get"
const("GATEWAY_EMPTY_STRING_TO_SIGN", sts2)
const("GATEWAY_EMPTY_SIGNATURE", b64(mac("hmacsha256", APP_SECRET, sts2)))
const("CONTENT_MD5_OF_EMPTY_BODY", b64(hashlib.md5(b"").digest()))

# §10 device: HMAC(deviceSecret, clientId..deviceName..productKey..[timestamp..]), hex
DN, PK, ANY = "light_01", "a1B2c3D4e5F", "AA:BB:CC:DD:EE:FF"
for m in METHODS:
    const(f"DEVICE_{m.upper()}_PASSWORD",
          mac(m, DEVICE_SECRET, f"clientId{ANY}deviceName{DN}productKey{PK}timestamp{MS}").hex())
const("DEVICE_HMACSHA256_NO_TIMESTAMP_PASSWORD",
      mac("hmacsha256", DEVICE_SECRET, f"clientId{ANY}deviceName{DN}productKey{PK}").hex())
