//! The operations of the catalogue (SPEC §9), each scoped to the calling project.

use std::time::Duration;

use serde_json::{json, Map, Value};

use iotsync_core::payload::{self, DownlinkReply};
use iotsync_core::{IdentityId, IotId, ProjectId};
use iotsync_store::{BindingFilter, Device, PageRequest, TimelineQuery};

use super::{code, token_hash, CloudError, CloudResult, CloudState};
use crate::gateway::session::DeviceSession;
use crate::gateway::{DeviceReply, DownlinkError, DownlinkPublish};

/// Lifetime of a cloud token.
pub const TOKEN_TTL_MS: i64 = 2 * 3600 * 1000;
/// How long a downlink waits for the device's `_reply`.
pub const DOWNLINK_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn dispatch(
    st: &CloudState,
    project: &ProjectId,
    path: &str,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    match path {
        "/cloud/token" => token(st, project, p).await,
        "/cloud/thing/info/get" => {
            let d = device(st, project, p).await?;
            Ok(json!({
                "iotId": d.iot_id, "productKey": d.product_key, "deviceName": d.device_name,
                "deviceType": d.device_type, "status": d.status, "statusTime": d.status_time,
                "gmtCreate": d.created_at,
            }))
        }
        "/cloud/thing/status/get" => {
            let d = device(st, project, p).await?;
            Ok(json!({"status": d.status, "time": d.status_time}))
        }
        "/cloud/thing/properties/get" => {
            let d = device(st, project, p).await?;
            st.ingest.settle_properties().await;
            let props = st.registry.device_properties(project, &d.iot_id).await?;
            Ok(Value::Array(
                props
                    .into_iter()
                    .map(|v| json!({"identifier": v.identifier, "value": v.value, "time": v.time}))
                    .collect(),
            ))
        }
        "/cloud/thing/properties/set" => properties_set(st, project, p).await,
        "/cloud/thing/service/invoke" => service_invoke(st, project, p).await,
        "/cloud/thing/property/timeline/get" => timeline(st, project, p).await,
        "/cloud/thing/productList/get" => {
            let page = page(p)?;
            let r = st.registry.list_products(project, page).await?;
            let data: Vec<Value> = r
                .items
                .into_iter()
                .map(|x| {
                    json!({"productKey": x.product_key, "productName": x.name,
                           "deviceType": x.device_type, "gmtCreate": x.created_at})
                })
                .collect();
            Ok(
                json!({"total": r.total, "pageNo": r.page_no, "pageSize": r.page_size, "data": data}),
            )
        }
        "/cloud/account/queryIdentityByPage" => {
            let page = page(p)?;
            let r = st.registry.list_users(project, page).await?;
            let data: Vec<Value> = r
                .items
                .into_iter()
                .map(|u| {
                    json!({"identityId": u.identity_id, "loginName": u.login_name,
                           "nickName": u.nick_name, "phone": u.phone, "email": u.email,
                           "gmtCreate": u.gmt_create, "gmtModified": u.gmt_modified})
                })
                .collect();
            Ok(
                json!({"total": r.total, "pageNo": r.page_no, "pageSize": r.page_size, "data": data}),
            )
        }
        "/cloud/device/queryByUser" => {
            let identity = identity(p)?;
            st.registry.get_user(project, &identity).await?;
            let page = page(p)?;
            let r = st
                .registry
                .list_bindings(
                    project,
                    BindingFilter {
                        identity: Some(&identity),
                        iot_id: None,
                    },
                    page,
                )
                .await?;
            let data: Vec<Value> = r
                .items
                .into_iter()
                .map(|b| {
                    json!({"iotId": b.iot_id, "productKey": b.product_key,
                           "deviceName": b.device_name, "owned": b.owned,
                           "gmtCreate": b.created_at})
                })
                .collect();
            Ok(
                json!({"total": r.total, "pageNo": r.page_no, "pageSize": r.page_size, "data": data}),
            )
        }
        "/cloud/user/device/unbind" => {
            let identity = identity(p)?;
            let d = device(st, project, p).await?;
            st.registry.unbind(project, &identity, &d.iot_id).await?;
            st.dispatcher.kick();
            Ok(json!({}))
        }
        "/cloud/sync/stats/get" => stats(st, project).await,
        "/cloud/sync/message/get" => message_get(st, project, p).await,
        "/cloud/sync/message/query" => message_query(st, project, p).await,
        other => Err(CloudError::new(
            code::NOT_FOUND,
            format!("operation {other} is not served"),
        )),
    }
}

