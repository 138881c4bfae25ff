//! The OpenAPI document at `/api/v1/openapi.json`, built from the route table the router is
//! built from (`super::operator_routes`, `super::public_routes`): the handlers'
//! `#[utoipa::path]` annotations give each operation its parameters, body and own answers;
//! the answers every operation of a kind can give (a bad token, a bad path id, a body that
//! is not JSON, a full disk) are added here, once, from what the operation takes.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::API_PREFIX;

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

/// What the document says besides its paths.
#[derive(OpenApi)]
#[openapi(
    info(title = "iotsync management API", description = "Projects, registry, data-synchronization settings, consumer groups, device reports, backlog figures, dead letters and API operations. Every call but this document needs Authorization: Bearer <operator token>. Every error is {code, message, field?} (the ErrorBody schema) with a stable code."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("operatorToken" = [])),
)]
struct ApiDoc;

/// The name of the error body's schema in `components.schemas`.
pub const ERROR_SCHEMA: &str = "ErrorBody";

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(super::openapi_document);

/// The document (built once per process).
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapiDocument", tag = "meta",
    security(()),
    responses((status = 200, description = "This OpenAPI document", body = Object)))]
pub async fn document() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// Joins the operator's and the public routes' paths under [`API_PREFIX`], with the
/// answers common to their kind added to every operation.
pub fn build(
    mut operator: utoipa::openapi::OpenApi,
    public: utoipa::openapi::OpenApi,
) -> utoipa::openapi::OpenApi {
    for item in operator.paths.paths.values_mut() {
        for (write, op) in operations_mut(item) {
            add_common_errors(op, write);
        }
    }
    ApiDoc::openapi()
        .nest(API_PREFIX, operator)
        .nest(API_PREFIX, public)
}

/// Each operation of a path item, with whether its method writes.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (bool, &mut Operation)> {
    [
        (false, item.get.as_mut()),
        (false, item.head.as_mut()),
        (false, item.options.as_mut()),
        (false, item.trace.as_mut()),
        (true, item.post.as_mut()),
        (true, item.put.as_mut()),
        (true, item.patch.as_mut()),
        (true, item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(write, op)| op.map(|op| (write, op)))
}

/// An answer with the error body.
pub fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            Content::new(Some(RefOr::Ref(Ref::from_schema_name(ERROR_SCHEMA)))),
        )
        .build()
}

/// The errors an operator operation can answer because of what it takes, whatever its
/// handler does: the operator check (`require_operator`), the extractors (`extract.rs`),
/// the path identifiers' rules and the registry underneath. An answer the handler's own
/// annotation names keeps its description.
fn add_common_errors(op: &mut Operation, write: bool) {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has_path = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path));
    let has_query = params
        .iter()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    let has_body = op.request_body.is_some();

    let mut common: Vec<(&str, &str)> = vec![
        (
            "401",
            "unauthorized: no operator token (or console session), or a wrong one",
        ),
        (
            "429",
            "auth.throttled: too many wrong operator tokens from this address; Retry-After says when to try again",
        ),
        ("500", "internal: see the server log"),
    ];
    if has_path || has_query || has_body {
        common.push((
            "400",
            "invalid_argument or invalid_json: a path, query or body value is not valid; field names it",
        ));
    }
    if has_path {
        common.push((
            "404",
            "not_found: the project, or the object the path names, does not exist",
        ));
    }
    if has_body {
        common.push((
            "413",
            "http.payload_too_large or body_too_large: the body is over api.max_body_bytes",
        ));
        common.push((
            "415",
            "unsupported_media_type: the body must be application/json",
        ));
    }
    if write {
        common.push((
            "507",
            "store.disk_full or backlog.disk_full: nothing of the request was stored; retry when space returns",
        ));
    }
    for (status, description) in common {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(error_response(description)));
    }
}
