//! The data-synchronization settings of a project and every rule of SPEC §3, as a pure
//! state machine: `apply(settings, command) -> new settings | rule error`. The store
//! persists the result and audits before/after; the server reacts to the transition
//! (e.g. closing consumer connections when sync is disabled).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::message::DataClass;

/// A single method that carries both device data and user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMethod {
    Amqp,
    Http2,
}

impl SyncMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMethod::Amqp => "amqp",
            SyncMethod::Http2 => "http2",
        }
    }
}

impl fmt::Display for SyncMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one class of data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    None,
    Amqp,
    Http2,
    /// User data only, imported projects only.
    LegacyHttp,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::None => "none",
            Route::Amqp => "amqp",
            Route::Http2 => "http2",
            Route::LegacyHttp => "legacy_http",
        }
    }
}

impl From<SyncMethod> for Route {
    fn from(m: SyncMethod) -> Self {
        match m {
            SyncMethod::Amqp => Route::Amqp,
            SyncMethod::Http2 => Route::Http2,
        }
    }
}

impl FromStr for Route {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        Ok(match s {
            "none" => Route::None,
            "amqp" => Route::Amqp,
            "http2" => Route::Http2,
            "legacy_http" => Route::LegacyHttp,
            other => {
                return Err(RuleError::InvalidValue {
                    field: "route",
                    reason: format!("unknown route {other:?}"),
                })
            }
        })
    }
}

/// Stored sync settings of a project (per-product switches live beside, per product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncSettings {
    pub enabled: bool,
    pub device_data: Route,
    pub user_data: Route,
    /// The legacy webhook URL while legacy HTTP push is active.
    pub legacy_http_url: Option<String>,
    /// Legacy HTTP push was disabled once: it can never come back.
    pub legacy_retired: bool,
    /// The method of the last single-method configuration, kept while disabled so the
    /// stacked messages keep their retention.
    pub last_method: Option<SyncMethod>,
}

impl Default for SyncSettings {
    /// Off by default.
    fn default() -> Self {
        Self {
            enabled: false,
            device_data: Route::None,
            user_data: Route::None,
            legacy_http_url: None,
            legacy_retired: false,
            last_method: None,
        }
    }
}

/// The shape of an enabled configuration, as the console explains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Disabled,
    /// One method carries device and user data.
    Single,
    /// Imported: user data over legacy HTTP, device data over HTTP/2.
    Mixed,
    /// Imported: user data over legacy HTTP, no device data.
    LegacyOnly,
}

impl SyncSettings {
    pub fn mode(&self) -> SyncMode {
        if !self.enabled {
            SyncMode::Disabled
        } else if self.user_data == Route::LegacyHttp {
            if self.device_data == Route::None {
                SyncMode::LegacyOnly
            } else {
                SyncMode::Mixed
            }
        } else {
            SyncMode::Single
        }
    }

    /// The single method, if the project runs on one.
    pub fn method(&self) -> Option<SyncMethod> {
        match (self.enabled, self.device_data, self.user_data) {
            (true, Route::Amqp, Route::Amqp) => Some(SyncMethod::Amqp),
            (true, Route::Http2, Route::Http2) => Some(SyncMethod::Http2),
            _ => None,
        }
    }

    pub fn route_for(&self, class: DataClass) -> Route {
        if !self.enabled {
            return Route::None;
        }
        match class {
            DataClass::Device => self.device_data,
            DataClass::User => self.user_data,
        }
    }

    /// Whether a message of this class is produced at all right now (before the
    /// per-product switch is looked at).
    pub fn produces(&self, class: DataClass) -> bool {
        self.route_for(class) != Route::None
    }

    /// Whether a message of `kind` is produced now. Device data and binding messages
    /// follow the device's product switch (`product_sync`); account messages only need
    /// sync on for user data.
    pub fn produces_kind(
        &self,
        kind: crate::message::MessageKind,
        product_sync: Option<bool>,
    ) -> bool {
        if !self.produces(kind.data_class()) {
            return false;
        }
        let follows_product = kind.data_class() == DataClass::Device
            || matches!(kind, crate::message::MessageKind::Binding(_));
        !(follows_product && product_sync == Some(false))
    }

    pub fn legacy_active(&self) -> bool {
        self.enabled && self.user_data == Route::LegacyHttp
    }
}

