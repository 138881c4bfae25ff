//! SPEC §5 behaviours of the embedded engine, one scenario per test, with a manual clock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::time::Duration;

use common::*;
use iotsync_backlog::{Backlog, BacklogError, ConsumerId};
use iotsync_core::ManualClock;

const C1: ConsumerId = ConsumerId(1);
const C2: ConsumerId = ConsumerId(2);

async fn setup() -> (
    tempfile::TempDir,
    ManualClock,
    iotsync_backlog::EmbeddedBacklog,
) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (b, report) = open(dir.path(), &clock, config());
    assert!(report.is_clean());
    b.create_group(
        &project("p1"),
        &group("g1"),
        &iotsync_backlog::GroupSpec::all(),
    )
    .await
    .unwrap();
    (dir, clock, b)
}

#[tokio::test]
async fn acked_message_is_gone_for_its_group() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    let out = b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    assert_eq!(out.stored, 1);
    let ds = b.lease(&p, &group("g1"), C1, 10).await.unwrap();
    assert_eq!(ids(&ds), ["m1"]);
    assert_eq!(ds[0].attempt, 1);
    assert_eq!(ds[0].message, msg(&p, "k1", "m1", T0));
    b.ack(&ds[0].token).await.unwrap();
    assert!(b.lease(&p, &group("g1"), C1, 10).await.unwrap().is_empty());
    let s = b.stats(&p).await.unwrap();
    assert_eq!(s.groups[0].stacked, 0);
    assert_eq!(s.groups[0].acked_total, 1);
    assert_eq!(s.stored_messages, 0);
    assert!(matches!(
        b.ack(&ds[0].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn each_group_gets_every_message_appended_after_it_was_created() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    b.create_group(&p, &group("g2"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    b.append(vec![msg(&p, "k2", "m2", T0)]).await.unwrap();
    assert_eq!(
        ids(&b.lease(&p, &group("g1"), C1, 10).await.unwrap()),
        ["m1", "m2"]
    );
    assert_eq!(
        ids(&b.lease(&p, &group("g2"), C2, 10).await.unwrap()),
        ["m2"]
    );
    let mut names: Vec<String> = b
        .groups(&p)
        .await
        .unwrap()
        .iter()
        .map(|g| g.name.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["g1", "g2"]);
}

#[tokio::test]
async fn a_message_goes_to_exactly_one_consumer_of_a_group() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    let batch = (0..10)
        .map(|i| msg(&p, &format!("k{i}"), &format!("m{i}"), T0))
        .collect();
    b.append(batch).await.unwrap();
    let a = b.lease(&p, &group("g1"), C1, 4).await.unwrap();
    let c = b.lease(&p, &group("g1"), C2, 100).await.unwrap();
    assert_eq!(a.len(), 4);
    assert_eq!(c.len(), 6);
    let mut all = ids(&a);
    all.extend(ids(&c));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10);
}

#[tokio::test]
async fn redelivers_unacked_message_after_ack_timeout() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    let first = b.lease(&p, &group("g1"), C1, 10).await.unwrap();
    assert_eq!(first[0].ack_deadline_ms, T0 + 30_000);
    clock.advance_ms(29_999);
    assert_eq!(b.tick().await.unwrap().timed_out, 0);
    clock.advance_ms(1);
    assert_eq!(b.tick().await.unwrap().timed_out, 1);
    // Backoff after the first failed delivery: 1 s ± 20 %.
    clock.advance_ms(799);
    assert!(b.lease(&p, &group("g1"), C2, 10).await.unwrap().is_empty());
    clock.advance_ms(401);
    let again = b.lease(&p, &group("g1"), C2, 10).await.unwrap();
    assert_eq!(ids(&again), ["m1"]);
    assert_eq!(again[0].attempt, 2);
    let s = b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!((s.timed_out_total, s.redelivered_total), (1, 1));
    // A late ack from the first consumer still counts.
    b.ack(&first[0].token).await.unwrap();
    assert_eq!(b.stats(&p).await.unwrap().groups[0].stacked, 0);
}

#[tokio::test]
async fn nack_retries_with_exponential_backoff() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    for (attempt, min_wait) in [(1u32, 800i64), (2, 1600), (3, 3200), (4, 6400)] {
        let d = b.lease(&p, &group("g1"), C1, 1).await.unwrap();
        assert_eq!(d[0].attempt, attempt);
        b.nack(&d[0].token).await.unwrap();
        clock.advance_ms(min_wait - 1);
        assert!(
            b.lease(&p, &group("g1"), C1, 1).await.unwrap().is_empty(),
            "attempt {attempt}"
        );
        clock.advance_ms(min_wait / 2 + 1);
    }
    assert_eq!(b.stats(&p).await.unwrap().groups[0].nacked_total, 4);
}

