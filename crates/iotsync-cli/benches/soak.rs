//! Soak bench (not a test; issue 15): the real `iotsync serve` is SIGKILLed `--kills N`
//! times (default 100) under load and restarted on the same data dir and ports each time.
//!
//! Load: devices publishing QoS 1 property posts over MQTT, REST property reports, and
//! consumers that ack on AMQP (project A) and HTTP/2 (project B) through the SDK, staying
//! connected (reconnecting) across kills. Every report carries a unique token; a report
//! is "acknowledged to the source" when its PUBACK / HTTP 200 came back. At the end the
//! server runs until the consumers have read everything; then the bench prints
//! acknowledged vs delivered, lost (must be 0: exits 1 otherwise) and duplicates
//! (redeliveries of messages whose ack a kill cut off — at-least-once).
//!
//! `cargo bench -p iotsync-cli --bench soak -- --kills 100 [--seed S]`. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../../iotsync-server/benches/support/mqtt.rs"]
mod mqtt;

use iotsync_core::sign::device::{sign_password, DeviceClientId, DeviceUsername};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "soak-bench-operator-token-0001";
const LISTENERS: [&str; 7] = [
    "--api-listen",
    "--amqp-listen",
    "--amqps-listen",
    "--http2-listen",
    "--http2-tls-listen",
    "--mqtt-listen",
    "--mqtts-listen",
];

/// Free loopback ports, chosen once so every restart listens where the clients are.
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn spawn(dir: &std::path::Path, ports: &[u16]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iotsync"));
    cmd.arg("serve").arg("--data-dir").arg(dir);
    for (flag, port) in LISTENERS.iter().zip(ports) {
        cmd.arg(flag).arg(format!("127.0.0.1:{port}"));
    }
    let mut child = cmd
        .args(["--operator-token", TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iotsync serve");
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("read banner");
        let done = line.trim().starts_with("operator token:");
        banner.push(line);
        if done {
            break;
        }
    }
    assert!(
        banner
            .iter()
            .any(|l| l.trim().starts_with("operator token:")),
        "iotsync serve did not start: {banner:?}"
    );
    assert!(
        !banner.iter().any(|l| l.contains("DAMAGED")),
        "a kill must only ever leave a torn tail: {banner:?}"
    );
    std::thread::spawn(move || for _ in lines {});
    child
}

struct Lcg(u64);
impl Lcg {
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (self.0 >> 33) % (hi - lo)
    }
}

/// Tokens acknowledged to their source, and tokens (with message ids) consumers read.
#[derive(Default)]
struct Ledger {
    acked: HashSet<String>,
    delivered: HashMap<String, u32>,
    deliveries: u64,
}

fn tokens(payload: &[u8]) -> Vec<String> {
    let s = String::from_utf8_lossy(payload);
    s.match_indices("soak-")
        .map(|(i, _)| {
            s[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect()
        })
        .collect()
}

// --- a minimal MQTT 3.1.1 device (CONNECT, QoS 1 PUBLISH, PUBACK) ---

/// Reads one packet: (type, body); `None` when the connection ended.
async fn read_packet(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.ok()?;
        len += usize::from(b[0] & 0x7f) * mult;
        mult *= 128;
        if b[0] & 0x80 == 0 || mult > 128 * 128 * 128 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    Some((first[0] >> 4, body))
}

async fn mqtt_connect(
    port: u16,
    pk: &str,
    dn: &str,
    secret: &str,
) -> Option<tokio::net::TcpStream> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let cid: DeviceClientId =
        format!("soak-{dn}|securemode=3,signmethod=hmacsha256,timestamp={ts}|")
            .parse()
            .ok()?;
    let user: DeviceUsername = format!("{dn}&{pk}").parse().ok()?;
    let connect = mqtt::connect_packet(
        &cid.to_string(),
        Some(&user.to_string()),
        Some(&sign_password(&cid, &user, secret)),
        60,
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(&connect).await.ok()?;
    match read_packet(&mut s).await? {
        (2, b) if b.get(1) == Some(&0) => Some(s),
        _ => None,
    }
}

/// One device: publishes QoS 1 posts one at a time, each acked when its PUBACK arrives;
/// reconnects while the server is down.
async fn device(
    port: u16,
    pk: String,
    dn: String,
    secret: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    let mut pid = 0u16;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut s) = mqtt_connect(port, &pk, &dn, &secret).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            pid = pid.checked_add(1).unwrap_or(1);
            let token = format!("soak-m-{dn}-{n}");
            let payload = json!({"id": n.to_string(), "version": "1.0",
                "params": {"Seq": token}})
            .to_string();
            let mut publish = Vec::new();
            mqtt::publish_qos1(
                &mut publish,
                &format!("/sys/{pk}/{dn}/thing/event/property/post"),
                pid,
                payload.as_bytes(),
            );
            if s.write_all(&publish).await.is_err() {
                break;
            }
            let acked = loop {
                match tokio::time::timeout(Duration::from_secs(10), read_packet(&mut s)).await {
                    Ok(Some((4, b))) if b[..] == pid.to_be_bytes() => break true,
                    Ok(Some(_)) => continue,
                    _ => break false,
                }
            };
            if !acked {
                break;
            }
            ledger
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .acked
                .insert(token);
        }
    }
}

