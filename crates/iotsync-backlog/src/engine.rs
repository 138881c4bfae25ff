//! `EmbeddedBacklog`: the `Backlog` trait on the index + segmented log + writer thread.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use iotsync_core::{ConsumerGroup, MessageId, ProjectId, SharedClock, SyncMessage};
use tokio::sync::{oneshot, Notify};
use tracing::error;

use crate::codec::decode_message;
use crate::config::BacklogConfig;
use crate::error::{BacklogError, CommitError};
use crate::index::{
    DeadRef, Index, Pick, ScanStep, SpillPool, TokenOp, MAX_GROUPS_PER_PROJECT, PURGE_FROM,
};

/// The index's spill file in the backlog directory (a cache: removed at open).
const SPILL_FILE: &str = "index.spill";
use crate::recovery::recover;
use crate::segment::{self, HEADER};
use crate::types::{
    AppendOutcome, AvailabilityWatch, ConsumerId, DeadLetter, Delivery, GroupInfo,
    GroupMessageState, GroupSpec, LeaseToken, MessageQuery, MessageTrace, ProjectStats,
    RecoveryReport, SeekOutcome, TickReport,
};
use crate::writer::{self, lock, Active, Pending, PendingMsg, Shared, State};
use crate::Backlog;

/// The embedded engine: one data directory, one writer thread, an in-memory index.
#[derive(Debug)]
pub struct EmbeddedBacklog {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

type Waiter = oneshot::Receiver<Result<(), CommitError>>;

/// Dead letters to read: where they are, the open files, the group names by slot.
type DeadSnapshot = (
    Vec<DeadRef>,
    HashMap<u32, Arc<File>>,
    Vec<Option<ConsumerGroup>>,
);

impl EmbeddedBacklog {
    /// Opens (or creates) the backlog in `dir`, replaying what is there. Damage found in
    /// the files is in the report (and logged); the good part is served.
    pub fn open(
        dir: impl AsRef<Path>,
        cfg: BacklogConfig,
        clock: SharedClock,
    ) -> Result<(Self, RecoveryReport), BacklogError> {
        let dir = dir.as_ref().to_path_buf();
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|e| BacklogError::io("create", &dir, e))?;
        let seed = cfg
            .jitter_seed
            .unwrap_or_else(|| clock.now_ms() as u64 ^ 0x5DEE_CE66);
        let pool = SpillPool::new(Some(dir.join(SPILL_FILE)), cfg.index_memory_bytes);
        let mut index = Index::new(&cfg, seed, pool);
        let rec = recover(&dir, &mut index)?;
        let id = rec.last_segment + 1;
        let path = segment::seg_path(&dir, id);
        let file =
            Arc::new(segment::create(&dir, id).map_err(|e| BacklogError::io("create", &path, e))?);
        index.segs.insert(
            id,
            crate::index::SegInfo {
                size: HEADER,
                ..Default::default()
            },
        );
        let mut files = rec.files;
        files.insert(id, file.clone());
        let state = State {
            index,
            pending: Pending::default(),
            files,
            active: id,
            closing: false,
            stopped: false,
            compacting: false,
        };
        let shared = Arc::new(Shared {
            dir,
            cfg,
            clock,
            state: Mutex::new(state),
            wake: Condvar::new(),
            space: Notify::new(),
            stopped: tokio::sync::watch::channel(false).0,
        });
        let active = Active {
            id,
            file,
            len: HEADER,
            broken: false,
        };
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("backlog-writer".into())
            .spawn(move || writer::run(s, active))
            .map_err(|e| BacklogError::io("spawn writer for", &shared.dir, e))?;
        Ok((
            Self {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            rec.report,
        ))
    }

