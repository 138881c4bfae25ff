//! Device → enterprise bench (not a timed test): N devices publish QoS 1 property
//! reports over real MQTT sockets to `iotsync serve` (the release binary, its own
//! process) while an AMQP 1.0 consumer (the Rust SDK) acknowledges them; then the same
//! publishers against Mosquitto (its own process, started here on a free port) with one
//! QoS 1 subscriber on the same topics. Same publisher and subscriber-side code, same run.
//!
//! ```text
//! cargo bench -p iotsync-server --bench device_e2e -- [--quick] [--devices N]
//!     [--window W] [--secs S] [--only iotsync|mosquitto] [--mosquitto PATH]
//!     [--consumer sdk|fe2o3] [--backlog embedded|jetstream|both]
//! ```
//!
//! `--backlog jetstream` runs the server on a NATS JetStream backlog (R1, a throw-away
//! `nats-server -js` started here on a free port, `/usr/sbin/nats-server` from Debian's
//! `nats-server` package); its CPU is counted with the server's. `both` measures the
//! embedded engine and JetStream in the same run.
//!
//! Per broker, three phases:
//! 1. connect N devices (signed credentials for iotsync), RSS before/after;
//! 2. as fast as the publishers go (each device keeps W QoS 1 publishes un-PUBACKed) for
//!    S s: reports/s PUBACKed and delivered to the consumer, broker CPU µs per report (from
//!    /proc of the broker process), RSS; then every PUBACKed report must arrive;
//! 3. at 50 % of phase 2's delivered rate for S s: p50/p99 publish → delivery latency.
//!
//! The publishers and the consumer run in this process on runtimes of their own
//! (threads `pub-*`, `sub-*`); their CPU is reported so one can see they are not the
//! bottleneck. The last line is
//! `device_e2e: <r> reports/s iotsync, <m> reports/s mosquitto, ratio <r/m>, server <c> us/report`.
//!
//! The MQTT client here is written for the bench (CONNECT, PUBLISH QoS 1, PUBACK,
//! SUBSCRIBE): independent of the server's codec, and checked against Mosquitto.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

mod support;

use support::mqtt::{connect_packet, packet, publish_qos1, put_str, read_packets};
use support::{clk_tck, rss_kb, stat_ticks, thread_ticks};

use iotsync_core::sign::device::{sign_password, DeviceClientId, DeviceUsername};
use iotsync_sdk::amqp::AmqpConsumer;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-operator-token-0123456789";
const TOPIC_FILTER: &str = "/sys/+/+/thing/event/property/post";

struct Args {
    devices: usize,
    window: usize,
    secs: u64,
    only: Option<String>,
    mosquitto: String,
    quick: bool,
    /// The AMQP consumer on the iotsync side: `sdk` (the Rust SDK) or `fe2o3` (fe2o3's
    /// stock receiver, one accepted disposition per message).
    consumer: String,
    /// `embedded`, `jetstream` or `both`.
    backlog: String,
}

