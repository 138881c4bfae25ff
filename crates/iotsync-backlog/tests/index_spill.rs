//! A backlog far bigger than the index's memory budget: the index's slots go to the
//! spill file and come back, and delivery, order, dead letters, expiry and restart work
//! as with everything in memory, while the slots' memory stays within the budget.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::collections::HashMap;

use common::*;
use iotsync_backlog::{Backlog, BacklogConfig, ConsumerId, EmbeddedBacklog};
use iotsync_core::ManualClock;

const BUDGET: usize = 64 * 1024;
const DEVICES: usize = 100;

fn cfg() -> BacklogConfig {
    BacklogConfig {
        index_memory_bytes: BUDGET,
        ..config()
    }
}

async fn fill(b: &EmbeddedBacklog, p: &str, n: usize, t: i64) {
    let p = project(p);
    for start in (0..n).step_by(500) {
        let batch = (start..(start + 500).min(n))
            .map(|i| msg(&p, &format!("d{}", i % DEVICES), &format!("m{i}"), t))
            .collect();
        b.append(batch).await.unwrap();
    }
}

async fn stacked(b: &EmbeddedBacklog, g: &str) -> u64 {
    let s = b.stats(&project("p1")).await.unwrap();
    s.groups.iter().find(|x| x.group == g).unwrap().stacked
}

/// The next deliveries of group `g` of p1, or `None` once nothing is stacked. A consumer
/// that got nothing waits for the availability signal, as the server does.
async fn next_batch(
    b: &EmbeddedBacklog,
    w: &mut iotsync_backlog::AvailabilityWatch,
    g: &str,
    consumer: ConsumerId,
) -> Option<Vec<iotsync_backlog::Delivery>> {
    loop {
        let ds = b
            .lease(&project("p1"), &group(g), consumer, 1000)
            .await
            .unwrap();
        if !ds.is_empty() {
            return Some(ds);
        }
        if stacked(b, g).await == 0 {
            return None;
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), w.changed())
            .await
            .expect("messages are stacked but no availability signal came")
            .unwrap();
    }
}

fn num(id: &str) -> usize {
    id[1..].parse().unwrap()
}

