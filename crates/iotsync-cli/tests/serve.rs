//! `iotsync serve` as a user runs it: a child process on port 0 with a fresh data dir.

use std::path::Path;
use std::process::Command;

use iotsync_testkit::ServeProcess;
use serde_json::{json, Value};

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
        .get(format!("{}/api/v1/openapi.json", s.p.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"].as_object().unwrap().len() > 10);
    let post = |path: &str, body: Value| {
        http.post(format!("{}{}", s.p.api, path))
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
    let st = s.p.sigterm();
    assert!(st.success(), "graceful shutdown exits 0, got {st:?}");
    // The data survives a restart, and the generated token is reused.
    let mut s2 = serve_in(s.dir);
    let list: Value = http
        .get(format!("{}/api/v1/projects", s2.p.api))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
