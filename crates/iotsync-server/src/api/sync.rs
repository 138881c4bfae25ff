//! Data-synchronization settings (SPEC §3) and the API operations catalogue with its
//! activation status (SPEC §9).

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use iotsync_core::api_catalog::{ApiGroup, OPERATIONS};
use iotsync_core::sync_rules::SyncCommand;
use iotsync_core::{ProductKey, ProjectId};
use iotsync_store::{Product, SyncState};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{id, ApiJson, ApiJsonOrEmpty};
use super::projects::project_id;
use super::{ApiState, OPERATOR_ACTOR};

#[utoipa::path(get, path = "/projects/{project_id}/sync", operation_id = "getSync", tag = "sync",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "enabled, routes, mode, method, legacy state, products with on/off", body = SyncState)))]
pub async fn get(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<SyncState>> {
    Ok(Json(st.registry.sync_state(&project_id(&pid)?).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodBody {
    /// "amqp" (recommended, the default when enabling) or "http2".
    #[schema(pattern = "^(amqp|http2)$")]
    pub method: Option<String>,
}

async fn apply(st: &ApiState, pid: &ProjectId, cmd: SyncCommand) -> ApiResult<Json<SyncState>> {
    let (settings, transition) = st.registry.apply_sync(pid, &cmd, OPERATOR_ACTOR).await?;
    st.sync_listener
        .on_transition(pid, &settings, transition)
        .await;
    Ok(Json(st.registry.sync_state(pid).await?))
}

#[utoipa::path(post, path = "/projects/{project_id}/sync/enable", tag = "sync",
    params(("project_id" = String, Path)), request_body = MethodBody,
    responses((status = 200, body = SyncState), (status = 409, description = "A rule of SPEC §3 refused it", body = ErrorBody)))]
pub async fn enable(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJsonOrEmpty(body): ApiJsonOrEmpty<MethodBody>,
) -> ApiResult<Json<SyncState>> {
    let method = body.method.unwrap_or_else(|| "amqp".to_owned());
    apply(&st, &project_id(&pid)?, SyncCommand::Enable { method }).await
}

#[utoipa::path(post, path = "/projects/{project_id}/sync/disable", tag = "sync",
    params(("project_id" = String, Path)),
    responses((status = 200, body = SyncState), (status = 409, body = ErrorBody)))]
pub async fn disable(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<SyncState>> {
    apply(&st, &project_id(&pid)?, SyncCommand::Disable).await
}

/// The body of `sync/switch` as documented: [`MethodBody`] with `method` required (the
/// handler reads a `MethodBody` and answers its own 400 naming `method` when it is absent).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SwitchBody {
    /// "amqp" or "http2": the method to switch to.
    #[schema(pattern = "^(amqp|http2)$")]
    method: String,
}

#[utoipa::path(post, path = "/projects/{project_id}/sync/switch", tag = "sync",
    params(("project_id" = String, Path)), request_body = SwitchBody,
    responses((status = 200, body = SyncState), (status = 409, body = ErrorBody)))]
pub async fn switch(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<MethodBody>,
) -> ApiResult<Json<SyncState>> {
    let method = b
        .method
        .ok_or_else(|| ApiError::invalid("method", "method is required: \"amqp\" or \"http2\""))?;
    apply(&st, &project_id(&pid)?, SyncCommand::Switch { method }).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyUrlBody {
    pub url: String,
}

#[utoipa::path(put, path = "/projects/{project_id}/sync/legacy", tag = "sync",
    params(("project_id" = String, Path)), request_body = LegacyUrlBody,
    responses((status = 200, description = "The legacy push URL changed (legacy projects only)", body = SyncState),
              (status = 409, body = ErrorBody)))]
pub async fn set_legacy_url(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<LegacyUrlBody>,
) -> ApiResult<Json<SyncState>> {
    apply(
        &st,
        &project_id(&pid)?,
        SyncCommand::SetLegacyUrl { url: b.url },
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductSyncBody {
    pub enabled: bool,
}

#[utoipa::path(put, path = "/projects/{project_id}/sync/products/{product_key}", tag = "sync",
    params(("project_id" = String, Path), ("product_key" = String, Path)), request_body = ProductSyncBody,
    responses((status = 200, body = Product), (status = 409, body = ErrorBody)))]
pub async fn set_product(
    State(st): State<ApiState>,
    Path((pid, pk)): Path<(String, String)>,
    ApiJson(b): ApiJson<ProductSyncBody>,
) -> ApiResult<Json<Product>> {
    let pid = project_id(&pid)?;
    let pk = id::<ProductKey>("productKey", &pk)?;
    Ok(Json(
        st.registry
            .set_product_sync(&pid, &pk, b.enabled, OPERATOR_ACTOR)
            .await?,
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationView {
    pub path: &'static str,
    pub version: &'static str,
    pub name: &'static str,
    pub description: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiGroupView {
    pub group: ApiGroup,
    pub title: &'static str,
    pub description: &'static str,
    /// Service activation status for this project.
    pub activated: bool,
    pub operations: Vec<OperationView>,
}

async fn catalogue(st: &ApiState, pid: &ProjectId) -> ApiResult<Vec<ApiGroupView>> {
    let act = st.registry.api_activation(pid).await?;
    Ok(act
        .into_iter()
        .map(|(g, activated)| ApiGroupView {
            group: g,
            title: g.title(),
            description: g.description(),
            activated,
            operations: OPERATIONS
                .iter()
                .filter(|o| o.group == g)
                .map(|o| OperationView {
                    path: o.path,
                    version: o.version,
                    name: o.name,
                    description: o.description,
                })
                .collect(),
        })
        .collect())
}

#[utoipa::path(get, path = "/projects/{project_id}/api-operations", tag = "api-operations",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The catalogue grouped by feature, with activation status", body = Vec<ApiGroupView>)))]
pub async fn api_operations(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<Vec<ApiGroupView>>> {
    Ok(Json(catalogue(&st, &project_id(&pid)?).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationBody {
    pub activated: bool,
}

#[utoipa::path(put, path = "/projects/{project_id}/api-operations/{group}", tag = "api-operations",
    params(("project_id" = String, Path), ("group" = ApiGroup, Path)), request_body = ActivationBody,
    responses((status = 200, body = Vec<ApiGroupView>), (status = 400, body = ErrorBody)))]
pub async fn set_api_group(
    State(st): State<ApiState>,
    Path((pid, group)): Path<(String, String)>,
    ApiJson(b): ApiJson<ActivationBody>,
) -> ApiResult<Json<Vec<ApiGroupView>>> {
    let pid = project_id(&pid)?;
    let g = group
        .parse::<ApiGroup>()
        .map_err(|e| ApiError::invalid("group", e.to_string()))?;
    st.registry
        .set_api_activation(&pid, g, b.activated, OPERATOR_ACTOR)
        .await?;
    Ok(Json(catalogue(&st, &pid).await?))
}
