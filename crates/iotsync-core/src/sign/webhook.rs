//! Legacy HTTP push signature (SPEC §8).
//!
//! `sign` = lowercase hex MD5 of `appKey=${appKey}&message=${message}&msgCode=${msgCode}`
//! immediately followed by the appSecret. This is a plain digest, not an HMAC: that is
//! the legacy platform's scheme and receivers already implement it.

use md5::{Digest, Md5};

use super::{hex_decode, mac_matches, SignError};
use crate::ids::AppKey;

/// The signed form fields of one push. Named fields, because `message` and `msgCode`
/// are both strings and swapping them would still compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookFields<'a> {
    pub app_key: &'a AppKey,
    /// The message kind, e.g. `account.create`.
    pub msg_code: &'a str,
    /// The JSON payload exactly as sent in the form.
    pub message: &'a str,
}

fn digest(fields: &WebhookFields<'_>, app_secret: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(b"appKey=");
    h.update(fields.app_key.as_str().as_bytes());
    h.update(b"&message=");
    h.update(fields.message.as_bytes());
    h.update(b"&msgCode=");
    h.update(fields.msg_code.as_bytes());
    h.update(app_secret.as_bytes());
    h.finalize().into()
}

/// The `sign` form field for a push.
pub fn sign(fields: &WebhookFields<'_>, app_secret: &str) -> String {
    hex::encode(digest(fields, app_secret))
}

/// Checks a received `sign` (hex, either case) in constant time.
pub fn verify(fields: &WebhookFields<'_>, sign: &str, app_secret: &str) -> Result<(), SignError> {
    mac_matches(&digest(fields, app_secret), &hex_decode(sign)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AppKey {
        "12345678".parse().unwrap()
    }

    #[test]
    fn signed_push_verifies() {
        let k = key();
        let f = WebhookFields {
            app_key: &k,
            msg_code: "account.create",
            message: r#"{"identityId":"u1"}"#,
        };
        let s = sign(&f, "secret");
        assert_eq!(s.len(), 32);
        verify(&f, &s, "secret").unwrap();
        verify(&f, &s.to_uppercase(), "secret").unwrap();
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let k = key();
        let f = WebhookFields {
            app_key: &k,
            msg_code: "account.create",
            message: "{}",
        };
        let s = sign(&f, "secret");
        assert_eq!(verify(&f, &s, "other"), Err(SignError::BadSignature));
    }

    #[test]
    fn swapped_message_and_code_do_not_verify() {
        let k = key();
        let f = WebhookFields {
            app_key: &k,
            msg_code: "a",
            message: "b",
        };
        let g = WebhookFields {
            msg_code: "b",
            message: "a",
            ..f
        };
        assert_eq!(
            verify(&g, &sign(&f, "secret"), "secret"),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn non_hex_sign_is_a_bad_signature() {
        let k = key();
        let f = WebhookFields {
            app_key: &k,
            msg_code: "a",
            message: "b",
        };
        assert_eq!(verify(&f, "xyz", "secret"), Err(SignError::BadSignature));
    }
}
