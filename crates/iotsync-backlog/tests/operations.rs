//! Backlog operations (issue 14) on the embedded engine: keeping acknowledged messages,
//! seek to a time, purge, and finding messages by id or by device — across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::time::Duration;

use common::*;
use iotsync_backlog::{
    Backlog, BacklogConfig, BacklogError, ConsumerId, EmbeddedBacklog, GroupSpec, MessageQuery,
    MessageState,
};
use iotsync_core::ManualClock;

const C1: ConsumerId = ConsumerId(1);

fn keeping() -> BacklogConfig {
    BacklogConfig {
        keep_acknowledged: true,
        ..config()
    }
}

async fn setup(cfg: BacklogConfig) -> (tempfile::TempDir, ManualClock, EmbeddedBacklog) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 + 100_000);
    let (b, report) = open(dir.path(), &clock, cfg);
    assert!(report.is_clean());
    for g in ["g1", "g2"] {
        b.create_group(&project("p1"), &group(g), &GroupSpec::all())
            .await
            .unwrap();
    }
    (dir, clock, b)
}

/// Messages m0..m{n-1} over 4 devices, 7 ms apart from T0.
async fn produce(b: &EmbeddedBacklog, n: usize) {
    let p = project("p1");
    let batch = (0..n)
        .map(|i| {
            msg(
                &p,
                &format!("dev{}", i % 4),
                &format!("m{i}"),
                T0 + 7 * i as i64,
            )
        })
        .collect();
    b.append(batch).await.unwrap();
}

/// Leases and acks everything the group has, returning the ids in delivery order.
async fn drain(b: &EmbeddedBacklog, g: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let ds = b.lease(&project("p1"), &group(g), C1, 1000).await.unwrap();
        if ds.is_empty() {
            return out;
        }
        for d in &ds {
            out.push(d.message.envelope.message_id.to_string());
            b.ack(&d.token).await.unwrap();
        }
    }
}

fn n(id: &str) -> usize {
    id[1..].parse().unwrap()
}

#[tokio::test]
async fn seek_redelivers_acknowledged_messages_from_a_time_in_order_per_device() {
    let (_d, _c, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 100).await;
    assert_eq!(drain(&b, "g1").await.len(), 100);
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 100);
    // Seek to the time of m40 (exact to the millisecond).
    let out = b.seek(&p, &group("g1"), T0 + 7 * 40).await.unwrap();
    assert_eq!(out.replayed, 60);
    assert_eq!(out.owed, 60);
    assert_eq!(out.dropped, 0);
    let again = drain(&b, "g1").await;
    let mut sorted: Vec<usize> = again.iter().map(|i| n(i)).collect();
    sorted.sort();
    assert_eq!(sorted, (40..100).collect::<Vec<_>>());
    for dev in 0..4 {
        let seq: Vec<usize> = again
            .iter()
            .map(|i| n(i))
            .filter(|i| i % 4 == dev)
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "device {dev}: {seq:?}");
    }
    // g2 never noticed.
    let s = b.stats(&p).await.unwrap();
    let g2 = s.groups.iter().find(|g| g.group == "g2").unwrap();
    assert_eq!(g2.stacked, 100);
    let g1 = s.groups.iter().find(|g| g.group == "g1").unwrap();
    assert_eq!((g1.replayed_total, g1.stacked), (60, 0));
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn seek_drops_what_the_group_owed_before_the_time_and_counts_it() {
    let (_d, _c, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 50).await;
    let out = b.seek(&p, &group("g1"), T0 + 7 * 30).await.unwrap();
    assert_eq!((out.dropped, out.owed, out.replayed), (30, 20, 0));
    let got: Vec<usize> = drain(&b, "g1").await.iter().map(|i| n(i)).collect();
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|i| *i >= 30));
    let s = b.stats(&p).await.unwrap();
    assert_eq!(s.groups[0].dropped_total, 30);
    // A dropped message says so; seeking back to the start brings it back.
    let t = b
        .find_message(&p, &"m3".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.groups[0].state, MessageState::Dropped);
    let out = b.seek(&p, &group("g1"), 0).await.unwrap();
    assert_eq!((out.replayed, out.owed), (50, 50));
    assert_eq!(drain(&b, "g1").await.len(), 50);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn seek_into_the_future_is_refused_and_changes_nothing() {
    let (_d, clock, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 5).await;
    let e = b
        .seek(&p, &group("g1"), iotsync_core::Clock::now_ms(&clock) + 1)
        .await
        .unwrap_err();
    assert!(matches!(e, BacklogError::SeekInFuture { .. }), "{e:?}");
    assert_eq!(b.stats(&p).await.unwrap().groups[0].stacked, 5);
    let e = b.seek(&p, &group("nope"), 0).await.unwrap_err();
    assert!(matches!(e, BacklogError::UnknownGroup { .. }), "{e:?}");
}

