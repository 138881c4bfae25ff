//! Signing schemes of SPEC §6–§10, each as sign + verify (constant-time compare).
//!
//! | module          | who signs                | what                                   |
//! |-----------------|--------------------------|----------------------------------------|
//! | [`amqp`]        | enterprise AMQP consumer | SASL PLAIN username/password (§6)      |
//! | [`http2`]       | enterprise gRPC consumer | `x-auth-*` request metadata (§7)       |
//! | [`webhook`]     | the platform             | legacy HTTP push form `sign` (§8)      |
//! | [`api_gateway`] | enterprise server        | cloud API `X-Ca-*` headers (§9)        |
//! | [`device`]      | MQTT device              | client id / username / password (§10)  |
//! | [`alert`]       | the platform             | operator alert webhook body (issue 14) |
//!
//! Everything here is pure: the caller supplies `now_ms` (from its `Clock`) and the
//! secret it looked up. Replay protection that needs state (API-gateway nonces) is the
//! server's job; this module only parses and exposes what it needs.
//!
//! Errors name the offending field so a client developer can fix a request from the
//! message alone; none of them carries a secret, an expected signature or a
//! string-to-sign.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

pub mod alert;
pub mod amqp;
pub mod api_gateway;
pub mod device;
pub mod http2;
pub mod webhook;

/// How far a signed `random`/`timestamp` may be from the server's clock, either way
/// (SPEC §6, §9: 15 minutes).
pub const FRESHNESS_WINDOW_MS: i64 = 15 * 60 * 1000;

/// Longest piece of outside input echoed back in an error message.
const ECHO_MAX_CHARS: usize = 64;

/// Why a credential or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The field is present but its value cannot be used.
    #[error("invalid {field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    /// A required field is absent.
    #[error("missing {field}")]
    MissingField { field: &'static str },
    /// A key appears twice, so which value was signed is ambiguous.
    #[error("{field} appears more than once")]
    DuplicateField { field: &'static str },
    /// A key this scheme does not know (echoed, truncated).
    #[error("unknown key {field:?}")]
    UnknownField { field: String },
    /// A mode or method value outside the supported set (echoed, truncated).
    #[error("unsupported {field} {value:?}; expected {expected}")]
    Unsupported {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// The signed time is too far from the server's clock.
    #[error(
        "{field} {timestamp_ms} is {} ms away from server time {now_ms}; allowed ±{window_ms} ms",
        timestamp_ms.abs_diff(*now_ms)
    )]
    Stale {
        field: &'static str,
        timestamp_ms: i64,
        now_ms: i64,
        window_ms: i64,
    },
    /// The `Content-MD5` header does not match the body received.
    #[error("Content-MD5 does not match the request body")]
    ContentMd5Mismatch,
    /// Well-formed, fresh, but the signature is not the one the secret gives.
    #[error("signature does not match")]
    BadSignature,
}

impl SignError {
    pub(crate) fn malformed(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Malformed {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(field: &'static str, value: &str, expected: &'static str) -> Self {
        Self::Unsupported {
            field,
            value: echo(value),
            expected,
        }
    }
}

/// The HMAC digests the platform's schemes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HmacMethod {
    Md5,
    Sha1,
    Sha256,
}

impl HmacMethod {
    /// The platform's spelling: `hmacmd5`, `hmacsha1`, `hmacsha256`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "hmacmd5",
            Self::Sha1 => "hmacsha1",
            Self::Sha256 => "hmacsha256",
        }
    }

    /// The raw MAC of `message` under `key`.
    pub fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // HMAC takes keys of any length, so this cannot fail.
            let mut m = <M as Mac>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            m.update(message);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Self::Sha1 => run::<Hmac<sha1::Sha1>>(key, message),
            Self::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
        }
    }

    /// Parses the platform's spelling, case-insensitively, naming `field` on failure.
    pub(crate) fn parse_field(field: &'static str, value: &str) -> Result<Self, SignError> {
        [Self::Md5, Self::Sha1, Self::Sha256]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| SignError::unsupported(field, value, "hmacmd5, hmacsha1 or hmacsha256"))
    }
}

