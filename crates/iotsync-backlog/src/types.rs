//! Values that cross the `Backlog` trait.

use std::fmt;
use std::path::PathBuf;

use iotsync_core::{ConsumerGroup, SyncMessage};
use serde::Serialize;
use tokio::sync::watch;

use crate::error::BacklogError;

/// One live consumer (a connection / link / stream) of a group. The caller allocates
/// them; they must be unique among live consumers of this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConsumerId(pub u64);

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "consumer-{}", self.0)
    }
}

/// Names one lease: what `ack`, `nack` and `reject` take back. Opaque and cheap to copy.
/// A token stays valid for acking after its lease timed out (a late ack still counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    pub(crate) proj: u32,
    pub(crate) group: u8,
    pub(crate) gen: u32,
    pub(crate) seq: u64,
}

impl LeaseToken {
    /// The message's sequence number within its project (stable across redeliveries).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A message handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub message: SyncMessage,
    /// 1 for the first delivery to this group, 2 for the first redelivery, …
    /// Durable: a message in flight when the engine stopped says 2 (or more) next time.
    pub attempt: u32,
    pub token: LeaseToken,
    /// When the lease times out (ms since the epoch, from the engine's clock).
    pub ack_deadline_ms: i64,
}

/// What `append` did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AppendOutcome {
    /// Messages now durable in the backlog.
    pub stored: usize,
    /// Messages no group of their project takes (no group, or no filter matches): nobody
    /// could ever receive them, so they are counted (project figure `discarded_no_group`)
    /// and not stored.
    pub discarded_no_group: usize,
}

/// Figures of one consumer group (SPEC §5). Totals are counters: the caller derives rates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupStats {
    pub group: String,
    /// Messages the group still has to acknowledge (in flight and waiting included,
    /// dead letters excluded).
    pub stacked: u64,
    /// Age of the oldest stacked message (now − generateTime), if any.
    pub oldest_stacked_age_ms: Option<i64>,
    pub in_flight: u64,
    /// Messages waiting for their retry time (nacked or timed out).
    pub retry_waiting: u64,
    pub dead_letters: u64,
    /// Consumers that leased from this group and are not gone.
    pub consumers: u64,
    pub appended_total: u64,
    pub acked_total: u64,
    /// Deliveries with attempt > 1.
    pub redelivered_total: u64,
    pub expired_total: u64,
    pub rejected_total: u64,
    pub nacked_total: u64,
    pub timed_out_total: u64,
    /// Messages dropped because their record could not be read back (disk corruption
    /// after start); always logged.
    pub unreadable_total: u64,
    /// Messages the group owed and dropped by a purge or a seek.
    pub dropped_total: u64,
    /// Messages owed again by a seek.
    pub replayed_total: u64,
}

/// Figures of one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProjectStats {
    pub project: String,
    pub paused: bool,
    pub retention_ms: i64,
    /// Distinct messages still held for at least one group (or as a dead letter).
    pub stored_messages: u64,
    pub discarded_no_group: u64,
    /// (message, group) pairs a group still owed when it was deleted.
    pub dropped_by_group_delete: u64,
    /// Acknowledged messages stay stored until retention (seek can replay them).
    pub keep_acknowledged: bool,
    pub groups: Vec<GroupStats>,
}

/// A message in a project's dead-letter list.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub group: ConsumerGroup,
    pub message: SyncMessage,
    /// Deliveries before it was rejected.
    pub attempts: u32,
    pub dead_at_ms: i64,
    /// Pass as `after_seq` to list the next page.
    pub seq: u64,
}

/// What one `tick` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TickReport {
    /// Leases past their ack deadline, moved to the retry queue.
    pub timed_out: u64,
    /// (message, group) pairs removed by retention.
    pub expired: u64,
}

/// Where the index's per-message slots are: in memory (bounded by
/// `BacklogConfig::index_memory_bytes`) or in the spill file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexMemory {
    pub resident_bytes: u64,
    pub spilled_bytes: u64,
}

/// A damaged stretch of a segment file found at open. The bytes are skipped; everything
/// before and after that still checks out is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedRange {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What `open` found and rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub projects: usize,
    pub groups: usize,
    /// Distinct messages held again after recovery.
    pub messages: u64,
    pub dead_letters: u64,
    /// Damage in the middle of files: data in these ranges is lost.
    pub damaged: Vec<DamagedRange>,
    /// An incomplete last record of the newest segment (a crash mid-write): cut off. Its
    /// append had not returned, so nothing acknowledged to a producer is lost.
    pub torn_tail: Option<DamagedRange>,
    pub duration_ms: u64,
}

impl RecoveryReport {
    /// No damage found (a torn tail after a crash is normal and not counted).
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty()
    }
}

