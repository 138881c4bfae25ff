//! The operator alert webhook's signature (issue 14): the platform POSTs a JSON event
//! when a consumer group starts or stops alerting, with the header
//!
//! ```text
//! X-Iotsync-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>
//! ```
//!
//! over the body bytes exactly as sent. The body carries the event time (`at`), so the
//! signature covers it; `X-Iotsync-Timestamp` (when this attempt was sent) is not signed
//! and is there for logs.

use super::{hex_decode, mac_matches, HmacMethod, SignError};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-iotsync-signature";
/// The header carrying the send time of the attempt (ms since the epoch).
pub const TIMESTAMP_HEADER: &str = "x-iotsync-timestamp";
/// What the signature header's value starts with.
const PREFIX: &str = "sha256=";

/// The `X-Iotsync-Signature` value for `body`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!(
        "{PREFIX}{}",
        hex::encode(HmacMethod::Sha256.mac(secret.as_bytes(), body))
    )
}

/// Checks a received `X-Iotsync-Signature` value (hex in either case) in constant time.
pub fn verify(secret: &str, body: &[u8], header: &str) -> Result<(), SignError> {
    let hex = header
        .trim()
        .strip_prefix(PREFIX)
        .ok_or_else(|| SignError::malformed("X-Iotsync-Signature", "must start with sha256="))?;
    mac_matches(
        &HmacMethod::Sha256.mac(secret.as_bytes(), body),
        &hex_decode(hex)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not() {
        let body = br#"{"event":"alerting","group":"billing"}"#;
        let sig = sign("s3cret-s3cret-16", body);
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), "sha256=".len() + 64);
        assert_eq!(verify("s3cret-s3cret-16", body, &sig), Ok(()));
        assert_eq!(
            verify(
                "s3cret-s3cret-16",
                body,
                &sig.to_uppercase().replace("SHA256=", "sha256=")
            ),
            Ok(())
        );
        assert_eq!(
            verify("s3cret-s3cret-16", br#"{"event":"recovered"}"#, &sig),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            verify("other-secret-000", body, &sig),
            Err(SignError::BadSignature)
        );
        assert!(matches!(
            verify("s3cret-s3cret-16", body, sig.trim_start_matches("sha256=")),
            Err(SignError::Malformed { .. })
        ));
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
