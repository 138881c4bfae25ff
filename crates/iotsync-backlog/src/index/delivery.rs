//! Delivery state of a group: leasing, settling (ack / nack / reject), consumer loss and
//! ack timeouts.

use std::collections::VecDeque;

use super::{
    DeadInfo, Group, Index, KeyHold, Lease, Pick, Project, Slot, TokenOp, Waiting,
    MAX_GROUPS_PER_PROJECT, UNWRITTEN,
};
use crate::codec::Enc;
use crate::types::{ConsumerId, LeaseToken};

impl Index {
    /// Picks up to `max` messages for a consumer: due redeliveries first, then parked
    /// messages of keys it holds, then fresh messages in append order. A fresh message
    /// of a key held by another consumer (or with earlier ones parked) is parked.
    /// Lease records (runs of consecutive seqs with one attempt count) go to `log`, so
    /// attempt counts survive a restart.
    pub fn lease(
        &mut self,
        proj: u32,
        slot: u8,
        consumer: ConsumerId,
        max: usize,
        now: i64,
        log: &mut Enc,
    ) -> Vec<Pick> {
        let ack_timeout = self.ack_timeout_ms;
        let max_scan = self.max_scan;
        let max_parked = self.max_parked;
        let p = &mut self.projects[proj as usize];
        if p.paused || max == 0 {
            return Vec::new();
        }
        let Project { slots, groups, .. } = &mut *p;
        let base = slots.first();
        let Some(g) = groups[slot as usize].as_mut() else {
            return Vec::new();
        };
        let deadline = now.saturating_add(ack_timeout);
        let mut picks = Vec::new();
        let mut take = |g: &mut Group, pseq: u64, s: &Slot, attempts: u32, holds_key: bool| {
            g.in_flight.insert(
                pseq,
                Lease {
                    consumer,
                    deadline,
                    attempts,
                    holds_key,
                },
            );
            g.deadlines.push_back((deadline, pseq));
            if attempts > 1 {
                g.counters.redelivered += 1;
            }
            picks.push(Pick {
                token: LeaseToken {
                    proj,
                    group: slot,
                    gen: g.gen,
                    seq: pseq,
                },
                seg: s.seg,
                off: s.off,
                len: s.len,
                attempts,
                deadline,
            });
        };
        let mut n = 0;
        // Redeliveries whose time has come (and freed keys' next messages).
        while n < max {
            let Some((&(due, pseq), _)) = g.retry.first_key_value() else {
                break;
            };
            if due > now {
                break;
            }
            let w = g.retry.remove(&(due, pseq)).unwrap_or(Waiting {
                attempts: 0,
                holds_key: false,
            });
            g.retry_due.remove(&pseq);
            match slots.get(pseq) {
                Some(s) if s.owners & (1 << slot) != 0 && s.seg != UNWRITTEN => {
                    let s = *s;
                    if w.holds_key {
                        if let Some(h) = g.keys.get_mut(&s.key) {
                            if h.active == 1 || h.consumer == Some(consumer) {
                                // Nothing else of the key is out, or it is all ours.
                                h.consumer = Some(consumer);
                                if !h.parked.is_empty() {
                                    g.park_ready.entry(consumer).or_default().push(s.key);
                                }
                            } else {
                                // Later messages of the key are out to another consumer:
                                // nobody gets more of it until they are settled.
                                h.consumer = None;
                            }
                        }
                    }
                    take(g, pseq, &s, w.attempts + 1, w.holds_key);
                    n += 1;
                }
                _ => {}
            }
        }
        // Parked messages of keys this consumer holds, in order.
        if n < max && !g.park_ready.is_empty() {
            if let Some(mut ready) = g.park_ready.remove(&consumer) {
                let mut i = 0;
                while i < ready.len() && n < max {
                    let key = ready[i];
                    while n < max {
                        let Some(h) = g.keys.get_mut(&key) else { break };
                        if h.consumer != Some(consumer) {
                            break;
                        }
                        let Some(&pseq) = h.parked.front() else { break };
                        let Some(&s) = slots.get(pseq) else {
                            h.parked.pop_front();
                            g.parked -= 1;
                            continue;
                        };
                        h.parked.pop_front();
                        h.active += 1;
                        g.parked -= 1;
                        let attempts = g.prior_attempts(pseq) + 1;
                        take(g, pseq, &s, attempts, true);
                        n += 1;
                    }
                    let done = g
                        .keys
                        .get(&key)
                        .is_none_or(|h| h.consumer != Some(consumer) || h.parked.is_empty());
                    if done {
                        ready.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
                if !ready.is_empty() {
                    g.park_ready.insert(consumer, ready);
                }
            }
        }
        // Fresh messages from the cursor.
        let mut cursor = g.cursor.max(base);
        let end = slots.next();
        let mut scanned = 0;
        while n < max && cursor < end && scanned < max_scan {
            cursor = slots.skip_empty(cursor);
            let Some(&s) = slots.get(cursor) else { break };
            let owed = s.owners & (1 << slot) != 0;
            if owed && s.seg == UNWRITTEN {
                break; // not durable yet; order forbids skipping past it
            }
            scanned += 1;
            if owed && (g.dead.is_empty() || !g.dead.contains_key(&cursor)) {
                match g.keys.get_mut(&s.key) {
                    None => {
                        g.keys.insert(
                            s.key,
                            KeyHold {
                                consumer: Some(consumer),
                                active: 1,
                                parked: VecDeque::new(),
                            },
                        );
                        let attempts = g.prior_attempts(cursor) + 1;
                        take(g, cursor, &s, attempts, true);
                        n += 1;
                    }
                    Some(h) if h.consumer == Some(consumer) && h.parked.is_empty() => {
                        // Pipelined: the holder gets the key's next message too.
                        h.active += 1;
                        let attempts = g.prior_attempts(cursor) + 1;
                        take(g, cursor, &s, attempts, true);
                        n += 1;
                    }
                    Some(h) => {
                        if g.parked >= max_parked {
                            // Parking is full: the cursor waits here until a key is
                            // released (which signals the group).
                            break;
                        }
                        h.parked.push_back(cursor);
                        g.parked += 1;
                        if h.parked.len() == 1 {
                            if let Some(holder) = h.consumer {
                                // The holder takes it first on its next lease.
                                g.park_ready.entry(holder).or_default().push(s.key);
                                if holder != consumer {
                                    g.notify();
                                }
                            }
                        }
                    }
                }
            }
            cursor += 1;
        }
        g.cursor = cursor;
        // Here too, not only at ticks: memory stays bounded by what is in flight.
        g.compact_deadlines();
        if scanned >= max_scan && cursor < end && n < max {
            // The scan stopped at its bound (it keeps one call short under the lock),
            // not at the end: more may be leasable. Without this signal a consumer whose
            // group has already done a long stretch (e.g. acked before a restart while
            // another group still owes it) would wait for an append that may not come.
            g.notify();
        }
        if !picks.is_empty() {
            log_lease_runs(log, proj, slot, &picks);
            let e = self.consumers.entry(consumer).or_default();
            let gen = picks[0].token.gen;
            if !e.contains(&(proj, slot, gen)) {
                e.push((proj, slot, gen));
            }
        }
        picks
    }

    pub(super) fn group_for_token(&mut self, t: &LeaseToken) -> Option<&mut Group> {
        self.projects
            .get_mut(t.proj as usize)?
            .groups
            .get_mut(t.group as usize)?
            .as_deref_mut()
            .filter(|g| g.gen == t.gen)
    }

    /// Ack, nack or reject a lease. A late ack/reject (lease timed out, message waiting
    /// for redelivery) still counts. `false` if nothing is known of the lease.
    pub fn settle(&mut self, t: &LeaseToken, op: TokenOp, now: i64, log: &mut Enc) -> bool {
        let key = match self
            .projects
            .get_mut(t.proj as usize)
            .and_then(|p| p.slot(t.seq))
        {
            Some(s) if s.owners & (1 << t.group) != 0 => s.key,
            _ => return false,
        };
        let backoff_unit = self.unit_random();
        let retry = self.retry.clone();
        let Some(g) = self.group_for_token(t) else {
            return false;
        };
        let (attempts, holds_key, was_leased) = if let Some(l) = g.in_flight.remove(&t.seq) {
            (l.attempts, l.holds_key, true)
        } else if op != TokenOp::Nack {
            match g.take_waiting(t.seq) {
                Some(w) => (w.attempts, w.holds_key, false),
                None => return false,
            }
        } else {
            return false;
        };
        let op = if op == TokenOp::Nack {
            debug_assert!(was_leased);
            g.counters.nacked += 1;
            match g.next_try(attempts, now, backoff_unit, &retry) {
                Some(due) => {
                    g.wait(
                        t.seq,
                        due,
                        Waiting {
                            attempts,
                            holds_key,
                        },
                    );
                    return true;
                }
                // The group's schedule is used up: dead letter.
                None => TokenOp::Reject,
            }
        } else {
            op
        };
        if op == TokenOp::Ack {
            g.stacked -= 1;
            g.counters.acked += 1;
            if holds_key {
                g.release_key(key);
            }
            log.ack(t.proj, t.group, t.seq);
            let (bit, at) = (!(1u32 << t.group), super::gen_s(now).max(1));
            self.change_slot(t.proj, t.seq, |s| {
                s.owners &= bit;
                s.acked_s = at;
            });
            self.projects[t.proj as usize].pop_front();
        } else {
            g.stacked -= 1;
            g.counters.rejected += 1;
            g.dead.insert(
                t.seq,
                DeadInfo {
                    attempts,
                    at_ms: now,
                },
            );
            if holds_key {
                g.release_key(key);
            }
            log.reject(t.proj, t.group, t.seq, attempts, now);
        }
        true
    }

    /// The consumer's connection is gone: its leases are at once available to others.
    pub fn consumer_gone(&mut self, c: ConsumerId) -> usize {
        let Some(memberships) = self.consumers.remove(&c) else {
            return 0;
        };
        let mut n = 0;
        for (proj, slot, gen) in memberships {
            let Some(g) = self
                .projects
                .get_mut(proj as usize)
                .and_then(|p| p.groups.get_mut(slot as usize))
                .and_then(|g| g.as_mut())
                .filter(|g| g.gen == gen)
            else {
                continue;
            };
            let mine: Vec<u64> = g
                .in_flight
                .iter()
                .filter(|(_, l)| l.consumer == c)
                .map(|(p, _)| *p)
                .collect();
            for pseq in &mine {
                if let Some(l) = g.in_flight.remove(pseq) {
                    g.wait(
                        *pseq,
                        0,
                        Waiting {
                            attempts: l.attempts,
                            holds_key: l.holds_key,
                        },
                    );
                }
            }
            // Its keys are free for whoever leases their redeliveries first.
            g.park_ready.remove(&c);
            for h in g.keys.values_mut() {
                if h.consumer == Some(c) {
                    h.consumer = None;
                }
            }
            if !mine.is_empty() {
                n += mine.len();
                g.notify();
            }
        }
        n
    }

    /// Leases past their deadline go to the retry queue with backoff (or to the dead
    /// letters once the group's schedule is used up). Groups with redeliveries due are
    /// signalled.
    pub fn expire_leases(&mut self, now: i64, log: &mut Enc) -> u64 {
        let mut n = 0;
        for pi in 0..self.projects.len() {
            for gi in 0..MAX_GROUPS_PER_PROJECT {
                let mut timed_out = Vec::new();
                {
                    let Some(g) = self.projects[pi].groups[gi].as_mut() else {
                        continue;
                    };
                    while let Some(&(d, pseq)) = g.deadlines.front() {
                        if d > now {
                            break;
                        }
                        g.deadlines.pop_front();
                        if let Some(l) = g.in_flight.get(&pseq) {
                            if l.deadline == d {
                                timed_out.push(pseq);
                            }
                        }
                    }
                    g.compact_deadlines();
                }
                for pseq in timed_out {
                    let unit = self.unit_random();
                    let Some(g) = self.projects[pi].groups[gi].as_mut() else {
                        break;
                    };
                    let Some(l) = g.in_flight.remove(&pseq) else {
                        continue;
                    };
                    g.counters.timed_out += 1;
                    n += 1;
                    match g.next_try(l.attempts, now, unit, &self.retry) {
                        Some(due) => g.wait(
                            pseq,
                            due,
                            Waiting {
                                attempts: l.attempts,
                                holds_key: l.holds_key,
                            },
                        ),
                        None => {
                            g.stacked -= 1;
                            g.counters.rejected += 1;
                            g.dead.insert(
                                pseq,
                                DeadInfo {
                                    attempts: l.attempts,
                                    at_ms: now,
                                },
                            );
                            if l.holds_key {
                                if let Some(key) = self.projects[pi].slot(pseq).map(|s| s.key) {
                                    if let Some(g) = self.projects[pi].groups[gi].as_mut() {
                                        g.release_key(key);
                                    }
                                }
                            }
                            log.reject(pi as u32, gi as u8, pseq, l.attempts, now);
                        }
                    }
                }
                if let Some(g) = self.projects[pi].groups[gi].as_ref() {
                    if g.retry
                        .first_key_value()
                        .is_some_and(|((d, _), _)| *d <= now)
                        && !self.projects[pi].paused
                    {
                        g.notify();
                    }
                }
            }
        }
        n
    }
}

/// One lease record per run of picks with consecutive seqs and one attempt count (a
/// lease of fresh messages is usually one run).
fn log_lease_runs(log: &mut Enc, proj: u32, slot: u8, picks: &[Pick]) {
    let mut i = 0;
    while i < picks.len() {
        let first = picks[i].token.seq;
        let attempts = picks[i].attempts;
        let mut j = i + 1;
        while j < picks.len()
            && picks[j].attempts == attempts
            && picks[j].token.seq == first + (j - i) as u64
            && j - i < u32::MAX as usize
        {
            j += 1;
        }
        log.leased(proj, slot, first, (j - i) as u32, attempts);
        i = j;
    }
}