    /// Waits until everything done so far (acks included) is on disk.
    pub async fn flush(&self) -> Result<(), BacklogError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = lock(&self.shared.state);
            if st.closing {
                return Err(BacklogError::Closed);
            }
            st.pending.waiters.push(tx);
        }
        self.shared.wake.notify_one();
        Self::durable(Some(rx)).await
    }

    /// Memory held by the index's slots, and what is in the spill file.
    pub fn index_memory(&self) -> crate::types::IndexMemory {
        lock(&self.shared.state).index.memory_usage()
    }

    /// Checks the index's internal invariants (for tests and debugging).
    #[doc(hidden)]
    pub fn verify_invariants(&self) -> Result<(), String> {
        lock(&self.shared.state).index.verify()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Flushes everything (with a final snapshot of every project's figures) and stops
    /// the writer. Later calls fail with `Closed`.
    pub async fn close(&self) -> Result<(), BacklogError> {
        let mut rx = self.shared.stopped.subscribe();
        {
            let mut st = lock(&self.shared.state);
            st.closing = true;
        }
        self.shared.wake.notify_all();
        self.shared.space.notify_waiters();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.join_writer();
        Ok(())
    }

    fn join_writer(&self) {
        if let Some(h) = lock(&self.writer).take() {
            if h.join().is_err() {
                error!("backlog writer thread panicked");
            }
        }
    }

    fn now(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    /// Runs `f` on the state and queues a wait for the commit of whatever it logged.
    fn with_state<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, BacklogError>,
    ) -> Result<(R, Option<Waiter>), BacklogError> {
        let mut st = lock(&self.shared.state);
        if st.closing {
            return Err(BacklogError::Closed);
        }
        let before = st.pending.enc.buf.len();
        let r = f(&mut st)?;
        let waiter = if st.pending.enc.buf.len() != before {
            let (tx, rx) = oneshot::channel();
            st.pending.waiters.push(tx);
            self.shared.wake.notify_one();
            Some(rx)
        } else {
            None
        };
        Ok((r, waiter))
    }

    async fn durable(waiter: Option<Waiter>) -> Result<(), BacklogError> {
        match waiter {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(BacklogError::Closed),
            },
        }
    }

    fn locate(
        st: &State,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<(u32, u8), BacklogError> {
        let p = st
            .index
            .project(project)
            .ok_or_else(|| BacklogError::UnknownProject {
                project: project.clone(),
            })?;
        let g = p
            .group_slot(group)
            .ok_or_else(|| BacklogError::UnknownGroup {
                project: project.clone(),
                group: group.clone(),
            })?;
        Ok((p.idx, g))
    }

    fn project_idx(st: &State, project: &ProjectId) -> Result<u32, BacklogError> {
        st.index
            .project_idx(project)
            .ok_or_else(|| BacklogError::UnknownProject {
                project: project.clone(),
            })
    }

    fn validate(&self, m: &SyncMessage) -> Result<(), BacklogError> {
        let max = self.shared.cfg.max_message_bytes;
        if m.envelope.payload.len() > max {
            return Err(BacklogError::MessageTooLarge {
                message_id: m.envelope.message_id.clone(),
                size: m.envelope.payload.len(),
                max,
            });
        }
        if m.ordering_key.len() > u16::MAX as usize || m.envelope.topic.len() > u16::MAX as usize {
            return Err(BacklogError::InvalidMessage {
                message_id: m.envelope.message_id.clone(),
                reason: "topic or ordering key longer than 65535 bytes".into(),
            });
        }
        Ok(())
    }

    /// Waits while the writer's queue is over its bound.
    async fn backpressure(&self) -> Result<(), BacklogError> {
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = lock(&self.shared.state);
                if st.closing {
                    return Err(BacklogError::Closed);
                }
                if st.pending.enc.buf.len() < self.shared.cfg.max_pending_bytes {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Reads the records of `picks` (neighbouring records in one read) and decodes them.
    fn read_bodies(
        files: &HashMap<u32, Arc<File>>,
        locs: &[(u32, u32, u32)],
    ) -> Vec<Result<Vec<u8>, String>> {
        let mut out: Vec<Result<Vec<u8>, String>> = vec![Err(String::new()); locs.len()];
        let mut order: Vec<usize> = (0..locs.len()).collect();
        order.sort_by_key(|&i| (locs[i].0, locs[i].1));
        let mut i = 0;
        while i < order.len() {
            let (seg, start, _) = locs[order[i]];
            let mut j = i;
            let mut end = start as u64 + locs[order[i]].2 as u64;
            while j + 1 < order.len() {
                let (s2, o2, l2) = locs[order[j + 1]];
                if s2 != seg
                    || (o2 as u64) > end + 64 * 1024
                    || (o2 as u64 + l2 as u64) - (start as u64) > 4 << 20
                {
                    break;
                }
                end = end.max(o2 as u64 + l2 as u64);
                j += 1;
            }
            let run = &order[i..=j];
            match files.get(&seg) {
                None => {
                    for &k in run {
                        out[k] = Err(format!("segment {seg} is gone"));
                    }
                }
                Some(f) => {
                    let mut buf = vec![0u8; (end - start as u64) as usize];
                    match std::os::unix::fs::FileExt::read_exact_at(
                        f.as_ref(),
                        &mut buf,
                        start as u64,
                    ) {
                        Err(e) => {
                            for &k in run {
                                out[k] = Err(format!("read segment {seg}: {e}"));
                            }
                        }
                        Ok(()) => {
                            for &k in run {
                                let (_, o, l) = locs[k];
                                let a = (o - start) as usize;
                                out[k] = segment::body_of(&buf[a..a + l as usize])
                                    .map(|b| b.to_vec())
                                    .map_err(|e| format!("segment {seg} offset {o}: {e}"));
                            }
                        }
                    }
                }
            }
            i = j + 1;
        }
        out
    }

    fn files_for(st: &State, segs: impl Iterator<Item = u32>) -> HashMap<u32, Arc<File>> {
        let mut m = HashMap::new();
        for s in segs {
            if let Some(f) = st.files.get(&s) {
                m.entry(s).or_insert_with(|| f.clone());
            }
        }
        m
    }

    fn deliveries(
        &self,
        project: &ProjectId,
        picks: Vec<Pick>,
        files: HashMap<u32, Arc<File>>,
    ) -> Vec<Delivery> {
        let locs: Vec<(u32, u32, u32)> = picks.iter().map(|p| (p.seg, p.off, p.len)).collect();
        let bodies = Self::read_bodies(&files, &locs);
        let mut out = Vec::with_capacity(picks.len());
        let mut bad = Vec::new();
        for (p, b) in picks.into_iter().zip(bodies) {
            match b.and_then(|b| decode_message(&b, project).map_err(|e| e.to_string())) {
                Ok(message) => out.push(Delivery {
                    message,
                    attempt: p.attempts,
                    token: p.token,
                    ack_deadline_ms: p.deadline,
                }),
                Err(reason) => {
                    error!(project = %project, seq = p.token.seq, %reason, "backlog record unreadable: message dropped");
                    bad.push(p.token);
                }
            }
        }
        if !bad.is_empty() {
            let mut st = lock(&self.shared.state);
            let State { index, pending, .. } = &mut *st;
            for t in &bad {
                index.unreadable(t, &mut pending.enc);
            }
            self.shared.wake.notify_one();
        }
        out
    }

    /// Dead letters of a project with their bodies, all groups, in seq order.
    fn read_dead(
        &self,
        project: &ProjectId,
        refs: Vec<DeadRef>,
        files: HashMap<u32, Arc<File>>,
        groups: &[Option<ConsumerGroup>],
    ) -> Vec<DeadLetter> {
        let locs: Vec<(u32, u32, u32)> = refs.iter().map(|d| (d.seg, d.off, d.len)).collect();
        let bodies = Self::read_bodies(&files, &locs);
        let mut out = Vec::new();
        for (d, b) in refs.into_iter().zip(bodies) {
            let Some(Some(group)) = groups.get(d.group as usize) else {
                continue;
            };
            match b.and_then(|b| decode_message(&b, project).map_err(|e| e.to_string())) {
                Ok(message) => out.push(DeadLetter {
                    group: group.clone(),
                    message,
                    attempts: d.info.attempts,
                    dead_at_ms: d.info.at_ms,
                    seq: d.seq,
                }),
                Err(reason) => {
                    error!(project = %project, seq = d.seq, %reason, "dead letter unreadable")
                }
            }
        }
        out
    }

    fn dead_snapshot(
        &self,
        project: &ProjectId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<DeadSnapshot, BacklogError> {
        let st = lock(&self.shared.state);
        let idx = Self::project_idx(&st, project)?;
        let refs = st.index.dead_refs(idx, after, limit);
        let files = Self::files_for(&st, refs.iter().map(|d| d.seg));
        let groups = st.index.projects[idx as usize]
            .groups
            .iter()
            .map(|g| g.as_ref().map(|g| g.name.clone()))
            .collect();
        Ok((refs, files, groups))
    }

    async fn settle_dead(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
        retry: bool,
    ) -> Result<usize, BacklogError> {
        let (refs, files, groups) = self.dead_snapshot(project, None, usize::MAX)?;
        let matching: Vec<(u8, u64)> = self
            .read_dead(project, refs, files, &groups)
            .into_iter()
            .filter(|d| &d.message.envelope.message_id == message_id)
            .filter_map(|d| {
                groups
                    .iter()
                    .position(|g| g.as_ref() == Some(&d.group))
                    .map(|slot| (slot as u8, d.seq))
            })
            .collect();
        let (n, waiter) = self.with_state(|st| {
            let idx = Self::project_idx(st, project)?;
            let State { index, pending, .. } = st;
            let mut n = 0;
            for (slot, seq) in &matching {
                let done = if retry {
                    index.dead_retry(idx, *slot, *seq, &mut pending.enc)
                } else {
                    index.dead_drop(idx, *slot, *seq, &mut pending.enc)
                };
                n += done as usize;
            }
            Ok(n)
        })?;
        Self::durable(waiter).await?;
        if n == 0 {
            return Err(BacklogError::DeadLetterNotFound {
                project: project.clone(),
                message_id: message_id.clone(),
            });
        }
        Ok(n)
    }

    async fn seek_to(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        from_ms: i64,
    ) -> Result<SeekOutcome, BacklogError> {
        let (out, waiter) = self.with_state(|st| {
            let (idx, slot) = Self::locate(st, project, group)?;
            let State { index, pending, .. } = st;
            index
                .seek(idx, slot, from_ms, None, Some(&mut pending.enc))
                .ok_or_else(|| BacklogError::UnknownGroup {
                    project: project.clone(),
                    group: group.clone(),
                })
        })?;
        Self::durable(waiter).await?;
        Ok(out)
    }

    /// Runs one scan step under the lock; returns the candidates with their files.
    fn scan_step(
        &self,
        project: &ProjectId,
        f: impl FnOnce(&mut Index, u32) -> ScanStep,
    ) -> Result<(ScanStep, HashMap<u32, Arc<File>>), BacklogError> {
        let mut st = lock(&self.shared.state);
        let idx = Self::project_idx(&st, project)?;
        let step = f(&mut st.index, idx);
        let files = Self::files_for(&st, step.0.iter().map(|(_, s)| s.seg));
        Ok((step, files))
    }

    /// Reads candidate messages and keeps those `keep` accepts, with their states.
    fn traces(
        &self,
        project: &ProjectId,
        cands: Vec<(u64, crate::index::Slot)>,
        files: HashMap<u32, Arc<File>>,
        keep: impl Fn(&SyncMessage) -> bool,
    ) -> Vec<MessageTrace> {
        let locs: Vec<(u32, u32, u32)> = cands.iter().map(|(_, s)| (s.seg, s.off, s.len)).collect();
        let bodies = Self::read_bodies(&files, &locs);
        let found: Vec<(u64, SyncMessage)> = cands
            .iter()
            .zip(bodies)
            .filter_map(|((pseq, _), b)| {
                let m = b.ok().and_then(|b| decode_message(&b, project).ok())?;
                keep(&m).then_some((*pseq, m))
            })
            .collect();
        if found.is_empty() {
            return Vec::new();
        }
        let mut st = lock(&self.shared.state);
        let Some(idx) = st.index.project_idx(project) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(found.len());
        for (pseq, message) in found {
            let Some(slot) = st.index.held_slot(idx, pseq) else {
                continue;
            };
            let p = &st.index.projects[idx as usize];
            let groups = st
                .index
                .trace_states(idx, pseq, &slot)
                .into_iter()
                .filter_map(|(gi, state, attempts)| {
                    Some(GroupMessageState {
                        group: p.group(gi)?.name.clone(),
                        state,
                        attempts,
                    })
                })
                .collect();
            out.push(MessageTrace {
                seq: pseq,
                message,
                expired: slot.expired(),
                groups,
            });
        }
        out
    }

    fn settle(&self, token: &LeaseToken, op: TokenOp) -> Result<(), BacklogError> {
        let now = self.now();
        let mut st = lock(&self.shared.state);
        if st.closing {
            return Err(BacklogError::Closed);
        }
        let State { index, pending, .. } = &mut *st;
        let before = pending.enc.buf.len();
        let was_empty = pending.is_empty();
        if !index.settle(token, op, now, &mut pending.enc) {
            return Err(BacklogError::UnknownLease { seq: token.seq });
        }
        let added = pending.enc.buf.len() - before;
        if pending.settled(added, was_empty, self.shared.cfg.settle_flush_bytes) {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for EmbeddedBacklog {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.shared.state);
            st.closing = true;
        }
        self.shared.wake.notify_all();
        self.join_writer();
    }
}

#[async_trait]
impl Backlog for EmbeddedBacklog {
    async fn append(&self, batch: Vec<SyncMessage>) -> Result<AppendOutcome, BacklogError> {
        for m in &batch {
            self.validate(m)?;
        }
        if batch.is_empty() {
            return Ok(AppendOutcome::default());
        }
        self.backpressure().await?;
        let (outcome, waiter) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let mut out = AppendOutcome::default();
            let mut last: Option<(&ProjectId, u32)> = None;
            for m in &batch {
                let idx = match last {
                    Some((id, idx)) if id == &m.project_id => idx,
                    _ => index.ensure_project(&m.project_id, &mut pending.enc),
                };
                last = Some((&m.project_id, idx));
                match index.append(idx, m, &mut pending.enc) {
                    Some((pseq, off, len)) => {
                        pending.msgs.push(PendingMsg {
                            proj: idx,
                            pseq,
                            off,
                            len,
                        });
                        out.stored += 1;
                    }
                    None => out.discarded_no_group += 1,
                }
            }
            Ok(out)
        })?;
        Self::durable(waiter).await?;
        Ok(outcome)
    }

    async fn create_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        spec: &GroupSpec,
    ) -> Result<(), BacklogError> {
        let (_, waiter) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let idx = index.ensure_project(project, &mut pending.enc);
            index
                .create_group(idx, group, spec, &mut pending.enc)
                .map_err(|_| BacklogError::TooManyGroups {
                    project: project.clone(),
                    max: MAX_GROUPS_PER_PROJECT,
                })
        })?;
        Self::durable(waiter).await
    }

    async fn delete_group(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<(), BacklogError> {
        let (_, waiter) = self.with_state(|st| {
            let (idx, slot) = Self::locate(st, project, group)?;
            let State { index, pending, .. } = st;
            index.delete_group(idx, slot, &mut pending.enc);
            Ok(())
        })?;
        Self::durable(waiter).await
    }

    async fn groups(&self, project: &ProjectId) -> Result<Vec<GroupInfo>, BacklogError> {
        let st = lock(&self.shared.state);
        Ok(st
            .index
            .project(project)
            .map(|p| {
                p.groups
                    .iter()
                    .flatten()
                    .map(|g| GroupInfo {
                        name: g.name.clone(),
                        spec: g.spec.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn set_retention(
        &self,
        project: &ProjectId,
        retention: Duration,
    ) -> Result<(), BacklogError> {
        let now = self.now();
        let (_, waiter) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let idx = index.ensure_project(project, &mut pending.enc);
            let ms = retention.as_millis().min(i64::MAX as u128) as i64;
            index.projects[idx as usize].retention_ms = ms;
            pending.enc.retention(idx, ms);
            let cutoff = crate::index::cutoff_s(now, ms);
            if index.expire_project(idx, cutoff).1 > 0 {
                pending.enc.expire(idx, cutoff);
            }
            Ok(())
        })?;
        Self::durable(waiter).await
    }

    async fn set_paused(&self, project: &ProjectId, paused: bool) -> Result<(), BacklogError> {
        let (_, waiter) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let idx = index.ensure_project(project, &mut pending.enc);
            let p = &mut index.projects[idx as usize];
            if p.paused != paused {
                p.paused = paused;
                pending.enc.paused(idx, paused);
                if !paused {
                    p.groups.iter().flatten().for_each(|g| g.notify());
                }
            }
            Ok(())
        })?;
        Self::durable(waiter).await
    }

    async fn lease(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        consumer: ConsumerId,
        max: usize,
    ) -> Result<Vec<Delivery>, BacklogError> {
        let now = self.now();
        let (picks, files) = {
            let mut st = lock(&self.shared.state);
            if st.closing {
                return Err(BacklogError::Closed);
            }
            let (idx, slot) = Self::locate(&st, project, group)?;
            let State { index, pending, .. } = &mut *st;
            let before = pending.enc.buf.len();
            let was_empty = pending.is_empty();
            let picks = index.lease(idx, slot, consumer, max, now, &mut pending.enc);
            // Lease records are written lazily, like settlements: nobody waits for them.
            let added = pending.enc.buf.len() - before;
            if pending.settled(added, was_empty, self.shared.cfg.settle_flush_bytes) {
                self.shared.wake.notify_one();
            }
            let files = Self::files_for(&st, picks.iter().map(|p| p.seg));
            (picks, files)
        };
        if picks.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.deliveries(project, picks, files))
    }

    async fn ack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        self.settle(token, TokenOp::Ack)
    }

    async fn nack(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        self.settle(token, TokenOp::Nack)
    }

    async fn reject(&self, token: &LeaseToken) -> Result<(), BacklogError> {
        self.settle(token, TokenOp::Reject)
    }

    async fn consumer_gone(&self, consumer: ConsumerId) -> Result<usize, BacklogError> {
        let mut st = lock(&self.shared.state);
        Ok(st.index.consumer_gone(consumer))
    }

    async fn tick(&self) -> Result<TickReport, BacklogError> {
        let now = self.now();
        let (r, _) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let r = TickReport {
                timed_out: index.expire_leases(now, &mut pending.enc),
                expired: index.expire(now, &mut pending.enc),
            };
            index.trim_memory();
            Ok(r)
        })?;
        Ok(r)
    }

    async fn dead_letters(
        &self,
        project: &ProjectId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BacklogError> {
        let (refs, files, groups) = self.dead_snapshot(project, after_seq, limit)?;
        Ok(self.read_dead(project, refs, files, &groups))
    }

    async fn retry_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        self.settle_dead(project, message_id, true).await
    }

    async fn drop_dead_letter(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<usize, BacklogError> {
        self.settle_dead(project, message_id, false).await
    }

    async fn set_keep_acknowledged(
        &self,
        project: &ProjectId,
        keep: bool,
    ) -> Result<(), BacklogError> {
        let (_, waiter) = self.with_state(|st| {
            let State { index, pending, .. } = st;
            let idx = index.ensure_project(project, &mut pending.enc);
            index.set_keep_acked(idx, keep, Some(&mut pending.enc));
            Ok(())
        })?;
        Self::durable(waiter).await
    }

    async fn seek(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
        from_ms: i64,
    ) -> Result<SeekOutcome, BacklogError> {
        let now = self.now();
        if from_ms > now {
            return Err(BacklogError::SeekInFuture {
                from_ms,
                now_ms: now,
            });
        }
        self.seek_to(project, group, from_ms).await
    }

    async fn purge(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<SeekOutcome, BacklogError> {
        self.seek_to(project, group, PURGE_FROM).await
    }

    async fn find_message(
        &self,
        project: &ProjectId,
        message_id: &MessageId,
    ) -> Result<Option<MessageTrace>, BacklogError> {
        let h = crate::codec::id_hash(message_id.as_str());
        // iotsync makes an id from its message's generateTime
        // (`MessageId::generate_at`): the id's time finds the stretch to look in, first
        // narrow (appends are nearly in time order), then with the full slack; a UUIDv7
        // not there is not stored. Any other id is looked for everywhere.
        let ranges: Vec<(u64, u64)> = match uuid_v7_ms(message_id.as_str()) {
            Some(t) => {
                let mut st = lock(&self.shared.state);
                let idx = Self::project_idx(&st, project)?;
                [NEAR_MS, crate::index::SLACK_MS]
                    .iter()
                    .map(|w| st.index.seq_range(idx, t - w, t + w))
                    .collect()
            }
            None => vec![(0, u64::MAX)],
        };
        for (lo, hi) in ranges {
            let mut pos = lo;
            loop {
                let ((cands, resume), files) =
                    self.scan_step(project, |ix, idx| ix.id_candidates(idx, h, pos, hi))?;
                if !cands.is_empty() {
                    let mut t = self.traces(project, cands, files, |m| {
                        &m.envelope.message_id == message_id
                    });
                    if !t.is_empty() {
                        return Ok(Some(t.swap_remove(0)));
                    }
                }
                match resume {
                    Some(r) => pos = r,
                    None => break,
                }
            }
        }
        Ok(None)
    }

    async fn device_messages(
        &self,
        project: &ProjectId,
        query: &MessageQuery,
    ) -> Result<Vec<MessageTrace>, BacklogError> {
        let key = crate::codec::key_hash(&query.ordering_key);
        let range = (query.from_ms, query.to_ms);
        let (lo, hi) = {
            let mut st = lock(&self.shared.state);
            let idx = Self::project_idx(&st, project)?;
            st.index.time_range(idx, range.0, range.1)
        };
        let mut pos = query.before_seq.map_or(hi, |b| b.min(hi));
        let mut out = Vec::new();
        while out.len() < query.limit {
            let want = query.limit - out.len();
            let ((cands, resume), files) = self.scan_step(project, |ix, idx| {
                ix.key_candidates(idx, key, range, lo, pos, want)
            })?;
            if !cands.is_empty() {
                out.extend(self.traces(project, cands, files, |m| {
                    m.ordering_key == query.ordering_key
                }));
            }
            match resume {
                Some(r) => pos = r,
                None => break,
            }
        }
        out.truncate(query.limit);
        Ok(out)
    }

    async fn stats(&self, project: &ProjectId) -> Result<ProjectStats, BacklogError> {
        let now = self.now();
        let mut st = lock(&self.shared.state);
        let idx = Self::project_idx(&st, project)?;
        Ok(st.index.stats(idx, now))
    }

    fn index_memory(&self) -> Option<crate::types::IndexMemory> {
        Some(EmbeddedBacklog::index_memory(self))
    }

    fn watch(
        &self,
        project: &ProjectId,
        group: &ConsumerGroup,
    ) -> Result<AvailabilityWatch, BacklogError> {
        let st = lock(&self.shared.state);
        let (idx, slot) = Self::locate(&st, project, group)?;
        let g = st.index.projects[idx as usize].group(slot).ok_or_else(|| {
            BacklogError::UnknownGroup {
                project: project.clone(),
                group: group.clone(),
            }
        })?;
        Ok(AvailabilityWatch {
            rx: g.signal.subscribe(),
        })
    }
}

/// Path of a segment file (tests corrupt them on purpose).
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, BacklogError> {
    Ok(segment::list(dir)
        .map_err(|e| BacklogError::io("list", dir, e))?
        .into_iter()
        .map(|(_, p)| p)
        .collect())
}

/// How far from its id's time a message is first looked for.
const NEAR_MS: i64 = 100;

/// The millisecond time of a UUIDv7 written as 32 hex digits (how iotsync makes message
/// ids), if `id` is one.
fn uuid_v7_ms(id: &str) -> Option<i64> {
    let b = id.as_bytes();
    if b.len() != 32 || b[12] != b'7' || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    i64::from_str_radix(&id[..12], 16).ok()
}
