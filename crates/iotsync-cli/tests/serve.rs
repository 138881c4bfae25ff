//! `iotsync serve` as a user runs it: a child process on port 0 with a fresh data dir.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::EPHEMERAL;
use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iotsync"))
}

struct Serve {
    child: Child,
    api: String,
    dir: tempfile::TempDir,
}

fn serve() -> Serve {
    serve_in(tempfile::tempdir().unwrap())
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    assert_eq!(send_term(child.id()), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn send_term(pid: u32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| if s.success() { 0 } else { 1 })
        .unwrap_or(1)
}

#[test]
fn version_and_help_are_helpful() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("iotsync "));
    let out = bin().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--data-dir",
        "--api-listen",
        "--amqp-listen",
        "--amqps-listen",
        "--http2-listen",
        "--mqtt-listen",
        "--mqtts-listen",
        "--operator-token",
        "--config",
    ] {
        assert!(help.contains(flag), "missing {flag} in help");
    }
}

#[test]
fn a_bad_setting_fails_at_start_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["serve", "--amqp-listen", "not-an-address", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("amqp.listen"), "{err}");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[api]\nlisten = \"127.0.0.1:0\"\nport = 5\n").unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_the_quick_start_and_stops_on_sigterm() {
    let mut s = serve();
    let token_path = s.dir.path().join("operator-token");
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "operator-token must be private");
    }
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/api/v1/openapi.json", s.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"].as_object().unwrap().len() > 10);
    let post = |path: &str, body: Value| {
        http.post(format!("{}{}", s.api, path))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    let p: Value = post("/api/v1/projects", json!({"name": "Quick start"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pid = p["projectId"].as_str().unwrap().to_owned();
    let pr: Value = post(
        &format!("/api/v1/projects/{pid}/products"),
        json!({"name": "Lamp", "deviceType": "Light"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let pk = pr["productKey"].as_str().unwrap().to_owned();
    let d: Value = post(
        &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
        json!({"deviceName": "lamp01"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let u: Value = post(
        &format!("/api/v1/projects/{pid}/users"),
        json!({"loginName": "ann"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = post(
        &format!("/api/v1/projects/{pid}/bindings"),
        json!({"identityId": u["identityId"], "iotId": d["iotId"], "owned": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let st = sigterm(&mut s.child);
    assert!(st.success(), "graceful shutdown exits 0, got {st:?}");
    // The data survives a restart, and the generated token is reused.
    let mut s2 = serve_in(s.dir);
    let list: Value = http
        .get(format!("{}/api/v1/projects", s2.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1);
    sigterm(&mut s2.child);
}

fn serve_in(dir: tempfile::TempDir) -> Serve {
    let mut child = bin()
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(EPHEMERAL)
        .env_remove("IOTSYNC_OPERATOR_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut api = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("api listening:") {
            api = rest.split_whitespace().next().map(str::to_owned);
        }
        if line.trim().starts_with("operator token:") {
            assert!(
                !line.contains("iot_"),
                "the token itself must never be printed: {line}"
            );
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        api: api.unwrap(),
        dir,
    }
}
