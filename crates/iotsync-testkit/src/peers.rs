//! The outside peers of `tests/peers/` run as child processes that print one JSON object
//! a line (`{"event": …}`); a `fatal` line means the peer cannot run (a library missing).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{repo_root, Project, TestServer, WAIT};

const INSTALL: &str = "install the test peers with scripts/install-test-deps.sh";

/// A running peer and the JSON lines it printed. Dropping it ends the process (after
/// its grace time, see [`PeerProc::graceful`]).
pub struct PeerProc {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every line read so far, in order.
    pub seen: Vec<Value>,
    grace: Duration,
}

impl PeerProc {
    /// Runs `cmd` (from the workspace root, stdin piped, stderr inherited).
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.current_dir(repo_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the {name} peer ({e}); {INSTALL}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        let tag = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.is_object() => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    _ => eprintln!("[{tag}] {line}"),
                }
            }
        });
        Self {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            grace: Duration::ZERO,
        }
    }

    /// `program args…` as a peer.
    pub fn command(name: &str, program: &str, args: &[String]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Self::spawn(name, cmd)
    }

    /// A Python script of `tests/peers/` (e.g. `amqp/credit_probe.py`), unbuffered.
    pub fn python(script: &str, args: &[String]) -> Self {
        let mut cmd = Command::new("python3");
        cmd.arg("-u")
            .arg(repo_root().join("tests/peers").join(script))
            .args(args);
        Self::spawn(script, cmd)
    }

    /// On drop, close stdin and let the peer leave by itself for up to `grace` (e.g. a
    /// browser it must close) before it is killed.
    pub fn graceful(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The next line (fails after [`WAIT`], at a `fatal` line or when the peer ended).
    pub async fn next(&mut self) -> Value {
        let v = match tokio::time::timeout(WAIT, self.lines.recv()).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("the {} peer ended; it printed {:?}", self.name, self.seen),
            Err(_) => panic!(
                "the {} peer printed nothing within {WAIT:?}; it printed {:?}",
                self.name, self.seen
            ),
        };
        assert_ne!(
            v["event"], "fatal",
            "the {} peer cannot run: {v}; {INSTALL}",
            self.name
        );
        self.seen.push(v.clone());
        v
    }

    /// The next line if one is printed within `d` (a quiet check: not a timing
    /// assertion, a line that should not exist must not show up meanwhile).
    pub async fn line_within(&mut self, d: Duration) -> Option<Value> {
        let v = tokio::time::timeout(d, self.lines.recv())
            .await
            .ok()
            .flatten()?;
        self.seen.push(v.clone());
        Some(v)
    }

    /// The next line, however long it takes (for peers whose steps have their own
    /// bound, e.g. a browser); fails when the peer ended.
    pub async fn next_unbounded(&mut self) -> Value {
        let v =
            self.lines.recv().await.unwrap_or_else(|| {
                panic!("the {} peer ended; it printed {:?}", self.name, self.seen)
            });
        self.seen.push(v.clone());
        v
    }

    /// The next line whose `event` is `name` (the lines before it are kept in `seen`).
    pub async fn next_event(&mut self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {} peer printed no {name:?} within {WAIT:?}; it printed {:?}",
                self.name,
                self.seen
            );
            let v = self.next().await;
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Reads until `n` lines of `event` were printed; returns every line read meanwhile.
    pub async fn collect(&mut self, event: &str, n: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut got = 0;
        while got < n {
            let v = self.next().await;
            got += usize::from(v["event"] == event);
            all.push(v);
        }
        all
    }

    /// Whether a line with this `event` was read already.
    pub fn saw(&self, name: &str) -> bool {
        self.seen.iter().any(|v| v["event"] == name)
    }

    /// The lines printed so far that were not read yet (without waiting).
    pub fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(v) = self.lines.try_recv() {
            self.seen.push(v.clone());
            out.push(v);
        }
        out
    }

    /// Writes one JSON line to the peer's stdin.
    pub fn send(&mut self, line: &Value) {
        let stdin = self.stdin.as_mut().expect("the peer's stdin is closed");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("writing to {}: {e}", self.name));
        stdin.flush().unwrap();
    }

    /// Closes stdin (the peers' signal to leave) without waiting; read on with `next`.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes stdin (the peers' signal to leave) and waits for the exit.
    pub async fn finish(mut self) -> ExitStatus {
        self.stdin = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the {} peer did not exit",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        self.stdin = None;
        let until = std::time::Instant::now() + self.grace;
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

/// The outside AMQP 1.0 clients of `tests/peers/amqp/consumer.*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmqpPeer {
    /// Apache Qpid Proton (python-qpid-proton).
    Python,
    /// rhea (npm), in `tests/peers/node_modules`.
    Node,
}

