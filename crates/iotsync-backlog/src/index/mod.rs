//! The index: per project its slots (one per appended message, 24 bytes, in chunks of
//! which only a bounded number stays in memory: `slots.rs`), per group its cursor,
//! leases, retry queue, per-key order and dead letters.
//! No I/O: every change that must survive a restart is emitted as a record into an
//! [`Enc`] buffer *under the same lock*, so the log order is the index order.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - a slot's `owners` bit g is set iff group g still owes the message (in flight,
//!   waiting, parked, fresh, or dead-lettered);
//! - every owed message of a group with `pseq < cursor` is in exactly one of
//!   `in_flight`, `retry`, a `keys` park queue, or `dead`; owed messages at or past the
//!   cursor are "fresh" (never delivered since open);
//! - per group and ordering key, the messages holding the key (in flight or waiting)
//!   are counted by the key's [`KeyHold`]; a hold exists iff that count is > 0. Fresh
//!   messages of a held key go only to the hold's consumer (several in flight at once,
//!   in append order) while nothing of the key is parked; otherwise they wait parked,
//!   in append order, and go to the holder (or, once the key is free, to whoever
//!   leases next) before anything later of that key.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use iotsync_core::{ConsumerGroup, ProjectId, SyncMessage};
use tokio::sync::watch;

use crate::codec::{key_hash, DeadMark, Enc, GroupCounters, GroupSnapshot, ProjectSnapshot};
use crate::config::BacklogConfig;
use crate::types::{ConsumerId, GroupSpec, GroupStats, LeaseToken, ProjectStats};

mod delivery;
mod ops;
mod replay;
mod slots;
#[cfg(test)]
mod tests;
mod verify;

/// Groups per project: owners are a 32-bit mask.
pub const MAX_GROUPS_PER_PROJECT: usize = 32;
pub(crate) const UNWRITTEN: u32 = u32::MAX;
use crate::types::GroupRetry;
pub(crate) use ops::{ScanStep, PURGE_FROM, SLACK_MS};
pub(crate) use slots::SpillPool;
use slots::{Slots, CHUNK};
/// Slot times are seconds since 2020-01-01 (u32 lasts until 2156).
const EPOCH_S: i64 = 1_577_836_800;

pub(crate) fn gen_s(ms: i64) -> u32 {
    (ms.div_euclid(1000) - EPOCH_S).clamp(0, u32::MAX as i64) as u32
}

/// Messages with `gen_s < cutoff_s(now, retention)` are expired: never before
/// `generateTime + retention`, at most one second after.
pub(crate) fn cutoff_s(now_ms: i64, retention_ms: i64) -> u32 {
    gen_s(now_ms.saturating_sub(retention_ms))
}

/// One appended message, as small as it can be: where its record is, what routing
/// needs, and what seek, purge and lookups need (issue 14). Bodies stay on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub seg: u32,
    pub off: u32,
    pub len: u32,
    pub key: u32,
    pub gen_s: u32,
    /// Groups that still owe it (in flight, waiting, parked, fresh or dead-lettered).
    pub owners: u32,
    /// Groups that took it at append (routing), kept after they acknowledge it while the
    /// project keeps acknowledged messages: a seek makes them owe it again.
    pub takers: u32,
    /// Groups that dropped it without delivery (purge, seek); once the slot is
    /// `EXPIRED`: the groups that still owed it at expiry.
    pub dropped: u32,
    /// When a group last acknowledged it (`gen_s` units, 0 = never).
    pub acked_s: u32,
    /// Bits 0–9: the milliseconds of generateTime; bit 15: `EXPIRED`.
    pub meta: u16,
    pub id_hash: u16,
}

/// `Slot::meta`: past retention; kept only as a trace (lookups answer "expired") until
/// `BacklogConfig::expired_trace` later.
pub(crate) const EXPIRED: u16 = 1 << 15;

impl Slot {
    /// Still stored: owed, kept after acknowledgement, or kept as an expired trace.
    pub fn held(&self) -> bool {
        self.owners != 0 || self.takers != 0 || self.meta & EXPIRED != 0
    }

    pub fn expired(&self) -> bool {
        self.meta & EXPIRED != 0
    }

    /// generateTime in ms since the epoch.
    pub fn gen_ms(&self) -> i64 {
        (self.gen_s as i64 + EPOCH_S) * 1000 + (self.meta & 0x3FF) as i64
    }
}

pub(crate) fn slot_meta(generate_time_ms: i64) -> u16 {
    generate_time_ms.rem_euclid(1000) as u16
}

/// `gen_s` units (seconds since 2020) back to ms since the epoch.
pub(crate) fn ms_of_s(s: u32) -> i64 {
    (s as i64 + EPOCH_S) * 1000
}