#[tokio::test]
async fn purge_drops_everything_owed_settles_in_flight_and_keeps_dead_letters() {
    let (_d, _c, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 20).await;
    let ds = b.lease(&p, &group("g1"), C1, 5).await.unwrap();
    b.reject(&ds[0].token).await.unwrap();
    let out = b.purge(&p, &group("g1")).await.unwrap();
    assert_eq!(out.from_ms, None);
    assert_eq!(out.dropped, 19);
    assert_eq!(out.in_flight, 4);
    assert_eq!(out.owed, 0);
    // A late ack of a delivery from before the purge is refused; nothing comes back.
    assert!(matches!(
        b.ack(&ds[1].token).await,
        Err(BacklogError::UnknownLease { .. })
    ));
    assert!(drain(&b, "g1").await.is_empty());
    let s = b.stats(&p).await.unwrap();
    assert_eq!(
        (
            s.groups[0].stacked,
            s.groups[0].dead_letters,
            s.groups[0].in_flight
        ),
        (0, 1, 0)
    );
    assert_eq!(s.groups[0].dropped_total, 19);
    // New messages flow as before.
    b.append(vec![msg(&p, "dev9", "late", T0 + 1000)])
        .await
        .unwrap();
    assert_eq!(drain(&b, "g1").await, ["late"]);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn find_message_shows_every_groups_state() {
    let (_d, clock, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 3).await;
    let ds = b.lease(&p, &group("g1"), C1, 3).await.unwrap();
    b.ack(&ds[0].token).await.unwrap();
    b.reject(&ds[1].token).await.unwrap();
    let get = |id: &'static str| {
        let b = &b;
        let p = p.clone();
        async move { b.find_message(&p, &id.parse().unwrap()).await.unwrap() }
    };
    let states = |t: &iotsync_backlog::MessageTrace| {
        t.groups
            .iter()
            .map(|g| (g.group.to_string(), g.state))
            .collect::<Vec<_>>()
    };
    let t0 = get("m0").await.unwrap();
    assert_eq!(t0.message, msg(&p, "dev0", "m0", T0));
    assert_eq!(
        states(&t0),
        [
            (
                "g1".into(),
                MessageState::Acknowledged {
                    at_ms: Some(iotsync_core::Clock::now_ms(&clock) / 1000 * 1000)
                }
            ),
            ("g2".into(), MessageState::Stacked)
        ]
    );
    let t1 = get("m1").await.unwrap();
    assert!(matches!(
        t1.groups[0].state,
        MessageState::DeadLettered { .. }
    ));
    assert_eq!(t1.groups[0].attempts, 1);
    let t2 = get("m2").await.unwrap();
    assert!(matches!(
        t2.groups[0].state,
        MessageState::InFlight { consumer: C1, .. }
    ));
    assert!(get("nothing").await.is_none());
    // Another project does not see p1's messages.
    b.create_group(&project("p2"), &group("g1"), &GroupSpec::all())
        .await
        .unwrap();
    assert!(b
        .find_message(&project("p2"), &"m0".parse().unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn an_expired_message_is_found_as_expired_until_its_trace_time_ends() {
    let (_d, clock, b) = setup(BacklogConfig {
        expired_trace: Duration::from_secs(600),
        ..keeping()
    })
    .await;
    let p = project("p1");
    produce(&b, 2).await;
    let ds = b.lease(&p, &group("g1"), C1, 1).await.unwrap();
    b.ack(&ds[0].token).await.unwrap();
    clock.set_ms(T0 + 24 * 3_600_000 + 2_000);
    b.tick().await.unwrap();
    let t = b
        .find_message(&p, &"m1".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(t.expired);
    assert_eq!(t.groups[0].state, MessageState::Expired);
    let t = b
        .find_message(&p, &"m0".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        t.groups[0].state,
        MessageState::Acknowledged { .. }
    ));
    assert_eq!(t.groups[1].state, MessageState::Expired);
    // Expired messages do not come back with a seek.
    assert_eq!(b.seek(&p, &group("g1"), 0).await.unwrap().owed, 0);
    clock.set_ms(T0 + 24 * 3_600_000 + 603_000);
    b.tick().await.unwrap();
    assert!(b
        .find_message(&p, &"m1".parse().unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 0);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn device_messages_come_newest_first_in_the_range_and_page_on() {
    let (_d, _c, b) = setup(keeping()).await;
    let p = project("p1");
    produce(&b, 100).await;
    let q = |from: i64, to: i64, before: Option<u64>, limit| MessageQuery {
        ordering_key: "dev1".into(),
        from_ms: from,
        to_ms: to,
        before_seq: before,
        limit,
    };
    let page = b
        .device_messages(&p, &q(0, i64::MAX, None, 10))
        .await
        .unwrap();
    let got: Vec<usize> = page
        .iter()
        .map(|t| n(t.message.envelope.message_id.as_str()))
        .collect();
    assert_eq!(got, [97, 93, 89, 85, 81, 77, 73, 69, 65, 61]);
    let next = b
        .device_messages(&p, &q(0, i64::MAX, Some(page[9].seq), 3))
        .await
        .unwrap();
    let got: Vec<usize> = next
        .iter()
        .map(|t| n(t.message.envelope.message_id.as_str()))
        .collect();
    assert_eq!(got, [57, 53, 49]);
    // Exact time bounds: m21 at T0+147 .. m33 at T0+231.
    let r = b
        .device_messages(&p, &q(T0 + 7 * 21, T0 + 7 * 33, None, 100))
        .await
        .unwrap();
    let got: Vec<usize> = r
        .iter()
        .map(|t| n(t.message.envelope.message_id.as_str()))
        .collect();
    assert_eq!(got, [33, 29, 25, 21]);
    assert!(r.iter().all(|t| t.groups.len() == 2));
}

#[tokio::test]
async fn without_keep_acknowledged_acked_messages_are_gone_and_seek_only_finds_what_is_stored() {
    let (_d, _c, b) = setup(config()).await;
    let p = project("p1");
    produce(&b, 10).await;
    drain(&b, "g1").await;
    drain(&b, "g2").await;
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 0);
    assert!(b
        .find_message(&p, &"m1".parse().unwrap())
        .await
        .unwrap()
        .is_none());
    assert_eq!(b.seek(&p, &group("g1"), 0).await.unwrap().owed, 0);
    // Turned on: what is acknowledged from now on stays.
    b.set_keep_acknowledged(&p, true).await.unwrap();
    produce(&b, 4).await;
    drain(&b, "g1").await;
    drain(&b, "g2").await;
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 4);
    assert_eq!(b.seek(&p, &group("g2"), 0).await.unwrap().owed, 4);
    // Turned off: acknowledged ones go at once; g2's replay is still owed.
    b.set_keep_acknowledged(&p, false).await.unwrap();
    assert!(!b.stats(&p).await.unwrap().keep_acknowledged);
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 4);
    drain(&b, "g2").await;
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 0);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn seek_purge_keep_and_ack_times_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 + 100_000);
    let p = project("p1");
    {
        let (b, _) = open(dir.path(), &clock, keeping());
        for g in ["g1", "g2"] {
            b.create_group(&p, &group(g), &GroupSpec::all())
                .await
                .unwrap();
        }
        produce(&b, 40).await;
        drain(&b, "g1").await;
        b.seek(&p, &group("g1"), T0 + 7 * 30).await.unwrap();
        b.purge(&p, &group("g2")).await.unwrap();
        b.close().await.unwrap();
    }
    let (b, report) = open(dir.path(), &clock, config());
    assert!(report.is_clean());
    let s = b.stats(&p).await.unwrap();
    assert!(
        s.keep_acknowledged,
        "the project's setting, not the engine default"
    );
    assert_eq!(s.stored_messages, 40);
    let g1 = s.groups.iter().find(|g| g.group == "g1").unwrap();
    let g2 = s.groups.iter().find(|g| g.group == "g2").unwrap();
    assert_eq!((g1.stacked, g1.replayed_total), (10, 10));
    assert_eq!((g2.stacked, g2.dropped_total), (0, 40));
    let got: Vec<usize> = drain(&b, "g1").await.iter().map(|i| n(i)).collect();
    assert_eq!(got.len(), 10);
    assert!(drain(&b, "g2").await.is_empty());
    let t = b
        .find_message(&p, &"m5".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.groups[1].state, MessageState::Dropped);
    assert!(matches!(
        t.groups[0].state,
        MessageState::Acknowledged { .. }
    ));
    b.verify_invariants().unwrap();
    // And a seek after the restart still has everything.
    assert_eq!(b.seek(&p, &group("g2"), 0).await.unwrap().owed, 40);
    b.close().await.unwrap();
}

