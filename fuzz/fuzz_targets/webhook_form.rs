//! The legacy HTTP push form (crates/iotsync-sdk/src/webhook.rs `verify_form`, over
//! crates/iotsync-core/src/sign/webhook.rs).
//!
//! Input: `appKey \0 msgCode \0 message \0 secret \0 body`. Two checks:
//!
//! 1. `body` as a receiver gets it: no panic; a push that verifies carries a `sign` that
//!    is the digest of its own fields (hex, either case);
//! 2. the fields pushed by the server (`push::form`, encoded as reqwest's `.form()` does,
//!    with serde_urlencoded): the receiver gets back exactly those fields.
#![no_main]

use iotsync_core::sign::webhook::{sign, WebhookFields};
use iotsync_core::AppKey;
use iotsync_sdk::webhook::verify_form;
use iotsync_server::channels::webhook::push::form;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |b| *b == 0);
    let mut text = || parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let (Some(app_key), Some(msg_code), Some(message), Some(secret)) =
        (text(), text(), text(), text())
    else {
        return;
    };
    let body = parts.next().unwrap_or(&[]);

    // 1. As received.
    if let Ok(push) = verify_form(body, app_key, secret) {
        let key: AppKey = push
            .app_key
            .parse()
            .expect("verified push with a bad appKey");
        let want = sign(
            &WebhookFields {
                app_key: &key,
                msg_code: &push.msg_code,
                message: &push.message,
            },
            secret,
        );
        let got = form_value(body, "sign").expect("verified push without sign");
        assert_eq!(
            hex::decode(got.trim()).ok(),
            hex::decode(&want).ok(),
            "a wrong sign verified"
        );
    }

    // 2. As the server pushes it.
    let Ok(key) = app_key.parse::<AppKey>() else {
        return;
    };
    let fields = form(&key, secret, msg_code, message);
    let encoded = serde_urlencoded::to_string(fields).expect("form encodes");
    let push = verify_form(encoded.as_bytes(), key.as_str(), secret)
        .unwrap_or_else(|e| panic!("the server's push {encoded:?} refused: {e}"));
    assert_eq!(push.app_key, key.as_str());
    assert_eq!(push.msg_code, msg_code);
    assert_eq!(push.message, message);
});

/// The decoded value of `name` in a form body, as form_urlencoded reads it.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