impl fmt::Display for HmacMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HmacMethod {
    type Err = SignError;
    fn from_str(s: &str) -> Result<Self, SignError> {
        Self::parse_field("signMethod", s)
    }
}

/// Outside input shortened for an error message.
pub(crate) fn echo(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(ECHO_MAX_CHARS).collect();
        t.push('…');
        t
    }
}

/// Milliseconds since the epoch, as the platform writes them: decimal digits only.
pub(crate) fn parse_ms(field: &'static str, value: &str) -> Result<i64, SignError> {
    if value.is_empty() {
        return Err(SignError::malformed(field, "is empty"));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignError::malformed(
            field,
            format!("{:?} is not a whole number of milliseconds", echo(value)),
        ));
    }
    value
        .parse::<i64>()
        .map_err(|_| SignError::malformed(field, "is out of range"))
}

/// Refuses a signed time more than `window_ms` before or after `now_ms`.
pub(crate) fn check_fresh(
    field: &'static str,
    timestamp_ms: i64,
    now_ms: i64,
    window_ms: i64,
) -> Result<(), SignError> {
    if timestamp_ms.abs_diff(now_ms) > window_ms.unsigned_abs() {
        return Err(SignError::Stale {
            field,
            timestamp_ms,
            now_ms,
            window_ms,
        });
    }
    Ok(())
}

/// Compares a received MAC with the expected one without leaking where they differ.
pub(crate) fn mac_matches(expected: &[u8], received: &[u8]) -> Result<(), SignError> {
    if bool::from(expected.ct_eq(received)) {
        Ok(())
    } else {
        Err(SignError::BadSignature)
    }
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes a received Base64 MAC; anything undecodable is simply a wrong signature.
pub(crate) fn base64_decode(received: &str) -> Result<Vec<u8>, SignError> {
    base64::engine::general_purpose::STANDARD
        .decode(received.trim())
        .map_err(|_| SignError::BadSignature)
}

/// Decodes a received hex MAC, either case; anything undecodable is a wrong signature.
pub(crate) fn hex_decode(received: &str) -> Result<Vec<u8>, SignError> {
    hex::decode(received.trim()).map_err(|_| SignError::BadSignature)
}

/// Splits `k=v,k=v,...` into pairs; empty segments (a trailing comma) are skipped.
/// `whole` names the field the list came from for a pair without `=`.
pub(crate) fn split_pairs<'a>(
    whole: &'static str,
    list: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, SignError> {
    list.split(',')
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            seg.split_once('=').ok_or_else(|| {
                SignError::malformed(whole, format!("{:?} is not a key=value pair", echo(seg)))
            })
        })
        .collect()
}

/// Splits `${id}|${pairs}|` into the id and the pair list.
pub(crate) fn split_framed<'a>(
    whole: &'static str,
    s: &'a str,
) -> Result<(&'a str, &'a str), SignError> {
    let shape = "expected ${clientId}|key=value,...|";
    let (id, rest) = s
        .split_once('|')
        .ok_or_else(|| SignError::malformed(whole, format!("no '|'; {shape}")))?;
    let pairs = rest
        .strip_suffix('|')
        .ok_or_else(|| SignError::malformed(whole, format!("does not end with '|'; {shape}")))?;
    if pairs.contains('|') {
        return Err(SignError::malformed(
            whole,
            format!("more than two '|'; {shape}"),
        ));
    }
    Ok((id, pairs))
}

