//! HTTP/2 (gRPC) consumer authentication in request metadata (SPEC §7).
//!
//! Computed like the AMQP app-key form, but hex instead of Base64:
//! `x-auth-param-sign` = lowercase hex HMAC-SHA256(appSecret, `random=${n}`).

use super::{check_fresh, hex_decode, mac_matches, parse_ms, HmacMethod, SignError};
use crate::ids::{AppKey, ConsumerGroup};

pub const HEADER_AUTH_NAME: &str = "x-auth-name";
pub const HEADER_APP_KEY: &str = "x-auth-param-app-key";
pub const HEADER_SIGN_METHOD: &str = "x-auth-param-sign-method";
pub const HEADER_RANDOM: &str = "x-auth-param-random";
pub const HEADER_SIGN: &str = "x-auth-param-sign";
pub const HEADER_GROUP: &str = "x-auth-param-group";

/// The one `x-auth-name` this channel speaks.
pub const AUTH_NAME_APP_KEY: &str = "appkey";

/// The authentication metadata of one gRPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2AuthParams {
    pub app_key: AppKey,
    /// Always [`HmacMethod::Sha256`] today; kept so a future method is a new variant, not
    /// a new field.
    pub sign_method: HmacMethod,
    pub random_ms: i64,
    /// As received: hex, any case.
    pub sign: String,
    pub group: Option<ConsumerGroup>,
}

impl Http2AuthParams {
    /// Client side: the metadata for `app_key` signed with `app_secret` at `random_ms`.
    pub fn signed(
        app_key: AppKey,
        group: Option<ConsumerGroup>,
        app_secret: &str,
        random_ms: i64,
    ) -> Self {
        Self {
            app_key,
            sign_method: HmacMethod::Sha256,
            random_ms,
            sign: sign(app_secret, random_ms),
            group,
        }
    }

    /// Server side: reads the metadata through `header`, a lookup by lowercase name.
    /// An empty `x-auth-param-group` counts as absent (the default group).
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Result<Self, SignError> {
        let require =
            |name: &'static str| header(name).ok_or(SignError::MissingField { field: name });

        let auth_name = require(HEADER_AUTH_NAME)?;
        if !auth_name.eq_ignore_ascii_case(AUTH_NAME_APP_KEY) {
            return Err(SignError::unsupported(
                HEADER_AUTH_NAME,
                auth_name,
                "appkey",
            ));
        }
        let app_key = require(HEADER_APP_KEY)?
            .parse::<AppKey>()
            .map_err(|e| SignError::malformed(HEADER_APP_KEY, e.reason))?;
        let method = require(HEADER_SIGN_METHOD)?;
        if !method.eq_ignore_ascii_case("SHA256") {
            return Err(SignError::unsupported(HEADER_SIGN_METHOD, method, "SHA256"));
        }
        let random_ms = parse_ms(HEADER_RANDOM, require(HEADER_RANDOM)?)?;
        let sign = require(HEADER_SIGN)?;
        if sign.is_empty() {
            return Err(SignError::malformed(HEADER_SIGN, "is empty"));
        }
        let group = match header(HEADER_GROUP) {
            None | Some("") => None,
            Some(g) => Some(
                g.parse::<ConsumerGroup>()
                    .map_err(|e| SignError::malformed(HEADER_GROUP, e.reason))?,
            ),
        };
        Ok(Self {
            app_key,
            sign_method: HmacMethod::Sha256,
            random_ms,
            sign: sign.to_owned(),
            group,
        })
    }

    /// The metadata to send, as (lowercase name, value) pairs.
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (HEADER_AUTH_NAME, AUTH_NAME_APP_KEY.to_owned()),
            (HEADER_APP_KEY, self.app_key.to_string()),
            (HEADER_SIGN_METHOD, "SHA256".to_owned()),
            (HEADER_RANDOM, self.random_ms.to_string()),
            (HEADER_SIGN, self.sign.clone()),
        ];
        if let Some(g) = &self.group {
            h.push((HEADER_GROUP, g.to_string()));
        }
        h
    }

    /// The consumer group to stream from: the named one, or the project's default group.
    pub fn effective_group(&self) -> ConsumerGroup {
        self.group
            .clone()
            .unwrap_or_else(|| ConsumerGroup::default_for(&self.app_key))
    }

    /// Checks that `random_ms` is within `window_ms` of `now_ms` and that `sign` is the
    /// one `app_secret` gives (hex in either case), comparing in constant time.
    pub fn verify(&self, app_secret: &str, now_ms: i64, window_ms: i64) -> Result<(), SignError> {
        check_fresh(HEADER_RANDOM, self.random_ms, now_ms, window_ms)?;
        let expected = mac(self.sign_method, app_secret, self.random_ms);
        mac_matches(&expected, &hex_decode(&self.sign)?)
    }
}

