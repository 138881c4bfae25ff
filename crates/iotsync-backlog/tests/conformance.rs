//! SPEC §5 behaviours of the `Backlog` trait, one scenario per test, each run against
//! both engines: the embedded one (temp dir) and the JetStream one (its own
//! `nats-server -js` on a free port; the test fails if nats-server is missing). Both get
//! a manual clock: every timer of both engines (ack time-out, retry, expiry) runs on it.
//! JetStream leases are asynchronous (the owning node pulls), so `Fixture::ready` waits
//! until the messages are pulled before a scenario leases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iotsync_backlog::{
    Backlog, BacklogError, ConsumerId, Delivery, EmbeddedBacklog, GroupSpec, JetStreamBacklog,
    JetStreamConfig, NatsTestServer,
};
use iotsync_core::{ConsumerGroup, ManualClock, ProjectId};

const C1: ConsumerId = ConsumerId(1);
const C2: ConsumerId = ConsumerId(2);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Embedded,
    JetStream,
}

struct Fixture {
    b: Arc<dyn Backlog>,
    clock: ManualClock,
    embedded: Option<Arc<EmbeddedBacklog>>,
    js: Option<Arc<JetStreamBacklog>>,
    _dir: Option<tempfile::TempDir>,
    _nats: Option<NatsTestServer>,
}

impl Fixture {
    /// An engine with group g1 (takes everything) in project p1.
    async fn new(engine: Engine) -> Self {
        let clock = ManualClock::new(T0);
        let f = match engine {
            Engine::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let (b, report) = open(dir.path(), &clock, config());
                assert!(report.is_clean());
                let b = Arc::new(b);
                Fixture {
                    b: b.clone(),
                    clock,
                    embedded: Some(b),
                    js: None,
                    _dir: Some(dir),
                    _nats: None,
                }
            }
            Engine::JetStream => {
                let nats = NatsTestServer::start().expect("nats-server must be installed");
                let b =
                    JetStreamBacklog::connect(&nats.url(), js_config(1), Arc::new(clock.clone()))
                        .await
                        .unwrap();
                let b = Arc::new(b);
                Fixture {
                    b: b.clone(),
                    clock,
                    embedded: None,
                    js: Some(b),
                    _dir: None,
                    _nats: Some(nats),
                }
            }
        };
        f.b.create_group(&project("p1"), &group("g1"), &GroupSpec::all())
            .await
            .unwrap();
        f
    }

    fn is_js(&self) -> bool {
        self.js.is_some()
    }

    /// Waits until `n` messages of the group are there to lease (JetStream: pulled by
    /// this node, which takes the group's partitions once `consumer` showed up).
    async fn ready(&self, p: &ProjectId, g: &ConsumerGroup, consumer: ConsumerId, n: usize) {
        let Some(js) = &self.js else {
            return;
        };
        self.b.lease(p, g, consumer, 0).await.unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while js.buffered(p, g) < n {
            assert!(
                std::time::Instant::now() < until,
                "only {} of {n} messages pulled",
                js.buffered(p, g)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts that nothing is there for the consumer (JetStream: after a pull's time).
    async fn nothing(&self, p: &ProjectId, g: &ConsumerGroup, consumer: ConsumerId) {
        if self.is_js() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let got = self.b.lease(p, g, consumer, 100).await.unwrap();
        assert!(got.is_empty(), "unexpected {:?}", ids(&got));
    }

    /// Leases after `ready`.
    async fn lease(
        &self,
        p: &ProjectId,
        g: &ConsumerGroup,
        consumer: ConsumerId,
        max: usize,
    ) -> Vec<Delivery> {
        self.b.lease(p, g, consumer, max).await.unwrap()
    }

    fn verify(&self) {
        if let Some(e) = &self.embedded {
            e.verify_invariants().unwrap();
        }
    }
}

fn js_config(partitions: u16) -> JetStreamConfig {
    JetStreamConfig {
        partitions,
        jitter_seed: Some(7),
        lease_ttl: Duration::from_secs(3),
        pull_expires: Duration::from_millis(500),
        ..JetStreamConfig::default()
    }
}

/// One `#[tokio::test]` per engine for a scenario `async fn name(e: Engine)`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::Embedded).await
            })*
        }
        mod jetstream {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Engine::JetStream).await
            })*
        }
    };
}

