//! The signed cloud API under `/cloud/*` (SPEC §9, ADR 0005).
//!
//! Every call, in order: API-gateway signature (15-minute window, Content-MD5) →
//! single-use nonce (recorded in the registry) → envelope `{id, version, request: {apiVer, cloudToken}, params}` →
//! the operation from the catalogue → its group's activation → the cloud token → the
//! operation, scoped to the signing project. Every answer is HTTP 200 with
//! `{id, code, message, data}`.

mod nonce;
mod ops;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use iotsync_backlog::Backlog;
use iotsync_core::api_catalog::{operation_by_path, ApiGroup};
use iotsync_core::sign::api_gateway::{GatewayCredentials, GatewayRequest};
use iotsync_core::sign::FRESHNESS_WINDOW_MS;
use iotsync_core::{ProjectId, SharedClock};
use iotsync_store::{Registry, StoreError};

use crate::delivery::hub::DeliveryHub;
use crate::gateway::DeviceSessions;
use crate::ingest::outbox_relay::DispatcherHandle;
use crate::ingest::Ingest;

pub use nonce::NonceCache;

/// Answer codes of the cloud API (SPEC §9).
pub mod code {
    pub const SUCCESS: i64 = 200;
    pub const SIGNATURE: i64 = 401;
    pub const FORBIDDEN: i64 = 403;
    pub const NOT_FOUND: i64 = 404;
    pub const BAD_PARAMETER: i64 = 460;
    pub const INTERNAL: i64 = 500;
    /// The server's disk is full (registry or backlog): nothing was stored; retry later.
    /// The message starts with the REST code (`store.disk_full` or `backlog.disk_full`).
    pub const DISK_FULL: i64 = 507;
    /// The request body is over the cloud API's limit.
    pub const PAYLOAD_TOO_LARGE: i64 = 413;
    pub const DEVICE_OFFLINE: i64 = 9201;
    /// The device is online but did not reply in time.
    pub const DEVICE_TIMEOUT: i64 = 9202;
}

/// A refused call: the `code` and `message` of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudError {
    pub code: i64,
    pub message: String,
}

impl CloudError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(code::BAD_PARAMETER, message)
    }
}

impl From<StoreError> for CloudError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { .. } => CloudError::new(code::NOT_FOUND, e.to_string()),
            StoreError::Invalid { .. } | StoreError::Conflict { .. } | StoreError::Rule(_) => {
                CloudError::bad(e.to_string())
            }
            StoreError::DiskFull(_) => {
                tracing::error!(error = %e, "cloud API: registry disk full");
                CloudError::new(
                    code::DISK_FULL,
                    format!(
                        "store.disk_full: {}",
                        crate::api::error::STORE_DISK_FULL_MESSAGE
                    ),
                )
            }
            _ => {
                tracing::error!(error = %e, "cloud API store error");
                CloudError::new(code::INTERNAL, "internal error")
            }
        }
    }
}

pub type CloudResult<T> = Result<T, CloudError>;

#[derive(Clone)]
pub struct CloudState {
    pub registry: Arc<dyn Registry>,
    pub ingest: Arc<Ingest>,
    pub dispatcher: DispatcherHandle,
    pub clock: SharedClock,
    pub backlog: Arc<dyn Backlog>,
    pub hub: Arc<DeliveryHub>,
    pub sessions: Arc<DeviceSessions>,
    pub nonces: Arc<NonceCache>,
}

pub fn router(ctx: &crate::context::Context) -> Router {
    let st = CloudState {
        registry: ctx.registry.clone(),
        ingest: ctx.ingest.clone(),
        dispatcher: ctx.dispatcher.clone(),
        clock: ctx.clock.clone(),
        backlog: ctx.backlog.clone(),
        hub: ctx.hub.clone(),
        sessions: crate::gateway::sessions(ctx),
        nonces: Arc::new(NonceCache::new(ctx.registry.clone(), FRESHNESS_WINDOW_MS)),
    };
    Router::new()
        .route("/cloud/{*path}", post(handle))
        .with_state(st)
}

fn answer(id: &Value, r: CloudResult<Value>) -> Json<Value> {
    let id = match id {
        Value::String(_) | Value::Number(_) => id.clone(),
        _ => Value::Null,
    };
    Json(match r {
        Ok(data) => json!({"id": id, "code": code::SUCCESS, "message": "success", "data": data}),
        Err(e) => json!({"id": id, "code": e.code, "message": e.message, "data": Value::Null}),
    })
}

