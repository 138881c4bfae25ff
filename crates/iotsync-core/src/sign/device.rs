//! MQTT device credentials (SPEC §10), as the platform's device SDKs send them.
//!
//! - client id `${anyId}|securemode=3,signmethod=hmacsha256,timestamp=${ms}|`; pairs in
//!   any order, `signmethod` one of hmacmd5/hmacsha1/hmacsha256, `timestamp` optional.
//!   Device SDKs add their own pairs (`_v=`, `lan=`, `_ss=`, `gw=`, `ext=` …); those are
//!   kept in [`DeviceClientId::extra`] and otherwise ignored.
//! - username `${deviceName}&${productKey}`.
//! - password = hex HMAC(deviceSecret,
//!   `clientId${anyId}deviceName${dn}productKey${pk}timestamp${ms}`), the `timestamp` part
//!   left out when the client id has none. Either hex case is accepted.
//!
//! The timestamp is signed, so it cannot be stripped or changed without the secret;
//! [`check_timestamp`] refuses one outside a window (the gateway's
//! `auth.device_timestamp_window`, 15 minutes like every other channel), so a captured
//! password stops working. A client id without a timestamp (SDKs for devices without a
//! real-time clock leave it out) passes unless the gateway requires one.

use std::fmt;
use std::str::FromStr;

use super::{
    check_client_id, check_fresh, echo, hex_decode, mac_matches, parse_ms, split_framed,
    split_pairs, HmacMethod, SignError,
};
use crate::ids::{DeviceName, ProductKey};

/// Longest `anyId` accepted (the platform's limit).
pub const ANY_ID_MAX_CHARS: usize = 64;

/// How the device connects, as `securemode` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecureMode {
    /// `securemode=2`: TLS.
    Tls,
    /// `securemode=3`: plain TCP.
    Tcp,
}

impl SecureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "2",
            Self::Tcp => "3",
        }
    }
}

/// A parsed MQTT client id. `Display` writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClientId {
    pub any_id: String,
    pub secure_mode: SecureMode,
    pub sign_method: HmacMethod,
    pub timestamp_ms: Option<i64>,
    /// Other pairs, in the order received.
    pub extra: Vec<(String, String)>,
}

impl fmt::Display for DeviceClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|securemode={},signmethod={}",
            self.any_id,
            self.secure_mode.as_str(),
            self.sign_method
        )?;
        if let Some(ts) = self.timestamp_ms {
            write!(f, ",timestamp={ts}")?;
        }
        for (k, v) in &self.extra {
            write!(f, ",{k}={v}")?;
        }
        f.write_str("|")
    }
}

impl FromStr for DeviceClientId {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Self, SignError> {
        let (any_id, list) = split_framed("clientId", s)?;
        check_client_id("clientId", any_id, ANY_ID_MAX_CHARS)?;
        let mut secure_mode = None;
        let mut sign_method = None;
        let mut timestamp_ms = None;
        let mut extra = Vec::new();
        for (k, v) in split_pairs("clientId", list)? {
            match k {
                "securemode" => set_once(&mut secure_mode, "securemode", parse_secure_mode(v)?)?,
                "signmethod" => set_once(
                    &mut sign_method,
                    "signmethod",
                    HmacMethod::parse_field("signmethod", v)?,
                )?,
                "timestamp" => set_once(&mut timestamp_ms, "timestamp", parse_ms("timestamp", v)?)?,
                "" => {
                    return Err(SignError::malformed(
                        "clientId",
                        format!("pair {:?} has an empty key", echo(v)),
                    ))
                }
                _ => extra.push((k.to_owned(), v.to_owned())),
            }
        }
        Ok(Self {
            any_id: any_id.to_owned(),
            secure_mode: secure_mode.ok_or(SignError::MissingField {
                field: "securemode",
            })?,
            sign_method: sign_method.ok_or(SignError::MissingField {
                field: "signmethod",
            })?,
            timestamp_ms,
            extra,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), SignError> {
    if slot.is_some() {
        return Err(SignError::DuplicateField { field });
    }
    *slot = Some(value);
    Ok(())
}

fn parse_secure_mode(v: &str) -> Result<SecureMode, SignError> {
    match v {
        "2" => Ok(SecureMode::Tls),
        "3" => Ok(SecureMode::Tcp),
        _ => Err(SignError::unsupported(
            "securemode",
            v,
            "2 (TLS) or 3 (TCP)",
        )),
    }
}

/// A parsed MQTT username, `${deviceName}&${productKey}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceUsername {
    pub device_name: DeviceName,
    pub product_key: ProductKey,
}

impl fmt::Display for DeviceUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}&{}", self.device_name, self.product_key)
    }
}

impl FromStr for DeviceUsername {
    type Err = SignError;

