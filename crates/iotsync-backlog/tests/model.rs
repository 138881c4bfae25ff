//! The engine against a simple in-memory model: random sequences of append, lease, ack,
//! nack, reject, consumer loss, ack timeouts, retention expiry, dead-letter retry/drop and
//! restarts. After every step the engine's answers and figures must agree with the model;
//! at the end a drain must deliver every message the model still owes.
//!
//! Group 0 takes everything and retries with backoff; group 1's filter takes device data
//! only (routing at append) and its retry schedule dead-letters after 3 deliveries.
//!
//! Properties checked:
//! - nothing acked, dead-lettered, dropped or expired is delivered (also after restart);
//! - a group gets exactly the messages its filter takes;
//! - a message is at most once in flight per group;
//! - per group and ordering key, a first delivery never overtakes an earlier message that
//!   is not done, unless that one is in flight to the same consumer (pipelining) or was
//!   redelivered (dead letters retried through the API are exempt, as documented);
//! - attempt counts go up by one per delivery, across restarts and crashes too;
//! - nothing unacked and unexpired is lost (the final drain delivers all of it);
//! - counters (stacked, in flight, dead letters, appended, acked, expired, timed out,
//!   consumer loss, dropped and replayed by seek / purge) match the model, across
//!   restarts too;
//! - a seek to a time makes the group owe again exactly the stored messages it takes
//!   produced at or after it, once per seek (acknowledged ones too when the project keeps
//!   them), and drops what it owed from before; a purge drops everything owed; nothing
//!   produced before the time comes back; dead letters and expired messages stay;
//! - a lookup by id shows each group's state as the model has it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::time::Duration;

use common::*;
use iotsync_backlog::{
    Backlog, BacklogConfig, BacklogError, ConsumerId, EmbeddedBacklog, LeaseToken,
};
use iotsync_core::{ConsumerGroup, ManualClock, ProjectId};
use proptest::prelude::*;

const GROUPS: usize = 2;
const DAY: i64 = 86_400_000;

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: usize,
        key: u8,
        age_ms: i64,
        user: bool,
    },
    Lease {
        group: usize,
        consumer: u64,
        max: usize,
    },
    Ack(usize),
    Nack(usize),
    Reject(usize),
    Gone(u64),
    Advance(i64),
    Timeout,
    Expire,
    Retention(bool),
    DeadRetry(usize),
    DeadDrop(usize),
    /// Seek a group to `now - back_ms`.
    Seek {
        group: usize,
        back_ms: i64,
    },
    Purge(usize),
    /// Look a message up by id and compare every group's state.
    Find(usize),
    Restart,
    /// Copy the files as they are on disk (no final snapshot) and open the copy.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..4, 0u8..3, prop_oneof![Just(0i64), 0..DAY, DAY - 60_000..DAY + 60_000], prop::bool::weighted(0.25))
            .prop_map(|(n, key, age_ms, user)| Op::Append { n, key, age_ms, user }),
        5 => (0..GROUPS, 0u64..3, 1usize..5).prop_map(|(group, consumer, max)| Op::Lease { group, consumer, max }),
        4 => any::<usize>().prop_map(Op::Ack),
        2 => any::<usize>().prop_map(Op::Nack),
        1 => any::<usize>().prop_map(Op::Reject),
        1 => (0u64..3).prop_map(Op::Gone),
        2 => prop_oneof![0i64..2_000, 0i64..400_000].prop_map(Op::Advance),
        1 => Just(Op::Timeout),
        1 => Just(Op::Expire),
        1 => any::<bool>().prop_map(Op::Retention),
        1 => any::<usize>().prop_map(Op::DeadRetry),
        1 => any::<usize>().prop_map(Op::DeadDrop),
        1 => (0..GROUPS, prop_oneof![0i64..3_000, 0..DAY, 0..3 * DAY]).prop_map(|(group, back_ms)| Op::Seek { group, back_ms }),
        1 => (0..GROUPS).prop_map(Op::Purge),
        1 => any::<usize>().prop_map(Op::Find),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Never delivered since open, or back after a restart or a dead-letter retry.
    Pending,
    InFlight {
        deadline: i64,
        consumer: u64,
    },
    /// Leased since open and waiting for its retry (nacked, timed out, consumer gone).
    Waiting,
    Acked,
    Dead,
    Dropped,
    Expired,
    /// The group's filter does not take it.
    NotTaken,
}

