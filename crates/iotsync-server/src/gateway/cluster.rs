//! Devices across a cluster (issue 13, ADR 0015): the node that holds a device's MQTT
//! session answers on the NATS subject `iotsync.dev.<iotId>` (core NATS, no JetStream),
//! so another node can take the session over (a device reconnecting elsewhere), reach the
//! device for a downlink (property set, service invoke) and ask whether any node holds it.
//! With no holder the request gets NATS's "no responders" at once: the device is offline
//! on every node (9201).
//!
//! Requests carry the operation in the header `Iotsync-Op`:
//! - `takeover`: the holder ends its session the way a local take-over does (no offline
//!   record: the new node writes offline, then online), waits until the session's loop
//!   has stopped (so its last PUBACKed reports are durable first), then answers `held`.
//! - `ping`: answers `held` while the session lives.
//! - `downlink`: headers `Iotsync-Topic`, `Iotsync-Request-Id`, `Iotsync-Timeout-Ms`, the
//!   body is the publish's payload; the answer is the device's reply as JSON, or
//!   `{"error":"offline"|"timeout"}`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use iotsync_core::IotId;

use super::sessions::{DeviceKey, DeviceReply, DeviceSessions, DownlinkError, DownlinkPublish};

const OP: &str = "Iotsync-Op";
const TOPIC: &str = "Iotsync-Topic";
const REQUEST_ID: &str = "Iotsync-Request-Id";
const TIMEOUT_MS: &str = "Iotsync-Timeout-Ms";
const FROM: &str = "Iotsync-From";

/// How long a take-over or a ping waits for the holder's answer. The holder itself waits
/// up to the gateway's take-over wait (5 s) for its session to stop.
const CONTROL_WAIT: Duration = Duration::from_secs(7);
/// Room over a downlink's own time-out for the hop between nodes.
const HOP_MARGIN: Duration = Duration::from_secs(2);

/// This node's link to the other nodes' device sessions.
pub struct ClusterBus {
    client: async_nats::Client,
    node: String,
}

fn subject(iot_id: &IotId) -> String {
    // IotIds are letters, digits, '-' and '_': always one NATS token.
    format!("iotsync.dev.{iot_id}")
}

