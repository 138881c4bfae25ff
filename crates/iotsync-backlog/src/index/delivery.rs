//! Delivery state of a group: leasing, settling (ack / nack / reject), consumer loss and
//! ack timeouts.

use std::collections::VecDeque;

use super::{
    DeadInfo, Group, Index, Lease, Pick, Project, Slot, TokenOp, Waiting, MAX_GROUPS_PER_PROJECT,
    UNWRITTEN,
};
use crate::codec::Enc;
use crate::types::{ConsumerId, LeaseToken};

impl Index {
    /// Picks up to `max` messages for a consumer: due redeliveries first, then fresh
    /// messages in append order, skipping (parking) those whose key is held.
    pub fn lease(
        &mut self,
        proj: u32,
        slot: u8,
        consumer: ConsumerId,
        max: usize,
        now: i64,
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
        // Redeliveries whose time has come.
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
                    take(g, pseq, &s, w.attempts + 1, w.holds_key);
                    n += 1;
                }
                _ => {}
            }
        }
        // Fresh messages from the cursor.
        let mut cursor = g.cursor.max(base);
        let end = slots.next();
        let mut scanned = 0;
        while n < max && cursor < end && scanned < max_scan {
            let Some(&s) = slots.get(cursor) else { break };
            let owed = s.owners & (1 << slot) != 0;
            if owed && s.seg == UNWRITTEN {
                break; // not durable yet; order forbids skipping past it
            }
            scanned += 1;
            if owed && (g.dead.is_empty() || !g.dead.contains_key(&cursor)) {
                if let Some(q) = g.keys.get_mut(&s.key) {
                    if g.parked >= max_parked {
                        // Parking is full: the cursor waits here until a key is
                        // released (which signals the group).
                        break;
                    }
                    q.push_back(cursor);
                    g.parked += 1;
                } else {
                    g.keys.insert(s.key, VecDeque::new());
                    take(g, cursor, &s, 1, true);
                    n += 1;
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
            .as_mut()
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
        match op {
            TokenOp::Ack => {
                g.stacked -= 1;
                g.counters.acked += 1;
                if holds_key {
                    g.release_key(key);
                }
                log.ack(t.proj, t.group, t.seq);
                self.disown(t.proj, t.seq, t.group);
                self.projects[t.proj as usize].pop_front();
            }
            TokenOp::Nack => {
                debug_assert!(was_leased);
                g.counters.nacked += 1;
                let due = now.saturating_add(retry.delay_ms(attempts, backoff_unit));
                g.wait(
                    t.seq,
                    due,
                    Waiting {
                        attempts,
                        holds_key,
                    },
                );
            }
            TokenOp::Reject => {
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
            if !mine.is_empty() {
                n += mine.len();
                g.notify();
            }
        }
        n
    }

    /// Leases past their deadline go to the retry queue with backoff. Groups with
    /// redeliveries due are signalled.
    pub fn expire_leases(&mut self, now: i64) -> u64 {
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
                    let due = now.saturating_add(self.retry.delay_ms(l.attempts, unit));
                    g.wait(
                        pseq,
                        due,
                        Waiting {
                            attempts: l.attempts,
                            holds_key: l.holds_key,
                        },
                    );
                    n += 1;
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
