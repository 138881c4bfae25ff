//! `iotsync consume amqp` against `iotsync serve`, both as child processes the way a user
//! runs them: a property report made through REST arrives as one JSON line and is acked.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::EPHEMERAL;
use serde_json::{json, Value};

const TOKEN: &str = "cli-consume-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stdout, read on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let r = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

#[tokio::test]
async fn consume_amqp_prints_a_reported_property_as_a_json_line_and_acks_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Killed(
        Command::new(env!("CARGO_BIN_EXE_iotsync"))
            .args(["serve", "--operator-token", TOKEN, "--data-dir"])
            .arg(dir.path())
            .args(EPHEMERAL)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let banner = lines_of(&mut serve.0);
    let (mut api, mut amqp) = (None, None);
    while api.is_none() || amqp.is_none() {
        let line = banner.recv_timeout(WAIT).expect("serve printed no banner");
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("api listening:") {
            api = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("amqp listening:") {
            amqp = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let (api, amqp) = (api.unwrap(), amqp.unwrap());
    assert!(amqp.starts_with("amqp://"), "{amqp}");

    let http = reqwest::Client::new();
    let p = post(
        &http,
        format!("{api}/api/v1/projects"),
        json!({"name": "Home"}),
    )
    .await;
    let pid = p["projectId"].as_str().unwrap();
    let pr = post(
        &http,
        format!("{api}/api/v1/projects/{pid}/products"),
        json!({"name": "Lamp", "deviceType": "Light"}),
    )
    .await;
    let pk = pr["productKey"].as_str().unwrap();
    let d = post(
        &http,
        format!("{api}/api/v1/projects/{pid}/products/{pk}/devices"),
        json!({"deviceName": "lamp0001"}),
    )
    .await;
    let iot = d["iotId"].as_str().unwrap();
    post(
        &http,
        format!("{api}/api/v1/projects/{pid}/sync/enable"),
        json!({"method": "amqp"}),
    )
    .await;
    // Stacked in the default group (created when sync was enabled) until consumed.
    let report = post(
        &http,
        format!("{api}/api/v1/projects/{pid}/devices/{iot}/properties"),
        json!({"items": {"LightSwitch": 1}}),
    )
    .await;
    let message_id = report["messageId"].as_str().unwrap().to_owned();

    let mut consume = Killed(
        Command::new(env!("CARGO_BIN_EXE_iotsync"))
            .args(["consume", "amqp", "--endpoint", &amqp, "--app-key"])
            .arg(p["appKey"].as_str().unwrap())
            .args(["--app-secret", p["appSecret"].as_str().unwrap()])
            .args(["--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(&mut consume.0);
    let line = out
        .recv_timeout(WAIT)
        .expect("iotsync consume amqp printed nothing");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
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
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = consume.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consume did not exit after --count 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");

    // Acked: nothing is left stacked for the default group.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st: Value = http
            .get(format!("{api}/api/v1/projects/{pid}/sync/stats"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if st["groups"][0]["stacked"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message was not acked: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
