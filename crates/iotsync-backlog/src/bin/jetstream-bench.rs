//! Bench of the JetStream backlog engine (not a test), against a plain async-nats loop
//! on the same server in the same run: what share of JetStream's own rate the engine
//! keeps. Starts its own `nats-server -js` (R1, file storage, free port), or with
//! `--cluster 3` a routed 3-server cluster (`NatsTestCluster`, replicas 3 unless
//! `--replicas`), unless `--url` (a comma-separated list for a cluster).
//!
//! ```text
//! cargo run --release -p iotsync-backlog --bin jetstream-bench -- \
//!     [--url nats://127.0.0.1:PORT] [--cluster 3] [--replicas N] [--messages 200000] \
//!     [--batch 100] [--appenders 4] [--devices 1000] [--partitions 8] [--credit 500]
//! ```
//!
//! Besides the rates it reports CPU per message of each phase: the servers' (utime +
//! stime of the nats-server processes it started, from `/proc/<pid>/stat`) and its own.
//!
//! Both sides publish 256-byte payloads with `Nats-Msg-Id` and wait for every PubAck,
//! then drain with explicit acks. Plain: `publish_with_headers` with up to
//! `batch × appenders` in flight, one pull consumer (`batch(500)`) acking each message.
//! Engine: `appenders` tasks each appending `batch` messages at a time, one consumer
//! leasing `credit` and acking each delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use iotsync_backlog::{
    Backlog, ConsumerId, GroupSpec, JetStreamBacklog, JetStreamConfig, NatsTestCluster,
    NatsTestServer,
};
use iotsync_core::clock::system_clock;
use iotsync_core::{ConsumerGroup, Envelope, MessageKind, ProjectId, SyncMessage};

