//! Backlog operations for the enterprise (issue 14): seek a consumer group to a time,
//! purge it, find a message by id or list a device's messages with every group's state
//! of each, and whether a project keeps acknowledged messages (what seek needs).
//! Seek and purge are audited. The cloud API's `/cloud/sync/message/get` and `…/query`
//! answer with the same views ([`message_view`]).

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use iotsync_backlog::{BacklogError, MessageQuery, MessageState, MessageTrace, SeekOutcome};
use iotsync_core::{ConsumerGroup, MessageId, ProjectId};

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{id, ApiJson, ApiJsonOrEmpty, ApiQuery};
use super::projects::project_id;
use super::{ApiState, OPERATOR_ACTOR};
use crate::delivery::hub::ConsumerInfo;

/// Largest page of a device's messages.
pub const MAX_MESSAGES_PAGE: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeekRequest {
    /// Ms since the epoch: the group receives again every stored message it takes
    /// produced at or after this time; what it owed from before is dropped. Before the
    /// oldest stored message means from the oldest; later than now is refused.
    pub from: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeekView {
    pub group: String,
    /// The time sought to (absent for a purge).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<i64>,
    /// Messages owed again that had been acknowledged or dropped before.
    pub replayed: u64,
    /// Messages the group owed and will not get (counted in `droppedTotal`).
    pub dropped: u64,
    /// Deliveries that were in flight: settled as dropped (or delivered again when the
    /// seek covers them). Their late acknowledgements are ignored.
    pub in_flight: u64,
    /// What the group owes now (dead letters excluded).
    pub owed: u64,
}

fn seek_view(group: &ConsumerGroup, o: SeekOutcome) -> SeekView {
    SeekView {
        group: group.to_string(),
        from: o.from_ms,
        replayed: o.replayed,
        dropped: o.dropped,
        in_flight: o.in_flight,
        owed: o.owed,
    }
}

async fn declared(st: &ApiState, pid: &ProjectId, group: &str) -> ApiResult<ConsumerGroup> {
    st.registry.get_project(pid).await?;
    let g = id::<ConsumerGroup>("group", group)?;
    if !st
        .registry
        .list_groups(pid)
        .await?
        .iter()
        .any(|d| d.name == g)
    {
        return Err(ApiError::not_found(format!(
            "no consumer group {g} in project {pid}"
        )));
    }
    Ok(g)
}

#[utoipa::path(post, path = "/projects/{project_id}/consumer-groups/{name}/seek", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)), request_body = SeekRequest,
    responses((status = 200, description = "The group receives again, in order per device, every stored message it takes produced at or after `from`", body = SeekView),
              (status = 400, description = "invalid_argument: `from` is missing, not an integer or in the future", body = ErrorBody),
              (status = 404, description = "not_found: no such project or group", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn seek(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
    ApiJson(b): ApiJson<SeekRequest>,
) -> ApiResult<Json<SeekView>> {
    let pid = project_id(&pid)?;
    let g = declared(&st, &pid, &name).await?;
    let out = match st.backlog.seek(&pid, &g, b.from).await {
        Err(BacklogError::UnknownProject { .. } | BacklogError::UnknownGroup { .. }) => {
            // Declared but nothing appended yet: nothing to seek over.
            SeekOutcome {
                from_ms: Some(b.from),
                ..Default::default()
            }
        }
        r => r?,
    };
    audit(&st, &pid, "consumer_group.seek", &g, &out).await?;
    Ok(Json(seek_view(&g, out)))
}

/// A purge may be confirmed by the count the operator was shown (the console does).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PurgeRequest {
    /// If given, the purge is refused (409 `purge.count_changed`) when the group no
    /// longer owes exactly this many messages.
    pub expected_stacked: Option<u64>,
}

#[utoipa::path(post, path = "/projects/{project_id}/consumer-groups/{name}/purge", tag = "consumer groups",
    params(("project_id" = String, Path), ("name" = String, Path)), request_body(content = Option<PurgeRequest>),
    responses((status = 200, description = "Everything the group owed is dropped and counted; dead letters stay", body = SeekView),
              (status = 404, description = "not_found: no such project or group", body = ErrorBody),
              (status = 409, description = "purge.count_changed: the group's stack is no longer `expectedStacked`", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn purge(
    State(st): State<ApiState>,
    Path((pid, name)): Path<(String, String)>,
    ApiJsonOrEmpty(b): ApiJsonOrEmpty<PurgeRequest>,
) -> ApiResult<Json<SeekView>> {
    let pid = project_id(&pid)?;
    let g = declared(&st, &pid, &name).await?;
    if let Some(want) = b.expected_stacked {
        let now = match st.backlog.stats(&pid).await {
            Ok(s) => s
                .groups
                .iter()
                .find(|x| x.group == g.as_str())
                .map_or(0, |x| x.stacked),
            Err(BacklogError::UnknownProject { .. }) => 0,
            Err(e) => return Err(e.into()),
        };
        // Growing while the operator confirms is expected (a burst): only refuse when
        // it has fewer than confirmed (someone else purged or a consumer drained it).
        if now < want {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "purge.count_changed",
                format!("the group owes {now} messages now, not {want}; look again before purging"),
            )
            .with_field("expectedStacked"));
        }
    }
    let out = match st.backlog.purge(&pid, &g).await {
        Err(BacklogError::UnknownProject { .. } | BacklogError::UnknownGroup { .. }) => {
            SeekOutcome::default()
        }
        r => r?,
    };
    audit(&st, &pid, "consumer_group.purge", &g, &out).await?;
    Ok(Json(seek_view(&g, out)))
}

async fn audit(
    st: &ApiState,
    pid: &ProjectId,
    action: &str,
    g: &ConsumerGroup,
    out: &SeekOutcome,
) -> ApiResult<()> {
    let details = serde_json::json!({"group": g.as_str(), "outcome": out});
    st.registry
        .record_audit(pid, OPERATOR_ACTOR, action, details)
        .await?;
    Ok(())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupStateView {
    pub group: String,
    /// stacked, inFlight, retryWaiting, deadLettered, acknowledged, dropped (by a purge
    /// or a seek past it) or expired (past retention before it was acknowledged).
    pub state: String,
    /// Deliveries to this group so far (since its last seek, or since the server
    /// started for a message not yet delivered again).
    pub attempts: u32,
    /// In flight: the consumer it is out to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<ConsumerInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_deadline: Option<i64>,
    /// Waiting: when it is delivered again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_delivery_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered_at: Option<i64>,
    /// When the message was last acknowledged (by any group; second resolution; not
    /// known for acknowledgements from before a restart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    pub message_id: String,
    /// Its sequence number in the project (pass as `beforeSeq` to page on).
    pub seq: u64,
    pub topic: String,
    pub generate_time: i64,
    /// The message kind, e.g. `device.property.post`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_key: Option<String>,
    /// The device's iotId (or the ordering key of account messages).
    pub ordering_key: String,
    /// The message's JSON payload (null if it is not JSON).
    #[schema(value_type = Value)]
    pub payload: serde_json::Value,
    /// Past retention: kept only as a trace for a while (its groups show `expired`).
    pub expired: bool,
    /// One entry per group that took it.
    pub groups: Vec<GroupStateView>,
}

/// The view of a message and its states; `live` are the project's connected consumers.
pub fn message_view(t: MessageTrace, live: &[ConsumerInfo]) -> MessageView {
    let m = t.message;
    MessageView {
        message_id: m.envelope.message_id.to_string(),
        seq: t.seq,
        topic: m.envelope.topic,
        generate_time: m.envelope.generate_time,
        kind: m.kind.code().to_owned(),
        product_key: m.product_key.map(|p| p.to_string()),
        ordering_key: m.ordering_key,
        payload: serde_json::from_slice(&m.envelope.payload).unwrap_or(serde_json::Value::Null),
        expired: t.expired,
        groups: t
            .groups
            .into_iter()
            .map(|g| {
                let mut v = GroupStateView {
                    group: g.group.to_string(),
                    state: String::new(),
                    attempts: g.attempts,
                    consumer: None,
                    ack_deadline: None,
                    next_delivery_at: None,
                    dead_lettered_at: None,
                    acknowledged_at: None,
                };
                v.state = match g.state {
                    MessageState::Stacked => "stacked",
                    MessageState::InFlight {
                        consumer,
                        ack_deadline_ms,
                    } => {
                        v.consumer = live.iter().find(|c| c.consumer_id == consumer.0).cloned();
                        v.ack_deadline = Some(ack_deadline_ms);
                        "inFlight"
                    }
                    MessageState::RetryWaiting { due_ms } => {
                        v.next_delivery_at = Some(due_ms);
                        "retryWaiting"
                    }
                    MessageState::DeadLettered { at_ms } => {
                        v.dead_lettered_at = Some(at_ms);
                        "deadLettered"
                    }
                    MessageState::Acknowledged { at_ms } => {
                        v.acknowledged_at = at_ms;
                        "acknowledged"
                    }
                    MessageState::Dropped => "dropped",
                    MessageState::Expired => "expired",
                }
                .to_owned();
                v
            })
            .collect(),
    }
}

/// The message `id` of the project, or `None`.
pub async fn find(
    backlog: &dyn iotsync_backlog::Backlog,
    pid: &ProjectId,
    id: &MessageId,
) -> Result<Option<MessageTrace>, BacklogError> {
    match backlog.find_message(pid, id).await {
        Err(BacklogError::UnknownProject { .. }) => Ok(None),
        r => r,
    }
}

/// A device's messages, newest first.
pub async fn device_page(
    backlog: &dyn iotsync_backlog::Backlog,
    pid: &ProjectId,
    q: &MessageQuery,
) -> Result<Vec<MessageTrace>, BacklogError> {
    match backlog.device_messages(pid, q).await {
        Err(BacklogError::UnknownProject { .. }) => Ok(Vec::new()),
        r => r,
    }
}

#[utoipa::path(get, path = "/projects/{project_id}/messages/{message_id}", tag = "sync",
    params(("project_id" = String, Path), ("message_id" = String, Path)),
    responses((status = 200, description = "The message and its state in every group that took it", body = MessageView),
              (status = 404, description = "not_found: the project holds no such message (never had it, or past retention and its trace time)", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn get_message(
    State(st): State<ApiState>,
    Path((pid, mid)): Path<(String, String)>,
) -> ApiResult<Json<MessageView>> {
    let pid = project_id(&pid)?;
    let mid = id::<MessageId>("messageId", &mid)?;
    st.registry.get_project(&pid).await?;
    match find(st.backlog.as_ref(), &pid, &mid).await? {
        Some(t) => Ok(Json(message_view(t, &st.hub.consumers(&pid)))),
        None => Err(ApiError::not_found(format!(
            "project {pid} holds no message {mid}"
        ))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct MessagesQuery {
    /// The device, by iotId …
    #[param(nullable = false)]
    pub iot_id: Option<String>,
    /// … or by productKey + deviceName.
    #[param(nullable = false)]
    pub product_key: Option<String>,
    #[param(nullable = false)]
    pub device_name: Option<String>,
    /// Produced at or after (ms since the epoch; default: the oldest stored).
    #[param(nullable = false)]
    pub from: Option<i64>,
    /// Produced at or before (ms since the epoch; default: now).
    #[param(nullable = false)]
    pub to: Option<i64>,
    /// The `seq` of the last message of the previous page.
    #[param(nullable = false)]
    pub before_seq: Option<u64>,
    /// 1 to 200 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 200)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    /// Newest first.
    pub messages: Vec<MessageView>,
    /// Pass as `beforeSeq` for the next page (absent: this was the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before_seq: Option<u64>,
}

/// Checks the range and the limit of a device query; the time range defaults to
/// "everything stored".
pub fn query_of(
    ordering_key: String,
    from: Option<i64>,
    to: Option<i64>,
    before_seq: Option<u64>,
    limit: Option<usize>,
    now: i64,
) -> Result<MessageQuery, (&'static str, String)> {
    let limit = limit.unwrap_or(50);
    if limit == 0 || limit > MAX_MESSAGES_PAGE {
        return Err((
            "limit",
            format!("limit must be between 1 and {MAX_MESSAGES_PAGE}"),
        ));
    }
    let from = from.unwrap_or(0);
    let to = to.unwrap_or(now);
    if from > to {
        return Err(("from", format!("from ({from}) is later than to ({to})")));
    }
    Ok(MessageQuery {
        ordering_key,
        from_ms: from,
        to_ms: to,
        before_seq,
        limit,
    })
}

pub fn page_of(list: Vec<MessageTrace>, limit: usize, live: &[ConsumerInfo]) -> MessagePage {
    let next_before_seq = (list.len() == limit)
        .then(|| list.last().map(|t| t.seq))
        .flatten();
    MessagePage {
        messages: list.into_iter().map(|t| message_view(t, live)).collect(),
        next_before_seq,
    }
}

#[utoipa::path(get, path = "/projects/{project_id}/messages", tag = "sync",
    params(("project_id" = String, Path), MessagesQuery),
    responses((status = 200, description = "The device's stored messages in the time range, newest first, each with its state in every group", body = MessagePage),
              (status = 400, description = "invalid_argument: no device named, or a bad range or limit", body = ErrorBody),
              (status = 404, description = "not_found: no such project or device", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn list_messages(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> ApiResult<Json<MessagePage>> {
    let pid = project_id(&pid)?;
    st.registry.get_project(&pid).await?;
    let device = match (&q.iot_id, &q.product_key, &q.device_name) {
        (Some(iot), None, None) => st.registry.get_device(&pid, &id("iotId", iot)?).await?,
        (None, Some(pk), Some(dn)) => {
            st.registry
                .device_by_name(&pid, &id("productKey", pk)?, &id("deviceName", dn)?)
                .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "iotId",
                "name the device by iotId, or by productKey and deviceName (not both)",
            ))
        }
    };
    let query = query_of(
        iotsync_core::device_ordering_key(&device.iot_id),
        q.from,
        q.to,
        q.before_seq,
        q.limit,
        st.clock.now_ms(),
    )
    .map_err(|(field, msg)| ApiError::invalid(field, msg))?;
    let list = device_page(st.backlog.as_ref(), &pid, &query).await?;
    Ok(Json(page_of(list, query.limit, &st.hub.consumers(&pid))))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BacklogSettings {
    /// Acknowledged messages stay stored until retention, so a group can be sought back
    /// to a time (on by default; off frees their disk at once). See docs/benchmarks.md
    /// for the bytes per message it costs.
    pub keep_acknowledged: bool,
}

#[utoipa::path(get, path = "/projects/{project_id}/sync/backlog-settings", tag = "sync",
    params(("project_id" = String, Path)),
    responses((status = 200, description = "The project's backlog settings", body = BacklogSettings),
              (status = 404, description = "not_found: no such project", body = ErrorBody)))]
pub async fn get_settings(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
) -> ApiResult<Json<BacklogSettings>> {
    let pid = project_id(&pid)?;
    st.registry.get_project(&pid).await?;
    let keep = match st.backlog.stats(&pid).await {
        Ok(s) => s.keep_acknowledged,
        Err(BacklogError::UnknownProject { .. }) => st.keep_acknowledged_default,
        Err(e) => return Err(e.into()),
    };
    Ok(Json(BacklogSettings {
        keep_acknowledged: keep,
    }))
}

#[utoipa::path(put, path = "/projects/{project_id}/sync/backlog-settings", tag = "sync",
    params(("project_id" = String, Path)), request_body = BacklogSettings,
    responses((status = 200, description = "Applied (turning keepAcknowledged off frees what no group owes at once)", body = BacklogSettings),
              (status = 400, body = ErrorBody),
              (status = 404, description = "not_found: no such project", body = ErrorBody),
              (status = 503, description = "unavailable: the server is shutting down", body = ErrorBody)))]
pub async fn put_settings(
    State(st): State<ApiState>,
    Path(pid): Path<String>,
    ApiJson(b): ApiJson<BacklogSettings>,
) -> ApiResult<Json<BacklogSettings>> {
    let pid = project_id(&pid)?;
    st.registry.get_project(&pid).await?;
    st.backlog
        .set_keep_acknowledged(&pid, b.keep_acknowledged)
        .await?;
    st.registry
        .record_audit(
            &pid,
            OPERATOR_ACTOR,
            "backlog.settings",
            serde_json::json!({"keepAcknowledged": b.keep_acknowledged}),
        )
        .await?;
    Ok(Json(b))
}