    fn from_str(s: &str) -> Result<Self, SignError> {
        let (dn, pk) = s.split_once('&').ok_or_else(|| {
            SignError::malformed("username", "expected ${deviceName}&${productKey}")
        })?;
        Ok(Self {
            device_name: dn
                .parse()
                .map_err(|e: crate::ids::IdError| SignError::malformed("deviceName", e.reason))?,
            product_key: pk
                .parse()
                .map_err(|e: crate::ids::IdError| SignError::malformed("productKey", e.reason))?,
        })
    }
}

fn signed_content(client_id: &DeviceClientId, username: &DeviceUsername) -> String {
    // Keys in sorted order, as the platform concatenates them.
    let mut s = format!(
        "clientId{}deviceName{}productKey{}",
        client_id.any_id, username.device_name, username.product_key
    );
    if let Some(ts) = client_id.timestamp_ms {
        s.push_str("timestamp");
        s.push_str(&ts.to_string());
    }
    s
}

fn mac(client_id: &DeviceClientId, username: &DeviceUsername, device_secret: &str) -> Vec<u8> {
    client_id.sign_method.mac(
        device_secret.as_bytes(),
        signed_content(client_id, username).as_bytes(),
    )
}

/// The MQTT password, lowercase hex.
pub fn sign_password(
    client_id: &DeviceClientId,
    username: &DeviceUsername,
    device_secret: &str,
) -> String {
    hex::encode(mac(client_id, username, device_secret))
}

/// Checks an MQTT password (hex, either case) in constant time.
pub fn verify(
    client_id: &DeviceClientId,
    username: &DeviceUsername,
    password: &str,
    device_secret: &str,
) -> Result<(), SignError> {
    mac_matches(
        &mac(client_id, username, device_secret),
        &hex_decode(password)?,
    )
}

/// How the gateway checks a client id's timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampPolicy {
    /// Allowed distance from server time either way, ms; 0: not checked.
    pub window_ms: i64,
    /// Refuse a client id without a timestamp.
    pub required: bool,
}

