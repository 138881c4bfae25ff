//! The web console end to end in a real browser: the server runs in-process on port 0;
//! `tests/peers/console/console_e2e.mjs` (playwright-core driving Debian's Chromium) is
//! driven step by step over stdin/stdout, while this test plays the outside world between
//! steps (a device's property report, a consumer that acks or rejects).
//!
//! Needs node, /usr/bin/chromium (or `IOTSYNC_CHROMIUM`) and
//! `tests/peers/node_modules/playwright-core`: `scripts/install-test-deps.sh` installs them.
//! Screenshots of every page land in `target/console-screenshots/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use iotsync_server::delivery::hub::{AttachRequest, ConsumerLink};
use iotsync_server::delivery::{ChannelKind, Outcome};
use iotsync_server::RunningServer;
use iotsync_testkit::{receive, PeerProc, Rest, TestServer, TOKEN};

const STEP_TIMEOUT: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    iotsync_testkit::repo_root()
}

/// The browser peer's prerequisites, or a panic that says how to get them.
fn prerequisites() -> (PathBuf, PathBuf) {
    let how =
        "run scripts/install-test-deps.sh (Debian chromium, node, npm install in tests/peers)";
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!("console e2e test: `node` is not on PATH; {how}"),
    }
    let chromium = std::env::var_os("IOTSYNC_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "console e2e test: Chromium not found at {}; {how}",
        chromium.display()
    );
    let peers = workspace_root().join("tests/peers");
    assert!(
        peers.join("node_modules/playwright-core").is_dir(),
        "console e2e test: {}/node_modules/playwright-core is missing; {how}",
        peers.display()
    );
    (chromium, peers.join("console/console_e2e.mjs"))
}

/// The Playwright script, one JSON command per line.
struct Browser(PeerProc);

impl Browser {
    fn spawn(script: &Path, chromium: &Path, base: &str, shots: &Path) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .env("BASE_URL", base)
            .env("TOKEN", TOKEN)
            .env("SCREENSHOT_DIR", shots)
            .env("CHROMIUM", chromium);
        // It closes its browser when stdin ends; only then is it killed.
        Self(PeerProc::spawn("browser", cmd).graceful(Duration::from_secs(5)))
    }

    /// Runs one step of the script; panics with the script's error (and screenshot).
    async fn step(&mut self, cmd: Value) -> Value {
        let name = cmd["cmd"].as_str().unwrap_or("?").to_owned();
        self.0.send(&cmd);
        let v = tokio::time::timeout(STEP_TIMEOUT, self.0.next_unbounded())
            .await
            .unwrap_or_else(|_| panic!("browser step {name} timed out"));
        assert_eq!(
            v["ok"],
            true,
            "browser step {name} failed: {}\nscreenshot: {}",
            v["error"].as_str().unwrap_or(""),
            v["screenshot"]
        );
        eprintln!("browser step {name}: {v}");
        v
    }
}

async fn rest(base: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    Rest::new(base, TOKEN)
        .ok(method, &format!("/api/v1{path}"), Some(body))
        .await
}

async fn start_server(dir: &Path) -> RunningServer {
    TestServer::builder()
        .system_clock()
        .data_dir(dir)
        .overrides(|o| {
            // Port 0: the console must show the ports actually bound.
            o.amqp_listen = Some("127.0.0.1:0".into());
            o.amqps_listen = Some(String::new());
            o.http2_listen = Some("127.0.0.1:0".into());
            o.http2_tls_listen = Some(String::new());
            o.mqtts_listen = Some(String::new());
        })
        .start_bare()
        .await
}

