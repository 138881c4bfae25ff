//! `iotsync serve` as a user runs it: a child process on port 0 with a fresh data dir.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::path::Path;
use std::process::Command;

use iotsync_testkit::{ProjectSpec, ServeProcess};
use serde_json::json;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iotsync"))
}

struct Serve {
    p: ServeProcess,
    dir: tempfile::TempDir,
}

fn serve() -> Serve {
    serve_in(tempfile::tempdir().unwrap())
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
        "--alert-webhook-url",
        "--alert-webhook-secret",
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
    // An alert webhook without its signing secret.
    let out = bin()
        .args([
            "serve",
            "--alert-webhook-url",
            "http://127.0.0.1:9/hook",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("IOTSYNC_ALERT_WEBHOOK_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alerts.webhook_secret"), "{err}");
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
    let rest = s.p.rest(&token);
    let (status, doc) = rest.get("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"].as_object().unwrap().len() > 10);
    let p = rest
        .create_project(&ProjectSpec::new("Quick start").devices(&["lamp01"]))
        .await;
    let identity = rest.add_user(&p.pid, "ann").await;
    rest.post_expect(
        &format!("/api/v1/projects/{}/bindings", p.pid),
        json!({"identityId": identity, "iotId": p.iot(), "owned": 1}),
        reqwest::StatusCode::CREATED,
    )
    .await;
    let st = s.p.sigterm();
    assert!(st.success(), "graceful shutdown exits 0, got {st:?}");
    // The data survives a restart, and the generated token is reused.
    let mut s2 = serve_in(s.dir);
    let (_, list) = s2.p.rest(&token).get("/api/v1/projects").await;
    assert_eq!(list["total"], 1);
    s2.p.sigterm();
}

fn serve_in(dir: tempfile::TempDir) -> Serve {
    let p = ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_iotsync")), dir.path(), &[]);
    let token_line = p.banner.last().expect("a banner");
    assert!(
        !token_line.contains("iot_"),
        "the token itself must never be printed: {token_line}"
    );
    Serve { p, dir }
}

#[tokio::test]
async fn serve_keeps_running_when_whoever_reads_its_banner_stops_reading() {
    let dir = tempfile::tempdir().unwrap();
    // Its stdout is a pipe nobody reads from any more: every banner line meets EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = bin()
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(iotsync_testkit::EPHEMERAL)
        .env_remove("IOTSYNC_OPERATOR_TOKEN")
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let token_file = dir.path().join("operator-token");
    iotsync_testkit::wait_for("the operator token", async || token_file.exists()).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "iotsync serve died when its stdout was closed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
