//! What the owning node holds of one group: messages pulled and not yet leased (in
//! stream order per partition), deliveries in flight, and the per-key stickiness of the
//! trait (a key sticks to the consumer that has messages of it in flight; the others
//! skip it), as the embedded engine keeps it (ADR 0002, "Pipelined keys").

use std::collections::{HashMap, HashSet, VecDeque};

use async_nats::Subject;
use iotsync_core::SyncMessage;

use super::wire::Class;
use crate::types::ConsumerId;

/// A message this node pulled and holds (JetStream counts it as pending ack).
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub class: Class,
    pub part: u16,
    pub sseq: u64,
    /// Where `+ACK`, `-NAK`, `+WPI` and `+TERM` go.
    pub reply: Subject,
    pub message: SyncMessage,
    /// The attempt the next lease of it says.
    pub attempt: u32,
    /// When JetStream's ack timer was last reset (pull or `+WPI`), engine clock.
    pub touched_ms: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct InFlight {
    pub held: Held,
    pub consumer: ConsumerId,
    pub deadline_ms: i64,
}

/// A failed delivery waiting here for its retry time (JetStream still counts it pending).
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub held: Held,
    pub due_ms: i64,
    /// The lease it timed out of: a late ack of that token still counts.
    pub gen: Option<u32>,
}

#[derive(Debug, Default)]
pub(crate) struct LocalGroup {
    buffer: VecDeque<Held>,
    in_flight: HashMap<u32, InFlight>,
    retry: Vec<Waiting>,
    /// Ordering key → (consumer holding it, its messages in flight or waiting for retry).
    keys: HashMap<String, (Option<ConsumerId>, u32)>,
    held: HashSet<(Class, u64)>,
    buffered_per_part: HashMap<(Class, u16), usize>,
    in_flight_per_part: HashMap<u16, usize>,
    /// A timed-out lease's number → the redelivery's (a late ack of it still counts).
    alias: HashMap<u32, u32>,
}

/// One lease made by [`LocalGroup::lease`].
pub(crate) struct Leased {
    pub gen: u32,
    pub held: Held,
}

impl LocalGroup {
    /// Adds a pulled message; false if this node already holds that sequence (a
    /// JetStream redelivery of something still buffered, waiting or in flight here).
    pub fn push(&mut self, h: Held) -> bool {
        if !self.held.insert((h.class, h.sseq)) {
            return false;
        }
        *self.buffered_per_part.entry((h.class, h.part)).or_default() += 1;
        self.buffer.push_back(h);
        true
    }

    pub fn buffered(&self, class: Class, part: u16) -> usize {
        self.buffered_per_part
            .get(&(class, part))
            .copied()
            .unwrap_or(0)
    }

    pub fn in_flight_of_part(&self, part: u16) -> usize {
        self.in_flight_per_part.get(&part).copied().unwrap_or(0)
    }

