//! Fixed vectors for every signing scheme and every HMAC method, computed independently
//! with Python's `hmac`, `hashlib` and `base64` by `tests/gen_sign_vectors.py` (run
//! `python3 crates/iotsync-core/tests/gen_sign_vectors.py`; the constants below are its
//! output, pasted unchanged). The inputs here must match the ones in that script.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use iotsync_core::sign::amqp::{self, AmqpAuthMode, AmqpCredentials};
use iotsync_core::sign::api_gateway::{self, GatewayRequest, OutgoingRequest};
use iotsync_core::sign::device::{self, DeviceClientId, DeviceUsername};
use iotsync_core::sign::http2::{self, Http2AuthParams};
use iotsync_core::sign::webhook::{self, WebhookFields};
use iotsync_core::sign::{HmacMethod, SignError, FRESHNESS_WINDOW_MS};
use iotsync_core::AppKey;

// Inputs (same as gen_sign_vectors.py).
const APP_KEY: &str = "28596712";
const APP_SECRET: &str = "e2a7b0c9d41f4c3e8b6a5d7f9c0e1a2b";
const MS: i64 = 1_700_000_000_123;
const DEVICE_SECRET: &str = "Zx9QwErTyUiOp1234567890AsDfGhJkL";
const WEBHOOK_MESSAGE: &str = r#"{"identityId":"50f1a2b3c4","nickName":"温度计"}"#;
const WEBHOOK_CODE: &str = "account.create";
const GATEWAY_NONCE: &str = "c9f2a3e4-5b6c-4d7e-8f90-a1b2c3d4e5f6";

// Output of gen_sign_vectors.py.
const AMQP_APPKEY_PASSWORD: &str = "siG7gLFY9OPUazlrHAC9fqaGSmWQ6aiaadh+rgPHxEY=";
const AMQP_AKSIGN_HMACMD5_PASSWORD: &str = "+99lcBCFgtakiUCSssgpEA==";
const AMQP_AKSIGN_HMACSHA1_PASSWORD: &str = "5y2qllG/6shRJ4SSe37X5cdPgS8=";
const AMQP_AKSIGN_HMACSHA256_PASSWORD: &str = "zsAJPd3GyFbIW35/Qq8q2hHkqWgD9dHTaRitGLo7axA=";
const HTTP2_SIGN: &str = "b221bb80b158f4e3d46b396b1c00bd7ea6864a6590e9a89a69d87eae03c7c446";
const WEBHOOK_SIGN: &str = "b9c965ca722fbc6397622f34cafcfeb5";
const GATEWAY_BODY: &str = "{\"id\":\"42\",\"version\":\"1.0\",\"request\":{\"apiVer\":\"1.0.0\"},\"params\":{\"grantType\":\"project\",\"res\":\"p1\"}}";
const GATEWAY_CONTENT_MD5: &str = "v2EzN9sD+2Pbb0k5/NxTSQ==";
const GATEWAY_STRING_TO_SIGN: &str = "POST\napplication/json\nv2EzN9sD+2Pbb0k5/NxTSQ==\napplication/json; charset=utf-8\nTue, 14 Nov 2023 22:13:20 GMT\nx-ca-key:28596712\nx-ca-nonce:c9f2a3e4-5b6c-4d7e-8f90-a1b2c3d4e5f6\nx-ca-signature-method:HmacSHA256\nx-ca-timestamp:1700000000123\n/cloud/token?pageNo=1&pageSize=20";
const GATEWAY_SIGNATURE: &str = "pPsSNa0HSB8VHs0+graelBPlKIY4lvaPJOWe8vRS7LM=";
const GATEWAY_EMPTY_STRING_TO_SIGN: &str = "POST\napplication/json\n\napplication/json\n\nx-ca-key:28596712\nx-ca-nonce:n-2\nx-ca-signature-method:HmacSHA256\nx-ca-timestamp:1700000000123\n/cloud/sync/stats/get";
const GATEWAY_EMPTY_SIGNATURE: &str = "0V3YRHH7UnQ285EtaLbTjmYNoA1HOywvEnEVJM+JEl0=";
const CONTENT_MD5_OF_EMPTY_BODY: &str = "1B2M2Y8AsgTpgAmY7PhCfg==";
const DEVICE_HMACMD5_PASSWORD: &str = "6d6f853efe9495d0b74d5fdbf3066aa7";
const DEVICE_HMACSHA1_PASSWORD: &str = "d8ca4c2a49cdc63b7abcd1c4fde218cb51ab21d2";
const DEVICE_HMACSHA256_PASSWORD: &str =
    "cb82b6a7ef14de9779e4c34f2e4cda386cedb1c110a586f3658c92d83229de64";
