//! The single writer thread and group commit.
//!
//! Callers change the index and append the matching records to `State::pending` under
//! the state lock; the writer takes everything pending at once, writes it to the newest
//! segment with one `write` + one `fdatasync`, then (under the lock again) points the new
//! slots at their records, which makes them leasable, and wakes the waiting appenders.
//! While it syncs, new records pile up for the next batch: that is the group commit.
//!
//! On a failed write (disk full…) the file is cut back to where the batch began, the
//! batch's messages are removed from the index (their appends fail), and the batch's
//! other records (acks, settings) are put back in front of the queue to be retried.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, error, warn};

use crate::codec::Enc;
use crate::error::CommitError;
use crate::index::{Index, SegInfo};
use crate::segment::{self, HEADER};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingMsg {
    pub proj: u32,
    pub pseq: u64,
    pub off: usize,
    pub len: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingReloc {
    pub proj: u32,
    pub pseq: u64,
    pub old_seg: u32,
    pub off: usize,
    pub len: usize,
}

/// Records waiting for the writer, in log order.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub enc: Enc,
    pub msgs: Vec<PendingMsg>,
    pub relocs: Vec<PendingReloc>,
    pub waiters: Vec<oneshot::Sender<Result<(), CommitError>>>,
    /// Segments to delete once this batch (holding fresh project snapshots) is durable.
    pub drop_segs: Vec<u32>,
    pub compaction: bool,
    /// Bytes of `enc` that are settlement records (acks…), which may wait for a while.
    pub settle_len: usize,
    /// When the first of those was queued into an empty batch.
    pub settle_since: Option<Instant>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.enc.buf.is_empty() && self.waiters.is_empty()
    }

    /// Holds nothing but settlement records: nobody waits for them.
    fn settles_only(&self) -> bool {
        self.enc.buf.len() == self.settle_len
            && self.waiters.is_empty()
            && self.msgs.is_empty()
            && self.relocs.is_empty()
            && self.drop_segs.is_empty()
            && !self.compaction
    }

    /// Accounts `added` bytes just encoded by a settlement; says whether the writer
    /// must be woken (it sleeps without a deadline on an empty batch, or the
    /// settlements reached `flush_bytes`).
    pub fn settled(&mut self, added: usize, was_empty: bool, flush_bytes: usize) -> bool {
        if added == 0 {
            return false;
        }
        let before = self.settle_len;
        self.settle_len += added;
        if was_empty {
            self.settle_since = Some(Instant::now());
            return true;
        }
        before < flush_bytes && self.settle_len >= flush_bytes
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub index: Index,
    pub pending: Pending,
    pub files: HashMap<u32, Arc<File>>,
    pub active: u32,
    pub closing: bool,
    pub stopped: bool,
    pub compacting: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub cfg: crate::config::BacklogConfig,
    pub clock: iotsync_core::SharedClock,
    pub state: Mutex<State>,
    pub wake: Condvar,
    /// Signalled when the writer takes a batch (backpressure on appenders).
    pub space: tokio::sync::Notify,
    pub stopped: tokio::sync::watch::Sender<bool>,
}

/// The segment being written.
#[derive(Debug)]
pub(crate) struct Active {
    pub id: u32,
    pub file: Arc<File>,
    pub len: u64,
    /// A failed write could not be cut back: start a new segment before the next write.
    pub broken: bool,
}

fn roll(shared: &Shared, active: &mut Active) -> Result<(), CommitError> {
    let id = active.id + 1;
    let path = segment::seg_path(&shared.dir, id);
    let f = segment::create(&shared.dir, id).map_err(|e| CommitError::new("create", &path, &e))?;
    let f = Arc::new(f);
    {
        let mut st = lock(&shared.state);
        st.files.insert(id, f.clone());
        st.index.segs.insert(
            id,
            SegInfo {
                size: HEADER,
                ..SegInfo::default()
            },
        );
        st.active = id;
    }
    debug!(segment = id, "backlog segment started");
    *active = Active {
        id,
        file: f,
        len: HEADER,
        broken: false,
    };
    Ok(())
}