#[tokio::test]
async fn consumer_gone_makes_its_deliveries_available_at_once() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    assert_eq!(b.lease(&p, &group("g1"), C1, 10).await.unwrap().len(), 2);
    assert!(b.lease(&p, &group("g1"), C2, 10).await.unwrap().is_empty());
    assert_eq!(b.consumer_gone(C1).await.unwrap(), 2);
    let ds = b.lease(&p, &group("g1"), C2, 10).await.unwrap();
    assert_eq!(ids(&ds), ["m1", "m2"]);
    assert!(ds.iter().all(|d| d.attempt == 2));
}

#[tokio::test]
async fn messages_of_one_ordering_key_go_in_order_to_the_consumer_holding_it() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    let batch = vec![
        msg(&p, "dev-a", "a1", T0),
        msg(&p, "dev-b", "b1", T0),
        msg(&p, "dev-a", "a2", T0),
        msg(&p, "dev-a", "a3", T0),
        msg(&p, "dev-b", "b2", T0),
    ];
    b.append(batch).await.unwrap();
    let g = group("g1");
    let first = b.lease(&p, &g, C1, 2).await.unwrap();
    assert_eq!(ids(&first), ["a1", "b1"]);
    // C1 holds both keys: C2 gets nothing of them (they wait parked for C1).
    assert!(b.lease(&p, &g, C2, 10).await.unwrap().is_empty());
    // a1 goes back for a retry; b1 is done, so dev-b is free and b2 goes to C2.
    b.nack(&first[0].token).await.unwrap();
    b.ack(&first[1].token).await.unwrap();
    assert_eq!(ids(&b.lease(&p, &g, C2, 10).await.unwrap()), ["b2"]);
    // C1 still holds dev-a: its redelivery first, then a2 and a3 pipelined, in order.
    clock.advance_ms(1200);
    let next = b.lease(&p, &g, C1, 10).await.unwrap();
    assert_eq!(ids(&next), ["a1", "a2", "a3"]);
    assert_eq!(
        next.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        [2, 1, 1]
    );
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn one_consumer_gets_a_busy_devices_messages_up_to_its_credit() {
    let (_d, _clock, b) = setup().await;
    let p = project("p1");
    let batch: Vec<_> = (0..50)
        .map(|i| msg(&p, "chatty", &format!("c{i}"), T0))
        .collect();
    b.append(batch).await.unwrap();
    let g = group("g1");
    let first = b.lease(&p, &g, C1, 20).await.unwrap();
    assert_eq!(
        ids(&first),
        (0..20).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    let more = b.lease(&p, &g, C1, 100).await.unwrap();
    assert_eq!(
        ids(&more),
        (20..50).map(|i| format!("c{i}")).collect::<Vec<_>>()
    );
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn reject_moves_message_to_dead_letters_which_can_be_retried_or_dropped() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    let g = group("g1");
    b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    let ds = b.lease(&p, &g, C1, 10).await.unwrap();
    clock.advance_ms(5);
    b.reject(&ds[0].token).await.unwrap();
    b.reject(&ds[1].token).await.unwrap();
    let dl = b.dead_letters(&p, None, 10).await.unwrap();
    assert_eq!(dl.len(), 2);
    assert_eq!(dl[0].message, msg(&p, "k1", "m1", T0));
    assert_eq!((dl[0].attempts, dl[0].dead_at_ms), (1, T0 + 5));
    assert_eq!(
        b.dead_letters(&p, Some(dl[0].seq), 10).await.unwrap().len(),
        1
    );
    let s = b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!((s.stacked, s.dead_letters, s.rejected_total), (0, 2, 2));

    assert_eq!(
        b.retry_dead_letter(&p, &"m1".parse().unwrap())
            .await
            .unwrap(),
        1
    );
    let again = b.lease(&p, &g, C1, 10).await.unwrap();
    assert_eq!(ids(&again), ["m1"]);
    assert_eq!(again[0].attempt, 1);
    b.ack(&again[0].token).await.unwrap();

    assert_eq!(
        b.drop_dead_letter(&p, &"m2".parse().unwrap())
            .await
            .unwrap(),
        1
    );
    assert!(b.dead_letters(&p, None, 10).await.unwrap().is_empty());
    assert!(matches!(
        b.drop_dead_letter(&p, &"m2".parse().unwrap()).await,
        Err(BacklogError::DeadLetterNotFound { .. })
    ));
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 0);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn expired_messages_are_removed_and_counted_per_group() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    b.create_group(&p, &group("g2"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    b.append(vec![
        msg(&p, "k1", "old", T0 - 3_600_000),
        msg(&p, "k2", "new", T0),
    ])
    .await
    .unwrap();
    let held = b.lease(&p, &group("g2"), C1, 10).await.unwrap();
    assert_eq!(held.len(), 2);
    clock.advance_ms(23 * 3_600_000 - 1);
    assert_eq!(b.tick().await.unwrap().expired, 0);
    clock.advance_ms(1001);
    assert_eq!(
        b.tick().await.unwrap().expired,
        2,
        "one message in two groups"
    );
    assert_eq!(
        ids(&b.lease(&p, &group("g1"), C1, 10).await.unwrap()),
        ["new"]
    );
    let s = b.stats(&p).await.unwrap();
    assert!(s.groups.iter().all(|g| g.expired_total == 1));
    // The in-flight lease of the expired message is gone with it.
    assert!(matches!(
        b.ack(&held[0].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn shorter_retention_applies_to_messages_already_stacked() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    b.set_retention(&p, Duration::from_secs(7 * 86_400))
        .await
        .unwrap();
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    clock.advance_ms(3 * 86_400_000);
    assert_eq!(b.tick().await.unwrap().expired, 0);
    // http2 → amqp: the carried-over backlog is held to one day from now on.
    b.set_retention(&p, Duration::from_secs(86_400))
        .await
        .unwrap();
    let s = b.stats(&p).await.unwrap();
    assert_eq!(
        (
            s.retention_ms,
            s.groups[0].stacked,
            s.groups[0].expired_total
        ),
        (86_400_000, 0, 1)
    );
}

#[tokio::test]
async fn paused_project_gets_no_leases_until_resumed() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    b.set_paused(&p, true).await.unwrap();
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    assert!(b.lease(&p, &group("g1"), C1, 10).await.unwrap().is_empty());
    assert!(b.stats(&p).await.unwrap().paused);
    let mut w = b.watch(&p, &group("g1")).unwrap();
    b.set_paused(&p, false).await.unwrap();
    w.changed().await.unwrap();
    assert_eq!(
        ids(&b.lease(&p, &group("g1"), C1, 10).await.unwrap()),
        ["m1"]
    );
}

#[tokio::test]
async fn watch_wakes_when_messages_are_appended() {
    let (_d, _c, b) = setup().await;
    let b = std::sync::Arc::new(b);
    let p = project("p1");
    let mut w = b.watch(&p, &group("g1")).unwrap();
    let b2 = b.clone();
    let p2 = p.clone();
    let waiter = tokio::spawn(async move {
        w.changed().await.unwrap();
        b2.lease(&p2, &group("g1"), C1, 10).await.unwrap()
    });
    b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&got), ["m1"]);
}

#[tokio::test]
async fn messages_of_a_project_without_groups_are_counted_not_stored() {
    let (_d, _c, b) = setup().await;
    let p = project("nobody");
    let out = b.append(vec![msg(&p, "k1", "m1", T0)]).await.unwrap();
    assert_eq!((out.stored, out.discarded_no_group), (0, 1));
    assert_eq!(b.stats(&p).await.unwrap().discarded_no_group, 1);
}

#[tokio::test]
async fn oversized_payload_is_refused_before_anything_is_stored() {
    let (_d, _c, b) = setup().await;
    let p = project("p1");
    let mut big = msg(&p, "k1", "big", T0);
    big.envelope.payload = vec![b'x'; 2 * 1024 * 1024];
    let r = b.append(vec![msg(&p, "k1", "m1", T0), big]).await;
    assert!(matches!(
        r,
        Err(BacklogError::MessageTooLarge {
            size: 2_097_152,
            ..
        })
    ));
    assert_eq!(b.stats(&p).await.unwrap().groups[0].stacked, 0);
}

#[tokio::test]
async fn figures_show_stacked_oldest_age_in_flight_and_totals() {
    let (_d, clock, b) = setup().await;
    let p = project("p1");
    b.append(vec![
        msg(&p, "k1", "m1", T0 - 10_000),
        msg(&p, "k2", "m2", T0),
    ])
    .await
    .unwrap();
    let ds = b.lease(&p, &group("g1"), C1, 1).await.unwrap();
    clock.advance_ms(5_000);
    let g = b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!(g.group, "g1");
    assert_eq!(
        (g.stacked, g.in_flight, g.appended_total, g.consumers),
        (2, 1, 2, 1)
    );
    assert_eq!(g.oldest_stacked_age_ms, Some(15_000));
    b.ack(&ds[0].token).await.unwrap();
    let g = b.stats(&p).await.unwrap().groups[0].clone();
    assert_eq!(g.oldest_stacked_age_ms, Some(5_000));
    b.consumer_gone(C1).await.unwrap();
    assert_eq!(b.stats(&p).await.unwrap().groups[0].consumers, 0);
}

#[tokio::test]
async fn restart_recovers_unacked_messages_groups_settings_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let p = project("p1");
    {
        let (b, _) = open(dir.path(), &clock, config());
        b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        b.create_group(&p, &group("g2"), &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        b.set_retention(&p, Duration::from_secs(7 * 86_400))
            .await
            .unwrap();
        let batch = (0..5)
            .map(|i| msg(&p, &format!("k{i}"), &format!("m{i}"), T0))
            .collect();
        b.append(batch).await.unwrap();
        let ds = b.lease(&p, &group("g1"), C1, 5).await.unwrap();
        b.ack(&ds[0].token).await.unwrap();
        b.ack(&ds[1].token).await.unwrap();
        b.reject(&ds[2].token).await.unwrap();
        // ds[3], ds[4] are in flight when the engine stops.
        b.delete_group(&p, &group("g2")).await.unwrap();
        b.set_paused(&p, true).await.unwrap();
        b.close().await.unwrap();
    }
    let (b, report) = open(dir.path(), &clock, config());
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        (report.messages, report.dead_letters, report.groups),
        (3, 1, 1)
    );
    let s = b.stats(&p).await.unwrap();
    assert!(s.paused);
    assert_eq!(s.retention_ms, 7 * 86_400_000);
    assert_eq!(s.groups.len(), 1);
    assert_eq!((s.groups[0].stacked, s.groups[0].acked_total), (2, 2));
    b.set_paused(&p, false).await.unwrap();
    assert_eq!(
        ids(&b.lease(&p, &group("g1"), C1, 10).await.unwrap()),
        ["m3", "m4"]
    );
    let dl = b.dead_letters(&p, None, 10).await.unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].message.envelope.message_id.as_str(), "m2");
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn a_group_behind_another_is_not_stalled_by_the_lease_scan_bound_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = iotsync_backlog::BacklogConfig {
        max_scan_per_lease: 16,
        ..config()
    };
    let p = project("p1");
    {
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        b.create_group(&p, &group("g2"), &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        let batch = (0..100)
            .map(|i| msg(&p, &format!("k{i}"), &format!("m{i}"), T0))
            .collect();
        b.append(batch).await.unwrap();
        // g2 acks the first 60 (16 per call: the scan bound); g1 still owes them all.
        let mut acked = 0;
        while acked < 60 {
            let ds = b.lease(&p, &group("g2"), C1, 60 - acked).await.unwrap();
            for d in &ds {
                b.ack(&d.token).await.unwrap();
            }
            acked += ds.len();
        }
        b.close().await.unwrap();
    }
    let (b, _) = open(dir.path(), &clock, cfg);
    let mut w = b.watch(&p, &group("g2")).unwrap();
    let mut got = Vec::new();
    while got.len() < 40 {
        let ds = b.lease(&p, &group("g2"), C2, 100).await.unwrap();
        if ds.is_empty() {
            // Nothing in this call's bounded scan, but the group is told to come back.
            tokio::time::timeout(Duration::from_secs(5), w.changed())
                .await
                .expect("no availability signal while 40 messages are stacked")
                .unwrap();
        }
        got.extend(ids(&ds));
    }
    assert_eq!(got[0], "m60");
    assert_eq!(got[39], "m99");
}

