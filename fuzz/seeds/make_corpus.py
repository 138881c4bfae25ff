#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ (small valid inputs, a few invalid).

Run from anywhere: python3 fuzz/seeds/make_corpus.py. Deterministic; the files are
named after a hash of their content, as libFuzzer names what it adds.
"""
import hashlib
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


# ---- MQTT 3.1.1 -------------------------------------------------------------
def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def rlen(n):
    out = b""
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out += bytes([b])
        if not n:
            return out


def pkt(first, body):
    return bytes([first]) + rlen(len(body)) + body


connect = pkt(0x10, mstr("MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60)
              + mstr("dev-1|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|")
              + mstr("lamp-0001&a1B2c3D4e5F") + mstr("0" * 64))
publish1 = pkt(0x32, mstr("/sys/a1B2c3D4e5F/lamp-0001/thing/event/property/post")
               + struct.pack(">H", 7) + b'{"id":"1","version":"1.0","params":{"t":1}}')
put("mqtt_codec", connect)
put("mqtt_codec", connect + publish1 + pkt(0x40, struct.pack(">H", 7)))
put("mqtt_codec", pkt(0x30, mstr("t") + b"payload"))
put("mqtt_codec", pkt(0x82, struct.pack(">H", 3) + mstr("/sys/pk/dn/#") + b"\x01"))
put("mqtt_codec", pkt(0xA2, struct.pack(">H", 4) + mstr("a")))
put("mqtt_codec", pkt(0x90, struct.pack(">H", 3) + b"\x01\x80"))
put("mqtt_codec", b"\xc0\x00\xd0\x00\xe0\x00")
put("mqtt_codec", pkt(0x20, b"\x00\x05"))

# ---- AMQP ---------------------------------------------------------------------
SASL_HEADER = b"AMQP\x03\x01\x00\x00"


def frame(body, ftype=0, channel=0):
    return struct.pack(">IBBH", 8 + len(body), 2, ftype, channel) + body


def sym(s):
    b = s.encode()
    return (b"\xa3" + bytes([len(b)]) + b) if len(b) < 256 else (b"\xb3" + struct.pack(">I", len(b)) + b)


def vbin(b):
    return b"\xa0" + bytes([len(b)]) + b


def list8(items):
    body = b"".join(items)
    return b"\xc0" + bytes([len(body) + 1, len(items)]) + body


def described(code, value):
    return b"\x00\x53" + bytes([code]) + value


user = ("client-1|authMode=aksign,signMethod=hmacsha256,timestamp=1700000000000,"
        "authId=12345678,consumerGroupId=DEFAULT_GROUP|")
plain = b"\x00" + user.encode() + b"\x00" + b"c2lnbmF0dXJl"
sasl_init = frame(described(0x41, list8([sym("PLAIN"), vbin(plain)])), ftype=1)
put("amqp_sasl", SASL_HEADER + sasl_init)
put("amqp_sasl", SASL_HEADER + frame(described(0x41, list8([sym("ANONYMOUS")])), ftype=1))
put("amqp_sasl", b"AMQP\x00\x01\x00\x00")
# The 32-byte frame of issue 15, finding 1 (a symbol claiming 1 GiB).
put("amqp_sasl", bytes.fromhex("414d515003010000000000180201000000534" "1c00a01b340000000504c41494e"))


def uint(n):
    if n == 0:
        return b"\x43"
    if n < 256:
        return b"\x52" + bytes([n])
    return b"\x70" + struct.pack(">I", n)


def disposition(first, last=None, settled=True, state=b"\x00\x53\x24\x45", list32=False):
    items = [b"\x41", uint(first), uint(last) if last is not None else b"\x40",
             b"\x41" if settled else b"\x42", state]
    if list32:
        body = b"".join(items)
        l = b"\xd0" + struct.pack(">II", len(body) + 4, len(items)) + body
    else:
        l = list8(items)
    return frame(described(0x15, l))


open_ = frame(described(0x10, list8([b"\xa1\x06client"])))
begin = frame(described(0x11, list8([b"\x40", b"\x43", b"\x70\x00\x00\x08\x00", b"\x70\x00\x00\x08\x00"])))
flow = frame(described(0x13, list8([b"\x43", b"\x70\x00\x00\x08\x00", b"\x43", b"\x70\x00\x00\x08\x00"])), channel=1)
heartbeat = struct.pack(">IBBH", 8, 2, 0, 0)
accepts = b"".join(disposition(i) for i in range(5, 12))
put("amqp_merge", b"\x00" + accepts)
put("amqp_merge", b"\x07" + disposition(1, 4) + disposition(5) + disposition(7) + flow + disposition(8, list32=True))
put("amqp_merge", b"\xff" + disposition(1) + disposition(2, settled=False) + disposition(3, state=b"\x00\x53\x26\x45"))
put("amqp_merge", b"\x10" + heartbeat + open_ + begin + accepts)
put("amqp_frame", open_ + begin + flow + accepts + heartbeat)
put("amqp_frame", open_ + frame(described(0x18, list8([b"\x41"]))))

# ---- signing ----------------------------------------------------------------
put("sasl_username", user + "\0c2lnbmF0dXJl\0app-secret")
put("sasl_username", "client-1|authMode=appkey,signMethod=SHA256,random=1700000000000,appKey=12345678,groupId=g1|\0\0s")
put("sasl_username", "c|authMode=aksign,signMethod=hmacmd5,timestamp=1,authId=12345678,iotInstanceId=|\0x\0")
put("http2_auth", "appkey\n12345678\nSHA256\n1700000000000\n" + "ab" * 32 + "\nanalytics\nsecret")
put("http2_auth", "appkey\n12345678\nsha256\n1700000000000\n00\n\x7f\n")
gw = ("POST\n/cloud/thing/info/get\nb=2&a=1\nsecret\n"
      "Accept: application/json\nContent-Type: application/json\nX-Ca-Key: 12345678\n"
      "X-Ca-Timestamp: 1700000000000\nX-Ca-Nonce: 7c9d5b2e-1\nX-Ca-Signature-Method: HmacSHA256\n"
      "X-Ca-Signature-Headers: x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp\n"
      "X-Ca-Signature: AAAA\nContent-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\n\n")
put("api_gateway", gw)
put("api_gateway", gw + '{"id":"1","params":{}}')
put("webhook_form", "12345678\0account.create\0{\"identityId\":\"u1\"}\0s3cret\0"
    "appKey=12345678&msgCode=account.create&message=%7B%22identityId%22%3A%22u1%22%7D&sign=00")
put("webhook_form", "12345678\0thing.property.post\0a b+c&d=e%\0secret\0sign=x&appKey=1")
put("device_credentials", "dev-123|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|\0light_01&a1B2c3D4e5F\0" + "0" * 64 + "\0device-secret")
put("device_credentials", "d|securemode=2,signmethod=hmacmd5,_v=1.0,lan=C,ext=1|\0dn_1&pk000001\0AB\0s")

# ---- REST and cloud API bodies ------------------------------------------------
# rest_json: first byte = route index (rest_json.rs ROUTES).
rest = [
    (0, {"name": "p1"}),
    (1, {"name": "Lamp", "deviceType": "Light", "productKey": "pk000001"}),
    (2, {"deviceName": "lamp-0002"}),
    (3, {"items": {"temperature": 21.5, "on": True}}),
    (4, {"value": {"level": 3}, "type": "alert", "name": "Alarm"}),
    (5, {"loginName": "bob", "nickName": "Bob", "phone": "123", "email": "b@x"}),
    (6, {"nickName": "B"}),
    (7, {"identityId": "$ID", "iotId": "$IOT", "owned": 0}),
    (8, {"method": "amqp"}),
    (9, {"method": "http2"}),
    (10, {"url": "http://127.0.0.1:9/push"}),
    (11, {"enabled": False}),
    (12, {"activated": True}),
    (13, {"name": "imported", "appKey": "87654321", "appSecret": "0123456789abcdef0123456789abcdef",
          "sync": {"enabled": True, "method": "amqp"}}),
]
for i, b in rest:
    put("rest_json", bytes([i]) + json.dumps(b).encode())
put("rest_json", b"\x03{\"items\":")

ops = ["/cloud/token", "/cloud/thing/info/get", "/cloud/thing/status/get",
       "/cloud/thing/properties/get", "/cloud/thing/properties/set", "/cloud/thing/service/invoke",
       "/cloud/thing/property/timeline/get", "/cloud/thing/productList/get",
       "/cloud/account/queryIdentityByPage", "/cloud/device/queryByUser",
       "/cloud/user/device/unbind", "/cloud/sync/stats/get"]
params = [
    {"grantType": "project", "res": "$PID"},
    {"iotId": "$IOT"},
    {"productKey": "$PK", "deviceName": "$DN"},
    {"iotId": "$IOT"},
    {"iotId": "$IOT", "items": {"on": 1}},
    {"iotId": "$IOT", "identifier": "reboot", "args": {"delay": 1}},
    {"iotId": "$IOT", "identifier": "temperature", "start": 0, "end": 9999999999999, "limit": 10, "asc": True},
    {"pageNo": 1, "pageSize": 20},
    {"pageNo": 2, "pageSize": 5},
    {"identityId": "$ID", "pageNo": 1},
    {"identityId": "$ID", "iotId": "$IOT"},
    {},
]
for i, (op, p) in enumerate(zip(ops, params)):
    env = {"id": str(i), "version": "1.0", "request": {"apiVer": "1.0.0", "cloudToken": "$TOKEN"}, "params": p}
    put("cloud_json", bytes([i]) + json.dumps(env).encode())
put("cloud_json", b"\x01[1,2]")

# ---- config files --------------------------------------------------------------
put("config_toml", "")
put("config_toml", 'data_dir = "/var/lib/iotsync"\n[api]\nlisten = "127.0.0.1:8080"\nmax_body_bytes = 2097152\n')
put("config_toml", '[delivery]\nack_timeout = "30s"\nretry_initial = "1s"\nretry_max = "5m"\n'
    'retry_factor = 2.0\nretention_amqp = "1day"\nindex_memory = "32 MiB"\n')
put("config_toml", '[amqp]\nlisten = ""\nio_threads = 2\n[log]\nformat = "json"\nlevel = "info"\n')
put("config_toml", '[tls]\ncert_file = "a.pem"\n')

# ---- regressions: what the targets found (docs/fuzzing.md, findings) ----------------
# F1: a sym32 claiming ~4 GiB in a 22-byte frame (issue 15 finding 1, after SASL).
put("amqp_frame", bytes.fromhex("000000160200000000b3ef3ffa0000090000002f00000000800901a100696500160200000000adef3ffa0000090000002f00000000800901a10069656e740000000f02000020005318c00000656900746e000f02000000002d5318c0020141806e740000000f02000020005318c00000656900746e000f02000000002d5318c0020141801a02"))
# F1: a sasl-init whose values claim more than the frame holds (issue 15 finding 1).
put("amqp_sasl", bytes.fromhex("414d5150030100000000009a020100b1b1b1b1b1b1b1b1b1b1b1b1b100942f000000000000005341c08d02a305504c005341c08d02a305504c41494ea08341c08d02a305504c41494ea083006301000000000018020100000053524f4c545f47524f55507c0063d06c6e6252686f0027686d61637301000000000000236c6530303030303001000000000000233301000000000000006e73756d657247726f000053524f4c545f47524f55507c0063554a6c"))
# F3: a list32 claiming 2^32-1 elements: serde_amqp's field count overflows.
put("amqp_merge", bytes.fromhex("070000001802000000005315c00b05415201520441005324450000001702000000005315c00a054152054041005324450000001702000000005315c00a054152074041005324450000001a02000001005313c00d044370000008004370000008000000001d02000000005315d000ffffffffffffffffffffffff00000d00000005415208404100532645"))
# F2: frames of size 4..7 after SASL: fe2o3's FrameDecoder reads past the end and panics.
put("amqp_frame", bytes.fromhex("0000000502000000"))
put("amqp_frame", bytes.fromhex("00000006020000000000"))
put("amqp_bounded", b"\x00" + open_ + begin + flow + accepts)
put("amqp_bounded", b"\x03" + bytes.fromhex("0000000502000000"))
put("amqp_bounded", b"\x00" + bytes.fromhex("000000160200000000b3ef3ffa0000090000002f00000000800901a100696500160200000000adef3ffa0000090000002f00000000800901a10069656e740000000f02000020005318c00000656900746e000f02000000002d5318c0020141806e740000000f02000020005318c00000656900746e000f02000000002d5318c0020141801a02"))