fn args() -> Args {
    let mut a = Args {
        devices: 1000,
        window: 8,
        secs: 20,
        only: None,
        mosquitto: "/usr/sbin/mosquitto".into(),
        quick: false,
        consumer: "sdk".into(),
        backlog: "embedded".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut num = |d: usize| it.next().and_then(|v| v.parse().ok()).unwrap_or(d);
        match k.as_str() {
            "--devices" => a.devices = num(a.devices),
            "--window" => a.window = num(a.window),
            "--secs" => a.secs = num(a.secs as usize) as u64,
            "--only" => a.only = it.next(),
            "--mosquitto" => a.mosquitto = it.next().unwrap_or(a.mosquitto),
            "--quick" => a.quick = true,
            "--consumer" => a.consumer = it.next().unwrap_or(a.consumer),
            "--backlog" => a.backlog = it.next().unwrap_or(a.backlog),
            "--bench" => {}
            other => {
                eprintln!("device_e2e: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    if a.quick {
        a.secs = a.secs.min(8);
    }
    if !matches!(a.backlog.as_str(), "embedded" | "jetstream" | "both") {
        eprintln!("device_e2e: --backlog takes embedded, jetstream or both");
        std::process::exit(2);
    }
    if a.consumer != "sdk" && a.consumer != "fe2o3" {
        eprintln!("device_e2e: --consumer takes sdk or fe2o3");
        std::process::exit(2);
    }
    a
}

#[derive(Clone, Copy)]
struct Cpu {
    broker: u64,
    publishers: u64,
    consumer: u64,
}

/// The broker's CPU is its process's, plus its NATS server's when it has one.
fn cpu(broker_pid: u32, side_pid: Option<u32>) -> Cpu {
    let ticks = |pid: u32| stat_ticks(&format!("/proc/{pid}/stat")).unwrap_or(0);
    Cpu {
        broker: ticks(broker_pid) + side_pid.map_or(0, ticks),
        publishers: thread_ticks("pub-"),
        consumer: thread_ticks("sub-"),
    }
}

async fn mqtt_connect(addr: SocketAddr, connect: &[u8]) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).ok();
    s.write_all(connect).await.map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(format!("CONNACK refused: {ack:?}"));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Publishers.

struct Device {
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    topic: String,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Publishes per second all devices together aim at; 0 = as fast as PUBACKs allow.
    rate: AtomicU64,
    stop: AtomicBool,
    /// Latencies (µs) are recorded while this is set.
    record: AtomicBool,
    latencies: Mutex<Vec<u32>>,
}

fn payload(seq: u64) -> Vec<u8> {
    // `t` carries the send time in µs; the consumer reads it back for the latency.
    serde_json::to_vec(&json!({
        "id": seq.to_string(), "version": "1.0", "method": "thing.event.property.post",
        "params": {"t": now_us(), "LightSwitch": seq % 2, "Brightness": seq % 100},
    }))
    .unwrap_or_default()
}

/// One device: keeps up to `window` QoS 1 publishes un-PUBACKed.
async fn run_device(
    s: TcpStream,
    d: Arc<Device>,
    window: usize,
    n_devices: usize,
    c: Arc<Counters>,
) {
    let (mut rd, mut wr) = s.into_split();
    let permits = Arc::new(Semaphore::new(window));
    let reader = {
        let permits = permits.clone();
        let c = c.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let mut acks = 0;
                let open = read_packets(&mut rd, &mut buf, |first, _| {
                    if first == 0x40 {
                        acks += 1;
                    }
                })
                .await;
                c.acked.fetch_add(acks, Ordering::Relaxed);
                permits.add_permits(acks as usize);
                if !open {
                    return;
                }
            }
        })
    };
    let mut id: u16 = 0;
    let mut seq: u64 = 0;
    let mut out = Vec::new();
    let mut next_at = Instant::now();
    while !c.stop.load(Ordering::Relaxed) {
        let Ok(p) = permits.clone().acquire_owned().await else {
            break;
        };
        p.forget();
        let rate = c.rate.load(Ordering::Relaxed);
        if rate > 0 {
            // Each device gets its share of the aimed rate, evenly spaced.
            let every = Duration::from_secs_f64(n_devices as f64 / rate as f64);
            next_at += every;
            let now = Instant::now();
            if next_at > now {
                tokio::time::sleep(next_at - now).await;
            } else if now - next_at > every * 4 {
                next_at = now;
            }
        }
        id = id.checked_add(1).unwrap_or(1);
        seq += 1;
        out.clear();
        publish_qos1(&mut out, &d.topic, id, &payload(seq));
        if wr.write_all(&out).await.is_err() {
            break;
        }
        c.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Wait (bounded) for the last PUBACKs, then close.
    let deadline = Instant::now() + Duration::from_secs(30);
    while permits.available_permits() < window && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = wr.write_all(&[0xe0, 0]).await; // DISCONNECT
    drop(wr);
    reader.abort();
}