fn mac(method: HmacMethod, app_secret: &str, random_ms: i64) -> Vec<u8> {
    method.mac(
        app_secret.as_bytes(),
        format!("random={random_ms}").as_bytes(),
    )
}

/// Lowercase hex HMAC-SHA256(appSecret, `random=${random_ms}`).
pub fn sign(app_secret: &str, random_ms: i64) -> String {
    hex::encode(mac(HmacMethod::Sha256, app_secret, random_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::FRESHNESS_WINDOW_MS;
    use std::collections::HashMap;

    const NOW: i64 = 1_700_000_000_000;
    const SECRET: &str = "s3cr3t";

    fn headers(extra: &[(&str, &str)], without: &str) -> HashMap<String, String> {
        let mut h: HashMap<String, String> = [
            (HEADER_AUTH_NAME, "appkey"),
            (HEADER_APP_KEY, "12345678"),
            (HEADER_SIGN_METHOD, "SHA256"),
            (HEADER_RANDOM, "1700000000000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        h.insert(HEADER_SIGN.into(), sign(SECRET, NOW));
        for (k, v) in extra {
            h.insert((*k).to_owned(), (*v).to_owned());
        }
        h.remove(without);
        h
    }

    fn parse(h: &HashMap<String, String>) -> Result<Http2AuthParams, SignError> {
        Http2AuthParams::from_headers(|n| h.get(n).map(String::as_str))
    }

    #[test]
    fn metadata_signed_by_a_client_verifies_on_the_server() {
        let p = Http2AuthParams::signed(
            "12345678".parse().unwrap(),
            Some("g1".parse().unwrap()),
            SECRET,
            NOW,
        );
        let h: HashMap<String, String> = p
            .to_headers()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let parsed = parse(&h).unwrap();
        assert_eq!(parsed, p);
        parsed
            .verify(SECRET, NOW + 5_000, FRESHNESS_WINDOW_MS)
            .unwrap();
        assert_eq!(parsed.effective_group().as_str(), "g1");
    }

    #[test]
    fn sign_is_lowercase_hex_of_hmac_sha256() {
        let s = sign(SECRET, NOW);
        assert_eq!(s.len(), 64);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn uppercase_hex_sign_also_verifies() {
        let upper = sign(SECRET, NOW).to_uppercase();
        let p = parse(&headers(&[(HEADER_SIGN, &upper)], "")).unwrap();
        p.verify(SECRET, NOW, FRESHNESS_WINDOW_MS).unwrap();
    }

    #[test]
    fn absent_group_means_the_default_group() {
        let p = parse(&headers(&[], HEADER_GROUP)).unwrap();
        assert_eq!(p.group, None);
        assert_eq!(p.effective_group().as_str(), "12345678");
    }

    #[test]
    fn each_missing_header_is_named() {
        for name in [
            HEADER_AUTH_NAME,
            HEADER_APP_KEY,
            HEADER_SIGN_METHOD,
            HEADER_RANDOM,
            HEADER_SIGN,
        ] {
            let e = parse(&headers(&[], name)).unwrap_err();
            assert_eq!(e, SignError::MissingField { field: name });
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn unsupported_auth_name_and_sign_method_are_named() {
        let e = parse(&headers(&[(HEADER_AUTH_NAME, "token")], "")).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: HEADER_AUTH_NAME,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse(&headers(&[(HEADER_SIGN_METHOD, "SHA1")], "")).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: HEADER_SIGN_METHOD,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn malformed_random_app_key_and_group_are_named() {
        let cases = [
            (HEADER_RANDOM, "soon"),
            (HEADER_APP_KEY, "a/b/c/d"),
            (HEADER_GROUP, "g 1"),
        ];
        for (name, value) in cases {
            let e = parse(&headers(&[(name, value)], "")).unwrap_err();
            assert!(
                matches!(e, SignError::Malformed { field, .. } if field == name),
                "{e:?}"
            );
        }
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let p = parse(&headers(&[], "")).unwrap();
        assert_eq!(
            p.verify("other", NOW, FRESHNESS_WINDOW_MS),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn stale_random_is_refused() {
        let p = parse(&headers(&[], "")).unwrap();
        let e = p
            .verify(SECRET, NOW - FRESHNESS_WINDOW_MS - 1, FRESHNESS_WINDOW_MS)
            .unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Stale {
                    field: HEADER_RANDOM,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn non_hex_sign_is_a_bad_signature() {
        let p = parse(&headers(&[(HEADER_SIGN, "zz")], "")).unwrap();
        assert_eq!(
            p.verify(SECRET, NOW, FRESHNESS_WINDOW_MS),
            Err(SignError::BadSignature)
        );
    }
}
