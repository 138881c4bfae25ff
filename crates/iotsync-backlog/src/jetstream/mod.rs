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
//! - Not implemented (they return [`BacklogError::Unsupported`]): seek, purge,
//!   find_message, device_messages, set_keep_acknowledged(false).

mod local;
mod ownership;
mod test_server;
mod wire;

pub use test_server::{nats_server_binary, NatsTestServer};

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

fn nats_err(op: &'static str, e: impl std::fmt::Display) -> BacklogError {
    BacklogError::Nats {
        op,
        detail: e.to_string(),
    }
}

impl JetStreamBacklog {
    /// Connects to the servers (`nats://h1:4222,nats://h2:4222`), creates the streams and
    /// buckets if missing, and starts the node's ownership and watch tasks.
    pub async fn connect(
        urls: &str,
        cfg: JetStreamConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BacklogError> {
        let addrs: Vec<async_nats::ServerAddr> = urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<_, _>>()
            .map_err(|e| nats_err("parse backlog url", e))?;
        if addrs.is_empty() {
            return Err(nats_err("parse backlog url", "no server address"));
        }
        if cfg.partitions == 0 {
            return Err(nats_err("configure", "partitions must be at least 1"));
        }
        let node = cfg
            .node_name
            .clone()
            .unwrap_or_else(|| format!("n{:016x}", seed_from_time()));
        let client = async_nats::ConnectOptions::new()
            .name(format!("iotsync-{node}"))
            .connect(addrs)
            .await
            .map_err(|e| nats_err("connect", e))?;
        let info = client.server_info();
        tracing::info!(version = %info.version, servers = info.connect_urls.len().max(1), node = %node, "backlog on NATS JetStream");
        // A message is its body (envelope + payload) and two headers: it must fit the
        // server's max_payload, else appends would fail at the server, not at our check.
        let mut cfg = cfg;
        let room = info.max_payload.saturating_sub(4096);
        if room > 0 && cfg.max_message_bytes > room {
            tracing::warn!(
                configured = cfg.max_message_bytes,
                max_payload = info.max_payload,
                "largest message lowered to fit the NATS server's max_payload"
            );
            cfg.max_message_bytes = room;
        }
        let replicas = cfg
            .replicas
            .unwrap_or(if info.connect_urls.len() >= 3 { 3 } else { 1 });
        let js = jetstream::new(client.clone());
        let mut streams = HashMap::new();
        for class in Class::ALL {
            let s = js
                .get_or_create_stream(stream::Config {
                    name: class.stream().to_owned(),
                    subjects: vec![format!("iotsync.{}.>", class.token())],
                    retention: stream::RetentionPolicy::Limits,
                    storage: stream::StorageType::File,
                    max_age: Duration::from_millis((class.max_age_ms() + 3_600_000) as u64),
                    duplicate_window: Duration::from_secs(120),
                    num_replicas: replicas,
                    allow_direct: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("create stream", e))?;
            streams.insert(class, s);
        }
        let dead = js
            .get_or_create_stream(stream::Config {
                name: wire::STREAM_DEAD.to_owned(),
                subjects: vec!["iotsync.dead.>".to_owned()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_age: Duration::from_millis(Class::D7.max_age_ms() as u64),
                num_replicas: replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("create stream", e))?;
        let meta = bucket(
            &js,
            wire::BUCKET_META,
            Duration::ZERO,
            replicas,
            stream::StorageType::File,
        )
        .await?;
        // File storage: a restarted server must still have the bucket (leases in it
        // run out by its MaxAge anyway).
        let owners = bucket(
            &js,
            wire::BUCKET_OWNERS,
            cfg.lease_ttl,
            replicas,
            stream::StorageType::File,
        )
        .await?;
        let partitions = match meta
            .create("partitions", Bytes::from(cfg.partitions.to_string()))
            .await
        {
            Ok(_) => cfg.partitions,
            Err(_) => {
                let v = meta
                    .get("partitions")
                    .await
                    .map_err(|e| nats_err("read partitions", e))?
                    .ok_or_else(|| nats_err("read partitions", "missing"))?;
                let n: u16 = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| nats_err("read partitions", "not a number"))?;
                if n != cfg.partitions {
                    tracing::warn!(
                        stored = n,
                        configured = cfg.partitions,
                        "the cluster's partition count wins"
                    );
                }
                n
            }
        };
        let state = State {
            jitter: cfg.jitter_seed.unwrap_or_else(seed_from_time),
            ..State::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            clock,
            client,
            js,
            meta,
            owners,
            partitions,
            node,
            streams,
            dead,
            state: Mutex::new(state),
            wake_owners: Notify::new(),
            room: Notify::new(),
            expired_since_tick: AtomicU64::new(0),
        });
        let watcher = {
            let inner = inner.clone();
            let w = inner
                .meta
                .watch("project.>")
                .await
                .map_err(|e| nats_err("watch projects", e))?;
            tokio::spawn(async move { inner.follow_projects(w).await })
        };
        let owner_loop = {
            let inner = inner.clone();
            tokio::spawn(async move { ownership::run(inner).await })
        };
        Ok(Self {
            inner,
            tasks: vec![watcher, owner_loop],
        })
    }

    /// This node's name in the partition leases.
    pub fn node_name(&self) -> &str {
        &self.inner.node
    }

    /// Messages of the group pulled here and not leased yet (tests, figures).
    pub fn buffered(&self, project: &ProjectId, group: &ConsumerGroup) -> usize {
        let st = self.inner.lock();
        st.projects
            .get(project)
            .and_then(|p| p.groups.get(group))
            .map(|g| g.local.buffered_total())
            .unwrap_or(0)
    }

    /// (group, partitions this node owns), for tests and figures.
    pub fn owned_partitions(&self, project: &ProjectId, group: &ConsumerGroup) -> Vec<u16> {
        let st = self.inner.lock();
        st.projects
            .get(project)
            .and_then(|p| p.groups.get(group))
            .map(|g| g.owned.keys().copied().collect())
            .unwrap_or_default()
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
    storage: stream::StorageType,
) -> Result<kv::Store, BacklogError> {
    if let Ok(b) = js.get_key_value(name).await {
        return Ok(b);
    }
    // The stream a KV bucket is, made by hand: async-nats's `create_key_value` first
    // asks for the account info, whose 2.9 answer it cannot parse.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_err("create bucket", e))?;
    js.get_key_value(name)
        .await
        .map_err(|e| nats_err("open bucket", e))
}

fn seed_from_time() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    t ^ (u64::from(std::process::id()) << 32)
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
                Some(gs) => gs.spec = spec,
                None => {
                    ps.groups.insert(g, GroupState::new(spec));
                }
            }
        }
        ps.doc = doc;
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