/// Reads `"t":<µs>` (the publish time) out of a device payload or an enterprise message.
fn sent_at_us(p: &[u8]) -> Option<u64> {
    let key = b"\"t\":";
    let mut i = p.windows(key.len()).position(|w| w == key)? + key.len();
    let value = b"{\"value\":";
    if p[i..].starts_with(value) {
        i += value.len();
    }
    let digits: Vec<u8> = p[i..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

fn on_delivery(c: &Counters, payload: &[u8]) {
    c.delivered.fetch_add(1, Ordering::Relaxed);
    if c.record.load(Ordering::Relaxed) {
        if let Some(t) = sent_at_us(payload) {
            let lat = now_us().saturating_sub(t).min(u32::MAX as u64) as u32;
            if let Ok(mut l) = c.latencies.lock() {
                l.push(lat);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The brokers.

struct Broker {
    name: &'static str,
    child: Child,
    mqtt: SocketAddr,
    _dir: tempfile::TempDir,
    /// The JetStream backlog's server, when the broker runs on one.
    nats: Option<iotsync_backlog::NatsTestServer>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| stop(&format!("no free port: {e}")))
}

fn stop(why: &str) -> ! {
    eprintln!("device_e2e: {why}");
    std::process::exit(2);
}

/// Builds (if needed) and starts the `iotsync` binary of the bench's own profile
/// (`cargo bench` → release) on free ports.
fn start_iotsync(jetstream: bool) -> (Broker, String, String) {
    let nats = jetstream.then(|| {
        iotsync_backlog::NatsTestServer::start().unwrap_or_else(|e| {
            stop(&format!(
                "{e}: `apt-get install nats-server` (or set IOTSYNC_NATS_SERVER), or --backlog embedded"
            ))
        })
    });
    // The bench runs from target/<profile>/deps; the binary is target/<profile>/iotsync.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| stop("cannot tell where the bench runs from"));
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        // `cargo bench` builds with the bench profile into target/release: the same
        // profile for the binary shares every artifact (release would build them again).
        Some("release") => "bench".to_owned(),
        Some(p) => p.to_owned(),
        None => "release".to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    // `cargo bench` runs this with CARGO_PKG_*, CARGO_MANIFEST_DIR, OUT_DIR… set; build
    // scripts that watch them (ring's, via rerun-if-env-changed) would see them change
    // and rebuild half the tree, here and again at the next `cargo bench`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k.starts_with("CARGO_") && !matches!(&*k, "CARGO_HOME" | "CARGO_TARGET_DIR"))
            || k == "OUT_DIR"
        {
            build.env_remove(&*k);
        }
    }
    let st = build
        .args([
            "build",
            "--profile",
            &profile,
            "-p",
            "iotsync-cli",
            "--bin",
            "iotsync",
        ])
        .status()
        .unwrap_or_else(|e| stop(&format!("cannot run {cargo} to build the server: {e}")));
    if !st.success() {
        stop("building the `iotsync` binary failed");
    }
    let bin = profile_dir.join("iotsync");
    if !bin.exists() {
        stop(&format!("{} not found after building it", bin.display()));
    }
    println!("server: {} ({profile} profile)", bin.display());
    let dir = tempfile::tempdir().unwrap_or_else(|e| stop(&format!("temp dir: {e}")));
    let mut cmd = Command::new(&bin);
    cmd.arg("serve");
    if let Some(n) = &nats {
        cmd.args(["--backlog-url", &n.url()]);
    }
    let mut child = cmd
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--operator-token", TOKEN])
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--amqp-listen",
            "127.0.0.1:0",
            "--amqps-listen",
            "",
            "--http2-listen",
            "127.0.0.1:0",
            "--http2-tls-listen",
            "",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--mqtts-listen",
            "",
        ])
        .env("IOTSYNC_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| stop(&format!("cannot start {}: {e}", bin.display())));
    let out = child.stdout.take().unwrap_or_else(|| stop("no stdout"));
    let (mut api, mut amqp, mut mqtt) = (None, None, None);
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        let addr = |l: &str| {
            l.split("://")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        };
        let t = line.trim_start();
        if t.starts_with("api listening:") {
            api = addr(t);
        } else if t.starts_with("amqp listening:") {
            amqp = addr(t);
        } else if t.starts_with("mqtt listening:") {
            mqtt = addr(t);
        }
        if api.is_some() && amqp.is_some() && mqtt.is_some() {
            break;
        }
    }
    // Keep reading what the server prints (the rest of the banner): its stdout stays open.
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let (Some(api), Some(amqp), Some(mqtt)) = (api, amqp, mqtt) else {
        stop("the server's banner did not name its api, amqp and mqtt listeners");
    };
    let mqtt = mqtt
        .parse()
        .unwrap_or_else(|_| stop(&format!("mqtt address {mqtt}")));
    (
        Broker {
            name: if nats.is_some() {
                "iotsync on JetStream R1"
            } else {
                "iotsync"
            },
            child,
            mqtt,
            _dir: dir,
            nats,
        },
        format!("http://{api}"),
        format!("amqp://{amqp}"),
    )
}

/// Starts a Mosquitto of our own on a free port: no persistence, and the subscriber may
/// have as many QoS 1 messages in flight as the iotsync consumer's credit, queue unbounded
/// (Mosquitto's defaults, 20 in flight and 1000 queued, would drop reports).
fn start_mosquitto(bin: &str) -> Broker {
    if !Path::new(bin).exists() {
        stop(&format!("{bin} not found: `apt-get install mosquitto`, or pass --mosquitto PATH, or --only iotsync"));
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| stop(&format!("temp dir: {e}")));
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
         max_inflight_messages 1000\nmax_queued_messages 0\nmax_connections -1\nlog_type error\n"
    );
    std::fs::write(&conf, text)
        .unwrap_or_else(|e| stop(&format!("writing {}: {e}", conf.display())));
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| stop(&format!("cannot start {bin}: {e}")));
    let mqtt: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(mqtt).is_err() {
        if Instant::now() > deadline {
            stop("mosquitto did not start listening");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        name: "mosquitto",
        child,
        mqtt,
        _dir: dir,
        nats: None,
    }
}

async fn rest(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = http
        .post(format!("{base}/api/v1{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| stop(&format!("POST {path}: {e}")));
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        stop(&format!("POST {path}: {status} {v}"));
    }
    v
}

/// A project with AMQP sync and `n` devices; returns (appKey, appSecret, devices).
async fn iotsync_fleet(base: &str, n: usize) -> (String, String, Vec<Device>) {
    let http = reqwest::Client::new();
    let p = rest(&http, base, "/projects", json!({"name": "DeviceBench"})).await;
    let pid = p["projectId"].as_str().unwrap_or_default().to_owned();
    let pr = rest(
        &http,
        base,
        &format!("/projects/{pid}/products"),
        json!({"name": "Lamp", "deviceType": "Light"}),
    )
    .await;
    let pk = pr["productKey"].as_str().unwrap_or_default().to_owned();
    rest(
        &http,
        base,
        &format!("/projects/{pid}/sync/enable"),
        json!({"method": "amqp"}),
    )
    .await;
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        let dn = format!("lamp{i:05}");
        let d = rest(
            &http,
            base,
            &format!("/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": dn}),
        )
        .await;
        let secret = d["deviceSecret"].as_str().unwrap_or_default().to_owned();
        let cid: DeviceClientId =
            format!("{dn}|securemode=3,signmethod=hmacsha256,timestamp={ts}|")
                .parse()
                .unwrap_or_else(|e| stop(&format!("client id: {e:?}")));
        let user: DeviceUsername = format!("{dn}&{pk}")
            .parse()
            .unwrap_or_else(|e| stop(&format!("username: {e:?}")));
        devices.push(Device {
            password: Some(sign_password(&cid, &user, &secret)),
            client_id: cid.to_string(),
            username: Some(user.to_string()),
            topic: format!("/sys/{pk}/{dn}/thing/event/property/post"),
        });
    }
    (
        p["appKey"].as_str().unwrap_or_default().to_owned(),
        p["appSecret"].as_str().unwrap_or_default().to_owned(),
        devices,
    )
}

