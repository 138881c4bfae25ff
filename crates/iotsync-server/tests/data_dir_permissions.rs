//! Secrets at rest (issue 15, finding 6): the data dir iotsync creates is 0700 and every
//! file in it 0600 — the registry with its `-wal`/`-shm`, backlog segments, TLS files,
//! the lock — and a data dir an older version left wider is tightened at start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::json;

use iotsync_testkit::{Project, TestServer};

/// Every path under `root` (itself included) with its permission bits.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        out.push((p.clone(), m.permissions().mode() & 0o777, m.is_dir()));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

fn assert_private(root: &Path) {
    for (p, mode, dir) in modes(root) {
        let want = if dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}, must be {want:o}", p.display());
    }
}

async fn activity(env: &TestServer, p: &Project) {
    for i in 0..20 {
        let (s, v) = env
            .post(
                &format!(
                    "/api/v1/projects/{}/devices/{}/properties",
                    p.pid, p.devices[0].iot
                ),
                json!({"items": {"Brightness": i}}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

#[tokio::test]
async fn data_dir_is_created_private_and_tightened_at_start() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let env = TestServer::builder().data_dir(&data).start().await;
    let p = env.project_with_devices("Perm", &["lamp0001"]).await;
    activity(&env, &p).await;
    let names: Vec<String> = modes(&data)
        .iter()
        .map(|(p, _, _)| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    for expected in [
        "registry.db",
        "registry.db-wal",
        "registry.db-shm",
        "LOCK",
        "tls/key.pem",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("backlog/") && n.ends_with(".seg")),
        "no backlog segment: {names:?}"
    );
    assert_private(&data);
    env.stop().await;
    assert_private(&data);

    // An older version's modes: everything wide open.
    for (p, _, dir) in modes(&data) {
        let wide = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(wide)).unwrap();
    }
    let tightened = iotsync_server::data_dir::tighten(&data).unwrap();
    assert!(!tightened.is_empty());
    for (p, _, dir) in modes(&data) {
        let wide = if dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(wide)).unwrap();
    }
    let env = TestServer::builder().data_dir(&data).start().await;
    assert_private(&data);
    activity(&env, &p).await;
    assert_private(&data);
    env.stop().await;
}
