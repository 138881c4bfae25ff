//! Projects: create (the secret shown once), list/search, get, rotate, delete, audit,
//! and the operator's import of existing configurations.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use iotsync_core::ProjectId;
use iotsync_store::{AuditEntry, Page, PageRequest, Project, ProjectImport, ProjectWithSecret};

use super::error::{ApiResult, ErrorBody};
use super::extract::{id, ApiJson, ApiQuery};
use super::{ApiState, OPERATOR_ACTOR};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// 1 to 64 characters.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// 1-based page number.
    #[param(nullable = false, minimum = 1)]
    pub page_no: Option<u32>,
    /// 1 to 200 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub page_size: Option<u32>,
    /// Matches name, projectId or appKey (case-insensitive substring).
    #[param(nullable = false)]
    pub search: Option<String>,
}

pub fn page_of(page_no: Option<u32>, page_size: Option<u32>) -> ApiResult<PageRequest> {
    let d = PageRequest::default();
    Ok(PageRequest::new(
        page_no.unwrap_or(d.page),
        page_size.unwrap_or(d.page_size),
    )?)
}

pub fn project_id(s: &str) -> ApiResult<ProjectId> {
    id("projectId", s)
}

#[utoipa::path(post, path = "/projects", operation_id = "createProject", request_body = CreateProject, tag = "projects",
    responses((status = 201, description = "Created; appSecret is shown only here", body = ProjectWithSecret),
              (status = 400, body = ErrorBody)))]
pub async fn create(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<ProjectWithSecret>)> {
    let p = st
        .registry
        .create_project(&body.name, OPERATOR_ACTOR)
        .await?;
    Ok((StatusCode::CREATED, Json(p)))
}

#[utoipa::path(get, path = "/projects", operation_id = "listProjects", params(ListQuery), tag = "projects",
    responses((status = 200, body = Page<Project>)))]
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Page<Project>>> {
    let page = page_of(q.page_no, q.page_size)?;
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    Ok(Json(st.registry.list_projects(search, page).await?))
}

#[utoipa::path(get, path = "/projects/{project_id}", operation_id = "getProject", tag = "projects",
    params(("project_id" = String, Path)),
    responses((status = 200, body = Project), (status = 404, body = ErrorBody)))]
pub async fn get(State(st): State<ApiState>, Path(pid): Path<String>) -> ApiResult<Json<Project>> {
    Ok(Json(st.registry.get_project(&project_id(&pid)?).await?))
}

#[utoipa::path(delete, path = "/projects/{project_id}", operation_id = "deleteProject", tag = "projects",
    params(("project_id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(State(st): State<ApiState>, Path(pid): Path<String>) -> ApiResult<StatusCode> {
    st.registry
        .delete_project(&project_id(&pid)?, OPERATOR_ACTOR)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/projects/{project_id}/rotate-secret", tag = "projects",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The new appSecret, shown only here", body = ProjectWithSecret)))]
pub async fn rotate_secret(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<ProjectWithSecret>> {
    let pid = project_id(&pid)?;
    let rotated = st.registry.rotate_secret(&pid, OPERATOR_ACTOR).await?;
    st.sync_listener.on_secret_rotated(&pid).await;
    Ok(Json(rotated))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct PageQuery {
    #[param(nullable = false, minimum = 1)]
    pub page_no: Option<u32>,
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub page_size: Option<u32>,
}

#[utoipa::path(get, path = "/projects/{project_id}/audit", tag = "projects",
    params(("project_id" = String, Path), PageQuery),
    responses((status = 200, description = "Newest first", body = Page<AuditEntry>)))]
pub async fn audit(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<AuditEntry>>> {
    let page = page_of(q.page_no, q.page_size)?;
    Ok(Json(st.registry.audit_log(&project_id(&pid)?, page).await?))
}

#[utoipa::path(post, path = "/admin/import", request_body = ProjectImport, tag = "admin",
    responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<ProjectImport>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    let p = st.registry.import_project(&body, OPERATOR_ACTOR).await?;
    // An imported project may come with sync on: give it its default group, retention
    // and pause state at once, as enabling does.
    let settings = st.registry.sync_settings(&p.project_id).await?;
    if settings.enabled {
        let method = settings
            .method()
            .unwrap_or(iotsync_core::sync_rules::SyncMethod::Http2);
        st.sync_listener
            .on_transition(
                &p.project_id,
                &settings,
                iotsync_core::sync_rules::Transition::Enabled { method },
            )
            .await;
    }
    Ok((StatusCode::CREATED, Json(p)))
}