const TOMBSTONE: Slot = Slot {
    seg: UNWRITTEN,
    off: 0,
    len: 0,
    key: 0,
    gen_s: 0,
    owners: 0,
    takers: 0,
    dropped: 0,
    acked_s: 0,
    meta: 0,
    id_hash: 0,
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    pub consumer: ConsumerId,
    pub deadline: i64,
    pub attempts: u32,
    pub holds_key: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiting {
    pub attempts: u32,
    pub holds_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadInfo {
    pub attempts: u32,
    pub at_ms: i64,
}

/// Per-key delivery state of a group while any message of the key is in flight or
/// waiting for redelivery.
#[derive(Debug, Default)]
pub(crate) struct KeyHold {
    /// Where the key's next messages go (sticky while any is in flight); `None` while
    /// the key's next message waits in the retry queue for whoever leases first.
    pub consumer: Option<ConsumerId>,
    /// Messages of the key in flight or waiting that hold it (≥ 1 while the hold exists).
    pub active: u32,
    /// Later messages of the key met by the cursor while it could not give them to the
    /// holder, in append order.
    pub parked: VecDeque<u64>,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub name: ConsumerGroup,
    /// What the group takes (applied at append) and how it retries.
    pub spec: GroupSpec,
    pub gen: u32,
    pub start_pseq: u64,
    pub cursor: u64,
    pub in_flight: HashMap<u64, Lease>,
    /// Lease deadlines in lease order; stale entries are skipped and compacted.
    pub deadlines: VecDeque<(i64, u64)>,
    /// Waiting redeliveries by (due time, pseq); due 0 = at once.
    pub retry: BTreeMap<(i64, u64), Waiting>,
    pub retry_due: HashMap<u64, i64>,
    /// Keys held by messages of this group.
    pub keys: HashMap<u32, KeyHold>,
    pub parked: usize,
    /// Keys held by a consumer that have parked messages for it to take first (entries
    /// may be stale: checked when used).
    pub park_ready: HashMap<ConsumerId, Vec<u32>>,
    /// Deliveries made before the engine was opened, of messages still owed (from the
    /// log's lease records): the next delivery's attempt count continues from them.
    pub prior: HashMap<u64, u32>,
    pub dead: BTreeMap<u64, DeadInfo>,
    pub stacked: u64,
    /// No owed, non-dead message of this group has a smaller pseq.
    pub oldest_hint: u64,
    pub counters: GroupCounters,
    pub signal: watch::Sender<u64>,
}

impl Group {
    fn new(name: ConsumerGroup, spec: GroupSpec, gen: u32, start_pseq: u64) -> Self {
        Self {
            name,
            spec,
            gen,
            start_pseq,
            cursor: start_pseq,
            in_flight: HashMap::new(),
            deadlines: VecDeque::new(),
            retry: BTreeMap::new(),
            retry_due: HashMap::new(),
            keys: HashMap::new(),
            parked: 0,
            park_ready: HashMap::new(),
            prior: HashMap::new(),
            dead: BTreeMap::new(),
            stacked: 0,
            oldest_hint: start_pseq,
            counters: GroupCounters::default(),
            signal: watch::channel(0).0,
        }
    }

    pub fn notify(&self) {
        self.signal.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn wait(&mut self, pseq: u64, due: i64, w: Waiting) {
        self.retry.insert((due, pseq), w);
        self.retry_due.insert(pseq, due);
    }

    fn take_waiting(&mut self, pseq: u64) -> Option<Waiting> {
        let due = self.retry_due.remove(&pseq)?;
        self.retry.remove(&(due, pseq))
    }

    /// Drops deadlines of settled leases (they are skipped lazily) once they outnumber
    /// the leases in flight; amortised O(1) per lease.
    pub(crate) fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.in_flight.len() + 1024 {
            let inf = &self.in_flight;
            self.deadlines
                .retain(|(d, p)| inf.get(p).is_some_and(|l| l.deadline == *d));
        }
    }

    /// When a message whose delivery failed for the `attempts`-th time is tried again,
    /// or `None` when the group's retry schedule is used up (dead letter).
    pub(crate) fn next_try(
        &self,
        attempts: u32,
        now: i64,
        unit: f64,
        backoff: &crate::config::RetryPolicy,
    ) -> Option<i64> {
        match &self.spec.retry {
            GroupRetry::Backoff => Some(now.saturating_add(backoff.delay_ms(attempts, unit))),
            GroupRetry::Schedule {
                delays_ms,
                max_deliveries,
            } => {
                if attempts >= *max_deliveries {
                    return None;
                }
                let i = (attempts.max(1) as usize - 1).min(delays_ms.len().saturating_sub(1));
                let d = delays_ms.get(i).copied().unwrap_or(0);
                Some(now.saturating_add(d.min(i64::MAX as u64) as i64))
            }
        }
    }

    /// Attempts made so far of a message about to be delivered for the first time since
    /// the engine was opened (0 unless a previous run delivered it).
    pub(crate) fn prior_attempts(&mut self, pseq: u64) -> u32 {
        if self.prior.is_empty() {
            0
        } else {
            self.prior.remove(&pseq).unwrap_or(0)
        }
    }

    /// A message holding `key` is done (acked, rejected, dropped): once none holds it,
    /// the key is free and its first parked message waits for whoever leases next.
    fn release_key(&mut self, key: u32) {
        let Some(h) = self.keys.get_mut(&key) else {
            return;
        };
        h.active = h.active.saturating_sub(1);
        if h.active > 0 {
            return;
        }
        let Some(pseq) = h.parked.pop_front() else {
            self.keys.remove(&key);
            return;
        };
        h.active = 1;
        h.consumer = None;
        self.parked -= 1;
        let attempts = self.prior_attempts(pseq);
        self.wait(
            pseq,
            0,
            Waiting {
                attempts,
                holds_key: true,
            },
        );
        self.notify();
    }

    /// Removes every trace of an owed message from the group's delivery state (it was
    /// acked elsewhere, expired or dropped). Returns whether it was a dead letter.
    fn forget(&mut self, pseq: u64, key: u32) -> bool {
        if !self.prior.is_empty() {
            self.prior.remove(&pseq);
        }
        if self.dead.remove(&pseq).is_some() {
            return true;
        }
        if pseq >= self.cursor {
            return false;
        }
        if let Some(l) = self.in_flight.remove(&pseq) {
            if l.holds_key {
                self.release_key(key);
            }
            return false;
        }
        if let Some(w) = self.take_waiting(pseq) {
            if w.holds_key {
                self.release_key(key);
            }
            return false;
        }
        if let Some(h) = self.keys.get_mut(&key) {
            if let Some(i) = h.parked.iter().position(|p| *p == pseq) {
                h.parked.remove(i);
                self.parked -= 1;
            }
        }
        false
    }

    fn snapshot(&self, slot: u8) -> GroupSnapshot {
        GroupSnapshot {
            slot,
            gen: self.gen,
            start_pseq: self.start_pseq,
            name: self.name.as_str().to_owned(),
            counters: self.counters,
            spec: self.spec.clone(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Project {
    pub idx: u32,
    pub id: ProjectId,
    /// Set once a snapshot record named it (replay may meet records of a project before
    /// its newest snapshot).
    pub named: bool,
    pub slots: Slots,
    /// Lower bound of `gen_s` of held, unexpired slots per chunk of `CHUNK` pseqs
    /// (retention scan).
    pub chunks: BTreeMap<u64, u32>,
    /// The same for slots kept as expired traces.
    pub trace_chunks: BTreeMap<u64, u32>,
    /// Acknowledged messages stay stored until retention (for seek).
    pub keep_acked: bool,
    pub groups: Vec<Option<Box<Group>>>,
    pub retention_ms: i64,
    pub paused: bool,
    pub next_gen: u32,
    pub discarded: u64,
    /// (message, group) pairs owed by groups when they were deleted.
    pub dropped_by_group_delete: u64,
    /// Held slots (owed, kept after acknowledgement, or expired traces).
    pub live: u64,
    /// Dead-letter marks met during replay, by (group slot, pseq): kept apart because a
    /// record may name a group before the snapshot that defines it.
    replay_dead: BTreeMap<(u8, u64), DeadInfo>,
    /// Attempt counts from lease records met during replay, by (group slot, pseq): kept
    /// apart for the same reason.
    replay_prior: HashMap<(u8, u64), u32>,
}

impl Project {
    fn new(
        idx: u32,
        id: ProjectId,
        retention_ms: i64,
        keep_acked: bool,
        pool: Arc<SpillPool>,
    ) -> Self {
        Self {
            idx,
            id,
            named: true,
            slots: Slots::new(pool),
            chunks: BTreeMap::new(),
            trace_chunks: BTreeMap::new(),
            keep_acked,
            groups: (0..MAX_GROUPS_PER_PROJECT).map(|_| None).collect(),
            retention_ms,
            paused: false,
            next_gen: 1,
            discarded: 0,
            dropped_by_group_delete: 0,
            live: 0,
            replay_dead: BTreeMap::new(),
            replay_prior: HashMap::new(),
        }
    }

    pub fn next_pseq(&self) -> u64 {
        self.slots.next()
    }

    /// The oldest pseq still held (everything before it is done).
    pub fn base(&self) -> u64 {
        self.slots.first()
    }

    pub fn slot(&mut self, pseq: u64) -> Option<&Slot> {
        self.slots.get(pseq)
    }

    fn slot_mut(&mut self, pseq: u64) -> Option<&mut Slot> {
        self.slots.get_mut(pseq)
    }

    pub fn group_slot(&self, name: &ConsumerGroup) -> Option<u8> {
        self.groups
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| &g.name == name))
            .map(|i| i as u8)
    }

    pub fn group(&self, slot: u8) -> Option<&Group> {
        self.groups.get(slot as usize).and_then(|g| g.as_deref())
    }

    /// The groups whose filter takes `m` (routing at append).
    fn owners_of(&self, m: &SyncMessage) -> u32 {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.as_ref()
                    .is_some_and(|g| g.spec.filter.is_all() || g.spec.filter.takes(m))
            })
            .fold(0, |m, (i, _)| m | (1 << i))
    }

    fn note_chunk(&mut self, pseq: u64, gen_s: u32) {
        let e = self.chunks.entry(pseq / CHUNK).or_insert(u32::MAX);
        *e = (*e).min(gen_s);
    }

    fn note_trace_chunk(&mut self, pseq: u64, gen_s: u32) {
        let e = self.trace_chunks.entry(pseq / CHUNK).or_insert(u32::MAX);
        *e = (*e).min(gen_s);
    }

    /// Drops slots no longer held from the front.
    fn pop_front(&mut self) {
        self.slots.pop_front_while(|s| !s.held());
        let first_chunk = self.base() / CHUNK;
        for map in [&mut self.chunks, &mut self.trace_chunks] {
            while let Some((&c, _)) = map.first_key_value() {
                if c >= first_chunk {
                    break;
                }
                map.pop_first();
            }
        }
    }

    pub fn snapshot(&self) -> ProjectSnapshot {
        ProjectSnapshot {
            proj: self.idx,
            id: self.id.as_str().to_owned(),
            next_pseq: self.next_pseq(),
            retention_ms: self.retention_ms,
            paused: self.paused,
            next_gen: self.next_gen,
            discarded: self.discarded,
            dropped_by_group_delete: self.dropped_by_group_delete,
            keep_acked: self.keep_acked,
            groups: self
                .groups
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| g.snapshot(i as u8)))
                .collect(),
        }
    }
}