/// A change asked of the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncCommand {
    /// Enable with a method name as given by the caller ("amqp", "http2", or a refused
    /// one such as "legacy_http").
    Enable {
        method: String,
    },
    Disable,
    Switch {
        method: String,
    },
    SetLegacyUrl {
        url: String,
    },
}

/// Why a change was refused. `code()` is the stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("data synchronization is already enabled (method {current}); use switch to change the method or disable it first")]
    AlreadyEnabled { current: String },
    #[error("data synchronization is not enabled for this project")]
    NotEnabled,
    #[error("legacy HTTP push cannot be enabled; it is only kept for projects that already had it. Choose \"amqp\" (recommended) or \"http2\"")]
    LegacyNotAllowed,
    #[error("legacy HTTP push was disabled for this project and can never be enabled again. Choose \"amqp\" (recommended) or \"http2\"")]
    LegacyRetired,
    #[error("this project uses the {mode} configuration (user data over legacy HTTP push); to change its method, disable data synchronization and enable it again with a single method (\"amqp\" or \"http2\")")]
    MixedMustReenable { mode: &'static str },
    #[error("the project already uses method {method}")]
    SameMethod { method: SyncMethod },
    #[error("switching directly from {from} to {to} is not supported; only http2 can switch directly to amqp. Disable data synchronization and enable it again with {to}")]
    SwitchNotSupported { from: SyncMethod, to: SyncMethod },
    #[error("legacy HTTP push is not active for this project")]
    LegacyNotActive,
    #[error("{field}: {reason}")]
    InvalidValue { field: &'static str, reason: String },
}

impl RuleError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            RuleError::AlreadyEnabled { .. } => "sync.already_enabled",
            RuleError::NotEnabled => "sync.not_enabled",
            RuleError::LegacyNotAllowed => "sync.legacy_not_allowed",
            RuleError::LegacyRetired => "sync.legacy_retired",
            RuleError::MixedMustReenable { .. } => "sync.mixed_must_reenable",
            RuleError::SameMethod { .. } => "sync.same_method",
            RuleError::SwitchNotSupported { .. } => "sync.switch_not_supported",
            RuleError::LegacyNotActive => "sync.legacy_not_active",
            RuleError::InvalidValue { .. } => "invalid_argument",
        }
    }

    /// The request field the error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RuleError::LegacyNotAllowed
            | RuleError::LegacyRetired
            | RuleError::SameMethod { .. }
            | RuleError::SwitchNotSupported { .. } => Some("method"),
            RuleError::InvalidValue { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// What a successful change means for the running system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Sync turned on: every product is switched on.
    Enabled {
        method: SyncMethod,
    },
    /// Sync turned off: consumers must be disconnected; the stack is kept.
    Disabled,
    /// Consumers of `from` must be moved; the backlog carries over with `to`'s retention.
    Switched {
        from: SyncMethod,
        to: SyncMethod,
    },
    LegacyUrlChanged,
}

fn parse_method(
    field: &'static str,
    s: &str,
    legacy_retired: bool,
) -> Result<SyncMethod, RuleError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "amqp" => Ok(SyncMethod::Amqp),
        "http2" => Ok(SyncMethod::Http2),
        "legacy_http" | "legacy" | "http" | "legacy_http_push" => {
            if legacy_retired {
                Err(RuleError::LegacyRetired)
            } else {
                Err(RuleError::LegacyNotAllowed)
            }
        }
        "" => Err(RuleError::InvalidValue {
            field,
            reason: "is required: \"amqp\" (recommended) or \"http2\"".into(),
        }),
        other => Err(RuleError::InvalidValue {
            field,
            reason: format!("unknown method {other:?}; expected \"amqp\" or \"http2\""),
        }),
    }
}

/// Checks a webhook URL: absolute http(s), no whitespace, at most 2048 characters.
pub fn validate_webhook_url(url: &str) -> Result<(), RuleError> {
    let bad = |reason: &str| RuleError::InvalidValue {
        field: "legacyHttpUrl",
        reason: reason.to_owned(),
    };
    if url.len() > 2048 {
        return Err(bad("must be at most 2048 characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain whitespace"));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("must name a host"));
    }
    Ok(())
}