    pub fn buffered_total(&self) -> usize {
        self.buffer.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn resolve(&self, gen: u32) -> u32 {
        self.alias.get(&gen).copied().unwrap_or(gen)
    }

    pub fn attempt_of(&self, gen: u32) -> Option<u32> {
        self.in_flight
            .get(&self.resolve(gen))
            .map(|f| f.held.attempt)
    }

    pub fn has_due(&self, now_ms: i64) -> bool {
        self.retry.iter().any(|w| w.due_ms <= now_ms)
    }

    pub fn retry_waiting(&self) -> usize {
        self.retry.len()
    }

    fn key_free(&self, key: &str, consumer: ConsumerId) -> bool {
        match self.keys.get(key) {
            Some((Some(c), n)) => *c == consumer || *n == 0,
            _ => true,
        }
    }

    fn hold_key(&mut self, key: &str, consumer: ConsumerId, add: u32) {
        let e = self.keys.entry(key.to_owned()).or_insert((None, 0));
        *e = (Some(consumer), e.1 + add);
    }

    fn unhold_key(&mut self, key: &str) {
        if let Some((_, n)) = self.keys.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.keys.remove(key);
            }
        }
    }

    /// Up to `max` messages for `consumer`: due retries first, then the buffer in
    /// order, skipping keys another consumer holds and partitions in `closed` (being
    /// handed over). `gen` numbers the leases.
    pub fn lease(
        &mut self,
        consumer: ConsumerId,
        max: usize,
        closed: &HashSet<u16>,
        now_ms: i64,
        deadline_ms: i64,
        mut gen: impl FnMut() -> u32,
    ) -> Vec<Leased> {
        let mut out = Vec::new();
        self.retry
            .sort_by_key(|w| (w.due_ms, w.held.class, w.held.sseq));
        let mut i = 0;
        while i < self.retry.len() && out.len() < max {
            let w = &self.retry[i];
            if w.due_ms > now_ms {
                break;
            }
            // A due redelivery goes to whoever leases (it may overtake, SPEC §4); the
            // key then sticks to that consumer.
            if closed.contains(&w.held.part) {
                i += 1;
                continue;
            }
            let w = self.retry.remove(i);
            // Counted for its key while waiting: keep the count, change the holder.
            self.hold_key(&w.held.message.ordering_key, consumer, 0);
            let l = self.start(consumer, w.held, deadline_ms, &mut gen);
            if let Some(old) = w.gen {
                self.alias.retain(|_, new| *new != old);
                self.alias.insert(old, l.gen);
            }
            out.push(l);
        }
        let mut i = 0;
        while i < self.buffer.len() && out.len() < max {
            let h = &self.buffer[i];
            if !self.key_free(&h.message.ordering_key, consumer) || closed.contains(&h.part) {
                i += 1;
                continue;
            }
            let Some(h) = self.buffer.remove(i) else {
                break;
            };
            self.dec_buffered(h.class, h.part);
            self.hold_key(&h.message.ordering_key, consumer, 1);
            out.push(self.start(consumer, h, deadline_ms, &mut gen));
        }
        out
    }

    fn start(
        &mut self,
        consumer: ConsumerId,
        held: Held,
        deadline_ms: i64,
        gen: &mut impl FnMut() -> u32,
    ) -> Leased {
        *self.in_flight_per_part.entry(held.part).or_default() += 1;
        let g = gen();
        self.in_flight.insert(
            g,
            InFlight {
                held: held.clone(),
                consumer,
                deadline_ms,
            },
        );
        Leased { gen: g, held }
    }

    fn dec_buffered(&mut self, class: Class, part: u16) {
        if let Some(n) = self.buffered_per_part.get_mut(&(class, part)) {
            *n = n.saturating_sub(1);
        }
    }

    fn end_in_flight(&mut self, gen: u32) -> Option<InFlight> {
        let f = self.in_flight.remove(&gen)?;
        if let Some(n) = self.in_flight_per_part.get_mut(&f.held.part) {
            *n = n.saturating_sub(1);
        }
        Some(f)
    }

    /// Ends a lease for good (ack, reject, dead letter): the message is no longer held
    /// here. A lease that timed out is found too (a late ack), waiting for its retry or
    /// redelivered. Also returns the other lease number of the same message, if any.
    pub fn settle(&mut self, gen: u32) -> Option<(Held, Option<u32>)> {
        let cur = self.resolve(gen);
        let other = if cur != gen {
            self.alias.remove(&gen);
            Some(cur)
        } else {
            let old = self.alias.iter().find(|(_, n)| **n == gen).map(|(o, _)| *o);
            if let Some(o) = old {
                self.alias.remove(&o);
            }
            old
        };
        let gen = cur;
        let held = match self.end_in_flight(gen) {
            Some(f) => f.held,
            None => {
                let i = self.retry.iter().position(|w| w.gen == Some(gen))?;
                self.retry.remove(i).held
            }
        };
        self.unhold_key(&held.message.ordering_key);
        self.held.remove(&(held.class, held.sseq));
        Some((held, other))
    }

    /// A failed delivery (nack): waits here until `due_ms`, its key still held.
    pub fn retry_later(&mut self, gen: u32, due_ms: i64, keep_token: bool) -> Option<Held> {
        let gen = self.resolve(gen);
        if !keep_token {
            self.alias.retain(|_, n| *n != gen);
        }
        let mut f = self.end_in_flight(gen)?;
        f.held.attempt += 1;
        self.retry.push(Waiting {
            held: f.held.clone(),
            due_ms,
            gen: keep_token.then_some(gen),
        });
        Some(f.held)
    }

    /// The consumer went away: its deliveries go back to the front of the buffer in
    /// stream order, at once available to the others; the keys it held are free.
    /// Returns their lease numbers.
    pub fn requeue_consumer(&mut self, consumer: ConsumerId) -> Vec<u32> {
        let mut gens: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.consumer == consumer)
            .map(|(g, _)| *g)
            .collect();
        gens.sort_unstable();
        let mut back = Vec::new();
        for g in &gens {
            if let Some(f) = self.end_in_flight(*g) {
                self.unhold_key(&f.held.message.ordering_key);
                back.push(f.held);
            }
        }
        for (c, _) in self.keys.values_mut() {
            if *c == Some(consumer) {
                *c = None;
            }
        }
        back.sort_by_key(|h| (h.class, h.sseq));
        for mut h in back.into_iter().rev() {
            h.attempt += 1;
            *self.buffered_per_part.entry((h.class, h.part)).or_default() += 1;
            self.buffer.push_front(h);
        }
        gens
    }

    /// Leases past their deadline (the caller retries or dead-letters each).
    pub fn timed_out(&self, now_ms: i64) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline_ms <= now_ms)
            .map(|(g, f)| (*g, f.held.attempt))
            .collect();
        v.sort_unstable();
        v
    }

    /// Removes everything held that was produced before `cutoff_ms` (expired): lease
    /// numbers of the in-flight and timed-out ones, and every reply subject to ack.
    pub fn take_expired(&mut self, cutoff_ms: i64) -> (Vec<u32>, Vec<Subject>) {
        let old = |h: &Held| h.message.envelope.generate_time < cutoff_ms;
        let mut gens = Vec::new();
        let mut replies = Vec::new();
        let in_flight: Vec<u32> = self
            .in_flight
            .iter()
            .filter(|(_, f)| old(&f.held))
            .map(|(g, _)| *g)
            .collect();
        for g in in_flight {
            if let Some((h, other)) = self.settle(g) {
                gens.push(g);
                gens.extend(other);
                replies.push(h.reply);
            }
        }
        let waiting: Vec<Waiting> = {
            let (out, keep): (Vec<Waiting>, Vec<Waiting>) =
                self.retry.drain(..).partition(|w| old(&w.held));
            self.retry = keep;
            out
        };
        for w in waiting {
            self.unhold_key(&w.held.message.ordering_key);
            self.held.remove(&(w.held.class, w.held.sseq));
            gens.extend(w.gen);
            replies.push(w.held.reply);
        }
        let (out, keep): (Vec<Held>, Vec<Held>) = self.buffer.drain(..).partition(|h| old(h));
        self.buffer = keep.into();
        for h in out {
            self.dec_buffered(h.class, h.part);
            self.held.remove(&(h.class, h.sseq));
            replies.push(h.reply);
        }
        (gens, replies)
    }

    /// Removes what is buffered or waiting of a partition (handover, lost lease): the
    /// reply subjects with the delay each still had to wait, and the timed-out lease
    /// numbers that go with them.
    pub fn take_part(&mut self, part: u16, now_ms: i64) -> (Vec<(Subject, i64)>, Vec<u32>) {
        let (out, keep): (Vec<Held>, Vec<Held>) =
            self.buffer.drain(..).partition(|h| h.part == part);
        self.buffer = keep.into();
        let mut replies = Vec::new();
        for h in out {
            self.dec_buffered(h.class, h.part);
            self.held.remove(&(h.class, h.sseq));
            replies.push((h.reply, 0));
        }
        let (out, keep): (Vec<Waiting>, Vec<Waiting>) =
            self.retry.drain(..).partition(|w| w.held.part == part);
        self.retry = keep;
        let mut gens = Vec::new();
        for w in out {
            self.unhold_key(&w.held.message.ordering_key);
            self.held.remove(&(w.held.class, w.held.sseq));
            gens.extend(w.gen);
            replies.push((w.held.reply, (w.due_ms - now_ms).max(0)));
        }
        (replies, gens)
    }

    /// Everything held whose JetStream ack timer was last reset before `before_ms`;
    /// their `touched_ms` becomes `now_ms` (the caller sends `+WPI`).
    pub fn touch_stale(&mut self, before_ms: i64, now_ms: i64) -> Vec<Subject> {
        let mut out = Vec::new();
        let all = self
            .buffer
            .iter_mut()
            .chain(self.retry.iter_mut().map(|w| &mut w.held))
            .chain(self.in_flight.values_mut().map(|f| &mut f.held));
        for h in all {
            if h.touched_ms < before_ms {
                h.touched_ms = now_ms;
                out.push(h.reply.clone());
            }
        }
        out
    }

    /// Lease numbers this group knows (in flight, and timed out waiting for retry).
    pub fn gens(&self) -> Vec<u32> {
        self.in_flight
            .keys()
            .copied()
            .chain(self.retry.iter().filter_map(|w| w.gen))
            .chain(self.alias.keys().copied())
            .collect()
    }

    pub fn oldest_generate_time(&self) -> Option<i64> {
        self.buffer
            .iter()
            .chain(self.retry.iter().map(|w| &w.held))
            .chain(self.in_flight.values().map(|f| &f.held))
            .map(|h| h.message.envelope.generate_time)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotsync_core::{Envelope, MessageKind};

    fn held(seq: u64, key: &str) -> Held {
        Held {
            class: Class::D1,
            part: 0,
            sseq: seq,
            reply: Subject::from(format!("r.{seq}")),
            message: SyncMessage {
                project_id: "p".parse().unwrap(),
                kind: MessageKind::PropertyPost,
                product_key: None,
                ordering_key: key.into(),
                envelope: Envelope {
                    topic: "t".into(),
                    message_id: format!("m{seq}").parse().unwrap(),
                    generate_time: 0,
                    payload: vec![],
                },
            },
            attempt: 1,
            touched_ms: 0,
        }
    }

    fn seqs(v: &[Leased]) -> Vec<u64> {
        v.iter().map(|l| l.held.sseq).collect()
    }

    #[test]
    fn a_key_sticks_to_its_consumer_until_settled() {
        let mut g = LocalGroup::default();
        let mut n = 0;
        let mut gen = || {
            n += 1;
            n
        };
        let none = HashSet::new();
        for (s, k) in [(1, "a"), (2, "a"), (3, "b")] {
            assert!(g.push(held(s, k)));
        }
        assert!(!g.push(held(1, "a")), "a held sequence is not taken twice");
        let c1 = g.lease(ConsumerId(1), 1, &none, 0, 10, &mut gen);
        assert_eq!(seqs(&c1), [1]);
        let c2 = g.lease(ConsumerId(2), 10, &none, 0, 10, &mut gen);
        assert_eq!(seqs(&c2), [3], "key a is held by consumer 1");
        let c1b = g.lease(ConsumerId(1), 10, &none, 0, 10, &mut gen);
        assert_eq!(seqs(&c1b), [2], "pipelined to the holder");
        assert_eq!(g.requeue_consumer(ConsumerId(1)).len(), 2);
        let again = g.lease(ConsumerId(2), 10, &none, 0, 10, &mut gen);
        assert_eq!(seqs(&again), [1, 2], "back in stream order");
        assert_eq!(again[0].held.attempt, 2);
    }

    #[test]
    fn a_retry_keeps_its_key_and_a_late_ack_finds_it() {
        let mut g = LocalGroup::default();
        let mut n = 0;
        let mut gen = || {
            n += 1;
            n
        };
        let none = HashSet::new();
        g.push(held(1, "a"));
        g.push(held(2, "a"));
        let l = g.lease(ConsumerId(1), 1, &none, 0, 5, &mut gen);
        assert_eq!(g.timed_out(4), []);
        assert_eq!(g.timed_out(5), [(l[0].gen, 1)]);
        g.retry_later(l[0].gen, 100, true).unwrap();
        assert!(g
            .lease(ConsumerId(2), 10, &none, 50, 60, &mut gen)
            .is_empty());
        assert!(g
            .lease(ConsumerId(2), 10, &none, 99, 60, &mut gen)
            .is_empty());
        let mine = g.lease(ConsumerId(1), 10, &none, 50, 60, &mut gen);
        assert_eq!(seqs(&mine), [2], "the holder pipelines behind its retry");
        assert!(
            g.settle(l[0].gen).is_some(),
            "late ack of the timed-out lease"
        );
        assert!(g.settle(l[0].gen).is_none());
        assert_eq!(g.retry_waiting(), 0);
    }
}