/// Disk accounting of one segment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SegInfo {
    pub live: u64,
    pub live_bytes: u64,
    pub size: u64,
    /// Scheduled for deletion (snapshots queued).
    pub dropping: bool,
}

/// A message picked by `lease`, to be read from disk outside the lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pick {
    pub token: LeaseToken,
    pub seg: u32,
    pub off: u32,
    pub len: u32,
    pub attempts: u32,
    pub deadline: i64,
}

/// Where a dead letter's record is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadRef {
    pub group: u8,
    pub seq: u64,
    pub seg: u32,
    pub off: u32,
    pub len: u32,
    pub info: DeadInfo,
}

#[derive(Debug)]
pub(crate) struct Index {
    pub projects: Vec<Project>,
    pub by_id: HashMap<ProjectId, u32>,
    pub segs: BTreeMap<u32, SegInfo>,
    pub consumers: HashMap<ConsumerId, Vec<(u32, u8, u32)>>,
    pool: Arc<SpillPool>,
    rng: u64,
    ack_timeout_ms: i64,
    retry: crate::config::RetryPolicy,
    default_retention_ms: i64,
    keep_acked_default: bool,
    /// Expired messages stay as traces this much longer (seconds).
    trace_grace_s: u32,
    max_scan: usize,
    max_parked: usize,
}