const DEVICE_HMACSHA256_NO_TIMESTAMP_PASSWORD: &str =
    "08a57bca041db9661ff79216bddb5a61ca8b7d744b6daf22249b67213425098a";

fn app_key() -> AppKey {
    APP_KEY.parse().unwrap()
}

fn amqp_username(pairs: &str) -> AmqpCredentials {
    format!("consumer-7|{pairs}|").parse().unwrap()
}

#[test]
fn amqp_app_key_password_matches_python() {
    let c = amqp_username(&format!(
        "authMode=appkey,signMethod=SHA256,random={MS},appKey={APP_KEY},groupId=DEFAULT"
    ));
    assert_eq!(c.auth, AmqpAuthMode::AppKey { random_ms: MS });
    assert_eq!(amqp::sign_password(&c, APP_SECRET), AMQP_APPKEY_PASSWORD);
    amqp::verify(
        &c,
        AMQP_APPKEY_PASSWORD,
        APP_SECRET,
        MS,
        FRESHNESS_WINDOW_MS,
    )
    .unwrap();
}

#[test]
fn amqp_access_key_passwords_match_python_for_every_method() {
    for (method, name, expected) in [
        (HmacMethod::Md5, "hmacmd5", AMQP_AKSIGN_HMACMD5_PASSWORD),
        (HmacMethod::Sha1, "hmacsha1", AMQP_AKSIGN_HMACSHA1_PASSWORD),
        (
            HmacMethod::Sha256,
            "hmacsha256",
            AMQP_AKSIGN_HMACSHA256_PASSWORD,
        ),
    ] {
        let c = amqp_username(&format!(
            "authMode=aksign,signMethod={name},timestamp={MS},authId={APP_KEY},iotInstanceId=,consumerGroupId=DEFAULT"
        ));
        assert_eq!(
            c.auth,
            AmqpAuthMode::AccessKey {
                method,
                timestamp_ms: MS
            }
        );
        assert_eq!(amqp::sign_password(&c, APP_SECRET), expected, "{name}");
        amqp::verify(&c, expected, APP_SECRET, MS, FRESHNESS_WINDOW_MS).unwrap();
    }
}

#[test]
fn amqp_password_from_python_fails_with_another_secret() {
    let c = amqp_username(&format!(
        "authMode=appkey,signMethod=SHA256,random={MS},appKey={APP_KEY}"
    ));
    assert_eq!(
        amqp::verify(&c, AMQP_APPKEY_PASSWORD, "wrong", MS, FRESHNESS_WINDOW_MS),
        Err(SignError::BadSignature)
    );
}

#[test]
fn http2_sign_matches_python() {
    assert_eq!(http2::sign(APP_SECRET, MS), HTTP2_SIGN);
    let ms = MS.to_string();
    let p = Http2AuthParams::from_headers(|name| match name {
        "x-auth-name" => Some("appkey"),
        "x-auth-param-app-key" => Some(APP_KEY),
        "x-auth-param-sign-method" => Some("SHA256"),
        "x-auth-param-random" => Some(ms.as_str()),
        "x-auth-param-sign" => Some(HTTP2_SIGN),
        _ => None,
    })
    .unwrap();
    p.verify(APP_SECRET, MS, FRESHNESS_WINDOW_MS).unwrap();
}

#[test]
fn webhook_sign_matches_python_including_utf8_payloads() {
    let k = app_key();
    let f = WebhookFields {
        app_key: &k,
        msg_code: WEBHOOK_CODE,
        message: WEBHOOK_MESSAGE,
    };
    assert_eq!(webhook::sign(&f, APP_SECRET), WEBHOOK_SIGN);
    webhook::verify(&f, WEBHOOK_SIGN, APP_SECRET).unwrap();
}

