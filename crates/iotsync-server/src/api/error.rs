//! One place maps every error to an HTTP status and the body `{code, message, field?}`.
//! Server-side details (database errors) go to the log, never to the client. Every match
//! names each variant (no `_` arm): a variant added to an error enum does not compile
//! until someone decides its status here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use iotsync_core::ids::IdError;
use iotsync_core::sync_rules::RuleError;
use iotsync_store::StoreError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `sync.legacy_not_allowed`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message).with_field(field)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// An identifier from a path, query or body that failed its newtype's rules.
    pub fn bad_id(field: &str, e: IdError) -> Self {
        Self::invalid(field, format!("{field} {}", e.reason))
    }
}

/// The message of `store.disk_full` (REST, cloud API, the device's `_reply`).
pub const STORE_DISK_FULL_MESSAGE: &str =
    "the registry's disk is full; nothing of this request was stored, retry when space returns";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::Conflict { .. } => StatusCode::CONFLICT,
            StoreError::Invalid { .. } => StatusCode::BAD_REQUEST,
            StoreError::Rule(r) => rule_status(r),
            StoreError::Limit { .. } => StatusCode::CONFLICT,
            StoreError::DiskFull(_) => {
                tracing::error!(error = %e, "registry disk full");
                return ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "store.disk_full",
                    STORE_DISK_FULL_MESSAGE,
                );
            }
            StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "registry error");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                );
            }
        };
        let mut err = ApiError::new(status, e.code(), e.to_string());
        if let Some(f) = e.field() {
            err = err.with_field(f);
        }
        err
    }
}

/// A rule of SPEC §3 that refused a change: a value that is not valid is the client's
/// 400; every other rule is the project's state refusing it, 409.
fn rule_status(r: &RuleError) -> StatusCode {
    match r {
        RuleError::InvalidValue { .. } => StatusCode::BAD_REQUEST,
        RuleError::AlreadyEnabled { .. }
        | RuleError::NotEnabled
        | RuleError::LegacyNotAllowed
        | RuleError::LegacyRetired
        | RuleError::MixedMustReenable { .. }
        | RuleError::SameMethod { .. }
        | RuleError::SwitchNotSupported { .. }
        | RuleError::LegacyNotActive => StatusCode::CONFLICT,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<iotsync_backlog::BacklogError> for ApiError {
    fn from(e: iotsync_backlog::BacklogError) -> Self {
        use iotsync_backlog::BacklogError as B;
        match &e {
            B::DiskFull { .. } => {
                tracing::error!(error = %e, "backlog disk full");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "backlog.disk_full",
                    "the backlog's disk is full; nothing of this request was stored, retry when space returns",
                )
            }
            B::DeadLetterNotFound { .. } | B::UnknownGroup { .. } | B::UnknownProject { .. } => {
                ApiError::not_found(e.to_string())
            }
            B::MessageTooLarge { .. } | B::InvalidMessage { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
            }
            B::SeekInFuture { .. } => ApiError::invalid("from", e.to_string()),
            B::TooManyGroups { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "backlog.too_many_groups",
                e.to_string(),
            ),
            B::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the server is shutting down",
            ),
            B::Unsupported { .. } => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "backlog.unsupported",
                e.to_string(),
            ),
            B::Nats { .. } => {
                tracing::error!(error = %e, "backlog (NATS JetStream) error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backlog.unavailable",
                    "the backlog is unreachable right now; retry",
                )
            }
            // A lease is the channels' business: the API never holds one, so meeting
            // one here is a server bug, not the client's.
            B::Io { .. } | B::UnknownLease { .. } => {
                tracing::error!(error = %e, "backlog error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

impl From<crate::ingest::IngestError> for ApiError {
    fn from(e: crate::ingest::IngestError) -> Self {
        use crate::ingest::IngestError as I;
        match e {
            I::Invalid { field, reason } => ApiError::invalid(&field, format!("{field}: {reason}")),
            I::DeviceDisabled => ApiError::new(
                StatusCode::FORBIDDEN,
                "device.disabled",
                "the device is disabled; enable it before it reports",
            )
            .with_field("iotId"),
            I::Store(s) => s.into(),
            I::Backlog(b) => b.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_disk_full_is_507_store_disk_full() {
        let full = StoreError::from(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        let e = ApiError::from(full);
        assert_eq!(e.status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(e.body.code, "store.disk_full");
    }

    #[test]
    fn rule_errors_are_400_for_a_bad_value_and_409_for_the_state() {
        let bad = ApiError::from(StoreError::Rule(RuleError::InvalidValue {
            field: "method",
            reason: "no".into(),
        }));
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.body.code, "invalid_argument");
        assert_eq!(bad.body.field.as_deref(), Some("method"));
        let state = ApiError::from(StoreError::Rule(RuleError::NotEnabled));
        assert_eq!(state.status, StatusCode::CONFLICT);
        assert_eq!(state.body.code, "sync.not_enabled");
    }

    #[test]
    fn backlog_errors_map_to_their_status_and_code() {
        use iotsync_backlog::BacklogError as B;
        let project: iotsync_core::ProjectId = "p1".parse().unwrap();
        let message_id: iotsync_core::MessageId = "m1".parse().unwrap();
        let cases = [
            (
                B::DiskFull {
                    path: "/x".into(),
                    detail: "full".into(),
                },
                StatusCode::INSUFFICIENT_STORAGE,
                "backlog.disk_full",
            ),
            (
                B::Io {
                    op: "write",
                    path: "/x".into(),
                    source: std::io::Error::other("boom"),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                B::UnknownProject {
                    project: project.clone(),
                },
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                B::UnknownGroup {
                    project: project.clone(),
                    group: "g".parse().unwrap(),
                },
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                B::TooManyGroups {
                    project: project.clone(),
                    max: 1,
                },
                StatusCode::CONFLICT,
                "backlog.too_many_groups",
            ),
            (
                B::UnknownLease { seq: 1 },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                B::DeadLetterNotFound {
                    project,
                    message_id: message_id.clone(),
                },
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                B::MessageTooLarge {
                    message_id: message_id.clone(),
                    size: 2,
                    max: 1,
                },
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (
                B::InvalidMessage {
                    message_id,
                    reason: "bad".into(),
                },
                StatusCode::BAD_REQUEST,
                "invalid_argument",
            ),
            (B::Closed, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (
                B::Unsupported { op: "seek" },
                StatusCode::NOT_IMPLEMENTED,
                "backlog.unsupported",
            ),
            (
                B::Nats {
                    op: "append",
                    detail: "timed out".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog.unavailable",
            ),
        ];
        for (e, status, code) in cases {
            let what = format!("{e:?}");
            let api = ApiError::from(e);
            assert_eq!(
                (api.status, api.body.code.as_str()),
                (status, code),
                "{what}"
            );
        }
    }

    #[test]
    fn other_database_errors_stay_internal() {
        let e = ApiError::from(StoreError::from(sqlx::Error::PoolClosed));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body.code, "internal");
    }
}