/// Outcome of an operation on a lease token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenOp {
    Ack,
    Nack,
    Reject,
}

impl Index {
    pub fn new(cfg: &BacklogConfig, seed: u64, pool: SpillPool) -> Self {
        Self {
            projects: Vec::new(),
            by_id: HashMap::new(),
            segs: BTreeMap::new(),
            consumers: HashMap::new(),
            pool: Arc::new(pool),
            rng: seed | 1,
            ack_timeout_ms: cfg.ack_timeout.as_millis() as i64,
            retry: cfg.retry.clone(),
            default_retention_ms: cfg.default_retention.as_millis() as i64,
            keep_acked_default: cfg.keep_acknowledged,
            trace_grace_s: cfg.expired_trace.as_secs().min(u32::MAX as u64) as u32,
            max_scan: cfg.max_scan_per_lease.max(1),
            max_parked: cfg.max_parked_per_group.max(1),
        }
    }

    fn unit_random(&mut self) -> f64 {
        // splitmix64: jitter only needs to be spread, not secret.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn project_idx(&self, id: &ProjectId) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub fn project(&self, id: &ProjectId) -> Option<&Project> {
        self.project_idx(id).map(|i| &self.projects[i as usize])
    }

    /// The project's index, created (and its definition logged) on first use.
    pub fn ensure_project(&mut self, id: &ProjectId, log: &mut Enc) -> u32 {
        if let Some(i) = self.by_id.get(id) {
            return *i;
        }
        let idx = self.projects.len() as u32;
        let p = Project::new(
            idx,
            id.clone(),
            self.default_retention_ms,
            self.keep_acked_default,
            self.pool.clone(),
        );
        log.project_state(&p.snapshot());
        self.projects.push(p);
        self.by_id.insert(id.clone(), idx);
        idx
    }