struct Args {
    url: Option<String>,
    /// 0: one server; 3: a 3-server cluster.
    cluster: usize,
    /// Stream replicas of both sides (default: 3 on a cluster, else 1).
    replicas: Option<usize>,
    messages: u64,
    batch: u64,
    appenders: u64,
    devices: u64,
    partitions: u16,
    credit: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: None,
        cluster: 0,
        replicas: None,
        messages: 200_000,
        batch: 100,
        appenders: 4,
        devices: 1000,
        partitions: 8,
        credit: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k.as_str() {
            "--url" => a.url = Some(v.clone()),
            "--cluster" => {
                a.cluster = match num()? {
                    0 | 1 => 0,
                    3 => 3,
                    n => return Err(format!("--cluster {n}: only 3 servers are supported")),
                }
            }
            "--replicas" => a.replicas = Some(num()?.clamp(1, 5) as usize),
            "--messages" => a.messages = num()?.max(1),
            "--batch" => a.batch = num()?.max(1),
            "--appenders" => a.appenders = num()?.max(1),
            "--devices" => a.devices = num()?.max(1),
            "--partitions" => a.partitions = num()?.clamp(1, 1024) as u16,
            "--credit" => a.credit = num()?.max(1) as usize,
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

fn payload() -> Vec<u8> {
    let mut p = br#"{"items":{"Temperature":{"value":21.5,"time":1700000000000}},"pad":""#.to_vec();
    p.resize(254, b'x');
    p.extend_from_slice(b"\"}");
    p
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// CPU time of the servers started here and of this process, from `/proc`.
struct CpuMeter {
    servers: Vec<u32>,
    /// Microseconds per clock tick.
    tick_us: f64,
}

/// A CPU sample: (servers' ticks, own ticks).
type CpuSample = (u64, u64);

impl CpuMeter {
    fn new(servers: Vec<u32>) -> Self {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|h| *h > 0.0)
            .unwrap_or(100.0);
        Self {
            servers,
            tick_us: 1e6 / hz,
        }
    }

    /// utime + stime of `/proc/<pid>/stat` (fields 14 and 15), in ticks.
    fn ticks(pid: &str) -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // After the command name in parentheses, fields start at 3 (state).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            f.get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(14) + field(15)
    }

    fn sample(&self) -> CpuSample {
        (
            self.servers
                .iter()
                .map(|p| Self::ticks(&p.to_string()))
                .sum(),
            Self::ticks("self"),
        )
    }

    /// (servers' µs per message, own µs per message) between two samples.
    fn per_message(&self, from: CpuSample, to: CpuSample, messages: u64) -> (f64, f64) {
        let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 * self.tick_us / messages as f64;
        (per(from.0, to.0), per(from.1, to.1))
    }
}

struct Rates {
    publish: f64,
    consume: f64,
    total_s: f64,
    /// µs per message: (servers, this process) while publishing and while consuming.
    publish_cpu: (f64, f64),
    consume_cpu: (f64, f64),
}

fn addrs(urls: &str) -> BenchResult<Vec<async_nats::ServerAddr>> {
    Ok(urls
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?)
}

async fn plain(url: &str, a: &Args, replicas: usize, cpu: &CpuMeter) -> BenchResult<Rates> {
    let client = async_nats::connect(addrs(url)?).await?;
    let js = jetstream::new(client);
    let _ = js.delete_stream("BENCH_PLAIN").await;
    let s = js
        .create_stream(stream::Config {
            name: "BENCH_PLAIN".into(),
            subjects: vec!["benchplain.>".into()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    let c = s
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let body = Bytes::from(payload());
    let window = (a.batch * a.appenders) as usize;
    let c0 = cpu.sample();
    let t0 = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(window);
    for i in 0..a.messages {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("plain-{i}").as_str());
        let subject = format!("benchplain.{}", i % u64::from(a.partitions));
        acks.push_back(js.publish_with_headers(subject, h, body.clone()).await?);
        if acks.len() >= window {
            if let Some(f) = acks.pop_front() {
                f.await?;
            }
        }
    }
    for f in acks {
        f.await?;
    }
    let published = t0.elapsed();
    let c1 = cpu.sample();
    let t1 = Instant::now();
    let mut got = 0u64;
    while got < a.messages {
        let mut batch = c
            .batch()
            .max_messages(500)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(m) = batch.next().await {
            m?.ack().await?;
            got += 1;
        }
    }
    let consumed = t1.elapsed();
    let c2 = cpu.sample();
    js.delete_stream("BENCH_PLAIN").await?;
    Ok(Rates {
        publish: a.messages as f64 / published.as_secs_f64(),
        consume: a.messages as f64 / consumed.as_secs_f64(),
        total_s: (published + consumed).as_secs_f64(),
        publish_cpu: cpu.per_message(c0, c1, a.messages),
        consume_cpu: cpu.per_message(c1, c2, a.messages),
    })
}

async fn engine(url: &str, a: &Args, replicas: usize, cpu: &CpuMeter) -> BenchResult<Rates> {
    let b = Arc::new(
        JetStreamBacklog::connect(
            url,
            JetStreamConfig {
                partitions: a.partitions,
                node_name: Some("bench".into()),
                replicas: Some(replicas),
                ..JetStreamConfig::default()
            },
            system_clock(),
        )
        .await?,
    );
    let p: ProjectId = "benchproject".parse()?;
    let g: ConsumerGroup = "benchgroup".parse()?;
    b.create_group(&p, &g, &GroupSpec::all()).await?;
    let now = iotsync_core::Clock::now_ms(&*system_clock());
    let body = payload();
    let c0 = cpu.sample();
    let t0 = Instant::now();
    let per = a.messages / a.appenders;
    let mut tasks = Vec::new();
    let pk: iotsync_core::ProductKey = "a1bench".parse()?;
    for w in 0..a.appenders {
        let (b, p, pk, body) = (b.clone(), p.clone(), pk.clone(), body.clone());
        let (a_batch, devices) = (a.batch, a.devices);
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while i < per {
                let n = a_batch.min(per - i);
                let mut batch = Vec::with_capacity(n as usize);
                for k in i..i + n {
                    let dev = format!("dev{}", (w * per + k) % devices);
                    batch.push(SyncMessage {
                        project_id: p.clone(),
                        kind: MessageKind::PropertyPost,
                        product_key: Some(pk.clone()),
                        ordering_key: dev.clone(),
                        envelope: Envelope {
                            topic: format!("/a1bench/{dev}/thing/event/property/post"),
                            message_id: format!("m{w}x{k}").parse()?,
                            generate_time: now,
                            payload: body.clone(),
                        },
                    });
                }
                b.append(batch).await?;
                i += n;
            }
            BenchResult::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = per * a.appenders;
    let published = t0.elapsed();
    let c1 = cpu.sample();
    let t1 = Instant::now();
    let mut got = 0u64;
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut out_of_order = 0u64;
    let mut w = b.watch(&p, &g)?;
    while got < total {
        let ds = b.lease(&p, &g, ConsumerId(1), a.credit).await?;
        if ds.is_empty() {
            let _ = tokio::time::timeout(Duration::from_millis(100), w.changed()).await;
            continue;
        }
        for d in ds {
            let id = d.message.envelope.message_id.as_str();
            if let Some((wk, k)) = id[1..].split_once('x') {
                let n = wk.parse::<u64>().unwrap_or(0) * per + k.parse::<u64>().unwrap_or(0);
                let prev = last.insert(d.message.ordering_key.clone(), n);
                if prev.is_some_and(|p| p > n) && d.attempt == 1 && a.appenders == 1 {
                    out_of_order += 1;
                }
            }
            b.ack(&d.token).await?;
            got += 1;
        }
    }
    let consumed = t1.elapsed();
    let c2 = cpu.sample();
    if out_of_order > 0 {
        eprintln!("engine: {out_of_order} first deliveries out of device order");
    }
    Ok(Rates {
        publish: total as f64 / published.as_secs_f64(),
        consume: total as f64 / consumed.as_secs_f64(),
        total_s: (published + consumed).as_secs_f64(),
        publish_cpu: cpu.per_message(c0, c1, total),
        consume_cpu: cpu.per_message(c1, c2, total),
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> BenchResult<()> {
    let a = parse_args()?;
    let (_one, _cluster, url, pids) = match (&a.url, a.cluster) {
        (Some(u), _) => (None, None, u.clone(), Vec::new()),
        (None, 0) => {
            let s = NatsTestServer::start()?;
            let (url, pids) = (s.url(), s.pid().into_iter().collect());
            (Some(s), None, url, pids)
        }
        (None, _) => {
            let c = NatsTestCluster::start().await?;
            let pids = (0..NatsTestCluster::SIZE)
                .filter_map(|i| c.pid(i))
                .collect();
            let url = c.urls();
            (None, Some(c), url, pids)
        }
    };
    let servers = url.split(',').filter(|s| !s.trim().is_empty()).count();
    let replicas = a.replicas.unwrap_or(if servers >= 3 { 3 } else { 1 });
    let cpu = CpuMeter::new(pids);
    println!(
        "jetstream-bench: {} server(s), replicas {replicas}, {} messages of 256 B, batch {}, appenders {}, {} devices, {} partitions, credit {}",
        servers, a.messages, a.batch, a.appenders, a.devices, a.partitions, a.credit
    );
    let p = plain(&url, &a, replicas, &cpu).await?;
    let e = engine(&url, &a, replicas, &cpu).await?;
    println!("| | publish/append msg/s | consume+ack msg/s | end to end msg/s |");
    println!("|---|---:|---:|---:|");
    for (name, r) in [("plain async-nats", &p), ("JetStreamBacklog", &e)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            r.publish,
            r.consume,
            a.messages as f64 / r.total_s
        );
    }
    println!(
        "engine / plain: publish {:.0} %, consume {:.0} %, end to end {:.0} %",
        100.0 * e.publish / p.publish,
        100.0 * e.consume / p.consume,
        100.0 * p.total_s / e.total_s
    );
    if cpu.servers.is_empty() {
        println!("(servers' CPU not measured: --url)");
    }
    println!("| CPU µs/message | publish/append: servers | bench | consume+ack: servers | bench |");
    println!("|---|---:|---:|---:|---:|");
    for (name, r) in [("plain async-nats", &p), ("JetStreamBacklog", &e)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.publish_cpu.0, r.publish_cpu.1, r.consume_cpu.0, r.consume_cpu.1
        );
    }
    Ok(())
}
