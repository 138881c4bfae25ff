//! Backlog operations (issue 14): keeping acknowledged messages, seeking a group to a
//! time, purging it, and looking messages up by id or by device.
//!
//! A seek or a purge gives the group a new generation: its delivery state (leases,
//! retries, per-key holds) starts over, and tokens of the old generation are unknown
//! leases. Then, over the project's held slots: what the group took and that was
//! produced at or after `from` is owed again (whether it had been acknowledged, dropped
//! or is still owed); what it owed from before is dropped and counted. Dead letters stay
//! where they are (they have their own retry / drop). A purge is a seek to the end of
//! time. Both are logged as one `TAG_SEEK` record and replayed the same way.

use super::{ms_of_s, Index, Slot, MAX_GROUPS_PER_PROJECT};
use crate::codec::Enc;
use crate::types::{MessageState, SeekOutcome};

/// Time-ordered lookups look this far either side of a time: generate times of one
/// project are appended in nearly, not strictly, increasing order.
pub(crate) const SLACK_MS: i64 = 2_000;
/// Most slots one call looks at under the state lock (callers resume where it stopped).
pub(crate) const SCAN_STEP: u64 = 64 * 1024;

/// A purge is a seek to the end of time.
pub(crate) const PURGE_FROM: i64 = i64::MAX;

/// One stretch of a scan: candidates found and where to resume (`None`: done).
pub(crate) type ScanStep = (Vec<(u64, Slot)>, Option<u64>);

impl Index {
    /// Turns keeping acknowledged messages on or off for a project (off: those nobody
    /// owes any more are let go at once).
    pub fn set_keep_acked(&mut self, proj: u32, keep: bool, log: Option<&mut Enc>) {
        let p = &mut self.projects[proj as usize];
        if p.keep_acked == keep {
            return;
        }
        p.keep_acked = keep;
        if let Some(log) = log {
            log.keep_acked(proj, keep);
        }
        if !keep {
            self.let_go_unowed(proj);
        }
    }

    /// Lets go of the project's acknowledged messages nobody owes any more (it does not
    /// keep them).
    pub(crate) fn let_go_unowed(&mut self, proj: u32) {
        let p = &self.projects[proj as usize];
        let (base, next) = (p.base(), p.next_pseq());
        self.walk(proj, base, next, |ix, pseq| {
            ix.change_slot(proj, pseq, |_| {})
        });
        self.projects[proj as usize].pop_front();
    }