/// The slots of every project, whatever the backlog: the budget plus a couple of chunks
/// per project that are never let out (the tail being appended to).
fn assert_within_budget(b: &EmbeddedBacklog, projects: u64) {
    let m = b.index_memory();
    let slack = projects * 2 * 1024 * 24;
    assert!(
        m.resident_bytes <= BUDGET as u64 + slack,
        "index slots use {} B in memory, budget {BUDGET}",
        m.resident_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_far_bigger_than_the_index_budget_is_delivered_in_order_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (b, _) = open(dir.path(), &clock, cfg());
    let (p1, p2) = (project("p1"), project("p2"));
    for (p, g) in [(&p1, "g1"), (&p1, "g2"), (&p2, "g1")] {
        b.create_group(p, &group(g), &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
    }
    const N: usize = 40_000;
    fill(&b, "p1", N, T0).await;
    fill(&b, "p2", 10_000, T0).await;
    b.tick().await.unwrap();
    assert_within_budget(&b, 2);
    let m = b.index_memory();
    assert!(
        m.spilled_bytes >= (N as u64 * 24) / 2,
        "only {} B of the index were spilled",
        m.spilled_bytes
    );
    assert!(dir.path().join("index.spill").exists());

    // g1 takes half, acks it, then the engine restarts: the other half comes back
    // (the index is rebuilt from the log), in append order per device.
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut acked = vec![false; N];
    let mut seen = 0;
    while seen < N / 2 {
        let ds = b
            .lease(&p1, &group("g1"), ConsumerId(1), 1000)
            .await
            .unwrap();
        assert!(!ds.is_empty());
        for d in ds.iter().take(N / 2 - seen) {
            let n = num(d.message.envelope.message_id.as_str());
            let k = d.message.ordering_key.clone();
            assert!(last.get(&k).is_none_or(|p| *p < n), "order broken at m{n}");
            last.insert(k, n);
            b.ack(&d.token).await.unwrap();
            acked[n] = true;
            seen += 1;
        }
        assert_within_budget(&b, 2);
    }
    b.verify_invariants().unwrap();
    b.close().await.unwrap();
    drop(b);
    let (b, report) = open(dir.path(), &clock, cfg());
    assert!(report.is_clean());
    assert_within_budget(&b, 2);
    b.verify_invariants().unwrap();
    let s = b.stats(&p1).await.unwrap();
    let g1 = s.groups.iter().find(|g| g.group == "g1").unwrap();
    assert_eq!(g1.stacked as usize, N / 2);
    let mut got = vec![false; N];
    let mut w1 = b.watch(&p1, &group("g1")).unwrap();
    while let Some(ds) = next_batch(&b, &mut w1, "g1", ConsumerId(2)).await {
        for d in &ds {
            let n = num(d.message.envelope.message_id.as_str());
            assert!(!got[n], "m{n} delivered twice");
            assert!(!acked[n], "m{n} was acked before the restart");
            got[n] = true;
            b.ack(&d.token).await.unwrap();
        }
    }
    // Everything not acked before the restart came back, nothing acked did.
    let lost: Vec<usize> = (0..N).filter(|i| !acked[*i] && !got[*i]).collect();
    assert!(
        lost.is_empty(),
        "{} messages of g1 lost, first {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // g2 rejects every 1000th message (dead letters scattered over spilled chunks) and
    // acks the rest.
    let mut w2 = b.watch(&p1, &group("g2")).unwrap();
    while let Some(ds) = next_batch(&b, &mut w2, "g2", ConsumerId(3)).await {
        for d in &ds {
            if num(d.message.envelope.message_id.as_str()).is_multiple_of(1000) {
                b.reject(&d.token).await.unwrap();
            } else {
                b.ack(&d.token).await.unwrap();
            }
        }
    }
    let dead = b.dead_letters(&p1, None, 100).await.unwrap();
    let mut dead_ids: Vec<usize> = dead
        .iter()
        .map(|d| num(d.message.envelope.message_id.as_str()))
        .collect();
    dead_ids.sort();
    assert_eq!(dead_ids, (0..N).step_by(1000).collect::<Vec<_>>());
    let s = b.stats(&p1).await.unwrap();
    for g in &s.groups {
        assert_eq!(g.stacked, 0, "group {}", g.group);
    }
    assert_eq!(s.stored_messages, (N / 1000) as u64);
    b.verify_invariants().unwrap();

    // p2 is untouched by all that.
    let s2 = b.stats(&p2).await.unwrap();
    assert_eq!(s2.groups[0].stacked, 10_000);
    b.tick().await.unwrap();
    assert_within_budget(&b, 2);
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_of_a_spilled_backlog_frees_the_spill_file() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut c = cfg();
    c.expired_trace = std::time::Duration::from_secs(600);
    let (b, _) = open(dir.path(), &clock, c);
    let p = project("p1");
    b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    b.create_group(&p, &group("g2"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    fill(&b, "p1", 30_000, T0).await;
    // A few newer ones stay.
    fill(&b, "p1", 10, T0 + 3_600_000).await;
    assert!(b.index_memory().spilled_bytes > 0);
    clock.set_ms(T0 + 24 * 3_600_000 + 1_000);
    let r = b.tick().await.unwrap();
    assert_eq!(r.expired, 2 * 30_000);
    // Expired messages stay as traces (a lookup answers "expired") for `expired_trace`.
    assert_eq!(b.stats(&p).await.unwrap().stored_messages, 30_010);
    clock.set_ms(T0 + 24 * 3_600_000 + 602_000);
    assert_eq!(b.tick().await.unwrap().expired, 0);
    let s = b.stats(&p).await.unwrap();
    assert_eq!(s.stored_messages, 10);
    for g in &s.groups {
        assert_eq!(g.stacked, 10);
        assert_eq!(g.expired_total, 30_000);
    }
    let m = b.index_memory();
    assert_eq!(m.spilled_bytes, 0, "pages of expired slots are freed");
    assert!(m.resident_bytes <= 2 * 1024 * 40);
    let ds = b.lease(&p, &group("g1"), ConsumerId(1), 100).await.unwrap();
    assert_eq!(ds.len(), 10);
    b.verify_invariants().unwrap();
    b.close().await.unwrap();
}
