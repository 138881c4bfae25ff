//! Declared consumer groups (issue 12): `POST/GET/DELETE …/consumer-groups`. A group
//! collects every message its filter takes from the moment the POST answers 201,
//! whether or not a consumer is connected. A consumer connecting with an undeclared
//! group name still works: that first connect declares it (taking everything).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use iotsync_core::message::DataClass;
use iotsync_core::subscription::{kinds_for_topics, user_group_name, SubscriptionError};
use iotsync_core::{ConsumerGroup, GroupFilterDoc, ProductKey, ProjectId};
use iotsync_store::{DeclaredGroup, GroupRetryKind};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{id, ApiJson};
use super::projects::project_id;
use super::{ApiState, OPERATOR_ACTOR};
use crate::delivery::groups::GroupError;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateConsumerGroup {
    /// 1 to 64 letters, digits, '-' and '_'; names starting with '_' are reserved.
    #[schema(pattern = "^[A-Za-z0-9-][A-Za-z0-9_-]{0,63}$")]
    pub name: String,
    /// Take only these data classes: "device", "user". Leave out to take both.
    #[schema(value_type = Option<Vec<String>>)]
    pub data_classes: Option<Vec<DataClass>>,
    /// Take only these topics: templates of SPEC §4 such as
    /// "/${pk}/${dn}/thing/event/property/post", or message kinds such as
    /// "device.property.post". Leave out to take every topic.
    pub topics: Option<Vec<String>>,
    /// Take only messages of these products (account messages have none). Leave out to
    /// take every product.
    pub products: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerGroupView {
    pub name: String,
    /// Data classes taken (absent: both).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_classes: Option<Vec<String>>,
    /// Message kinds taken (absent: every kind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
    /// Products taken (absent: every product).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub products: Option<Vec<String>>,
    /// "backoff" (SPEC §5) or "legacy_http" (SPEC §8 schedule, then dead letter).
    pub retry: String,
    /// The platform's own group (e.g. `_legacy_http`): not deleted through the API.
    pub internal: bool,
    /// The project's default group (named after the appKey).
    pub default: bool,
    pub created_at: i64,
    /// Messages the group still has to acknowledge, if the backlog has the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stacked: Option<u64>,
    /// Connected consumers of the group.
    pub consumers: u64,
}

fn view(
    g: &DeclaredGroup,
    app_key: &str,
    stats: Option<&iotsync_backlog::GroupStats>,
) -> ConsumerGroupView {
    ConsumerGroupView {
        name: g.name.to_string(),
        data_classes: g.filter.data_classes.as_ref().map(|v| {
            v.iter()
                .map(|c| match c {
                    DataClass::Device => "device".to_owned(),
                    DataClass::User => "user".to_owned(),
                })
                .collect()
        }),
        kinds: g.filter.kinds.clone(),
        products: g
            .filter
            .products
            .as_ref()
            .map(|v| v.iter().map(|p| p.to_string()).collect()),
        retry: match g.retry {
            GroupRetryKind::Backoff => "backoff".into(),
            GroupRetryKind::LegacyHttp => "legacy_http".into(),
        },
        internal: g.internal,
        default: g.name.as_str() == app_key,
        created_at: g.created_at,
        stacked: stats.map(|s| s.stacked),
        consumers: stats.map(|s| s.consumers).unwrap_or(0),
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        ApiError::invalid(&e.field, format!("{}: {}", e.field, e.reason))
    }
}

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::Store(s) => s.into(),
            GroupError::Backlog(b) => b.into(),
            GroupError::BadFilter { .. } => {
                tracing::error!(error = %e, "consumer group");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log",
                )
            }
        }
    }
}

