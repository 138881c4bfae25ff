//! Ingest: the first stage of the pipeline (ingest → delivery → channels).
//!
//! - This module: device data reports (from the REST API, the MQTT gateway and the cloud
//!   API) become the SPEC §4 messages, durable in the backlog before the report is
//!   acknowledged.
//! - [`outbox_relay`]: registry changes (lifecycle, accounts, bindings, status) wrote
//!   their message to the registry's outbox in the same transaction; the relay moves
//!   them into the backlog and drives the backlog's timers.
//!
//! Ingest does not know delivery exists: it appends, and the backlog routes each message
//! to the groups whose filter takes it.

pub mod outbox_relay;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use std::collections::HashMap;
use std::sync::Mutex;

use iotsync_core::sync_rules::SyncSettings;
use iotsync_store::Device;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use iotsync_backlog::{Backlog, BacklogError};
use iotsync_core::payload::{self, EventReport, EventType, PropertyItem};
use iotsync_core::{IotId, MessageId, ProjectId, SharedClock, SyncMessage};
use iotsync_store::{DeviceStatus, PropertyValue, Registry, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the device is disabled")]
    DeviceDisabled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backlog(#[from] BacklogError),
}

/// What a report produced: the message id, or nothing when sync (or the product's
/// switch) is off.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportOutcome {
    #[schema(value_type = Option<String>)]
    pub message_id: Option<MessageId>,
    pub produced: bool,
}

pub struct Ingest {
    registry: Arc<dyn Registry>,
    backlog: Arc<dyn Backlog>,
    clock: SharedClock,
    props: mpsc::Sender<PropertyOp>,
    /// The property writer, awaited by [`Ingest::drain`] at shutdown.
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    devices: Mutex<HashMap<DeviceKey, Cached<Arc<DeviceFacts>>>>,
    settings: Mutex<HashMap<ProjectId, Cached<Arc<SyncSettings>>>>,
}

type DeviceKey = (ProjectId, IotId);

/// What a report needs to know of its device.
struct DeviceFacts {
    device: Device,
    /// The device's product is switched on for sync.
    product_sync: bool,
}

/// A looked-up value, valid while the registry's change epoch is the same and for at
/// most [`CACHE_TTL_MS`]. Changes made on this node bump the epoch when they commit;
/// changes made by other nodes of a scale-out bump it when their notification arrives
/// (the PostgreSQL change feed, ADR 0012, which also bumps it after a reconnect). The
/// time limit is the backstop for a notification that never came.
struct Cached<T> {
    value: T,
    epoch: u64,
    at_ms: i64,
}

/// Re-reading every device's facts more often cost 3 % of the ingest's CPU under a
/// 1 000-device flood (two registry queries per device per period; issue 16).
const CACHE_TTL_MS: i64 = 30_000;
/// Entries kept at most; past it the cache starts over (a flood of made-up ids must not
/// grow memory).
const CACHE_MAX: usize = 100_000;

fn fresh<T: Clone>(c: Option<&Cached<T>>, epoch: u64, now: i64) -> Option<T> {
    c.filter(|c| c.epoch == epoch && now - c.at_ms < CACHE_TTL_MS && now >= c.at_ms)
        .map(|c| c.value.clone())
}

/// Most properties one report may carry.
pub const MAX_ITEMS: usize = 256;

/// Reads one reported property: `value`, or `{value, time}` as the Alink format allows.
fn item(id: &str, v: &Value, now: i64) -> Result<PropertyItem, IngestError> {
    if let Value::Object(m) = v {
        if m.len() == 2 && m.contains_key("value") {
            if let Some(t) = m.get("time") {
                let time = t.as_i64().ok_or_else(|| IngestError::Invalid {
                    field: format!("items.{id}.time"),
                    reason: "must be milliseconds since the epoch".into(),
                })?;
                return Ok(PropertyItem {
                    value: m["value"].clone(),
                    time,
                });
            }
        }
    }
    Ok(PropertyItem {
        value: v.clone(),
        time: now,
    })
}

/// Work for the property writer: last values + history of one report, or a barrier that
/// answers once everything queued before it is written.
enum PropertyOp {
    Record(ProjectId, IotId, Vec<PropertyValue>),
    Barrier(oneshot::Sender<()>),
    /// Clean shutdown: write everything queued before it, then stop.
    Stop,
}