/// A client-chosen id: 1 to `max` characters, no `|`, no control characters.
pub(crate) fn check_client_id(field: &'static str, id: &str, max: usize) -> Result<(), SignError> {
    let n = id.chars().count();
    if n == 0 {
        return Err(SignError::malformed(field, "is empty"));
    }
    if n > max {
        return Err(SignError::malformed(
            field,
            format!("is {n} characters long; at most {max} allowed"),
        ));
    }
    if let Some(c) = id.chars().find(|c| *c == '|' || c.is_control()) {
        return Err(SignError::malformed(field, format!("contains {c:?}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_method_parses_platform_spelling_in_any_case() {
        assert_eq!("HmacSHA1".parse::<HmacMethod>().unwrap(), HmacMethod::Sha1);
        assert_eq!("hmacmd5".parse::<HmacMethod>().unwrap(), HmacMethod::Md5);
        let err = "sha512".parse::<HmacMethod>().unwrap_err();
        assert!(err.to_string().contains("signMethod"), "{err}");
    }

    #[test]
    fn hmac_method_display_round_trips() {
        for m in [HmacMethod::Md5, HmacMethod::Sha1, HmacMethod::Sha256] {
            assert_eq!(m.to_string().parse::<HmacMethod>().unwrap(), m);
        }
    }

    #[test]
    fn freshness_allows_the_window_edge_in_both_directions() {
        assert!(check_fresh("t", 1_000, 1_000 + FRESHNESS_WINDOW_MS, FRESHNESS_WINDOW_MS).is_ok());
        assert!(check_fresh("t", 1_000 + FRESHNESS_WINDOW_MS, 1_000, FRESHNESS_WINDOW_MS).is_ok());
        let err = check_fresh("t", 0, FRESHNESS_WINDOW_MS + 1, FRESHNESS_WINDOW_MS).unwrap_err();
        assert!(matches!(err, SignError::Stale { field: "t", .. }));
    }

    #[test]
    fn freshness_does_not_overflow_on_extreme_values() {
        assert!(check_fresh("t", i64::MAX, i64::MIN, FRESHNESS_WINDOW_MS).is_err());
    }

    #[test]
    fn parse_ms_refuses_signs_spaces_and_overflow() {
        for bad in ["", "-1", "+1", " 1", "1.5", "99999999999999999999"] {
            let err = parse_ms("timestamp", bad).unwrap_err();
            assert!(err.to_string().contains("timestamp"), "{bad:?}: {err}");
        }
        assert_eq!(parse_ms("timestamp", "0042").unwrap(), 42);
    }

    #[test]
    fn echo_truncates_long_input() {
        let long = "x".repeat(1000);
        assert_eq!(echo(&long).chars().count(), ECHO_MAX_CHARS + 1);
    }

    proptest::proptest! {
        #[test]
        fn parsers_of_outside_input_never_panic(s in "\\PC{0,80}", t in "[a-zA-Z0-9=,|&_:.-]{0,80}") {
            for input in [&s, &t] {
                let _ = input.parse::<amqp::AmqpCredentials>();
                let _ = input.parse::<device::DeviceClientId>();
                let _ = input.parse::<device::DeviceUsername>();
                let _ = http2::Http2AuthParams::from_headers(|_| Some(input.as_str()));
            }
        }

        #[test]
        fn amqp_username_round_trips_for_any_valid_credentials(
            client_id in "[a-zA-Z0-9:_.-]{1,64}",
            app_key in "[a-zA-Z0-9_-]{4,64}",
            group in proptest::option::of("[a-zA-Z0-9_-]{1,64}"),
            instance in proptest::option::of("[a-zA-Z0-9_.-]{0,64}"),
            ms in 0i64..=i64::MAX,
            mode in 0u8..4,
        ) {
            let auth = match mode {
                0 => amqp::AmqpAuthMode::AppKey { random_ms: ms },
                1 => amqp::AmqpAuthMode::AccessKey { method: HmacMethod::Md5, timestamp_ms: ms },
                2 => amqp::AmqpAuthMode::AccessKey { method: HmacMethod::Sha1, timestamp_ms: ms },
                _ => amqp::AmqpAuthMode::AccessKey { method: HmacMethod::Sha256, timestamp_ms: ms },
            };
            let creds = amqp::AmqpCredentials {
                client_id,
                auth,
                app_key: app_key.parse().unwrap(),
                group: group.map(|g| g.parse().unwrap()),
                iot_instance_id: instance,
            };
            let parsed: amqp::AmqpCredentials = creds.username().parse().unwrap();
            proptest::prop_assert_eq!(parsed, creds);
        }
    }

    #[test]
    fn error_messages_name_the_field() {
        let e = SignError::MissingField { field: "appKey" };
        assert_eq!(e.to_string(), "missing appKey");
        let e = SignError::malformed("random", "is empty");
        assert_eq!(e.to_string(), "invalid random: is empty");
    }
}
