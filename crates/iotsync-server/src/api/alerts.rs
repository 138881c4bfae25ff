//! Per-group alert thresholds (issue 14): `PUT/GET …/consumer-groups/{name}/alerts`.
//! The evaluator (`delivery::alerts`) checks them every `alerts.evaluate_every`; a PUT
//! has it check at once.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;

use iotsync_core::ConsumerGroup;
use iotsync_store::{AlertThresholds, GroupAlerts};

use super::error::{ApiResult, ErrorBody};
use super::extract::{id, ApiJson};
use super::projects::project_id;
use super::{ApiState, OPERATOR_ACTOR};

/// A group's thresholds (null: not set) and its alert state now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupAlertsView {
    pub group: String,
    /// Alerting while more messages than this are stacked.
    pub stacked_max: Option<u64>,
    /// Alerting while the oldest stacked message is older than this (ms).
    pub oldest_age_max_ms: Option<u64>,
    /// Alerting while the group has more dead letters than this.
    pub dead_letters_max: Option<u64>,
    /// When the thresholds were last set (null: never, or cleared).
    pub updated_at: Option<i64>,
    /// Over a threshold at the last evaluation.
    pub alerting: bool,
    /// Since when it is alerting (ms since the epoch).
    pub alerting_since: Option<i64>,
}

fn view(st: &ApiState, a: &GroupAlerts) -> GroupAlertsView {
    let since = st.alerts.alerting_since(&a.project_id, a.group.as_str());
    GroupAlertsView {
        group: a.group.to_string(),
        stacked_max: a.thresholds.stacked_max,
        oldest_age_max_ms: a.thresholds.oldest_age_max_ms,
        dead_letters_max: a.thresholds.dead_letters_max,
        updated_at: a.updated_at,
        alerting: since.is_some(),
        alerting_since: since,
    }
}

#[utoipa::path(get, path = "/projects/{project_id}/consumer-groups/{name}/alerts", operation_id = "getConsumerGroupAlerts", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "The group's alert thresholds and state", body = GroupAlertsView),
              (status = 404, description = "not_found: no such project or consumer group", body = ErrorBody)))]
pub async fn get(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
) -> ApiResult<Json<GroupAlertsView>> {
    let pid = project_id(&pid)?;
    let name = id::<ConsumerGroup>("name", &name)?;
    let a = st.registry.group_alerts(&pid, &name).await?;
    Ok(Json(view(&st, &a)))
}

#[utoipa::path(put, path = "/projects/{project_id}/consumer-groups/{name}/alerts", operation_id = "setConsumerGroupAlerts", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)), request_body = AlertThresholds,
    responses((status = 200, description = "Replaced whole: a threshold left out or null is not set; none set, the group never alerts. Audited as consumer_group.alerts", body = GroupAlertsView),
              (status = 400, description = "invalid_argument: a threshold is not a whole number from 0 to 9223372036854775807, or the body has an unknown field; field names it", body = ErrorBody),
              (status = 404, description = "not_found: no such project or consumer group", body = ErrorBody)))]
pub async fn put(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
    ApiJson(t): ApiJson<AlertThresholds>,
) -> ApiResult<Json<GroupAlertsView>> {
    let pid = project_id(&pid)?;
    let name = id::<ConsumerGroup>("name", &name)?;
    let a = st
        .registry
        .set_group_alerts(&pid, &name, &t, OPERATOR_ACTOR)
        .await?;
    st.alerts.kick();
    Ok(Json(view(&st, &a)))
}
