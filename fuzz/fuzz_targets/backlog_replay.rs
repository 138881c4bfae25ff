//! The backlog's log (crates/iotsync-backlog: codec.rs, recovery.rs, index/replay.rs):
//! whatever records a segment file holds — each framed with a good checksum, so they
//! reach the decoder and replay rather than stopping at the CRC — opening the directory
//! never panics, never allocates without bound, and leaves an index whose invariants
//! hold (`verify_invariants`). Then the engine ticks, closes (writing its snapshots), and
//! the reopened directory checks out the same way.
//!
//! Input: records one after the other, each `[len: u16 LE][body: len bytes]` (the body's
//! first byte is the record tag); the harness frames them `[len u32][crc32 u32][body]`
//! behind a segment header.
#![no_main]

use std::sync::Arc;

use iotsync_backlog::{Backlog, BacklogConfig, EmbeddedBacklog};
use iotsync_core::ManualClock;
use libfuzzer_sys::fuzz_target;

const T0: i64 = 1_700_000_000_000;

fn segment(data: &[u8]) -> Vec<u8> {
    let mut seg = Vec::with_capacity(data.len() + 64);
    seg.extend_from_slice(b"IOTSBKL1");
    seg.extend_from_slice(&1u32.to_le_bytes());
    seg.extend_from_slice(&[0u8; 4]);
    let mut rest = data;
    while rest.len() >= 2 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let body = &rest[2..2 + n];
        rest = &rest[2 + n..];
        if body.is_empty() {
            continue;
        }
        seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        seg.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        seg.extend_from_slice(body);
    }
    seg
}

fn check(dir: &std::path::Path, clock: &ManualClock, rt: &tokio::runtime::Runtime) {
    let cfg = BacklogConfig {
        keep_acknowledged: true,
        ..BacklogConfig::default()
    };
    let Ok((b, _report)) = EmbeddedBacklog::open(dir, cfg, Arc::new(clock.clone())) else {
        return;
    };
    if let Err(e) = b.verify_invariants() {
        panic!("index invariants broken after replay: {e}");
    }
    rt.block_on(async {
        let _ = b.tick().await;
        let _ = b.close().await;
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("0000000001.seg"), segment(data)).is_err() {
        return;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let clock = ManualClock::new(T0 + 86_400_000);
    check(dir.path(), &clock, &rt);
    // What close wrote (snapshots of everything replayed) replays as well.
    check(dir.path(), &clock, &rt);
});
