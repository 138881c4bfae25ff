//! The management REST API (SPEC §12) under `/api/v1`, for the operator and the console.
//! Every route but the OpenAPI document needs `Authorization: Bearer <operator token>`.

mod backlog;
mod consumer_groups;
pub mod error;
pub mod extract;
mod metrics;
mod openapi;
mod projects;
mod registry;
mod sync;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::Router;
use subtle::ConstantTimeEq;

use iotsync_core::SharedClock;
use iotsync_store::Registry;

use error::ApiError;

pub use crate::delivery::SyncListener;

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<dyn Registry>,
    /// The REST figures and dead-letter operations read the backlog directly (the API
    /// is not a channel).
    pub backlog: Arc<dyn iotsync_backlog::Backlog>,
    pub operator_token: Arc<str>,
    pub clock: SharedClock,
    pub sync_listener: Arc<dyn SyncListener>,
    pub hub: Arc<crate::delivery::hub::DeliveryHub>,
    /// Declared consumer groups (registry + backlog).
    pub groups: Arc<crate::delivery::groups::GroupDirectory>,
    pub ingest: Arc<crate::ingest::Ingest>,
    pub dispatcher: crate::ingest::outbox_relay::DispatcherHandle,
    pub rates: Arc<crate::delivery::rates::RateSampler>,
    /// `operator` throttles wrong bearer tokens and console sign-ins.
    pub throttles: Arc<crate::throttle::Throttles>,
}

/// The actor recorded in the audit log for operator-token calls.
pub const OPERATOR_ACTOR: &str = "operator";

async fn require_operator(
    State(st): State<ApiState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        // No bearer token: a console session cookie (with CSRF check on writes) will do.
        None => match crate::console::session::authorize(&st, req.headers(), req.method()) {
            Some(Ok(())) => Ok(next.run(req).await),
            Some(Err(e)) => Err(e),
            None => Err(ApiError::unauthorized(
                "missing Authorization: Bearer <operator token>",
            )),
        },
        Some(t) => {
            // Wrong tokens slow down their address (docs/security.md); the check comes
            // first, so a throttled address learns nothing of its guess.
            let ip = extract::PeerIp::of(req.extensions()).0;
            let throttle = &st.throttles.operator;
            if let Err(wait) = throttle.check(ip, OPERATOR_CREDENTIAL) {
                tracing::info!(peer = %ip, retry_after_s = wait.seconds(), "operator token throttled");
                return Ok(axum::response::IntoResponse::into_response(wait));
            }
            if bool::from(t.as_bytes().ct_eq(st.operator_token.as_bytes())) {
                throttle.note_success(ip, OPERATOR_CREDENTIAL);
                Ok(next.run(req).await)
            } else {
                throttle.note_failure(ip, OPERATOR_CREDENTIAL);
                tracing::info!(peer = %ip, "wrong operator token");
                Err(ApiError::unauthorized("the operator token is not valid"))
            }
        }
    }
}

/// The throttle's credential name for the operator token (REST and console share it).
pub(crate) const OPERATOR_CREDENTIAL: &str = "operator-token";

/// After a successful write, wakes the dispatcher so outbox messages move at once.
async fn kick_dispatcher(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let write = req.method() != axum::http::Method::GET;
    let resp = next.run(req).await;
    if write && resp.status().is_success() {
        st.dispatcher.kick();
    }
    resp
}

/// Errors answered outside the API's own handlers (axum's rejections: a path that is not
/// UTF-8, a method the route lacks, a body over the limit) come as text or empty; this
/// gives them the API's JSON error shape with a stable code.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (code, default) = match status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => (
            "http.method_not_allowed",
            "this route does not take that method; see /api/v1/openapi.json",
        ),
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => (
            "http.payload_too_large",
            "the request body is over the limit (api.max_body_bytes)",
        ),
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("http.unsupported_media_type", "send application/json")
        }
        axum::http::StatusCode::NOT_FOUND => ("not_found", "not found"),
        s if s.is_client_error() => ("invalid_argument", "the request is not valid"),
        _ => ("internal", "internal error; see the server log"),
    };
    let message = if text.is_empty() || status.is_server_error() {
        default.to_owned()
    } else {
        text
    };
    let mut out = axum::response::IntoResponse::into_response(ApiError::new(status, code, message));
    // Keep what the client needs of the original (e.g. `Allow` on a 405).
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such API route")
}

pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let p = "/projects/{project_id}";
    let authed = Router::new()
        .route("/projects", post(projects::create).get(projects::list))
        .route(p, get(projects::get).delete(projects::delete))
        .route(&format!("{p}/rotate-secret"), post(projects::rotate_secret))
        .route(&format!("{p}/audit"), get(projects::audit))
        .route(
            &format!("{p}/products"),
            post(registry::create_product).get(registry::list_products),
        )
        .route(
            &format!("{p}/products/{{product_key}}"),
            get(registry::get_product),
        )
        .route(
            &format!("{p}/products/{{product_key}}/devices"),
            post(registry::create_device),
        )
        .route(&format!("{p}/devices"), get(registry::list_devices))
        .route(
            &format!("{p}/devices/{{iot_id}}"),
            get(registry::get_device).delete(registry::delete_device),
        )
        .route(
            &format!("{p}/devices/{{iot_id}}/enable"),
            post(registry::enable_device),
        )
        .route(
            &format!("{p}/devices/{{iot_id}}/disable"),
            post(registry::disable_device),
        )
        .route(
            &format!("{p}/devices/{{iot_id}}/properties"),
            get(registry::device_properties).post(backlog::report_properties),
        )
        .route(
            &format!("{p}/devices/{{iot_id}}/events/{{identifier}}"),
            post(backlog::report_event),
        )
        .route(&format!("{p}/sync/stats"), get(backlog::stats))
        .route(&format!("{p}/sync/consumers"), get(backlog::consumers))
        .route(
            &format!("{p}/sync/dead-letters"),
            get(backlog::dead_letters),
        )
        .route(
            &format!("{p}/sync/dead-letters/{{message_id}}/retry"),
            post(backlog::retry_dead_letter),
        )
        .route(
            &format!("{p}/sync/dead-letters/{{message_id}}"),
            delete(backlog::drop_dead_letter),
        )
        .route(
            &format!("{p}/users"),
            post(registry::create_user).get(registry::list_users),
        )
        .route(
            &format!("{p}/users/{{identity_id}}"),
            get(registry::get_user)
                .patch(registry::update_user)
                .delete(registry::delete_user),
        )
        .route(
            &format!("{p}/bindings"),
            post(registry::bind).get(registry::list_bindings),
        )
        .route(
            &format!("{p}/bindings/{{identity_id}}/{{iot_id}}"),
            delete(registry::unbind),
        )
        .route(&format!("{p}/sync"), get(sync::get))
        .route(&format!("{p}/sync/enable"), post(sync::enable))
        .route(&format!("{p}/sync/disable"), post(sync::disable))
        .route(&format!("{p}/sync/switch"), post(sync::switch))
        .route(&format!("{p}/sync/legacy"), put(sync::set_legacy_url))
        .route(
            &format!("{p}/sync/products/{{product_key}}"),
            put(sync::set_product),
        )
        .route(&format!("{p}/api-operations"), get(sync::api_operations))
        .route(
            &format!("{p}/api-operations/{{group}}"),
            put(sync::set_api_group),
        )
        .route(
            &format!("{p}/consumer-groups"),
            post(consumer_groups::create).get(consumer_groups::list),
        )
        .route(
            &format!("{p}/consumer-groups/{{name}}"),
            get(consumer_groups::get).delete(consumer_groups::delete),
        )
        .route("/admin/import", post(projects::import))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            kick_dispatcher,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let metrics = Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(state.clone());
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::document))
        .merge(authed)
        .fallback(fallback)
        .with_state(state);
    Router::new()
        .merge(metrics)
        .nest("/api/v1", v1)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(json_errors))
}
