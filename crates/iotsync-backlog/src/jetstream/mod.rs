//! The [`Backlog`] on NATS JetStream (ADR 0013): streams per retention class, one durable
//! pull consumer per group × class × partition, each (group, partition) pulled by the
//! one node that holds its lease in KV, which keeps the trait's per-key stickiness
//! locally (`local.rs`). Built for nats-server 2.9.
//!
//! Guarantees:
//! - `append` returns once every message's PubAck is in (stored by the stream, a quorum
//!   at R3); a repeated messageId within the duplicate window is stored once.
//! - Delivery is at-least-once; acks are not waited for. A node that dies loses its
//!   partition leases after `lease_ttl`; its un-acked messages come back after AckWait.
//! - Per-device order as in the embedded engine, cluster-wide, because one node pulls a
//!   partition; handover waits for the old owner's in-flight deliveries.
//! - Purge re-creates the group's consumers after the streams' last sequences and bumps
//!   the group's generation in KV, so every node drops what it pulled of the old ones.
//! - Not implemented (they return [`BacklogError::Unsupported`]): seek, find_message,
//!   device_messages, set_keep_acknowledged(false).

mod backlog_impl;
mod connect;
mod dead;
mod figures;
mod local;
mod ownership;
mod pulling;
mod test_server;
mod wire;

pub use test_server::{nats_server_binary, NatsTestCluster, NatsTestServer};

/// The stored body of a message on JetStream (the engine's own binary layout, ADR 0013),
/// read and written: public for the fuzz target `jetstream_wire`.
pub mod wire_format {
    use iotsync_core::SyncMessage;

    /// Rebuilds a message from a stored body; `Err` says what is wrong.
    pub fn decode(body: &[u8]) -> Result<SyncMessage, String> {
        super::wire::decode(body)
    }

    /// The stored body of `m`.
    pub fn encode(m: &SyncMessage) -> Vec<u8> {
        super::wire::body(m)
    }
}

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use iotsync_core::{
    Clock, ConsumerGroup, GroupFilter, GroupFilterDoc, MessageId, ProjectId, SyncMessage,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::RetryPolicy;
use crate::error::BacklogError;
use crate::index::MAX_GROUPS_PER_PROJECT;
use crate::types::{
    AppendOutcome, AvailabilityWatch, ConsumerId, DeadLetter, Delivery, GroupInfo, GroupRetry,
    GroupSpec, GroupStats, LeaseToken, MessageQuery, MessageTrace, ProjectStats, SeekOutcome,
    TickReport,
};
use crate::Backlog;
use local::{Held, LocalGroup};
use wire::Class;

/// Settings of the JetStream engine.
#[derive(Debug, Clone, PartialEq)]
pub struct JetStreamConfig {
    /// Partitions per group (by ordering-key hash). Fixed per cluster: the first node
    /// stores it in KV; a node configured otherwise uses the stored value.
    pub partitions: u16,
    /// Stream and KV replicas; `None`: 3 if the cluster has ≥ 3 servers, else 1.
    pub replicas: Option<usize>,
    pub ack_timeout: Duration,
    pub retry: RetryPolicy,
    /// Retention of a project whose retention was never set.
    pub default_retention: Duration,
    pub max_message_bytes: usize,
    /// A partition lease not renewed for this long is free for another node.
    pub lease_ttl: Duration,
    /// Messages pulled ahead per (group, class, partition).
    pub buffer_per_partition: usize,
    /// How long one pull request waits for messages.
    pub pull_expires: Duration,
    /// This node's name in the leases (`None`: a random one).
    pub node_name: Option<String>,
    pub jitter_seed: Option<u64>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            partitions: 8,
            replicas: None,
            ack_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            default_retention: Duration::from_secs(24 * 3600),
            max_message_bytes: 1024 * 1024,
            lease_ttl: Duration::from_secs(10),
            buffer_per_partition: 256,
            pull_expires: Duration::from_secs(1),
            node_name: None,
            jitter_seed: None,
        }
    }
}