    // ---- slot ownership and disk accounting -------------------------------------------

    /// Changes a slot with `f`; keeps the held counts of project and segment right. A
    /// project that does not keep acknowledged messages lets go of one nobody owes.
    pub(crate) fn change_slot(&mut self, proj: u32, pseq: u64, f: impl FnOnce(&mut Slot)) {
        let p = &mut self.projects[proj as usize];
        // (A project replay has not named yet keeps it for now: see `replay_clear`.)
        let keep = p.keep_acked || !p.named;
        let Some(s) = p.slot_mut(pseq) else { return };
        let was = s.held();
        f(s);
        if !keep && s.owners == 0 && !s.expired() {
            s.takers = 0;
            s.dropped = 0;
        }
        let now = s.held();
        if was == now {
            return;
        }
        let (seg, len) = (s.seg, s.len as u64);
        // Saturating: replay does not keep these counts (it recounts at the end).
        if now {
            p.live += 1;
        } else {
            p.live = p.live.saturating_sub(1);
        }
        if seg != UNWRITTEN {
            if let Some(si) = self.segs.get_mut(&seg) {
                if now {
                    si.live += 1;
                    si.live_bytes += len;
                } else {
                    si.live = si.live.saturating_sub(1);
                    si.live_bytes = si.live_bytes.saturating_sub(len);
                }
            }
        }
    }

    /// Calls `f` for every pseq in `from..to` of the project, skipping chunks that hold
    /// nothing but tombstones (a gap costs nothing to walk over).
    pub(crate) fn walk(
        &mut self,
        proj: u32,
        from: u64,
        to: u64,
        mut f: impl FnMut(&mut Self, u64),
    ) {
        let mut pseq = from;
        while pseq < to {
            pseq = self.projects[proj as usize].slots.skip_empty(pseq);
            if pseq >= to {
                break;
            }
            f(self, pseq);
            pseq += 1;
        }
    }

    /// Clears group `g`'s ownership of `pseq`; keeps project and segment counts right.
    fn disown(&mut self, proj: u32, pseq: u64, g: u8) {
        self.change_slot(proj, pseq, |s| s.owners &= !(1 << g));
    }

    // ---- append --------------------------------------------------------------------

    /// Adds a message to the index (not yet leasable: `seg` is UNWRITTEN until the writer
    /// fills it in) and logs it. `None` if the project has no group.
    pub fn append(
        &mut self,
        proj: u32,
        m: &SyncMessage,
        log: &mut Enc,
    ) -> Option<(u64, usize, usize)> {
        let p = &mut self.projects[proj as usize];
        let owners = p.owners_of(m);
        if owners == 0 {
            p.discarded += 1;
            return None;
        }
        let pseq = p.next_pseq();
        let g = gen_s(m.envelope.generate_time);
        p.slots.push_back(Slot {
            seg: UNWRITTEN,
            off: 0,
            len: 0,
            key: key_hash(&m.ordering_key),
            gen_s: g,
            owners,
            takers: owners,
            dropped: 0,
            acked_s: 0,
            meta: slot_meta(m.envelope.generate_time),
            id_hash: crate::codec::id_hash(m.envelope.message_id.as_str()),
        });
        p.live += 1;
        p.note_chunk(pseq, g);
        for (i, gr) in p.groups.iter_mut().enumerate() {
            if let Some(gr) = gr {
                if owners & (1 << i) != 0 {
                    gr.stacked += 1;
                    gr.counters.appended += 1;
                }
            }
        }
        let (off, len) = log.msg(proj, pseq, owners, m);
        Some((pseq, off, len))
    }

    /// The writer stored a message record at (seg, off).
    pub fn written(&mut self, proj: u32, pseq: u64, seg: u32, off: u32, len: u32) {
        let p = &mut self.projects[proj as usize];
        let Some(s) = p.slots.set_location(pseq, seg, off, len) else {
            return;
        };
        if s.held() {
            let si = self.segs.entry(seg).or_default();
            si.live += 1;
            si.live_bytes += len as u64;
        }
    }

    /// The writer could not store a message record: it never happened.
    pub fn unwritten(&mut self, proj: u32, pseq: u64) {
        let p = &mut self.projects[proj as usize];
        let Some(s) = p.slot_mut(pseq) else { return };
        let owners = s.owners;
        let held = s.held();
        *s = TOMBSTONE;
        if held {
            p.live -= 1;
        }
        for (i, g) in p.groups.iter_mut().enumerate() {
            if let Some(g) = g {
                if owners & (1 << i) != 0 {
                    g.stacked = g.stacked.saturating_sub(1);
                    g.counters.appended = g.counters.appended.saturating_sub(1);
                }
            }
        }
        p.pop_front();
    }