fn mosquitto_fleet(n: usize) -> Vec<Device> {
    (0..n)
        .map(|i| {
            let dn = format!("lamp{i:05}");
            Device {
                client_id: format!("bench-{dn}"),
                username: None,
                password: None,
                topic: format!("/sys/a1BenchLamp/{dn}/thing/event/property/post"),
            }
        })
        .collect()
}

/// Mosquitto's side of the consumer: one QoS 1 subscriber that PUBACKs every publish.
async fn mosquitto_subscriber(addr: SocketAddr, c: Arc<Counters>) {
    let mut s = mqtt_connect(addr, &connect_packet("bench-subscriber", None, None, 300))
        .await
        .unwrap_or_else(|e| stop(&format!("subscriber: {e}")));
    let mut body = vec![0, 1];
    put_str(&mut body, TOPIC_FILTER.as_bytes());
    body.push(1);
    let mut sub = Vec::new();
    packet(&mut sub, 0x82, &body);
    s.write_all(&sub)
        .await
        .unwrap_or_else(|e| stop(&format!("subscribe: {e}")));
    let (mut rd, mut wr) = s.into_split();
    let mut buf = Vec::new();
    let mut acks = Vec::new();
    loop {
        acks.clear();
        let open = read_packets(&mut rd, &mut buf, |first, body| {
            if first >> 4 == 3 {
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let qos = (first >> 1) & 3;
                let (id, payload) = if qos > 0 {
                    (Some([body[2 + tl], body[3 + tl]]), &body[4 + tl..])
                } else {
                    (None, &body[2 + tl..])
                };
                on_delivery(&c, payload);
                if let Some(id) = id {
                    acks.extend_from_slice(&[0x40, 2, id[0], id[1]]);
                }
            }
        })
        .await;
        if !acks.is_empty() && wr.write_all(&acks).await.is_err() {
            return;
        }
        if !open {
            return;
        }
    }
}