/// Refuses a client id whose timestamp is further than the window from `now_ms`
/// (`Stale`), or that has none when one is required (`MissingField`).
pub fn check_timestamp(
    client_id: &DeviceClientId,
    policy: TimestampPolicy,
    now_ms: i64,
) -> Result<(), SignError> {
    match client_id.timestamp_ms {
        None if policy.required => Err(SignError::MissingField { field: "timestamp" }),
        None => Ok(()),
        Some(_) if policy.window_ms == 0 => Ok(()),
        Some(ts) => check_fresh("timestamp", ts, now_ms, policy.window_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "device-secret";

    fn username() -> DeviceUsername {
        "light_01&a1B2c3D4e5F".parse().unwrap()
    }

    fn parse_err(s: &str) -> SignError {
        s.parse::<DeviceClientId>()
            .expect_err("client id should be refused")
    }

    #[test]
    fn parses_the_spec_client_id() {
        let c: DeviceClientId =
            "dev-123|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|"
                .parse()
                .unwrap();
        assert_eq!(c.any_id, "dev-123");
        assert_eq!(c.secure_mode, SecureMode::Tcp);
        assert_eq!(c.sign_method, HmacMethod::Sha256);
        assert_eq!(c.timestamp_ms, Some(1_700_000_000_000));
        assert!(c.extra.is_empty());
    }

    #[test]
    fn accepts_pairs_in_any_order_and_keeps_sdk_extras() {
        let a: DeviceClientId =
            "d1|timestamp=5,_v=sdk-c-4.1,signmethod=hmacsha1,securemode=2,lan=C|"
                .parse()
                .unwrap();
        assert_eq!(a.secure_mode, SecureMode::Tls);
        assert_eq!(a.sign_method, HmacMethod::Sha1);
        assert_eq!(a.timestamp_ms, Some(5));
        assert_eq!(
            a.extra,
            vec![
                ("_v".to_owned(), "sdk-c-4.1".to_owned()),
                ("lan".to_owned(), "C".to_owned())
            ]
        );
        let b: DeviceClientId = a.to_string().parse().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn timestamp_is_optional() {
        let c: DeviceClientId = "d1|securemode=3,signmethod=hmacmd5|".parse().unwrap();
        assert_eq!(c.timestamp_ms, None);
        assert_eq!(c.to_string(), "d1|securemode=3,signmethod=hmacmd5|");
    }

    #[test]
    fn missing_sign_method_and_secure_mode_are_named() {
        assert_eq!(
            parse_err("d1|securemode=3,timestamp=1|"),
            SignError::MissingField {
                field: "signmethod"
            }
        );
        assert_eq!(
            parse_err("d1|signmethod=hmacsha1|"),
            SignError::MissingField {
                field: "securemode"
            }
        );
    }

    #[test]
    fn unsupported_sign_method_and_secure_mode_are_named() {
        let e = parse_err("d1|securemode=3,signmethod=hmacsha512|");
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: "signmethod",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("signmethod"), "{e}");
        let e = parse_err("d1|securemode=7,signmethod=hmacsha1|");
        assert!(
            matches!(
                e,
                SignError::Unsupported {
                    field: "securemode",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_and_non_numeric_timestamps_are_named() {
        let e = parse_err("d1|securemode=3,signmethod=hmacsha1,timestamp=1,timestamp=2|");
        assert_eq!(e, SignError::DuplicateField { field: "timestamp" });
        let e = parse_err("d1|securemode=3,signmethod=hmacsha1,timestamp=now|");
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
    fn empty_or_unframed_client_ids_are_refused() {
        let e = parse_err("|securemode=3,signmethod=hmacsha1|");
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
        let e = parse_err("d1");
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
        let e = parse_err("d1|securemode=3,signmethod=hmacsha1,=x|");
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
    }

    #[test]
    fn username_parses_and_names_the_bad_part() {
        let u = username();
        assert_eq!(u.device_name.as_str(), "light_01");
        assert_eq!(u.product_key.as_str(), "a1B2c3D4e5F");
        assert_eq!(u.to_string(), "light_01&a1B2c3D4e5F");
        let e = "light_01".parse::<DeviceUsername>().unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "username",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = "l/1&a1B2c3D4e5F".parse::<DeviceUsername>().unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "deviceName",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = "light_01&a1-b2".parse::<DeviceUsername>().unwrap_err();
        assert!(
            matches!(
                e,
                SignError::Malformed {
                    field: "productKey",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn signed_password_verifies_for_every_method_in_either_hex_case() {
        for m in ["hmacmd5", "hmacsha1", "hmacsha256"] {
            let c: DeviceClientId = format!("d1|securemode=3,signmethod={m},timestamp=42|")
                .parse()
                .unwrap();
            let p = sign_password(&c, &username(), SECRET);
            verify(&c, &username(), &p, SECRET).unwrap();
            verify(&c, &username(), &p.to_uppercase(), SECRET).unwrap();
        }
    }

    #[test]
    fn wrong_secret_or_other_device_is_a_bad_signature() {
        let c: DeviceClientId = "d1|securemode=3,signmethod=hmacsha256,timestamp=42|"
            .parse()
            .unwrap();
        let p = sign_password(&c, &username(), SECRET);
        assert_eq!(
            verify(&c, &username(), &p, "other"),
            Err(SignError::BadSignature)
        );
        let other: DeviceUsername = "light_02&a1B2c3D4e5F".parse().unwrap();
        assert_eq!(verify(&c, &other, &p, SECRET), Err(SignError::BadSignature));
    }

    #[test]
    fn timestamp_is_part_of_the_signature() {
        let with: DeviceClientId = "d1|securemode=3,signmethod=hmacsha256,timestamp=42|"
            .parse()
            .unwrap();
        let without = DeviceClientId {
            timestamp_ms: None,
            ..with.clone()
        };
        let p = sign_password(&with, &username(), SECRET);
        assert_eq!(
            verify(&without, &username(), &p, SECRET),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn non_hex_password_is_a_bad_signature() {
        let c: DeviceClientId = "d1|securemode=3,signmethod=hmacsha256|".parse().unwrap();
        assert_eq!(
            verify(&c, &username(), "not-hex", SECRET),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_window_are_stale_and_missing_ones_pass_unless_required() {
        const WINDOW: i64 = 15 * 60 * 1000;
        const NOW: i64 = 1_700_000_000_000;
        let policy = TimestampPolicy {
            window_ms: WINDOW,
            required: false,
        };
        let at = |ts: i64| -> DeviceClientId {
            format!("d1|securemode=3,signmethod=hmacsha256,timestamp={ts}|")
                .parse()
                .unwrap()
        };
        assert_eq!(check_timestamp(&at(NOW), policy, NOW), Ok(()));
        assert_eq!(check_timestamp(&at(NOW - WINDOW), policy, NOW), Ok(()));
        assert_eq!(check_timestamp(&at(NOW + WINDOW), policy, NOW), Ok(()));
        let year_old = NOW - 365 * 86_400_000;
        let e = check_timestamp(&at(year_old), policy, NOW).unwrap_err();
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
        assert!(check_timestamp(&at(NOW + WINDOW + 1), policy, NOW).is_err());
        let off = TimestampPolicy {
            window_ms: 0,
            ..policy
        };
        assert_eq!(check_timestamp(&at(year_old), off, NOW), Ok(()));
        let none: DeviceClientId = "d1|securemode=3,signmethod=hmacsha256|".parse().unwrap();
        assert_eq!(check_timestamp(&none, policy, NOW), Ok(()));
        let required = TimestampPolicy {
            required: true,
            ..policy
        };
        assert_eq!(
            check_timestamp(&none, required, NOW),
            Err(SignError::MissingField { field: "timestamp" })
        );
    }
}