    /// A relocated copy of a message was stored: point the slot at it if still live.
    pub fn relocated(&mut self, proj: u32, pseq: u64, old_seg: u32, seg: u32, off: u32, len: u32) {
        let p = &mut self.projects[proj as usize];
        let Some(&s) = p.slots.get(pseq) else {
            return;
        };
        if !s.held() || s.seg != old_seg {
            return;
        }
        let old_len = s.len;
        p.slots.set_location(pseq, seg, off, len);
        if let Some(o) = self.segs.get_mut(&old_seg) {
            o.live -= 1;
            o.live_bytes -= old_len as u64;
        }
        let n = self.segs.entry(seg).or_default();
        n.live += 1;
        n.live_bytes += len as u64;
    }

    // ---- groups and settings -----------------------------------------------------------

    /// Declares a group, or changes an existing group's spec. `Ok(true)` if it is new.
    pub fn create_group(
        &mut self,
        proj: u32,
        name: &ConsumerGroup,
        spec: &GroupSpec,
        log: &mut Enc,
    ) -> Result<bool, ()> {
        let p = &mut self.projects[proj as usize];
        if let Some(slot) = p.group_slot(name) {
            if let Some(g) = p.groups[slot as usize].as_mut() {
                if &g.spec != spec {
                    log.group_spec(proj, slot, g.gen, spec);
                    g.spec = spec.clone();
                    // A new retry policy applies to what is waiting from its next failure.
                    g.notify();
                }
            }
            return Ok(false);
        }
        let Some(slot) = p.groups.iter().position(|g| g.is_none()) else {
            return Err(());
        };
        let gen = p.next_gen;
        p.next_gen += 1;
        let start = p.next_pseq();
        log.group_create(proj, slot as u8, gen, start, name.as_str());
        if spec != &GroupSpec::all() {
            log.group_spec(proj, slot as u8, gen, spec);
        }
        p.groups[slot] = Some(Box::new(Group::new(name.clone(), spec.clone(), gen, start)));
        Ok(true)
    }

    pub fn delete_group(&mut self, proj: u32, slot: u8, log: &mut Enc) {
        log.group_delete(proj, slot);
        let p = &mut self.projects[proj as usize];
        if let Some(g) = p.groups[slot as usize].as_ref() {
            // What it still owed (dead letters included) is dropped: counted here, and
            // kept across restarts by the project snapshot.
            p.dropped_by_group_delete += g.stacked + g.dead.len() as u64;
        }
        self.drop_group(proj, slot);
    }

    fn drop_group(&mut self, proj: u32, slot: u8) {
        let (base, next) = {
            let p = &self.projects[proj as usize];
            (p.base(), p.next_pseq())
        };
        let bit = !(1u32 << slot);
        self.walk(proj, base, next, |ix, pseq| {
            ix.change_slot(proj, pseq, |s| {
                s.owners &= bit;
                s.takers &= bit;
                s.dropped &= bit;
            });
        });
        let p = &mut self.projects[proj as usize];
        p.groups[slot as usize] = None;
        p.pop_front();
    }

    // ---- retention -----------------------------------------------------------------

    /// Removes every message of every project older than its retention. Returns the
    /// number of (message, group) pairs expired.
    pub fn expire(&mut self, now: i64, log: &mut Enc) -> u64 {
        let mut total = 0;
        for pi in 0..self.projects.len() {
            let cutoff = cutoff_s(now, self.projects[pi].retention_ms);
            let (n, changed) = self.expire_project(pi as u32, cutoff);
            // Logged whenever a slot changed, not only when a group owed it: a retained
            // message that expired must not come back with a seek after a restart.
            if changed > 0 {
                log.expire(pi as u32, cutoff);
            }
            total += n;
        }
        total
    }

    /// Expires the project's held slots with `gen_s < cutoff` (also used by replay):
    /// what groups still owed is counted (`expired_total`) and remembered; the slot stays
    /// as a trace (lookups answer "expired") until `cutoff - trace grace`, then goes.
    /// Returns the (message, group) pairs expired that were owed, and how many slots
    /// changed.
    pub fn expire_project(&mut self, proj: u32, cutoff: u32) -> (u64, u64) {
        let (n, a) = self.expire_phase(proj, cutoff, false);
        let trace_cutoff = cutoff.saturating_sub(self.trace_grace_s);
        let (_, b) = self.expire_phase(proj, trace_cutoff, true);
        self.projects[proj as usize].pop_front();
        (n, a + b)
    }

