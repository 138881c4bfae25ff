//! The management REST API (SPEC §12) under `/api/v1`, for the operator and the console.
//! Every route but the OpenAPI document needs `Authorization: Bearer <operator token>`.

mod alerts;
mod backlog;
mod consumer_groups;
pub mod error;
pub mod extract;
mod metrics;
mod openapi;
pub mod operations;
mod projects;
mod registry;
mod sync;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// The groups' alert state (the evaluator's side the API reads and kicks).
    pub alerts: crate::delivery::alerts::AlertHandle,
    pub ingest: Arc<crate::ingest::Ingest>,
    pub dispatcher: crate::ingest::outbox_relay::DispatcherHandle,
    pub rates: Arc<crate::delivery::rates::RateSampler>,
    /// `operator` throttles wrong bearer tokens and console sign-ins.
    pub throttles: Arc<crate::throttle::Throttles>,
    /// Whether a project the backlog has not met yet keeps acknowledged messages.
    pub keep_acknowledged_default: bool,
    /// This node's name (`node.name`): in `/metrics` and the console.
    pub node_name: Arc<str>,
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
        None => match crate::console::session::authorize(&st, req.headers(), req.method()).await {
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
            let checked = match throttle.check(ip, OPERATOR_CREDENTIAL).await {
                Ok(c) => c,
                Err(wait) => {
                    tracing::info!(peer = %ip, retry_after_s = wait.seconds(), "operator token throttled");
                    return Ok(axum::response::IntoResponse::into_response(wait));
                }
            };
            if bool::from(t.as_bytes().ct_eq(st.operator_token.as_bytes())) {
                throttle
                    .note_success(ip, OPERATOR_CREDENTIAL, checked)
                    .await;
                Ok(next.run(req).await)
            } else {
                throttle.note_failure(ip, OPERATOR_CREDENTIAL).await;
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

/// The one table of the API's routes, relative to `/api/v1`. The router and the OpenAPI
/// document are both built from it (utoipa-axum's `routes!` registers a handler with axum
/// at the path and method of its `#[utoipa::path]`), so a route cannot exist undocumented.
/// Handlers sharing a path go in one `routes!`.
fn operator_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::default()
        .routes(routes!(projects::create, projects::list))
        .routes(routes!(projects::get, projects::delete))
        .routes(routes!(projects::rotate_secret))
        .routes(routes!(projects::audit))
        .routes(routes!(registry::create_product, registry::list_products))
        .routes(routes!(registry::get_product))
        .routes(routes!(registry::create_device))
        .routes(routes!(registry::list_devices))
        .routes(routes!(registry::get_device, registry::delete_device))
        .routes(routes!(registry::enable_device))
        .routes(routes!(registry::disable_device))
        .routes(routes!(
            registry::device_properties,
            backlog::report_properties
        ))
        .routes(routes!(backlog::report_event))
        .routes(routes!(backlog::stats))
        .routes(routes!(backlog::consumers))
        .routes(routes!(backlog::dead_letters))
        .routes(routes!(backlog::retry_dead_letter))
        .routes(routes!(backlog::drop_dead_letter))
        .routes(routes!(registry::create_user, registry::list_users))
        .routes(routes!(
            registry::get_user,
            registry::update_user,
            registry::delete_user
        ))
        .routes(routes!(registry::bind, registry::list_bindings))
        .routes(routes!(registry::unbind))
        .routes(routes!(sync::get))
        .routes(routes!(sync::enable))
        .routes(routes!(sync::disable))
        .routes(routes!(sync::switch))
        .routes(routes!(sync::set_legacy_url))
        .routes(routes!(sync::set_product))
        .routes(routes!(sync::api_operations))
        .routes(routes!(sync::set_api_group))
        .routes(routes!(consumer_groups::create, consumer_groups::list))
        .routes(routes!(consumer_groups::get, consumer_groups::delete))
        // Group alerts (issue 14).
        .routes(routes!(alerts::get, alerts::put))
        .routes(routes!(projects::import))
        // Backlog operations (issue 14).
        .routes(routes!(operations::seek))
        .routes(routes!(operations::purge))
        .routes(routes!(operations::get_message))
        .routes(routes!(operations::list_messages))
        .routes(routes!(operations::get_settings, operations::put_settings))
}

/// The routes anyone may call (no operator token).
fn public_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::default().routes(routes!(openapi::document))
}

/// One route of the API as the router serves it: the method and the full path (axum's
/// `{param}` syntax), e.g. `("POST", "/api/v1/projects")`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiRoute {
    pub method: String,
    pub path: String,
    /// Needs the operator token (or a console session).
    pub operator: bool,
}

/// Every route the router serves under `/api/v1`, read from the table the router is built
/// from (not from the finished document), for the route-coverage test.
pub fn routes() -> Vec<ApiRoute> {
    let mut out = Vec::new();
    for (table, operator) in [(operator_routes(), true), (public_routes(), false)] {
        for (path, item) in table.into_openapi().paths.paths {
            let ops = [
                ("GET", item.get.is_some()),
                ("PUT", item.put.is_some()),
                ("POST", item.post.is_some()),
                ("DELETE", item.delete.is_some()),
                ("OPTIONS", item.options.is_some()),
                ("HEAD", item.head.is_some()),
                ("PATCH", item.patch.is_some()),
                ("TRACE", item.trace.is_some()),
            ];
            for (method, present) in ops {
                if present {
                    out.push(ApiRoute {
                        method: method.to_owned(),
                        path: format!("{API_PREFIX}{path}"),
                        operator,
                    });
                }
            }
        }
    }
    out.sort();
    out
}

/// Where the management API lives.
pub const API_PREFIX: &str = "/api/v1";

/// The OpenAPI document of the API, built from the same table as the router.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::build(
        operator_routes().into_openapi(),
        public_routes().into_openapi(),
    )
}

pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let (authed, _) = operator_routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            kick_dispatcher,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ))
        .split_for_parts();
    let (public, _) = public_routes().split_for_parts();
    let metrics = Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(state.clone());
    let v1 = Router::new()
        .merge(public)
        .merge(authed)
        .fallback(fallback)
        .with_state(state);
    Router::new()
        .merge(metrics)
        .nest(API_PREFIX, v1)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(json_errors))
}
