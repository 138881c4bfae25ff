//! Device gateway benchmark (not a timed test; `#[ignore]`). Run with
//! `cargo test --release -p iotsync-server --test gateway_bench -- --ignored --nocapture`.
//! Environment: BENCH_DEVICES (idle connections, default 10000), BENCH_RATE (posts/s,
//! default 500), BENCH_SECONDS (default 10). Mosquitto on 127.0.0.1:1883 is measured as
//! the peer for connection memory in the same run. Results go to docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use serde_json::json;

use iotsync_core::SystemClock;
use iotsync_testkit::{repo_root, PeerProc, TestServer};

fn rss_kb(pid: &str) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn mosquitto_pid() -> Option<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-x", "mosquitto"])
        .output()
        .ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(str::to_owned)
}

fn env_or(name: &str, d: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_idle_connections_and_publish_latency() {
    let n = env_or("BENCH_DEVICES", 10_000) as usize;
    let rate = env_or("BENCH_RATE", 500);
    let seconds = env_or("BENCH_SECONDS", 10);
    let env = TestServer::start().await;
    let reg = env.server().registry();
    let p = env.project_with_devices("Bench", &[]).await;
    let pid: iotsync_core::ProjectId = p.pid.parse().unwrap();
    let pk: iotsync_core::ProductKey = p.pk.parse().unwrap();
    let t = std::time::Instant::now();
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        let dn = format!("dev{i:06}");
        let d = reg
            .create_device(&pid, &pk, &dn.parse().unwrap())
            .await
            .unwrap();
        specs.push(json!([p.pk, dn, d.device_secret]));
    }
    eprintln!("created {n} devices in {:?}", t.elapsed());
    let file = env.dir.path().join("devices.json");
    std::fs::write(&file, serde_json::to_vec(&specs).unwrap()).unwrap();
    let script = repo_root().join("tests/peers/mqtt/bench.py");

    // Idle connections: iotsync.
    let me = std::process::id().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kb(&me);
    let mut idle = PeerProc::command(
        "peer",
        "python3",
        &[
            script.display().to_string(),
            "idle".into(),
            "--port".into(),
            env.mqtt_port().to_string(),
            "--devices".into(),
            file.display().to_string(),
        ],
    );
    let held = idle.next_event("held").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(&me);
    let iot_per_conn = (after - before) as f64 * 1024.0 / n as f64;
    eprintln!("iotsync: {held} rss {before} kB -> {after} kB, {iot_per_conn:.0} B/connection");

    // Idle connections: Mosquitto, same count, same client.
    let mosq = mosquitto_pid().expect("mosquitto must run on 127.0.0.1:1883 (the peer)");
    let mb = rss_kb(&mosq);
    let mut midle = PeerProc::command(
        "peer",
        "python3",
        &[
            script.display().to_string(),
            "idle".into(),
            "--port".into(),
            "1883".into(),
            "--anonymous".into(),
            n.to_string(),
        ],
    );
    let mheld = midle.next_event("held").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ma = rss_kb(&mosq);
    let mosq_per_conn = (ma - mb) as f64 * 1024.0 / n as f64;
    eprintln!("mosquitto: {mheld} rss {mb} kB -> {ma} kB, {mosq_per_conn:.0} B/connection");
    midle.finish().await;
    idle.finish().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Publish → AMQP delivery latency at a steady rate (100 devices, QoS 1): a real AMQP
    // 1.0 consumer (the SDK's) over the plain listener, acking each message.
    let amqp = env.server().addr("amqp").expect("amqp listener");
    let consumer = iotsync_sdk::amqp::AmqpConsumer::builder()
        .endpoint(format!("amqp://{amqp}"))
        .app_key(p.app_key.clone())
        .app_secret(p.app_secret.clone())
        .credit(1000)
        .build()
        .unwrap();
    let mut stream = consumer.connect().await.unwrap();
    // The group already holds the earlier phases' messages (device lifecycle, 10 000
    // online + offline statuses): drain them first, or the posts queue behind them (the
    // group is delivered in order) and the tail measures that drain, not the channel.
    let t = std::time::Instant::now();
    let mut drained = 0usize;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        m.ack().await.unwrap();
        drained += 1;
    }
    eprintln!(
        "drained {drained} messages already in the group in {:?} (incl. 1 s idle)",
        t.elapsed()
    );
    let lat_devices: Vec<_> = specs.iter().take(100).cloned().collect();
    let lfile = env.dir.path().join("latency-devices.json");
    std::fs::write(&lfile, serde_json::to_vec(&lat_devices).unwrap()).unwrap();
    let mut pubr = PeerProc::command(
        "peer",
        "python3",
        &[
            script.display().to_string(),
            "publish".into(),
            "--port".into(),
            env.mqtt_port().to_string(),
            "--devices".into(),
            lfile.display().to_string(),
            "--rate".into(),
            rate.to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ],
    );
    pubr.next_event("held").await;
    let mut lat = Vec::new();
    let expected = (rate * seconds) as usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 30);
    // Messages already in the group (status, lifecycle) arrive too; count them and when
    // the last one came relative to the first post.
    let (mut other, mut first_post, mut last_other) = (0usize, None, None);
    while lat.len() < expected && tokio::time::Instant::now() < deadline {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        else {
            break;
        };
        let now = iotsync_core::Clock::now_ms(&SystemClock);
        let v: serde_json::Value = serde_json::from_slice(&m.envelope.payload).unwrap();
        if let Some(t) = v["items"]["Seq"]["time"].as_i64() {
            first_post.get_or_insert(t);
            lat.push(now - t);
        } else {
            other += 1;
            last_other = Some(now);
        }
        m.ack().await.unwrap();
    }
    eprintln!(
        "other messages received during the latency phase: {other}, the last {:?} ms after the first post was sent",
        last_other.zip(first_post).map(|(l, f)| l - f)
    );
    pubr.finish().await;
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    eprintln!(
        "latency over {} posts at {rate}/s: p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().unwrap()
    );
    println!(
        "{}",
        json!({"devices": n, "iotsync_bytes_per_conn": iot_per_conn,
               "mosquitto_bytes_per_conn": mosq_per_conn, "posts": lat.len(),
               "rate": rate, "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
    );
    env.stop().await;
}