    fn expire_phase(&mut self, proj: u32, cutoff: u32, traces: bool) -> (u64, u64) {
        let chunks: Vec<u64> = {
            let p = &self.projects[proj as usize];
            let m = if traces { &p.trace_chunks } else { &p.chunks };
            m.iter()
                .filter(|(_, m)| **m < cutoff)
                .map(|(c, _)| *c)
                .collect()
        };
        let (mut n, mut changed) = (0, 0);
        for c in chunks {
            let (base, next) = {
                let p = &self.projects[proj as usize];
                (p.base(), p.next_pseq())
            };
            let mut new_min = u32::MAX;
            for pseq in (c * CHUNK).max(base)..((c + 1) * CHUNK).min(next) {
                let Some(s) = self.projects[proj as usize].slot(pseq).copied() else {
                    continue;
                };
                if !s.held() || s.expired() != traces {
                    continue;
                }
                if s.gen_s >= cutoff {
                    new_min = new_min.min(s.gen_s);
                    continue;
                }
                changed += 1;
                if traces {
                    self.change_slot(proj, pseq, |s| {
                        s.takers = 0;
                        s.dropped = 0;
                        s.owners = 0;
                        s.meta &= !EXPIRED;
                    });
                    continue;
                }
                for gi in 0..MAX_GROUPS_PER_PROJECT as u8 {
                    if s.owners & (1 << gi) == 0 {
                        continue;
                    }
                    if let Some(g) = self.projects[proj as usize].groups[gi as usize].as_mut() {
                        let was_dead = g.forget(pseq, s.key);
                        if !was_dead {
                            g.stacked = g.stacked.saturating_sub(1);
                        }
                        g.counters.expired += 1;
                        n += 1;
                    }
                }
                self.change_slot(proj, pseq, |s| {
                    s.dropped = s.owners;
                    s.owners = 0;
                    s.meta |= EXPIRED;
                });
                self.projects[proj as usize].note_trace_chunk(pseq, s.gen_s);
            }
            let p = &mut self.projects[proj as usize];
            let m = if traces {
                &mut p.trace_chunks
            } else {
                &mut p.chunks
            };
            if new_min == u32::MAX {
                m.remove(&c);
            } else {
                m.insert(c, new_min);
            }
        }
        (n, changed)
    }

    // ---- dead letters ----------------------------------------------------------------

    /// Dead letters of a project in seq order, after `after_seq`, at most `limit`.
    pub fn dead_refs(&self, proj: u32, after_seq: Option<u64>, limit: usize) -> Vec<DeadRef> {
        let p = &self.projects[proj as usize];
        let mut v: Vec<DeadRef> = Vec::new();
        for (gi, g) in p.groups.iter().enumerate() {
            let Some(g) = g else { continue };
            let from = after_seq.map_or(0, |a| a.saturating_add(1));
            for (&seq, info) in g.dead.range(from..).take(limit) {
                if let Some(s) = p.slots.peek(seq) {
                    v.push(DeadRef {
                        group: gi as u8,
                        seq,
                        seg: s.seg,
                        off: s.off,
                        len: s.len,
                        info: *info,
                    });
                }
            }
        }
        v.sort_by_key(|d| (d.seq, d.group));
        v.truncate(limit);
        v
    }

    /// Back to the group as a fresh delivery (attempt 1). It does not wait behind its
    /// ordering key: a retried dead letter is a redelivery that intervenes.
    pub fn dead_retry(&mut self, proj: u32, slot: u8, seq: u64, log: &mut Enc) -> bool {
        let Some(g) = self.projects[proj as usize].groups[slot as usize].as_mut() else {
            return false;
        };
        if g.dead.remove(&seq).is_none() {
            return false;
        }
        g.stacked += 1;
        g.oldest_hint = g.oldest_hint.min(seq);
        if seq < g.cursor {
            g.wait(
                seq,
                0,
                Waiting {
                    attempts: 0,
                    holds_key: false,
                },
            );
        }
        g.notify();
        log.dead_retry(proj, slot, seq);
        true
    }

    pub fn dead_drop(&mut self, proj: u32, slot: u8, seq: u64, log: &mut Enc) -> bool {
        let Some(g) = self.projects[proj as usize].groups[slot as usize].as_mut() else {
            return false;
        };
        if g.dead.remove(&seq).is_none() {
            return false;
        }
        log.dead_drop(proj, slot, seq);
        self.disown(proj, seq, slot);
        self.projects[proj as usize].pop_front();
        true
    }

    // ---- figures -------------------------------------------------------------------