fn write(shared: &Shared, active: &mut Active, buf: &[u8]) -> Result<u64, CommitError> {
    if active.broken
        || (active.len + buf.len() as u64 > shared.cfg.segment_bytes && active.len > HEADER)
    {
        roll(shared, active)?;
    }
    let at = active.len;
    let path = segment::seg_path(&shared.dir, active.id);
    let r = active
        .file
        .write_all_at(buf, at)
        .map_err(|e| CommitError::new("write", &path, &e))
        .and_then(|_| {
            active
                .file
                .sync_data()
                .map_err(|e| CommitError::new("fdatasync", &path, &e))
        });
    if let Err(e) = r {
        // Cut the partial batch off so nothing of a failed append survives a restart.
        if let Err(t) = active
            .file
            .set_len(at)
            .and_then(|_| active.file.sync_data())
        {
            warn!(path = %path.display(), error = %t, "could not cut back a failed write; starting a new segment");
            active.broken = true;
        }
        return Err(e);
    }
    active.len += buf.len() as u64;
    Ok(at)
}

/// Runs until the engine closes: takes batches, commits them, keeps segments tidy.
pub(crate) fn run(shared: Arc<Shared>, mut active: Active) {
    let mut final_snapshot_done = false;
    loop {
        let batch = {
            let mut st = lock(&shared.state);
            loop {
                if !st.pending.is_empty() {
                    // Settlements alone wait for company, a deadline or a size.
                    let p = &st.pending;
                    let due = match p.settle_since {
                        Some(t) if !st.closing && p.settles_only() => {
                            Some(t + shared.cfg.settle_flush_interval)
                        }
                        _ => None,
                    };
                    let now = Instant::now();
                    match due {
                        Some(due) if now < due && p.settle_len < shared.cfg.settle_flush_bytes => {
                            st = shared
                                .wake
                                .wait_timeout(st, due - now)
                                .unwrap_or_else(|e| e.into_inner())
                                .0;
                            continue;
                        }
                        _ => break,
                    }
                }
                if st.closing {
                    if final_snapshot_done {
                        st.stopped = true;
                        drop(st);
                        shared.stopped.send_replace(true);
                        return;
                    }
                    let snaps = st.index.snapshots();
                    for s in &snaps {
                        st.pending.enc.project_state(s);
                    }
                    final_snapshot_done = true;
                    if st.pending.is_empty() {
                        continue;
                    }
                    break;
                }
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::take(&mut st.pending)
        };
        shared.space.notify_waiters();
        let result = if batch.enc.buf.is_empty() {
            Ok(active.len)
        } else {
            write(&shared, &mut active, &batch.enc.buf)
        };
        match result {
            Ok(at) => committed(&shared, &active, batch, at),
            Err(e) => failed(&shared, batch, e),
        }
    }
}

fn committed(shared: &Shared, active: &Active, batch: Pending, at: u64) {
    let seg = active.id;
    let mut to_delete = Vec::new();
    {
        let mut st = lock(&shared.state);
        let mut touched = BTreeSet::new();
        for m in &batch.msgs {
            st.index.written(
                m.proj,
                m.pseq,
                seg,
                (at + m.off as u64) as u32,
                m.len as u32,
            );
            touched.insert(m.proj);
        }
        for r in &batch.relocs {
            st.index.relocated(
                r.proj,
                r.pseq,
                r.old_seg,
                seg,
                (at + r.off as u64) as u32,
                r.len as u32,
            );
        }
        if batch.compaction {
            st.compacting = false;
        }
        if let Some(si) = st.index.segs.get_mut(&seg) {
            si.size = active.len;
        }
        for p in touched {
            if let Some(p) = st.index.projects.get(p as usize) {
                if !p.paused {
                    p.groups.iter().flatten().for_each(|g| g.notify());
                }
            }
        }
        for id in batch.drop_segs {
            st.index.segs.remove(&id);
            st.files.remove(&id);
            to_delete.push(id);
        }
        maintain(shared, &mut st);
    }
    // Delete before waking the waiters: once a flush returns, the files on disk are the
    // state it waited for.
    if !to_delete.is_empty() {
        for id in &to_delete {
            let path = segment::seg_path(&shared.dir, *id);
            if let Err(e) = std::fs::remove_file(&path) {
                warn!(path = %path.display(), error = %e, "could not delete a finished segment");
            }
        }
        let _ = segment::sync_dir(&shared.dir);
        debug!(segments = ?to_delete, "finished backlog segments deleted");
    }
    for tx in batch.waiters {
        let _ = tx.send(Ok(()));
    }
}

fn failed(shared: &Shared, batch: Pending, e: CommitError) {
    error!(path = %e.path.display(), op = e.op, error = %e.message, "backlog commit failed");
    {
        let mut st = lock(&shared.state);
        for m in &batch.msgs {
            st.index.unwritten(m.proj, m.pseq);
        }
        if batch.compaction {
            st.compacting = false;
        }
        // Keep every record that is not a message (acks, settings, snapshots): they
        // describe changes already made in memory and go first in the next batch.
        let mut cut: Vec<(usize, usize)> = batch
            .msgs
            .iter()
            .map(|m| (m.off, m.len))
            .chain(batch.relocs.iter().map(|r| (r.off, r.len)))
            .collect();
        cut.sort_unstable();
        let mut keep = Vec::new();
        let mut at = 0;
        for (off, len) in cut {
            keep.extend_from_slice(&batch.enc.buf[at..off]);
            at = off + len;
        }
        keep.extend_from_slice(&batch.enc.buf[at..]);
        if !keep.is_empty() {
            let shift = keep.len();
            let p = &mut st.pending;
            keep.extend_from_slice(&p.enc.buf);
            p.enc.buf = keep;
            p.msgs.iter_mut().for_each(|m| m.off += shift);
            p.relocs.iter_mut().for_each(|r| r.off += shift);
            p.drop_segs.extend(batch.drop_segs);
        } else {
            st.pending.drop_segs.extend(batch.drop_segs);
        }
        if !st.pending.drop_segs.is_empty() {
            // Snapshots were cut with the batch only if it held none; keep it simple and
            // let maintenance schedule the deletion again.
            for id in std::mem::take(&mut st.pending.drop_segs) {
                if let Some(si) = st.index.segs.get_mut(&id) {
                    si.dropping = false;
                }
            }
        }
    }
    for tx in batch.waiters {
        let _ = tx.send(Err(e.clone()));
    }
}

/// Schedules deletion of leading segments nothing lives in (after fresh snapshots of
/// every project, so no setting is lost with them), or compaction of a sparse oldest
/// segment (its live records are copied to the head).
fn maintain(shared: &Shared, st: &mut State) {
    let active = st.active;
    let mut dead = Vec::new();
    for (&id, si) in st.index.segs.iter() {
        if id == active || si.live > 0 {
            break;
        }
        if !si.dropping {
            dead.push(id);
        }
    }
    if !dead.is_empty() {
        for s in st.index.snapshots() {
            st.pending.enc.project_state(&s);
        }
        for id in &dead {
            if let Some(si) = st.index.segs.get_mut(id) {
                si.dropping = true;
            }
        }
        st.pending.drop_segs.extend(dead);
        return;
    }
    if st.compacting || st.closing {
        return;
    }
    let Some((&id, si)) = st.index.segs.first_key_value() else {
        return;
    };
    let sparse = (si.live_bytes as f64) < shared.cfg.compact_below_live_ratio * si.size as f64;
    if id == active || si.live == 0 || !sparse || si.size < shared.cfg.segment_bytes / 2 {
        return;
    }
    let Some(file) = st.files.get(&id).cloned() else {
        return;
    };
    let live = st.index.live_in_segment(id);
    let mut n = 0;
    for (proj, pseq, s) in live {
        // The segment is immutable: reading it under the lock only costs page-cache reads
        // of the few records still live in it.
        let body = match segment::read_record(&file, s.off, s.len) {
            Ok(b) => b,
            Err(e) => {
                warn!(segment = id, offset = s.off, error = %e, "cannot read a record to compact");
                return;
            }
        };
        let inner = match crate::codec::message_body(&body) {
            Ok(b) => b,
            Err(e) => {
                warn!(segment = id, offset = s.off, error = %e, "cannot decode a record to compact");
                return;
            }
        };
        let marks = st.index.dead_marks(proj, pseq);
        let tries = st.index.attempt_marks(proj, pseq);
        let retain = crate::codec::RetainMarks {
            takers: s.takers,
            dropped: s.dropped,
            acked_s: s.acked_s,
            meta: s.meta,
        };
        let start = st.pending.enc.buf.len();
        st.pending
            .enc
            .relocated(&marks, &tries, retain, s.owners, inner);
        let len = st.pending.enc.buf.len() - start;
        st.pending.relocs.push(PendingReloc {
            proj,
            pseq,
            old_seg: id,
            off: start,
            len,
        });
        n += 1;
    }
    st.compacting = true;
    st.pending.compaction = true;
    debug!(
        segment = id,
        relocated = n,
        "compacting the oldest backlog segment"
    );
}
