//! One place maps every error to an HTTP status and the body `{code, message, field?}`.
//! Server-side details (database errors) go to the log, never to the client. Every match
//! names each variant (no `_` arm): a variant added to an error enum does not compile
//! until someone decides its status here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use iotsync_core::ids::IdError;
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
            StoreError::Rule(r) if r.code() == "invalid_argument" => StatusCode::BAD_REQUEST,
            StoreError::Rule(_) | StoreError::Limit { .. } => StatusCode::CONFLICT,
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
    fn other_database_errors_stay_internal() {
        let e = ApiError::from(StoreError::from(sqlx::Error::PoolClosed));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body.code, "internal");
    }
}
