//! Shared by the HTTP/2, legacy push and switching tests: the server in-process on port 0
//! with a manual clock (started at the real time, since outside peers sign with it), REST
//! helpers, and outside peers (Python grpcio, Python http.server, python-qpid-proton)
//! run as child processes that print JSON lines.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use iotsync_core::{Clock, ManualClock, SystemClock};
use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};

pub const TOKEN: &str = "test-operator-token-0123456789";

pub struct Env {
    pub server: Option<RunningServer>,
    pub base: String,
    pub http: Client,
    pub clock: ManualClock,
    _dir: tempfile::TempDir,
}

pub struct Project {
    pub pid: String,
    pub app_key: String,
    pub app_secret: String,
    pub pk: String,
    pub iot: String,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Env {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let flags = ConfigOverrides {
            data_dir: Some(dir.path().to_owned()),
            api_listen: Some("127.0.0.1:0".into()),
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
            _dir: dir,
        }
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn http2_target(&self) -> String {
        self.server().addr("http2").unwrap().to_string()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5)).await;
        }
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
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    /// A project with sync enabled on `method`, one product and one device (whose
    /// lifecycle `create` message is the first message of the project).
    pub async fn project(&self, method: &str) -> Project {
        let (s, p) = self.post("/api/v1/projects", json!({"name": "Home"})).await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        let pid = p["projectId"].as_str().unwrap().to_owned();
        let (s, b) = self
            .post(
                &format!("/api/v1/projects/{pid}/sync/enable"),
                json!({ "method": method }),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let (_, pr) = self
            .post(
                &format!("/api/v1/projects/{pid}/products"),
                json!({"name": "Lamp", "deviceType": "Light"}),
            )
            .await;
        let pk = pr["productKey"].as_str().unwrap().to_owned();
        let (s, d) = self
            .post(
                &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
                json!({"deviceName": "lamp0001"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{d}");
        Project {
            pid,
            app_key: p["appKey"].as_str().unwrap().to_owned(),
            app_secret: p["appSecret"].as_str().unwrap().to_owned(),
            pk,
            iot: d["iotId"].as_str().unwrap().to_owned(),
        }
    }

    /// A property report, an event, an account and a binding (4 messages).
    pub async fn produce_each_kind(&self, p: &Project) {
        let base = format!("/api/v1/projects/{}/devices/{}", p.pid, p.iot);
        let (s, v) = self
            .post(
                &format!("{base}/properties"),
                json!({"items": {"LightSwitch": 1}}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = self
            .post(
                &format!("{base}/events/Overheat"),
                json!({"value": {"temperature": 91}, "type": "alert"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let ident = self.user(p, "ann").await;
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{}/bindings", p.pid),
                json!({"identityId": ident, "iotId": p.iot, "owned": 1}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    pub async fn user(&self, p: &Project, login: &str) -> String {
        let (s, u) = self
            .post(
                &format!("/api/v1/projects/{}/users", p.pid),
                json!({ "loginName": login }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{u}");
        u["identityId"].as_str().unwrap().to_owned()
    }

    /// `n` property reports.
    pub async fn reports(&self, p: &Project, n: usize) {
        for i in 0..n {
            let (s, v) = self
                .post(
                    &format!("/api/v1/projects/{}/devices/{}/properties", p.pid, p.iot),
                    json!({"items": {"Brightness": i}}),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    }

    /// Waits until `key` of the group's figures is `want` (e.g. a nack was counted).
    pub async fn wait_stat(&self, pid: &str, group: &str, key: &str, want: u64) {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.group_stats(pid, group).await;
            if last[key] == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{group}.{key} never became {want}: {last}");
    }

    /// Figures of one group of the project (from the REST API).
    pub async fn group_stats(&self, pid: &str, group: &str) -> Value {
        let (s, st) = self
            .get(&format!("/api/v1/projects/{pid}/sync/stats"))
            .await;
        assert_eq!(s, StatusCode::OK, "{st}");
        st["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == group).cloned())
            .unwrap_or(Value::Null)
    }
}

/// An outside peer run as a child process that prints JSON lines.
pub struct Peer {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<Value>,
    pub name: String,
}

impl Peer {
    pub fn spawn(name: &str, program: &str, args: &[String]) -> Peer {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {program}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let tag = name.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&l) {
                    Ok(v) => {
                        let _ = tx.send(v);
                    }
                    Err(_) => eprintln!("{tag}: {l}"),
                }
            }
        });
        Peer {
            child,
            lines: rx,
            name: name.to_owned(),
        }
    }

    /// The next line, failing the test on a fatal peer error or after `secs`.
    pub async fn next(&mut self, secs: u64) -> Value {
        let v = tokio::time::timeout(Duration::from_secs(secs), self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no output within {secs}s", self.name))
            .unwrap_or_else(|| panic!("{}: exited", self.name));
        assert_ne!(
            v["event"], "fatal",
            "{}: peer missing or broken: {v}",
            self.name
        );
        v
    }

    /// Skips lines until one with `event` (returned).
    pub async fn until(&mut self, event: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next(left.as_secs().max(1)).await;
            if v["event"] == event {
                return v;
            }
        }
    }

    /// Collects `event` lines until `n` were seen (returns all lines seen).
    pub async fn collect(&mut self, event: &str, n: usize, secs: u64) -> Vec<Value> {
        let mut got = Vec::new();
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: only {} of {n} {event} lines: {all:?}",
                    self.name,
                    got.len()
                );
            }
            let v = self.next(left.as_secs().max(1)).await;
            if v["event"] == event {
                got.push(v.clone());
            }
            all.push(v);
        }
        all
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The Python grpcio consumer with extra arguments.
pub fn grpcio(env: &Env, p: &Project, extra: &[&str]) -> Peer {
    let root = repo_root();
    let mut args = vec![
        root.join("tests/peers/grpc/consumer.py")
            .to_string_lossy()
            .into_owned(),
        "--target".into(),
        env.http2_target(),
        "--proto-root".into(),
        root.join("proto").to_string_lossy().into_owned(),
        "--app-key".into(),
        p.app_key.clone(),
        "--app-secret".into(),
        p.app_secret.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Peer::spawn("grpcio", "python3", &args)
}

pub fn payload_of(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap())
        .unwrap()
}

/// The Python legacy push receiver answering by `plan` (e.g. "500,200"); returns it and
/// its URL.
pub async fn receiver(app_key: &str, app_secret: &str, plan: &str) -> (Peer, String) {
    let root = repo_root();
    let args = vec![
        root.join("tests/peers/webhook/receiver.py")
            .to_string_lossy()
            .into_owned(),
        "--app-key".into(),
        app_key.to_owned(),
        "--app-secret".into(),
        app_secret.to_owned(),
        "--plan".into(),
        plan.to_owned(),
    ];
    let mut peer = Peer::spawn("receiver", "python3", &args);
    let l = peer.until("listening", 30).await;
    let url = format!("http://127.0.0.1:{}/iot/push", l["port"]);
    (peer, url)
}

impl Env {
    /// The operator's import of an existing project; returns it with a product and device
    /// created afterwards only if `device` is true.
    pub async fn import(
        &self,
        app_key: &str,
        app_secret: &str,
        device_data: &str,
        user_data: &str,
        url: Option<&str>,
    ) -> Project {
        let mut sync = json!({"enabled": true, "deviceData": device_data, "userData": user_data});
        if let Some(u) = url {
            sync["legacyHttpUrl"] = json!(u);
        }
        let (s, p) = self
            .post(
                "/api/v1/admin/import",
                json!({"name": "Imported", "appKey": app_key, "appSecret": app_secret, "sync": sync}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{p}");
        Project {
            pid: p["projectId"].as_str().unwrap().to_owned(),
            app_key: app_key.to_owned(),
            app_secret: app_secret.to_owned(),
            pk: String::new(),
            iot: String::new(),
        }
    }

    /// Adds a product and a device to `p`.
    pub async fn device(&self, p: &mut Project) {
        let (_, pr) = self
            .post(
                &format!("/api/v1/projects/{}/products", p.pid),
                json!({"name": "Lamp", "deviceType": "Light"}),
            )
            .await;
        p.pk = pr["productKey"].as_str().unwrap().to_owned();
        let (s, d) = self
            .post(
                &format!("/api/v1/projects/{}/products/{}/devices", p.pid, p.pk),
                json!({"deviceName": "lamp0001"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{d}");
        p.iot = d["iotId"].as_str().unwrap().to_owned();
    }

    /// Waits until the project has a consumer of `channel` attached (e.g. the legacy
    /// pusher, which the server starts within a second of an import).
    pub async fn wait_consumer(&self, pid: &str, channel: iotsync_server::delivery::ChannelKind) {
        let pid = pid.parse().unwrap();
        for _ in 0..200 {
            if self
                .server()
                .hub()
                .consumers(&pid)
                .iter()
                .any(|c| c.channel == channel)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no {channel:?} consumer attached");
    }

    pub async fn has_consumer(
        &self,
        pid: &str,
        channel: iotsync_server::delivery::ChannelKind,
    ) -> bool {
        let pid = pid.parse().unwrap();
        self.server()
            .hub()
            .consumers(&pid)
            .iter()
            .any(|c| c.channel == channel)
    }
}
