//! The web console at `/`. Not built yet: see the open issues.

use axum::Router;

use crate::api::ApiState;
use crate::context::Context;

pub fn router(_ctx: &Context, _api: ApiState) -> Router {
    Router::new()
}