/// "New messages may be available" for one (project, group): await `changed`, then
/// lease. Never misses a signal sent after it was created; spurious wake-ups are possible.
#[derive(Debug, Clone)]
pub struct AvailabilityWatch {
    pub(crate) rx: watch::Receiver<u64>,
}

impl AvailabilityWatch {
    /// Waits for the next signal. `Closed` once the group is deleted or the engine dropped.
    pub async fn changed(&mut self) -> Result<(), BacklogError> {
        self.rx.changed().await.map_err(|_| BacklogError::Closed)
    }

    /// Builds a watch from a receiver (for other engines and tests).
    pub fn from_receiver(rx: watch::Receiver<u64>) -> Self {
        Self { rx }
    }
}

/// How a group's failed deliveries (released, timed out) are retried.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum GroupRetry {
    /// The engine's [`crate::RetryPolicy`] (exponential backoff with jitter), forever
    /// (until retention).
    #[default]
    Backoff,
    /// A fixed schedule: the n-th redelivery waits `delays_ms[n-1]` (the last entry
    /// repeats); after `max_deliveries` deliveries have failed the message is
    /// dead-lettered (e.g. the legacy HTTP push: 10 s, 30 s, …, 16 pushes).
    Schedule {
        delays_ms: Vec<u64>,
        max_deliveries: u32,
    },
}

impl GroupRetry {
    /// The legacy HTTP push schedule of SPEC §8: first 10 s, then 30 s, 1 min, 2 min, …
    /// (the classic 16-level table, whose 15 steps separate 16 pushes), then dead letter.
    pub fn legacy_http() -> Self {
        GroupRetry::Schedule {
            delays_ms: [
                10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600,
            ]
            .iter()
            .map(|s| s * 1000)
            .collect(),
            max_deliveries: 16,
        }
    }
}

/// What a consumer group is: what it takes (applied at append) and how it retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GroupSpec {
    pub filter: iotsync_core::GroupFilter,
    pub retry: GroupRetry,
}

impl GroupSpec {
    /// Takes everything, default retry policy.
    pub fn all() -> Self {
        Self::default()
    }
}

/// A group as the engine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: ConsumerGroup,
    pub spec: GroupSpec,
}

/// What a `seek` (or `purge`) did to a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeekOutcome {
    /// The time sought to (ms since the epoch; `None` for a purge).
    pub from_ms: Option<i64>,
    /// Messages the group owes again that it had acknowledged or dropped before.
    pub replayed: u64,
    /// Messages the group owed and now will not get (produced before `from`, or all of
    /// them for a purge); counted in the group's `dropped_total`.
    pub dropped: u64,
    /// Deliveries in flight when it happened: settled as dropped (a late ack of one is
    /// refused as an unknown lease), or delivered again if the seek covers them.
    pub in_flight: u64,
    /// What the group owes now (dead letters excluded).
    pub owed: u64,
}

/// Where a message stands for one group that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Waiting for delivery (never delivered since the engine opened, or parked behind
    /// an earlier message of its device).
    Stacked,
    InFlight {
        consumer: ConsumerId,
        ack_deadline_ms: i64,
    },
    /// Waiting for a redelivery due at `due_ms` (0: at once).
    RetryWaiting {
        due_ms: i64,
    },
    DeadLettered {
        at_ms: i64,
    },
    /// Acknowledged; `at_ms` is when the message was last acknowledged by any group
    /// (second resolution; unknown after a restart).
    Acknowledged {
        at_ms: Option<i64>,
    },
    /// Dropped without delivery by a purge or a seek past it.
    Dropped,
    /// Past retention before this group acknowledged it.
    Expired,
}

/// One group's view of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMessageState {
    pub group: ConsumerGroup,
    pub state: MessageState,
    /// Deliveries to this group so far (0: not delivered since the last seek / open).
    pub attempts: u32,
}

/// A message found by id or by device, with its state in every group that took it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageTrace {
    /// The message's sequence number in its project (pass as `before_seq` to page on).
    pub seq: u64,
    pub message: SyncMessage,
    /// Past retention: kept only as a trace until `BacklogConfig::expired_trace` later.
    pub expired: bool,
    pub groups: Vec<GroupMessageState>,
}

/// A device's messages in a time range, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageQuery {
    /// The device's ordering key (`iotsync_core::device_ordering_key`).
    pub ordering_key: String,
    /// Produced at or after (ms since the epoch).
    pub from_ms: i64,
    /// Produced at or before (ms since the epoch).
    pub to_ms: i64,
    /// Only messages with a smaller seq (the previous page's last).
    pub before_seq: Option<u64>,
    pub limit: usize,
}
