//! JSON bodies of the signed cloud API (crates/iotsync-server/src/cloud/): the envelope
//! `{id, version, request: {apiVer, cloudToken}, params}` of every operation, sent
//! correctly signed (fresh nonce, Content-MD5) to a real server in this process (see
//! `iotsync_fuzz::server`), so it reaches the envelope, token and parameter checks and
//! the operation itself.
//!
//! Input: the first byte picks the operation, the rest is the body; `$TOKEN`, `$PID`,
//! `$PK`, `$DN`, `$IOT`, `$ID` in it become the set-up's. Every answer is HTTP 200 with
//! the envelope `{id, code, message, data}`, `code` one of the documented codes and never
//! 500, `id` the request's when it was a string or a number.
#![no_main]

use iotsync_core::api_catalog::OPERATIONS;
use iotsync_fuzz::server::Harness;
use iotsync_server::cloud::code;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const CODES: &[i64] = &[
    code::SUCCESS,
    code::SIGNATURE,
    code::FORBIDDEN,
    code::NOT_FOUND,
    code::BAD_PARAMETER,
    code::DEVICE_OFFLINE,
    code::DEVICE_TIMEOUT,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let h = Harness::get();
    let path = OPERATIONS[usize::from(pick) % OPERATIONS.len()].path;
    let body = h.fill(body);
    let a = h.cloud(path, &body);
    let text = String::from_utf8_lossy(&a.body);
    assert_eq!(a.status, 200, "{path}: HTTP {} {text}", a.status);
    let v: Value =
        serde_json::from_slice(&a.body).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    let c = v["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("{path}: no code: {text}"));
    assert!(CODES.contains(&c), "{path}: code {c}: {text}");
    assert!(v["message"].is_string(), "{path}: no message: {text}");
    assert!(v.get("data").is_some(), "{path}: no data: {text}");
    let sent_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b.get("id").cloned())
        .filter(|id| id.is_string() || id.is_number());
    assert_eq!(
        v["id"],
        sent_id.unwrap_or(Value::Null),
        "{path}: id: {text}"
    );
    if path == "/cloud/token" && c == code::SUCCESS {
        if let Some(t) = v["data"]["cloudToken"].as_str() {
            *h.token() = t.to_owned();
        }
    }
});
