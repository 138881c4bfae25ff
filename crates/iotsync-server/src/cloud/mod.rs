//! The signed cloud API under `/cloud/*` (SPEC §9). Not built yet: see the open issues.

use axum::Router;

use crate::context::Context;

pub fn router(_ctx: &Context) -> Router {
    Router::new()
}