impl St {
    fn owed(self) -> bool {
        matches!(self, St::Pending | St::InFlight { .. } | St::Waiting)
    }
    fn done(self) -> bool {
        !self.owed()
    }
}

#[derive(Debug, Default)]
struct Counters {
    appended: u64,
    acked: u64,
    expired: u64,
    rejected: u64,
    dropped: u64,
    replayed: u64,
}

/// Group 1's schedule: dead letter after this many deliveries.
const MAX_DELIVERIES: u32 = 3;

fn spec(g: usize) -> iotsync_backlog::GroupSpec {
    if g == 0 {
        return iotsync_backlog::GroupSpec::all();
    }
    iotsync_backlog::GroupSpec {
        filter: iotsync_core::GroupFilter::data_class(iotsync_core::DataClass::Device),
        retry: iotsync_backlog::GroupRetry::Schedule {
            delays_ms: vec![1_000, 4_000],
            max_deliveries: MAX_DELIVERIES,
        },
    }
}

struct Model {
    /// (id, key, generate_time, user data)
    msgs: Vec<(String, u8, i64, bool)>,
    st: Vec<[St; GROUPS]>,
    exempt: Vec<[bool; GROUPS]>,
    /// Deliveries so far (what the next delivery's attempt continues from).
    attempts: Vec<[u32; GROUPS]>,
    /// Went back for a redelivery since the last restart: may be overtaken.
    redelivered: Vec<[bool; GROUPS]>,
    counters: [Counters; GROUPS],
    retention: i64,
    /// Past retention (whatever its groups' states): a seek never brings it back.
    expired_msg: Vec<bool>,
    /// The project keeps acknowledged messages.
    keep: bool,
}

impl Model {
    fn expire(&mut self, now: i64) -> u64 {
        let mut n = 0;
        let cutoff = (now - self.retention).div_euclid(1000);
        for (i, (_, _, gen, _)) in self.msgs.iter().enumerate() {
            if gen.div_euclid(1000) >= cutoff {
                continue;
            }
            let owed = self.st[i].iter().any(|s| s.owed() || *s == St::Dead);
            if owed || self.keep {
                self.expired_msg[i] = true;
            }
            for g in 0..GROUPS {
                if matches!(
                    self.st[i][g],
                    St::Pending | St::InFlight { .. } | St::Waiting | St::Dead
                ) {
                    self.st[i][g] = St::Expired;
                    self.counters[g].expired += 1;
                    n += 1;
                }
            }
        }
        n
    }