async fn token(st: &CloudState, project: &ProjectId, p: &Map<String, Value>) -> CloudResult<Value> {
    match p.get("grantType").and_then(Value::as_str) {
        Some("project") => {}
        _ => return Err(CloudError::bad("params.grantType must be \"project\"")),
    }
    let res = p
        .get("res")
        .and_then(Value::as_str)
        .ok_or_else(|| CloudError::bad("params.res must be the projectId"))?;
    if res != project.as_str() {
        return Err(CloudError::new(
            code::FORBIDDEN,
            "params.res is not the project of this appKey",
        ));
    }
    let token = format!(
        "ct{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let now = st.clock.now_ms();
    st.registry
        .put_cloud_token(project, &token_hash(&token), now, now + TOKEN_TTL_MS)
        .await?;
    Ok(json!({"cloudToken": token, "expireIn": TOKEN_TTL_MS}))
}

fn str_param<'a>(p: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    p.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The device named by `iotId`, or by `productKey` + `deviceName`, in this project.
async fn device(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Device> {
    if let Some(iot) = str_param(p, "iotId") {
        let iot: IotId = iot
            .parse()
            .map_err(|e: iotsync_core::IdError| CloudError::bad(format!("iotId: {}", e.reason)))?;
        return Ok(st.registry.get_device(project, &iot).await?);
    }
    match (str_param(p, "productKey"), str_param(p, "deviceName")) {
        (Some(pk), Some(dn)) => {
            let pk = pk.parse().map_err(|e: iotsync_core::IdError| {
                CloudError::bad(format!("productKey: {}", e.reason))
            })?;
            let dn = dn.parse().map_err(|e: iotsync_core::IdError| {
                CloudError::bad(format!("deviceName: {}", e.reason))
            })?;
            Ok(st.registry.device_by_name(project, &pk, &dn).await?)
        }
        _ => Err(CloudError::bad(
            "name the device by params.iotId or by params.productKey + params.deviceName",
        )),
    }
}

fn identity(p: &Map<String, Value>) -> CloudResult<IdentityId> {
    str_param(p, "identityId")
        .ok_or_else(|| CloudError::bad("params.identityId is required"))?
        .parse()
        .map_err(|e: iotsync_core::IdError| CloudError::bad(format!("identityId: {}", e.reason)))
}

fn int_param(p: &Map<String, Value>, name: &str) -> CloudResult<Option<i64>> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| CloudError::bad(format!("params.{name} must be an integer"))),
    }
}

fn page(p: &Map<String, Value>) -> CloudResult<PageRequest> {
    let no = int_param(p, "pageNo")?.unwrap_or(1);
    let size = int_param(p, "pageSize")?.unwrap_or(20);
    let no = u32::try_from(no).map_err(|_| CloudError::bad("params.pageNo must be 1 or more"))?;
    let size = u32::try_from(size)
        .map_err(|_| CloudError::bad("params.pageSize must be between 1 and 200"))?;
    Ok(PageRequest::new(no, size)?)
}

async fn timeline(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    let d = device(st, project, p).await?;
    let identifier = str_param(p, "identifier")
        .ok_or_else(|| CloudError::bad("params.identifier is required"))?;
    payload::validate_identifier(identifier)
        .map_err(|r| CloudError::bad(format!("params.identifier {r}")))?;
    let start = int_param(p, "start")?.unwrap_or(0);
    let end = int_param(p, "end")?.unwrap_or(i64::MAX);
    if start > end {
        return Err(CloudError::bad("params.start must not be after params.end"));
    }
    let limit = int_param(p, "limit")?.unwrap_or(20);
    if !(1..=i64::from(iotsync_store::PROPERTY_TIMELINE_MAX_LIMIT)).contains(&limit) {
        return Err(CloudError::bad(format!(
            "params.limit must be between 1 and {}",
            iotsync_store::PROPERTY_TIMELINE_MAX_LIMIT
        )));
    }
    let asc = p.get("asc").and_then(Value::as_bool).unwrap_or(false);
    st.ingest.settle_properties().await;
    let values = st
        .registry
        .property_timeline(
            project,
            &d.iot_id,
            &TimelineQuery {
                identifier: identifier.to_owned(),
                start,
                end,
                limit: limit as u32,
                newest_first: !asc,
            },
        )
        .await?;
    Ok(Value::Array(
        values
            .into_iter()
            .map(|v| json!({"value": v.value, "time": v.time}))
            .collect(),
    ))
}

