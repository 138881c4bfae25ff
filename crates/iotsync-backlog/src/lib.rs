//! iotsync-backlog: the durable backlog between ingest and delivery (SPEC §5).
//!
//! Producers `append` batches of [`SyncMessage`]s; each consumer group of the message's
//! project whose filter takes it (routing at append: [`GroupSpec`]) receives it, if it
//! was appended after the group was declared; consumers `lease` deliveries within their
//! credit and settle each with `ack`, `nack` (retry by the group's [`GroupRetry`]) or
//! `reject` (dead letter). Leases not settled within the ack timeout, and messages whose
//! consumer disconnected, are delivered again. Messages older than the project's
//! retention are expired and counted. The backlog knows nothing of channels or sync
//! methods.
//!
//! The [`Backlog`] trait is what the dispatcher uses; [`EmbeddedBacklog`] implements it
//! on a segmented append-only log with group commit (see `docs/adr/0002-backlog.md`);
//! [`JetStreamBacklog`] implements it on NATS JetStream (`docs/adr/0013-jetstream-backlog.md`).
//!
//! Guarantees of the embedded engine:
//! - `append` returns after the batch is on disk (fdatasync); concurrent appends share
//!   one sync (group commit).
//! - Delivery is at-least-once. Settlements (ack, release, reject) are written with the
//!   next commit, or on their own after `settle_flush_interval` (10 ms) or
//!   `settle_flush_bytes`; nobody waits for them. A crash may lose the settlements of
//!   that last interval, whose messages are delivered again.
//! - Within a group, messages of one ordering key go to one consumer at a time (sticky
//!   while any is in flight), several at once up to its credit, in append order; another
//!   consumer gets the key once everything the first had of it is settled. Only a
//!   redelivery (nack, time-out, lost connection, a dead letter retried) may overtake.
//! - Attempt counts are durable: lease records (one per run of consecutive messages)
//!   are written lazily like settlements, so a message in flight at a clean stop says 2
//!   on its next delivery (a crash may lose the last flush interval's lease records).
//! - Memory per stacked message: a 24-byte slot, plus 8 bytes while parked behind its
//!   ordering key; bodies stay on disk.

mod codec;
mod config;
mod engine;
mod error;
mod index;
mod jetstream;
mod recovery;
mod segment;
mod types;
mod writer;

use std::time::Duration;

use async_trait::async_trait;
use iotsync_core::{ConsumerGroup, MessageId, ProjectId, SyncMessage};

pub use config::{BacklogConfig, RetryPolicy};
pub use engine::{segment_files, EmbeddedBacklog};
pub use error::BacklogError;
pub use index::MAX_GROUPS_PER_PROJECT;
pub use jetstream::{
    nats_server_binary, wire_format, JetStreamBacklog, JetStreamConfig, NatsTestCluster,
    NatsTestServer,
};
pub use types::{
    AppendOutcome, AvailabilityWatch, ConsumerId, DamagedRange, DeadLetter, Delivery, GroupInfo,
    GroupMessageState, GroupRetry, GroupSpec, GroupStats, IndexMemory, LeaseToken, MessageQuery,
    MessageState, MessageTrace, ProjectStats, RecoveryReport, SeekOutcome, TickReport,
};