impl ClusterBus {
    /// Connects to the cluster's NATS servers (`nats://h1:4222,nats://h2:4222`).
    pub async fn connect(urls: &str, node: &str) -> anyhow::Result<Self> {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("iotsync-devices-{node}"))
            .connect(addrs)
            .await?;
        Ok(Self {
            client,
            node: node.to_owned(),
        })
    }

    fn headers(&self, op: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(OP, op);
        h.insert(FROM, self.node.as_str());
        h
    }

    async fn ask(&self, iot_id: &IotId, h: HeaderMap, body: Bytes, wait: Duration) -> Asked {
        let req = async_nats::Request::new()
            .headers(h)
            .payload(body)
            .timeout(Some(wait));
        match self.client.send_request(subject(iot_id), req).await {
            Ok(m) => Asked::Answer(serde_json::from_slice(&m.payload).unwrap_or(Value::Null)),
            Err(e) => match e.kind() {
                async_nats::RequestErrorKind::NoResponders => Asked::Nobody,
                async_nats::RequestErrorKind::TimedOut => Asked::TimedOut,
                _ => {
                    tracing::warn!(%iot_id, error = %e, "asking the cluster for a device");
                    Asked::TimedOut
                }
            },
        }
    }

    /// Ends the device's session on whichever other node holds it and waits until it has
    /// stopped; true when one did.
    pub async fn take_over(&self, iot_id: &IotId) -> bool {
        let a = self
            .ask(iot_id, self.headers("takeover"), Bytes::new(), CONTROL_WAIT)
            .await;
        match a {
            Asked::Answer(v) => v["held"] == json!(true),
            Asked::Nobody => false,
            Asked::TimedOut => {
                tracing::warn!(%iot_id, "no answer from the node holding the device; taking over regardless");
                true
            }
        }
    }

    /// Whether another node holds the device's session.
    pub async fn holds(&self, iot_id: &IotId) -> bool {
        matches!(
            self.ask(iot_id, self.headers("ping"), Bytes::new(), CONTROL_WAIT).await,
            Asked::Answer(v) if v["held"] == json!(true)
        )
    }

    /// A downlink through the node that holds the device.
    pub async fn request(
        &self,
        iot_id: &IotId,
        request_id: &str,
        publish: DownlinkPublish,
        timeout: Duration,
    ) -> Result<DeviceReply, DownlinkError> {
        let mut h = self.headers("downlink");
        h.insert(TOPIC, publish.topic.as_str());
        h.insert(REQUEST_ID, request_id);
        h.insert(TIMEOUT_MS, timeout.as_millis().to_string().as_str());
        match self
            .ask(
                iot_id,
                h,
                Bytes::from(publish.payload),
                timeout + HOP_MARGIN,
            )
            .await
        {
            Asked::Nobody => Err(DownlinkError::Offline),
            Asked::TimedOut => Err(DownlinkError::Timeout),
            Asked::Answer(v) => match v["error"].as_str() {
                Some("offline") => Err(DownlinkError::Offline),
                Some(_) => Err(DownlinkError::Timeout),
                None => Ok(DeviceReply {
                    code: v["code"].as_i64().unwrap_or(0),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                    data: v.get("data").cloned().unwrap_or_else(|| json!({})),
                }),
            },
        }
    }

    /// Answers the cluster for this node's session `conn_id` of the device until the
    /// returned task is aborted (the session's end). Subscribed (and the subscription
    /// flushed to the server) before it returns, so the device is reachable before its
    /// CONNACK.
    pub async fn serve(
        self: &Arc<Self>,
        sessions: Arc<DeviceSessions>,
        key: DeviceKey,
        iot_id: IotId,
        conn_id: u64,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let mut sub = self.client.subscribe(subject(&iot_id)).await?;
        self.client.flush().await?;
        let bus = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let bus = bus.clone();
                let sessions = sessions.clone();
                let key = key.clone();
                // A downlink waits for the device: answer each request on its own task.
                tokio::spawn(async move { bus.answer(m, &sessions, &key, conn_id).await });
            }
        }))
    }

    async fn answer(&self, m: Message, sessions: &DeviceSessions, key: &DeviceKey, conn_id: u64) {
        let Some(reply_to) = m.reply.clone() else {
            return;
        };
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let body = match header(OP).as_deref() {
            Some("takeover") => {
                let from = header(FROM).unwrap_or_default();
                let held = sessions.end_for_takeover(key, conn_id).await;
                tracing::info!(iot_id = ?key.1, to = %from, held, "device session taken over by another node");
                json!({ "held": held })
            }
            Some("ping") => json!({ "held": sessions.holds_locally(key, conn_id) }),
            Some("downlink") => {
                let topic = header(TOPIC).unwrap_or_default();
                let rid = header(REQUEST_ID).unwrap_or_default();
                let timeout = header(TIMEOUT_MS)
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_secs(10))
                    .min(Duration::from_secs(300));
                let publish = DownlinkPublish {
                    topic,
                    payload: m.payload.to_vec(),
                };
                match sessions.request_local(key, &rid, publish, timeout).await {
                    Ok(r) => json!({"code": r.code, "message": r.message, "data": r.data}),
                    Err(DownlinkError::Offline) => json!({"error": "offline"}),
                    Err(DownlinkError::Timeout) => json!({"error": "timeout"}),
                }
            }
            other => json!({ "error": format!("unknown operation {other:?}") }),
        };
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        if let Err(e) = self.client.publish(reply_to, bytes).await {
            tracing::debug!(error = %e, "answering the cluster");
        }
    }
}

enum Asked {
    Answer(Value),
    Nobody,
    TimedOut,
}