fn request_id() -> String {
    // Alink ids are decimal strings; 53 bits stay exact in JavaScript peers too.
    (rand::random::<u64>() >> 11).to_string()
}

/// Appends the control record of a downlink's outcome.
async fn control_record(
    st: &CloudState,
    project: &ProjectId,
    iot_id: &IotId,
    request_id: &str,
    topic: &str,
    reply: &DeviceReply,
) {
    let r = st
        .ingest
        .report_downlink_reply(
            project,
            iot_id,
            &DownlinkReply {
                request_id,
                code: reply.code,
                message: &reply.message,
                topic,
                data: &reply.data,
            },
        )
        .await;
    if let Err(e) = r {
        tracing::error!(%iot_id, request_id, error = %e, "control record not stored");
    }
}

fn failure_reply(e: DownlinkError) -> DeviceReply {
    DeviceReply {
        code: match e {
            DownlinkError::Offline => code::DEVICE_OFFLINE,
            DownlinkError::Timeout => code::DEVICE_TIMEOUT,
        },
        message: e.to_string(),
        data: json!({}),
    }
}

async fn properties_set(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    let d = device(st, project, p).await?;
    let items = match p.get("items") {
        Some(Value::Object(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(CloudError::bad(
                "params.items must be a non-empty object {identifier: value}",
            ))
        }
    };
    for k in items.keys() {
        payload::validate_identifier(k)
            .map_err(|r| CloudError::bad(format!("params.items.{k}: identifier {r}")))?;
    }
    let session = DeviceSession::new(d.product_key.clone(), d.device_name.clone());
    let topic = session.property_set_topic();
    let rid = request_id();
    if !st
        .sessions
        .reachable(&d.product_key, &d.device_name, &d.iot_id)
        .await
    {
        let reply = failure_reply(DownlinkError::Offline);
        control_record(st, project, &d.iot_id, &rid, &topic, &reply).await;
        return Err(CloudError::new(
            code::DEVICE_OFFLINE,
            "the device is offline",
        ));
    }
    let body = json!({"id": rid, "version": "1.0", "params": items,
                      "method": "thing.service.property.set"});
    let publish = DownlinkPublish {
        topic: topic.clone(),
        payload: serde_json::to_vec(&body).unwrap_or_default(),
    };
    // The answer carries the requestId; the device's reply (or the time-out) becomes
    // the control record.
    let st2 = st.clone();
    let project2 = project.clone();
    let rid2 = rid.clone();
    tokio::spawn(async move {
        let reply = st2
            .sessions
            .request(
                &d.product_key,
                &d.device_name,
                &d.iot_id,
                &rid2,
                publish,
                DOWNLINK_TIMEOUT,
            )
            .await
            .unwrap_or_else(failure_reply);
        control_record(&st2, &project2, &d.iot_id, &rid2, &topic, &reply).await;
    });
    Ok(json!({"requestId": rid}))
}

async fn service_invoke(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    let d = device(st, project, p).await?;
    let identifier = str_param(p, "identifier")
        .ok_or_else(|| CloudError::bad("params.identifier is required"))?;
    payload::validate_identifier(identifier)
        .map_err(|r| CloudError::bad(format!("params.identifier {r}")))?;
    if identifier == "property" {
        return Err(CloudError::bad(
            "params.identifier \"property\" is reserved: use /cloud/thing/properties/set",
        ));
    }
    let args = match p.get("args") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(_) => return Err(CloudError::bad("params.args must be an object")),
    };
    let session = DeviceSession::new(d.product_key.clone(), d.device_name.clone());
    let topic = session.service_topic(identifier);
    let rid = request_id();
    let body = json!({"id": rid, "version": "1.0", "params": args,
                      "method": format!("thing.service.{identifier}")});
    let r = st
        .sessions
        .request(
            &d.product_key,
            &d.device_name,
            &d.iot_id,
            &rid,
            DownlinkPublish {
                topic: topic.clone(),
                payload: serde_json::to_vec(&body).unwrap_or_default(),
            },
            DOWNLINK_TIMEOUT,
        )
        .await;
    let reply = r.clone().unwrap_or_else(failure_reply);
    control_record(st, project, &d.iot_id, &rid, &topic, &reply).await;
    match r {
        Ok(reply) => Ok(json!({"requestId": rid, "code": reply.code,
                               "message": reply.message, "output": reply.data})),
        Err(e) => Err(CloudError::new(failure_reply(e).code, e.to_string())),
    }
}

