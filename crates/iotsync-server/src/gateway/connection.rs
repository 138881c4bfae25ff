//! One device connection: authenticate the CONNECT, record online, then a thin `select!`
//! loop over socket reads, downlink publishes, take-over, the keep-alive deadline and
//! shutdown. Generic over `AsyncRead + AsyncWrite`, so TCP, TLS and in-memory pipes all
//! run the same code.
//!
//! Uplink is handled inline and in order: the loop awaits `Ingest` (durable in the
//! backlog when it returns) before it queues PUBACK and the `_reply`, so a PUBACK always
//! follows durability.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use iotsync_core::payload::EventType;
use iotsync_core::sign::device::{self, DeviceClientId, DeviceUsername};
use iotsync_core::{IotId, ProjectId, SharedClock};
use iotsync_store::{DeviceStatus, Registry, StoreError};

use super::codec::{self, connack, Connect, Packet, Publish};
use super::session::{self, code, AlinkError, DeviceSession, Uplink};
use super::sessions::{DeviceKey, DeviceSessions, SessionEntry};
use crate::ingest::outbox_relay::DispatcherHandle;
use crate::ingest::{Ingest, IngestError};

/// How long the registry's view of a connected device (disabled? deleted?) may be stale.
const RECHECK_EVERY: Duration = Duration::from_secs(30);
/// Downlink publishes queued per connection.
const DOWNLINK_QUEUE: usize = 16;

/// What every connection shares.
pub struct Gateway {
    pub registry: Arc<dyn Registry>,
    pub ingest: Arc<Ingest>,
    pub dispatcher: DispatcherHandle,
    pub clock: SharedClock,
    pub sessions: Arc<DeviceSessions>,
    pub max_packet: usize,
    pub connect_timeout: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// The password's timestamp window (`auth.device_timestamp_*`).
    pub timestamps: device::TimestampPolicy,
    /// Wrong passwords slow down their address (`throttles.device`).
    pub throttles: Arc<crate::throttle::Throttles>,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    ClientDisconnect,
    SocketClosed,
    KeepAliveExpired,
    TakenOver,
    Shutdown,
    Refused(String),
    Internal(String),
}

enum Step {
    Continue,
    Close(End),
}

struct Authed {
    project: ProjectId,
    iot_id: IotId,
    key: DeviceKey,
}