/// Receives exactly `n` deliveries and settles each with `outcome`; their topics.
async fn consume(link: &mut ConsumerLink, n: usize, outcome: Outcome) -> Vec<String> {
    let got = receive(link, n, outcome).await;
    got.iter()
        .map(|d| d.message.envelope.topic.clone())
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Replay, search and purge through the console (issue 14): six reports acknowledged,
/// the default group replayed from the time of the first, the messages found by id and
/// by device, a purge refused because a consumer drained the group meanwhile, then a
/// second replay, one message seen in flight to the consumer holding it, and the purge.
async fn backlog_operations(
    b: &mut Browser,
    server: &RunningServer,
    base: &str,
    pid: &str,
    app_key: &str,
    iot_id: &str,
) {
    // The picker goes to the second: start the six on a whole second, later than every
    // message before them, so a replay from it brings back exactly these.
    let from = (now_ms() / 1000 + 1) * 1000;
    tokio::time::sleep(Duration::from_millis((from - now_ms()).max(0) as u64 + 5)).await;
    let mut ids = Vec::new();
    for x in 10..16 {
        let r = rest(
            base,
            reqwest::Method::POST,
            &format!("/projects/{pid}/devices/{iot_id}/properties"),
            json!({"items": {"x": x}}),
        )
        .await;
        ids.push(r["messageId"].as_str().unwrap().to_owned());
    }
    let hub = server.hub();
    let attach = || {
        hub.attach(AttachRequest {
            project: pid.parse().unwrap(),
            group: app_key.parse().unwrap(),
            channel: ChannelKind::Amqp,
            remote: "127.0.0.1:2".into(),
            client_id: "console-e2e-replay".into(),
        })
    };
    let mut link = attach().await.unwrap();
    consume(&mut link, ids.len(), Outcome::Accepted).await;
    drop(link);
    let stats_path = format!("/projects/{pid}/sync/stats");
    let group_figures = || async {
        let s = rest(base, reqwest::Method::GET, &stats_path, json!(null)).await;
        s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == app_key)
            .cloned()
            .unwrap()
    };

    let r = b
        .step(json!({"cmd": "replay", "from": from, "want": ids.len(), "name": "21-monitoring-replayed"}))
        .await;
    assert_eq!(r["replayed"], ids.len(), "{r}");
    let g = group_figures().await;
    assert_eq!(g["stacked"], ids.len(), "{g}");
    assert_eq!(g["replayedTotal"], ids.len(), "{g}");

    b.step(json!({"cmd": "search", "ids": ids, "from": from}))
        .await;

    // The purge names the count; a consumer drains the group while it is being confirmed:
    // the purge is refused with the count it found.
    let shown = b.step(json!({"cmd": "purge_open"})).await;
    assert_eq!(shown["count"], ids.len(), "{shown}");
    let mut link = attach().await.unwrap();
    consume(&mut link, ids.len(), Outcome::Accepted).await;
    drop(link);
    b.step(json!({"cmd": "purge_refused"})).await;

    // Replayed again; a consumer takes the first and holds it: the search shows to whom
    // it is in flight. Then purged for good: nothing owed, the six dropped.
    b.step(json!({"cmd": "replay", "from": from, "want": ids.len()}))
        .await;
    let mut link = attach().await.unwrap();
    let held = iotsync_testkit::take(&mut link, 1).await;
    assert_eq!(held[0].message.envelope.message_id.as_str(), ids[0]);
    b.step(json!({"cmd": "in_flight", "id": ids[0]})).await;
    let done = b.step(json!({"cmd": "purge", "want": ids.len()})).await;
    drop(link);
    assert_eq!(done["dropped"], ids.len(), "{done}");
    assert!(
        done["text"].as_str().unwrap().contains("(1 was in flight)"),
        "{done}"
    );
    let g = group_figures().await;
    assert_eq!(g["stacked"], 0, "{g}");
    assert_eq!(g["droppedTotal"], ids.len(), "{g}");
    let m = rest(
        base,
        reqwest::Method::GET,
        &format!("/projects/{pid}/messages/{}", ids[0]),
        json!(null),
    )
    .await;
    assert_eq!(m["groups"][0]["state"], "dropped", "{m}");
    let audit = rest(
        base,
        reqwest::Method::GET,
        &format!("/projects/{pid}/audit?pageSize=10"),
        json!(null),
    )
    .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..3],
        &[
            "consumer_group.purge",
            "consumer_group.seek",
            "consumer_group.seek"
        ],
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_drives_projects_sync_settings_api_operations_and_monitoring_in_a_browser() {
    let (chromium, script) = prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let base = format!("http://{}", server.api_addr);
    let shots = workspace_root().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut b = Browser::spawn(&script, &chromium, &base, &shots);

    b.step(json!({"cmd": "start"})).await;
    let created = b.step(json!({"cmd": "sign_in_and_projects"})).await;
    let pid = created["projectId"].as_str().unwrap().to_owned();
    let app_key = created["appKey"].as_str().unwrap().to_owned();
    let home = b.step(json!({"cmd": "project_home"})).await;
    let iot_id = home["iotId"].as_str().unwrap().to_owned();

    // The device reports before sync is on: the home page shows its last properties,
    // and nothing is stacked (sync is off).
    rest(
        &base,
        reqwest::Method::POST,
        &format!("/projects/{pid}/devices/{iot_id}/properties"),
        json!({"items": {"x": 1}}),
    )
    .await;
    b.step(json!({"cmd": "device_properties_shown"})).await;

    let bound = json!({
        "amqp": format!("amqp://{}", server.addr("amqp").unwrap()),
        "http2": format!("http://{}", server.addr("http2").unwrap()),
    });
    b.step(json!({"cmd": "sync_settings", "bound": bound}))
        .await;
    // Declare and delete a consumer group through the UI; the audit log has both.
    let g = b.step(json!({"cmd": "consumer_groups"})).await;
    assert_eq!(g["deleted"], "billing");
    let audit = rest(
        &base,
        reqwest::Method::GET,
        &format!("/projects/{pid}/audit"),
        json!(null),
    )
    .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..2],
        &["consumer_group.delete", "consumer_group.create"],
        "{audit}"
    );
    // keepAcknowledged, switched off and on again from the settings page; on for the
    // replay below.
    b.step(json!({"cmd": "keep_acknowledged"})).await;
    let keep = rest(
        &base,
        reqwest::Method::GET,
        &format!("/projects/{pid}/sync/backlog-settings"),
        json!(null),
    )
    .await;
    assert_eq!(keep["keepAcknowledged"], true, "{keep}");
    b.step(json!({"cmd": "api_operations"})).await;
    b.step(json!({"cmd": "monitor", "expect": "zero"})).await;

    // A property report stacks a message for the default group…
    rest(
        &base,
        reqwest::Method::POST,
        &format!("/projects/{pid}/devices/{iot_id}/properties"),
        json!({"items": {"x": 2}}),
    )
    .await;
    let up = b
        .step(json!({"cmd": "monitor", "expect": "up", "name": "12-monitoring-stacked"}))
        .await;
    let stacked = up["stacked"].as_u64().unwrap() as usize;
    assert!(stacked >= 1);
    // A threshold the group is over, set from its card: the card turns red.
    b.step(json!({"cmd": "alert_threshold"})).await;
    let alerts = rest(
        &base,
        reqwest::Method::GET,
        &format!("/projects/{pid}/consumer-groups/{app_key}/alerts"),
        json!(null),
    )
    .await;
    assert_eq!(alerts["stackedMax"], 0, "{alerts}");
    assert_eq!(alerts["alerting"], true, "{alerts}");

    // …and a consumer of that group (through the in-process hub, as the AMQP channel
    // does) acks it: the count goes down, the consumer is listed.
    let mut link = server
        .hub()
        .attach(AttachRequest {
            project: pid.parse().unwrap(),
            group: app_key.parse().unwrap(),
            channel: ChannelKind::Amqp,
            remote: "127.0.0.1:1".into(),
            client_id: "console-e2e".into(),
        })
        .await
        .unwrap();
    let topics = consume(&mut link, stacked, Outcome::Accepted).await;
    assert!(
        topics
            .iter()
            .any(|t| t.ends_with("/thing/event/property/post")),
        "{topics:?}"
    );
    b.step(json!({"cmd": "monitor", "expect": "down", "name": "13-monitoring-acked"}))
        .await;
    b.step(json!({"cmd": "alert_recovered"})).await;
    // Back to no thresholds, so the dead letters below do not alert.
    rest(
        &base,
        reqwest::Method::PUT,
        &format!("/projects/{pid}/consumer-groups/{app_key}/alerts"),
        json!({}),
    )
    .await;

    // A rejected message becomes a dead letter: retried from the console, it comes back;
    // rejected again, it is dropped from the console.
    rest(
        &base,
        reqwest::Method::POST,
        &format!("/projects/{pid}/devices/{iot_id}/properties"),
        json!({"items": {"x": 3}}),
    )
    .await;
    consume(&mut link, 1, Outcome::Rejected).await;
    b.step(json!({"cmd": "dead_letter_retry"})).await;
    let again = consume(&mut link, 1, Outcome::Rejected).await;
    assert!(again[0].ends_with("/thing/event/property/post"));
    b.step(json!({"cmd": "dead_letter_drop"})).await;
    drop(link);

    backlog_operations(&mut b, &server, &base, &pid, &app_key, &iot_id).await;

    b.step(json!({"cmd": "mixed_project"})).await;
    b.step(json!({"cmd": "phone"})).await;
    b.step(json!({"cmd": "csrf_and_sign_out"})).await;
    let fin = b.step(json!({"cmd": "finish"})).await;
    eprintln!(
        "screenshots: {}",
        fin["shots"].as_array().map(|a| a.len()).unwrap_or_default()
    );
    drop(b);
    server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn console_page_and_session_endpoints_need_no_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let base = format!("http://{}", server.api_addr);
    let http = reqwest::Client::new();

    // The page and its assets, with a strict content security policy.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    for (name, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        assert_eq!(page.headers()[name], want, "{name}");
    }
    assert!(page.headers()["permissions-policy"]
        .to_str()
        .unwrap()
        .contains("camera=()"));
    assert!(page.text().await.unwrap().contains("/console/console.js"));
    for (asset, ct) in [
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{asset}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ct));
    }

    // Sign-in: wrong token refused; a form post (not JSON) refused.
    let r = http
        .post(format!("{base}/console/session"))
        .json(&json!({"token": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "token");
    let r = http
        .post(format!("{base}/console/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    let r = http
        .post(format!("{base}/console/session"))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"));
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let csrf = r.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // The cookie reads; writes need the matching CSRF header.
    let get = |c: &str| {
        http.get(format!("{base}/api/v1/projects"))
            .header("cookie", c.to_owned())
            .send()
    };
    assert_eq!(get(&cookie).await.unwrap().status(), 200);
    let post = |hdr: Option<&str>| {
        let mut r = http
            .post(format!("{base}/api/v1/projects"))
            .header("cookie", cookie.clone())
            .json(&json!({"name": "By cookie"}));
        if let Some(h) = hdr {
            r = r.header("x-csrf-token", h.to_owned());
        }
        r.send()
    };
    let r = post(None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "csrf");
    assert_eq!(post(Some("wrong")).await.unwrap().status(), 403);
    assert_eq!(post(Some(&csrf)).await.unwrap().status(), 201);
    let conn: Value = http
        .get(format!("{base}/console/connection"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(conn["amqp"]
        .as_str()
        .unwrap()
        .starts_with("amqp://127.0.0.1:"));
    assert!(conn["amqps"].is_null());

    // A made-up session id is refused; sign-out ends the real one.
    assert_eq!(
        get("iotsync_session=0123456789abcdef")
            .await
            .unwrap()
            .status(),
        401
    );
    let r = http
        .delete(format!("{base}/console/session"))
        .header("cookie", cookie.clone())
        .header("x-csrf-token", csrf.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(get(&cookie).await.unwrap().status(), 401);
    // The bearer token still works as before.
    let r = http
        .get(format!("{base}/api/v1/projects"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown(Duration::from_secs(5)).await;
}
