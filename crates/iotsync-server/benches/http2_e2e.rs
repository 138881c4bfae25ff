//! End-to-end delivery bench (not a timed test): durable appends into the running
//! server's backlog, delivered over HTTP/2 to the Rust SDK consumer which acks each
//! message; the same over AMQP with the Rust SDK in the same run, for comparison.
//!
//! ```text
//! cargo bench -p iotsync-server --bench http2_e2e -- [--messages N] [--only http2|amqp]
//!     [--credit N] [--dir DIR] [--rate MSGS_PER_SEC]
//! ```
//!
//! Payloads are 256 bytes of JSON; 10 000 ordering keys (devices); appends are batched by
//! 8 concurrent appenders (group commit). Latency = time from just before the durable
//! append to receipt by the consumer (so it includes the fsync).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod support;

use support::now_us;

use iotsync_core::{Envelope, MessageId, MessageKind, SyncMessage};
use iotsync_sdk::amqp::AmqpConsumer;
use iotsync_sdk::http2::Http2Consumer;
use iotsync_testkit::{ProjectSpec, TestServer};

const PAYLOAD_BYTES: usize = 256;
const KEYS: usize = 10_000;
const APPENDERS: usize = 8;
const BATCH: usize = 256;

struct Args {
    messages: usize,
    only: Option<String>,
    credit: u32,
    dir: Option<String>,
    /// Messages per second offered by the producers (0 = as fast as they can).
    rate: u64,
}

fn args() -> Args {
    let mut a = Args {
        messages: 200_000,
        only: None,
        credit: 2_000,
        dir: None,
        rate: 0,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).cloned();
        match v[i].as_str() {
            "--messages" => a.messages = next.and_then(|s| s.parse().ok()).unwrap_or(a.messages),
            "--only" => a.only = next,
            "--credit" => a.credit = next.and_then(|s| s.parse().ok()).unwrap_or(a.credit),
            "--dir" => a.dir = next,
            "--rate" => a.rate = next.and_then(|s| s.parse().ok()).unwrap_or(0),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn payload(seq: usize) -> Vec<u8> {
    let mut p = json!({"seq": seq, "t": now_us(), "pad": ""}).to_string();
    let pad = PAYLOAD_BYTES.saturating_sub(p.len());
    p = json!({"seq": seq, "t": now_us(), "pad": "x".repeat(pad)}).to_string();
    p.into_bytes()
}

fn sent_at_us(payload: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(payload).ok()?["t"].as_i64()
}

struct Report {
    secs: f64,
    lat_us: Vec<i64>,
}

impl Report {
    fn print(&mut self, name: &str, n: usize) {
        self.lat_us.sort_unstable();
        let pct = |p: f64| {
            let i =
                ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len().saturating_sub(1));
            self.lat_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        println!(
            "{name:>6}: {n} msgs delivered+acked in {:.2} s = {:.0} msg/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.secs,
            n as f64 / self.secs,
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    }
}

async fn produce(server: &iotsync_server::RunningServer, pid: &str, n: usize, rate: u64) {
    let backlog = server.backlog();
    let t0 = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..APPENDERS {
        let backlog = backlog.clone();
        let next = next.clone();
        let pid = pid.parse().unwrap();
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(BATCH as u64, Ordering::Relaxed) as usize;
                if start >= n {
                    return;
                }
                if rate > 0 {
                    let at = Duration::from_secs_f64(start as f64 / rate as f64);
                    tokio::time::sleep_until(t0 + at).await;
                }
                let batch: Vec<SyncMessage> = (start..(start + BATCH).min(n))
                    .map(|seq| {
                        let key = format!("dev{:05}", seq % KEYS);
                        SyncMessage {
                            project_id: Clone::clone(&pid),
                            kind: MessageKind::PropertyPost,
                            product_key: None,
                            ordering_key: key.clone(),
                            envelope: Envelope {
                                topic: format!("/a1bench0001/{key}/thing/event/property/post"),
                                message_id: MessageId::generate(),
                                generate_time: now_us() / 1000,
                                payload: payload(seq),
                            },
                        }
                    })
                    .collect();
                backlog.append(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A project with sync on `method`: (projectId, appKey, appSecret).
async fn project(env: &TestServer, method: &str) -> (String, String, String) {
    let p = env
        .create_project(&ProjectSpec::new("bench").sync_first(method))
        .await;
    (p.pid, p.app_key, p.app_secret)
}

async fn run_http2(env: &TestServer, n: usize, credit: u32, rate: u64) -> Report {
    let (pid, key, secret) = project(env, "http2").await;
    let consumer = Http2Consumer::builder()
        .endpoint(env.http2_url())
        .app_key(key)
        .app_secret(secret)
        .credit(credit)
        .build()
        .unwrap();
    let mut stream = consumer.stream();
    let started = Instant::now();
    let producer = produce(env.server(), &pid, n, rate);
    let consume = async {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            match stream.next().await {
                Some(Ok(m)) => {
                    if let Some(t) = sent_at_us(&m.envelope.payload) {
                        lat.push(now_us() - t);
                    }
                    m.ack().await.unwrap();
                }
                Some(Err(e)) => eprintln!("http2: {e}"),
                None => break,
            }
        }
        lat
    };
    let ((), lat) = tokio::join!(producer, consume);
    // Until the server counted every ack (nothing stacked).
    env.stats_until(&pid, |st| st["groups"][0]["stacked"] == 0)
        .await;
    Report {
        secs: started.elapsed().as_secs_f64(),
        lat_us: lat,
    }
}

async fn run_amqp(env: &TestServer, n: usize, credit: u32, rate: u64) -> Report {
    let (pid, key, secret) = project(env, "amqp").await;
    let consumer = AmqpConsumer::builder()
        .endpoint(env.amqp_url())
        .app_key(key)
        .app_secret(secret)
        .credit(credit)
        .build()
        .unwrap();
    let mut stream = consumer.stream();
    let started = Instant::now();
    let producer = produce(env.server(), &pid, n, rate);
    let consume = async {
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            match stream.next().await {
                Some(Ok(m)) => {
                    if let Some(t) = sent_at_us(&m.envelope.payload) {
                        lat.push(now_us() - t);
                    }
                    m.ack().await.unwrap();
                }
                Some(Err(e)) => eprintln!("amqp: {e}"),
                None => break,
            }
        }
        lat
    };
    let ((), lat) = tokio::join!(producer, consume);
    // Until the server counted every ack (nothing stacked).
    env.stats_until(&pid, |st| st["groups"][0]["stacked"] == 0)
        .await;
    Report {
        secs: started.elapsed().as_secs_f64(),
        lat_us: lat,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = match &a.dir {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let env = TestServer::builder()
            .system_clock()
            .temp_dir(dir)
            .start()
            .await;
        println!(
            "{} messages of {PAYLOAD_BYTES} B, {KEYS} keys, {APPENDERS} appenders x {BATCH}, consumer credit {}, offered rate {} msg/s (0 = unpaced), durable backlog in {}",
            a.messages,
            a.credit,
            a.rate,
            env.dir.path().display()
        );
        if a.only.as_deref() != Some("amqp") {
            run_http2(&env, a.messages, a.credit, a.rate).await.print("http2", a.messages);
        }
        if a.only.as_deref() != Some("http2") {
            run_amqp(&env, a.messages, a.credit, a.rate).await.print("amqp", a.messages);
        }
        env.stop().await;
    });
}
