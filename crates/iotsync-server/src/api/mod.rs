//! The management REST API (SPEC §12) under `/api/v1`, for the operator and the console.
//! Every route but the OpenAPI document needs `Authorization: Bearer <operator token>`.

pub mod error;
pub mod extract;
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

/// Reacts to accepted sync transitions (closing consumer connections on disable, moving
/// consumers on a switch). The delivery layer implements it; the API only reports.
pub trait SyncListener: Send + Sync + 'static {
    fn on_transition(
        &self,
        project: &iotsync_core::ProjectId,
        settings: &iotsync_core::sync_rules::SyncSettings,
        transition: iotsync_core::sync_rules::Transition,
    );
}

/// A listener that does nothing, while no channel is wired.
pub struct NoSyncListener;

impl SyncListener for NoSyncListener {
    fn on_transition(
        &self,
        _: &iotsync_core::ProjectId,
        _: &iotsync_core::sync_rules::SyncSettings,
        _: iotsync_core::sync_rules::Transition,
    ) {
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<dyn Registry>,
    pub operator_token: Arc<str>,
    pub clock: SharedClock,
    pub sync_listener: Arc<dyn SyncListener>,
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
        None => Err(ApiError::unauthorized(
            "missing Authorization: Bearer <operator token>",
        )),
        Some(t) if bool::from(t.as_bytes().ct_eq(st.operator_token.as_bytes())) => {
            Ok(next.run(req).await)
        }
        Some(_) => Err(ApiError::unauthorized("the operator token is not valid")),
    }
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
            get(registry::device_properties),
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
        .route("/admin/import", post(projects::import))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_operator,
        ));
    let v1 = Router::new()
        .route("/openapi.json", get(openapi::document))
        .merge(authed)
        .fallback(fallback)
        .with_state(state);
    Router::new()
        .nest("/api/v1", v1)
        .layer(DefaultBodyLimit::max(max_body_bytes))
}
