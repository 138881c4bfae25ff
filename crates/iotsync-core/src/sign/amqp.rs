//! AMQP 1.0 SASL PLAIN credentials (SPEC §6).
//!
//! Username `${clientId}|k=v,k=v,...|` in one of two forms:
//!
//! - app-key: `authMode=appkey,signMethod=SHA256,random=${ms},appKey=${appKey},groupId=${group}`;
//!   password = Base64(HMAC-SHA256(appSecret, `random=${ms}`)).
//! - access-key: `authMode=aksign,signMethod=hmac{md5,sha1,sha256},timestamp=${ms},authId=${appKey},consumerGroupId=${group}`
//!   and an optional, possibly empty `iotInstanceId`;
//!   password = Base64(HMAC-<method>(appSecret, `authId=${appKey}&timestamp=${ms}`)).
//!
//! Pairs come in any order. Unknown keys are refused rather than ignored: the username is
//! the whole credential, and a silently dropped key would hide a client's typo. A group
//! key that is absent or empty means the default group (named after the appKey).

use std::fmt;
use std::str::FromStr;

use super::{
    base64_decode, base64_encode, check_client_id, check_fresh, echo, mac_matches, parse_ms,
    split_framed, split_pairs, HmacMethod, SignError,
};
use crate::ids::{AppKey, ConsumerGroup};

pub use super::FRESHNESS_WINDOW_MS;

/// Longest client id accepted (the platform's limit).
pub const CLIENT_ID_MAX_CHARS: usize = 64;

const IOT_INSTANCE_ID_MAX_CHARS: usize = 64;

/// Which form the username took, with what that form signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmqpAuthMode {
    /// `authMode=appkey`: HMAC-SHA256 over `random=${random_ms}`.
    AppKey { random_ms: i64 },
    /// `authMode=aksign`: HMAC-`method` over `authId=${appKey}&timestamp=${timestamp_ms}`.
    AccessKey {
        method: HmacMethod,
        timestamp_ms: i64,
    },
}

impl AmqpAuthMode {
    /// The signed time, whichever form.
    pub fn signed_ms(&self) -> i64 {
        match *self {
            Self::AppKey { random_ms } => random_ms,
            Self::AccessKey { timestamp_ms, .. } => timestamp_ms,
        }
    }

    fn time_field(&self) -> &'static str {
        match self {
            Self::AppKey { .. } => "random",
            Self::AccessKey { .. } => "timestamp",
        }
    }
}

/// A parsed SASL PLAIN username. `Display` and [`AmqpCredentials::username`] write it
/// back in the platform's key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpCredentials {
    pub client_id: String,
    pub auth: AmqpAuthMode,
    pub app_key: AppKey,
    pub group: Option<ConsumerGroup>,
    pub iot_instance_id: Option<String>,
}

impl AmqpCredentials {
    /// The consumer group to attach to: the named one, or the project's default group.
    pub fn effective_group(&self) -> ConsumerGroup {
        self.group
            .clone()
            .unwrap_or_else(|| ConsumerGroup::default_for(&self.app_key))
    }

    /// The SASL PLAIN username for these credentials.
    pub fn username(&self) -> String {
        self.to_string()
    }

    /// The message the password is the HMAC of.
    fn signed_message(&self) -> String {
        match self.auth {
            AmqpAuthMode::AppKey { random_ms } => format!("random={random_ms}"),
            AmqpAuthMode::AccessKey { timestamp_ms, .. } => {
                format!("authId={}&timestamp={timestamp_ms}", self.app_key)
            }
        }
    }

    fn method(&self) -> HmacMethod {
        match self.auth {
            AmqpAuthMode::AppKey { .. } => HmacMethod::Sha256,
            AmqpAuthMode::AccessKey { method, .. } => method,
        }
    }
}

impl fmt::Display for AmqpCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|", self.client_id)?;
        match self.auth {
            AmqpAuthMode::AppKey { random_ms } => {
                write!(
                    f,
                    "authMode=appkey,signMethod=SHA256,random={random_ms},appKey={}",
                    self.app_key
                )?;
                if let Some(g) = &self.group {
                    write!(f, ",groupId={g}")?;
                }
            }
            AmqpAuthMode::AccessKey {
                method,
                timestamp_ms,
            } => {
                write!(
                    f,
                    "authMode=aksign,signMethod={method},timestamp={timestamp_ms},authId={}",
                    self.app_key
                )?;
                if let Some(g) = &self.group {
                    write!(f, ",consumerGroupId={g}")?;
                }
            }
        }
        if let Some(i) = &self.iot_instance_id {
            write!(f, ",iotInstanceId={i}")?;
        }
        f.write_str("|")
    }
}

