//! Crash test: a child `iotsync serve` under continuous load is SIGKILLed at random
//! points, again and again. Every property report whose HTTP 200 came back (the message
//! was durable before the answer) must still be in the backlog afterwards, with nothing
//! duplicated and nothing damaged beyond a torn tail.
//!
//! `IOTSYNC_CRASH_ROUNDS` sets the number of kills (default 20; the soak bench uses 100).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotsync_backlog::{Backlog, BacklogConfig, ConsumerId, EmbeddedBacklog};
use iotsync_core::{ConsumerGroup, ProjectId};
use iotsync_testkit::{ProjectSpec, ServeProcess};
use serde_json::{json, Value};

const TOKEN: &str = "crash-test-operator-token-0001";

fn spawn(dir: &Path) -> ServeProcess {
    // A small index budget, so the backlog index goes through its spill file (and is
    // rebuilt from the log after each kill) within the few thousand reports of a run.
    let config = dir.join("crash-test.toml");
    std::fs::write(&config, "[delivery]\nindex_memory = \"64 KiB\"\n").expect("write config");
    let config = config.to_str().expect("a UTF-8 temp path");
    ServeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_iotsync")),
        dir,
        &["--config", config, "--operator-token", TOKEN],
    )
}

/// A small deterministic generator, seeded from the clock; the seed is printed so a
/// failing run can be repeated.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_report_survives_repeated_sigkill() {
    let rounds: usize = std::env::var("IOTSYNC_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("IOTSYNC_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
        });
    eprintln!("crash test: {rounds} rounds, seed {seed} (IOTSYNC_CRASH_SEED to repeat)");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Set up a project with sync on, one product and a few devices.
    let first = spawn(dir.path());
    let names = ["lamp0000", "lamp0001", "lamp0002", "lamp0003"];
    let p = first
        .rest(TOKEN)
        .create_project(&ProjectSpec::new("crash").devices(&names).sync_first("amqp"))
        .await;
    let (pid, app_key) = (p.pid.clone(), p.app_key.clone());
    let devices = p.iots();
    let mut child = first;

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut failed_requests = 0usize;
    let mut torn_tails = 0usize;
    let mut rounds_with_spill = 0usize;
    let started = Instant::now();
    for round in 0..rounds {
        let base = format!("{}/api/v1/projects/{pid}/devices", child.api);
        // Four concurrent reporters until the kill.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for (w, iot) in devices.iter().enumerate() {
            let (http, base, iot, acked, stop) = (
                http.clone(),
                base.clone(),
                iot.clone(),
                acked.clone(),
                stop.clone(),
            );
            load.push(tokio::spawn(async move {
                let mut failures = 0usize;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let r = http
                        .post(format!("{base}/{iot}/properties"))
                        .bearer_auth(TOKEN)
                        .json(&json!({"items": {"round": round, "worker": w, "n": n}}))
                        .send()
                        .await;
                    match r {
                        Ok(resp) if resp.status().is_success() => {
                            match resp.json::<Value>().await {
                                Ok(v) => acked
                                    .lock()
                                    .unwrap()
                                    .push(v["messageId"].as_str().unwrap().to_owned()),
                                Err(_) => failures += 1,
                            }
                        }
                        _ => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                failures
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
        child.kill();
        if dir.path().join("backlog").join("index.spill").exists() {
            rounds_with_spill += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for l in load {
            failed_requests += l.await.unwrap();
        }
        child = spawn(dir.path());
        if child.banner.iter().any(|l| l.contains("torn tail")) {
            torn_tails += 1;
        }
        assert!(
            !child.banner.iter().any(|l| l.contains("DAMAGED")),
            "round {round}: a crash must only ever leave a torn tail: {:?}",
            child.banner
        );
    }
    // Stop the last child cleanly, then read the backlog the way a consumer would.
    child.kill();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > rounds,
        "the load produced too little: {}",
        acked.len()
    );

    let (backlog, report) = EmbeddedBacklog::open(
        dir.path().join("backlog"),
        BacklogConfig::default(),
        iotsync_core::clock::system_clock(),
    )
    .unwrap();
    assert!(report.is_clean(), "{report:?}");
    let project: ProjectId = pid.parse().unwrap();
    let group: ConsumerGroup = app_key.parse().unwrap();
    let mut delivered = Vec::new();
    loop {
        let batch = backlog
            .lease(&project, &group, ConsumerId(1), 1000)
            .await
            .unwrap();
        if batch.is_empty() {
            break;
        }
        for d in batch {
            backlog.ack(&d.token).await.unwrap();
            delivered.push(d.message.envelope.message_id.to_string());
        }
    }
    let unique: HashSet<&String> = delivered.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    eprintln!(
        "crash test figures: rounds {rounds}, acknowledged reports {}, delivered {} (unique {}), \
         unacknowledged extra {}, requests cut by a kill {failed_requests}, torn tails cut {torn_tails}, \
         index spilled to disk at {rounds_with_spill} kills, missing {}, {:.1} s",
        acked.len(),
        delivered.len(),
        unique.len(),
        unique.len().saturating_sub(acked.len()),
        missing.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged reports were lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(
        delivered.len(),
        unique.len(),
        "no consumer acked anything, so nothing is delivered twice"
    );
    backlog.close().await.unwrap();
}
