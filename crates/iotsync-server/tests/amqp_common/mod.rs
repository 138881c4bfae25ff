//! Shared by the `amqp_*` tests: the server in-process on port 0 with a manual clock, a
//! REST helper, and the outside AMQP peers (Qpid Proton for Python, rhea for Node) run as
//! child processes that print JSON lines.
#![allow(dead_code)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use iotsync_core::{Clock, ManualClock};
use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};

pub const TOKEN: &str = "test-operator-token-0123456789";
/// The manual clock starts here; peers sign with it.
pub const T0: i64 = 1_800_000_000_000;
/// How long a test waits for a peer's next line before failing.
pub const PEER_WAIT: Duration = Duration::from_secs(30);

pub struct Env {
    pub server: Option<RunningServer>,
    pub base: String,
    pub http: Client,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub pid: String,
    pub app_key: String,
    pub app_secret: String,
    pub pk: String,
    pub dn: String,
    pub iot: String,
    /// lamp0001, lamp0002, lamp0003 (`iot` is the first).
    pub iots: Vec<String>,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// With a config file layer, e.g. `"[delivery]\nconnects_per_minute = 3\n"`.
    pub async fn start_with(config_toml: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigOverrides {
            data_dir: Some(dir.path().to_owned()),
            operator_token: Some(TOKEN.into()),
            ..Default::default()
        }
        .ephemeral_listeners();
        let file = config_toml.map(|t| ("test.toml", t));
        let cfg = ServerConfig::layered(file, Default::default(), flags).unwrap();
        let clock = ManualClock::new(T0);
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

    pub fn amqp_url(&self) -> String {
        format!(
            "amqp://{}",
            self.server().addr("amqp").expect("amqp listener")
        )
    }

    pub fn amqps_url(&self) -> String {
        format!(
            "amqps://{}",
            self.server().addr("amqps").expect("amqps listener")
        )
    }

    pub fn ca_file(&self) -> PathBuf {
        self.server().tls.cert_file.clone()
    }

    pub fn now(&self) -> i64 {
        self.clock.now_ms()
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
        (
            s,
            if t.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&t).unwrap_or(Value::String(t))
            },
        )
    }
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    /// A project with one product and one device, then sync enabled (amqp).
    pub async fn project(&self, name: &str) -> Project {
        let p = self
            .ok(
                reqwest::Method::POST,
                "/api/v1/projects",
                Some(json!({"name": name})),
            )
            .await;
        let pid = p["projectId"].as_str().unwrap().to_owned();
        let pr = self
            .ok(
                reqwest::Method::POST,
                &format!("/api/v1/projects/{pid}/products"),
                Some(json!({"name": "Lamp", "deviceType": "Light"})),
            )
            .await;
        let pk = pr["productKey"].as_str().unwrap().to_owned();
        // Several devices: the backlog delivers one message per device at a time.
        let mut iots = Vec::new();
        for i in 1..=3 {
            let d = self
                .ok(
                    reqwest::Method::POST,
                    &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
                    Some(json!({ "deviceName": format!("lamp000{i}") })),
                )
                .await;
            iots.push(d["iotId"].as_str().unwrap().to_owned());
        }
        // Enabled after the device exists: the backlog starts empty.
        self.ok(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{pid}/sync/enable"),
            Some(json!({"method": "amqp"})),
        )
        .await;
        Project {
            pid,
            app_key: p["appKey"].as_str().unwrap().to_owned(),
            app_secret: p["appSecret"].as_str().unwrap().to_owned(),
            pk,
            dn: "lamp0001".into(),
            iot: iots[0].clone(),
            iots,
        }
    }

    /// Reports properties on the device's behalf over REST.
    pub async fn report(&self, p: &Project, items: Value) {
        self.ok(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{}/devices/{}/properties", p.pid, p.iot),
            Some(json!({ "items": items })),
        )
        .await;
    }

    /// Reports properties of the `i`-th device (0-based).
    pub async fn report_on(&self, p: &Project, i: usize, items: Value) {
        self.ok(
            reqwest::Method::POST,
            &format!(
                "/api/v1/projects/{}/devices/{}/properties",
                p.pid, p.iots[i]
            ),
            Some(json!({ "items": items })),
        )
        .await;
    }

    pub async fn dead_letters(&self, p: &Project) -> Vec<Value> {
        let v = self
            .ok(
                reqwest::Method::GET,
                &format!("/api/v1/projects/{}/sync/dead-letters", p.pid),
                None,
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// Waits until the project's (only) group has acknowledged `n` messages and holds
    /// none; none may have been delivered twice meanwhile.
    pub async fn wait_all_acknowledged(&self, p: &Project, n: usize) {
        let deadline = std::time::Instant::now() + PEER_WAIT;
        loop {
            let (_, st) = self
                .get(&format!("/api/v1/projects/{}/sync/stats", p.pid))
                .await;
            let g = &st["groups"][0];
            if g["ackedTotal"] == n && g["stacked"] == 0 {
                assert_eq!(g["inFlight"], 0, "{st}");
                assert_eq!(g["redeliveredTotal"], 0, "{st}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not all acknowledged: {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of an unlabelled series on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} not on /metrics"))
            .parse()
            .unwrap()
    }

    /// Advances the manual clock in steps (retry backoff, ack time-outs) until `done`.
    pub async fn advance_until(&self, step_ms: i64, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + PEER_WAIT;
        while !done() {
            assert!(std::time::Instant::now() < deadline, "condition never held");
            self.clock.advance_ms(step_ms);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
    }
}

/// The outside AMQP clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Apache Qpid Proton (python-qpid-proton).
    Python,
    /// rhea (npm), in `tests/peers/node_modules`.
    Node,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running peer process and its JSON lines.
pub struct PeerProc {
    pub peer: Peer,
    child: Child,
    lines: mpsc::UnboundedReceiver<Value>,
    pub seen: Vec<Value>,
}

impl PeerProc {
    pub fn spawn(peer: Peer, args: &[String]) -> Self {
        let root = repo_root();
        let mut cmd = match peer {
            Peer::Python => {
                let mut c = Command::new("python3");
                c.arg("-u").arg(root.join("tests/peers/amqp/consumer.py"));
                c
            }
            Peer::Node => {
                let mut c = Command::new("node");
                c.arg(root.join("tests/peers/amqp/consumer.js"));
                c.env("NODE_PATH", root.join("tests/peers/node_modules"));
                c
            }
        };
        cmd.args(args);
        Self::from_command(peer, cmd)
    }

    /// Runs another Proton script of `tests/peers/amqp/` (same JSON-lines convention).
    pub fn spawn_python_script(script: &str, args: &[String]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(repo_root().join("tests/peers/amqp").join(script))
            .args(args);
        Self::from_command(Peer::Python, cmd)
    }

    fn from_command(peer: Peer, mut cmd: Command) -> Self {
        let root = repo_root();
        cmd.current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run the {peer:?} AMQP peer ({e}); install the test peers with scripts/install-test-deps.sh"
            )
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            peer,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line whose `event` is `name` (earlier lines are kept in `seen`).
    pub async fn next_event(&mut self, name: &str) -> Value {
        loop {
            let v = match tokio::time::timeout(PEER_WAIT, self.lines.recv()).await {
                Ok(Some(v)) => v,
                Ok(None) => panic!(
                    "{:?} peer exited before printing {name:?}; it printed {:?}",
                    self.peer, self.seen
                ),
                Err(_) => panic!(
                    "{:?} peer printed no {name:?} within {PEER_WAIT:?}; it printed {:?}",
                    self.peer, self.seen
                ),
            };
            if v["event"] == "fatal" {
                panic!("{:?} peer cannot run: {}", self.peer, v["description"]);
            }
            self.seen.push(v.clone());
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Whether a line with this `event` was printed (and read) already.
    pub fn saw(&self, name: &str) -> bool {
        self.seen.iter().any(|v| v["event"] == name)
    }

    /// Non-blocking: lines printed so far.
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v.clone());
            out.push(v);
        }
        out
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Arguments for a peer logging in with the app-key form at the server's time.
pub fn app_key_args(env: &Env, p: &Project, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--url".into(),
        env.amqp_url(),
        "--app-key".into(),
        p.app_key.clone(),
        "--app-secret".into(),
        p.app_secret.clone(),
        "--ts".into(),
        env.now().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}