/// Every key either form knows, as the static names errors carry.
const KEYS: &[&str] = &[
    "authMode",
    "signMethod",
    "random",
    "appKey",
    "groupId",
    "timestamp",
    "authId",
    "consumerGroupId",
    "iotInstanceId",
];
const APP_KEY_FORM: &[&str] = &[
    "authMode",
    "signMethod",
    "random",
    "appKey",
    "groupId",
    "iotInstanceId",
];
const ACCESS_KEY_FORM: &[&str] = &[
    "authMode",
    "signMethod",
    "timestamp",
    "authId",
    "consumerGroupId",
    "iotInstanceId",
];

/// The username's pairs, each key at most once.
struct Pairs<'a>(Vec<(&'static str, &'a str)>);

impl<'a> Pairs<'a> {
    fn parse(list: &'a str) -> Result<Self, SignError> {
        let mut out: Vec<(&'static str, &'a str)> = Vec::new();
        for (k, v) in split_pairs("username", list)? {
            let key = KEYS
                .iter()
                .copied()
                .find(|known| *known == k)
                .ok_or_else(|| SignError::UnknownField { field: echo(k) })?;
            if out.iter().any(|(seen, _)| *seen == key) {
                return Err(SignError::DuplicateField { field: key });
            }
            out.push((key, v));
        }
        Ok(Self(out))
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn require(&self, key: &'static str) -> Result<&'a str, SignError> {
        self.get(key).ok_or(SignError::MissingField { field: key })
    }

    /// Refuses keys that belong to the other form.
    fn only(&self, allowed: &[&str], mode: &str) -> Result<(), SignError> {
        match self.0.iter().find(|(k, _)| !allowed.contains(k)) {
            Some((k, _)) => Err(SignError::malformed(
                k,
                format!("is not used with authMode={mode}"),
            )),
            None => Ok(()),
        }
    }
}

fn parse_app_key(field: &'static str, v: &str) -> Result<AppKey, SignError> {
    v.parse::<AppKey>()
        .map_err(|e| SignError::malformed(field, e.reason))
}

fn parse_group(field: &'static str, v: Option<&str>) -> Result<Option<ConsumerGroup>, SignError> {
    match v {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<ConsumerGroup>()
            .map(Some)
            .map_err(|e| SignError::malformed(field, e.reason)),
    }
}

fn parse_iot_instance_id(v: Option<&str>) -> Result<Option<String>, SignError> {
    let Some(v) = v else { return Ok(None) };
    let n = v.chars().count();
    if n > IOT_INSTANCE_ID_MAX_CHARS {
        return Err(SignError::malformed(
            "iotInstanceId",
            format!("is {n} characters long; at most {IOT_INSTANCE_ID_MAX_CHARS} allowed"),
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(SignError::malformed(
            "iotInstanceId",
            format!("contains {c:?}; allowed: letters, digits and -_."),
        ));
    }
    Ok(Some(v.to_owned()))
}

impl FromStr for AmqpCredentials {
    type Err = SignError;

    /// Parses a SASL PLAIN username.
    fn from_str(s: &str) -> Result<Self, SignError> {
        let (client_id, list) = split_framed("username", s)?;
        check_client_id("clientId", client_id, CLIENT_ID_MAX_CHARS)?;
        let pairs = Pairs::parse(list)?;
        let mode = pairs.require("authMode")?;
        let sign_method = pairs.require("signMethod")?;
        let iot_instance_id = parse_iot_instance_id(pairs.get("iotInstanceId"))?;

        if mode.eq_ignore_ascii_case("appkey") {
            pairs.only(APP_KEY_FORM, "appkey")?;
            if !sign_method.eq_ignore_ascii_case("SHA256") {
                return Err(SignError::unsupported(
                    "signMethod",
                    sign_method,
                    "SHA256 with authMode=appkey",
                ));
            }
            Ok(Self {
                client_id: client_id.to_owned(),
                auth: AmqpAuthMode::AppKey {
                    random_ms: parse_ms("random", pairs.require("random")?)?,
                },
                app_key: parse_app_key("appKey", pairs.require("appKey")?)?,
                group: parse_group("groupId", pairs.get("groupId"))?,
                iot_instance_id,
            })
        } else if mode.eq_ignore_ascii_case("aksign") {
            pairs.only(ACCESS_KEY_FORM, "aksign")?;
            Ok(Self {
                client_id: client_id.to_owned(),
                auth: AmqpAuthMode::AccessKey {
                    method: HmacMethod::parse_field("signMethod", sign_method)?,
                    timestamp_ms: parse_ms("timestamp", pairs.require("timestamp")?)?,
                },
                app_key: parse_app_key("authId", pairs.require("authId")?)?,
                group: parse_group("consumerGroupId", pairs.get("consumerGroupId"))?,
                iot_instance_id,
            })
        } else {
            Err(SignError::unsupported("authMode", mode, "appkey or aksign"))
        }
    }
}

/// The SASL PLAIN password for `creds`.
pub fn sign_password(creds: &AmqpCredentials, app_secret: &str) -> String {
    let mac = creds
        .method()
        .mac(app_secret.as_bytes(), creds.signed_message().as_bytes());
    base64_encode(&mac)
}

/// Checks that the signed time is within `window_ms` of `now_ms` and that `password` is
/// the one `app_secret` gives, comparing in constant time.
pub fn verify(
    creds: &AmqpCredentials,
    password: &str,
    app_secret: &str,
    now_ms: i64,
    window_ms: i64,
) -> Result<(), SignError> {
    check_fresh(
        creds.auth.time_field(),
        creds.auth.signed_ms(),
        now_ms,
        window_ms,
    )?;
    let expected = creds
        .method()
        .mac(app_secret.as_bytes(), creds.signed_message().as_bytes());
    mac_matches(&expected, &base64_decode(password)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn app_key_username(pairs: &str) -> String {
        format!("client-1|{pairs}|")
    }

    fn parse_err(username: &str) -> SignError {
        username
            .parse::<AmqpCredentials>()
            .expect_err("username should be refused")
    }

    fn app_key_creds() -> AmqpCredentials {
        AmqpCredentials {
            client_id: "client-1".into(),
            auth: AmqpAuthMode::AppKey { random_ms: NOW },
            app_key: "12345678".parse().unwrap(),
            group: Some("analytics".parse().unwrap()),
            iot_instance_id: None,
        }
    }

    fn access_key_creds(method: HmacMethod) -> AmqpCredentials {
        AmqpCredentials {
            client_id: "client-1".into(),
            auth: AmqpAuthMode::AccessKey {
                method,
                timestamp_ms: NOW,
            },
            app_key: "12345678".parse().unwrap(),
            group: None,
            iot_instance_id: Some(String::new()),
        }
    }

    #[test]
    fn parses_app_key_form() {
        let c: AmqpCredentials = app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1700000000000,appKey=12345678,groupId=g1",
        )
        .parse()
        .unwrap();
        assert_eq!(c.client_id, "client-1");
        assert_eq!(c.auth, AmqpAuthMode::AppKey { random_ms: NOW });
        assert_eq!(c.app_key.as_str(), "12345678");
        assert_eq!(c.group.as_ref().map(|g| g.as_str()), Some("g1"));
        assert_eq!(c.iot_instance_id, None);
    }

    #[test]
    fn parses_access_key_form_with_empty_iot_instance_id() {
        let c: AmqpCredentials = app_key_username(
            "authMode=aksign,signMethod=hmacsha1,timestamp=1700000000000,authId=12345678,iotInstanceId=,consumerGroupId=DEFAULT_GROUP",
        )
        .parse()
        .unwrap();
        assert_eq!(
            c.auth,
            AmqpAuthMode::AccessKey {
                method: HmacMethod::Sha1,
                timestamp_ms: NOW
            }
        );
        assert_eq!(c.iot_instance_id.as_deref(), Some(""));
        assert_eq!(c.effective_group().as_str(), "DEFAULT_GROUP");
    }

    #[test]
    fn accepts_pairs_in_any_order() {
        let a: AmqpCredentials = app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1700000000000,appKey=12345678,groupId=g1",
        )
        .parse()
        .unwrap();
        let b: AmqpCredentials = app_key_username(
            "groupId=g1,appKey=12345678,random=1700000000000,signMethod=SHA256,authMode=appkey",
        )
        .parse()
        .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn accepts_sign_method_and_auth_mode_in_any_case() {
        let c: AmqpCredentials = app_key_username(
            "authMode=AppKey,signMethod=sha256,random=1700000000000,appKey=12345678",
        )
        .parse()
        .unwrap();
        assert_eq!(c.auth, AmqpAuthMode::AppKey { random_ms: NOW });
        let c: AmqpCredentials = app_key_username(
            "authMode=aksign,signMethod=HmacSHA256,timestamp=1700000000000,authId=12345678",
        )
        .parse()
        .unwrap();
        assert!(matches!(
            c.auth,
            AmqpAuthMode::AccessKey {
                method: HmacMethod::Sha256,
                ..
            }
        ));
    }

    #[test]
    fn missing_or_empty_group_means_the_default_group() {
        let c: AmqpCredentials =
            app_key_username("authMode=appkey,signMethod=SHA256,random=1,appKey=12345678")
                .parse()
                .unwrap();
        assert_eq!(c.group, None);
        assert_eq!(c.effective_group().as_str(), "12345678");
        let c: AmqpCredentials =
            app_key_username("authMode=appkey,signMethod=SHA256,random=1,appKey=12345678,groupId=")
                .parse()
                .unwrap();
        assert_eq!(c.group, None);
    }

    #[test]
    fn username_round_trips_through_the_parser() {
        let mut creds = vec![app_key_creds()];
        for m in [HmacMethod::Md5, HmacMethod::Sha1, HmacMethod::Sha256] {
            creds.push(access_key_creds(m));
        }
        let mut with_instance = access_key_creds(HmacMethod::Sha1);
        with_instance.iot_instance_id = Some("iot-cn-abc123".into());
        with_instance.group = Some("g2".parse().unwrap());
        creds.push(with_instance);
        for c in creds {
            let u = c.username();
            assert_eq!(u.parse::<AmqpCredentials>().unwrap(), c, "{u}");
        }
    }

    #[test]
    fn username_is_written_in_the_platform_key_order() {
        assert_eq!(
            app_key_creds().username(),
            "client-1|authMode=appkey,signMethod=SHA256,random=1700000000000,appKey=12345678,groupId=analytics|"
        );
        assert_eq!(
            access_key_creds(HmacMethod::Md5).username(),
            "client-1|authMode=aksign,signMethod=hmacmd5,timestamp=1700000000000,authId=12345678,iotInstanceId=|"
        );
    }

    #[test]
    fn refuses_unknown_auth_mode_naming_auth_mode() {
        let e = parse_err(&app_key_username(
            "authMode=token,signMethod=SHA256,random=1,appKey=12345678",
        ));
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: "authMode",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("authMode"), "{e}");
    }

    #[test]
    fn refuses_unknown_sign_method_naming_sign_method() {
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=hmacsha1,random=1,appKey=12345678",
        ));
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: "signMethod",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_err(&app_key_username(
            "authMode=aksign,signMethod=hmacsha512,timestamp=1,authId=12345678",
        ));
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: "signMethod",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("signMethod"), "{e}");
    }