    /// Seeks group `slot` to `from_ms` (`PURGE_FROM`: purge). `gen` is the new
    /// generation (replay passes the logged one). Returns `None` if the group is gone.
    pub fn seek(
        &mut self,
        proj: u32,
        slot: u8,
        from_ms: i64,
        gen: Option<u32>,
        log: Option<&mut Enc>,
    ) -> Option<SeekOutcome> {
        let replaying = gen.is_some();
        // The project as it was, logged in front of the seek (see below).
        let before = log
            .is_some()
            .then(|| self.projects[proj as usize].snapshot());
        let p = &mut self.projects[proj as usize];
        let (base, next) = (p.base(), p.next_pseq());
        let new_gen = gen.unwrap_or(p.next_gen);
        p.next_gen = p.next_gen.max(new_gen.saturating_add(1));
        if replaying {
            p.replay_prior.retain(|(g, _), _| *g != slot);
        }
        // Replay may meet the seek of a group whose defining snapshot comes later (its
        // create record was in a deleted segment): the slots change all the same.
        let mut out = SeekOutcome {
            from_ms: (from_ms != PURGE_FROM).then_some(from_ms),
            ..Default::default()
        };
        let mut old_gen = None;
        let mut start = base;
        match p.groups.get_mut(slot as usize)?.as_mut() {
            Some(g) => {
                old_gen = Some(g.gen);
                out.in_flight = g.in_flight.len() as u64;
                g.gen = new_gen;
                g.in_flight.clear();
                g.deadlines.clear();
                g.retry.clear();
                g.retry_due.clear();
                g.keys.clear();
                g.parked = 0;
                g.park_ready.clear();
                g.prior.clear();
                start = g.start_pseq.max(base);
            }
            None if replaying => {}
            None => return None,
        }
        let bit = 1u32 << slot;
        self.walk(proj, start, next, |ix, pseq| {
            let p = &mut ix.projects[proj as usize];
            let Some(s) = p.slot(pseq).copied() else {
                return;
            };
            if (s.takers | s.owners) & bit == 0 || s.expired() {
                return;
            }
            let dead = if replaying {
                p.replay_dead.contains_key(&(slot, pseq))
            } else {
                p.groups[slot as usize]
                    .as_ref()
                    .is_some_and(|g| g.dead.contains_key(&pseq))
            };
            if dead {
                return;
            }
            if s.gen_ms() >= from_ms {
                out.owed += 1;
                if s.owners & bit == 0 {
                    out.replayed += 1;
                    ix.change_slot(proj, pseq, |s| {
                        s.owners |= bit;
                        s.dropped &= !bit;
                    });
                }
            } else if s.owners & bit != 0 {
                out.dropped += 1;
                ix.change_slot(proj, pseq, |s| {
                    s.owners &= !bit;
                    s.dropped |= bit;
                });
            }
        });
        let p = &mut self.projects[proj as usize];
        if let Some(g) = p.groups[slot as usize].as_mut() {
            g.stacked = out.owed;
            g.cursor = start;
            g.oldest_hint = start;
            g.counters.dropped += out.dropped;
            g.counters.replayed += out.replayed;
            if !replaying {
                g.notify();
            }
        }
        if let Some(log) = log {
            // A snapshot first: replay then meets the seek with the project and the
            // group defined and its setting known (else records of a project whose
            // defining snapshot comes later would be replayed provisionally).
            if let Some(snap) = &before {
                log.project_state(snap);
            }
            log.seek(proj, slot, new_gen, from_ms);
        }
        if let (false, Some(old_gen)) = (replaying, old_gen) {
            for m in self.consumers.values_mut() {
                for e in m.iter_mut() {
                    if *e == (proj, slot, old_gen) {
                        e.2 = new_gen;
                    }
                }
            }
        }
        self.projects[proj as usize].pop_front();
        Some(out)
    }