async fn stats(st: &CloudState, project: &ProjectId) -> CloudResult<Value> {
    let s = match st.backlog.stats(project).await {
        Ok(s) => s,
        Err(iotsync_backlog::BacklogError::UnknownProject { .. }) => {
            iotsync_backlog::ProjectStats {
                project: project.to_string(),
                ..Default::default()
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "backlog figures");
            return Err(CloudError::new(code::INTERNAL, "internal error"));
        }
    };
    let live = st.hub.consumers(project);
    let groups: Vec<Value> = s
        .groups
        .iter()
        .map(|g| {
            json!({
                "group": g.group,
                "stacked": g.stacked,
                "oldestStackedAgeMs": g.oldest_stacked_age_ms,
                "inFlight": g.in_flight,
                "retryWaiting": g.retry_waiting,
                "deadLetters": g.dead_letters,
                "consumers": live.iter().filter(|c| c.group == g.group).count(),
                "appendedTotal": g.appended_total,
                "ackedTotal": g.acked_total,
                "redeliveredTotal": g.redelivered_total,
                "expiredTotal": g.expired_total,
                "rejectedTotal": g.rejected_total,
            })
        })
        .collect();
    Ok(json!({
        "projectId": project,
        "paused": s.paused,
        "retentionMs": s.retention_ms,
        "storedMessages": s.stored_messages,
        "groups": groups,
    }))
}

fn backlog_failure(e: iotsync_backlog::BacklogError) -> CloudError {
    tracing::error!(error = %e, "backlog lookup");
    CloudError::new(code::INTERNAL, "internal error")
}

/// A message of the calling project by id, with its state in every group (another
/// project's id finds nothing: 404).
async fn message_get(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    let mid: iotsync_core::MessageId = str_param(p, "messageId")
        .ok_or_else(|| CloudError::bad("params.messageId is required"))?
        .parse()
        .map_err(|e: iotsync_core::IdError| CloudError::bad(format!("messageId: {}", e.reason)))?;
    let found = crate::api::operations::find(st.backlog.as_ref(), project, &mid)
        .await
        .map_err(backlog_failure)?;
    match found {
        Some(t) => {
            let v = crate::api::operations::message_view(t, &st.hub.consumers(project));
            serde_json::to_value(v).map_err(|_| CloudError::new(code::INTERNAL, "internal error"))
        }
        None => Err(CloudError::new(
            code::NOT_FOUND,
            format!("no message {mid} in this project (never produced, or past retention)"),
        )),
    }
}

/// A device's messages in a time range, newest first, paged by `beforeSeq`.
async fn message_query(
    st: &CloudState,
    project: &ProjectId,
    p: &Map<String, Value>,
) -> CloudResult<Value> {
    let d = device(st, project, p).await?;
    let before = match int_param(p, "beforeSeq")? {
        Some(v) if v < 0 => return Err(CloudError::bad("params.beforeSeq must be >= 0")),
        v => v.map(|v| v as u64),
    };
    let limit = match int_param(p, "limit")? {
        Some(v) if v < 1 => return Err(CloudError::bad("params.limit must be between 1 and 200")),
        v => v.map(|v| v as usize),
    };
    let q = crate::api::operations::query_of(
        iotsync_core::device_ordering_key(&d.iot_id),
        int_param(p, "from")?,
        int_param(p, "to")?,
        before,
        limit,
        st.clock.now_ms(),
    )
    .map_err(|(field, msg)| CloudError::bad(format!("params.{field}: {msg}")))?;
    let list = crate::api::operations::device_page(st.backlog.as_ref(), project, &q)
        .await
        .map_err(backlog_failure)?;
    let page = crate::api::operations::page_of(list, q.limit, &st.hub.consumers(project));
    serde_json::to_value(page).map_err(|_| CloudError::new(code::INTERNAL, "internal error"))
}
