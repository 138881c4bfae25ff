//! AMQP 1.0 channel bench (not a timed test): iotsync against RabbitMQ's AMQP 1.0 plugin,
//! in the same run, with the same consumer code (fe2o3-amqp, credit 1000, one `accepted`
//! disposition per message, or with `--accept-batch K` one `accept_all` per K messages in
//! the drains, for both systems alike).
//!
//! ```text
//! cargo bench -p iotsync-server --bench amqp_e2e -- [--messages N] [--devices N]
//!     [--credit N] [--accept-batch K] [--rate MSGS_PER_S] [--live-secs S] [--producers N]
//!     [--ingest-messages N] [--only iotsync|rabbitmq]
//!     [--rabbit amqp://guest:guest@127.0.0.1:5672/%2f] [--dir DIR]
//! ```
//!
//! Two phases per system:
//!
//! 1. **drain**: N messages of 256 B made durable first (iotsync: the first
//!    `--ingest-messages` through the server's ingest, `report_properties`, which also
//!    measures the ingest's own rate, the rest appended to the backlog in batches exactly
//!    as the ingest builds them, because the ingest's per-report registry write is far
//!    slower than the channel under test; spread over many devices because the backlog
//!    keeps one message per device in flight per group; RabbitMQ: a durable queue declared and
//!    filled over AMQP 0.9.1 with persistent messages and publisher confirms, since its
//!    AMQP 1.0 plugin cannot create durable queues), then consumed over AMQP 1.0 and
//!    accepted one by one. Reports delivered+accepted msg/s and the broker's CPU time per
//!    message (iotsync: the process's CPU minus the bench client's threads; RabbitMQ: the
//!    `beam.smp` process). iotsync's drain is also run with the Rust SDK consumer
//!    (`iotsync_sdk::amqp`, its own consumer group over the same messages).
//! 2. **live**: producing at a fixed rate (`--rate`, within what the ingest sustains)
//!    while the consumer is attached (iotsync: through the ingest; RabbitMQ: persistent
//!    publishes with confirms); latency = time from the message's scheduled send time
//!    (carried in the payload, µs) to receipt by the consumer.
//!
//! The server runs in-process on its own tokio runtime (threads `iotsync-srv`), the
//! clients on another (`bench-cli`), so CPU time can be split by thread.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value as AmqpValue;
use fe2o3_amqp::{Connection, Receiver, Session};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

mod support;

use support::{clk_tck, comm, now_us, stat_ticks};

use iotsync_core::payload::{property_post, PropertyItem};
use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};
use iotsync_core::{ConsumerGroup, IotId, ProjectId, SystemClock};
use iotsync_sdk::amqp::AmqpConsumer;
use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};

/// The allocator the `iotsync` binary ships with (the server runs in this process). The
/// bench clients share it, for iotsync and RabbitMQ alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-operator-token-0123456789";
const PAYLOAD_BYTES: usize = 256;
const RABBIT_QUEUE: &str = "iotsync-bench-drain";
const RABBIT_LIVE_QUEUE: &str = "iotsync-bench-live";

struct Args {
    messages: usize,
    devices: usize,
    credit: u32,
    accept_batch: usize,
    rate: usize,
    live_secs: u64,
    producers: usize,
    ingest_messages: usize,
    only: Option<String>,
    rabbit: String,
    dir: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        messages: 200_000,
        devices: 2_000,
        credit: 1_000,
        accept_batch: 1,
        rate: 500,
        live_secs: 10,
        producers: 64,
        ingest_messages: 10_000,
        only: None,
        rabbit: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        dir: None,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).cloned();
        let num = |d: usize| next.as_deref().and_then(|s| s.parse().ok()).unwrap_or(d);
        match v[i].as_str() {
            "--messages" => a.messages = num(a.messages),
            "--devices" => a.devices = num(a.devices),
            "--credit" => a.credit = num(a.credit as usize) as u32,
            "--accept-batch" => a.accept_batch = num(a.accept_batch).max(1),
            "--rate" => a.rate = num(a.rate),
            "--live-secs" => a.live_secs = num(a.live_secs as usize) as u64,
            "--producers" => a.producers = num(a.producers),
            "--ingest-messages" => a.ingest_messages = num(a.ingest_messages),
            "--only" => a.only = next,
            "--rabbit" => a.rabbit = next.unwrap_or(a.rabbit),
            "--dir" => a.dir = next,
            _ => {
                // `cargo bench` passes `--bench`; ignore what we do not know.
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// CPU of this process, and of its threads that are not the server's (the bench client
/// runtime and the main thread); server = process − client.
#[derive(Clone, Copy)]
struct CpuSnap {
    process: u64,
    client: u64,
    rabbit: u64,
}

fn rabbit_pid() -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (name.chars().all(|c| c.is_ascii_digit())
            && comm(&format!("/proc/{name}/comm")) == "beam.smp")
            .then_some(name)
    })
}

