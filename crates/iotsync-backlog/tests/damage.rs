//! Damaged data files at open: detected, reported, the good part served, no panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use common::*;
use iotsync_backlog::{segment_files, Backlog, ConsumerId, EmbeddedBacklog};
use iotsync_core::ManualClock;

/// Ten messages, each its own commit; returns the segment file and its length before the
/// close snapshot.
async fn stack_ten(dir: &std::path::Path, clock: &ManualClock) -> (std::path::PathBuf, u64) {
    let (b, _) = open(dir, clock, config());
    let p = project("p1");
    b.create_group(&p, &group("g1"), &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();
    for i in 0..10 {
        b.append(vec![msg(&p, &format!("k{i}"), &format!("m{i}"), T0)])
            .await
            .unwrap();
    }
    b.flush().await.unwrap();
    let seg = segment_files(dir).unwrap().pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    b.close().await.unwrap();
    (seg, len)
}

async fn leased_ids(b: &EmbeddedBacklog) -> Vec<String> {
    ids(&b
        .lease(&project("p1"), &group("g1"), ConsumerId(1), 100)
        .await
        .unwrap())
}

#[tokio::test]
async fn torn_tail_of_the_newest_segment_is_cut_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (seg, len) = stack_ten(dir.path(), &clock).await;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 10).unwrap(); // inside the last message record
    drop(f);
    let (b, report) = open(dir.path(), &clock, config());
    assert!(report.is_clean(), "a torn tail is not damage: {report:?}");
    let tail = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!(tail.path, seg);
    assert!(tail.reason.contains("cut short"), "{}", tail.reason);
    assert_eq!(report.messages, 9);
    assert_eq!(
        leased_ids(&b).await,
        (0..9).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    b.close().await.unwrap();
    let (_b, again) = open(dir.path(), &clock, config());
    assert!(again.torn_tail.is_none(), "the tail was cut off for good");
}

#[tokio::test]
async fn corrupted_record_in_the_middle_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (seg, _) = stack_ten(dir.path(), &clock).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = br#"{"id":"m4""#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + 2] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();

    let (b, report) = open(dir.path(), &clock, config());
    assert!(!report.is_clean());
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let d = &report.damaged[0];
    assert_eq!(d.path, seg);
    assert!(d.reason.contains("checksum"), "{}", d.reason);
    assert!(d.offset < at as u64 && d.offset + d.len > at as u64);
    assert_eq!(report.messages, 9);
    let got = leased_ids(&b).await;
    assert_eq!(got.len(), 9);
    assert!(!got.contains(&"m4".to_string()));
    assert!(
        got.contains(&"m9".to_string()),
        "records after the damage are served"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_segment_is_reported_and_the_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    stack_ten(dir.path(), &clock).await;
    std::fs::write(dir.path().join("0000000000.seg"), b"not a segment at all").unwrap();
    let (b, report) = open(dir.path(), &clock, config());
    assert_eq!(report.damaged.len(), 1);
    assert!(report.damaged[0].reason.contains("bad header"));
    assert_eq!(leased_ids(&b).await.len(), 10);
}

#[tokio::test]
async fn random_garbage_in_every_file_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let (seg, _) = stack_ten(dir.path(), &clock).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut x: u32 = 12345;
    for _ in 0..200 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let i = 16 + (x as usize % (bytes.len() - 16));
        bytes[i] = (x >> 16) as u8;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let (b, report) = open(dir.path(), &clock, config());
    assert!(!report.damaged.is_empty() || report.torn_tail.is_some());
    // Whatever survived can be leased and acked.
    let p = project("p1");
    if b.groups(&p)
        .await
        .unwrap()
        .iter()
        .any(|g| g.name == group("g1"))
    {
        for d in b.lease(&p, &group("g1"), ConsumerId(1), 100).await.unwrap() {
            b.ack(&d.token).await.unwrap();
        }
    }
    b.verify_invariants().unwrap();
}