async fn iotsync_consumer(endpoint: String, app_key: String, app_secret: String, c: Arc<Counters>) {
    let consumer = AmqpConsumer::builder()
        .endpoint(endpoint)
        .app_key(app_key)
        .app_secret(app_secret)
        .client_id("device-e2e")
        .credit(1000)
        .build()
        .unwrap_or_else(|e| stop(&format!("consumer: {e}")));
    let mut s = consumer
        .connect()
        .await
        .unwrap_or_else(|e| stop(&format!("consumer connect: {e}")));
    while let Some(m) = s.next().await {
        let Ok(m) = m else { return };
        // Devices going online/offline are synced too; only the reports count.
        if m.envelope.topic.ends_with("/thing/event/property/post") {
            on_delivery(&c, &m.envelope.payload);
        }
        if m.ack().await.is_err() {
            return;
        }
    }
}

/// fe2o3's stock receiver, signed in with the app-key form, accepting each message with
/// its own disposition frame.
async fn iotsync_consumer_fe2o3(
    endpoint: String,
    app_key: String,
    app_secret: String,
    c: Arc<Counters>,
) {
    use fe2o3_amqp::link::receiver::CreditMode;
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::Body;
    use fe2o3_amqp::types::primitives::Value as AmqpValue;
    use fe2o3_amqp::{Connection, Receiver, Session};
    use iotsync_core::sign::amqp::{sign_password as amqp_password, AmqpAuthMode, AmqpCredentials};

    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        stop(&format!("fe2o3 consumer: {what}: {e}"))
    };
    let creds = AmqpCredentials {
        client_id: "device-e2e-fe2o3".into(),
        auth: AmqpAuthMode::AppKey {
            random_ms: support::now_us() / 1000,
        },
        app_key: app_key
            .parse()
            .unwrap_or_else(|e| fail("app key", &format!("{e:?}"))),
        group: None,
        iot_instance_id: None,
    };
    let addr = endpoint.trim_start_matches("amqp://").to_owned();
    let tcp = TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| fail("connect", &e));
    tcp.set_nodelay(true).ok();
    let mut conn = Connection::builder()
        .container_id("device-e2e")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain {
            username: creds.username(),
            password: amqp_password(&creds, &app_secret),
        })
        .idle_time_out(60_000u32)
        .open_with_stream(tcp)
        .await
        .unwrap_or_else(|e| fail("open", &e));
    let mut session = Session::begin(&mut conn)
        .await
        .unwrap_or_else(|e| fail("session", &e));
    let mut rx = Receiver::builder()
        .name("device-e2e-receiver")
        .source("default")
        .credit_mode(CreditMode::Auto(1000))
        .attach(&mut session)
        .await
        .unwrap_or_else(|e| fail("attach", &e));
    while let Ok(d) = rx.recv::<Body<AmqpValue>>().await {
        if let Body::Data(batch) = d.body() {
            let payload: Vec<u8> = batch.iter().flat_map(|b| b.0.iter().copied()).collect();
            // Devices going online/offline are synced too; only the reports count.
            if payload.windows(8).any(|w| w == b"\"items\":") {
                on_delivery(&c, &payload);
            }
        }
        if rx.accept(&d).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------

struct Result1 {
    broker: &'static str,
    connect_rss_per_device_b: f64,
    acked_rate: f64,
    delivered_rate: f64,
    broker_us: f64,
    pub_cpu: f64,
    sub_cpu: f64,
    broker_cpu: f64,
    rss_mb: f64,
    lost: i64,
    half_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    f64::from(v[i]) / 1000.0
}

type ConsumerTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn measure(
    broker: &Broker,
    devices: Vec<Device>,
    a: &Args,
    pubs: &Runtime,
    subs: &Runtime,
    consumer: impl FnOnce(Arc<Counters>) -> ConsumerTask,
) -> Result1 {
    let tck = clk_tck();
    let pid = broker.child.id();
    let c = Arc::new(Counters::default());
    let consumer_task = subs.spawn(consumer(c.clone()));
    let n = devices.len();
    let rss0 = rss_kb(pid);
    let streams: Vec<(TcpStream, Arc<Device>)> = pubs.block_on(async {
        let mut v = Vec::with_capacity(n);
        for d in devices {
            let s = mqtt_connect(
                broker.mqtt,
                &connect_packet(
                    &d.client_id,
                    d.username.as_deref(),
                    d.password.as_deref(),
                    300,
                ),
            )
            .await
            .unwrap_or_else(|e| stop(&format!("{}: device {}: {e}", broker.name, d.client_id)));
            v.push((s, Arc::new(d)));
        }
        v
    });
    std::thread::sleep(Duration::from_millis(500));
    let rss1 = rss_kb(pid);
    let per_dev = (rss1.saturating_sub(rss0)) as f64 * 1024.0 / n as f64;
    println!(
        "{}: {n} devices connected, RSS {} → {} kB ({per_dev:.0} B per device)",
        broker.name, rss0, rss1
    );

    // Phase 2: as fast as PUBACKs allow.
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(s, d)| pubs.spawn(run_device(s, d, a.window, n, c.clone())))
        .collect();
    std::thread::sleep(Duration::from_secs(2)); // warm-up
    let side = broker.nats.as_ref().and_then(|n| n.pid());
    let (t0, cpu0) = (Instant::now(), cpu(pid, side));
    let (acked0, deliv0) = (
        c.acked.load(Ordering::Relaxed),
        c.delivered.load(Ordering::Relaxed),
    );
    std::thread::sleep(Duration::from_secs(a.secs));
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu(pid, side);
    let acked = c.acked.load(Ordering::Relaxed) - acked0;
    let delivered = c.delivered.load(Ordering::Relaxed) - deliv0;
    let rss_mb = rss_kb(pid) as f64 / 1024.0;
    let ticks = |x: u64, y: u64| (y - x) as f64 / tck;
    let broker_cpu = ticks(cpu0.broker, cpu1.broker);
    let r = Result1 {
        broker: broker.name,
        connect_rss_per_device_b: per_dev,
        acked_rate: acked as f64 / secs,
        delivered_rate: delivered as f64 / secs,
        broker_us: broker_cpu * 1e6 / delivered.max(1) as f64,
        pub_cpu: ticks(cpu0.publishers, cpu1.publishers) / secs,
        sub_cpu: ticks(cpu0.consumer, cpu1.consumer) / secs,
        broker_cpu: broker_cpu / secs,
        rss_mb,
        lost: 0,
        half_rate: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
    };
    println!(
        "{}: max rate: {:.0} PUBACKed/s, {:.0} delivered/s, broker {:.1} µs/report ({:.2} cores), publishers {:.2} cores, consumer {:.2} cores, RSS {:.0} MB",
        r.broker, r.acked_rate, r.delivered_rate, r.broker_us, r.broker_cpu, r.pub_cpu, r.sub_cpu, r.rss_mb
    );

    // Phase 3: half of the delivered rate, latency recorded.
    let half = (r.delivered_rate / 2.0).max(1.0) as u64;
    c.rate.store(half, Ordering::Relaxed);
    // Steady state first: whatever phase 2 left queued drains before latency counts
    // (two seconds in a row within 10 % of the aimed rate; 30 s at most).
    let settle_until = Instant::now() + Duration::from_secs(30);
    let mut steady = 0;
    while steady < 2 && Instant::now() < settle_until {
        let d0 = c.delivered.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_secs(1));
        let got = (c.delivered.load(Ordering::Relaxed) - d0) as f64;
        steady = if (got - half as f64).abs() <= half as f64 * 0.1 {
            steady + 1
        } else {
            0
        };
    }
    if let Ok(mut l) = c.latencies.lock() {
        l.clear();
    }
    c.record.store(true, Ordering::Relaxed);
    let (t1, d1) = (Instant::now(), c.delivered.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_secs(a.secs));
    c.record.store(false, Ordering::Relaxed);
    let half_rate = (c.delivered.load(Ordering::Relaxed) - d1) as f64 / t1.elapsed().as_secs_f64();
    let mut lat = c.latencies.lock().map(|l| l.clone()).unwrap_or_default();

    // Stop; everything PUBACKed must arrive.
    c.stop.store(true, Ordering::Relaxed);
    pubs.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let acked_all = c.acked.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.delivered.load(Ordering::Relaxed) < acked_all && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let lost = acked_all as i64 - c.delivered.load(Ordering::Relaxed) as i64;
    consumer_task.abort();
    let r = Result1 {
        lost,
        half_rate,
        p50_ms: pct(&mut lat, 0.50),
        p99_ms: pct(&mut lat, 0.99),
        ..r
    };
    println!(
        "{}: at {half} reports/s aimed: {:.0} delivered/s, latency p50 {:.2} ms, p99 {:.2} ms; {} PUBACKed in all, {} not delivered",
        r.broker, r.half_rate, r.p50_ms, r.p99_ms, acked_all, r.lost
    );
    r
}