fn gateway_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Accept", "application/json".into()),
        ("Content-MD5", GATEWAY_CONTENT_MD5.into()),
        ("Content-Type", "application/json; charset=utf-8".into()),
        ("Date", "Tue, 14 Nov 2023 22:13:20 GMT".into()),
        ("X-Ca-Key", APP_KEY.into()),
        ("X-Ca-Timestamp", MS.to_string()),
        ("X-Ca-Nonce", GATEWAY_NONCE.into()),
        ("X-Ca-Signature-Method", "HmacSHA256".into()),
        (
            "X-Ca-Signature-Headers",
            "x-ca-timestamp,x-ca-key,x-ca-signature-method,x-ca-nonce".into(),
        ),
        ("X-Ca-Signature", GATEWAY_SIGNATURE.into()),
    ]
}

fn lookup<'h>(h: &'h [(&'static str, String)]) -> impl Fn(&str) -> Option<&'h str> + 'h {
    move |name| {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[test]
fn api_gateway_string_to_sign_and_signature_match_python() {
    let h = gateway_headers();
    let req = GatewayRequest {
        method: "POST",
        path: "/cloud/token",
        query: &[("pageSize", "20"), ("pageNo", "1")],
        headers: lookup(&h),
    };
    assert_eq!(
        api_gateway::content_md5(GATEWAY_BODY.as_bytes()),
        GATEWAY_CONTENT_MD5
    );
    assert_eq!(req.string_to_sign(), GATEWAY_STRING_TO_SIGN);
    assert_eq!(
        api_gateway::sign(APP_SECRET, GATEWAY_STRING_TO_SIGN),
        GATEWAY_SIGNATURE
    );
    let c = api_gateway::verify(
        &req,
        GATEWAY_BODY.as_bytes(),
        APP_SECRET,
        MS,
        FRESHNESS_WINDOW_MS,
    )
    .unwrap();
    assert_eq!(c.nonce, GATEWAY_NONCE);
    assert_eq!(c.timestamp_ms, MS);
}

#[test]
fn api_gateway_client_signer_reproduces_python_for_an_empty_body() {
    let headers = api_gateway::sign_request(
        &app_key(),
        APP_SECRET,
        &OutgoingRequest {
            method: "POST",
            path: "/cloud/sync/stats/get",
            query: &[],
            body: b"",
            accept: "application/json",
            content_type: "application/json",
            timestamp_ms: MS,
            nonce: "n-2",
        },
    );
    let req = GatewayRequest {
        method: "POST",
        path: "/cloud/sync/stats/get",
        query: &[],
        headers: lookup(&headers),
    };
    assert_eq!(req.string_to_sign(), GATEWAY_EMPTY_STRING_TO_SIGN);
    assert_eq!(req.header("x-ca-signature"), Some(GATEWAY_EMPTY_SIGNATURE));
    api_gateway::verify(&req, b"", APP_SECRET, MS, FRESHNESS_WINDOW_MS).unwrap();
    assert_eq!(api_gateway::content_md5(b""), CONTENT_MD5_OF_EMPTY_BODY);
}

#[test]
fn device_passwords_match_python_for_every_method() {
    let username: DeviceUsername = "light_01&a1B2c3D4e5F".parse().unwrap();
    for (name, expected) in [
        ("hmacmd5", DEVICE_HMACMD5_PASSWORD),
        ("hmacsha1", DEVICE_HMACSHA1_PASSWORD),
        ("hmacsha256", DEVICE_HMACSHA256_PASSWORD),
    ] {
        let c: DeviceClientId =
            format!("AA:BB:CC:DD:EE:FF|securemode=3,signmethod={name},timestamp={MS}|")
                .parse()
                .unwrap();
        assert_eq!(
            device::sign_password(&c, &username, DEVICE_SECRET),
            expected,
            "{name}"
        );
        device::verify(&c, &username, expected, DEVICE_SECRET).unwrap();
        device::verify(&c, &username, &expected.to_uppercase(), DEVICE_SECRET).unwrap();
    }
}

#[test]
fn device_password_without_timestamp_matches_python() {
    let username: DeviceUsername = "light_01&a1B2c3D4e5F".parse().unwrap();
    let c: DeviceClientId = "AA:BB:CC:DD:EE:FF|signmethod=hmacsha256,securemode=2|"
        .parse()
        .unwrap();
    assert_eq!(
        device::sign_password(&c, &username, DEVICE_SECRET),
        DEVICE_HMACSHA256_NO_TIMESTAMP_PASSWORD
    );
    assert_eq!(
        device::verify(&c, &username, DEVICE_HMACSHA256_PASSWORD, DEVICE_SECRET),
        Err(SignError::BadSignature)
    );
}