#[tokio::test]
async fn parking_behind_a_busy_key_is_bounded_and_the_rest_follows_when_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = iotsync_backlog::BacklogConfig {
        max_parked_per_group: 3,
        ..config()
    };
    let (b, _) = open(dir.path(), &clock, cfg);
    let p = project("p1");
    b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    let mut batch: Vec<_> = (0..10)
        .map(|i| msg(&p, "chatty", &format!("c{i}"), T0))
        .collect();
    batch.push(msg(&p, "quiet", "q0", T0));
    b.append(batch).await.unwrap();
    // C1 holds the key with c0; C2 meets c1..c3 and parks them, then parking is full:
    // the scan stops at c4 and does not reach q0 yet.
    let first = b.lease(&p, &group("g1"), C1, 1).await.unwrap();
    assert_eq!(ids(&first), ["c0"]);
    assert!(b.lease(&p, &group("g1"), C2, 100).await.unwrap().is_empty());
    assert_eq!(b.stats(&p).await.unwrap().groups[0].in_flight, 1);
    b.verify_invariants().unwrap();
    let mut order = Vec::new();
    let mut next = first;
    while !next.is_empty() {
        for d in &next {
            order.push(d.message.envelope.message_id.to_string());
            b.ack(&d.token).await.unwrap();
        }
        b.verify_invariants().unwrap();
        next = b.lease(&p, &group("g1"), C1, 100).await.unwrap();
    }
    let chatty: Vec<String> = order
        .iter()
        .filter(|m| m.starts_with('c'))
        .cloned()
        .collect();
    assert_eq!(chatty, (0..10).map(|i| format!("c{i}")).collect::<Vec<_>>());
    assert!(order.contains(&"q0".to_string()), "{order:?}");
    assert_eq!(b.stats(&p).await.unwrap().groups[0].stacked, 0);
}