fn cpu_snap(rabbit: Option<&str>) -> CpuSnap {
    let pid = std::process::id();
    let mut client = 0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let tid = e.file_name().to_string_lossy().into_owned();
            let c = comm(&format!("/proc/self/task/{tid}/comm"));
            if c.starts_with("bench-cli") || tid == pid.to_string() {
                client += stat_ticks(&format!("/proc/self/task/{tid}/stat")).unwrap_or(0);
            }
        }
    }
    CpuSnap {
        process: stat_ticks("/proc/self/stat").unwrap_or(0),
        client,
        rabbit: rabbit
            .and_then(|p| stat_ticks(&format!("/proc/{p}/stat")))
            .unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------
// The consumer both systems are measured with.

struct Endpoint {
    addr: String,
    username: String,
    password: String,
    source: String,
}

#[derive(Default)]
struct Report {
    n: usize,
    secs: f64,
    payload_bytes: usize,
    lat_us: Vec<i64>,
}

impl Report {
    fn rate(&self) -> f64 {
        self.n as f64 / self.secs
    }
    fn pct_ms(&mut self, p: f64) -> f64 {
        self.lat_us.sort_unstable();
        if self.lat_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len() - 1);
        self.lat_us[i] as f64 / 1000.0
    }
}

/// The send time the producer put in the payload: `t` (RabbitMQ) or the `t` property of
/// an iotsync property-post payload (`items.t.value`).
fn sent_at_us(payload: &[u8]) -> Option<i64> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    v["t"]
        .as_i64()
        .or_else(|| v["items"]["t"]["value"].as_i64())
}

fn accepts(batch: usize) -> String {
    if batch > 1 {
        format!(", accept_all per {batch}")
    } else {
        String::new()
    }
}

/// Receives `n` messages at `credit`, accepting each (`accept_batch` 1) or every
/// `accept_batch` together (fe2o3's `accept_all`: one disposition frame per range of
/// consecutive ids, as the SDK consumer does); the clock starts at the first.
async fn consume_raw(
    ep: &Endpoint,
    n: usize,
    credit: u32,
    accept_batch: usize,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
) -> Report {
    let tcp = tokio::net::TcpStream::connect(&ep.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut conn = Connection::builder()
        .container_id("amqp-e2e-bench")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain {
            username: ep.username.clone(),
            password: ep.password.clone(),
        })
        .idle_time_out(60_000u32)
        .open_with_stream(tcp)
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut rx = Receiver::builder()
        .name("bench-receiver")
        .source(ep.source.clone())
        .credit_mode(CreditMode::Auto(credit))
        .attach(&mut session)
        .await
        .unwrap();
    if let Some(r) = ready {
        let _ = r.send(());
    }
    let mut rep = Report {
        n,
        ..Default::default()
    };
    rep.lat_us.reserve(n);
    let mut started = None;
    let mut pending = Vec::with_capacity(accept_batch);
    for i in 0..n {
        let d = rx.recv::<Body<AmqpValue>>().await.unwrap();
        let now = now_us();
        started.get_or_insert_with(Instant::now);
        if let Body::Data(batch) = d.body() {
            let payload: Vec<u8> = batch.iter().flat_map(|b| b.0.iter().copied()).collect();
            rep.payload_bytes += payload.len();
            if let Some(t) = sent_at_us(&payload) {
                rep.lat_us.push(now - t);
            }
        }
        if accept_batch <= 1 {
            rx.accept(&d).await.unwrap();
        } else {
            pending.push(d.into_parts().0);
            if pending.len() >= accept_batch || i + 1 == n {
                rx.accept_all(std::mem::take(&mut pending)).await.unwrap();
            }
        }
    }
    rep.secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    let _ = rx.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    rep
}

