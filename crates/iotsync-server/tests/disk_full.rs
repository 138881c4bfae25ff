//! The data dir's disk fills through MQTT publishing (issue 15, finding 7): every write
//! then either commits durably and answers 2xx, or answers 507 with a stable disk-full
//! code; once space returns everything works again without a restart, and nothing that
//! was answered 201 is missing after a clean restart.
//!
//! Runs on a 20 MB tmpfs, so it needs root to mount one (CI is root); skipped otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use iotsync_server::gateway::codec::Packet;
use iotsync_testkit::{Device, Project, RawDevice, TestServer};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    _parent: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed (as root)");
        Self {
            _parent: parent,
            path,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn free_bytes(p: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// What one REST write answered: 201, or 507 with a disk-full code. Anything else fails.
async fn write_user(env: &TestServer, pid: &str, login: &str) -> Result<String, String> {
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{pid}/users"),
            json!({"loginName": login}),
        )
        .await;
    match s {
        StatusCode::CREATED => Ok(v["identityId"].as_str().unwrap().to_owned()),
        StatusCode::INSUFFICIENT_STORAGE => {
            let code = v["code"].as_str().unwrap_or_default().to_owned();
            assert!(
                code == "store.disk_full" || code == "backlog.disk_full",
                "507 with an unexpected body: {v}"
            );
            Err(code)
        }
        other => panic!("a write on a full disk answered {other}: {v}"),
    }
}

/// Publishes big QoS 1 property posts until the gateway refuses (or the connection
/// closes); returns (PUBACKed, `_reply` codes that were not 200).
async fn publish_until_refused(
    env: &TestServer,
    p: &Project,
    dev: &Device,
    start: u16,
) -> (u32, Vec<Value>) {
    let (code, mut d) = RawDevice::connect(env, &p.pk, dev).await;
    if code != 0 {
        assert_eq!(
            code, 3,
            "a full disk may refuse a CONNECT only as unavailable"
        );
        return (0, vec![json!({"connack": code})]);
    }
    let blob = "x".repeat(60_000);
    let mut acked = 0;
    let mut errors = Vec::new();
    for pid in start..start + 200 {
        if !d
            .post_properties(&p.pk, &dev.dn, pid, json!({"Blob": format!("{blob}{pid}")}))
            .await
        {
            return (acked, errors);
        }
        loop {
            match d.recv().await {
                Some(Packet::PubAck(id)) if id == pid => {
                    acked += 1;
                    break;
                }
                Some(Packet::Publish(r)) => {
                    let v: Value = serde_json::from_slice(&r.payload).unwrap();
                    if v["code"] != 200 {
                        errors.push(v);
                    }
                }
                Some(_) => {}
                None => return (acked, errors),
            }
        }
    }
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_filled_through_mqtt_answers_507_and_recovers_without_losing_a_201() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let fs = Tmpfs::mount("20m");
    let data = fs.path.join("data");
    // Freed after the fill: the space that "returns".
    let ballast = fs.path.join("ballast");
    std::fs::write(&ballast, vec![0u8; 4 << 20]).unwrap();

    let env = TestServer::builder().data_dir(&data).start().await;
    let p = env.project_with_devices("Full", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    let mut committed: Vec<(String, String)> = Vec::new(); // (login, identityId) answered 201
    let mut reply_errors = Vec::new();
    let mut published = 0u32;
    let mut registry_full = false;
    for round in 0..60u16 {
        let (acked, errs) = publish_until_refused(&env, &p, &dev, 1 + round * 200).await;
        published += acked;
        reply_errors.extend(errs);
        let login = format!("during{round:03}");
        match write_user(&env, &p.pid, &login).await {
            Ok(id) => committed.push((login, id)),
            Err(code) if code == "store.disk_full" => {
                registry_full = true;
                break;
            }
            Err(_) => {}
        }
    }
    eprintln!(
        "filled: {published} posts PUBACKed, {} error replies, {} B free",
        reply_errors.len(),
        free_bytes(&fs.path)
    );
    assert!(
        registry_full,
        "the fill never made a registry write answer 507 store.disk_full"
    );
    for r in &reply_errors {
        if r.get("connack").is_some() {
            continue;
        }
        assert_eq!(r["code"], 507, "a device's _reply on a full disk: {r}");
        let m = r["message"].as_str().unwrap_or_default();
        assert!(
            m.starts_with("store.disk_full") || m.starts_with("backlog.disk_full"),
            "{r}"
        );
    }
    assert!(
        reply_errors.iter().any(|r| r["code"] == 507),
        "no device was told the disk is full: {reply_errors:?}"
    );
    // While full, more writes answer 201 (durable) or 507, never 500.
    for i in 0..10 {
        let login = format!("full{i:03}");
        if let Ok(id) = write_user(&env, &p.pid, &login).await {
            committed.push((login, id));
        }
    }

    // Space returns: everything works again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match write_user(&env, &p.pid, "after000").await {
            Ok(id) => {
                committed.push(("after000".into(), id));
                break;
            }
            Err(code) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still {code} 30 s after space returned"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    for i in 1..10 {
        let login = format!("after{i:03}");
        let id = write_user(&env, &p.pid, &login)
            .await
            .unwrap_or_else(|c| panic!("{c} after space returned"));
        committed.push((login, id));
    }
    let (s, d) = env
        .post(
            &format!("/api/v1/projects/{}/products/{}/devices", p.pid, p.pk),
            json!({"deviceName": "lamp0002"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let iot2 = d["iotId"].as_str().unwrap().to_owned();
    let (code, mut d) = RawDevice::connect(&env, &p.pk, &dev).await;
    assert_eq!(code, 0, "CONNACK after space returned");
    assert!(
        d.post_properties(&p.pk, &dev.dn, 7, json!({"LightSwitch": 1}))
            .await
    );
    loop {
        match d.recv().await {
            Some(Packet::PubAck(7)) => break,
            Some(Packet::Publish(r)) => {
                let v: Value = serde_json::from_slice(&r.payload).unwrap();
                assert_eq!(v["code"], 200, "{v}");
            }
            Some(_) => {}
            None => panic!("the gateway closed the connection after space returned"),
        }
    }
    drop(d);
    env.stop().await;

    // A clean restart on the same data dir: every 201 is there.
    let env = TestServer::builder().data_dir(&data).start().await;
    for (login, id) in &committed {
        let (s, u) = env
            .get(&format!("/api/v1/projects/{}/users/{id}", p.pid))
            .await;
        assert_eq!(
            s,
            StatusCode::OK,
            "user {login} answered 201 but is gone: {u}"
        );
        assert_eq!(u["loginName"], login.as_str());
    }
    let (s, v) = env
        .get(&format!("/api/v1/projects/{}/devices/{iot2}", p.pid))
        .await;
    assert_eq!(s, StatusCode::OK, "device answered 201 but is gone: {v}");
    eprintln!(
        "{} users answered 201, all there after the restart",
        committed.len()
    );
    env.stop().await;
    drop(fs);
}