#[tokio::test]
async fn attempt_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let p = project("p1");
    let g = group("g1");
    {
        let (b, _) = open(dir.path(), &clock, config());
        b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
            .await
            .unwrap();
        let first = b.lease(&p, &g, C1, 10).await.unwrap();
        assert_eq!(first.iter().map(|d| d.attempt).collect::<Vec<_>>(), [1, 1]);
        // m2 is released and delivered again: its second attempt.
        b.nack(&first[1].token).await.unwrap();
        clock.advance_ms(2_000);
        b.tick().await.unwrap();
        let again = b.lease(&p, &g, C2, 10).await.unwrap();
        assert_eq!(ids(&again), ["m2"]);
        assert_eq!(again[0].attempt, 2);
        b.close().await.unwrap();
    }
    // In flight when the engine stopped: the first delivery after the restart says so.
    let (b, _) = open(dir.path(), &clock, config());
    let ds = b.lease(&p, &g, C1, 10).await.unwrap();
    assert_eq!(ids(&ds), ["m1", "m2"]);
    assert_eq!(ds.iter().map(|d| d.attempt).collect::<Vec<_>>(), [2, 3]);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn attempt_counts_survive_restarts_after_old_segments_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let p = project("p1");
    let g0 = group("g0");
    let g1 = group("g1");
    let spec1 = iotsync_backlog::GroupSpec {
        filter: iotsync_core::GroupFilter::data_class(iotsync_core::DataClass::Device),
        retry: Default::default(),
    };
    {
        let (b, _) = open(dir.path(), &clock, config());
        b.create_group(&p, &g0, &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
        b.create_group(&p, &g1, &spec1).await.unwrap();
        b.append(vec![msg(&p, "k0", "m0", T0), user_msg(&p, "k0", "m1", T0)])
            .await
            .unwrap();
        let d = b.lease(&p, &g0, C1, 1).await.unwrap();
        b.ack(&d[0].token).await.unwrap();
        b.close().await.unwrap();
    }
    {
        let (b, _) = open(dir.path(), &clock, config());
        let d = b.lease(&p, &g1, C1, 1).await.unwrap();
        assert_eq!(ids(&d), ["m0"]);
        b.ack(&d[0].token).await.unwrap();
        b.append(vec![msg(&p, "k0", "m2", T0)]).await.unwrap();
        let d = b.lease(&p, &g0, C1, 1).await.unwrap();
        assert_eq!(ids(&d), ["m1"]);
        b.ack(&d[0].token).await.unwrap();
        let d = b.lease(&p, &g0, C1, 1).await.unwrap();
        assert_eq!(ids(&d), ["m2"]);
        b.close().await.unwrap();
    }
    let (b, _) = open(dir.path(), &clock, config());
    let d = b.lease(&p, &g0, C1, 10).await.unwrap();
    assert_eq!(ids(&d), ["m2"]);
    assert_eq!(d[0].attempt, 2);
}