/// The Rust SDK consumer, acking each message.
async fn consume_sdk(consumer: AmqpConsumer, n: usize) -> Report {
    let mut s = consumer.connect().await.unwrap();
    let mut rep = Report {
        n,
        ..Default::default()
    };
    let mut started = None;
    for _ in 0..n {
        let m = s.next().await.unwrap().unwrap();
        started.get_or_insert_with(Instant::now);
        rep.payload_bytes += m.envelope.payload.len();
        m.ack().await.unwrap();
    }
    rep.secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
    rep
}

// ---------------------------------------------------------------------------------------
// iotsync side.

struct Iot {
    server: RunningServer,
    srv: tokio::runtime::Handle,
    pid: ProjectId,
    app_key: String,
    app_secret: String,
    devices: Vec<IotId>,
    pad: String,
}

async fn rest(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn iot_setup(server: RunningServer, srv: tokio::runtime::Handle, devices: usize) -> Iot {
    let base = format!("http://{}", server.api_addr);
    let http = reqwest::Client::new();
    let p = rest(&http, &base, "/api/v1/projects", json!({"name": "bench"})).await;
    let pid = p["projectId"].as_str().unwrap().to_owned();
    let pr = rest(
        &http,
        &base,
        &format!("/api/v1/projects/{pid}/products"),
        json!({"name": "Meter", "deviceType": "Meter"}),
    )
    .await;
    let pk = pr["productKey"].as_str().unwrap().to_owned();
    let mut ids: Vec<IotId> = Vec::with_capacity(devices);
    for i in 0..devices {
        let d = rest(
            &http,
            &base,
            &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
            json!({ "deviceName": format!("meter{i:05}") }),
        )
        .await;
        ids.push(d["iotId"].as_str().unwrap().parse().unwrap());
    }
    rest(
        &http,
        &base,
        &format!("/api/v1/projects/{pid}/sync/enable"),
        json!({"method": "amqp"}),
    )
    .await;
    // Size the pad so the property-post payload is 256 bytes, built as the ingest does.
    let first = server
        .registry()
        .get_device(&pid.parse().unwrap(), &ids[0])
        .await
        .unwrap()
        .as_ref();
    let mut items = BTreeMap::new();
    for (k, v) in [("pad", json!("")), ("t", json!(now_us()))] {
        items.insert(
            k.to_string(),
            PropertyItem {
                value: v,
                time: now_us() / 1000,
            },
        );
    }
    let sample = property_post(&first, &items, now_us() / 1000)
        .envelope
        .payload
        .len();
    Iot {
        server,
        srv,
        pid: pid.parse().unwrap(),
        app_key: p["appKey"].as_str().unwrap().to_owned(),
        app_secret: p["appSecret"].as_str().unwrap().to_owned(),
        devices: ids,
        pad: "x".repeat(PAYLOAD_BYTES.saturating_sub(sample)),
    }
}

impl Iot {
    fn endpoint(&self, group: &str) -> Endpoint {
        let creds = AmqpCredentials {
            client_id: format!("bench-{group}"),
            auth: AmqpAuthMode::AppKey {
                random_ms: now_us() / 1000,
            },
            app_key: self.app_key.parse().unwrap(),
            group: Some(group.parse().unwrap()),
            iot_instance_id: None,
        };
        Endpoint {
            addr: self.server.addr("amqp").unwrap().to_string(),
            password: sign_password(&creds, &self.app_secret),
            username: creds.username(),
            source: "default".into(),
        }
    }

    async fn create_group(&self, g: &str) {
        let g: ConsumerGroup = g.parse().unwrap();
        self.server
            .backlog()
            .create_group(&self.pid, &g, &iotsync_backlog::GroupSpec::all())
            .await
            .unwrap();
    }

    /// Appends reports `from..to` straight to the durable backlog (8 appenders × 256 per
    /// append, group commit), built exactly as the ingest builds a property post: the
    /// registry write of the ingest is what limits it, not the channel under test.
    async fn fill_backlog(&self, from: usize, to: usize) {
        let registry = self.server.registry();
        let mut refs = Vec::with_capacity(self.devices.len());
        for d in &self.devices {
            refs.push(registry.get_device(&self.pid, d).await.unwrap().as_ref());
        }
        let refs = Arc::new(refs);
        let next = Arc::new(AtomicUsize::new(from));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (refs, next, pad) = (refs.clone(), next.clone(), self.pad.clone());
            let backlog = self.server.backlog();
            tasks.push(self.srv.spawn(async move {
                loop {
                    let start = next.fetch_add(256, Ordering::Relaxed);
                    if start >= to {
                        return;
                    }
                    let batch = (start..(start + 256).min(to))
                        .map(|seq| {
                            let now = now_us();
                            let mut items = BTreeMap::new();
                            for (k, v) in [("pad", json!(pad)), ("t", json!(now))] {
                                items.insert(
                                    k.to_string(),
                                    PropertyItem {
                                        value: v,
                                        time: now / 1000,
                                    },
                                );
                            }
                            property_post(&refs[seq % refs.len()], &items, now / 1000)
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

    /// Produces `n` reports through the ingest, `producers` at a time, on the server's
    /// runtime. `rate` = 0: as fast as possible; else paced, `t` = the scheduled time.
    async fn produce(&self, n: usize, producers: usize, rate: usize) {
        let ingest = self.server.ingest();
        let next = Arc::new(AtomicUsize::new(0));
        let start_us = now_us();
        let mut tasks = Vec::new();
        for _ in 0..producers {
            let ingest = ingest.clone();
            let next = next.clone();
            let pid = self.pid.clone();
            let devices = self.devices.clone();
            let pad = self.pad.clone();
            tasks.push(self.srv.spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= n {
                        return;
                    }
                    let t = if rate == 0 {
                        now_us()
                    } else {
                        let due = start_us + (seq as i64 * 1_000_000) / rate as i64;
                        let wait = due - now_us();
                        if wait > 0 {
                            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
                        }
                        due
                    };
                    let items = json!({"pad": pad, "t": t});
                    let out = ingest
                        .report_properties(
                            &pid,
                            &devices[seq % devices.len()],
                            items.as_object().unwrap(),
                        )
                        .await
                        .unwrap();
                    assert!(out.produced);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// RabbitMQ side.

async fn rabbit_channel(uri: &str) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin::Connection::connect(uri, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ at {uri}: {e} (is it running?)"));
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    (conn, ch)
}

async fn rabbit_declare(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        lapin::options::QueueDeclareOptions::durable(),
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default())
        .await
        .unwrap();
}

fn rabbit_payload(seq: usize, t: i64) -> Vec<u8> {
    let p = json!({"seq": seq, "t": t, "pad": ""}).to_string();
    let pad = "x".repeat(PAYLOAD_BYTES.saturating_sub(p.len()));
    json!({"seq": seq, "t": t, "pad": pad})
        .to_string()
        .into_bytes()
}

/// Publishes `n` persistent messages with confirms (a window of 1000 unconfirmed);
/// `rate` = 0: as fast as possible.
async fn rabbit_publish(ch: &lapin::Channel, queue: &str, n: usize, rate: usize) {
    let start_us = now_us();
    let mut window = std::collections::VecDeque::new();
    for seq in 0..n {
        let t = if rate == 0 {
            now_us()
        } else {
            let due = start_us + (seq as i64 * 1_000_000) / rate as i64;
            let wait = due - now_us();
            if wait > 0 {
                tokio::time::sleep(Duration::from_micros(wait as u64)).await;
            }
            due
        };
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                &rabbit_payload(seq, t),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        window.push_back(confirm);
        if window.len() >= 1000 {
            let c = window.pop_front().unwrap().await.unwrap();
            assert!(c.is_ack());
        }
    }
    for c in window {
        assert!(c.await.unwrap().is_ack());
    }
}

fn rabbit_endpoint(uri: &str, queue: &str) -> Endpoint {
    // amqp://user:pass@host:port/vhost → the AMQP 1.0 plugin on the same port.
    let rest = uri.trim_start_matches("amqp://");
    let (userinfo, hostpart) = rest.split_once('@').unwrap_or(("guest:guest", rest));
    let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let addr = hostpart.split('/').next().unwrap_or("127.0.0.1:5672");
    Endpoint {
        addr: addr.into(),
        username: user.into(),
        password: pass.into(),
        source: format!("/amq/queue/{queue}"),
    }
}

/// What RabbitMQ answers to an AMQP 1.0 SASL protocol header on its port.
enum RabbitAmqp10 {
    Ready,
    /// It answered with AMQP 0-9-1's header: the AMQP 1.0 plugin is off.
    PluginOff,
    Unreachable(String),
}

fn probe_rabbit_amqp10(addr: &str) -> RabbitAmqp10 {
    use std::io::{Read, Write};
    let sock = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => return RabbitAmqp10::Unreachable(e.to_string()),
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let mut sock = sock;
    let mut answer = [0u8; 8];
    match sock
        .write_all(b"AMQP\x03\x01\x00\x00")
        .and_then(|()| sock.read_exact(&mut answer))
    {
        Ok(()) if &answer == b"AMQP\x03\x01\x00\x00" => RabbitAmqp10::Ready,
        Ok(()) => RabbitAmqp10::PluginOff,
        Err(e) => RabbitAmqp10::Unreachable(e.to_string()),
    }
}

/// The peer is set up before anything is measured: RabbitMQ's AMQP 1.0 plugin is off on
/// a fresh machine, so the bench enables it (`rabbitmq-plugins enable rabbitmq_amqp1_0`)
/// or stops with what to run.
fn ensure_rabbit_amqp10(uri: &str) {
    let addr = rabbit_endpoint(uri, "probe").addr;
    let stop = |why: String| -> ! {
        eprintln!(
            "amqp_e2e: {why}\n  start RabbitMQ with `rabbitmq-server -detached`, enable its AMQP 1.0 plugin with \
             `rabbitmq-plugins enable rabbitmq_amqp1_0`, or run only iotsync with `-- --only iotsync`"
        );
        std::process::exit(2);
    };
    match probe_rabbit_amqp10(&addr) {
        RabbitAmqp10::Ready => return,
        RabbitAmqp10::Unreachable(e) => stop(format!("RabbitMQ is not reachable at {addr}: {e}")),
        RabbitAmqp10::PluginOff => {}
    }
    eprintln!("amqp_e2e: RabbitMQ at {addr} has AMQP 1.0 off; running `rabbitmq-plugins enable rabbitmq_amqp1_0`");
    let enabled = std::process::Command::new("rabbitmq-plugins")
        .args(["enable", "rabbitmq_amqp1_0"])
        .status();
    match enabled {
        Ok(st) if st.success() => {}
        Ok(st) => stop(format!(
            "`rabbitmq-plugins enable rabbitmq_amqp1_0` failed ({st})"
        )),
        Err(e) => stop(format!("cannot run rabbitmq-plugins ({e})")),
    }
    // The plugin starts within seconds of being enabled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let RabbitAmqp10::Ready = probe_rabbit_amqp10(&addr) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop(format!(
        "RabbitMQ at {addr} still refuses AMQP 1.0 after enabling the plugin"
    ))
}

// ---------------------------------------------------------------------------------------

struct Row {
    name: String,
    rate: f64,
    cpu_us: Option<f64>,
    extra: String,
}

fn main() {
    let a = args();
    let tck = clk_tck();
    let srv_rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("iotsync-srv")
        .build()
        .unwrap();
    let cli_rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("bench-cli")
        .build()
        .unwrap();
    let dir = match &a.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let flags = ConfigOverrides {
        data_dir: Some(dir.path().to_owned()),
        operator_token: Some(TOKEN.into()),
        log_level: Some("warn".into()),
        ..Default::default()
    }
    .ephemeral_listeners();
    let cfg = ServerConfig::layered(None, Default::default(), flags).unwrap();
    let server = srv_rt
        .block_on(iotsync_server::start(cfg, Arc::new(SystemClock)))
        .unwrap();
    let srv = srv_rt.handle().clone();
    let rabbit = rabbit_pid();
    println!(
        "{} messages of ~{PAYLOAD_BYTES} B, {} devices, credit {}, live {} msg/s for {} s; durable backlog in {}; RabbitMQ beam.smp pid {:?}",
        a.messages, a.devices, a.credit, a.rate, a.live_secs, dir.path().display(), rabbit
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut live: HashMap<&str, Report> = HashMap::new();
    let mut ingest_rate = f64::NAN;
    let run_iot = a.only.as_deref() != Some("rabbitmq");
    let run_rabbit = a.only.as_deref() != Some("iotsync");
    if run_rabbit {
        ensure_rabbit_amqp10(&a.rabbit);
    }

    let server = if run_iot {
        let iot = cli_rt.block_on(iot_setup(server, srv.clone(), a.devices));
        cli_rt.block_on(async {
            iot.create_group("bench-raw").await;
            iot.create_group("bench-sdk").await;
            let via_ingest = a.ingest_messages.min(a.messages);
            let c0 = cpu_snap(None);
            let t0 = Instant::now();
            iot.produce(via_ingest, a.producers, 0).await;
            let secs = t0.elapsed().as_secs_f64();
            let c1 = cpu_snap(None);
            let cpu = (c1.process - c0.process - (c1.client - c0.client)) as f64 / tck;
            println!(
                "iotsync ingest (report_properties, {} concurrent): {via_ingest} durable reports in {secs:.2} s = {:.0} msg/s, server CPU {:.1} µs/msg",
                a.producers,
                via_ingest as f64 / secs,
                cpu * 1e6 / via_ingest.max(1) as f64
            );
            ingest_rate = via_ingest as f64 / secs;
            let t0 = Instant::now();
            iot.fill_backlog(via_ingest, a.messages).await;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "iotsync backlog fill (append, 8 x 256): {} in {secs:.2} s = {:.0} msg/s",
                a.messages - via_ingest,
                (a.messages - via_ingest) as f64 / secs
            );
            // Let the dispatcher settle before measuring the drain.
            tokio::time::sleep(Duration::from_millis(500)).await;

            let ep = iot.endpoint("bench-raw");
            let merged = || {
                iot.server
                    .channel_counters()
                    .amqp_dispositions_merged
                    .load(std::sync::atomic::Ordering::Relaxed)
            };
            let m0 = merged();
            let c0 = cpu_snap(None);
            let rep = tokio::spawn({
                let (n, c, b) = (a.messages, a.credit, a.accept_batch);
                async move { consume_raw(&ep, n, c, b, None).await }
            })
            .await
            .unwrap();
            let c1 = cpu_snap(None);
            let cpu = (c1.process - c0.process - (c1.client - c0.client)) as f64 / tck;
            let client = (c1.client - c0.client) as f64 / tck;
            println!(
                "iotsync drain (fe2o3 client): {:.0} msg/s ({:.2} s), mean payload {} B, server CPU {:.1} µs/msg, client CPU {:.1} µs/msg",
                rep.rate(), rep.secs, rep.payload_bytes / rep.n.max(1),
                cpu * 1e6 / rep.n as f64, client * 1e6 / rep.n as f64
            );
            println!(
                "  its disposition frames merged into ranges by the server: {}",
                merged() - m0
            );
            rows.push(Row {
                name: format!("iotsync drain, fe2o3 client{}", accepts(a.accept_batch)),
                rate: rep.rate(),
                cpu_us: Some(cpu * 1e6 / rep.n as f64),
                extra: format!("{} B mean payload", rep.payload_bytes / rep.n.max(1)),
            });

            let sdk = AmqpConsumer::builder()
                .endpoint(format!("amqp://{}", iot.server.addr("amqp").unwrap()))
                .app_key(iot.app_key.clone())
                .app_secret(iot.app_secret.clone())
                .group("bench-sdk")
                .client_id("bench-sdk")
                .credit(a.credit)
                .build()
                .unwrap();
            let m0 = merged();
            let c0 = cpu_snap(None);
            let n = a.messages;
            let rep = tokio::spawn(consume_sdk(sdk, n)).await.unwrap();
            let c1 = cpu_snap(None);
            let cpu = (c1.process - c0.process - (c1.client - c0.client)) as f64 / tck;
            let client = (c1.client - c0.client) as f64 / tck;
            println!(
                "iotsync drain (Rust SDK): {:.0} msg/s ({:.2} s), server CPU {:.1} µs/msg, client CPU {:.1} µs/msg",
                rep.rate(),
                rep.secs,
                cpu * 1e6 / rep.n as f64,
                client * 1e6 / rep.n as f64
            );
            println!(
                "  its disposition frames merged into ranges by the server: {}",
                merged() - m0
            );
            rows.push(Row {
                name: "iotsync drain, Rust SDK consumer".into(),
                rate: rep.rate(),
                cpu_us: Some(cpu * 1e6 / rep.n as f64),
                extra: String::new(),
            });

            // Live: consumer attached first, then paced production.
            let n = a.rate * a.live_secs as usize;
            iot.create_group("bench-live").await;
            let ep = iot.endpoint("bench-live");
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let c = a.credit;
            let consumer =
                tokio::spawn(async move { consume_raw(&ep, n, c, 1, Some(ready_tx)).await });
            ready_rx.await.unwrap();
            iot.produce(n, a.producers, a.rate).await;
            let rep = consumer.await.unwrap();
            live.insert("iotsync", rep);
        });
        iot.server
    } else {
        server
    };

    if run_rabbit {
        cli_rt.block_on(async {
            let (_conn, ch) = rabbit_channel(&a.rabbit).await;
            rabbit_declare(&ch, RABBIT_QUEUE).await;
            let t0 = Instant::now();
            rabbit_publish(&ch, RABBIT_QUEUE, a.messages, 0).await;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "RabbitMQ fill (0.9.1, persistent, confirms): {} in {secs:.2} s = {:.0} msg/s",
                a.messages,
                a.messages as f64 / secs
            );
            let ep = rabbit_endpoint(&a.rabbit, RABBIT_QUEUE);
            let c0 = cpu_snap(rabbit.as_deref());
            let (n, c, b) = (a.messages, a.credit, a.accept_batch);
            let rep = tokio::spawn(async move { consume_raw(&ep, n, c, b, None).await })
                .await
                .unwrap();
            let c1 = cpu_snap(rabbit.as_deref());
            let cpu = rabbit.as_ref().map(|_| (c1.rabbit - c0.rabbit) as f64 / tck);
            println!(
                "RabbitMQ drain (fe2o3 client, AMQP 1.0): {:.0} msg/s ({:.2} s), mean payload {} B, beam.smp CPU {} µs/msg",
                rep.rate(),
                rep.secs,
                rep.payload_bytes / rep.n.max(1),
                cpu.map(|c| format!("{:.1}", c * 1e6 / rep.n as f64)).unwrap_or("?".into())
            );
            rows.push(Row {
                name: format!(
                    "RabbitMQ 3.10 drain, fe2o3 client{} (AMQP 1.0 plugin)",
                    accepts(a.accept_batch)
                ),
                rate: rep.rate(),
                cpu_us: cpu.map(|c| c * 1e6 / rep.n as f64),
                extra: format!("{} B mean payload", rep.payload_bytes / rep.n.max(1)),
            });

            rabbit_declare(&ch, RABBIT_LIVE_QUEUE).await;
            let n = a.rate * a.live_secs as usize;
            let ep = rabbit_endpoint(&a.rabbit, RABBIT_LIVE_QUEUE);
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let c = a.credit;
            let consumer =
                tokio::spawn(async move { consume_raw(&ep, n, c, 1, Some(ready_tx)).await });
            ready_rx.await.unwrap();
            rabbit_publish(&ch, RABBIT_LIVE_QUEUE, n, a.rate).await;
            let rep = consumer.await.unwrap();
            live.insert("RabbitMQ", rep);
        });
    }

    println!(
        "\n| drain: {} messages, credit {} | delivered+accepted msg/s | broker CPU µs/msg | note |",
        a.messages, a.credit
    );
    println!("|---|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {} | {} |",
            r.name,
            r.rate,
            r.cpu_us.map(|c| format!("{c:.1}")).unwrap_or("?".into()),
            r.extra
        );
    }
    println!(
        "\n| live: {} msg/s for {} s, credit {} | received msg/s | latency p50 ms | p99 ms | max ms |",
        a.rate, a.live_secs, a.credit
    );
    println!("|---|---:|---:|---:|---:|");
    for name in ["iotsync", "RabbitMQ"] {
        if let Some(r) = live.get_mut(name) {
            let (p50, p99, max) = (r.pct_ms(0.5), r.pct_ms(0.99), r.pct_ms(1.0));
            println!(
                "| {name} | {:.0} | {p50:.2} | {p99:.2} | {max:.2} |",
                r.rate()
            );
        }
    }
    println!("\niotsync ingest (report_properties) alone: {ingest_rate:.0} reports/s");
    srv_rt.block_on(server.shutdown(Duration::from_secs(5)));
}
