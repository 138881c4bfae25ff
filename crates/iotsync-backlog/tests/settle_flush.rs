//! Settlements (ack, release, reject) are written lazily: with the next commit, after
//! `settle_flush_interval`, or once `settle_flush_bytes` of them wait. What is on disk
//! at any moment is what a crash would leave, so each test copies the directory while
//! the engine runs and opens the copy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use iotsync_backlog::{Backlog, BacklogConfig, ConsumerId, EmbeddedBacklog};
use iotsync_core::ManualClock;

const C1: ConsumerId = ConsumerId(1);

/// The directory as a crash would leave it, opened: the ids the group still has.
async fn ids_after_crash(dir: &Path, clock: &ManualClock) -> Vec<String> {
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
    }
    let (b, _) = open(copy.path(), clock, config());
    let mut got = ids(&b
        .lease(&project("p1"), &group("g1"), C1, 100)
        .await
        .unwrap());
    got.sort();
    got
}

async fn setup(cfg: BacklogConfig) -> (tempfile::TempDir, ManualClock, EmbeddedBacklog) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (b, _) = open(dir.path(), &clock, cfg);
    let p = project("p1");
    b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    b.append(vec![msg(&p, "k1", "m1", T0), msg(&p, "k2", "m2", T0)])
        .await
        .unwrap();
    (dir, clock, b)
}

/// Polls until the crash copy shows `want` (a deadline only to fail instead of hanging).
async fn until_on_disk(dir: &Path, clock: &ManualClock, want: &[&str]) {
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ids_after_crash(dir, clock).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "still {got:?} on disk, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn settlements_wait_for_the_next_commit_and_go_with_it() {
    let cfg = BacklogConfig {
        settle_flush_interval: Duration::from_secs(3600),
        ..config()
    };
    let (dir, clock, b) = setup(cfg).await;
    let p = project("p1");
    let ds = b.lease(&p, &group("g1"), C1, 10).await.unwrap();
    b.ack(&ds[0].token).await.unwrap();
    // Not yet on disk: a crash now delivers m1 again (at-least-once).
    assert_eq!(ids_after_crash(dir.path(), &clock).await, ["m1", "m2"]);
    // In memory it is gone at once.
    b.ack(&ds[1].token).await.unwrap();
    assert!(b.lease(&p, &group("g1"), C1, 10).await.unwrap().is_empty());
    // The next append's commit carries both acks, in log order before it.
    b.append(vec![msg(&p, "k3", "m3", T0)]).await.unwrap();
    assert_eq!(ids_after_crash(dir.path(), &clock).await, ["m3"]);
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn settlements_alone_are_written_after_the_interval() {
    let cfg = BacklogConfig {
        settle_flush_interval: Duration::from_millis(50),
        ..config()
    };
    let (dir, clock, b) = setup(cfg).await;
    let ds = b.lease(&project("p1"), &group("g1"), C1, 10).await.unwrap();
    b.ack(&ds[0].token).await.unwrap();
    b.reject(&ds[1].token).await.unwrap();
    until_on_disk(dir.path(), &clock, &[]).await;
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn settlements_are_written_once_their_bytes_reach_the_limit() {
    let cfg = BacklogConfig {
        settle_flush_interval: Duration::from_secs(3600),
        settle_flush_bytes: 1,
        ..config()
    };
    let (dir, clock, b) = setup(cfg).await;
    let ds = b.lease(&project("p1"), &group("g1"), C1, 10).await.unwrap();
    b.ack(&ds[1].token).await.unwrap();
    until_on_disk(dir.path(), &clock, &["m1"]).await;
    b.verify_invariants().unwrap();
}

#[tokio::test]
async fn close_writes_the_waiting_settlements() {
    let cfg = BacklogConfig {
        settle_flush_interval: Duration::from_secs(3600),
        ..config()
    };
    let (dir, clock, b) = setup(cfg.clone()).await;
    let p = project("p1");
    let ds = b.lease(&p, &group("g1"), C1, 10).await.unwrap();
    b.ack(&ds[0].token).await.unwrap();
    b.close().await.unwrap();
    drop(b);
    let (b, _) = open(dir.path(), &clock, cfg);
    assert_eq!(
        ids(&b.lease(&p, &group("g1"), C1, 10).await.unwrap()),
        ["m2"]
    );
}
