//! The AMQP SASL PLAIN username forms (crates/iotsync-core/src/sign/amqp.rs).
//!
//! Input: `username \0 password \0 secret` (missing parts are empty). No panic; a parsed
//! username written back (`Display`) parses to the same credentials; the password the
//! secret gives verifies at the signed time and at the edges of the window; the fuzzed
//! password never panics the check.
#![no_main]

use iotsync_core::sign::amqp::{sign_password, verify, AmqpCredentials, FRESHNESS_WINDOW_MS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let username = parts.next().unwrap_or("");
    let password = parts.next().unwrap_or("");
    let secret = parts.next().unwrap_or("");

    let Ok(creds) = username.parse::<AmqpCredentials>() else {
        return;
    };
    let written = creds.username();
    let again: AmqpCredentials = written
        .parse()
        .unwrap_or_else(|e| panic!("{written:?} (written back from {username:?}) refused: {e}"));
    assert_eq!(again, creds, "round trip through {written:?}");

    let at = creds.auth.signed_ms();
    let good = sign_password(&creds, secret);
    verify(&creds, &good, secret, at, FRESHNESS_WINDOW_MS).expect("own signature refused");
    if let Some(edge) = at.checked_add(FRESHNESS_WINDOW_MS) {
        verify(&creds, &good, secret, edge, FRESHNESS_WINDOW_MS).expect("refused at the edge");
        if let Some(past) = edge.checked_add(1) {
            assert!(verify(&creds, &good, secret, past, FRESHNESS_WINDOW_MS).is_err());
        }
    }
    let verdict = verify(&creds, password, secret, at, FRESHNESS_WINDOW_MS);
    if password.trim() != good {
        // Another encoding of the same MAC may pass; anything else must not.
        if verdict.is_ok() {
            assert_eq!(
                iotsync_fuzz::base64(password.trim()),
                iotsync_fuzz::base64(&good),
                "a wrong password was accepted"
            );
        }
    }
});
