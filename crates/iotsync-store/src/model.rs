//! Registry records as the API shows them. Secrets only appear in the `*WithSecret`
//! records returned at creation and rotation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use iotsync_core::sync_rules::{ImportedSync, SyncMode, SyncSettings};
use iotsync_core::{AppKey, DeviceName, IdentityId, IotId, ProductKey, ProjectId, SyncMessage};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub project_id: ProjectId,
    pub name: String,
    pub app_key: AppKey,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectWithSecret {
    #[serde(flatten)]
    pub project: Project,
    pub app_secret: String,
}

/// The operator's import of an existing project (SPEC §12 `/admin/import`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectImport {
    pub name: String,
    pub app_key: AppKey,
    pub app_secret: String,
    pub sync: ImportedSync,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub product_key: ProductKey,
    pub project_id: ProjectId,
    pub name: String,
    pub device_type: String,
    /// Whether device data of this product is synchronized (on unless switched off).
    pub sync_enabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub name: String,
    pub device_type: String,
    pub product_key: Option<ProductKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Inactive,
    Online,
    Offline,
    Disabled,
}

impl DeviceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Inactive => "inactive",
            DeviceStatus::Online => "online",
            DeviceStatus::Offline => "offline",
            DeviceStatus::Disabled => "disabled",
        }
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "inactive" => DeviceStatus::Inactive,
            "online" => DeviceStatus::Online,
            "offline" => DeviceStatus::Offline,
            "disabled" => DeviceStatus::Disabled,
            other => return Err(format!("unknown device status {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub iot_id: IotId,
    pub project_id: ProjectId,
    pub product_key: ProductKey,
    pub device_name: DeviceName,
    /// The product's category.
    pub device_type: String,
    pub status: DeviceStatus,
    pub status_time: i64,
    pub created_at: i64,
}

impl Device {
    pub fn as_ref(&self) -> iotsync_core::payload::DeviceRef {
        iotsync_core::payload::DeviceRef {
            project_id: self.project_id.clone(),
            iot_id: self.iot_id.clone(),
            product_key: self.product_key.clone(),
            device_name: self.device_name.clone(),
            device_type: self.device_type.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceWithSecret {
    #[serde(flatten)]
    pub device: Device,
    pub device_secret: String,
}

/// A property's last reported value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PropertyValue {
    pub identifier: String,
    /// Any JSON value, as the device reported it.
    #[schema(value_type = Value)]
    pub value: serde_json::Value,
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub identity_id: IdentityId,
    pub project_id: ProjectId,
    pub login_name: String,
    pub nick_name: String,
    pub phone: String,
    pub email: String,
    pub gmt_create: i64,
    pub gmt_modified: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewUser {
    pub login_name: String,
    pub nick_name: String,
    pub phone: String,
    pub email: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub nick_name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub identity_id: IdentityId,
    pub iot_id: IotId,
    pub product_key: ProductKey,
    pub device_name: DeviceName,
    /// 1 = owner, 0 = shared.
    pub owned: u8,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct BindingFilter<'a> {
    pub identity: Option<&'a IdentityId>,
    pub iot_id: Option<&'a IotId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductSync {
    pub product_key: ProductKey,
    pub name: String,
    pub enabled: bool,
}

/// Settings as the API shows them: the stored settings, the mode, the products.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncState {
    #[serde(flatten)]
    pub settings: SyncSettings,
    pub mode: SyncMode,
    pub method: Option<iotsync_core::sync_rules::SyncMethod>,
    pub products: Vec<ProductSync>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub project_id: Option<String>,
    pub actor: String,
    pub at: i64,
    pub action: String,
    /// The state before the change (null when the action created it).
    #[schema(value_type = Value)]
    pub before: serde_json::Value,
    /// The state after the change (null when the action removed it).
    #[schema(value_type = Value)]
    pub after: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: i64,
    pub message: SyncMessage,
}

/// 1-based page number and page size (1..=200).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u32,
    pub page_size: u32,
}

impl PageRequest {
    pub const MAX_PAGE_SIZE: u32 = 200;

    pub fn new(page: u32, page_size: u32) -> Result<Self, crate::StoreError> {
        if page == 0 {
            return Err(crate::StoreError::Invalid {
                field: "pageNo",
                reason: "must be 1 or more".into(),
            });
        }
        if page_size == 0 || page_size > Self::MAX_PAGE_SIZE {
            return Err(crate::StoreError::Invalid {
                field: "pageSize",
                reason: format!("must be between 1 and {}", Self::MAX_PAGE_SIZE),
            });
        }
        Ok(Self { page, page_size })
    }

    pub fn all() -> Self {
        Self {
            page: 1,
            page_size: Self::MAX_PAGE_SIZE,
        }
    }

    pub(crate) fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.page_size)
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: i64,
    pub page_no: u32,
    pub page_size: u32,
}

/// The live cloud token of a project: its SHA-256 (hex) and lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudToken {
    pub token_hash: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Reported values kept per device property for the timeline.
pub const PROPERTY_HISTORY_MAX: i64 = 1000;
/// Most values one timeline query returns.
pub const PROPERTY_TIMELINE_MAX_LIMIT: u32 = 200;

/// One property's values between two times (inclusive, ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineQuery {
    pub identifier: String,
    pub start: i64,
    pub end: i64,
    pub limit: u32,
    pub newest_first: bool,
}

