//! `iotsync admin …` as an operator runs it: the real binary against a real
//! `iotsync serve` (its own process, port 0, fresh data dir).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::path::Path;
use std::process::{Command, Output};

use iotsync_testkit::ServeProcess;
use serde_json::Value;

struct Server {
    serve: ServeProcess,
    dir: tempfile::TempDir,
}

fn serve() -> Server {
    let dir = tempfile::tempdir().unwrap();
    Server {
        serve: ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_iotsync")), dir.path(), &[]),
        dir,
    }
}

impl Server {
    /// Runs `iotsync admin ARGS` with the endpoint and the data dir (token file).
    fn admin(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_iotsync"))
            .arg("admin")
            .args(["--endpoint", &self.serve.api, "--data-dir"])
            .arg(self.dir.path())
            .args(args)
            .env_remove("IOTSYNC_OPERATOR_TOKEN")
            .env_remove("IOTSYNC_ADMIN_ENDPOINT")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "admin {args:?}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn every_admin_subcommand_works_against_a_real_server() {
    let s = serve();
    // Projects.
    let p = s.json(&["projects", "create", "Smart home"]);
    let pid = p["projectId"].as_str().unwrap().to_owned();
    assert!(p["appSecret"].is_string(), "{p}");
    let list = s.ok(&["projects", "list"]);
    assert!(list.starts_with("projectId"), "{list}");
    assert!(list.contains(&pid) && list.contains("Smart home"), "{list}");
    let shown = s.ok(&["projects", "show", &pid]);
    assert!(shown.contains("Smart home"), "{shown}");
    let rotated = s.json(&["projects", "rotate-secret", &pid]);
    assert!(rotated["appSecret"].is_string(), "{rotated}");
    assert_ne!(rotated["appSecret"], p["appSecret"]);

    // Products and devices.
    let prod = s.json(&["products", "create", &pid, "Lamp", "--device-type", "Light"]);
    let pk = prod["productKey"].as_str().unwrap().to_owned();
    assert!(s.ok(&["products", "list", &pid]).contains(&pk));
    let dev = s.json(&["devices", "create", &pid, &pk, "lamp01"]);
    assert_eq!(dev["deviceName"], "lamp01");
    assert!(s.ok(&["devices", "list", &pid]).contains("lamp01"));

    // Sync.
    s.ok(&["sync", "enable", &pid, "--method", "http2"]);
    let sync = s.json(&["sync", "show", &pid]);
    assert_eq!(sync["enabled"], true, "{sync}");
    s.ok(&["sync", "switch", &pid, "--method", "amqp"]);
    s.ok(&["sync", "product", &pid, &pk, "off"]);
    s.ok(&["sync", "product", &pid, &pk, "on"]);
    let sync = s.json(&["sync", "show", &pid]);
    assert_eq!(sync["method"], "amqp", "{sync}");

    // Consumer groups, stats, dead letters.
    s.ok(&["groups", "create", &pid, "ops", "--data-class", "device"]);
    let groups = s.ok(&["groups", "list", &pid]);
    assert!(groups.contains("ops"), "{groups}");
    let stats = s.ok(&["stats", &pid]);
    assert!(stats.starts_with("group"), "{stats}");
    assert!(stats.contains("ops"), "{stats}");
    s.ok(&["groups", "delete", &pid, "ops"]);
    assert!(!s.ok(&["groups", "list", &pid]).contains("ops"));
    let dead = s.ok(&["dead-letters", "list", &pid]);
    assert!(dead.contains("(none)"), "{dead}");
    let out = s.admin(&["dead-letters", "retry", &pid, "nosuchmessage"]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.admin(&["dead-letters", "drop", &pid, "nosuchmessage"]);
    assert_eq!(code(&out), 4);
    s.ok(&["sync", "disable", &pid]);

    // Import from a file and from standard input.
    let file = s.dir.path().join("import.json");
    std::fs::write(
        &file,
        r#"{"name":"Imported","appKey":"12345678","appSecret":"secret0001",
            "sync":{"enabled":true,"deviceData":"http2","userData":"legacy_http",
            "legacyHttpUrl":"http://127.0.0.1:9/push"}}"#,
    )
    .unwrap();
    let imported = s.json(&["import", file.to_str().unwrap()]);
    assert!(imported["projectId"].is_string(), "{imported}");
}

#[test]
fn errors_print_their_stable_code_and_exit_with_what_failed() {
    let s = serve();
    // Not found.
    let out = s.admin(&["projects", "show", "pnosuchproject00"]);
    assert_eq!(code(&out), 4);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("[HTTP 404"), "{err}");
    // Refused, with the field named.
    let pid = s.json(&["projects", "create", "p"])["projectId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = s.admin(&["groups", "create", &pid, "_internal"]);
    assert_eq!(code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name"));
    // A wrong token.
    let out = Command::new(env!("CARGO_BIN_EXE_iotsync"))
        .args([
            "admin",
            "--endpoint",
            &s.serve.api,
            "--token",
            "wrong",
            "projects",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    // Nothing listening.
    let out = Command::new(env!("CARGO_BIN_EXE_iotsync"))
        .args([
            "admin",
            "--endpoint",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "projects",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    // A file that is not JSON.
    let bad = s.dir.path().join("bad.json");
    std::fs::write(&bad, "not json").unwrap();
    let out = s.admin(&["import", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 7);
    // Usage errors are clap's.
    let out = s.admin(&["sync", "enable"]);
    assert_eq!(code(&out), 2);
}