    /// The first seq whose generate time is (about) at or after `t_ms`, by binary search
    /// over the project's slots (nearly time-ordered: callers allow `SLACK_MS`).
    fn seq_at_time(&mut self, proj: u32, t_ms: i64) -> u64 {
        let p = &mut self.projects[proj as usize];
        let (mut lo, mut hi) = (p.base(), p.next_pseq());
        let end = hi;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // Skip tombstones (no time) by looking a little further on.
            let mut probe = None;
            let from = p.slots.skip_empty(mid);
            if from >= hi {
                // Nothing but tombstones from `mid` on: no time there to compare.
                hi = mid;
                continue;
            }
            for i in from..end.min(from + 64) {
                if let Some(s) = p.slots.get(i) {
                    if s.gen_s != 0 || s.held() {
                        probe = Some(s.gen_ms());
                        break;
                    }
                }
            }
            match probe {
                Some(t) if t >= t_ms => hi = mid,
                _ => lo = mid + 1,
            }
        }
        lo
    }

    /// The seq range that may hold messages produced in `[from_ms, to_ms]`.
    pub fn time_range(&mut self, proj: u32, from_ms: i64, to_ms: i64) -> (u64, u64) {
        self.seq_range(
            proj,
            from_ms.saturating_sub(SLACK_MS),
            to_ms.saturating_add(SLACK_MS),
        )
    }

    /// The seqs from the first at or after `from_ms` to the first after `to_ms` (by the
    /// binary search, without slack).
    pub fn seq_range(&mut self, proj: u32, from_ms: i64, to_ms: i64) -> (u64, u64) {
        let lo = self.seq_at_time(proj, from_ms);
        let hi = self.seq_at_time(proj, to_ms.saturating_add(1));
        (lo, hi.max(lo))
    }

    /// Held slots in `[lo, hi)` with this id hash, scanning at most `SCAN_STEP` slots.
    pub fn id_candidates(&mut self, proj: u32, id_hash: u16, lo: u64, hi: u64) -> ScanStep {
        let p = &mut self.projects[proj as usize];
        let lo = lo.max(p.base());
        let hi = hi.min(p.next_pseq());
        let lo = p.slots.skip_empty(lo);
        let stop = hi.min(lo.saturating_add(SCAN_STEP));
        let mut v = Vec::new();
        for pseq in lo..stop {
            if let Some(s) = p.slots.get(pseq) {
                if s.id_hash == id_hash && s.held() {
                    v.push((pseq, *s));
                }
            }
        }
        (v, (stop < hi).then_some(stop))
    }

    /// Held slots of an ordering key produced in `[from_ms, to_ms]`, newest first,
    /// scanning down from `hi` (exclusive) to `lo`: at most `max` of them and at most
    /// `SCAN_STEP` slots looked at. Returns them and where to resume.
    pub fn key_candidates(
        &mut self,
        proj: u32,
        key: u32,
        range: (i64, i64),
        lo: u64,
        hi: u64,
        max: usize,
    ) -> ScanStep {
        let p = &mut self.projects[proj as usize];
        let lo = lo.max(p.base());
        let mut pos = hi.min(p.next_pseq());
        let mut v = Vec::new();
        let mut scanned = 0;
        while pos > lo && v.len() < max && scanned < SCAN_STEP {
            pos -= 1;
            scanned += 1;
            if let Some(s) = p.slots.get(pos) {
                let t = s.gen_ms();
                if s.key == key && s.held() && t >= range.0 && t <= range.1 {
                    v.push((pos, *s));
                }
            }
        }
        (v, (pos > lo).then_some(pos))
    }

    /// The slot of a seq, if still held.
    pub fn held_slot(&mut self, proj: u32, pseq: u64) -> Option<Slot> {
        self.projects[proj as usize]
            .slots
            .get(pseq)
            .copied()
            .filter(|s| s.held())
    }

    /// Every group's state of a held message: (group slot, state, attempts).
    pub fn trace_states(&self, proj: u32, pseq: u64, s: &Slot) -> Vec<(u8, MessageState, u32)> {
        let p = &self.projects[proj as usize];
        let mut out = Vec::new();
        for gi in 0..MAX_GROUPS_PER_PROJECT as u8 {
            let bit = 1u32 << gi;
            let Some(g) = p.group(gi) else { continue };
            if (s.takers | s.owners | s.dropped) & bit == 0 || pseq < g.start_pseq {
                continue;
            }
            let acked = Some(s.acked_s)
                .filter(|a| *a > 0)
                .map(|a| ms_of_s(a).max(s.gen_ms()));
            let (state, attempts) = if s.expired() {
                if s.dropped & bit != 0 {
                    (MessageState::Expired, 0)
                } else {
                    (MessageState::Acknowledged { at_ms: acked }, 0)
                }
            } else if s.owners & bit != 0 {
                if let Some(d) = g.dead.get(&pseq) {
                    (MessageState::DeadLettered { at_ms: d.at_ms }, d.attempts)
                } else if let Some(l) = g.in_flight.get(&pseq) {
                    (
                        MessageState::InFlight {
                            consumer: l.consumer,
                            ack_deadline_ms: l.deadline,
                        },
                        l.attempts,
                    )
                } else if let Some(due) = g.retry_due.get(&pseq) {
                    let a = g.retry.get(&(*due, pseq)).map_or(0, |w| w.attempts);
                    (MessageState::RetryWaiting { due_ms: *due }, a)
                } else {
                    (
                        MessageState::Stacked,
                        g.prior.get(&pseq).copied().unwrap_or(0),
                    )
                }
            } else if s.dropped & bit != 0 {
                (MessageState::Dropped, 0)
            } else {
                (MessageState::Acknowledged { at_ms: acked }, 0)
            };
            out.push((gi, state, attempts));
        }
        out
    }
}