/// A project as stored in KV (`project.<p>`): settings and groups, for every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProjectDoc {
    #[serde(default)]
    retention_ms: Option<i64>,
    #[serde(default)]
    paused: bool,
    #[serde(default)]
    groups: BTreeMap<String, GroupDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupDoc {
    filter: GroupFilterDoc,
    #[serde(default)]
    schedule: Option<(Vec<u64>, u32)>,
    /// Bumped by a purge: every node drops what it holds of the group's old consumers.
    #[serde(default)]
    generation: u64,
}

impl GroupDoc {
    fn from_spec(s: &GroupSpec) -> Self {
        Self {
            filter: GroupFilterDoc::from(&s.filter),
            schedule: match &s.retry {
                GroupRetry::Backoff => None,
                GroupRetry::Schedule {
                    delays_ms,
                    max_deliveries,
                } => Some((delays_ms.clone(), *max_deliveries)),
            },
            generation: 0,
        }
    }

    fn spec(&self) -> Option<GroupSpec> {
        Some(GroupSpec {
            filter: GroupFilter::try_from(&self.filter).ok()?,
            retry: match &self.schedule {
                None => GroupRetry::Backoff,
                Some((d, m)) => GroupRetry::Schedule {
                    delays_ms: d.clone(),
                    max_deliveries: *m,
                },
            },
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    appended: u64,
    acked: u64,
    redelivered: u64,
    expired: u64,
    rejected: u64,
    nacked: u64,
    timed_out: u64,
    dropped: u64,
}

/// A (group, partition) this node holds the lease of.
struct Owned {
    revision: u64,
    /// Being handed over: no more leases, pulls stop.
    draining: bool,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Owned {
    fn abort(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct GroupState {
    spec: GroupSpec,
    local: LocalGroup,
    consumers: HashSet<ConsumerId>,
    owned: BTreeMap<u16, Owned>,
    /// Whether this node announced itself a member (it had consumers at the last cycle).
    member: bool,
    counters: Counters,
    /// The doc's generation this node's local state belongs to.
    generation: u64,
    /// The highest stream sequence pulled here per (class, partition): a message pulled
    /// again at or below it is a redelivery even when JetStream counts it once (2.9.10
    /// does after a leader change, and after a pull answer lost in transit).
    pulled_up_to: HashMap<(Class, u16), u64>,
}

impl GroupState {
    fn new(spec: GroupSpec) -> Self {
        Self {
            spec,
            local: LocalGroup::default(),
            consumers: HashSet::new(),
            owned: BTreeMap::new(),
            member: false,
            counters: Counters::default(),
            generation: 0,
            pulled_up_to: HashMap::new(),
        }
    }

    fn closed_parts(&self) -> HashSet<u16> {
        self.owned
            .iter()
            .filter(|(_, o)| o.draining)
            .map(|(p, _)| *p)
            .collect()
    }
}

#[derive(Default)]
struct ProjectState {
    doc: ProjectDoc,
    groups: HashMap<ConsumerGroup, GroupState>,
    discarded_no_group: u64,
    dropped_by_group_delete: u64,
}

#[derive(Default)]
struct State {
    projects: HashMap<ProjectId, ProjectState>,
    /// Lease number → its group.
    leases: HashMap<u32, (ProjectId, ConsumerGroup)>,
    consumers: HashMap<ConsumerId, HashSet<(ProjectId, ConsumerGroup)>>,
    watches: HashMap<(ProjectId, ConsumerGroup), watch::Sender<u64>>,
    next_gen: u32,
    jitter: u64,
    /// What the last `settle` took (handed out of the lock by the caller).
    settled: Option<Held>,
}

impl State {
    fn signal(&mut self, p: &ProjectId, g: &ConsumerGroup) {
        if let Some(w) = self.watches.get(&(p.clone(), g.clone())) {
            w.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn unit(&mut self) -> f64 {
        // xorshift64*: jitter only, not security.
        let mut x = self.jitter.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn group_mut(&mut self, p: &ProjectId, g: &ConsumerGroup) -> Option<&mut GroupState> {
        self.projects.get_mut(p)?.groups.get_mut(g)
    }

    /// Ends a lease for good; the message goes to `self.settled`.
    fn settle(&mut self, token: &LeaseToken) -> Result<(ProjectId, ConsumerGroup), BacklogError> {
        let unknown = BacklogError::UnknownLease { seq: token.seq };
        let (p, g) = self.leases.remove(&token.gen).ok_or(unknown)?;
        let done = self
            .group_mut(&p, &g)
            .and_then(|gs| gs.local.settle(token.gen));
        if let Some((_, Some(other))) = &done {
            self.leases.remove(other);
        }
        self.settled = done.map(|(h, _)| h);
        Ok((p, g))
    }
}

struct Inner {
    cfg: JetStreamConfig,
    clock: Arc<dyn Clock>,
    client: async_nats::Client,
    js: jetstream::Context,
    meta: kv::Store,
    owners: kv::Store,
    /// Every node's figures, summed by `stats` (`figures.rs`).
    figures: kv::Store,
    partitions: u16,
    node: String,
    streams: HashMap<Class, stream::Stream>,
    dead: stream::Stream,
    state: Mutex<State>,
    wake_owners: Notify,
    /// Leases made room in some buffer: pull loops waiting for room look again.
    room: Notify,
    expired_since_tick: AtomicU64,
}

/// The JetStream engine. Cheap to share behind an `Arc<dyn Backlog>`; dropping it stops
/// its tasks (leases it held run out after `lease_ttl`).
pub struct JetStreamBacklog {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for JetStreamBacklog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let st = self.inner.lock();
        for ps in st.projects.values() {
            for gs in ps.groups.values() {
                for o in gs.owned.values() {
                    o.abort();
                }
            }
        }
    }
}

/// How long `append` keeps publishing what a stream leader election refused.
const APPEND_RETRY_FOR: Duration = Duration::from_secs(10);

fn nats_err(op: &'static str, e: impl std::fmt::Display) -> BacklogError {
    BacklogError::Nats {
        op,
        detail: e.to_string(),
    }
}

fn nak_payload(delay_ms: i64) -> Bytes {
    if delay_ms <= 0 {
        Bytes::from_static(b"-NAK")
    } else {
        Bytes::from(format!(
            "-NAK {{\"delay\":{}}}",
            (delay_ms as u64).saturating_mul(1_000_000)
        ))
    }
}

/// What to do with a delivery that failed (nack, time-out).
enum Failed {
    Retry(i64),
    DeadLetter,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn retention_ms(&self, doc: &ProjectDoc) -> i64 {
        doc.retention_ms
            .unwrap_or(self.cfg.default_retention.as_millis() as i64)
    }

    /// The project's doc: cached, else read from KV (None: no such project).
    async fn doc(&self, p: &ProjectId) -> Result<Option<ProjectDoc>, BacklogError> {
        if let Some(ps) = self.lock().projects.get(p) {
            return Ok(Some(ps.doc.clone()));
        }
        let raw = self
            .meta
            .get(wire::project_key(p))
            .await
            .map_err(|e| nats_err("read project", e))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let doc: ProjectDoc =
            serde_json::from_slice(&raw).map_err(|e| nats_err("read project", e))?;
        self.apply_doc(p, Some(doc.clone()));
        Ok(Some(doc))
    }

    /// Changes the project's doc in KV (compare-and-set on its revision), then here.
    async fn update_doc(
        &self,
        p: &ProjectId,
        f: impl Fn(&mut ProjectDoc) -> Result<(), BacklogError>,
    ) -> Result<ProjectDoc, BacklogError> {
        let key = wire::project_key(p);
        for _ in 0..20 {
            let entry = self
                .meta
                .entry(key.clone())
                .await
                .map_err(|e| nats_err("read project", e))?;
            let (mut doc, rev) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<ProjectDoc>(&e.value)
                        .map_err(|e| nats_err("read project", e))?,
                    Some(e.revision),
                ),
                Some(e) => (ProjectDoc::default(), Some(e.revision)),
                None => (ProjectDoc::default(), None),
            };
            f(&mut doc)?;
            let body =
                Bytes::from(serde_json::to_vec(&doc).map_err(|e| nats_err("write project", e))?);
            let done = match rev {
                Some(r) => self.meta.update(&key, body, r).await.is_ok(),
                None => self.meta.create(&key, body).await.is_ok(),
            };
            if done {
                self.apply_doc(p, Some(doc.clone()));
                return Ok(doc);
            }
        }
        Err(nats_err("write project", "too many concurrent changes"))
    }

    /// Brings the local state of a project in line with its doc (None: deleted).
    fn apply_doc(&self, p: &ProjectId, doc: Option<ProjectDoc>) {
        let mut st = self.lock();
        let doc = doc.unwrap_or_default();
        let ps = st.projects.entry(p.clone()).or_default();
        let mut gone = Vec::new();
        let mut reset: Vec<Vec<u32>> = Vec::new();
        ps.groups.retain(|g, gs| {
            let keep = doc.groups.contains_key(g.as_str());
            if !keep {
                for o in gs.owned.values() {
                    o.abort();
                }
                gone.push((g.clone(), gs.local.gens()));
            }
            keep
        });
        for (name, gd) in &doc.groups {
            let (Ok(g), Some(spec)) = (name.parse::<ConsumerGroup>(), gd.spec()) else {
                continue;
            };
            match ps.groups.get_mut(&g) {
                Some(gs) => {
                    gs.spec = spec;
                    if gs.generation != gd.generation {
                        // Purged (maybe by another node): what was pulled from the old
                        // consumers is dropped; its tokens are unknown leases now.
                        gs.generation = gd.generation;
                        let old = std::mem::take(&mut gs.local);
                        reset.push(old.gens());
                    }
                }
                None => {
                    let mut gs = GroupState::new(spec);
                    gs.generation = gd.generation;
                    ps.groups.insert(g, gs);
                }
            }
        }
        ps.doc = doc;
        for gen in reset.into_iter().flatten() {
            st.leases.remove(&gen);
        }
        for (g, gens) in gone {
            for gen in gens {
                st.leases.remove(&gen);
            }
            st.watches.remove(&(p.clone(), g));
        }
    }

    /// Follows changes of project docs made by any node. If the watch ends (a lost
    /// connection), it is made again and every cached project is read afresh, so a
    /// change made in between is not missed.
    async fn follow_projects(self: Arc<Self>, mut w: kv::Watch) {
        loop {
            while let Some(e) = w.next().await {
                let Ok(e) = e else {
                    continue;
                };
                let Some(p) = e
                    .key
                    .strip_prefix("project.")
                    .and_then(|s| s.parse::<ProjectId>().ok())
                else {
                    continue;
                };
                let doc = match e.operation {
                    kv::Operation::Put => serde_json::from_slice::<ProjectDoc>(&e.value).ok(),
                    _ => None,
                };
                self.apply_doc(&p, doc);
                self.signal_project(&p);
            }
            tracing::warn!("the project watch ended; watching again");
            w = loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Ok(w) = self.meta.watch("project.>").await {
                    break w;
                }
            };
            let cached: Vec<ProjectId> = self.lock().projects.keys().cloned().collect();
            for p in cached {
                if let Ok(raw) = self.meta.get(wire::project_key(&p)).await {
                    let doc = raw.and_then(|r| serde_json::from_slice::<ProjectDoc>(&r).ok());
                    self.apply_doc(&p, doc);
                    self.signal_project(&p);
                }
            }
        }
    }

    fn signal_project(&self, p: &ProjectId) {
        let mut st = self.lock();
        let groups: Vec<ConsumerGroup> = st
            .projects
            .get(p)
            .map(|ps| ps.groups.keys().cloned().collect())
            .unwrap_or_default();
        for g in groups {
            st.signal(p, &g);
        }
    }

    fn failed(&self, st: &mut State, spec: &GroupSpec, attempt: u32) -> Failed {
        match &spec.retry {
            GroupRetry::Backoff => {
                let u = st.unit();
                Failed::Retry(self.cfg.retry.delay_ms(attempt, u))
            }
            GroupRetry::Schedule {
                delays_ms,
                max_deliveries,
            } => {
                if attempt >= *max_deliveries {
                    Failed::DeadLetter
                } else {
                    let i = (attempt.max(1) - 1) as usize;
                    let d = delays_ms.get(i).or(delays_ms.last()).copied().unwrap_or(0);
                    Failed::Retry(d as i64)
                }
            }
        }
    }

    async fn send(&self, reply: &async_nats::Subject, body: Bytes) -> Result<(), BacklogError> {
        self.client
            .publish(reply.clone(), body)
            .await
            .map_err(|e| nats_err("settle", e))
    }

    /// Expires what this node holds of a project past its retention (acked, counted).
    async fn expire_held(&self, p: &ProjectId) -> Result<(), BacklogError> {
        let now = self.clock.now_ms();
        let mut acks = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(ps) = st.projects.get_mut(p) else {
                return Ok(());
            };
            let cutoff = now - self.retention_ms(&ps.doc);
            let mut gone = Vec::new();
            for gs in ps.groups.values_mut() {
                let (gens, replies) = gs.local.take_expired(cutoff);
                gs.counters.expired += replies.len() as u64;
                self.expired_since_tick
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                gone.extend(gens);
                acks.extend(replies);
            }
            for g in gone {
                st.leases.remove(&g);
            }
        }
        for r in acks {
            self.send(&r, Bytes::from_static(b"+ACK")).await?;
        }
        Ok(())
    }

    async fn publish_all(
        &self,
        items: Vec<(String, async_nats::HeaderMap, Bytes)>,
    ) -> Result<(), BacklogError> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        // A stream leader election (seconds at R3) answers "no stream found" (really no
        // responders) or times out; the same Nats-Msg-Id makes a repeat harmless, so
        // what failed that way is published again for up to APPEND_RETRY_FOR before
        // `append` gives up: a device sees a slower PUBACK, not an error.
        let retryable = |k: K| {
            matches!(
                k,
                K::StreamNotFound | K::TimedOut | K::BrokenPipe | K::Other
            )
        };
        let deadline = tokio::time::Instant::now() + APPEND_RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        let mut todo = items;
        loop {
            let mut acks = Vec::with_capacity(todo.len());
            let mut failed = Vec::new();
            let mut last = None;
            for item in todo {
                let (subject, h, body) = item.clone();
                match self.js.publish_with_headers(subject, h, body).await {
                    Ok(a) => acks.push((item, a)),
                    Err(e) if retryable(e.kind()) => {
                        last = Some(e.to_string());
                        failed.push(item);
                    }
                    Err(e) => return Err(nats_err("append", e)),
                }
            }
            for (item, a) in acks {
                match a.await {
                    Ok(_) => {}
                    Err(e) if retryable(e.kind()) => {
                        last = Some(e.to_string());
                        failed.push(item);
                    }
                    Err(e) => return Err(nats_err("append", e)),
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(nats_err("append", last.unwrap_or_default()));
            }
            tracing::debug!(left = failed.len(), error = ?last, "append: publishing again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            todo = failed;
        }
    }
}