fn main() {
    let a = args();
    let pubs = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pub-rt")
        .enable_all()
        .build()
        .unwrap_or_else(|e| stop(&format!("runtime: {e}")));
    let subs = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sub-rt")
        .enable_all()
        .build()
        .unwrap_or_else(|e| stop(&format!("runtime: {e}")));
    println!(
        "device_e2e: {} devices, window {} QoS 1 publishes each, {} s per phase; {} cores",
        a.devices,
        a.window,
        a.secs,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut results = Vec::new();
    let engines: &[bool] = match a.backlog.as_str() {
        "jetstream" => &[true],
        "both" => &[false, true],
        _ => &[false],
    };
    for &jetstream in engines {
        if a.only.as_deref() == Some("mosquitto") {
            break;
        }
        let (broker, api, amqp) = start_iotsync(jetstream);
        let (app_key, app_secret, devices) = pubs.block_on(iotsync_fleet(&api, a.devices));
        let fe2o3 = a.consumer == "fe2o3";
        println!(
            "iotsync consumer: {}",
            if fe2o3 {
                "fe2o3 stock receiver"
            } else {
                "Rust SDK"
            }
        );
        results.push(measure(&broker, devices, &a, &pubs, &subs, move |c| {
            if fe2o3 {
                Box::pin(iotsync_consumer_fe2o3(amqp, app_key, app_secret, c))
            } else {
                Box::pin(iotsync_consumer(amqp, app_key, app_secret, c))
            }
        }));
    }
    if a.only.as_deref() != Some("iotsync") {
        let broker = start_mosquitto(&a.mosquitto);
        let addr = broker.mqtt;
        results.push(measure(
            &broker,
            mosquitto_fleet(a.devices),
            &a,
            &pubs,
            &subs,
            move |c| Box::pin(mosquitto_subscriber(addr, c)),
        ));
    }
    println!();
    println!("| broker | devices | PUBACKed/s | delivered/s | broker µs/report | broker cores | publishers cores | consumer cores | RSS MB | RSS B/device (connected) | p50 ms | p99 ms (at delivered/s) | not delivered |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.2} ({:.0}/s) | {} |",
            r.broker, a.devices, r.acked_rate, r.delivered_rate, r.broker_us, r.broker_cpu, r.pub_cpu,
            r.sub_cpu, r.rss_mb, r.connect_rss_per_device_b, r.p50_ms, r.p99_ms, r.half_rate, r.lost
        );
    }
    let rate = |name: &str| {
        results
            .iter()
            .find(|r| r.broker == name)
            .map(|r| r.delivered_rate)
    };
    let main = if a.backlog == "jetstream" {
        "iotsync on JetStream R1"
    } else {
        "iotsync"
    };
    let us = results
        .iter()
        .find(|r| r.broker == main)
        .map(|r| r.broker_us);
    let (i, m) = (
        rate(main).unwrap_or(f64::NAN),
        rate("mosquitto").unwrap_or(f64::NAN),
    );
    if let (Some(e), Some(j)) = (rate("iotsync"), rate("iotsync on JetStream R1")) {
        println!("device_e2e: JetStream R1 backlog {j:.0} reports/s, {:.2} of the embedded engine's {e:.0}", j / e);
    }
    println!(
        "device_e2e: {i:.0} reports/s iotsync, {m:.0} reports/s mosquitto, ratio {:.2}, server {:.1} us/report",
        i / m,
        us.unwrap_or(f64::NAN)
    );
    if results.iter().any(|r| r.lost > 0) {
        eprintln!("device_e2e: some PUBACKed reports were not delivered (see the table)");
        std::process::exit(1);
    }
}

/// Wall-clock µs as the payloads carry it.
fn now_us() -> u64 {
    support::now_us().max(0) as u64
}
