//! HTTP/2 (gRPC) consumer auth metadata (crates/iotsync-core/src/sign/http2.rs).
//!
//! Input: the values of `x-auth-name`, `x-auth-param-app-key`,
//! `x-auth-param-sign-method`, `x-auth-param-random`, `x-auth-param-sign`,
//! `x-auth-param-group`, one a line (a missing line, or a line that is exactly `\x7f`,
//! leaves the header out), then a line with the secret. No panic; parsed metadata sent
//! again (`to_headers`) parses to the same; the checker accepts the metadata
//! `Http2AuthParams::signed` makes, and refuses the fuzzed `sign` unless it is that
//! signature.
#![no_main]

use iotsync_core::sign::http2::{
    Http2AuthParams, HEADER_APP_KEY, HEADER_AUTH_NAME, HEADER_GROUP, HEADER_RANDOM, HEADER_SIGN,
    HEADER_SIGN_METHOD,
};
use iotsync_core::sign::FRESHNESS_WINDOW_MS;
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] = [
    HEADER_AUTH_NAME,
    HEADER_APP_KEY,
    HEADER_SIGN_METHOD,
    HEADER_RANDOM,
    HEADER_SIGN,
    HEADER_GROUP,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.split('\n').collect();
    let headers: Vec<(&str, &str)> = NAMES
        .iter()
        .zip(lines.iter())
        .filter(|(_, v)| **v != "\x7f")
        .map(|(n, v)| (*n, *v))
        .collect();
    let secret = lines.get(NAMES.len()).copied().unwrap_or("");

    let Ok(params) =
        Http2AuthParams::from_headers(|n| headers.iter().find(|(h, _)| *h == n).map(|(_, v)| *v))
    else {
        return;
    };
    let sent = params.to_headers();
    let again = Http2AuthParams::from_headers(|n| {
        sent.iter().find(|(h, _)| *h == n).map(|(_, v)| v.as_str())
    })
    .expect("metadata written back was refused");
    assert_eq!(again, params);

    let at = params.random_ms;
    let good = Http2AuthParams::signed(params.app_key.clone(), params.group.clone(), secret, at);
    good.verify(secret, at, FRESHNESS_WINDOW_MS)
        .expect("own signature refused");
    let verdict = params.verify(secret, at, FRESHNESS_WINDOW_MS);
    if verdict.is_ok() {
        assert_eq!(
            params.sign.trim().to_ascii_lowercase(),
            good.sign,
            "a wrong sign was accepted"
        );
    }
});