    /// Copies a delivery to the dead-letter stream (waits for its PubAck), then `+TERM`.
    async fn dead_letter(&self, group: &ConsumerGroup, f: &Held) -> Result<(), BacklogError> {
        let m = &f.message;
        let mut h = wire::headers(m, None);
        h.insert(
            wire::H_MSG_ID,
            format!("{}.{}.dead", m.envelope.message_id, f.sseq).as_str(),
        );
        h.insert(wire::H_DEAD_GROUP, group.as_str());
        h.insert(wire::H_DEAD_ATTEMPTS, f.attempt.to_string().as_str());
        h.insert(wire::H_DEAD_AT, self.clock.now_ms().to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(
                wire::dead_subject(&m.project_id, group),
                h,
                Bytes::from(wire::body(m)),
            )
            .await
            .map_err(|e| nats_err("dead letter", e))?;
        if let Err(e) = ack.await {
            // Not copied: let it come back rather than lose it.
            self.send(&f.reply, nak_payload(0)).await?;
            return Err(nats_err("dead letter", e));
        }
        self.send(&f.reply, Bytes::from_static(b"+TERM")).await
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

    /// Dead-letters a delivery settled here and counts it.
    async fn bury(&self, p: &ProjectId, g: &ConsumerGroup, h: Held) -> Result<(), BacklogError> {
        self.dead_letter(g, &h).await?;
        if let Some(gs) = self.lock().group_mut(p, g) {
            gs.counters.rejected += 1;
        }
        Ok(())
    }

    /// Messages pulled by a partition task, all at hand: buffered under one lock; what
    /// this group does not take, or what is past retention, is acked at once.
    async fn pulled(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
        class: Class,
        part: u16,
        ms: Vec<jetstream::Message>,
    ) {
        let now = self.clock.now_ms();
        let mut settle: Vec<(async_nats::Subject, &'static [u8])> = Vec::new();
        let mut decoded = Vec::with_capacity(ms.len());
        for m in ms {
            let (sseq, delivered) = match m.info() {
                Ok(i) => (i.stream_sequence, i.delivered),
                Err(_) => continue,
            };
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            match wire::decode(&m.payload) {
                Ok(msg) if wire::for_group(m.headers.as_ref(), g) => {
                    decoded.push((sseq, delivered, reply, msg));
                }
                Ok(_) => settle.push((reply, b"+ACK")),
                Err(e) => {
                    tracing::warn!(stream = class.stream(), seq = sseq, error = %e, "not an iotsync message: terminated");
                    settle.push((reply, b"+TERM"));
                }
            }
        }
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(ps) = st.projects.get_mut(p) else {
                return;
            };
            let retention = self.retention_ms(&ps.doc);
            let Some(gs) = ps.groups.get_mut(g) else {
                return;
            };
            let mut pushed = false;
            for (sseq, delivered, reply, msg) in decoded {
                if !gs.spec.filter.takes(&msg) {
                    settle.push((reply, b"+ACK"));
                } else if now - msg.envelope.generate_time >= retention {
                    gs.counters.expired += 1;
                    self.expired_since_tick.fetch_add(1, Ordering::Relaxed);
                    settle.push((reply, b"+ACK"));
                } else {
                    pushed |= gs.local.push(Held {
                        class,
                        part,
                        sseq,
                        reply,
                        message: msg,
                        attempt: delivered.max(1) as u32,
                        touched_ms: now,
                    });
                }
            }
            if pushed {
                st.signal(p, g);
            }
        }
        for (reply, body) in settle {
            let _ = self.send(&reply, Bytes::from_static(body)).await;
        }
    }

    /// Pulls one (group, class, partition) into the local buffer until stopped.
    async fn pull_loop(
        self: Arc<Self>,
        p: ProjectId,
        g: ConsumerGroup,
        class: Class,
        part: u16,
        stop: Arc<AtomicBool>,
    ) {
        let Some(s) = self.streams.get(&class) else {
            return;
        };
        let name = wire::consumer_name(&p, &g, class, part);
        let consumer = loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.get_consumer::<pull::Config>(&name).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::debug!(consumer = %name, error = %e, "pull consumer not there yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let cap = self.cfg.buffer_per_partition.max(1);
        while !stop.load(Ordering::Relaxed) {
            let woken = self.room.notified();
            let room = {
                let st = self.lock();
                match st.projects.get(&p) {
                    Some(ps) if !ps.doc.paused => ps
                        .groups
                        .get(&g)
                        .map(|gs| cap.saturating_sub(gs.local.buffered(class, part))),
                    Some(_) => Some(0),
                    None => None,
                }
            };
            let Some(room) = room else {
                return;
            };
            if room < cap / 4 {
                // Pull in chunks, not a message at a time; leases wake us.
                let _ = tokio::time::timeout(Duration::from_millis(20), woken).await;
                continue;
            }
            let batch = consumer
                .batch()
                .max_messages(room)
                .expires(self.cfg.pull_expires)
                .messages()
                .await;
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(consumer = %name, error = %e, "pull failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut chunks = batch.ready_chunks(cap);
            'batch: while let Some(chunk) = chunks.next().await {
                let mut ms = Vec::with_capacity(chunk.len());
                let mut ended = false;
                for m in chunk {
                    match m {
                        Ok(m) => ms.push(m),
                        Err(e) => {
                            tracing::debug!(consumer = %name, error = %e, "pull batch ended");
                            ended = true;
                        }
                    }
                }
                self.pulled(&p, &g, class, part, ms).await;
                if ended {
                    break 'batch;
                }
            }
        }
    }

    fn spawn_pulls(
        self: &Arc<Self>,
        p: &ProjectId,
        g: &ConsumerGroup,
        part: u16,
        stop: &Arc<AtomicBool>,
    ) -> Vec<JoinHandle<()>> {
        Class::ALL
            .iter()
            .map(|class| {
                let inner = self.clone();
                let (p, g, stop, class) = (p.clone(), g.clone(), stop.clone(), *class);
                tokio::spawn(async move { inner.pull_loop(p, g, class, part, stop).await })
            })
            .collect()
    }

    async fn create_consumers(&self, p: &ProjectId, g: &ConsumerGroup) -> Result<(), BacklogError> {
        for class in Class::ALL {
            let Some(s) = self.streams.get(&class) else {
                continue;
            };
            for part in 0..self.partitions {
                let name = wire::consumer_name(p, g, class, part);
                s.get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: wire::subject(class, p, part),
                        deliver_policy: jetstream::consumer::DeliverPolicy::New,
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: self.cfg.ack_timeout,
                        max_deliver: -1,
                        max_ack_pending: (self.cfg.buffer_per_partition as i64 * 4).max(1024),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| nats_err("create consumer", e))?;
            }
        }
        Ok(())
    }

    /// Sum over the group's consumers: (num_pending, num_ack_pending).
    async fn consumer_figures(&self, p: &ProjectId, g: &ConsumerGroup) -> (u64, u64) {
        let (mut pending, mut ack_pending) = (0, 0);
        for class in Class::ALL {
            let Some(s) = self.streams.get(&class) else {
                continue;
            };
            for part in 0..self.partitions {
                if let Ok(i) = s
                    .consumer_info(wire::consumer_name(p, g, class, part))
                    .await
                {
                    pending += i.num_pending;
                    ack_pending += i.num_ack_pending as u64;
                }
            }
        }
        (pending, ack_pending)
    }

    /// Dead letters of a project from `from_seq` on (by the dead stream's sequence).
    async fn dead_from(
        &self,
        p: &ProjectId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, async_nats::HeaderMap)>, BacklogError> {
        let mut out = Vec::new();
        let mut seq = from_seq.max(1);
        while out.len() < limit {
            let m = self
                .dead
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(wire::dead_subjects_of(p))
                .send()
                .await;
            let m = match m {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(nats_err("read dead letters", e)),
            };
            seq = m.sequence + 1;
            let Ok(message) = wire::decode(&m.payload) else {
                continue;
            };
            let Some(group) = wire::header_str(Some(&m.headers), wire::H_DEAD_GROUP)
                .and_then(|g| g.parse::<ConsumerGroup>().ok())
            else {
                continue;
            };
            out.push((
                DeadLetter {
                    group,
                    message,
                    attempts: wire::header_i64(Some(&m.headers), wire::H_DEAD_ATTEMPTS).unwrap_or(0)
                        as u32,
                    dead_at_ms: wire::header_i64(Some(&m.headers), wire::H_DEAD_AT).unwrap_or(0),
                    seq: m.sequence,
                },
                m.headers,
            ));
        }
        Ok(out)
    }

    async fn dead_matching(
        &self,
        p: &ProjectId,
        id: &MessageId,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = self.dead_from(p, from, 256).await?;
            let Some(last) = page.last().map(|(d, _)| d.seq) else {
                break;
            };
            from = last + 1;
            out.extend(
                page.into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| &d.message.envelope.message_id == id),
            );
        }
        Ok(out)
    }

