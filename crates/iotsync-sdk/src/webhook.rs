//! Receiving the legacy HTTP push (SPEC §8): check the `sign` of a form POST and answer.
//!
//! ```
//! use iotsync_sdk::webhook::{verify_form, SUCCESS_BODY};
//! # let body = "appKey=12345678&msgCode=account.create&message=%7B%7D&sign=x";
//! match verify_form(body.as_bytes(), "12345678", "appSecret") {
//!     Ok(push) => { /* handle push.msg_code, push.message; answer 200 with SUCCESS_BODY */ }
//!     Err(e) => { /* answer 401; the platform pushes it again later */ let _ = e; }
//! }
//! ```

use iotsync_core::sign::webhook::{self, WebhookFields};
use iotsync_core::AppKey;

/// What to answer with HTTP 200 so the platform counts the push as delivered.
pub const SUCCESS_BODY: &str = r#"{"code":200,"message":"success"}"#;

/// A push whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyPush {
    pub app_key: String,
    /// The message kind, e.g. `account.create`, `user.binding.bind`.
    pub msg_code: String,
    /// The JSON payload as sent.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing form field {0}")]
    MissingField(&'static str),
    #[error("form field {0} appears more than once")]
    DuplicateField(&'static str),
    #[error("the push is for appKey {got:?}, expected {expected:?}")]
    WrongAppKey { got: String, expected: String },
    #[error("sign does not match")]
    BadSignature,
}

/// Checks a received `sign` for the given fields (hex, either case; constant time).
pub fn verify(
    app_key: &str,
    msg_code: &str,
    message: &str,
    sign: &str,
    app_secret: &str,
) -> Result<(), WebhookError> {
    let key: AppKey = app_key.parse().map_err(|_| WebhookError::BadSignature)?;
    webhook::verify(
        &WebhookFields {
            app_key: &key,
            msg_code,
            message,
        },
        sign,
        app_secret,
    )
    .map_err(|_| WebhookError::BadSignature)
}

/// Parses an `application/x-www-form-urlencoded` push body and checks it was sent for
/// `expected_app_key` and signed with `app_secret`.
pub fn verify_form(
    body: &[u8],
    expected_app_key: &str,
    app_secret: &str,
) -> Result<LegacyPush, WebhookError> {
    let mut fields: [(&'static str, Option<String>); 4] = [
        ("appKey", None),
        ("msgCode", None),
        ("message", None),
        ("sign", None),
    ];
    for (k, v) in form_pairs(body) {
        if let Some(slot) = fields.iter_mut().find(|(name, _)| *name == k) {
            if slot.1.is_some() {
                return Err(WebhookError::DuplicateField(slot.0));
            }
            slot.1 = Some(v);
        }
    }
    let mut take = |i: usize| {
        fields[i]
            .1
            .take()
            .ok_or(WebhookError::MissingField(fields[i].0))
    };
    let (app_key, msg_code, message, sign) = (take(0)?, take(1)?, take(2)?, take(3)?);
    if app_key != expected_app_key {
        return Err(WebhookError::WrongAppKey {
            got: app_key,
            expected: expected_app_key.to_owned(),
        });
    }
    verify(&app_key, &msg_code, &message, &sign, app_secret)?;
    Ok(LegacyPush {
        app_key,
        msg_code,
        message,
    })
}

/// `k=v&k=v` with `+` as space and `%XX` escapes (invalid escapes are kept as is).
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut it = p.splitn(2, |b| *b == b'=');
            let k = decode(it.next().unwrap_or_default());
            let v = decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    fn body(app_key: &str, code: &str, msg: &str, secret: &str) -> String {
        let k: AppKey = app_key.parse().unwrap();
        let sign = webhook::sign(
            &WebhookFields {
                app_key: &k,
                msg_code: code,
                message: msg,
            },
            secret,
        );
        format!(
            "appKey={}&msgCode={}&message={}&sign={}",
            encode(app_key),
            encode(code),
            encode(msg),
            sign
        )
    }

    #[test]
    fn a_signed_push_verifies_and_is_decoded() {
        let msg = r#"{"identityId":"u 1","nickName":"Zoë & co"}"#;
        let b = body("12345678", "account.create", msg, "s3cret");
        let p = verify_form(b.as_bytes(), "12345678", "s3cret").unwrap();
        assert_eq!(p.message, msg);
        assert_eq!(p.msg_code, "account.create");
    }

    #[test]
    fn wrong_secret_wrong_app_key_and_missing_fields_are_refused() {
        let b = body("12345678", "account.create", "{}", "s3cret");
        assert_eq!(
            verify_form(b.as_bytes(), "12345678", "other"),
            Err(WebhookError::BadSignature)
        );
        assert!(matches!(
            verify_form(b.as_bytes(), "87654321", "s3cret"),
            Err(WebhookError::WrongAppKey { .. })
        ));
        assert_eq!(
            verify_form(b"appKey=12345678", "12345678", "s3cret"),
            Err(WebhookError::MissingField("msgCode"))
        );
    }

    #[test]
    fn truncated_escapes_do_not_panic() {
        assert_eq!(decode(b"a%2"), "a%2");
        assert_eq!(decode(b"%"), "%");
        assert_eq!(decode(b"%41"), "A");
    }
}