both!(
    acked_message_is_gone_for_its_group,
    each_group_gets_every_message_appended_after_it_was_created,
    a_message_goes_to_exactly_one_consumer_of_a_group,
    redelivers_unacked_message_after_ack_timeout,
    nack_retries_with_exponential_backoff,
    consumer_gone_makes_its_deliveries_available_at_once,
    messages_of_one_ordering_key_go_in_order_to_the_consumer_holding_it,
    one_consumer_gets_a_busy_devices_messages_up_to_its_credit,
    reject_moves_message_to_dead_letters_which_can_be_retried_or_dropped,
    expired_messages_are_removed_and_counted_per_group,
    shorter_retention_applies_to_messages_already_stacked,
    paused_project_gets_no_leases_until_resumed,
    watch_wakes_when_messages_are_appended,
    messages_of_a_project_without_groups_are_counted_not_stored,
    oversized_payload_is_refused_before_anything_is_stored,
    figures_show_stacked_oldest_age_in_flight_and_totals,
    a_schedule_dead_letters_after_its_last_delivery,
    a_group_takes_only_what_its_filter_takes,
    a_deleted_group_counts_what_it_owed_and_is_gone,
    a_purge_drops_what_the_group_owed_and_keeps_what_comes_after,
);

async fn acked_message_is_gone_for_its_group(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    let out = f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    assert_eq!(out.stored, 1);
    f.ready(&p, &g, C1, 1).await;
    let ds = f.lease(&p, &g, C1, 10).await;
    assert_eq!(ids(&ds), ["m1"]);
    assert_eq!(ds[0].attempt, 1);
    assert_eq!(ds[0].message, msg(&p, "k1", "m1", T0));
    f.b.ack(&ds[0].token).await.unwrap();
    f.nothing(&p, &g, C1).await;
    let s = f.b.stats(&p).await.unwrap();
    assert_eq!(s.groups[0].stacked, 0);
    assert_eq!(s.groups[0].acked_total, 1);
    if f.is_js() {
        // Limits retention keeps acknowledged messages until MaxAge.
        assert_eq!((s.stored_messages, s.keep_acknowledged), (1, true));
    } else {
        assert_eq!(s.stored_messages, 0);
    }
    assert!(matches!(
        f.b.ack(&ds[0].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    f.verify();
}

async fn each_group_gets_every_message_appended_after_it_was_created(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.b.create_group(&p, &group("g2"), &GroupSpec::all())
        .await
        .unwrap();
    f.b.append(vec![msg(&p, "k2", "m2", T0)]).await.unwrap();
    f.ready(&p, &group("g1"), C1, 2).await;
    f.ready(&p, &group("g2"), C2, 1).await;
    assert_eq!(ids(&f.lease(&p, &group("g1"), C1, 10).await), ["m1", "m2"]);
    assert_eq!(ids(&f.lease(&p, &group("g2"), C2, 10).await), ["m2"]);
    f.nothing(&p, &group("g2"), C2).await;
    let mut names: Vec<String> =
        f.b.groups(&p)
            .await
            .unwrap()
            .iter()
            .map(|g| g.name.to_string())
            .collect();
    names.sort();
    assert_eq!(names, ["g1", "g2"]);
}

async fn a_message_goes_to_exactly_one_consumer_of_a_group(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    let batch = (0..10)
        .map(|i| msg(&p, &format!("k{i}"), &format!("m{i}"), T0))
        .collect();
    f.b.append(batch).await.unwrap();
    f.ready(&p, &g, C1, 10).await;
    let a = f.lease(&p, &g, C1, 4).await;
    let c = f.lease(&p, &g, C2, 100).await;
    assert_eq!(a.len(), 4);
    assert_eq!(c.len(), 6);
    let mut all = ids(&a);
    all.extend(ids(&c));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10);
}

async fn redelivers_unacked_message_after_ack_timeout(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.ready(&p, &g, C1, 1).await;
    let first = f.lease(&p, &g, C1, 10).await;
    assert_eq!(first[0].ack_deadline_ms, T0 + 30_000);
    f.clock.advance_ms(29_999);
    assert_eq!(f.b.tick().await.unwrap().timed_out, 0);
    f.clock.advance_ms(1);
    assert_eq!(f.b.tick().await.unwrap().timed_out, 1);
    // Backoff after the first failed delivery: 1 s ± 20 %.
    f.clock.advance_ms(799);
    f.nothing(&p, &g, C2).await;
    f.clock.advance_ms(401);
    let again = f.lease(&p, &g, C2, 10).await;
    assert_eq!(ids(&again), ["m1"]);
    assert_eq!(again[0].attempt, 2);
    let s = f.b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!((s.timed_out_total, s.redelivered_total), (1, 1));
    // A late ack from the first consumer still counts.
    f.b.ack(&first[0].token).await.unwrap();
    assert_eq!(f.b.stats(&p).await.unwrap().groups[0].stacked, 0);
}

async fn nack_retries_with_exponential_backoff(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.ready(&p, &g, C1, 1).await;
    for (attempt, min_wait) in [(1u32, 800i64), (2, 1600), (3, 3200), (4, 6400)] {
        let d = f.lease(&p, &g, C1, 1).await;
        assert_eq!(d.len(), 1, "attempt {attempt}");
        assert_eq!(d[0].attempt, attempt);
        f.b.nack(&d[0].token).await.unwrap();
        f.clock.advance_ms(min_wait - 1);
        f.nothing(&p, &g, C1).await;
        f.clock.advance_ms(min_wait / 2 + 1);
    }
    assert_eq!(f.b.stats(&p).await.unwrap().groups[0].nacked_total, 4);
}

async fn consumer_gone_makes_its_deliveries_available_at_once(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    f.b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    f.ready(&p, &g, C1, 2).await;
    assert_eq!(f.lease(&p, &g, C1, 10).await.len(), 2);
    f.nothing(&p, &g, C2).await;
    assert_eq!(f.b.consumer_gone(C1).await.unwrap(), 2);
    let ds = f.lease(&p, &g, C2, 10).await;
    assert_eq!(ids(&ds), ["m1", "m2"]);
    assert!(ds.iter().all(|d| d.attempt == 2));
}

async fn messages_of_one_ordering_key_go_in_order_to_the_consumer_holding_it(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let batch = vec![
        msg(&p, "dev-a", "a1", T0),
        msg(&p, "dev-b", "b1", T0),
        msg(&p, "dev-a", "a2", T0),
        msg(&p, "dev-a", "a3", T0),
        msg(&p, "dev-b", "b2", T0),
    ];
    f.b.append(batch).await.unwrap();
    let g = group("g1");
    f.ready(&p, &g, C1, 5).await;
    let first = f.lease(&p, &g, C1, 2).await;
    assert_eq!(ids(&first), ["a1", "b1"]);
    // C1 holds both keys: C2 gets nothing of them (they wait parked for C1).
    f.nothing(&p, &g, C2).await;
    // a1 goes back for a retry; b1 is done, so dev-b is free and b2 goes to C2.
    f.b.nack(&first[0].token).await.unwrap();
    f.b.ack(&first[1].token).await.unwrap();
    assert_eq!(ids(&f.lease(&p, &g, C2, 10).await), ["b2"]);
    // C1 still holds dev-a: its redelivery first, then a2 and a3 pipelined, in order.
    f.clock.advance_ms(1200);
    let next = f.lease(&p, &g, C1, 10).await;
    assert_eq!(ids(&next), ["a1", "a2", "a3"]);
    assert_eq!(
        next.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [2, 1, 1]
    );
    f.verify();
}

async fn one_consumer_gets_a_busy_devices_messages_up_to_its_credit(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let batch: Vec<_> = (0..50)
        .map(|i| msg(&p, "chatty", &format!("c{i}"), T0))
        .collect();
    f.b.append(batch).await.unwrap();
    let g = group("g1");
    f.ready(&p, &g, C1, 50).await;
    let first = f.lease(&p, &g, C1, 20).await;
    assert_eq!(
        ids(&first),
        (0..20).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    f.nothing(&p, &g, C2).await;
    let more = f.lease(&p, &g, C1, 100).await;
    assert_eq!(
        ids(&more),
        (20..50).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    f.verify();
}

async fn reject_moves_message_to_dead_letters_which_can_be_retried_or_dropped(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let g = group("g1");
    f.b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    f.ready(&p, &g, C1, 2).await;
    let ds = f.lease(&p, &g, C1, 10).await;
    f.clock.advance_ms(5);
    f.b.reject(&ds[0].token).await.unwrap();
    f.b.reject(&ds[1].token).await.unwrap();
    let dl = f.b.dead_letters(&p, None, 10).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].message, msg(&p, "k1", "m1", T0));
    assert_eq!((dl[0].attempts, dl[0].dead_at_ms), (1, T0 + 5));
    assert_eq!(
        f.b.dead_letters(&p, Some(dl[0].seq), 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let s = f.b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!((s.stacked, s.dead_letters, s.rejected_total), (0, 2, 2));

    assert_eq!(
        f.b.retry_dead_letter(&p, &"m1".parse().unwrap())
            .await
            .unwrap(),
        1
    );
    f.ready(&p, &g, C1, 1).await;
    let again = f.lease(&p, &g, C1, 10).await;
    assert_eq!(ids(&again), ["m1"]);
    assert_eq!(again[0].attempt, 1);
    f.b.ack(&again[0].token).await.unwrap();

    assert_eq!(
        f.b.drop_dead_letter(&p, &"m2".parse().unwrap())
            .await
            .unwrap(),
        1
    );
    assert!(f.b.dead_letters(&p, None, 10).await.unwrap().is_empty());
    assert!(matches!(
        f.b.drop_dead_letter(&p, &"m2".parse().unwrap()).await,
        Err(BacklogError::DeadLetterNotFound { .. })
    ));
    let s = f.b.stats(&p).await.unwrap();
    assert_eq!((s.groups[0].stacked, s.groups[0].dead_letters), (0, 0));
    if !f.is_js() {
        assert_eq!(s.stored_messages, 0);
    }
    f.verify();
}

async fn expired_messages_are_removed_and_counted_per_group(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    f.b.create_group(&p, &group("g2"), &GroupSpec::all())
        .await
        .unwrap();
    f.b.append(vec![
        msg(&p, "k1", "old", T0 - 3_600_000),
        msg(&p, "k2", "new", T0),
    ])
    .await
    .unwrap();
    f.ready(&p, &group("g1"), C1, 2).await;
    f.ready(&p, &group("g2"), C1, 2).await;
    let held = f.lease(&p, &group("g2"), C1, 10).await;
    assert_eq!(held.len(), 2);
    f.clock.advance_ms(23 * 3_600_000 - 1);
    assert_eq!(f.b.tick().await.unwrap().expired, 0);
    f.clock.advance_ms(1001);
    assert_eq!(
        f.b.tick().await.unwrap().expired,
        2,
        "one message in two groups"
    );
    assert_eq!(ids(&f.lease(&p, &group("g1"), C1, 10).await), ["new"]);
    let s = f.b.stats(&p).await.unwrap();
    assert!(s.groups.iter().all(|g| g.expired_total == 1));
    // The in-flight lease of the expired message is gone with it.
    assert!(matches!(
        f.b.ack(&held[0].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    f.verify();
}

async fn shorter_retention_applies_to_messages_already_stacked(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    f.b.set_retention(&p, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.ready(&p, &group("g1"), C1, 1).await;
    f.clock.advance_ms(3 * 86_400_000);
    assert_eq!(f.b.tick().await.unwrap().expired, 0);
    // http2 → amqp: the carried-over backlog is held to one day from now on.
    f.b.set_retention(&p, Duration::from_secs(86_400))
        .await
        .unwrap();
    let s = f.b.stats(&p).await.unwrap();
    assert_eq!(
        (
            s.retention_ms,
            s.groups[0].stacked,
            s.groups[0].expired_total
        ),
        (86_400_000, 0, 1)
    );
}

async fn paused_project_gets_no_leases_until_resumed(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    f.b.set_paused(&p, true).await.unwrap();
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.nothing(&p, &g, C1).await;
    assert!(f.b.stats(&p).await.unwrap().paused);
    let mut w = f.b.watch(&p, &g).unwrap();
    f.b.set_paused(&p, false).await.unwrap();
    w.changed().await.unwrap();
    f.ready(&p, &g, C1, 1).await;
    assert_eq!(ids(&f.lease(&p, &g, C1, 10).await), ["m1"]);
}

async fn watch_wakes_when_messages_are_appended(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let mut w = f.b.watch(&p, &group("g1")).unwrap();
    let b2 = f.b.clone();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move {
        loop {
            w.changed().await.unwrap();
            let got = b2.lease(&p2, &group("g1"), C1, 10).await.unwrap();
            if !got.is_empty() {
                return got;
            }
        }
    });
    // Let the JetStream node take the group's partitions for its watcher first.
    if f.is_js() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&got), ["m1"]);
}

async fn messages_of_a_project_without_groups_are_counted_not_stored(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("nobody");
    let out = f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    assert_eq!((out.stored, out.discarded_no_group), (0, 1));
    assert_eq!(f.b.stats(&p).await.unwrap().discarded_no_group, 1);
    assert!(f.b.groups(&p).await.unwrap().is_empty());
    assert!(f.b.groups(&project("never")).await.unwrap().is_empty());
}

async fn oversized_payload_is_refused_before_anything_is_stored(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let mut big = msg(&p, "k1", "big", T0);
    big.envelope.payload = vec![b'x'; 2 * 1024 * 1024];
    let r = f.b.append(vec![msg(&p, "k1", "m1", T0), big]).await;
    assert!(matches!(
        r,
        Err(BacklogError::MessageTooLarge {
            size: 2_097_152,
            ..
        })
    ));
    assert_eq!(f.b.stats(&p).await.unwrap().groups[0].stacked, 0);
}

async fn figures_show_stacked_oldest_age_in_flight_and_totals(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    f.b.append(vec![
        msg(&p, "k1", "m1", T0 - 10_000),
        msg(&p, "k2", "m2", T0),
    ])
    .await
    .unwrap();
    f.ready(&p, &group("g1"), C1, 2).await;
    let ds = f.lease(&p, &group("g1"), C1, 1).await;
    f.clock.advance_ms(5_000);
    let g = f.b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!(g.group, "g1");
    assert_eq!(
        (g.stacked, g.in_flight, g.appended_total, g.consumers),
        (2, 1, 2, 1)
    );
    assert_eq!(g.oldest_stacked_age_ms, Some(15_000));
    f.b.ack(&ds[0].token).await.unwrap();
    let g = f.b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!((g.stacked, g.acked_total), (1, 1));
    assert_eq!(g.oldest_stacked_age_ms, Some(5_000));
    f.b.consumer_gone(C1).await.unwrap();
    assert_eq!(f.b.stats(&p).await.unwrap().groups[0].consumers, 0);
}

async fn a_schedule_dead_letters_after_its_last_delivery(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("legacy"));
    let spec = GroupSpec {
        retry: iotsync_backlog::GroupRetry::Schedule {
            delays_ms: vec![100, 200],
            max_deliveries: 3,
        },
        ..GroupSpec::all()
    };
    f.b.create_group(&p, &g, &spec).await.unwrap();
    f.b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    f.ready(&p, &g, C1, 1).await;
    for (attempt, wait) in [(1u32, 100i64), (2, 200), (3, 0)] {
        let d = f.lease(&p, &g, C1, 1).await;
        assert_eq!(d.len(), 1, "attempt {attempt}");
        assert_eq!(d[0].attempt, attempt);
        f.b.nack(&d[0].token).await.unwrap();
        f.clock.advance_ms(wait);
    }
    f.nothing(&p, &g, C1).await;
    let dl = f.b.dead_letters(&p, None, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!((dl[0].group.as_str(), dl[0].attempts), ("legacy", 3));
    let s = f.b.stats(&p).await.unwrap();
    let legacy = s.groups.iter().find(|x| x.group == "legacy").unwrap();
    assert_eq!((legacy.stacked, legacy.dead_letters), (0, 1));
}

async fn a_group_takes_only_what_its_filter_takes(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let users = group("users");
    let spec = GroupSpec {
        filter: iotsync_core::GroupFilter::data_class(iotsync_core::DataClass::User),
        ..GroupSpec::all()
    };
    f.b.create_group(&p, &users, &spec).await.unwrap();
    f.b.append(vec![
        msg(&p, "k1", "dev1", T0),
        user_msg(&p, "k2", "usr1", T0),
    ])
    .await
    .unwrap();
    f.ready(&p, &group("g1"), C1, 2).await;
    f.ready(&p, &users, C2, 1).await;
    assert_eq!(
        ids(&f.lease(&p, &group("g1"), C1, 10).await),
        ["dev1", "usr1"]
    );
    assert_eq!(ids(&f.lease(&p, &users, C2, 10).await), ["usr1"]);
    f.nothing(&p, &users, C2).await;
    let s = f.b.stats(&p).await.unwrap();
    let u = s.groups.iter().find(|g| g.group == "users").unwrap();
    assert_eq!(u.appended_total, 1);
    // A project whose only group takes user data: device data is counted, not stored.
    let q = project("p2");
    f.b.create_group(&q, &users, &spec).await.unwrap();
    let out = f.b.append(vec![msg(&q, "k1", "dev2", T0)]).await.unwrap();
    assert_eq!((out.stored, out.discarded_no_group), (0, 1));
    assert_eq!(f.b.stats(&q).await.unwrap().discarded_no_group, 1);
}

async fn a_deleted_group_counts_what_it_owed_and_is_gone(e: Engine) {
    let f = Fixture::new(e).await;
    let p = project("p1");
    let g2 = group("g2");
    f.b.create_group(&p, &g2, &GroupSpec::all()).await.unwrap();
    f.b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    f.ready(&p, &g2, C1, 2).await;
    let mut w = f.b.watch(&p, &g2).unwrap();
    f.b.delete_group(&p, &g2).await.unwrap();
    let s = f.b.stats(&p).await.unwrap();
    assert_eq!(s.dropped_by_group_delete, 2);
    assert_eq!(s.groups.len(), 1);
    assert!(matches!(
        f.b.lease(&p, &g2, C1, 10).await,
        Err(BacklogError::UnknownGroup { .. })
    ));
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), w.changed()).await,
        Ok(Err(BacklogError::Closed))
    ));
    assert!(matches!(
        f.b.delete_group(&p, &g2).await,
        Err(BacklogError::UnknownGroup { .. })
    ));
    // The other group still has both.
    f.ready(&p, &group("g1"), C1, 2).await;
    assert_eq!(ids(&f.lease(&p, &group("g1"), C1, 10).await), ["m1", "m2"]);
}

async fn a_purge_drops_what_the_group_owed_and_keeps_what_comes_after(e: Engine) {
    let f = Fixture::new(e).await;
    let (p, g) = (project("p1"), group("g1"));
    f.b.create_group(&p, &group("g2"), &GroupSpec::all())
        .await
        .unwrap();
    f.b.append(vec![
        msg(&p, "k1", "m1", T0),
        msg(&p, "k2", "m2", T0),
        msg(&p, "k3", "m3", T0),
    ])
    .await
    .unwrap();
    f.ready(&p, &g, C1, 3).await;
    let held = f.lease(&p, &g, C1, 1).await;
    assert_eq!(ids(&held), ["m1"]);
    let out = f.b.purge(&p, &g).await.unwrap();
    assert_eq!(
        (out.from_ms, out.dropped, out.in_flight, out.owed),
        (None, 3, 1, 0)
    );
    // The in-flight delivery was settled as dropped.
    assert!(matches!(
        f.b.ack(&held[0].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    f.nothing(&p, &g, C1).await;
    f.b.append(vec![msg(&p, "k1", "m4", T0)]).await.unwrap();
    f.ready(&p, &g, C1, 1).await;
    assert_eq!(ids(&f.lease(&p, &g, C1, 10).await), ["m4"]);
    let s = f.b.stats(&p).await.unwrap();
    let g1 = s.groups.iter().find(|x| x.group == "g1").unwrap();
    assert_eq!(g1.dropped_total, 3);
    // The other group still owes everything.
    f.ready(&p, &group("g2"), C2, 4).await;
    assert_eq!(
        ids(&f.lease(&p, &group("g2"), C2, 10).await),
        ["m1", "m2", "m3", "m4"]
    );
    assert!(matches!(
        f.b.purge(&p, &group("nope")).await,
        Err(BacklogError::UnknownGroup { .. })
    ));
}