    async fn publish_all(
        &self,
        items: Vec<(String, async_nats::HeaderMap, Bytes)>,
    ) -> Result<(), BacklogError> {
        let mut acks = Vec::with_capacity(items.len());
        for (subject, h, body) in items {
            acks.push(
                self.js
                    .publish_with_headers(subject, h, body)
                    .await
                    .map_err(|e| nats_err("append", e))?,
            );
        }
        for a in acks {
            a.await.map_err(|e| nats_err("append", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Backlog for JetStreamBacklog {
    async fn append(&self, batch: Vec<SyncMessage>) -> Result<AppendOutcome, BacklogError> {
        let inner = &self.inner;
        let mut out = AppendOutcome::default();
        let mut items = Vec::with_capacity(batch.len());
        let mut docs: HashMap<ProjectId, Option<ProjectDoc>> = HashMap::new();
        for m in &batch {
            if m.envelope.payload.len() > inner.cfg.max_message_bytes {
                return Err(BacklogError::MessageTooLarge {
                    message_id: m.envelope.message_id.clone(),
                    size: m.envelope.payload.len(),
                    max: inner.cfg.max_message_bytes,
                });
            }
            if !wire::fits_header(&m.ordering_key) || !wire::fits_header(&m.envelope.topic) {
                return Err(BacklogError::InvalidMessage {
                    message_id: m.envelope.message_id.clone(),
                    reason: "ordering key or topic has a line break or edge blanks".into(),
                });
            }
            if !docs.contains_key(&m.project_id) {
                let d = inner.doc(&m.project_id).await?;
                docs.insert(m.project_id.clone(), d);
            }
        }
        let mut counted: Vec<(ProjectId, Vec<ConsumerGroup>)> = Vec::new();
        let mut discarded: HashMap<ProjectId, u64> = HashMap::new();
        {
            let st = inner.lock();
            for m in batch {
                let p = &m.project_id;
                let takers: Vec<&ConsumerGroup> = st
                    .projects
                    .get(p)
                    .map(|ps| {
                        ps.groups
                            .iter()
                            .filter(|(_, gs)| gs.spec.filter.takes(&m))
                            .map(|(g, _)| g)
                            .collect()
                    })
                    .unwrap_or_default();
                if takers.is_empty() {
                    out.discarded_no_group += 1;
                    *discarded.entry(p.clone()).or_default() += 1;
                    continue;
                }
                let all = st.projects.get(p).map(|ps| ps.groups.len()).unwrap_or(0);
                let doc = docs.get(p).cloned().flatten().unwrap_or_default();
                let class = Class::for_retention(inner.retention_ms(&doc));
                let part = wire::partition_of(&m.ordering_key, inner.partitions);
                let h = wire::headers(&m, (takers.len() < all).then_some(&takers[..]));
                counted.push((p.clone(), takers.into_iter().cloned().collect()));
                items.push((
                    wire::subject(class, p, part),
                    h,
                    Bytes::from(wire::body(&m)),
                ));
            }
        }
        out.stored = items.len();
        inner.publish_all(items).await?;
        let mut st = inner.lock();
        for (p, n) in discarded {
            st.projects.entry(p).or_default().discarded_no_group += n;
        }
        for (p, groups) in counted {
            for g in groups {
                if let Some(gs) = st.group_mut(&p, &g) {
                    gs.counters.appended += 1;
                }
            }
        }
        Ok(out)
    }

    async fn create_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        spec: &GroupSpec,
    ) -> Result<(), BacklogError> {
        let inner = &self.inner;
        if let Some(doc) = inner.doc(project).await? {
            if !doc.groups.contains_key(group.as_str())
                && doc.groups.len() >= MAX_GROUPS_PER_PROJECT
            {
                return Err(BacklogError::TooManyGroups {
                    project: project.clone(),
                    max: MAX_GROUPS_PER_PROJECT,
                });
            }
        }
        // Consumers first: a message routed to the group must find them (DeliverPolicy New).
        inner.create_consumers(project, group).await?;
        let gd = GroupDoc::from_spec(spec);
        let (p2, g2) = (project.clone(), group.clone());
        inner
            .update_doc(project, move |d| {
                if !d.groups.contains_key(g2.as_str()) && d.groups.len() >= MAX_GROUPS_PER_PROJECT {
                    return Err(BacklogError::TooManyGroups {
                        project: p2.clone(),
                        max: MAX_GROUPS_PER_PROJECT,
                    });
                }
                d.groups.insert(g2.to_string(), gd.clone());
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn delete_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let doc = inner.doc(project).await?;
        if !doc.is_some_and(|d| d.groups.contains_key(group.as_str())) {
            return Err(BacklogError::UnknownGroup {
                project: project.clone(),
                group: group.clone(),
            });
        }
        let (pending, ack_pending) = inner.consumer_figures(project, group).await;
        let owned: Vec<(u16, u64)> = {
            let st = inner.lock();
            st.projects
                .get(project)
                .and_then(|ps| ps.groups.get(group))
                .map(|gs| gs.owned.iter().map(|(p, o)| (*p, o.revision)).collect())
                .unwrap_or_default()
        };
        let g2 = group.clone();
        inner
            .update_doc(project, move |d| {
                d.groups.remove(g2.as_str());
                Ok(())
            })
            .await?;
        if let Some(ps) = inner.lock().projects.get_mut(project) {
            ps.dropped_by_group_delete += pending + ack_pending;
        }
        for class in Class::ALL {
            if let Some(s) = inner.streams.get(&class) {
                for part in 0..inner.partitions {
                    let _ = s
                        .delete_consumer(&wire::consumer_name(project, group, class, part))
                        .await;
                }
            }
        }
        for (part, rev) in owned {
            let _ = inner
                .owners
                .delete_expect_revision(wire::owner_key(project, group, part), Some(rev))
                .await;
        }
        let _ = inner
            .owners
            .delete(wire::member_key(project, group, &inner.node))
            .await;
        Ok(())
    }

    async fn groups(&self, project: &ProjectId) -> Result<Vec<GroupInfo>, BacklogError> {
        // A project nobody declared a group of has none (as in the embedded engine).
        let doc = self.inner.doc(project).await?.unwrap_or_default();
        Ok(doc
            .groups
            .iter()
            .filter_map(|(n, gd)| {
                Some(GroupInfo {
                    name: n.parse().ok()?,
                    spec: gd.spec()?,
                })
            })
            .collect())
    }

    async fn set_retention(
        &self,
        project: &ProjectId,
        retention: Duration,
    ) -> Result<(), BacklogError> {
        let ms = retention.as_millis().min(i64::MAX as u128) as i64;
        self.inner
            .update_doc(project, move |d| {
                d.retention_ms = Some(ms);
                Ok(())
            })
            .await?;
        // At once for what this node holds (the carry-over of a switch); what it has
        // not pulled yet is expired when pulled.
        self.inner.expire_held(project).await
    }

    async fn set_paused(&self, project: &ProjectId, paused: bool) -> Result<(), BacklogError> {
        self.inner
            .update_doc(project, move |d| {
                d.paused = paused;
                Ok(())
            })
            .await?;
        let mut st = self.inner.lock();
        let groups: Vec<ConsumerGroup> = st
            .projects
            .get(project)
            .map(|ps| ps.groups.keys().cloned().collect())
            .unwrap_or_default();
        for g in groups {
            st.signal(project, &g);
        }
        Ok(())
    }

    async fn lease(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        consumer: ConsumerId,
        max: usize,
    ) -> Result<Vec<Delivery>, BacklogError> {
        let inner = &self.inner;
        let unknown = || BacklogError::UnknownGroup {
            project: project.clone(),
            group: group.clone(),
        };
        let doc = inner.doc(project).await?.ok_or_else(unknown)?;
        if !doc.groups.contains_key(group.as_str()) {
            return Err(unknown());
        }
        let now = inner.clock.now_ms();
        let deadline = now + inner.cfg.ack_timeout.as_millis() as i64;
        let mut st = inner.lock();
        let st = &mut *st;
        let Some(gs) = st
            .projects
            .get_mut(project)
            .and_then(|ps| ps.groups.get_mut(group))
        else {
            return Err(unknown());
        };
        if gs.consumers.insert(consumer) {
            st.consumers
                .entry(consumer)
                .or_default()
                .insert((project.clone(), group.clone()));
            if !gs.member {
                inner.wake_owners.notify_one();
            }
        }
        if doc.paused || max == 0 {
            return Ok(Vec::new());
        }
        let closed = gs.closed_parts();
        let next_gen = &mut st.next_gen;
        let leased = gs.local.lease(consumer, max, &closed, now, deadline, || {
            *next_gen = next_gen.wrapping_add(1);
            *next_gen
        });
        let mut out = Vec::with_capacity(leased.len());
        for l in leased {
            if l.held.attempt > 1 {
                gs.counters.redelivered += 1;
            }
            out.push(Delivery {
                message: l.held.message,
                attempt: l.held.attempt,
                token: LeaseToken {
                    proj: 0,
                    group: 0,
                    gen: l.gen,
                    seq: l.held.sseq,
                },
                ack_deadline_ms: deadline,
            });
        }
        for d in &out {
            st.leases
                .insert(d.token.gen, (project.clone(), group.clone()));
        }
        if !out.is_empty() {
            inner.room.notify_waiters();
        }
        Ok(out)
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let h = {
            let mut st = inner.lock();
            let (p, g) = st.settle(token)?;
            if let Some(gs) = st.group_mut(&p, &g) {
                gs.counters.acked += 1;
            }
            st.signal(&p, &g);
            st.settled.take()
        };
        match h {
            Some(h) => inner.send(&h.reply, Bytes::from_static(b"+ACK")).await,
            None => Err(BacklogError::UnknownLease { seq: token.seq }),
        }
    }

    async fn nack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let unknown = BacklogError::UnknownLease { seq: token.seq };
        let buried = {
            let mut st = inner.lock();
            let (p, g) = st.leases.get(&token.gen).cloned().ok_or(unknown)?;
            let Some(gs) = st.group_mut(&p, &g) else {
                return Err(BacklogError::UnknownLease { seq: token.seq });
            };
            let Some(attempt) = gs.local.attempt_of(token.gen) else {
                return Err(BacklogError::UnknownLease { seq: token.seq });
            };
            gs.counters.nacked += 1;
            let spec = gs.spec.clone();
            let how = inner.failed(&mut st, &spec, attempt);
            st.leases.remove(&token.gen);
            let now = inner.clock.now_ms();
            let gs = st.group_mut(&p, &g);
            let buried = match (how, gs) {
                (Failed::Retry(ms), Some(gs)) => {
                    gs.local.retry_later(token.gen, now + ms, false);
                    None
                }
                (Failed::DeadLetter, Some(gs)) => gs
                    .local
                    .settle(token.gen)
                    .map(|(h, _)| (p.clone(), g.clone(), h)),
                (_, None) => None,
            };
            st.signal(&p, &g);
            buried
        };
        match buried {
            Some((p, g, h)) => inner.bury(&p, &g, h).await,
            None => Ok(()),
        }
    }

    async fn reject(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        let inner = &self.inner;
        let (p, g, h) = {
            let mut st = inner.lock();
            let (p, g) = st.settle(token)?;
            st.signal(&p, &g);
            let h = st.settled.take();
            (p, g, h)
        };
        match h {
            Some(h) => inner.bury(&p, &g, h).await,
            None => Err(BacklogError::UnknownLease { seq: token.seq }),
        }
    }

    async fn consumer_gone(&self, consumer: ConsumerId) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        let groups = st.consumers.remove(&consumer).unwrap_or_default();
        let mut n = 0;
        for (p, g) in groups {
            let gens = match st.group_mut(&p, &g) {
                Some(gs) => {
                    gs.consumers.remove(&consumer);
                    if gs.consumers.is_empty() {
                        inner.wake_owners.notify_one();
                    }
                    gs.local.requeue_consumer(consumer)
                }
                None => Vec::new(),
            };
            n += gens.len();
            for gen in gens {
                st.leases.remove(&gen);
            }
            st.signal(&p, &g);
        }
        Ok(n)
    }

    async fn tick(&self) -> Result<TickReport, BacklogError> {
        let inner = &self.inner;
        let now = inner.clock.now_ms();
        let touch_before = now - (inner.cfg.ack_timeout.as_millis() as i64 / 3).max(1);
        let mut buried = Vec::new();
        let mut touch = Vec::new();
        let mut acks = Vec::new();
        let mut timed_out = 0u64;
        let mut expired = 0u64;
        {
            let mut st = inner.lock();
            let st = &mut *st;
            let keys: Vec<(ProjectId, ConsumerGroup, i64)> = st
                .projects
                .iter()
                .flat_map(|(p, ps)| {
                    let r = self.inner.retention_ms(&ps.doc);
                    ps.groups.keys().map(move |g| (p.clone(), g.clone(), r))
                })
                .collect();
            for (p, g, retention) in keys {
                let Some(gs) = st.group_mut(&p, &g) else {
                    continue;
                };
                let (gone, replies) = gs.local.take_expired(now - retention);
                gs.counters.expired += replies.len() as u64;
                expired += replies.len() as u64;
                acks.extend(replies);
                let timed = gs.local.timed_out(now);
                gs.counters.timed_out += timed.len() as u64;
                timed_out += timed.len() as u64;
                let spec = gs.spec.clone();
                for gen in gone {
                    st.leases.remove(&gen);
                }

                for (gen, attempt) in timed {
                    let how = inner.failed(st, &spec, attempt);
                    let Some(gs) = st.group_mut(&p, &g) else {
                        break;
                    };
                    match how {
                        Failed::Retry(ms) => {
                            gs.local.retry_later(gen, now + ms, true);
                        }
                        Failed::DeadLetter => {
                            if let Some((h, _)) = gs.local.settle(gen) {
                                buried.push((p.clone(), g.clone(), h));
                            }
                            st.leases.remove(&gen);
                        }
                    }
                }
                let Some(gs) = st.group_mut(&p, &g) else {
                    continue;
                };
                touch.extend(gs.local.touch_stale(touch_before, now));
                if gs.local.has_due(now) {
                    st.signal(&p, &g);
                }
            }
        }
        for (p, g, h) in buried {
            inner.bury(&p, &g, h).await?;
        }
        for reply in acks {
            inner.send(&reply, Bytes::from_static(b"+ACK")).await?;
        }
        for reply in touch {
            inner.send(&reply, Bytes::from_static(b"+WPI")).await?;
        }
        Ok(TickReport {
            timed_out,
            expired: expired + inner.expired_since_tick.swap(0, Ordering::Relaxed),
        })
    }

    async fn dead_letters(
        &self,
        project: &ProjectId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let from = after_seq.map(|s| s.saturating_add(1)).unwrap_or(1);
        Ok(self
            .inner
            .dead_from(project, from, limit)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect())
    }

    async fn retry_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let found = inner.dead_matching(project, message_id).await?;
        if found.is_empty() {
            return Err(BacklogError::DeadLetterNotFound {
                project: project.clone(),
                message_id: message_id.clone(),
            });
        }
        let doc = inner.doc(project).await?.unwrap_or_default();
        let class = Class::for_retention(inner.retention_ms(&doc));
        for d in &found {
            let part = wire::partition_of(&d.message.ordering_key, inner.partitions);
            let mut h = wire::headers(&d.message, Some(&[&d.group]));
            h.insert(
                wire::H_MSG_ID,
                format!("{message_id}.retry.{}", d.seq).as_str(),
            );
            inner
                .publish_all(vec![(
                    wire::subject(class, project, part),
                    h,
                    Bytes::from(wire::body(&d.message)),
                )])
                .await?;
            inner
                .dead
                .delete_message(d.seq)
                .await
                .map_err(|e| nats_err("delete dead letter", e))?;
        }
        Ok(found.len())
    }

    async fn drop_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        let inner = &self.inner;
        let found = inner.dead_matching(project, message_id).await?;
        if found.is_empty() {
            return Err(BacklogError::DeadLetterNotFound {
                project: project.clone(),
                message_id: message_id.clone(),
            });
        }
        for d in &found {
            inner
                .dead
                .delete_message(d.seq)
                .await
                .map_err(|e| nats_err("delete dead letter", e))?;
        }
        Ok(found.len())
    }

    async fn set_keep_acknowledged(
        &self,
        _project: &ProjectId,
        keep: bool,
    ) -> Result<(), BacklogError> {
        // Limits retention keeps acknowledged messages until MaxAge: always on here.
        if keep {
            Ok(())
        } else {
            Err(BacklogError::Unsupported {
                op: "set_keep_acknowledged(false)",
            })
        }
    }

    async fn seek(
        &self,
        _project: &ProjectId,
        _group: &ConsumerGroup,
        _from_ms: i64,
    ) -> Result<SeekOutcome, BacklogError> {
        Err(BacklogError::Unsupported { op: "seek" })
    }

    async fn purge(
        &self,
        _project: &ProjectId,
        _group: &ConsumerGroup,
    ) -> Result<SeekOutcome, BacklogError> {
        Err(BacklogError::Unsupported { op: "purge" })
    }

    async fn find_message(
        &self,
        _project: &ProjectId,
        _message_id: &MessageId,
    ) -> Result<Option<MessageTrace>, BacklogError> {
        Err(BacklogError::Unsupported { op: "find_message" })
    }

    async fn device_messages(
        &self,
        _project: &ProjectId,
        _query: &MessageQuery,
    ) -> Result<Vec<MessageTrace>, BacklogError> {
        Err(BacklogError::Unsupported {
            op: "device_messages",
        })
    }

    async fn stats(&self, project: &ProjectId) -> Result<ProjectStats, BacklogError> {
        let inner = &self.inner;
        let doc = inner
            .doc(project)
            .await?
            .ok_or_else(|| BacklogError::UnknownProject {
                project: project.clone(),
            })?;
        // Settlements are published without waiting: let them reach the server first.
        let _ = inner.client.flush().await;
        let mut dead_counts: HashMap<String, u64> = HashMap::new();
        if let Ok(mut subjects) = inner
            .dead
            .info_with_subjects(wire::dead_subjects_of(project))
            .await
        {
            while let Some(Ok((s, n))) = subjects.next().await {
                dead_counts.insert(s, n as u64);
            }
        }
        let mut stored = 0u64;
        for class in Class::ALL {
            if let Some(s) = inner.streams.get(&class) {
                let filter = format!("iotsync.{}.{project}.*", class.token());
                if let Ok(mut subjects) = s.info_with_subjects(filter).await {
                    while let Some(Ok((_, n))) = subjects.next().await {
                        stored += n as u64;
                    }
                }
            }
        }
        let mut groups = Vec::new();
        for name in doc.groups.keys() {
            let Ok(g) = name.parse::<ConsumerGroup>() else {
                continue;
            };
            let (pending, ack_pending) = inner.consumer_figures(project, &g).await;
            let now = inner.clock.now_ms();
            let st = inner.lock();
            let gs = st.projects.get(project).and_then(|ps| ps.groups.get(&g));
            let c = gs.map(|gs| gs.counters).unwrap_or_default();
            groups.push(GroupStats {
                group: g.to_string(),
                stacked: pending + ack_pending,
                oldest_stacked_age_ms: gs
                    .and_then(|gs| gs.local.oldest_generate_time())
                    .map(|t| now - t),
                in_flight: gs.map(|gs| gs.local.in_flight() as u64).unwrap_or(0),
                retry_waiting: gs.map(|gs| gs.local.retry_waiting() as u64).unwrap_or(0),
                dead_letters: dead_counts
                    .get(&wire::dead_subject(project, &g))
                    .copied()
                    .unwrap_or(0),
                consumers: gs.map(|gs| gs.consumers.len() as u64).unwrap_or(0),
                appended_total: c.appended,
                acked_total: c.acked,
                redelivered_total: c.redelivered,
                expired_total: c.expired,
                rejected_total: c.rejected,
                nacked_total: c.nacked,
                timed_out_total: c.timed_out,
                unreadable_total: 0,
                dropped_total: 0,
                replayed_total: 0,
            });
        }
        let st = inner.lock();
        let ps = st.projects.get(project);
        Ok(ProjectStats {
            project: project.to_string(),
            paused: doc.paused,
            retention_ms: inner.retention_ms(&doc),
            stored_messages: stored,
            discarded_no_group: ps.map(|p| p.discarded_no_group).unwrap_or(0),
            dropped_by_group_delete: ps.map(|p| p.dropped_by_group_delete).unwrap_or(0),
            keep_acknowledged: true,
            groups,
        })
    }

    fn watch(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<AvailabilityWatch, BacklogError> {
        let mut st = self.inner.lock();
        let tx = st
            .watches
            .entry((project.clone(), group.clone()))
            .or_insert_with(|| watch::channel(0).0);
        let rx = tx.subscribe();
        // A watcher is a consumer to be: the node takes partitions of the group.
        self.inner.wake_owners.notify_one();
        Ok(AvailabilityWatch::from_receiver(rx))
    }
}