impl AmqpPeer {
    /// The consumer script of this client with `args` (see [`app_key_args`]).
    pub fn spawn(self, args: &[String]) -> PeerProc {
        let root = repo_root();
        match self {
            AmqpPeer::Python => PeerProc::python("amqp/consumer.py", args),
            AmqpPeer::Node => {
                let mut c = Command::new("node");
                c.arg(root.join("tests/peers/amqp/consumer.js"))
                    .env("NODE_PATH", root.join("tests/peers/node_modules"))
                    .args(args);
                PeerProc::spawn("rhea", c)
            }
        }
    }
}

/// Arguments for an AMQP peer logging in with the app-key form at the server's time.
pub fn app_key_args(env: &TestServer, p: &Project, extra: &[&str]) -> Vec<String> {
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

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The Python grpcio consumer of `tests/peers/grpc/consumer.py` with extra arguments.
pub fn grpcio(env: &TestServer, p: &Project, extra: &[&str]) -> PeerProc {
    let mut args = vec![
        "--target".into(),
        env.http2_target(),
        "--proto-root".into(),
        path_arg(&repo_root().join("proto")),
        "--app-key".into(),
        p.app_key.clone(),
        "--app-secret".into(),
        p.app_secret.clone(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    PeerProc::python("grpc/consumer.py", &args)
}

/// The bytes of a grpcio line's base64 `payload`.
pub fn payload_of(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(v["payload"].as_str().unwrap())
        .unwrap()
}

/// The legacy push receiver of `tests/peers/webhook/receiver.py`, answering by `plan`
/// (e.g. "500,200"); returns it and its URL.
pub async fn receiver(app_key: &str, app_secret: &str, plan: &str) -> (PeerProc, String) {
    start_receiver(app_key, app_secret, &["--plan", plan]).await
}

/// The legacy push receiver printing each push first and answering it with the status
/// the test writes to its stdin (`PeerProc::send` of a JSON number, e.g. `200`).
pub async fn interactive_receiver(app_key: &str, app_secret: &str) -> (PeerProc, String) {
    start_receiver(app_key, app_secret, &["--verdicts", "stdin"]).await
}

async fn start_receiver(app_key: &str, app_secret: &str, extra: &[&str]) -> (PeerProc, String) {
    let mut args: Vec<String> = ["--app-key", app_key, "--app-secret", app_secret]
        .map(String::from)
        .into();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut peer = PeerProc::python("webhook/receiver.py", &args);
    let l = peer.next_event("listening").await;
    let url = format!("http://127.0.0.1:{}/iot/push", l["port"]);
    (peer, url)
}

/// The paho-mqtt device of `tests/peers/mqtt/device.py` in `mode`.
pub fn paho(
    env: &TestServer,
    pk: &str,
    dev: &crate::Device,
    mode: &str,
    extra: &[&str],
) -> PeerProc {
    let mut args = vec![
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
    PeerProc::python("mqtt/device.py", &args)
}

/// Options of one signed cloud API call ([`cloud_call`]).
#[derive(Default)]
pub struct CloudCall<'a> {
    pub token: Option<&'a str>,
    pub nonce: Option<&'a str>,
    /// The signature's timestamp (default: the server's clock).
    pub ts: Option<i64>,
    /// Change the body after signing it.
    pub tamper: bool,
}

/// One cloud API call signed by the Python client of `tests/peers/cloud/call.py` (it
/// computes the API-gateway signature itself): `{status, body}` as it printed them.
pub async fn cloud_call(
    env: &TestServer,
    p: &Project,
    path: &str,
    params: Value,
    o: CloudCall<'_>,
) -> Value {
    let script = repo_root().join("tests/peers/cloud/call.py");
    let mut args = vec![
        script.display().to_string(),
        "--base".into(),
        env.base.clone(),
        "--app-key".into(),
        p.app_key.clone(),
        "--secret".into(),
        p.app_secret.clone(),
        "--path".into(),
        path.into(),
        "--params".into(),
        params.to_string(),
        "--ts".into(),
        o.ts.unwrap_or_else(|| env.now()).to_string(),
    ];
    if let Some(t) = o.token {
        args.extend(["--token".to_string(), t.to_string()]);
    }
    if let Some(n) = o.nonce {
        args.extend(["--nonce".to_string(), n.to_string()]);
    }
    if o.tamper {
        args.push("--tamper".into());
    }
    let (code, out, err) = run("python3", &args).await;
    assert_eq!(code, 0, "call.py failed: {err}");
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("call.py printed no JSON ({e}): {out}"))
}

/// A signed cloud call that must answer HTTP 200 (the cloud API always does): its body.
pub async fn cloud_body(
    env: &TestServer,
    p: &Project,
    path: &str,
    params: Value,
    token: Option<&str>,
) -> Value {
    let o = CloudCall {
        token,
        ..CloudCall::default()
    };
    let v = cloud_call(env, p, path, params, o).await;
    assert_eq!(
        v["status"], 200,
        "the cloud API always answers HTTP 200: {v}"
    );
    v["body"].clone()
}

/// A fresh cloud token of the project (`/cloud/token`, grant type project).
pub async fn cloud_token(env: &TestServer, p: &Project) -> String {
    let params = serde_json::json!({"grantType": "project", "res": p.pid});
    let r = cloud_body(env, p, "/cloud/token", params, None).await;
    assert_eq!(r["code"], 200, "{r}");
    assert!(r["data"]["expireIn"].as_i64().unwrap_or(0) > 0, "{r}");
    r["data"]["cloudToken"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Switches one of the project's cloud API operation groups on or off.
pub async fn activate_operations(env: &TestServer, p: &Project, group: &str, on: bool) {
    let (s, v) = env
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/{}/api-operations/{group}", p.pid),
            Some(serde_json::json!({"activated": on})),
        )
        .await;
    assert!(s.is_success(), "{v}");
}

/// Runs a command to its end (failing after 60 s): (exit code, stdout, stderr).
pub async fn run(program: &str, args: &[String]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{program} did not finish within 60 s"))
    .unwrap_or_else(|e| panic!("cannot run {program} ({e}); {INSTALL}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tests/peers/mqtt/mosquitto_device.sh MODE` (mosquitto_pub / mosquitto_sub) as `dev`.
pub async fn mosquitto(
    env: &TestServer,
    mode: &str,
    pk: &str,
    dev: &crate::Device,
    topic: &str,
    arg: &str,
) -> (i32, String, String) {
    let script = repo_root().join("tests/peers/mqtt/mosquitto_device.sh");
    let args = [
        path_arg(&script),
        mode.into(),
        "127.0.0.1".into(),
        env.mqtt_port().to_string(),
        pk.into(),
        dev.dn.clone(),
        dev.secret.clone(),
        topic.into(),
        arg.into(),
    ];
    run("bash", &args).await
}