async fn handle(
    State(st): State<CloudState>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Json<Value> {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let code = if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                code::PAYLOAD_TOO_LARGE
            } else {
                code::BAD_PARAMETER
            };
            tracing::info!(path = uri.path(), code, error = %e, "cloud API body refused");
            return answer(
                &Value::Null,
                Err(CloudError::new(code, format!("request body refused: {e}"))),
            );
        }
    };
    let envelope: Option<Value> = serde_json::from_slice(&body).ok();
    let id = envelope
        .as_ref()
        .and_then(|v| v.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    let r = process(&st, &uri, &headers, &body, envelope).await;
    if let Err(e) = &r {
        tracing::info!(path = uri.path(), code = e.code, message = %e.message, "cloud API call refused");
    }
    answer(&id, r)
}

async fn process(
    st: &CloudState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    envelope: Option<Value>,
) -> CloudResult<Value> {
    let now = st.clock.now_ms();
    let project = authenticate(st, uri, headers, body, now).await?;

    let Some(Value::Object(mut env)) = envelope else {
        return Err(CloudError::bad(
            "the body must be a JSON object {id, version, request, params}",
        ));
    };
    let request = match env.remove("request") {
        Some(Value::Object(r)) => r,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(CloudError::bad("request must be an object")),
    };
    let params = match env.remove("params") {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(CloudError::bad("params must be an object")),
    };

    let op = operation_by_path(uri.path()).ok_or_else(|| {
        CloudError::new(
            code::NOT_FOUND,
            format!("no cloud API operation at {}", uri.path()),
        )
    })?;
    let activation = st.registry.api_activation(&project).await?;
    let active = activation
        .iter()
        .find(|(g, _)| *g == op.group)
        .map(|(_, on)| *on)
        .unwrap_or_else(|| op.group.activated_by_default());
    if !active {
        return Err(CloudError::new(
            code::FORBIDDEN,
            format!(
                "service not activated: the API group {} ({}) is not activated for this project",
                op.group,
                op.group.title()
            ),
        ));
    }
    if op.group != ApiGroup::CloudToken {
        check_token(st, &project, &request, now).await?;
    }
    ops::dispatch(st, &project, op.path, &params).await
}

/// Signature, freshness, Content-MD5 and the single-use nonce; the signing project.
async fn authenticate(
    st: &CloudState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> CloudResult<ProjectId> {
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let query_ref: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = GatewayRequest {
        method: "POST",
        path: uri.path(),
        query: &query_ref,
        headers: |name: &str| headers.get(name).and_then(|v| v.to_str().ok()),
    };
    let unauthorized = |m: String| CloudError::new(code::SIGNATURE, m);
    let creds = GatewayCredentials::from_request(&req)
        .map_err(|e| unauthorized(format!("signature refused: {e}")))?;
    let project = match st.registry.project_by_app_key(&creds.app_key).await {
        Ok(p) => p,
        Err(StoreError::NotFound { .. }) => {
            return Err(unauthorized("signature refused: unknown X-Ca-Key".into()))
        }
        Err(e) => return Err(e.into()),
    };
    creds
        .verify(&req, body, &project.app_secret, now, FRESHNESS_WINDOW_MS)
        .map_err(|e| unauthorized(format!("signature refused: {e}")))?;
    // Durable before the operation runs: a replay after a restart, or on another node
    // sharing the registry, is refused too.
    let project_id = &project.project.project_id;
    if !st
        .nonces
        .use_once(project_id, &creds.nonce, creds.timestamp_ms, now)
        .await?
    {
        return Err(unauthorized(
            "signature refused: X-Ca-Nonce was already used".into(),
        ));
    }
    Ok(project.project.project_id)
}

/// SHA-256 (hex) of a cloud token: the registry never holds the token itself.
pub(crate) fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn check_token(
    st: &CloudState,
    project: &ProjectId,
    request: &Map<String, Value>,
    now: i64,
) -> CloudResult<()> {
    let given = request
        .get("cloudToken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CloudError::new(
                code::SIGNATURE,
                "request.cloudToken is missing: get one from /cloud/token",
            )
        })?;
    let live = st.registry.cloud_token(project).await?;
    let hash = token_hash(given);
    match live {
        Some(t)
            if subtle::ConstantTimeEq::ct_eq(t.token_hash.as_bytes(), hash.as_bytes()).into() =>
        {
            if t.expires_at <= now {
                Err(CloudError::new(
                    code::SIGNATURE,
                    "cloudToken expired: get a new one from /cloud/token",
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(CloudError::new(
            code::SIGNATURE,
            "cloudToken is not valid for this project (replaced by a newer token, or never issued)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_disk_full_answers_the_cloud_disk_full_code() {
        let full = StoreError::from(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        let e = CloudError::from(full);
        assert_eq!(e.code, code::DISK_FULL);
        assert!(e.message.starts_with("store.disk_full"), "{}", e.message);
    }
}
