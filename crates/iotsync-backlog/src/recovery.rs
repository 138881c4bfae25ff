//! Opening a data directory: replay every segment in order into a fresh index. Damaged
//! stretches are reported and skipped, a torn tail of the newest segment is cut off.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tracing::{info, warn};

use crate::codec::{decode, Record};
use crate::error::BacklogError;
use crate::index::{DeadInfo, Index, SegInfo};
use crate::segment;
use crate::types::{DamagedRange, RecoveryReport};

pub(crate) struct Recovered {
    pub report: RecoveryReport,
    pub files: HashMap<u32, Arc<File>>,
    pub last_segment: u32,
}

/// Projects an index can name (dense from 0; far more than any deployment).
const MAX_PROJECTS: u32 = 1 << 20;
/// Per-project sequence numbers and gaps a log can hold (a trillion messages, 4 G
/// between two records of one project); beyond, a record is not believed.
const MAX_PSEQ: u64 = 1 << 40;
const MAX_GAP: u64 = 1 << 32;
/// The longest run one lease record can name (a lease is bounded by credit).
const MAX_LEASE_RUN: u32 = 1 << 16;

/// Whether a record that checks out (CRC) is one the engine could have written: its
/// numbers within what replay can hold. Such a record can only come from a damaged or
/// crafted file; it is reported as damage instead of replayed.
fn implausible(index: &Index, rec: &Record) -> Option<&'static str> {
    use crate::index::MAX_GROUPS_PER_PROJECT as G;
    let group_ok = |g: u8| (g as usize) < G;
    let (proj, group, pseq) = match rec {
        Record::Msg(h) => (h.proj, None, Some(h.pseq)),
        Record::Relocated {
            head, dead, tries, ..
        } => {
            if dead.iter().any(|d| !group_ok(d.group))
                || tries.iter().flatten().any(|(g, _)| !group_ok(*g))
            {
                return Some("a group slot out of range");
            }
            (head.proj, None, Some(head.pseq))
        }
        Record::Seek { proj, group, .. } => (*proj, Some(*group), None),
        Record::KeepAcked { proj, .. }
        | Record::Retention { proj, .. }
        | Record::Paused { proj, .. }
        | Record::Expire { proj, .. } => (*proj, None, None),
        Record::Ack { proj, group, pseq }
        | Record::DeadRetry { proj, group, pseq }
        | Record::DeadDrop { proj, group, pseq }
        | Record::Reject {
            proj, group, pseq, ..
        } => (*proj, Some(*group), Some(*pseq)),
        Record::GroupCreate {
            proj,
            group,
            start_pseq,
            ..
        } => (*proj, Some(*group), Some(*start_pseq)),
        Record::GroupDelete { proj, group } | Record::GroupSpec { proj, group, .. } => {
            (*proj, Some(*group), None)
        }
        Record::Leased {
            proj,
            group,
            first,
            count,
            ..
        } => {
            if *count > MAX_LEASE_RUN {
                return Some("a lease run too long");
            }
            (*proj, Some(*group), Some(*first))
        }
        Record::ProjectState(s) => {
            if s.groups.iter().any(|g| !group_ok(g.slot)) {
                return Some("a group slot out of range");
            }
            (s.proj, None, Some(s.next_pseq))
        }
    };
    if proj >= MAX_PROJECTS {
        return Some("a project index out of range");
    }
    if group.is_some_and(|g| !group_ok(g)) {
        return Some("a group slot out of range");
    }
    if let Some(pseq) = pseq {
        if pseq >= MAX_PSEQ {
            return Some("a sequence number out of range");
        }
        if let Some(p) = index.projects.get(proj as usize) {
            let (base, next) = (p.base(), p.next_pseq());
            let gap = if p.slots.is_empty() {
                0
            } else if pseq >= next {
                pseq - next
            } else {
                base.saturating_sub(pseq)
            };
            if gap > MAX_GAP {
                return Some("a sequence number far from the project's others");
            }
        }
    }
    None
}

