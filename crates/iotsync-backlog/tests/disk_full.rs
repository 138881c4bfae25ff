//! Disk full: appends fail with a clear error, nothing stored is lost, appends succeed
//! again once space returns. Runs on a 2 MiB tmpfs (needs root, as CI has).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use iotsync_backlog::{Backlog, BacklogConfig, BacklogError, ConsumerId};
use iotsync_core::ManualClock;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> (tempfile::TempDir, Self) {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "this test needs a small tmpfs to fill: `mount -t tmpfs` failed (run as root): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("this test needs `mount` to create a small tmpfs: {e}"),
        }
        let path = dir.path().to_path_buf();
        (dir, Self(path))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn filler(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0u8; bytes]).unwrap();
}

#[tokio::test]
async fn full_disk_fails_appends_clearly_keeps_what_is_stored_and_recovers() {
    let (_dir, fs) = Tmpfs::mount("2m");
    let data = fs.0.join("backlog");
    filler(&fs.0.join("filler"), 512 * 1024);
    let clock = ManualClock::new(T0);
    let cfg = BacklogConfig {
        segment_bytes: 256 * 1024,
        // A tiny index budget: the index spills to the same full disk and must keep
        // what it cannot write out in memory.
        index_memory_bytes: 1,
        ..config()
    };
    let p = project("p1");
    let g = group("g1");
    let (b, _) = open(&data, &clock, cfg.clone());
    b.create_group(&p, &g, &iotsync_backlog::GroupSpec::all())
        .await
        .unwrap();

    let mut stored = Vec::new();
    let mut n = 0;
    let err = loop {
        let batch: Vec<_> = (0..20)
            .map(|i| {
                let mut m = msg(&p, &format!("k{}", n + i), &format!("m{}", n + i), T0);
                m.envelope.payload = vec![b'x'; 1000];
                m
            })
            .collect();
        let ids: Vec<String> = batch
            .iter()
            .map(|m| m.envelope.message_id.to_string())
            .collect();
        n += 20;
        match b.append(batch).await {
            Ok(o) => {
                assert_eq!(o.stored, 20);
                stored.extend(ids);
            }
            Err(e) => break e,
        }
        assert!(n < 10_000, "the 2 MiB tmpfs never filled up");
    };
    match &err {
        BacklogError::DiskFull { path, .. } => assert!(path.starts_with(&data), "{path:?}"),
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(!stored.is_empty());
    // A second, bigger attempt on the full disk fails the same way and breaks nothing.
    let big: Vec<_> = (0..40)
        .map(|i| {
            let mut m = msg(&p, &format!("x{i}"), &format!("extra{i}"), T0);
            m.envelope.payload = vec![b'x'; 1000];
            m
        })
        .collect();
    let again = b.append(big).await;
    assert!(
        matches!(again, Err(BacklogError::DiskFull { .. })),
        "{again:?}"
    );

    // Everything stored is still there, and nothing of the failed batches is.
    let s = b.stats(&p).await.unwrap();
    assert_eq!(s.groups[0].stacked, stored.len() as u64);
    let leased = b.lease(&p, &g, ConsumerId(1), 100_000).await.unwrap();
    let mut got = ids(&leased);
    got.sort();
    let mut want = stored.clone();
    want.sort();
    assert_eq!(got, want);

    // Space returns: appends and acks work again.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    b.append(vec![msg(&p, "k0", "after", T0)]).await.unwrap();
    for d in &leased[..10] {
        b.ack(&d.token).await.unwrap();
    }
    b.flush().await.unwrap();
    b.close().await.unwrap();
    drop(b);

    let (b, report) = open(&data, &clock, cfg);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.messages, stored.len() as u64 + 1 - 10);
    let mut got = ids(&b.lease(&p, &g, ConsumerId(1), 100_000).await.unwrap());
    got.sort();
    let mut want: Vec<String> = stored[..].to_vec();
    let acked: Vec<String> = ids(&leased[..10]);
    want.retain(|m| !acked.contains(m));
    want.push("after".into());
    want.sort();
    assert_eq!(got, want);
}