    #[test]
    fn refuses_each_missing_key_naming_it() {
        let app = [
            ("authMode", "signMethod=SHA256,random=1,appKey=12345678"),
            ("signMethod", "authMode=appkey,random=1,appKey=12345678"),
            (
                "random",
                "authMode=appkey,signMethod=SHA256,appKey=12345678",
            ),
            ("appKey", "authMode=appkey,signMethod=SHA256,random=1"),
            (
                "timestamp",
                "authMode=aksign,signMethod=hmacsha1,authId=12345678",
            ),
            ("authId", "authMode=aksign,signMethod=hmacsha1,timestamp=1"),
        ];
        for (key, pairs) in app {
            let e = parse_err(&app_key_username(pairs));
            assert_eq!(e, SignError::MissingField { field: key }, "{pairs}");
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn refuses_duplicate_keys_naming_the_key() {
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1,random=2,appKey=12345678",
        ));
        assert_eq!(e, SignError::DuplicateField { field: "random" });
        assert!(e.to_string().contains("random"), "{e}");
    }

    #[test]
    fn refuses_unknown_keys_naming_the_key() {
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1,appKey=12345678,grupId=g",
        ));
        assert_eq!(
            e,
            SignError::UnknownField {
                field: "grupId".into()
            }
        );
        assert!(e.to_string().contains("grupId"), "{e}");
    }

    #[test]
    fn refuses_keys_of_the_other_form_naming_the_key() {
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1,appKey=12345678,timestamp=1",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "timestamp",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_err(&app_key_username(
            "authMode=aksign,signMethod=hmacsha1,timestamp=1,authId=12345678,groupId=g",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "groupId",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_non_numeric_times_naming_the_key() {
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=abc,appKey=12345678",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "random",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("random"), "{e}");
        let e = parse_err(&app_key_username(
            "authMode=aksign,signMethod=hmacmd5,timestamp=-5,authId=12345678",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "timestamp",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_invalid_app_key_naming_the_form_key() {
        let e = parse_err(&app_key_username(
            "authMode=aksign,signMethod=hmacmd5,timestamp=1,authId=a/b",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "authId",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1,appKey=a b c d",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "appKey",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_err(&app_key_username(
            "authMode=appkey,signMethod=SHA256,random=1,appKey=12345678,groupId=a/b",
        ));
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "groupId",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_empty_client_id_naming_client_id() {
        let e = parse_err("|authMode=appkey,signMethod=SHA256,random=1,appKey=12345678|");
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "clientId",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("clientId"), "{e}");
    }

    #[test]
    fn refuses_usernames_without_the_pipe_frame() {
        for bad in [
            "client-1",
            "client-1|authMode=appkey",
            "client-1|authMode=appkey|x|",
            "client-1|authMode|",
        ] {
            let e = parse_err(bad);
            assert!(
                matches!(
                    e,
                    SignError::Malformed {
                        field: "username",
                        ..
                    }
                ),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn signed_app_key_password_verifies() {
        let c = app_key_creds();
        let p = sign_password(&c, SECRET);
        verify(&c, &p, SECRET, NOW + 1_000, FRESHNESS_WINDOW_MS).unwrap();
    }

    #[test]
    fn signed_access_key_password_verifies_for_every_method() {
        for m in [HmacMethod::Md5, HmacMethod::Sha1, HmacMethod::Sha256] {
            let c = access_key_creds(m);
            let p = sign_password(&c, SECRET);
            verify(&c, &p, SECRET, NOW - 1_000, FRESHNESS_WINDOW_MS).unwrap();
        }
    }

    #[test]
    fn wrong_secret_is_a_bad_signature() {
        let c = app_key_creds();
        let p = sign_password(&c, SECRET);
        assert_eq!(
            verify(&c, &p, "another-secret", NOW, FRESHNESS_WINDOW_MS),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn password_for_another_method_is_a_bad_signature() {
        let p = sign_password(&access_key_creds(HmacMethod::Sha1), SECRET);
        let c = access_key_creds(HmacMethod::Sha256);
        assert_eq!(
            verify(&c, &p, SECRET, NOW, FRESHNESS_WINDOW_MS),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn garbage_password_is_a_bad_signature() {
        let c = app_key_creds();
        for p in ["", "not base64!", "AAAA"] {
            assert_eq!(
                verify(&c, p, SECRET, NOW, FRESHNESS_WINDOW_MS),
                Err(SignError::BadSignature)
            );
        }
    }

    #[test]
    fn stale_random_is_refused_before_the_signature_is_checked() {
        let c = app_key_creds();
        let p = sign_password(&c, SECRET);
        let late = NOW + FRESHNESS_WINDOW_MS + 1;
        let e = verify(&c, &p, SECRET, late, FRESHNESS_WINDOW_MS).unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Stale {
                    field: "random",
                    ..
                }
            ),
            "{e:?}"
        );
        let early = NOW - FRESHNESS_WINDOW_MS - 1;
        let e = verify(
            &access_key_creds(HmacMethod::Md5),
            &p,
            SECRET,
            early,
            FRESHNESS_WINDOW_MS,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Stale {
                    field: "timestamp",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}