fn apply(index: &mut Index, rec: Record, loc: (u32, u32, u32)) {
    match rec {
        Record::Msg(h) => index.replay_msg(&h, None, None, None, loc),
        Record::Relocated {
            head,
            dead,
            tries,
            retain,
        } => index.replay_msg(&head, Some(&dead), tries.as_deref(), retain, loc),
        Record::Seek {
            proj,
            group,
            gen,
            from_ms,
        } => index.replay_seek(proj, group, gen, from_ms),
        Record::KeepAcked { proj, keep } => index.replay_keep_acked(proj, keep),
        Record::Ack { proj, group, pseq } => index.replay_ack(proj, group, pseq),
        Record::Reject {
            proj,
            group,
            pseq,
            attempts,
            at_ms,
        } => index.replay_reject(proj, group, pseq, DeadInfo { attempts, at_ms }),
        Record::DeadRetry { proj, group, pseq } => index.replay_dead_retry(proj, group, pseq),
        Record::DeadDrop { proj, group, pseq } => index.replay_dead_drop(proj, group, pseq),
        Record::GroupCreate {
            proj,
            group,
            gen,
            start_pseq,
            name,
        } => index.replay_group_create(proj, group, gen, start_pseq, &name),
        Record::GroupDelete { proj, group } => index.replay_group_delete(proj, group),
        Record::GroupSpec {
            proj,
            group,
            gen,
            spec,
        } => index.replay_group_spec(proj, group, gen, spec),
        Record::Leased {
            proj,
            group,
            first,
            count,
            attempts,
        } => index.replay_leased(proj, group, first, count, attempts),
        Record::Retention { proj, ms } => index.replay_retention(proj, ms),
        Record::Paused { proj, paused } => index.replay_paused(proj, paused),
        Record::Expire { proj, cutoff_s } => index.replay_expire(proj, cutoff_s),
        Record::ProjectState(s) => index.replay_snapshot(&s),
    }
}

pub(crate) fn recover(dir: &Path, index: &mut Index) -> Result<Recovered, BacklogError> {
    let started = Instant::now();
    let segs = segment::list(dir).map_err(|e| BacklogError::io("list", dir, e))?;
    let mut report = RecoveryReport {
        segments: segs.len(),
        ..RecoveryReport::default()
    };
    let mut files = HashMap::new();
    let newest = segs.last().map(|(id, _)| *id);
    for (id, path) in &segs {
        let bytes = std::fs::read(path).map_err(|e| BacklogError::io("read", path, e))?;
        report.bytes += bytes.len() as u64;
        let mut undecodable = Vec::new();
        let scan = segment::scan(&bytes, |off, len, body| {
            report.records += 1;
            match decode(body) {
                Ok(rec) => match implausible(index, &rec) {
                    None => apply(index, rec, (*id, off, len)),
                    Some(why) => undecodable.push(DamagedRange {
                        path: path.clone(),
                        offset: off as u64,
                        len: len as u64,
                        reason: format!("record checks out but cannot be the engine's: {why}"),
                    }),
                },
                Err(e) => undecodable.push(DamagedRange {
                    path: path.clone(),
                    offset: off as u64,
                    len: len as u64,
                    reason: format!("record checks out but does not decode: {e}"),
                }),
            }
        });
        report.damaged.extend(undecodable);
        for d in scan.damaged {
            report.damaged.push(DamagedRange {
                path: path.clone(),
                offset: d.offset,
                len: d.len,
                reason: d.reason,
            });
        }
        let mut size = bytes.len() as u64;
        if let Some(t) = scan.tail {
            let range = DamagedRange {
                path: path.clone(),
                offset: t.offset,
                len: t.len,
                reason: t.reason,
            };
            if Some(*id) == newest && t.offset >= segment::HEADER {
                // A crash mid-write: the batch's appends never returned. Cut it off so the
                // next open finds a clean file.
                let cut = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(t.offset).and_then(|_| f.sync_all()));
                if let Err(e) = cut {
                    warn!(path = %path.display(), error = %e, "could not cut a torn tail");
                }
                size = t.offset;
                report.torn_tail = Some(range);
            } else {
                report.damaged.push(range);
            }
        }
        index.segs.insert(
            *id,
            SegInfo {
                size,
                ..SegInfo::default()
            },
        );
        let f = File::open(path).map_err(|e| BacklogError::io("open", path, e))?;
        files.insert(*id, Arc::new(f));
    }
    let unnamed = index.finish_replay();
    for p in unnamed {
        report.damaged.push(DamagedRange {
            path: dir.to_path_buf(),
            offset: 0,
            len: 0,
            reason: format!(
                "records of project #{p} found without its definition (lost to damage); ignored"
            ),
        });
    }
    report.projects = index.projects.iter().filter(|p| p.named).count();
    for p in &index.projects {
        report.messages += p.live;
        for g in p.groups.iter().flatten() {
            report.groups += 1;
            report.dead_letters += g.dead.len() as u64;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    for d in &report.damaged {
        warn!(path = %d.path.display(), offset = d.offset, len = d.len, reason = %d.reason,
            "backlog data damaged: skipped");
    }
    if let Some(t) = &report.torn_tail {
        info!(path = %t.path.display(), offset = t.offset, len = t.len, "torn tail of the newest backlog segment cut off");
    }
    info!(
        segments = report.segments,
        messages = report.messages,
        dead_letters = report.dead_letters,
        projects = report.projects,
        ms = report.duration_ms,
        "backlog recovered"
    );
    Ok(Recovered {
        report,
        files,
        last_segment: newest.unwrap_or(0),
    })
}
