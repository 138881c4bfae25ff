//! Cloud API signature headers, API-gateway style (crates/iotsync-core/src/sign/
//! api_gateway.rs).
//!
//! Input, line by line: method, path, query (`k=v&k=v`, already decoded), secret, then
//! `Name: value` header lines up to an empty line; the rest is the body. Two checks:
//!
//! 1. the request as given: reading its credentials, building its string-to-sign and
//!    verifying it never panic, and a verification that passes used exactly the
//!    signature the secret gives for that string-to-sign;
//! 2. the same method, path, query, body, `Accept`, `Content-Type`, `X-Ca-Key`,
//!    `X-Ca-Timestamp` and `X-Ca-Nonce` signed by the client side (`sign_request`):
//!    when the key, timestamp and nonce are ones the server takes, the server side reads
//!    and verifies the signed headers.
#![no_main]

use iotsync_core::sign::api_gateway::{
    sign, sign_request, GatewayCredentials, GatewayRequest, OutgoingRequest, HEADER_ACCEPT,
    HEADER_CONTENT_TYPE, HEADER_KEY, HEADER_NONCE, HEADER_TIMESTAMP,
};
use iotsync_core::sign::FRESHNESS_WINDOW_MS;
use iotsync_core::AppKey;
use libfuzzer_sys::fuzz_target;

fn split_line(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|b| *b == b'\n') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut line = || {
        let (l, r) = split_line(rest);
        rest = r;
        std::str::from_utf8(l).ok()
    };
    let (Some(method), Some(path), Some(query), Some(secret)) = (line(), line(), line(), line())
    else {
        return;
    };
    let mut headers: Vec<(&str, &str)> = Vec::new();
    loop {
        let Some(l) = line() else { return };
        if l.is_empty() {
            break;
        }
        match l.split_once(':') {
            Some((n, v)) => headers.push((n.trim(), v.trim())),
            None => headers.push((l, "")),
        }
    }
    let body = rest;
    let query: Vec<(&str, &str)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let get = |hs: &[(&str, &str)], name: &str| -> Option<String> {
        hs.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_string())
    };

    // 1. As given.
    let req = GatewayRequest {
        method,
        path,
        query: &query,
        headers: |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        },
    };
    let sts = req.string_to_sign();
    if let Ok(creds) = GatewayCredentials::from_request(&req) {
        if creds
            .verify(&req, body, secret, creds.timestamp_ms, FRESHNESS_WINDOW_MS)
            .is_ok()
        {
            let good = sign(secret, &sts);
            assert_eq!(
                iotsync_fuzz::base64(creds.signature.trim()),
                iotsync_fuzz::base64(&good),
                "a wrong signature verified"
            );
        }
    }

    // 2. Signed by the client side.
    let Some(app_key) = get(&headers, HEADER_KEY).and_then(|k| k.parse::<AppKey>().ok()) else {
        return;
    };
    let Some(ts) = get(&headers, HEADER_TIMESTAMP)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return;
    };
    let nonce = get(&headers, HEADER_NONCE).unwrap_or_default();
    if nonce.is_empty() || nonce.chars().count() > 128 || nonce.chars().any(char::is_control) {
        return;
    }
    let accept = get(&headers, HEADER_ACCEPT).unwrap_or_default();
    let content_type = get(&headers, HEADER_CONTENT_TYPE).unwrap_or_default();
    let out = OutgoingRequest {
        method,
        path,
        query: &query,
        body,
        accept: &accept,
        content_type: &content_type,
        timestamp_ms: ts,
        nonce: &nonce,
    };
    let signed = sign_request(&app_key, secret, &out);
    let req = GatewayRequest {
        method,
        path,
        query: &query,
        headers: |name: &str| {
            signed
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        },
    };
    let creds = GatewayCredentials::from_request(&req)
        .unwrap_or_else(|e| panic!("client-signed headers refused: {e}"));
    assert_eq!(creds.app_key, app_key);
    assert_eq!(creds.timestamp_ms, ts);
    creds
        .verify(&req, body, secret, ts, FRESHNESS_WINDOW_MS)
        .unwrap_or_else(|e| panic!("client-signed request refused: {e}"));
});
