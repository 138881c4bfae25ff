//! Identifiers as newtypes. Each one validates what outside input may put in it, so a
//! value of these types is always safe to put in a topic, a path or a SQL row.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused. `field` is filled in by the caller that knows the
/// input's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub reason: String,
}

fn check_charset(
    what: &'static str,
    s: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(char) -> bool,
    allowed_desc: &str,
) -> Result<(), IdError> {
    // Every allowed character is ASCII, so one pass over the bytes accepts a valid id
    // (ids are checked on every read of a stored message); the rest finds the error.
    if (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii() && allowed(b as char)) {
        return Ok(());
    }
    let n = s.chars().count();
    if n < min || n > max {
        return Err(IdError {
            what,
            reason: format!("must be {min} to {max} characters long (got {n})"),
        });
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(IdError {
            what,
            reason: format!("contains {c:?}; allowed: {allowed_desc}"),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $what:literal, $min:expr, $max:expr, $allowed:expr, $desc:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_charset($what, s, $min, $max, $allowed, $desc)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_charset($what, &s, $min, $max, $allowed, $desc)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
}

/// Device names follow the platform's rule: letters, digits and `-_@.:`.
fn device_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '@' | '.' | ':')
}

id_type!(
    /// A project, e.g. `a1b2c3d4e5f6a7b8`.
    ProjectId, "projectId", 1, 64, token_char, "letters, digits, '-' and '_'"
);
id_type!(
    /// A product's key: unique across the platform, part of every device topic.
    ProductKey, "productKey", 4, 32, alnum, "letters and digits"
);
id_type!(
    /// A device's name, unique within its product.
    DeviceName, "deviceName", 4, 32, device_name_char, "letters, digits and -_@.:"
);
id_type!(
    /// A device's platform-wide id.
    IotId, "iotId", 1, 64, token_char, "letters, digits, '-' and '_'"
);
id_type!(
    /// An end user of the project's app.
    IdentityId, "identityId", 1, 64, token_char, "letters, digits, '-' and '_'"
);
id_type!(
    /// A project's cloud credential key.
    AppKey, "appKey", 4, 64, token_char, "letters, digits, '-' and '_'"
);
id_type!(
    /// A consumer group of a project; the default group is named after the appKey.
    ConsumerGroup, "groupId", 1, 64, token_char, "letters, digits, '-' and '_'"
);
id_type!(
    /// A message's id: unique per message, stable across redeliveries.
    MessageId, "messageId", 1, 64, token_char, "letters, digits, '-' and '_'"
);

impl MessageId {
    /// A fresh id, time-ordered and unique across nodes (UUIDv7 as 32 hex digits).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    /// A fresh UUIDv7 id whose time is `ms` (the message's generateTime), so the id
    /// alone says where in the backlog the message is (lookups by id use it).
    pub fn generate_at(ms: i64) -> Self {
        use rand::RngCore;
        let ms = ms.max(0) as u64;
        // The 74 random bits come from the thread's CSPRNG (reseeded from the OS), not
        // a `getrandom` system call per id: one id per report is on the ingest's hot path.
        let mut random = [0u8; 10];
        rand::thread_rng().fill_bytes(&mut random);
        Self(
            uuid::Builder::from_unix_timestamp_millis(ms, &random)
                .into_uuid()
                .simple()
                .to_string(),
        )
    }
}

impl ProjectId {
    pub fn generate() -> Self {
        Self(format!(
            "p{}",
            &uuid::Uuid::new_v4().simple().to_string()[..15]
        ))
    }
}

impl ProductKey {
    /// Platform-style random product key: 11 characters starting with `a1`.
    pub fn generate() -> Self {
        let r = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("a1{}", &r[..9]))
    }
}

impl IotId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string()[..20].to_owned())
    }
}

impl IdentityId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string()[..24].to_owned())
    }
}

impl AppKey {
    /// 8 decimal digits like the platform's app keys are, prefixed to avoid a leading 0.
    pub fn generate() -> Self {
        let n = uuid::Uuid::new_v4().as_u128() % 90_000_000 + 10_000_000;
        Self(n.to_string())
    }
}

impl ConsumerGroup {
    /// The default group of a project: named after its appKey.
    pub fn default_for(app_key: &AppKey) -> Self {
        Self(app_key.0.clone())
    }
}

/// A fresh secret: 32 hex characters (128 bits of randomness).
pub fn generate_secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_key_refuses_slash_so_topics_stay_well_formed() {
        let err = "ab/cd".parse::<ProductKey>().unwrap_err();
        assert_eq!(err.what, "productKey");
        assert!(err.reason.contains("'/'"), "{}", err.reason);
    }

    #[test]
    fn device_name_accepts_platform_charset() {
        assert!("light_01@home:2.a-b".parse::<DeviceName>().is_ok());
        assert!("abc".parse::<DeviceName>().is_err());
        assert!("a b c d".parse::<DeviceName>().is_err());
    }

    #[test]
    fn an_id_generated_at_a_time_carries_it() {
        let id = MessageId::generate_at(1_700_000_000_123);
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(&id.as_str()[12..13], "7");
        assert_eq!(
            i64::from_str_radix(&id.as_str()[..12], 16).unwrap(),
            1_700_000_000_123
        );
        assert_ne!(id, MessageId::generate_at(1_700_000_000_123));
    }

    #[test]
    fn generated_ids_are_valid_values_of_their_type() {
        for _ in 0..100 {
            ProjectId::generate().as_str().parse::<ProjectId>().unwrap();
            ProductKey::generate()
                .as_str()
                .parse::<ProductKey>()
                .unwrap();
            IotId::generate().as_str().parse::<IotId>().unwrap();
            IdentityId::generate()
                .as_str()
                .parse::<IdentityId>()
                .unwrap();
            AppKey::generate().as_str().parse::<AppKey>().unwrap();
            MessageId::generate().as_str().parse::<MessageId>().unwrap();
        }
    }

    #[test]
    fn serde_refuses_invalid_ids() {
        let r: Result<ProductKey, _> = serde_json::from_str("\"a/b!\"");
        assert!(r.is_err());
    }
}