    pub fn stats(&mut self, proj: u32, now: i64) -> ProjectStats {
        let mut consumers = [0u64; MAX_GROUPS_PER_PROJECT];
        for m in self.consumers.values() {
            for (p, s, gen) in m {
                let live = self.projects[proj as usize]
                    .group(*s)
                    .is_some_and(|g| g.gen == *gen);
                if *p == proj && live {
                    consumers[*s as usize] += 1;
                }
            }
        }
        let p = &mut self.projects[proj as usize];
        let Project { slots, groups, .. } = &mut *p;
        let base = slots.first();
        let mut out = Vec::new();
        for (gi, g) in groups.iter_mut().enumerate() {
            let Some(g) = g else { continue };
            // Advance the hint past done messages (amortised O(1)).
            let mut h = g.oldest_hint.max(base);
            let end = slots.next();
            let mut oldest = None;
            if g.stacked > 0 {
                while h < end {
                    h = slots.skip_empty(h);
                    let Some(s) = slots.get(h) else { break };
                    if s.owners & (1 << gi) != 0 && !g.dead.contains_key(&h) {
                        oldest = Some(s.gen_s);
                        break;
                    }
                    h += 1;
                }
            }
            g.oldest_hint = h;
            out.push(GroupStats {
                group: g.name.as_str().to_owned(),
                stacked: g.stacked,
                oldest_stacked_age_ms: oldest.map(|s| (now - (s as i64 + EPOCH_S) * 1000).max(0)),
                in_flight: g.in_flight.len() as u64,
                retry_waiting: g.retry.len() as u64,
                dead_letters: g.dead.len() as u64,
                consumers: consumers[gi],
                appended_total: g.counters.appended,
                acked_total: g.counters.acked,
                redelivered_total: g.counters.redelivered,
                expired_total: g.counters.expired,
                rejected_total: g.counters.rejected,
                nacked_total: g.counters.nacked,
                timed_out_total: g.counters.timed_out,
                unreadable_total: g.counters.unreadable,
                dropped_total: g.counters.dropped,
                replayed_total: g.counters.replayed,
            });
        }
        ProjectStats {
            project: p.id.as_str().to_owned(),
            paused: p.paused,
            retention_ms: p.retention_ms,
            stored_messages: p.live,
            discarded_no_group: p.discarded,
            dropped_by_group_delete: p.dropped_by_group_delete,
            keep_acknowledged: p.keep_acked,
            groups: out,
        }
    }

    /// A leased message could not be read back: count it and drop it for the group.
    pub fn unreadable(&mut self, t: &LeaseToken, log: &mut Enc) {
        let key = match self
            .projects
            .get_mut(t.proj as usize)
            .and_then(|p| p.slot(t.seq))
        {
            Some(s) => s.key,
            None => return,
        };
        let Some(g) = self.group_for_token(t) else {
            return;
        };
        if let Some(l) = g.in_flight.remove(&t.seq) {
            g.stacked -= 1;
            g.counters.unreadable += 1;
            if l.holds_key {
                g.release_key(key);
            }
            log.ack(t.proj, t.group, t.seq);
            self.disown(t.proj, t.seq, t.group);
            self.projects[t.proj as usize].pop_front();
        }
    }

    /// Every project's snapshot (written before old segments are deleted and at close).
    pub fn snapshots(&self) -> Vec<ProjectSnapshot> {
        self.projects
            .iter()
            .filter(|p| p.named)
            .map(|p| p.snapshot())
            .collect()
    }

    /// Live slots stored in segment `seg` (for compaction).
    pub fn live_in_segment(&self, seg: u32) -> Vec<(u32, u64, Slot)> {
        let mut v = Vec::new();
        for p in &self.projects {
            p.slots.for_each_upto_seg(seg, |pseq, s| {
                if s.seg == seg && s.held() {
                    v.push((p.idx, pseq, *s));
                }
            });
        }
        v
    }

    /// Lets chunks of the projects holding the most out until the index is within its
    /// memory budget (a project short of memory only evicts its own).
    pub fn trim_memory(&mut self) {
        while self.pool.over_budget() {
            let Some(p) = self.projects.iter_mut().max_by_key(|p| p.slots.resident()) else {
                return;
            };
            if !p.slots.evict_one() {
                return;
            }
        }
    }

    pub fn memory_usage(&self) -> crate::types::IndexMemory {
        self.pool.usage()
    }

    /// Each group's attempt count of a message (for its relocated copy: the lease records
    /// that said so may be in the segment being dropped).
    pub fn attempt_marks(&self, proj: u32, pseq: u64) -> Vec<(u8, u32)> {
        let p = &self.projects[proj as usize];
        p.groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let g = g.as_ref()?;
                let a = if let Some(l) = g.in_flight.get(&pseq) {
                    l.attempts
                } else if let Some(due) = g.retry_due.get(&pseq) {
                    g.retry.get(&(*due, pseq)).map_or(0, |w| w.attempts)
                } else {
                    g.prior.get(&pseq).copied().unwrap_or(0)
                };
                (a > 0).then_some((i as u8, a))
            })
            .collect()
    }

    /// Dead-letter marks of a message (for its relocated copy).
    pub fn dead_marks(&self, proj: u32, pseq: u64) -> Vec<DeadMark> {
        let p = &self.projects[proj as usize];
        p.groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let d = g.as_ref()?.dead.get(&pseq)?;
                Some(DeadMark {
                    group: i as u8,
                    attempts: d.attempts,
                    at_ms: d.at_ms,
                })
            })
            .collect()
    }
}

fn unreachable_id() -> ProjectId {
    // "unnamed-N" always parses; this keeps the no-panic rule without an expect.
    ProjectId::generate()
}
