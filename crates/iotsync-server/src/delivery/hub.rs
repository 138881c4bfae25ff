//! The consumer hub: attaches consumers to (project, group), leases deliveries within
//! their credit, settles outcomes, and closes a project's consumers when its sync is
//! disabled or its method switched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use iotsync_backlog::{AvailabilityWatch, Backlog, BacklogError, ConsumerId, Delivery, LeaseToken};
use iotsync_core::{ConsumerGroup, ProjectId, SharedClock};

use super::{ChannelKind, Outcome};

/// How long a consumer that took the group's last lease lets another waiting consumer of
/// the group go first when new messages arrive (see [`ConsumerLink::next`]).
const FAIR_TURN: Duration = Duration::from_millis(1);

/// What the consumers of one (project, group) share to take turns when they wait.
#[derive(Debug, Default)]
struct GroupTurn {
    /// Consumers of the group waiting for messages right now.
    waiting: AtomicUsize,
    /// The consumer that leased last.
    last: AtomicU64,
}

/// Counts a consumer as waiting until dropped (also when `next` is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the platform closed a consumer's connection; channels put it in their close frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CloseReason {
    /// Stable code, e.g. `sync.disabled`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("data synchronization is not enabled for this project")]
    SyncDisabled,
    #[error(transparent)]
    Backlog(#[from] BacklogError),
    #[error("declaring the consumer group failed: {0}")]
    Group(#[from] super::groups::GroupError),
}

/// A connected consumer, as `GET …/sync/consumers` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerInfo {
    pub consumer_id: u64,
    pub group: String,
    /// "amqp", "http2" or "webhook".
    #[schema(value_type = String)]
    pub channel: ChannelKind,
    pub remote: String,
    pub client_id: String,
    pub connected_at: i64,
}

struct Entry {
    info: ConsumerInfo,
    close: watch::Sender<Option<CloseReason>>,
}

pub struct DeliveryHub {
    /// The channels' own counters, shown on `/metrics`.
    pub counters: Arc<ChannelCounters>,
    backlog: Arc<dyn Backlog>,
    groups: Arc<super::groups::GroupDirectory>,
    clock: SharedClock,
    next_id: AtomicU64,
    consumers: Mutex<HashMap<ProjectId, HashMap<u64, Entry>>>,
    turns: Mutex<HashMap<(ProjectId, ConsumerGroup), Weak<GroupTurn>>>,
}

/// Counters of work the channels do on their own (not backlog state).
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Client disposition frames merged into a range before the AMQP engine saw them.
    pub amqp_dispositions_merged: AtomicU64,
}

/// Who is attaching, for the consumer list.
#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub project: ProjectId,
    pub group: ConsumerGroup,
    pub channel: ChannelKind,
    pub remote: String,
    pub client_id: String,
}

impl DeliveryHub {
    pub fn new(
        backlog: Arc<dyn Backlog>,
        groups: Arc<super::groups::GroupDirectory>,
        clock: SharedClock,
    ) -> Arc<Self> {
        Arc::new(Self {
            backlog,
            groups,
            clock,
            // Unique among this process's live consumers, which is what the engine needs
            // (leases of a previous run are redelivered at open).
            next_id: AtomicU64::new(0),
            counters: Arc::default(),
            consumers: Mutex::new(HashMap::new()),
            turns: Mutex::new(HashMap::new()),
        })
    }

    /// Attaches a consumer: declares the group if this is its first connect (it takes
    /// everything and receives messages from now on), registers the consumer for the
    /// project's close signals.
    pub async fn attach(self: &Arc<Self>, req: AttachRequest) -> Result<ConsumerLink, AttachError> {
        let actor = super::admission::consumer_actor(req.channel);
        self.groups.ensure(&req.project, &req.group, actor).await?;
        let watch = self.backlog.watch(&req.project, &req.group)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = watch::channel(None);
        let info = ConsumerInfo {
            consumer_id: id,
            group: req.group.to_string(),
            channel: req.channel,
            remote: req.remote,
            client_id: req.client_id,
            connected_at: self.clock.now_ms(),
        };
        self.consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(req.project.clone())
            .or_default()
            .insert(id, Entry { info, close: tx });
        tracing::info!(project = %req.project, group = %req.group, consumer = id, channel = ?req.channel, "consumer attached");
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            turns.retain(|_, t| t.strong_count() > 0);
            let key = (req.project.clone(), req.group.clone());
            match turns.get(&key).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    let t = Arc::new(GroupTurn::default());
                    turns.insert(key, Arc::downgrade(&t));
                    t
                }
            }
        };
        Ok(ConsumerLink {
            turn,
            hub: self.clone(),
            project: req.project,
            group: req.group,
            id: ConsumerId(id),
            watch,
            closed: rx,
            detached: false,
        })
    }

    /// Closes the project's consumers (of one channel kind, or all) with a reason.
    pub fn close_project(
        &self,
        project: &ProjectId,
        only: Option<ChannelKind>,
        reason: CloseReason,
    ) -> usize {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        if let Some(m) = consumers.get(project) {
            for e in m.values() {
                if only.is_none_or(|k| k == e.info.channel) {
                    let _ = e.close.send(Some(reason.clone()));
                    n += 1;
                }
            }
        }
        if n > 0 {
            tracing::info!(project = %project, closed = n, code = reason.code, "closing consumers");
        }
        n
    }

    /// Projects with a consumer connected here.
    pub fn projects_with_consumers(&self) -> Vec<ProjectId> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        consumers.keys().cloned().collect()
    }

    pub fn consumers(&self, project: &ProjectId) -> Vec<ConsumerInfo> {
        let consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<ConsumerInfo> = consumers
            .get(project)
            .map(|m| m.values().map(|e| e.info.clone()).collect())
            .unwrap_or_default();
        v.sort_by_key(|c| c.consumer_id);
        v
    }

    fn forget(&self, project: &ProjectId, id: u64) {
        let mut consumers = self.consumers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = consumers.get_mut(project) {
            m.remove(&id);
            if m.is_empty() {
                consumers.remove(project);
            }
        }
    }
}