/// Reports waiting for the property writer, at most (backpressure beyond).
const PROPERTY_QUEUE: usize = 16384;
/// Reports written per registry transaction, at most.
const PROPERTY_BATCH: usize = 8192;
/// How long a batch waits for more reports after its first (a SIGKILL may lose the last
/// values and history of reports answered within it; their messages are in the backlog).
const PROPERTY_LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes reported last values and history behind the report, many reports per registry
/// transaction. The report's message is what must be durable before the device is
/// answered, and it is (in the backlog); last values are derived data, so they need not
/// cost one registry fsync per report. Readers call [`Ingest::settle_properties`] first,
/// so they see every report answered before their call.
async fn property_writer(registry: Arc<dyn Registry>, mut rx: mpsc::Receiver<PropertyOp>) {
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::new();
        let mut barriers = Vec::new();
        // A batch collects for up to PROPERTY_LINGER after its first report, so one
        // device's reports share a history chunk (ADR 0014); a reader's barrier, a stop
        // or a full batch writes at once.
        let deadline = tokio::time::Instant::now() + PROPERTY_LINGER;
        let mut next = Some(first);
        'collect: loop {
            while let Some(op) = next.take() {
                match op {
                    PropertyOp::Record(p, i, v) => batch.push((p, i, v)),
                    PropertyOp::Barrier(b) => barriers.push(b),
                    PropertyOp::Stop => stop = true,
                }
                if stop || !barriers.is_empty() || batch.len() >= PROPERTY_BATCH {
                    break 'collect;
                }
                next = rx.try_recv().ok();
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(op)) => next = Some(op),
                Ok(None) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if let Err(e) = registry.record_properties_batch(&batch).await {
            tracing::error!(error = %e, reports = batch.len(), "writing reported property values failed");
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

impl Ingest {
    pub fn new(registry: Arc<dyn Registry>, backlog: Arc<dyn Backlog>, clock: SharedClock) -> Self {
        let (props, rx) = mpsc::channel(PROPERTY_QUEUE);
        let writer = tokio::spawn(property_writer(registry.clone(), rx));
        Self {
            registry,
            backlog,
            clock,
            props,
            writer: Mutex::new(Some(writer)),
            devices: Mutex::default(),
            settings: Mutex::default(),
        }
    }

    /// The device and its product's switch, from the cache while nothing changed.
    async fn device_facts(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
    ) -> Result<Arc<DeviceFacts>, IngestError> {
        let epoch = self.registry.change_epoch();
        let now = self.clock.now_ms();
        let key = (project.clone(), iot_id.clone());
        if let Some(f) = fresh(lock(&self.devices).get(&key), epoch, now) {
            return Ok(f);
        }
        let device = self.registry.get_device(project, iot_id).await?;
        let product = self
            .registry
            .get_product(project, &device.product_key)
            .await?;
        let facts = Arc::new(DeviceFacts {
            device,
            product_sync: product.sync_enabled,
        });
        let mut map = lock(&self.devices);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(
            key,
            Cached {
                value: facts.clone(),
                epoch,
                at_ms: now,
            },
        );
        Ok(facts)
    }

    async fn settings(&self, project: &ProjectId) -> Result<Arc<SyncSettings>, IngestError> {
        let epoch = self.registry.change_epoch();
        let now = self.clock.now_ms();
        if let Some(s) = fresh(lock(&self.settings).get(project), epoch, now) {
            return Ok(s);
        }
        let s = Arc::new(self.registry.sync_settings(project).await?);
        let mut map = lock(&self.settings);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert(
            project.clone(),
            Cached {
                value: s.clone(),
                epoch,
                at_ms: now,
            },
        );
        Ok(s)
    }

    /// Clean shutdown: writes every property report queued so far to the registry and
    /// stops the writer (reports after this answer `Closed`). Waits at most `timeout`.
    pub async fn drain(&self, timeout: std::time::Duration) {
        let Some(writer) = lock(&self.writer).take() else {
            return;
        };
        let stopped = async {
            if self.props.send(PropertyOp::Stop).await.is_ok() {
                let _ = writer.await;
            }
        };
        if tokio::time::timeout(timeout, stopped).await.is_err() {
            tracing::warn!("the property writer did not drain within the time-out");
        }
    }

    /// Returns once every property report answered before this call is in the registry
    /// (last values and history), for readers that must see them.
    pub async fn settle_properties(&self) {
        let (tx, rx) = oneshot::channel();
        if self.props.send(PropertyOp::Barrier(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn produce(
        &self,
        m: SyncMessage,
        product_sync: bool,
        project: &ProjectId,
    ) -> Result<ReportOutcome, IngestError> {
        let settings = self.settings(project).await?;
        if !settings.produces_kind(m.kind, Some(product_sync)) {
            return Ok(ReportOutcome {
                message_id: None,
                produced: false,
            });
        }
        let id = m.envelope.message_id.clone();
        self.backlog.append(vec![m]).await?;
        Ok(ReportOutcome {
            message_id: Some(id),
            produced: true,
        })
    }

    pub async fn report_properties(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        items: &serde_json::Map<String, Value>,
    ) -> Result<ReportOutcome, IngestError> {
        if items.is_empty() || items.len() > MAX_ITEMS {
            return Err(IngestError::Invalid {
                field: "items".into(),
                reason: format!(
                    "must hold 1 to {MAX_ITEMS} properties (got {})",
                    items.len()
                ),
            });
        }
        let now = self.clock.now_ms();
        let mut parsed = BTreeMap::new();
        for (id, v) in items {
            payload::validate_identifier(id).map_err(|reason| IngestError::Invalid {
                field: format!("items.{id}"),
                reason: format!("property identifier {reason}"),
            })?;
            parsed.insert(id.clone(), item(id, v, now)?);
        }
        let facts = self.device_facts(project, iot_id).await?;
        let device = &facts.device;
        if device.status == DeviceStatus::Disabled {
            return Err(IngestError::DeviceDisabled);
        }
        let values: Vec<PropertyValue> = parsed
            .iter()
            .map(|(k, v)| PropertyValue {
                identifier: k.clone(),
                value: v.value.clone(),
                time: v.time,
            })
            .collect();
        self.props
            .send(PropertyOp::Record(project.clone(), iot_id.clone(), values))
            .await
            .map_err(|_| IngestError::Backlog(iotsync_backlog::BacklogError::Closed))?;
        let m = payload::property_post(&device.as_ref(), &parsed, now);
        self.produce(m, facts.product_sync, project).await
    }

    pub async fn report_event(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        identifier: &str,
        event_type: EventType,
        name: Option<&str>,
        value: &Value,
    ) -> Result<ReportOutcome, IngestError> {
        self.report_event_at(project, iot_id, identifier, event_type, name, value, None)
            .await
    }

    /// An event with the device's own time (Alink `params.time`), or now.
    #[allow(clippy::too_many_arguments)]
    pub async fn report_event_at(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        identifier: &str,
        event_type: EventType,
        name: Option<&str>,
        value: &Value,
        time_ms: Option<i64>,
    ) -> Result<ReportOutcome, IngestError> {
        payload::validate_identifier(identifier).map_err(|reason| IngestError::Invalid {
            field: "identifier".into(),
            reason: format!("event identifier {reason}"),
        })?;
        if identifier == "property" {
            return Err(IngestError::Invalid {
                field: "identifier".into(),
                reason: "\"property\" is reserved for property reports".into(),
            });
        }
        if !value.is_object() {
            return Err(IngestError::Invalid {
                field: "value".into(),
                reason: "must be a JSON object of output parameters".into(),
            });
        }
        let now = self.clock.now_ms();
        let facts = self.device_facts(project, iot_id).await?;
        let device = &facts.device;
        if device.status == DeviceStatus::Disabled {
            return Err(IngestError::DeviceDisabled);
        }
        let m = payload::event_post(
            &device.as_ref(),
            &EventReport {
                identifier,
                name: name.unwrap_or(identifier),
                event_type,
                time_ms: time_ms.unwrap_or(now),
                value,
            },
            now,
        );
        self.produce(m, facts.product_sync, project).await
    }

    /// The outcome of a property set or service call sent to a device: the control
    /// record of SPEC §4, durable in the backlog when this returns.
    pub async fn report_downlink_reply(
        &self,
        project: &ProjectId,
        iot_id: &IotId,
        reply: &payload::DownlinkReply<'_>,
    ) -> Result<ReportOutcome, IngestError> {
        let now = self.clock.now_ms();
        let facts = self.device_facts(project, iot_id).await?;
        let m = payload::downlink_reply(&facts.device.as_ref(), reply, now);
        self.produce(m, facts.product_sync, project).await
    }
}