/// REST reports of one device, acked when the 200 came back.
async fn rest_writer(
    http: reqwest::Client,
    url: String,
    tag: String,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let token = format!("soak-r-{tag}-{n}");
        let r = http
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&json!({"items": {"Seq": token}}))
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                ledger
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .acked
                    .insert(token);
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn record(ledger: &Mutex<Ledger>, payload: &[u8]) {
    let mut l = ledger.lock().unwrap_or_else(|e| e.into_inner());
    l.deliveries += 1;
    for t in tokens(payload) {
        *l.delivered.entry(t).or_default() += 1;
    }
}

struct Project {
    pid: String,
    app_key: String,
    app_secret: String,
    pk: String,
    devices: Vec<(String, String, String)>, // (iotId, deviceName, secret)
}

async fn setup(http: &reqwest::Client, api: &str, name: &str, method: &str) -> Project {
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move {
            http.post(path)
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .expect("setup request")
                .json::<Value>()
                .await
                .expect("setup answer")
        }
    };
    let p = post(format!("{api}/projects"), json!({"name": name})).await;
    let pid = p["projectId"].as_str().expect("projectId").to_owned();
    post(
        format!("{api}/projects/{pid}/sync/enable"),
        json!({"method": method}),
    )
    .await;
    let pr = post(
        format!("{api}/projects/{pid}/products"),
        json!({"name": "Lamp", "deviceType": "Light"}),
    )
    .await;
    let pk = pr["productKey"].as_str().expect("productKey").to_owned();
    let mut devices = Vec::new();
    for i in 0..3 {
        let dn = format!("{name}{i:02}");
        let d = post(
            format!("{api}/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": dn}),
        )
        .await;
        devices.push((
            d["iotId"].as_str().expect("iotId").to_owned(),
            dn,
            d["deviceSecret"].as_str().expect("deviceSecret").to_owned(),
        ));
    }
    Project {
        pid,
        app_key: p["appKey"].as_str().expect("appKey").to_owned(),
        app_secret: p["appSecret"].as_str().expect("appSecret").to_owned(),
        pk,
        devices,
    }
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kills = arg(&args, "--kills").unwrap_or(100);
    let seed = arg(&args, "--seed").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
    });
    eprintln!("soak: {kills} SIGKILLs, seed {seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(LISTENERS.len());
    let (api_port, amqp_port, http2_port, mqtt_port) = (ports[0], ports[1], ports[3], ports[5]);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut child = spawn(dir.path(), &ports);
    let api = format!("http://127.0.0.1:{api_port}/api/v1");
    let a = setup(&http, &api, "amqpa", "amqp").await;
    let b = setup(&http, &api, "httpb", "http2").await;

    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Consumers: connected for the whole run, reconnecting across kills.
    let amqp = iotsync_sdk::amqp::AmqpConsumer::builder()
        .endpoint(format!("amqp://127.0.0.1:{amqp_port}"))
        .app_key(a.app_key.clone())
        .app_secret(a.app_secret.clone())
        .credit(200)
        .build()
        .expect("amqp consumer");
    let l = ledger.clone();
    let amqp_task = tokio::spawn(async move {
        let mut s = amqp.stream();
        while let Some(m) = s.next().await {
            if let Ok(m) = m {
                record(&l, &m.envelope.payload);
                let _ = m.ack().await;
            }
        }
    });
    let h2 = iotsync_sdk::http2::Http2Consumer::builder()
        .endpoint(format!("http://127.0.0.1:{http2_port}"))
        .app_key(b.app_key.clone())
        .app_secret(b.app_secret.clone())
        .credit(200)
        .build()
        .expect("http2 consumer");
    let l = ledger.clone();
    let h2_task = tokio::spawn(async move {
        let mut s = h2.stream();
        while let Some(m) = s.next().await {
            if let Ok(m) = m {
                record(&l, &m.envelope.payload);
                let _ = m.ack().await;
            }
        }
    });
    // Sources: two MQTT devices and one REST reporter per project.
    let mut load = Vec::new();
    for p in [&a, &b] {
        for (_, dn, secret) in &p.devices[..2] {
            load.push(tokio::spawn(device(
                mqtt_port,
                p.pk.clone(),
                dn.clone(),
                secret.clone(),
                ledger.clone(),
                stop.clone(),
            )));
        }
        let (iot, dn, _) = &p.devices[2];
        load.push(tokio::spawn(rest_writer(
            http.clone(),
            format!("{api}/projects/{}/devices/{iot}/properties", p.pid),
            dn.clone(),
            ledger.clone(),
            stop.clone(),
        )));
    }

    let started = Instant::now();
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.range(200, 800))).await;
        let _ = child.kill(); // SIGKILL on Unix
        let _ = child.wait();
        child = spawn(dir.path(), &ports);
        if (round + 1) % 10 == 0 {
            let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!(
                "  {} kills, {} acknowledged, {} delivered, {:.0} s",
                round + 1,
                l.acked.len(),
                l.delivered.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    let load_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    // Let the consumers read everything that was acknowledged (at most 120 s, or 20 s
    // without progress).
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut last_change) = (usize::MAX, Instant::now());
    loop {
        let (missing, seen) = {
            let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
            let missing = l
                .acked
                .iter()
                .filter(|t| !l.delivered.contains_key(*t))
                .count();
            (missing, l.delivered.len())
        };
        if missing == 0
            || Instant::now() > deadline
            || last_change.elapsed() > Duration::from_secs(20)
        {
            break;
        }
        if seen != last {
            last = seen;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    amqp_task.abort();
    h2_task.abort();
    let _ = child.kill();
    let _ = child.wait();

    let l = ledger.lock().unwrap_or_else(|e| e.into_inner());
    let lost: Vec<&String> = l
        .acked
        .iter()
        .filter(|t| !l.delivered.contains_key(*t))
        .collect();
    let duplicates: u64 = l
        .delivered
        .values()
        .map(|c| u64::from(c.saturating_sub(1)))
        .sum();
    let unacked_delivered = l.delivered.keys().filter(|t| !l.acked.contains(*t)).count();
    let mqtt = l.acked.iter().filter(|t| t.starts_with("soak-m-")).count();
    println!(
        "soak: kills {kills}, load {:.1} s, acknowledged to source {} (MQTT PUBACK {mqtt}, REST 200 {}), \
         delivered unique {} ({} messages read, status and lifecycle included), lost {}, duplicates {duplicates}, \
         delivered but never acknowledged to source {unacked_delivered}, seed {seed}",
        load_time.as_secs_f64(),
        l.acked.len(),
        l.acked.len() - mqtt,
        l.delivered.len(),
        l.deliveries,
        lost.len(),
    );
    if !lost.is_empty() {
        eprintln!("lost, e.g. {:?}", &lost[..lost.len().min(10)]);
        std::process::exit(1);
    }
}