/// One consumer's handle: lease within credit, settle, learn when the platform closes it.
/// Detach (or drop) it when the connection ends: its unsettled deliveries go back to the
/// group at once.
pub struct ConsumerLink {
    turn: Arc<GroupTurn>,
    hub: Arc<DeliveryHub>,
    project: ProjectId,
    group: ConsumerGroup,
    id: ConsumerId,
    watch: AvailabilityWatch,
    closed: watch::Receiver<Option<CloseReason>>,
    detached: bool,
}

impl ConsumerLink {
    pub fn id(&self) -> ConsumerId {
        self.id
    }
    pub fn project(&self) -> &ProjectId {
        &self.project
    }
    pub fn group(&self) -> &ConsumerGroup {
        &self.group
    }

    /// The close reason, if the platform closed this consumer.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.borrow().clone()
    }

    /// Waits for up to `max` deliveries (at least one), or returns the close reason.
    /// `max` is the consumer's remaining credit.
    ///
    /// Consumers of a group that wait together take turns: new messages wake them all,
    /// and the one that leased last lets the others try first (for [`FAIR_TURN`]), so a
    /// trickle of messages is spread over the group's consumers instead of going to
    /// whichever is woken first. A busy consumer never waits here: it finds messages.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Delivery>, LinkEnd> {
        loop {
            if let Some(r) = self.close_reason() {
                return Err(LinkEnd::Closed(r));
            }
            let got = self
                .hub
                .backlog
                .lease(&self.project, &self.group, self.id, max.max(1))
                .await
                .map_err(LinkEnd::Backlog)?;
            if !got.is_empty() {
                self.turn.last.store(self.id.0, Ordering::SeqCst);
                return Ok(got);
            }
            {
                let _waiting = Waiting::new(&self.turn.waiting);
                tokio::select! {
                    r = self.watch.changed() => r.map_err(LinkEnd::Backlog)?,
                    _ = self.closed.changed() => {}
                }
            }
            if self.turn.last.load(Ordering::SeqCst) == self.id.0
                && self.turn.waiting.load(Ordering::SeqCst) > 0
            {
                tokio::time::sleep(FAIR_TURN).await;
            }
        }
    }

    /// Resolves when the platform closes this consumer.
    pub async fn closed(&mut self) -> CloseReason {
        loop {
            if let Some(r) = self.close_reason() {
                return r;
            }
            if self.closed.changed().await.is_err() {
                return CloseReason {
                    code: "server.shutdown",
                    message: "the server is shutting down".into(),
                };
            }
        }
    }

    pub async fn settle(&self, token: &LeaseToken, outcome: Outcome) -> Result<(), BacklogError> {
        let b = &self.hub.backlog;
        match outcome {
            Outcome::Accepted => b.ack(token).await,
            Outcome::Released => b.nack(token).await,
            Outcome::Rejected => b.reject(token).await,
        }
    }

    /// A cloneable handle that settles this consumer's deliveries, for channels that
    /// settle on another task than the one leasing (e.g. while it waits for credit).
    pub fn settler(&self) -> LinkSettler {
        LinkSettler {
            backlog: self.hub.backlog.clone(),
        }
    }

    /// The connection ended: unsettled deliveries go back to the group at once.
    pub async fn detach(mut self) {
        self.detached = true;
        self.hub.forget(&self.project, self.id.0);
        match self.hub.backlog.consumer_gone(self.id).await {
            Ok(n) => {
                tracing::info!(project = %self.project, consumer = self.id.0, released = n, "consumer detached")
            }
            Err(e) => tracing::warn!(error = %e, "consumer_gone failed"),
        }
    }
}

impl Drop for ConsumerLink {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.hub.forget(&self.project, self.id.0);
        let backlog = self.hub.backlog.clone();
        let id = self.id;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = backlog.consumer_gone(id).await;
            });
        }
    }
}

/// Settles deliveries of one consumer (see [`ConsumerLink::settler`]).
#[derive(Clone)]
pub struct LinkSettler {
    backlog: Arc<dyn Backlog>,
}

impl LinkSettler {
    pub async fn settle(&self, token: &LeaseToken, outcome: Outcome) -> Result<(), BacklogError> {
        match outcome {
            Outcome::Accepted => self.backlog.ack(token).await,
            Outcome::Released => self.backlog.nack(token).await,
            Outcome::Rejected => self.backlog.reject(token).await,
        }
    }
}

/// Why `next` stopped.
#[derive(Debug)]
pub enum LinkEnd {
    Closed(CloseReason),
    Backlog(BacklogError),
}