/// Applies a command to the settings; on success returns the new settings and what the
/// transition means. Never half-applies: on error the caller keeps the old settings.
pub fn apply(s: &SyncSettings, cmd: &SyncCommand) -> Result<(SyncSettings, Transition), RuleError> {
    let mut n = s.clone();
    match cmd {
        SyncCommand::Enable { method } => {
            let m = parse_method("method", method, s.legacy_retired)?;
            if s.enabled {
                let current = match s.method() {
                    Some(m) => m.to_string(),
                    None => format!("{:?}", s.mode()).to_lowercase(),
                };
                return Err(RuleError::AlreadyEnabled { current });
            }
            n.enabled = true;
            n.device_data = m.into();
            n.user_data = m.into();
            n.legacy_http_url = None;
            n.last_method = Some(m);
            Ok((n, Transition::Enabled { method: m }))
        }
        SyncCommand::Disable => {
            if !s.enabled {
                return Err(RuleError::NotEnabled);
            }
            if s.user_data == Route::LegacyHttp {
                n.legacy_retired = true;
            }
            if let Some(m) = s.method() {
                n.last_method = Some(m);
            } else if s.device_data == Route::Http2 {
                n.last_method = Some(SyncMethod::Http2);
            }
            n.enabled = false;
            n.device_data = Route::None;
            n.user_data = Route::None;
            n.legacy_http_url = None;
            Ok((n, Transition::Disabled))
        }
        SyncCommand::Switch { method } => {
            let to = parse_method("method", method, s.legacy_retired)?;
            if !s.enabled {
                return Err(RuleError::NotEnabled);
            }
            match s.mode() {
                SyncMode::Mixed => return Err(RuleError::MixedMustReenable { mode: "mixed" }),
                SyncMode::LegacyOnly => {
                    return Err(RuleError::MixedMustReenable {
                        mode: "legacy HTTP",
                    })
                }
                _ => {}
            }
            let Some(from) = s.method() else {
                return Err(RuleError::NotEnabled);
            };
            if from == to {
                return Err(RuleError::SameMethod { method: to });
            }
            if !(from == SyncMethod::Http2 && to == SyncMethod::Amqp) {
                return Err(RuleError::SwitchNotSupported { from, to });
            }
            n.device_data = to.into();
            n.user_data = to.into();
            n.last_method = Some(to);
            Ok((n, Transition::Switched { from, to }))
        }
        SyncCommand::SetLegacyUrl { url } => {
            if !s.legacy_active() {
                return Err(RuleError::LegacyNotActive);
            }
            validate_webhook_url(url)?;
            n.legacy_http_url = Some(url.clone());
            Ok((n, Transition::LegacyUrlChanged))
        }
    }
}

/// The operator's import of an existing project's configuration (SPEC §12
/// `/admin/import`): the only way legacy and mixed configurations come to exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportedSync {
    pub enabled: bool,
    pub device_data: Route,
    pub user_data: Route,
    #[serde(default)]
    pub legacy_http_url: Option<String>,
}