async fn read_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<Packet>, String> {
    loop {
        match codec::decode(buf, max) {
            Ok(Some((p, n))) => {
                buf.drain(..n);
                return Ok(Some(p));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl Gateway {
    async fn authenticate(&self, c: &Connect, peer: &str) -> Result<(Authed, u16), u8> {
        if c.protocol_name != "MQTT" || c.protocol_level != 4 {
            return Err(connack::UNACCEPTABLE_PROTOCOL);
        }
        let client_id: DeviceClientId = c
            .client_id
            .parse()
            .map_err(|_| connack::IDENTIFIER_REJECTED)?;
        let user = c.username.as_deref().unwrap_or("");
        let username: DeviceUsername = user
            .parse()
            .map_err(|_| connack::BAD_USERNAME_OR_PASSWORD)?;
        // Throttled before anything is looked up: a waiting address learns nothing.
        let ip = peer
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let throttle = &self.throttles.device;
        if let Err(wait) = throttle.check(ip, user) {
            tracing::info!(%peer, retry_after_s = wait.seconds(), "device sign-in throttled");
            return Err(connack::NOT_AUTHORIZED);
        }
        let refused = |why: &str| {
            throttle.note_failure(ip, user);
            tracing::debug!(%peer, why, "device password refused");
            connack::BAD_USERNAME_OR_PASSWORD
        };
        if let Err(e) = device::check_timestamp(&client_id, self.timestamps, self.clock.now_ms()) {
            return Err(refused(&e.to_string()));
        }
        let password = c
            .password
            .as_deref()
            .and_then(|p| std::str::from_utf8(p).ok())
            .ok_or_else(|| refused("no password"))?;
        let d = match self
            .registry
            .device_credentials(&username.product_key, &username.device_name)
            .await
        {
            Ok(d) => d,
            Err(StoreError::NotFound { .. }) => return Err(refused("unknown device")),
            Err(e) => {
                tracing::error!(error = %e, "device credentials lookup failed");
                return Err(connack::SERVER_UNAVAILABLE);
            }
        };
        device::verify(&client_id, &username, password, &d.device_secret)
            .map_err(|_| refused("wrong password"))?;
        throttle.note_success(ip, user);
        if d.device.status == DeviceStatus::Disabled {
            return Err(connack::NOT_AUTHORIZED);
        }
        Ok((
            Authed {
                project: d.device.project_id.clone(),
                iot_id: d.device.iot_id.clone(),
                key: (username.product_key, username.device_name),
            },
            c.keep_alive_s,
        ))
    }
}

/// Serves one accepted connection to its end.
pub async fn serve<S>(gw: Arc<Gateway>, stream: S, peer: String)
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = Vec::with_capacity(512);
    let connect = match tokio::time::timeout(
        gw.connect_timeout,
        read_packet(&mut rd, &mut buf, gw.max_packet),
    )
    .await
    {
        Ok(Ok(Some(Packet::Connect(c)))) => c,
        Ok(Ok(Some(_))) => {
            tracing::debug!(%peer, "first packet is not CONNECT");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "unreadable CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let (authed, keep_alive_s) = match gw.authenticate(&connect, &peer).await {
        Ok(a) => a,
        Err(code) => {
            tracing::info!(%peer, code, client_id = %connect.client_id, "device refused");
            let mut out = Vec::new();
            codec::encode(
                &Packet::ConnAck {
                    session_present: false,
                    code,
                },
                &mut out,
            );
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            return;
        }
    };

    let conn_id = gw.sessions.next_conn_id();
    let (dl_tx, dl_rx) = mpsc::channel(DOWNLINK_QUEUE);
    let kick = Arc::new(Notify::new());
    let (fin_tx, fin_rx) = watch::channel(false);
    {
        let _status = gw.sessions.status_lock(&authed.key).lock().await;
        let old = gw.sessions.install(
            authed.key.clone(),
            SessionEntry {
                conn_id,
                iot_id: authed.iot_id.clone(),
                downlink: dl_tx,
                kick: kick.clone(),
                finished: fin_rx,
            },
        );
        let replaced = match (old, gw.sessions.cluster()) {
            (Some(old), _) => {
                old.end_and_wait().await;
                true
            }
            // Another node may hold it: it ends its session (its last reports durable
            // first) before this one records anything.
            (None, Some(bus)) => bus.take_over(&authed.iot_id).await,
            (None, None) => false,
        };
        let now = gw.clock.now_ms();
        if replaced {
            tracing::info!(%peer, iot_id = %authed.iot_id, "session taken over");
            if let Err(e) = gw
                .registry
                .set_device_online(&authed.project, &authed.iot_id, false, now)
                .await
            {
                tracing::warn!(error = %e, "recording the replaced session offline");
            }
        }
        if let Err(e) = gw
            .registry
            .set_device_online(&authed.project, &authed.iot_id, true, now)
            .await
        {
            gw.sessions.remove_if(&authed.key, conn_id);
            let code = match e {
                StoreError::Invalid { .. } | StoreError::NotFound { .. } => connack::NOT_AUTHORIZED,
                _ => connack::SERVER_UNAVAILABLE,
            };
            tracing::warn!(%peer, error = %e, "recording the device online failed");
            let mut out = Vec::new();
            codec::encode(
                &Packet::ConnAck {
                    session_present: false,
                    code,
                },
                &mut out,
            );
            let _ = wr.write_all(&out).await;
            let _ = fin_tx.send(true);
            return;
        }
    }
    // Reachable from the other nodes of a cluster (downlink, take-over) before CONNACK.
    let cluster_task = match gw.sessions.cluster() {
        Some(bus) => match bus
            .serve(
                gw.sessions.clone(),
                authed.key.clone(),
                authed.iot_id.clone(),
                conn_id,
            )
            .await
        {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(iot_id = %authed.iot_id, error = %e, "the device is not reachable from the other nodes");
                None
            }
        },
        None => None,
    };
    // The online status must be in the backlog before anything this device publishes
    // (per-device order), so drain the outbox before CONNACK lets it publish.
    if let Err(e) = gw.dispatcher.flush().await {
        tracing::warn!(error = %e, "moving the online status into the backlog; it follows shortly");
        gw.dispatcher.kick();
    }
    tracing::info!(%peer, iot_id = %authed.iot_id, keep_alive_s, "device online");

    let mut conn = Connection {
        gw: gw.clone(),
        session: DeviceSession::new(authed.key.0.clone(), authed.key.1.clone()),
        project: authed.project.clone(),
        iot_id: authed.iot_id.clone(),
        out: Vec::with_capacity(256),
        last_check: Instant::now(),
    };
    codec::encode(
        &Packet::ConnAck {
            session_present: false,
            code: connack::ACCEPTED,
        },
        &mut conn.out,
    );
    let end = conn
        .run(&mut rd, &mut wr, &mut buf, dl_rx, &kick, keep_alive_s)
        .await;
    if let Some(t) = cluster_task {
        t.abort();
    }
    let _ = fin_tx.send(true);
    let _ = wr.shutdown().await;
    tracing::info!(%peer, iot_id = %authed.iot_id, reason = ?end, "device session ended");
    if end != End::TakenOver {
        let _status = gw.sessions.status_lock(&authed.key).lock().await;
        if gw.sessions.remove_if(&authed.key, conn_id) {
            let now = gw.clock.now_ms();
            match gw
                .registry
                .set_device_online(&authed.project, &authed.iot_id, false, now)
                .await
            {
                Ok(_) => gw.dispatcher.kick(),
                // Disabled or deleted meanwhile: no status to record.
                Err(e) => tracing::debug!(error = %e, "recording the device offline"),
            }
        }
    }
}

struct Connection {
    gw: Arc<Gateway>,
    session: DeviceSession,
    project: ProjectId,
    iot_id: IotId,
    out: Vec<u8>,
    last_check: Instant,
}

impl Connection {
    async fn run<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut Vec<u8>,
        mut downlink: mpsc::Receiver<DownlinkPublishAlias>,
        kick: &Notify,
        keep_alive_s: u16,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // MQTT §3.1.2.10: one and a half keep-alive periods without a packet → gone.
        let grace =
            (keep_alive_s > 0).then(|| Duration::from_millis(u64::from(keep_alive_s) * 1500));
        let far = Duration::from_secs(365 * 24 * 3600);
        let mut deadline = Instant::now() + grace.unwrap_or(far);
        let mut shutdown = self.gw.shutdown.clone();
        loop {
            loop {
                match codec::decode(buf, self.gw.max_packet) {
                    Ok(Some((p, n))) => {
                        buf.drain(..n);
                        deadline = Instant::now() + grace.unwrap_or(far);
                        if let Step::Close(end) = self.handle(p).await {
                            let _ = wr.write_all(&self.out).await;
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Refused(e.to_string()),
                }
            }
            if !self.out.is_empty() {
                if let Err(e) = wr.write_all(&self.out).await {
                    return End::Internal(format!("write: {e}"));
                }
                self.out.clear();
            }
            tokio::select! {
                r = rd.read_buf(buf) => match r {
                    Ok(0) => return End::SocketClosed,
                    Ok(_) => {}
                    Err(_) => return End::SocketClosed,
                },
                Some(d) = downlink.recv() => {
                    codec::encode(&Packet::Publish(Publish {
                        dup: false,
                        qos: 0,
                        retain: false,
                        topic: d.topic,
                        packet_id: None,
                        payload: d.payload,
                    }), &mut self.out);
                }
                _ = kick.notified() => return End::TakenOver,
                _ = tokio::time::sleep_until(deadline) => return End::KeepAliveExpired,
                _ = super::stopped(&mut shutdown) => return End::Shutdown,
            }
        }
    }

    fn reply(&mut self, topic: &str, id: &str, code: i64, message: &str) {
        codec::encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: 0,
                retain: false,
                topic: format!("{topic}_reply"),
                packet_id: None,
                payload: session::reply_payload(id, code, message, json!({})),
            }),
            &mut self.out,
        );
    }

    async fn handle(&mut self, p: Packet) -> Step {
        match p {
            Packet::Publish(pb) => self.publish(pb).await,
            Packet::Subscribe { packet_id, filters } => {
                let codes = self.session.subscribe(&filters);
                codec::encode(&Packet::SubAck { packet_id, codes }, &mut self.out);
                Step::Continue
            }
            Packet::Unsubscribe { packet_id, filters } => {
                self.session.unsubscribe(&filters);
                codec::encode(&Packet::UnsubAck(packet_id), &mut self.out);
                Step::Continue
            }
            Packet::PingReq => {
                if self.last_check.elapsed() >= RECHECK_EVERY {
                    self.last_check = Instant::now();
                    match self
                        .gw
                        .registry
                        .get_device(&self.project, &self.iot_id)
                        .await
                    {
                        Ok(d) if d.status == DeviceStatus::Disabled => {
                            return Step::Close(End::Refused("device disabled".into()))
                        }
                        Err(StoreError::NotFound { .. }) => {
                            return Step::Close(End::Refused("device deleted".into()))
                        }
                        _ => {}
                    }
                }
                codec::encode(&Packet::PingResp, &mut self.out);
                Step::Continue
            }
            Packet::Disconnect => Step::Close(End::ClientDisconnect),
            // We publish at QoS 0 only; a stray PUBACK is harmless.
            Packet::PubAck(_) => Step::Continue,
            other => Step::Close(End::Refused(format!(
                "packet not allowed from a device: {:?}",
                std::mem::discriminant(&other)
            ))),
        }
    }

    async fn publish(&mut self, pb: Publish) -> Step {
        if pb.qos > 1 {
            return Step::Close(End::Refused("QoS 2 is not supported".into()));
        }
        if !self.session.may_publish(&pb.topic) {
            tracing::warn!(iot_id = %self.iot_id, topic = %pb.topic, "publish on a foreign topic refused");
            return Step::Close(End::Refused(format!(
                "publish on a topic that is not the device's: {}",
                pb.topic
            )));
        }
        let uplink = self.session.classify(&pb.topic);
        let step = match &uplink {
            Uplink::PropertyPost | Uplink::EventPost(_) => {
                self.alink_uplink(&pb.topic, &uplink, &pb.payload).await
            }
            Uplink::PropertySetReply | Uplink::ServiceReply(_) => {
                if let Some((id, reply)) = session::parse_reply(&pb.payload) {
                    if !self.gw.sessions.complete(&self.iot_id, &id, reply) {
                        tracing::debug!(iot_id = %self.iot_id, id, "reply to no waiting request");
                    }
                }
                Step::Continue
            }
            Uplink::UnknownSys(rest) => {
                if !rest.ends_with("_reply") {
                    let id = session::parse_request(&pb.payload, &uplink)
                        .map(|r| r.id)
                        .unwrap_or_default();
                    self.reply(&pb.topic, &id, code::NOT_FOUND, "method not found");
                }
                Step::Continue
            }
            Uplink::Custom => Step::Continue,
        };
        if let (Step::Continue, Some(id)) = (&step, pb.packet_id) {
            codec::encode(&Packet::PubAck(id), &mut self.out);
        }
        step
    }

    async fn alink_uplink(&mut self, topic: &str, uplink: &Uplink, payload: &[u8]) -> Step {
        let req = match session::parse_request(payload, uplink) {
            Ok(r) => r,
            Err(e) => return self.refuse(topic, e),
        };
        let result = match uplink {
            Uplink::PropertyPost => match session::property_params(&req) {
                Ok(items) => {
                    self.gw
                        .ingest
                        .report_properties(&self.project, &self.iot_id, items)
                        .await
                }
                Err(e) => return self.refuse(topic, e),
            },
            Uplink::EventPost(identifier) => match session::event_params(&req) {
                Ok((value, time)) => {
                    self.gw
                        .ingest
                        .report_event_at(
                            &self.project,
                            &self.iot_id,
                            identifier,
                            EventType::Info,
                            None,
                            value,
                            time,
                        )
                        .await
                }
                Err(e) => return self.refuse(topic, e),
            },
            _ => return Step::Continue,
        };
        match result {
            Ok(_) => {
                self.reply(topic, &req.id, code::SUCCESS, "success");
                Step::Continue
            }
            Err(IngestError::Invalid { field, reason }) => self.refuse(
                topic,
                AlinkError {
                    id: req.id,
                    code: code::BAD_PARAMS,
                    message: format!("request parameter error: {field}: {reason}"),
                },
            ),
            Err(IngestError::DeviceDisabled) => Step::Close(End::Refused("device disabled".into())),
            Err(IngestError::Store(StoreError::NotFound { .. })) => {
                Step::Close(End::Refused("device deleted".into()))
            }
            // Not durable: no PUBACK; closing makes the device send it again.
            Err(e) if disk_full_code(&e).is_some() => {
                let rest = disk_full_code(&e).unwrap_or("store.disk_full");
                tracing::error!(iot_id = %self.iot_id, error = %e, "uplink not stored: disk full");
                self.reply(
                    topic,
                    &req.id,
                    code::DISK_FULL,
                    &format!("{rest}: the server's disk is full; nothing was stored, retry when space returns"),
                );
                Step::Close(End::Internal(e.to_string()))
            }
            Err(e) => {
                tracing::error!(iot_id = %self.iot_id, error = %e, "uplink not stored");
                self.reply(topic, &req.id, code::INTERNAL, "internal error");
                Step::Close(End::Internal(e.to_string()))
            }
        }
    }

    fn refuse(&mut self, topic: &str, e: AlinkError) -> Step {
        tracing::debug!(iot_id = %self.iot_id, code = e.code, message = %e.message, "uplink refused");
        self.reply(topic, &e.id, e.code, &e.message);
        Step::Continue
    }
}

/// The stable code of a disk-full failure (`store.disk_full` / `backlog.disk_full`).
fn disk_full_code(e: &IngestError) -> Option<&'static str> {
    match e {
        IngestError::Store(s) if s.is_disk_full() => Some("store.disk_full"),
        IngestError::Backlog(iotsync_backlog::BacklogError::DiskFull { .. }) => {
            Some("backlog.disk_full")
        }
        _ => None,
    }
}

type DownlinkPublishAlias = super::sessions::DownlinkPublish;
