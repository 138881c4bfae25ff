//! Shared harness of the gateway and cloud API tests: the server in-process on port 0,
//! projects set up over the REST API, an in-process consumer attached through the
//! delivery hub, and the outside peers (paho-mqtt, mosquitto clients, a Python signer)
//! run as child processes. A missing peer fails the test.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use iotsync_backlog::Delivery;
use iotsync_core::{Clock, ManualClock, SystemClock};
use iotsync_server::delivery::hub::{AttachRequest, ConsumerLink};
use iotsync_server::delivery::{ChannelKind, Outcome};
use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};

pub const TOKEN: &str = "test-operator-token-0123456789";

pub struct Env {
    pub server: Option<RunningServer>,
    pub base: String,
    pub http: Client,
    /// Starts at the real time so outside peers' timestamps are fresh; tests move it.
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

pub struct Project {
    pub pid: String,
    pub app_key: String,
    pub app_secret: String,
    pub pk: String,
    pub devices: Vec<Dev>,
}

#[derive(Clone)]
pub struct Dev {
    pub iot: String,
    pub dn: String,
    pub secret: String,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Env {
    pub async fn start() -> Self {
        Self::start_in(None).await
    }

    /// Starts on `data_dir` (e.g. a small tmpfs), or on a fresh temporary dir.
    pub async fn start_in(data_dir: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigOverrides {
            data_dir: Some(data_dir.unwrap_or_else(|| dir.path().to_owned())),
            operator_token: Some(TOKEN.into()),
            ..Default::default()
        }
        .ephemeral_listeners();
        let cfg = ServerConfig::layered(None, Default::default(), flags).unwrap();
        let clock = ManualClock::new(SystemClock.now_ms());
        let server = iotsync_server::start(cfg, Arc::new(clock.clone()))
            .await
            .unwrap();
        Self {
            base: format!("http://{}", server.api_addr),
            server: Some(server),
            http: Client::new(),
            clock,
            dir,
        }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn mqtt_port(&self) -> u16 {
        self.server().addr("mqtt").expect("mqtt listener").port()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let s = r.status();
        let t = r.text().await.unwrap();
        (s, serde_json::from_str(&t).unwrap_or(Value::String(t)))
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A project with sync on (amqp), one product ("Light"), `devices` devices.
    pub async fn project(&self, name: &str, devices: &[&str]) -> Project {
        let (s, p) = self.post("/api/v1/projects", json!({"name": name})).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let pid = p["projectId"].as_str().unwrap().to_owned();
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{pid}/sync/enable"),
                json!({"method": "amqp"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (_, pr) = self
            .post(
                &format!("/api/v1/projects/{pid}/products"),
                json!({"name": "Lamp", "deviceType": "Light"}),
            )
            .await;
        let pk = pr["productKey"].as_str().unwrap().to_owned();
        let mut devs = Vec::new();
        for dn in devices {
            let (s, d) = self
                .post(
                    &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
                    json!({"deviceName": dn}),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{d}");
            devs.push(Dev {
                iot: d["iotId"].as_str().unwrap().to_owned(),
                dn: dn.to_string(),
                secret: d["deviceSecret"].as_str().unwrap().to_owned(),
            });
        }
        Project {
            pid,
            app_key: p["appKey"].as_str().unwrap().to_owned(),
            app_secret: p["appSecret"].as_str().unwrap().to_owned(),
            pk,
            devices: devs,
        }
    }

    pub async fn consumer(&self, p: &Project) -> Consumer {
        let link = self
            .server()
            .hub()
            .attach(AttachRequest {
                project: p.pid.parse().unwrap(),
                group: p.app_key.parse().unwrap(),
                channel: ChannelKind::Amqp,
                remote: "test".into(),
                client_id: "test".into(),
            })
            .await
            .unwrap();
        Consumer {
            link,
            pending: Default::default(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// An in-process consumer of the project's default group; acknowledges what it reads.
pub struct Consumer {
    pub link: ConsumerLink,
    /// Read (and acknowledged) but not yet handed out: a batch may run past the match.
    pending: std::collections::VecDeque<Msg>,
}

pub struct Msg {
    pub topic: String,
    pub message_id: String,
    pub payload: Value,
}

impl Consumer {
    /// Reads (and acknowledges) messages until one whose topic ends with `suffix`
    /// arrives; returns everything read, in order. Fails after 20 s.
    pub async fn until(&mut self, suffix: &str) -> Vec<Msg> {
        let mut got = Vec::new();
        while let Some(m) = self.pending.pop_front() {
            let done = m.topic.ends_with(suffix);
            got.push(m);
            if done {
                return got;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let batch = tokio::time::timeout_at(deadline, self.link.next(16))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no message on *{suffix} within 20 s; got {:?}",
                        got.iter()
                            .map(|m: &Msg| m.topic.clone())
                            .collect::<Vec<_>>()
                    )
                })
                .unwrap();
            let mut done = false;
            for d in batch {
                self.link.settle(&d.token, Outcome::Accepted).await.unwrap();
                let m = msg(&d);
                if done {
                    self.pending.push_back(m);
                    continue;
                }
                done = m.topic.ends_with(suffix);
                got.push(m);
            }
            if done {
                return got;
            }
        }
    }

    /// Asserts nothing arrives within a short while.
    pub async fn nothing(&mut self) {
        if !self.pending.is_empty() {
            let topics: Vec<_> = self.pending.iter().map(|m| m.topic.clone()).collect();
            panic!("unexpected messages: {topics:?}");
        }
        let r = tokio::time::timeout(Duration::from_millis(500), self.link.next(10)).await;
        if let Ok(Ok(batch)) = r {
            let topics: Vec<_> = batch.iter().map(|d| msg(d).topic).collect();
            panic!("unexpected messages: {topics:?}");
        }
    }
}

fn msg(d: &Delivery) -> Msg {
    Msg {
        topic: d.message.envelope.topic.clone(),
        message_id: d.message.envelope.message_id.to_string(),
        payload: serde_json::from_slice(&d.message.envelope.payload).unwrap(),
    }
}

/// A device speaking MQTT 3.1.1 through the gateway's own codec, for tests that need
/// packets no client library sends (or many of them quickly).
pub struct RawDevice {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawDevice {
    /// Connects and signs in as `dev`; returns the CONNACK return code with the device.
    pub async fn connect(env: &Env, pk: &str, dev: &Dev) -> (u8, Self) {
        use iotsync_core::sign::device::{sign_password, DeviceClientId, DeviceUsername};
        use iotsync_server::gateway::codec::{self, Connect, Packet};
        let ts = SystemClock.now_ms();
        let client_id: DeviceClientId = format!(
            "raw-{}|securemode=3,signmethod=hmacsha256,timestamp={ts}|",
            dev.dn
        )
        .parse()
        .unwrap();
        let username: DeviceUsername = format!("{}&{pk}", dev.dn).parse().unwrap();
        let mut out = Vec::new();
        codec::encode(
            &Packet::Connect(Box::new(Connect {
                protocol_name: "MQTT".into(),
                protocol_level: 4,
                clean_session: true,
                keep_alive_s: 60,
                client_id: client_id.to_string(),
                will: None,
                username: Some(username.to_string()),
                password: Some(sign_password(&client_id, &username, &dev.secret).into_bytes()),
            })),
            &mut out,
        );
        let s = tokio::net::TcpStream::connect(("127.0.0.1", env.mqtt_port()))
            .await
            .unwrap();
        let mut d = Self { s, buf: Vec::new() };
        d.s.write_all(&out).await.unwrap();
        match d.recv().await {
            Some(Packet::ConnAck { code, .. }) => (code, d),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &iotsync_server::gateway::codec::Packet) -> bool {
        let mut out = Vec::new();
        iotsync_server::gateway::codec::encode(p, &mut out);
        self.s.write_all(&out).await.is_ok()
    }

    /// A QoS 1 property post of `items` with packet id `pid`.
    pub async fn post_properties(&mut self, pk: &str, dn: &str, pid: u16, items: Value) -> bool {
        let body = json!({"id": pid.to_string(), "version": "1.0",
            "method": "thing.event.property.post", "params": items});
        self.send(&iotsync_server::gateway::codec::Packet::Publish(
            iotsync_server::gateway::codec::Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: format!("/sys/{pk}/{dn}/thing/event/property/post"),
                packet_id: Some(pid),
                payload: serde_json::to_vec(&body).unwrap(),
            },
        ))
        .await
    }

    /// The next packet from the gateway; `None` once it closed the connection (or after
    /// 30 s of silence).
    pub async fn recv(&mut self) -> Option<iotsync_server::gateway::codec::Packet> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some((p, used)) =
                iotsync_server::gateway::codec::decode(&self.buf, 16 * 1024 * 1024).unwrap()
            {
                self.buf.drain(..used);
                return Some(p);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(Duration::from_secs(30), self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A running outside peer whose stdout is JSON lines.
pub struct Peer {
    pub child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    pub name: String,
}

impl Peer {
    pub fn spawn(program: &str, args: &[String]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("the test peer {program} is required: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            lines,
            name: format!("{program} {}", args.join(" ")),
        }
    }

    /// The paho-mqtt device of tests/peers/mqtt/device.py.
    pub fn paho(env: &Env, pk: &str, dev: &Dev, mode: &str, extra: &[&str]) -> Self {
        let script = repo_root().join("tests/peers/mqtt/device.py");
        let mut args = vec![
            script.display().to_string(),
            "--port".into(),
            env.mqtt_port().to_string(),
            "--pk".into(),
            pk.into(),
            "--dn".into(),
            dev.dn.clone(),
            "--secret".into(),
            dev.secret.clone(),
            "--mode".into(),
            mode.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn("python3", &args)
    }

    /// The next JSON line (fails after 30 s or at EOF).
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no output within 30 s", self.name))
            .unwrap()
            .unwrap_or_else(|| panic!("{}: ended early", self.name));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.name))
    }

    /// Reads lines until one has `event == name`.
    pub async fn expect(&mut self, name: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Closes stdin (the peer's signal to leave) and waits for it.
    pub async fn finish(mut self) -> std::process::ExitStatus {
        if let Some(mut s) = self.child.stdin.take() {
            let _ = s.shutdown().await;
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("peer did not exit")
            .unwrap()
    }
}

/// Runs a command to its end: (exit code, stdout, stderr).
pub async fn run(program: &str, args: &[String]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(program).args(args).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} did not finish within 60 s"))
    .unwrap_or_else(|e| panic!("the test peer {program} is required: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// tests/peers/mqtt/mosquitto_device.sh
pub async fn mosquitto(
    env: &Env,
    mode: &str,
    pk: &str,
    dev: &Dev,
    topic: &str,
    arg: &str,
) -> (i32, String, String) {
    let script = repo_root().join("tests/peers/mqtt/mosquitto_device.sh");
    run(
        "bash",
        &[
            script.display().to_string(),
            mode.into(),
            "127.0.0.1".into(),
            env.mqtt_port().to_string(),
            pk.into(),
            dev.dn.clone(),
            dev.secret.clone(),
            topic.into(),
            arg.into(),
        ],
    )
    .await
}