    fn timeouts(&mut self, now: i64) -> u64 {
        let mut n = 0;
        for i in 0..self.msgs.len() {
            for g in 0..GROUPS {
                if let St::InFlight { deadline, .. } = self.st[i][g] {
                    if deadline <= now {
                        self.retry_or_dead(i, g);
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Still stored: some group owes it (or it is a dead letter), or the project keeps
    /// acknowledged messages; and not past retention.
    /// (Without keeping, a message nobody owes is gone for good: nothing can make a
    /// group owe it again.)
    fn stored(&self, i: usize) -> bool {
        if self.keep {
            !self.expired_msg[i]
        } else {
            self.st[i].iter().any(|s| s.owed() || *s == St::Dead)
        }
    }

    /// The engine's seek (`from == i64::MAX`: purge): (replayed, dropped, owed).
    fn seek(&mut self, g: usize, from: i64) -> (u64, u64, u64) {
        let (mut replayed, mut dropped, mut owed) = (0, 0, 0);
        for i in 0..self.msgs.len() {
            let s = self.st[i][g];
            self.redelivered[i][g] = false;
            if s == St::Dead || s == St::NotTaken {
                continue;
            }
            self.exempt[i][g] = false;
            self.attempts[i][g] = 0;
            if s == St::Expired || !self.stored(i) {
                continue;
            }
            if self.msgs[i].2 >= from {
                owed += 1;
                if !s.owed() {
                    replayed += 1;
                }
                self.st[i][g] = St::Pending;
            } else if s.owed() {
                dropped += 1;
                self.st[i][g] = St::Dropped;
            }
        }
        self.counters[g].dropped += dropped;
        self.counters[g].replayed += replayed;
        (replayed, dropped, owed)
    }

    /// A delivery failed (nack, time-out): retried, or dead once group 1's schedule is
    /// used up.
    fn retry_or_dead(&mut self, i: usize, g: usize) {
        if g == 1 && self.attempts[i][g] >= MAX_DELIVERIES {
            self.st[i][g] = St::Dead;
            self.counters[g].rejected += 1;
        } else {
            self.st[i][g] = St::Waiting;
            self.redelivered[i][g] = true;
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    cfg: BacklogConfig,
    b: Option<EmbeddedBacklog>,
    m: Model,
    held: Vec<(usize, usize, LeaseToken)>,
    p: ProjectId,
    groups: Vec<ConsumerGroup>,
    next_id: usize,
}

impl Harness {
    fn b(&self) -> &EmbeddedBacklog {
        self.b.as_ref().unwrap()
    }

    fn idx_of(&self, id: &str) -> usize {
        self.m.msgs.iter().position(|(m, _, _, _)| m == id).unwrap()
    }

    async fn tick(&mut self) {
        let r = self.b().tick().await.unwrap();
        let now = self.clock_now();
        let t = self.m.timeouts(now);
        let e = self.m.expire(now);
        assert_eq!(r.timed_out, t, "timed out leases");
        assert_eq!(r.expired, e, "expired (message, group) pairs");
    }

    fn clock_now(&self) -> i64 {
        use iotsync_core::Clock;
        self.clock.now_ms()
    }

    async fn lease(&mut self, g: usize, consumer: u64, max: usize) -> Vec<(usize, LeaseToken)> {
        let ds = self
            .b()
            .lease(&self.p, &self.groups[g], ConsumerId(consumer), max)
            .await
            .unwrap();
        assert!(ds.len() <= max);
        let now = self.clock_now();
        let mut out = Vec::new();
        for d in ds {
            let id = d.message.envelope.message_id.to_string();
            let i = self.idx_of(&id);
            let (_, key, gen, user) = self.m.msgs[i].clone();
            let make = if user { user_msg } else { msg };
            assert_eq!(
                d.message,
                make(&self.p, &format!("k{key}"), &id, gen),
                "body of {id}"
            );
            let s = self.m.st[i][g];
            assert!(
                matches!(s, St::Pending | St::Waiting),
                "{id} delivered to group {g} while {s:?}"
            );
            if !self.m.exempt[i][g] && !self.m.redelivered[i][g] {
                for j in 0..i {
                    if self.m.msgs[j].1 != key || self.m.exempt[j][g] || self.m.redelivered[j][g] {
                        continue;
                    }
                    let sj = self.m.st[j][g];
                    let pipelined = matches!(sj, St::InFlight { consumer: c, .. } if c == consumer);
                    assert!(
                        sj.done() || pipelined,
                        "{id} (to consumer {consumer}) overtook {} of the same key in group {g} ({sj:?})",
                        self.m.msgs[j].0,
                    );
                }
            }
            assert_eq!(
                d.attempt,
                self.m.attempts[i][g] + 1,
                "attempt of {id} in group {g}"
            );
            self.m.attempts[i][g] += 1;
            assert_eq!(d.ack_deadline_ms, now + 30_000);
            self.m.st[i][g] = St::InFlight {
                deadline: d.ack_deadline_ms,
                consumer,
            };
            out.push((i, d.token));
            self.held.push((g, i, d.token));
        }
        out
    }

    async fn settle(&mut self, pick: usize, what: &str) {
        if self.held.is_empty() {
            return;
        }
        let (g, i, t) = self.held[pick % self.held.len()];
        let s = self.m.st[i][g];
        let r = match what {
            "ack" => self.b().ack(&t).await,
            "nack" => self.b().nack(&t).await,
            _ => self.b().reject(&t).await,
        };
        let accepted_when = match what {
            "nack" => matches!(s, St::InFlight { .. }),
            _ => matches!(s, St::InFlight { .. } | St::Waiting),
        };
        match (&r, s) {
            (Ok(()), _) if accepted_when || s == St::Pending => {}
            (Err(BacklogError::UnknownLease { .. }), _) if !accepted_when => return,
            other => panic!(
                "{what} of {} in group {g} while {s:?}: {other:?}",
                self.m.msgs[i].0
            ),
        }
        match what {
            "ack" => {
                self.m.counters[g].acked += 1;
                self.m.st[i][g] = St::Acked;
            }
            "nack" => self.m.retry_or_dead(i, g),
            _ => {
                self.m.counters[g].rejected += 1;
                self.m.st[i][g] = St::Dead;
            }
        }
    }

    async fn dead(&mut self, pick: usize, retry: bool) {
        let dead: Vec<usize> = (0..self.m.msgs.len())
            .filter(|i| self.m.st[*i].contains(&St::Dead))
            .collect();
        if dead.is_empty() {
            return;
        }
        let i = dead[pick % dead.len()];
        let id = self.m.msgs[i].0.parse().unwrap();
        let n = if retry {
            self.b().retry_dead_letter(&self.p, &id).await.unwrap()
        } else {
            self.b().drop_dead_letter(&self.p, &id).await.unwrap()
        };
        let mut expect = 0;
        for g in 0..GROUPS {
            if self.m.st[i][g] == St::Dead {
                expect += 1;
                self.m.st[i][g] = if retry { St::Pending } else { St::Dropped };
                if retry {
                    self.m.exempt[i][g] = true;
                    // A retried dead letter starts again as a fresh delivery.
                    self.m.attempts[i][g] = 0;
                }
            }
        }
        assert_eq!(n, expect);
    }

    async fn seek(&mut self, g: usize, from: Option<i64>) {
        let out = match from {
            Some(t) => self.b().seek(&self.p, &self.groups[g], t).await.unwrap(),
            None => self.b().purge(&self.p, &self.groups[g]).await.unwrap(),
        };
        // Deliveries of the old generation are unknown leases from now on.
        let was_in_flight = self
            .m
            .st
            .iter()
            .filter(|a| matches!(a[g], St::InFlight { .. }))
            .count() as u64;
        self.held.retain(|(hg, _, _)| *hg != g);
        let want = self.m.seek(g, from.unwrap_or(i64::MAX));
        assert_eq!(
            (out.replayed, out.dropped, out.owed),
            want,
            "seek of group {g} to {from:?}: (replayed, dropped, owed)"
        );
        assert_eq!(out.in_flight, was_in_flight, "in flight at the seek");
    }

    async fn find(&self, pick: usize) {
        use iotsync_backlog::MessageState as M;
        if self.m.msgs.is_empty() {
            return;
        }
        let i = pick % self.m.msgs.len();
        let id = self.m.msgs[i].0.parse().unwrap();
        let t = self.b().find_message(&self.p, &id).await.unwrap();
        let Some(t) = t else {
            assert!(
                !self.m.stored(i)
                    || self.m.st[i]
                        .iter()
                        .all(|s| matches!(s, St::Expired | St::NotTaken)),
                "{} not found while {:?}",
                self.m.msgs[i].0,
                self.m.st[i]
            );
            return;
        };
        for (g, name) in self.groups.iter().enumerate() {
            let got = t.groups.iter().find(|x| &x.group == name).map(|x| x.state);
            let s = self.m.st[i][g];
            let ok = match (s, got) {
                (St::NotTaken, None) => true,
                (St::Pending, Some(M::Stacked | M::RetryWaiting { .. })) => true,
                (St::Waiting, Some(M::RetryWaiting { .. })) => true,
                (St::InFlight { consumer, .. }, Some(M::InFlight { consumer: c, .. })) => {
                    c.0 == consumer
                }
                (St::Acked, Some(M::Acknowledged { .. })) => true,
                (St::Dead, Some(M::DeadLettered { .. })) => true,
                // A dropped dead letter is let go like an acknowledged one.
                (St::Dropped, Some(M::Dropped | M::Acknowledged { .. })) => true,
                (St::Expired, Some(M::Expired)) => true,
                _ => false,
            };
            assert!(
                ok,
                "{} in group {g}: model {s:?}, lookup {got:?}",
                self.m.msgs[i].0
            );
        }
    }

    async fn restart(&mut self) {
        if let Some(b) = self.b.take() {
            b.close().await.unwrap();
        }
        let (b, report) = open(self.dir.path(), &self.clock, self.cfg.clone());
        assert!(report.is_clean(), "{report:?}");
        self.b = Some(b);
        self.held.clear();
        for s in self.m.st.iter_mut().flat_map(|a| a.iter_mut()) {
            if matches!(s, St::InFlight { .. } | St::Waiting) {
                *s = St::Pending;
            }
        }
        // After a restart everything owed goes out fresh, in order again.
        for r in self.m.redelivered.iter_mut().flat_map(|a| a.iter_mut()) {
            *r = false;
        }
    }

    async fn check_figures(&self) {
        self.b().verify_invariants().unwrap();
        let stats = self.b().stats(&self.p).await.unwrap();
        for (g, name) in self.groups.iter().enumerate() {
            let gs = stats
                .groups
                .iter()
                .find(|s| s.group == name.as_str())
                .unwrap();
            let count =
                |f: &dyn Fn(St) -> bool| self.m.st.iter().filter(|a| f(a[g])).count() as u64;
            let c = &self.m.counters[g];
            assert_eq!(gs.stacked, count(&|s| s.owed()), "stacked of group {g}");
            assert_eq!(
                gs.in_flight,
                count(&|s| matches!(s, St::InFlight { .. })),
                "in flight of {g}"
            );
            assert_eq!(
                gs.dead_letters,
                count(&|s| s == St::Dead),
                "dead letters of {g}"
            );
            assert_eq!(
                (
                    gs.appended_total,
                    gs.acked_total,
                    gs.expired_total,
                    gs.rejected_total,
                    gs.dropped_total,
                    gs.replayed_total,
                ),
                (c.appended, c.acked, c.expired, c.rejected, c.dropped, c.replayed),
                "totals of group {g}"
            );
        }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Append {
                n,
                key,
                age_ms,
                user,
            } => {
                let now = self.clock_now();
                let mut batch = Vec::new();
                let make = if user { user_msg } else { msg };
                for _ in 0..n {
                    let id = format!("m{}", self.next_id);
                    self.next_id += 1;
                    batch.push(make(&self.p, &format!("k{key}"), &id, now - age_ms));
                    self.m.msgs.push((id, key, now - age_ms, user));
                    // Group 1 takes device data only.
                    let st1 = if user { St::NotTaken } else { St::Pending };
                    self.m.st.push([St::Pending, st1]);
                    self.m.exempt.push([false; GROUPS]);
                    self.m.attempts.push([0; GROUPS]);
                    self.m.redelivered.push([false; GROUPS]);
                    self.m.expired_msg.push(false);
                    self.m.counters[0].appended += 1;
                    if !user {
                        self.m.counters[1].appended += 1;
                    }
                }
                assert_eq!(self.b().append(batch).await.unwrap().stored, n);
            }
            Op::Lease {
                group,
                consumer,
                max,
            } => {
                self.lease(group, consumer, max).await;
            }
            Op::Ack(i) => self.settle(i, "ack").await,
            Op::Nack(i) => self.settle(i, "nack").await,
            Op::Reject(i) => self.settle(i, "reject").await,
            Op::Gone(c) => {
                let n = self.b().consumer_gone(ConsumerId(c)).await.unwrap();
                let mut expect = 0;
                for i in 0..self.m.msgs.len() {
                    for g in 0..GROUPS {
                        if matches!(self.m.st[i][g], St::InFlight { consumer, .. } if consumer == c)
                        {
                            // Not the message's fault: back at once, no schedule step.
                            self.m.st[i][g] = St::Waiting;
                            self.m.redelivered[i][g] = true;
                            expect += 1;
                        }
                    }
                }
                assert_eq!(n, expect, "released by consumer {c}");
            }
            Op::Advance(ms) => {
                self.clock.advance_ms(ms);
                self.tick().await;
            }
            Op::Timeout => {
                self.clock.advance_ms(30_001);
                self.tick().await;
            }
            Op::Expire => {
                self.clock.advance_ms(DAY / 4);
                self.tick().await;
            }
            Op::Retention(long) => {
                let ms = if long { 2 * DAY } else { DAY };
                self.b()
                    .set_retention(&self.p, Duration::from_millis(ms as u64))
                    .await
                    .unwrap();
                self.m.retention = ms;
                let now = self.clock_now();
                self.m.expire(now);
            }
            Op::DeadRetry(i) => self.dead(i, true).await,
            Op::DeadDrop(i) => self.dead(i, false).await,
            Op::Seek { group, back_ms } => {
                let now = self.clock_now();
                self.seek(group, Some(now - back_ms)).await;
            }
            Op::Purge(group) => self.seek(group, None).await,
            Op::Find(i) => self.find(i).await,
            Op::Restart => self.restart().await,
            Op::Crash => {
                // A consistent copy needs an idle writer: flush until a copy finds every
                // file it listed (maintenance may delete a finished segment meanwhile).
                let copy = loop {
                    self.b().flush().await.unwrap();
                    self.b().flush().await.unwrap();
                    let copy = tempfile::tempdir().unwrap();
                    let complete = std::fs::read_dir(self.dir.path()).unwrap().all(|f| {
                        let f = f.unwrap();
                        std::fs::copy(f.path(), copy.path().join(f.file_name())).is_ok()
                    });
                    if complete {
                        break copy;
                    }
                };
                // The old engine's close writes into the old directory only.
                if let Some(b) = self.b.take() {
                    b.close().await.unwrap();
                }
                self.dir = copy;
                self.restart().await;
            }
        }
        self.check_figures().await;
    }

    /// Everything still owed must come out.
    async fn drain(&mut self) {
        for c in 0..3 {
            self.apply(Op::Gone(c)).await;
        }
        for _round in 0..8 {
            self.clock.advance_ms(400_000);
            self.tick().await;
            for g in 0..GROUPS {
                loop {
                    let got = self.lease(g, 9, 1000).await;
                    if got.is_empty() {
                        break;
                    }
                    for (i, t) in got {
                        self.b().ack(&t).await.unwrap();
                        self.m.st[i][g] = St::Acked;
                        self.m.counters[g].acked += 1;
                    }
                }
            }
        }
        let left: Vec<_> = (0..self.m.msgs.len())
            .flat_map(|i| (0..GROUPS).map(move |g| (i, g)))
            .filter(|&(i, g)| self.m.st[i][g].owed())
            .map(|(i, g)| (self.m.msgs[i].0.clone(), g, self.m.st[i][g]))
            .collect();
        assert!(left.is_empty(), "never delivered: {left:?}");
        self.check_figures().await;
        // And after a final restart nothing comes back.
        self.restart().await;
        self.check_figures().await;
        for g in 0..GROUPS {
            assert!(self.lease(g, 9, 1000).await.is_empty());
        }
    }
}

fn run(ops: Vec<Op>, segment_bytes: u64, index_memory_bytes: usize, keep: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let cfg = BacklogConfig {
            segment_bytes,
            index_memory_bytes,
            keep_acknowledged: keep,
            ..config()
        };
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        let p = project("p1");
        let groups: Vec<ConsumerGroup> = (0..GROUPS).map(|g| group(&format!("g{g}"))).collect();
        for (i, g) in groups.iter().enumerate() {
            b.create_group(&p, g, &spec(i)).await.unwrap();
        }
        let mut h = Harness {
            dir,
            clock,
            cfg,
            b: Some(b),
            m: Model {
                msgs: Vec::new(),
                st: Vec::new(),
                exempt: Vec::new(),
                attempts: Vec::new(),
                redelivered: Vec::new(),
                counters: Default::default(),
                retention: DAY,
                expired_msg: Vec::new(),
                keep,
            },
            held: Vec::new(),
            p,
            groups,
            next_id: 0,
        };
        for op in ops {
            h.apply(op).await;
        }
        h.drain().await;
    });
}

proptest! {
    // MODEL_CASES=5000 for a longer soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_agrees_with_the_model(
        ops in proptest::collection::vec(op(), 1..80),
        small in any::<bool>(),
        tiny_index in any::<bool>(),
        keep in any::<bool>(),
    ) {
        // Small segments exercise rolling, deletion of finished segments and compaction;
        // a tiny index budget (8 chunks of 4 slots) sends most of the index to the spill
        // file and back.
        let index = if tiny_index { 1 } else { BacklogConfig::default().index_memory_bytes };
        run(ops, if small { 2048 } else { 64 << 20 }, index, keep);
    }
}