/// Checks a request and turns it into the stored filter shape.
fn filter_of(b: &CreateConsumerGroup) -> ApiResult<GroupFilterDoc> {
    if let Some(classes) = &b.data_classes {
        if classes.is_empty() {
            return Err(ApiError::invalid(
                "dataClasses",
                "dataClasses must name at least one of \"device\", \"user\" (leave it out to take both)",
            ));
        }
    }
    let kinds = match &b.topics {
        None => None,
        Some(t) => Some(
            kinds_for_topics("topics", t)?
                .into_iter()
                .map(|k| k.code().to_owned())
                .collect(),
        ),
    };
    let products =
        match &b.products {
            None => None,
            Some(v) if v.is_empty() => return Err(ApiError::invalid(
                "products",
                "products must name at least one productKey (leave it out to take every product)",
            )),
            Some(v) => Some(
                v.iter()
                    .enumerate()
                    .map(|(i, p)| id::<ProductKey>(&format!("products[{i}]"), p))
                    .collect::<ApiResult<Vec<_>>>()?,
            ),
        };
    let mut classes = b.data_classes.clone();
    if let Some(c) = &mut classes {
        c.dedup();
    }
    Ok(GroupFilterDoc {
        data_classes: classes,
        kinds,
        products,
    })
}

async fn views(
    st: &ApiState,
    pid: &ProjectId,
    groups: &[DeclaredGroup],
) -> ApiResult<Vec<ConsumerGroupView>> {
    let project = st.registry.get_project(pid).await?;
    let stats = st.backlog.stats(pid).await.ok();
    Ok(groups
        .iter()
        .map(|g| {
            let s = stats
                .as_ref()
                .and_then(|s| s.groups.iter().find(|x| x.group == g.name.as_str()));
            view(g, project.app_key.as_str(), s)
        })
        .collect())
}

fn group_name(field: &str, s: &str) -> ApiResult<ConsumerGroup> {
    id(field, s)
}

#[utoipa::path(post, path = "/projects/{project_id}/consumer-groups", operation_id = "createConsumerGroup", tag = "consumer groups",
    params(("project_id" = String, Path)), request_body = CreateConsumerGroup,
    responses((status = 201, description = "Declared: it collects what its filter takes from now on, connected or not", body = ConsumerGroupView),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "A group of that name exists, or the project has its most groups", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn create(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<CreateConsumerGroup>,
) -> ApiResult<(StatusCode, Json<ConsumerGroupView>)> {
    let pid = project_id(&pid)?;
    let name = user_group_name("name", &b.name)?;
    let filter = filter_of(&b)?;
    let project = st.registry.get_project(&pid).await?;
    if name.as_str() == project.app_key.as_str() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "consumer_group.default",
            "the default group (named after the appKey) is declared by the platform when data synchronization is enabled",
        )
        .with_field("name"));
    }
    let g = st
        .groups
        .declare(&pid, &name, &filter, OPERATOR_ACTOR)
        .await?;
    let mut v = views(&st, &pid, std::slice::from_ref(&g)).await?;
    let v = v
        .pop()
        .ok_or_else(|| ApiError::not_found("consumer group vanished"))?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[utoipa::path(get, path = "/projects/{project_id}/consumer-groups", operation_id = "listConsumerGroups", tag = "consumer groups",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The project's declared groups by name", body = Vec<ConsumerGroupView>),
              (status = 404, body = ErrorBody)))]
pub async fn list(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<Vec<ConsumerGroupView>>> {
    let pid = project_id(&pid)?;
    let groups = st.groups.list(&pid).await?;
    Ok(Json(views(&st, &pid, &groups).await?))
}

#[utoipa::path(get, path = "/projects/{project_id}/consumer-groups/{name}", operation_id = "getConsumerGroup", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = ConsumerGroupView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
) -> ApiResult<Json<ConsumerGroupView>> {
    let pid = project_id(&pid)?;
    let name = group_name("name", &name)?;
    let groups = st.groups.list(&pid).await?;
    let g = groups
        .into_iter()
        .find(|g| g.name == name)
        .ok_or_else(|| ApiError::not_found(format!("consumer group {name} not found")))?;
    let mut v = views(&st, &pid, std::slice::from_ref(&g)).await?;
    let v = v
        .pop()
        .ok_or_else(|| ApiError::not_found("consumer group vanished"))?;
    Ok(Json(v))
}

#[utoipa::path(delete, path = "/projects/{project_id}/consumer-groups/{name}", operation_id = "deleteConsumerGroup", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)),
    responses((status = 204, description = "Deleted; what it still owed is dropped and counted (droppedByGroupDelete in the sync figures)"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn delete(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let pid = project_id(&pid)?;
    let name = user_group_name("name", &name)?;
    st.groups.delete(&pid, &name, OPERATOR_ACTOR).await?;
    Ok(StatusCode::NO_CONTENT)
}
