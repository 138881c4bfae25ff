//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{consumer_groups, projects, registry, sync};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operatorToken",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "iotsync management API", description = "Projects, registry, data-synchronization settings, consumer groups and API operations. Every call needs Authorization: Bearer <operator token>. Errors are {code, message, field?}."),
    paths(
        projects::create, projects::list, projects::get, projects::delete, projects::rotate_secret,
        projects::audit, projects::import,
        registry::create_product, registry::list_products, registry::get_product,
        registry::create_device, registry::list_devices, registry::get_device, registry::delete_device,
        registry::enable_device, registry::disable_device, registry::device_properties,
        registry::create_user, registry::list_users, registry::get_user, registry::update_user,
        registry::delete_user, registry::bind, registry::list_bindings, registry::unbind,
        sync::get, sync::enable, sync::disable, sync::switch, sync::set_legacy_url, sync::set_product,
        sync::api_operations, sync::set_api_group,
        consumer_groups::create, consumer_groups::list, consumer_groups::get, consumer_groups::delete,
    ),
    modifiers(&BearerAuth),
    security(("operatorToken" = [])),
)]
pub struct ApiDoc;

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
