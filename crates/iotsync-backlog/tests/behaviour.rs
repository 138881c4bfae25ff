//! Behaviours of the embedded engine alone (restarts, its lease scan and parking bounds,
//! durable attempts), one scenario per test, with a manual clock. The trait's behaviours
//! that every engine shares are in `conformance.rs`, run against each engine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::time::Duration;

use common::*;
use iotsync_backlog::{Backlog, ConsumerId};
use iotsync_core::ManualClock;

const C1: ConsumerId = ConsumerId(1);
const C2: ConsumerId = ConsumerId(2);

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
