//! `iotsync consume amqp` against `iotsync serve`, both as child processes the way a user
//! runs them: a property report made through REST arrives as one JSON line and is acked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::path::Path;
use std::process::Command;

use iotsync_testkit::{PeerProc, ProjectSpec, ServeProcess};
use serde_json::json;

const TOKEN: &str = "cli-consume-test-token-0123456789";

#[tokio::test]
async fn consume_amqp_prints_a_reported_property_as_a_json_line_and_acks_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_iotsync"));
    let serve = ServeProcess::start(bin, dir.path(), &["--operator-token", TOKEN]);
    let amqp = serve.listener("amqp").to_owned();
    assert!(amqp.starts_with("amqp://"), "{amqp}");

    let rest = serve.rest(TOKEN);
    let p = rest
        .create_project(
            &ProjectSpec::new("Home")
                .devices(&["lamp0001"])
                .sync_after("amqp"),
        )
        .await;
    let (pid, pk, iot) = (&p.pid, &p.pk, p.iot());
    // Stacked in the default group (created when sync was enabled) until consumed.
    let report = rest.report(&p, json!({"LightSwitch": 1})).await;
    let message_id = report["messageId"].as_str().unwrap().to_owned();

    let mut cmd = Command::new(bin);
    cmd.args(["consume", "amqp", "--endpoint", &amqp])
        .args(["--app-key", &p.app_key, "--app-secret", &p.app_secret])
        .args(["--count", "1"]);
    let mut consume = PeerProc::spawn("iotsync consume amqp", cmd);
    let v = consume.next().await;
    assert_eq!(
        v["topic"],
        format!("/{pk}/lamp0001/thing/event/property/post")
    );
    assert_eq!(v["messageId"], message_id);
    assert!(
        v["generateTime"].as_i64().unwrap() > 1_600_000_000_000,
        "{v}"
    );
    assert_eq!(v["payload"]["iotId"], iot);
    assert_eq!(v["payload"]["items"]["LightSwitch"]["value"], 1);

    // --count 1: it acks and exits on its own.
    let status = consume.finish().await;
    assert!(status.success(), "{status}");

    // Acked: nothing is left stacked for the default group.
    rest.stats_until(pid, |st| st["groups"][0]["stacked"] == 0)
        .await;
}