/// How a declared consumer group retries failed deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupRetryKind {
    /// The backlog's exponential backoff with jitter (SPEC §5), until retention.
    Backoff,
    /// The legacy HTTP push schedule (SPEC §8): 10 s, 30 s, 1 min, … 16 pushes, then
    /// dead letter.
    LegacyHttp,
}

impl GroupRetryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupRetryKind::Backoff => "backoff",
            GroupRetryKind::LegacyHttp => "legacy_http",
        }
    }
}

impl FromStr for GroupRetryKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backoff" => Ok(GroupRetryKind::Backoff),
            "legacy_http" => Ok(GroupRetryKind::LegacyHttp),
            other => Err(format!("unknown retry kind {other:?}")),
        }
    }
}

/// A declared consumer group of a project: it collects every message its filter takes
/// from the moment it is declared, connected or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredGroup {
    pub project_id: ProjectId,
    pub name: iotsync_core::ConsumerGroup,
    pub filter: iotsync_core::GroupFilterDoc,
    pub retry: GroupRetryKind,
    /// The platform's own (names starting with `_`): not declared or deleted by users.
    pub internal: bool,
    pub created_at: i64,
}

/// Alert thresholds of one consumer group (issue 14). The group is alerting while any
/// threshold that is set is exceeded: more than `stackedMax` messages stacked, the
/// oldest stacked one older than `oldestAgeMaxMs`, more than `deadLettersMax` dead
/// letters. None set (each left out or null): the group never alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertThresholds {
    /// Alerting while more messages than this are stacked.
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub stacked_max: Option<u64>,
    /// Alerting while the oldest stacked message is older than this (ms).
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub oldest_age_max_ms: Option<u64>,
    /// Alerting while the group has more dead letters than this.
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub dead_letters_max: Option<u64>,
}

impl AlertThresholds {
    /// Largest value a threshold may have (the registry stores them as BIGINT).
    pub const MAX: u64 = i64::MAX as u64;

    /// No threshold is set: the group never alerts.
    pub fn is_empty(&self) -> bool {
        self.stacked_max.is_none()
            && self.oldest_age_max_ms.is_none()
            && self.dead_letters_max.is_none()
    }

    /// Each threshold with its API name, for checks and messages.
    pub fn named(&self) -> [(&'static str, Option<u64>); 3] {
        [
            ("stackedMax", self.stacked_max),
            ("oldestAgeMaxMs", self.oldest_age_max_ms),
            ("deadLettersMax", self.dead_letters_max),
        ]
    }
}

/// The alert thresholds stored for one declared group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupAlerts {
    pub project_id: ProjectId,
    pub group: iotsync_core::ConsumerGroup,
    pub thresholds: AlertThresholds,
    /// When they were last set; `None` if they never were.
    pub updated_at: Option<i64>,
}

/// A console session as the registry keeps it (issue 13): the SHA-256 of the cookie's
/// token, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// SHA-256 (hex) of the session token the cookie carries.
    pub token_hash: String,
    /// Fingerprint of the operator token the session proved.
    pub operator_fp: String,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// One failed sign-in counter (issue 13), shared by the nodes on the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailures {
    pub failures: u32,
    /// No attempt is looked at before this (ms); `i64::MIN` within the allowance.
    pub blocked_until: i64,
    /// Forgotten from this time on (ms).
    pub forget_at: i64,
}

/// What kind of committed change another node may need to react to (issue 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Sync settings or a product's switch.
    Sync,
    /// The project's appSecret was rotated.
    Secret,
    /// A device enabled, disabled or deleted; the project deleted.
    Registry,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Sync => "sync",
            ChangeKind::Secret => "secret",
            ChangeKind::Registry => "registry",
        }
    }
}

impl std::str::FromStr for ChangeKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "sync" => Ok(ChangeKind::Sync),
            "secret" => Ok(ChangeKind::Secret),
            "registry" => Ok(ChangeKind::Registry),
            _ => Err(()),
        }
    }
}

/// A change committed by some node sharing the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryChange {
    /// `None`: the feed was interrupted and any project may have changed.
    pub project: Option<iotsync_core::ProjectId>,
    pub kind: ChangeKind,
}