/// The durable backlog, as the dispatcher and the REST figures see it. Object-safe:
/// hold it as `Arc<dyn Backlog>`.
#[async_trait]
pub trait Backlog: Send + Sync + 'static {
    /// Stores a batch; durable when it returns. Each message is stored for the groups of
    /// its project whose filter takes it (routing at append); a message no group takes
    /// is counted (`discarded_no_group`) and not stored (nobody could receive it).
    async fn append(&self, batch: Vec<SyncMessage>) -> Result<AppendOutcome, BacklogError>;

    /// Declares a consumer group, or changes the spec of an existing one (idempotent).
    /// It receives every message its filter takes that is appended from now on; a changed
    /// filter applies to messages appended from now on. Durable when it returns.
    async fn create_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        spec: &GroupSpec,
    ) -> Result<(), BacklogError>;

    /// Deletes a group; what it still owed is dropped and counted
    /// (`ProjectStats::dropped_by_group_delete`).
    async fn delete_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<(), BacklogError>;

    async fn groups(&self, project: &ProjectId) -> Result<Vec<GroupInfo>, BacklogError>;

    /// Retention from generateTime; applies at once to messages already stacked (e.g. the
    /// carry-over when a project switches from HTTP/2 to AMQP).
    async fn set_retention(
        &self,
        project: &ProjectId,
        retention: Duration,
    ) -> Result<(), BacklogError>;

    /// A paused project (sync disabled) gets no leases; its messages stay until retention.
    async fn set_paused(&self, project: &ProjectId, paused: bool) -> Result<(), BacklogError>;

    /// Up to `max` deliveries for `consumer` (the caller passes its remaining credit).
    /// Empty when nothing is available: await [`Backlog::watch`] and call again.
    /// Several messages of one ordering key may be in flight at once, all to the same
    /// consumer and in append order (sticky while any is in flight).
    async fn lease(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        consumer: ConsumerId,
        max: usize,
    ) -> Result<Vec<Delivery>, BacklogError>;

    /// Done: the message is removed for this group.
    async fn ack(&self, token: &LeaseToken) -> Result<(), BacklogError>;

    /// Not now (AMQP released/modified, HTTP/2 commit failure): redelivered after the
    /// group's retry policy's delay, or dead-lettered once a `GroupRetry::Schedule`'s
    /// deliveries are used up.
    async fn nack(&self, token: &LeaseToken) -> Result<(), BacklogError>;

    /// Rejected (AMQP rejected): moved to the project's dead-letter list.
    async fn reject(&self, token: &LeaseToken) -> Result<(), BacklogError>;

    /// The consumer's connection dropped: its in-flight deliveries are available to the
    /// group's other consumers at once. Returns how many were released.
    async fn consumer_gone(&self, consumer: ConsumerId) -> Result<usize, BacklogError>;

    /// Timers, by the engine's clock: leases past their ack deadline go to the retry
    /// queue; messages past retention are expired; groups with redeliveries due are
    /// signalled. Call it periodically (e.g. every 100 ms–1 s).
    async fn tick(&self) -> Result<TickReport, BacklogError>;

    /// Dead letters of a project in sequence order, after `after_seq`, at most `limit`.
    async fn dead_letters(
        &self,
        project: &ProjectId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BacklogError>;

    /// Back to its group(s) as a fresh delivery. Returns how many groups it was dead in.
    async fn retry_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError>;

    /// Removes a dead letter for good. Returns how many groups it was dead in.
    async fn drop_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError>;

    /// Whether the project's acknowledged messages stay stored until retention, so a
    /// seek can deliver them again (off: freed once no group owes them). Durable.
    async fn set_keep_acknowledged(
        &self,
        project: &ProjectId,
        keep: bool,
    ) -> Result<(), BacklogError>;

    /// Seeks a group to a time: it receives again, in append order per ordering key,
    /// every message it takes that is still stored and was produced at or after
    /// `from_ms`, acknowledged or not; what it owed from before is dropped and counted
    /// (`dropped_total`). In-flight deliveries are settled as dropped (their tokens are
    /// unknown leases from now on). Dead letters stay. Before the oldest stored message
    /// means from the oldest; later than now is `SeekInFuture`. Durable when it returns.
    async fn seek(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        from_ms: i64,
    ) -> Result<SeekOutcome, BacklogError>;

    /// Drops everything the group owes (dead letters excepted), counted in
    /// `dropped_total`; in-flight deliveries are settled as dropped. Durable.
    async fn purge(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<SeekOutcome, BacklogError>;

    /// A stored message of the project by id, with its state in every group that took
    /// it; `None` if the project holds no such message (never had it, or it is gone
    /// past retention and its trace time).
    async fn find_message(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<Option<MessageTrace>, BacklogError>;

    /// A device's stored messages produced in a time range, newest first, at most
    /// `query.limit`.
    async fn device_messages(
        &self,
        project: &ProjectId,
        query: &MessageQuery,
    ) -> Result<Vec<MessageTrace>, BacklogError>;

    /// Figures of the project and each of its groups.
    async fn stats(&self, project: &ProjectId) -> Result<ProjectStats, BacklogError>;

    /// A signal for "messages may be available" in (project, group).
    fn watch(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<AvailabilityWatch, BacklogError>;

    /// Memory of the engine's index, if it keeps one (figures).
    fn index_memory(&self) -> Option<IndexMemory> {
        None
    }
}
