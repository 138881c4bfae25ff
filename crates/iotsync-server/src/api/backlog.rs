//! Device reports on a device's behalf, the backlog figures, connected consumers and
//! dead letters.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use iotsync_core::payload::EventType;
use iotsync_core::{IotId, MessageId};

use super::error::{ApiResult, ErrorBody};
use super::extract::{id, ApiJson, ApiQuery};
use super::projects::project_id;
use super::ApiState;
use crate::delivery::hub::ConsumerInfo;
use crate::delivery::rates::Rates;
use crate::ingest::ReportOutcome;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PropertiesReport {
    /// `{identifier: value}` or `{identifier: {value, time}}`.
    #[schema(schema_with = items_schema)]
    pub items: serde_json::Map<String, serde_json::Value>,
}

/// `items` as the ingest checks it: 1 to `MAX_ITEMS` properties named by identifiers
/// (`payload::validate_identifier`), each any JSON value.
fn items_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z_][A-Za-z0-9_]{0,49}$")),
        ))
        .min_properties(Some(1))
        .max_properties(Some(crate::ingest::MAX_ITEMS))
        .description(Some(
            "`{identifier: value}` or `{identifier: {value, time}}`.",
        ))
        .into()
}

#[utoipa::path(post, path = "/projects/{project_id}/devices/{iot_id}/properties", tag = "device data",
    params(("project_id" = String, Path), ("iot_id" = String, Path)), request_body = PropertiesReport,
    responses((status = 200, description = "Durable in the backlog (or not produced: sync or the product is off)", body = ReportOutcome),
              (status = 400, body = ErrorBody),
              (status = 403, description = "device.disabled: enable the device before it reports", body = ErrorBody),
              (status = 507, body = ErrorBody), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn report_properties(
    State(st): State<ApiState>,
    Path((pid, iot)): Path<(String, String)>,
    ApiJson(b): ApiJson<PropertiesReport>,
) -> ApiResult<Json<ReportOutcome>> {
    let pid = project_id(&pid)?;
    let iot = id::<IotId>("iotId", &iot)?;
    Ok(Json(
        st.ingest.report_properties(&pid, &iot, &b.items).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The event's output parameters.
    #[schema(value_type = Object)]
    pub value: serde_json::Value,
    /// info (default), alert or error.
    #[serde(rename = "type")]
    #[schema(value_type = Option<String>)]
    pub event_type: Option<EventType>,
    /// Display name (default: the identifier).
    #[schema(min_length = 1, max_length = 64)]
    pub name: Option<String>,
}

#[utoipa::path(post, path = "/projects/{project_id}/devices/{iot_id}/events/{identifier}", tag = "device data",
    params(("project_id" = String, Path), ("iot_id" = String, Path), ("identifier" = String, Path)), request_body = EventBody,
    responses((status = 200, description = "Durable in the backlog (or not produced: sync or the product is off)", body = ReportOutcome),
              (status = 400, body = ErrorBody),
              (status = 403, description = "device.disabled: enable the device before it reports", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn report_event(
    State(st): State<ApiState>,
    Path((pid, iot, ident)): Path<(String, String, String)>,
    ApiJson(b): ApiJson<EventBody>,
) -> ApiResult<Json<ReportOutcome>> {
    let pid = project_id(&pid)?;
    let iot = id::<IotId>("iotId", &iot)?;
    if let Some(n) = &b.name {
        if n.is_empty() || n.chars().count() > 64 {
            return Err(super::error::ApiError::invalid(
                "name",
                "name must be 1 to 64 characters",
            ));
        }
    }
    let out = st
        .ingest
        .report_event(
            &pid,
            &iot,
            &ident,
            b.event_type.unwrap_or(EventType::Info),
            b.name.as_deref(),
            &b.value,
        )
        .await?;
    Ok(Json(out))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupFigures {
    pub group: String,
    /// Messages the group still has to acknowledge.
    pub stacked: u64,
    pub oldest_stacked_age_ms: Option<i64>,
    pub in_flight: u64,
    pub retry_waiting: u64,
    pub dead_letters: u64,
    /// Connected consumers of this group.
    pub consumers: u64,
    pub push_per_sec: f64,
    pub ack_per_sec: f64,
    pub appended_total: u64,
    pub acked_total: u64,
    pub redelivered_total: u64,
    pub expired_total: u64,
    pub rejected_total: u64,
    /// Messages the group owed and dropped by a purge or a seek.
    pub dropped_total: u64,
    /// Messages owed again by a seek.
    pub replayed_total: u64,
    /// Over one of its alert thresholds at the last evaluation (docs/alerts.md).
    pub alerting: bool,
    /// Since when it is alerting (ms since the epoch).
    pub alerting_since: Option<i64>,
    /// Its alert thresholds (each null: not set).
    pub thresholds: iotsync_store::AlertThresholds,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncFigures {
    pub project_id: String,
    /// Sync disabled: nothing is delivered; the stack stays until retention.
    pub paused: bool,
    pub retention_ms: i64,
    pub stored_messages: u64,
    /// Messages no group of the project takes (routing at append): never stored.
    pub discarded_no_group: u64,
    /// (message, group) pairs a group still owed when it was deleted.
    pub dropped_by_group_delete: u64,
    pub groups: Vec<GroupFigures>,
}

pub async fn figures(st: &ApiState, pid: &iotsync_core::ProjectId) -> ApiResult<SyncFigures> {
    // A project that never enabled sync has nothing in the backlog.
    st.registry.get_project(pid).await?;
    let stats = match st.backlog.stats(pid).await {
        Ok(s) => s,
        Err(iotsync_backlog::BacklogError::UnknownProject { .. }) => {
            iotsync_backlog::ProjectStats {
                project: pid.to_string(),
                ..Default::default()
            }
        }
        Err(e) => return Err(e.into()),
    };
    let rates = st.rates.observe(st.clock.now_ms(), &stats);
    let live = st.hub.consumers(pid);
    let thresholds: std::collections::HashMap<String, iotsync_store::AlertThresholds> = st
        .registry
        .project_alerts(pid)
        .await?
        .into_iter()
        .map(|a| (a.group.to_string(), a.thresholds))
        .collect();
    Ok(SyncFigures {
        project_id: pid.to_string(),
        paused: stats.paused,
        retention_ms: stats.retention_ms,
        stored_messages: stats.stored_messages,
        discarded_no_group: stats.discarded_no_group,
        dropped_by_group_delete: stats.dropped_by_group_delete,
        groups: stats
            .groups
            .into_iter()
            .map(|g| {
                let r = rates.get(&g.group).copied().unwrap_or(Rates::default());
                let since = st.alerts.alerting_since(pid, &g.group);
                GroupFigures {
                    alerting: since.is_some(),
                    alerting_since: since,
                    thresholds: thresholds.get(&g.group).copied().unwrap_or_default(),
                    // On JetStream the backlog counts every node's consumers; this
                    // node's live list is the floor (the embedded engine's figure).
                    consumers: (live.iter().filter(|c| c.group == g.group).count() as u64)
                        .max(g.consumers),
                    stacked: g.stacked,
                    oldest_stacked_age_ms: g.oldest_stacked_age_ms,
                    in_flight: g.in_flight,
                    retry_waiting: g.retry_waiting,
                    dead_letters: g.dead_letters,
                    push_per_sec: r.push_per_sec,
                    ack_per_sec: r.ack_per_sec,
                    appended_total: g.appended_total,
                    acked_total: g.acked_total,
                    redelivered_total: g.redelivered_total,
                    expired_total: g.expired_total,
                    rejected_total: g.rejected_total,
                    dropped_total: g.dropped_total,
                    replayed_total: g.replayed_total,
                    group: g.group,
                }
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/projects/{project_id}/sync/stats", tag = "sync",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "Backlog figures per consumer group (SPEC §5)", body = SyncFigures), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn stats(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<SyncFigures>> {
    let pid = project_id(&pid)?;
    Ok(Json(figures(&st, &pid).await?))
}

#[utoipa::path(get, path = "/projects/{project_id}/sync/consumers", tag = "sync",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "Connected consumers", body = Vec<ConsumerInfo>)))]
pub async fn consumers(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<Vec<ConsumerInfo>>> {
    let pid = project_id(&pid)?;
    st.registry.get_project(&pid).await?;
    Ok(Json(st.hub.consumers(&pid)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterQuery {
    /// The `seq` of the last item of the previous page.
    #[param(nullable = false)]
    pub after_seq: Option<u64>,
    /// 1 to 200 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    pub seq: u64,
    pub group: String,
    pub message_id: String,
    pub topic: String,
    pub generate_time: i64,
    pub attempts: u32,
    pub dead_at: i64,
    /// The message's JSON payload (null if it is not JSON).
    #[schema(value_type = Value)]
    pub payload: serde_json::Value,
}

#[utoipa::path(get, path = "/projects/{project_id}/sync/dead-letters", tag = "sync",
    params(("project_id" = String, Path), DeadLetterQuery),
    responses((status = 200, description = "Oldest first, one entry per group a message is dead in", body = Vec<DeadLetterView>), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn dead_letters(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<DeadLetterQuery>,
) -> ApiResult<Json<Vec<DeadLetterView>>> {
    let pid = project_id(&pid)?;
    st.registry.get_project(&pid).await?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 200 {
        return Err(super::error::ApiError::invalid(
            "limit",
            "limit must be between 1 and 200",
        ));
    }
    let list = match st.backlog.dead_letters(&pid, q.after_seq, limit).await {
        Ok(l) => l,
        Err(iotsync_backlog::BacklogError::UnknownProject { .. }) => vec![],
        Err(e) => return Err(e.into()),
    };
    Ok(Json(
        list.into_iter()
            .map(|d| DeadLetterView {
                seq: d.seq,
                group: d.group.to_string(),
                message_id: d.message.envelope.message_id.to_string(),
                topic: d.message.envelope.topic.clone(),
                generate_time: d.message.envelope.generate_time,
                attempts: d.attempts,
                dead_at: d.dead_at_ms,
                payload: serde_json::from_slice(&d.message.envelope.payload)
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterAction {
    pub message_id: String,
    /// In how many groups it was a dead letter.
    pub groups: usize,
}

#[utoipa::path(post, path = "/projects/{project_id}/sync/dead-letters/{message_id}/retry", tag = "sync",
    params(("project_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, description = "Back in the stack of every group it was dead in", body = DeadLetterAction),
              (status = 404, description = "not_found: no such project or dead letter", body = ErrorBody), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn retry_dead_letter(
    State(st): State<ApiState>,
    Path((pid, mid)): Path<(String, String)>,
) -> ApiResult<Json<DeadLetterAction>> {
    let pid = project_id(&pid)?;
    let mid = id::<MessageId>("messageId", &mid)?;
    st.registry.get_project(&pid).await?;
    let n = st.backlog.retry_dead_letter(&pid, &mid).await?;
    Ok(Json(DeadLetterAction {
        message_id: mid.to_string(),
        groups: n,
    }))
}

#[utoipa::path(delete, path = "/projects/{project_id}/sync/dead-letters/{message_id}", tag = "sync",
    params(("project_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 204, description = "Dropped from every group it was dead in"),
              (status = 404, description = "not_found: no such project or dead letter", body = ErrorBody), (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn drop_dead_letter(
    State(st): State<ApiState>,
    Path((pid, mid)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let pid = project_id(&pid)?;
    let mid = id::<MessageId>("messageId", &mid)?;
    st.registry.get_project(&pid).await?;
    st.backlog.drop_dead_letter(&pid, &mid).await?;
    Ok(StatusCode::NO_CONTENT)
}