#[tokio::test]
async fn a_purge_after_a_restart_is_replayed_after_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 + 100_000);
    let p = project("p1");
    let cfg = config();
    {
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        b.create_group(&p, &group("g1"), &GroupSpec::all())
            .await
            .unwrap();
        b.create_group(&p, &group("g2"), &GroupSpec::all())
            .await
            .unwrap();
        b.append(vec![msg(&p, "k", "m0", T0)]).await.unwrap();
        b.close().await.unwrap();
    }
    {
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        b.append(vec![msg(&p, "k", "m1", T0)]).await.unwrap();
        let out = b.purge(&p, &group("g1")).await.unwrap();
        assert_eq!(out.dropped, 2);
        b.append(vec![msg(&p, "k", "m2", T0)]).await.unwrap();
        assert_eq!(b.stats(&p).await.unwrap().groups[0].stacked, 1);
        b.close().await.unwrap();
    }
    {
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        let s = b.stats(&p).await.unwrap();
        assert_eq!(s.groups[0].stacked, 1, "{s:?}");
        b.close().await.unwrap();
    }
    {
        let (b, _) = open(dir.path(), &clock, cfg.clone());
        b.append(vec![msg(&p, "k", "m3", T0)]).await.unwrap();
        b.purge(&p, &group("g1")).await.unwrap();
        b.append(vec![msg(&p, "k", "m4", T0)]).await.unwrap();
        assert_eq!(drain(&b, "g1").await, ["m4"]);
        assert_eq!(drain(&b, "g2").await, ["m0", "m1", "m2", "m3", "m4"]);
        b.close().await.unwrap();
    }
    let (b, _) = open(dir.path(), &clock, cfg);
    let s = b.stats(&p).await.unwrap();
    assert_eq!((s.groups[0].stacked, s.groups[1].stacked), (0, 0), "{s:?}");
    assert!(drain(&b, "g1").await.is_empty());
}