/// Validates an imported configuration and turns it into settings.
pub fn import(i: &ImportedSync) -> Result<SyncSettings, RuleError> {
    let bad = |field: &'static str, reason: &str| RuleError::InvalidValue {
        field,
        reason: reason.to_owned(),
    };
    if i.device_data == Route::LegacyHttp {
        return Err(bad(
            "sync.deviceData",
            "legacy_http carries user data only; expected none, http2 or amqp",
        ));
    }
    if !i.enabled {
        if i.device_data != Route::None || i.user_data != Route::None {
            return Err(bad(
                "sync.enabled",
                "a disabled configuration must have deviceData and userData \"none\"",
            ));
        }
        if i.legacy_http_url.is_some() {
            return Err(bad(
                "sync.legacyHttpUrl",
                "only allowed when userData is legacy_http",
            ));
        }
        return Ok(SyncSettings::default());
    }
    let settings = match (i.device_data, i.user_data) {
        (Route::None, Route::None) => {
            return Err(bad(
                "sync.enabled",
                "an enabled configuration needs deviceData or userData",
            ))
        }
        (d, u) if d == u => {
            let m = if d == Route::Amqp {
                SyncMethod::Amqp
            } else {
                SyncMethod::Http2
            };
            SyncSettings {
                enabled: true,
                device_data: d,
                user_data: u,
                legacy_http_url: None,
                legacy_retired: false,
                last_method: Some(m),
            }
        }
        (Route::Http2 | Route::None, Route::LegacyHttp) => {
            let url = i.legacy_http_url.as_deref().ok_or_else(|| {
                bad("sync.legacyHttpUrl", "is required when userData is legacy_http")
            })?;
            validate_webhook_url(url).map_err(|e| match e {
                RuleError::InvalidValue { reason, .. } => RuleError::InvalidValue {
                    field: "sync.legacyHttpUrl",
                    reason,
                },
                other => other,
            })?;
            SyncSettings {
                enabled: true,
                device_data: i.device_data,
                user_data: Route::LegacyHttp,
                legacy_http_url: Some(url.to_owned()),
                legacy_retired: false,
                last_method: (i.device_data == Route::Http2).then_some(SyncMethod::Http2),
            }
        }
        (Route::Amqp, Route::LegacyHttp) => {
            return Err(bad(
                "sync.deviceData",
                "with legacy_http user data, device data can only be http2 (the mixed configuration) or none",
            ))
        }
        _ => {
            return Err(bad(
                "sync.userData",
                "one method carries both device data and user data: deviceData and userData must be the same method",
            ))
        }
    };
    if i.user_data != Route::LegacyHttp && i.legacy_http_url.is_some() {
        return Err(bad(
            "sync.legacyHttpUrl",
            "only allowed when userData is legacy_http",
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable(m: &str) -> SyncCommand {
        SyncCommand::Enable { method: m.into() }
    }
    fn switch(m: &str) -> SyncCommand {
        SyncCommand::Switch { method: m.into() }
    }

    fn mixed() -> SyncSettings {
        import(&ImportedSync {
            enabled: true,
            device_data: Route::Http2,
            user_data: Route::LegacyHttp,
            legacy_http_url: Some("http://example.test/push".into()),
        })
        .unwrap()
    }

    #[test]
    fn sync_is_off_by_default_and_produces_nothing() {
        let s = SyncSettings::default();
        assert_eq!(s.mode(), SyncMode::Disabled);
        assert!(!s.produces(DataClass::Device));
        assert!(!s.produces(DataClass::User));
    }

    #[test]
    fn product_switch_silences_device_data_and_bindings_only() {
        use crate::message::{AccountAction, BindingOperation, MessageKind};
        let (s, _) = apply(&SyncSettings::default(), &enable("amqp")).unwrap();
        assert!(s.produces_kind(MessageKind::PropertyPost, Some(true)));
        assert!(!s.produces_kind(MessageKind::PropertyPost, Some(false)));
        assert!(!s.produces_kind(MessageKind::Binding(BindingOperation::Bind), Some(false)));
        assert!(s.produces_kind(MessageKind::AccountLifecycle(AccountAction::Create), None));
        assert!(!SyncSettings::default().produces_kind(MessageKind::PropertyPost, Some(true)));
    }

    #[test]
    fn enable_with_amqp_carries_both_classes() {
        let (s, t) = apply(&SyncSettings::default(), &enable("amqp")).unwrap();
        assert_eq!(
            t,
            Transition::Enabled {
                method: SyncMethod::Amqp
            }
        );
        assert_eq!(s.method(), Some(SyncMethod::Amqp));
        assert_eq!(s.route_for(DataClass::User), Route::Amqp);
        assert_eq!(s.route_for(DataClass::Device), Route::Amqp);
    }

    #[test]
    fn enable_twice_is_refused() {
        let (s, _) = apply(&SyncSettings::default(), &enable("http2")).unwrap();
        let e = apply(&s, &enable("amqp")).unwrap_err();
        assert_eq!(e.code(), "sync.already_enabled");
    }

    #[test]
    fn legacy_can_never_be_enabled() {
        let e = apply(&SyncSettings::default(), &enable("legacy_http")).unwrap_err();
        assert_eq!(e, RuleError::LegacyNotAllowed);
        assert_eq!(e.field(), Some("method"));
    }

    #[test]
    fn disabling_legacy_retires_it_for_good() {
        let s = import(&ImportedSync {
            enabled: true,
            device_data: Route::None,
            user_data: Route::LegacyHttp,
            legacy_http_url: Some("https://hooks.example.test/iot".into()),
        })
        .unwrap();
        assert!(s.legacy_active());
        let (off, t) = apply(&s, &SyncCommand::Disable).unwrap();
        assert_eq!(t, Transition::Disabled);
        assert!(off.legacy_retired);
        assert_eq!(
            apply(&off, &enable("legacy_http")).unwrap_err(),
            RuleError::LegacyRetired
        );
        // A single method is still fine.
        assert!(apply(&off, &enable("amqp")).is_ok());
    }

    #[test]
    fn mixed_configuration_must_disable_and_reenable_to_change() {
        let s = mixed();
        assert_eq!(s.mode(), SyncMode::Mixed);
        let e = apply(&s, &switch("amqp")).unwrap_err();
        assert_eq!(e.code(), "sync.mixed_must_reenable");
        let (off, _) = apply(&s, &SyncCommand::Disable).unwrap();
        let (on, _) = apply(&off, &enable("amqp")).unwrap();
        assert_eq!(on.method(), Some(SyncMethod::Amqp));
        assert!(on.legacy_http_url.is_none());
    }

    #[test]
    fn http2_switches_directly_to_amqp_but_not_back() {
        let (s, _) = apply(&SyncSettings::default(), &enable("http2")).unwrap();
        let (a, t) = apply(&s, &switch("amqp")).unwrap();
        assert_eq!(
            t,
            Transition::Switched {
                from: SyncMethod::Http2,
                to: SyncMethod::Amqp
            }
        );
        assert_eq!(a.method(), Some(SyncMethod::Amqp));
        assert_eq!(
            apply(&a, &switch("amqp")).unwrap_err().code(),
            "sync.same_method"
        );
        assert_eq!(
            apply(&a, &switch("http2")).unwrap_err().code(),
            "sync.switch_not_supported"
        );
    }

    #[test]
    fn disable_requires_enabled_and_keeps_last_method() {
        assert_eq!(
            apply(&SyncSettings::default(), &SyncCommand::Disable).unwrap_err(),
            RuleError::NotEnabled
        );
        let (s, _) = apply(&SyncSettings::default(), &enable("http2")).unwrap();
        let (off, _) = apply(&s, &SyncCommand::Disable).unwrap();
        assert_eq!(off.last_method, Some(SyncMethod::Http2));
        assert!(!off.produces(DataClass::Device));
    }

    #[test]
    fn unknown_or_missing_method_names_the_field() {
        let e = apply(&SyncSettings::default(), &enable("smtp")).unwrap_err();
        assert_eq!(e.field(), Some("method"));
        let e = apply(&SyncSettings::default(), &enable("")).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
    }

    #[test]
    fn import_refuses_inconsistent_configurations() {
        let cases = [
            (true, Route::Amqp, Route::Http2, None, "sync.userData"),
            (
                true,
                Route::Amqp,
                Route::LegacyHttp,
                Some("http://x.test"),
                "sync.deviceData",
            ),
            (
                true,
                Route::Http2,
                Route::LegacyHttp,
                None,
                "sync.legacyHttpUrl",
            ),
            (
                true,
                Route::Http2,
                Route::LegacyHttp,
                Some("ftp://x"),
                "sync.legacyHttpUrl",
            ),
            (false, Route::Amqp, Route::Amqp, None, "sync.enabled"),
            (true, Route::None, Route::None, None, "sync.enabled"),
            (
                true,
                Route::LegacyHttp,
                Route::LegacyHttp,
                Some("http://x.test"),
                "sync.deviceData",
            ),
            (
                true,
                Route::Amqp,
                Route::Amqp,
                Some("http://x.test"),
                "sync.legacyHttpUrl",
            ),
        ];
        for (enabled, d, u, url, field) in cases {
            let e = import(&ImportedSync {
                enabled,
                device_data: d,
                user_data: u,
                legacy_http_url: url.map(str::to_owned),
            })
            .unwrap_err();
            assert_eq!(e.field(), Some(field), "{d:?}/{u:?}: {e}");
        }
    }

    #[test]
    fn legacy_url_can_change_while_active_only() {
        let s = mixed();
        let (n, _) = apply(
            &s,
            &SyncCommand::SetLegacyUrl {
                url: "https://new.example.test/p".into(),
            },
        )
        .unwrap();
        assert_eq!(
            n.legacy_http_url.as_deref(),
            Some("https://new.example.test/p")
        );
        let e = apply(
            &SyncSettings::default(),
            &SyncCommand::SetLegacyUrl {
                url: "https://x.test".into(),
            },
        )
        .unwrap_err();
        assert_eq!(e, RuleError::LegacyNotActive);
    }
}
