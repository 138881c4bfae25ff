//! The AMQP 1.0 channel against clients nobody here wrote: Apache Qpid Proton (Python)
//! and rhea (Node). Every scenario runs over both, over real sockets, with the server's
//! clock manual (peers sign with it; retries are made due by advancing it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use serde_json::{json, Value};

use iotsync_testkit::peers::{app_key_args, AmqpPeer};
use iotsync_testkit::{Project, TestServer, WAIT};

fn assert_property_message(m: &Value, p: &Project, env: &TestServer) {
    assert_eq!(
        m["topic"],
        format!("/{}/{}/thing/event/property/post", p.pk, p.dn()),
        "{m}"
    );
    let id = m["messageId"]
        .as_str()
        .expect("messageId application property");
    assert!(!id.is_empty());
    assert_eq!(m["amqpMessageId"], id, "AMQP message-id = messageId: {m}");
    assert_eq!(m["generateTime"], json!(env.now()), "{m}");
    let pl = &m["payload"];
    assert_eq!(pl["deviceType"], "Light", "{m}");
    assert_eq!(pl["iotId"], p.iot());
    assert_eq!(pl["productKey"], p.pk.as_str());
    assert_eq!(pl["deviceName"], p.dn());
    assert!(pl["gmtCreate"].is_number(), "{m}");
    assert_eq!(pl["items"]["LightSwitch"]["value"], 1, "{m}");
    assert!(pl["items"]["LightSwitch"]["time"].is_number(), "{m}");
}

async fn receives_a_property_message_and_accepts_it(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut c = peer.spawn(&app_key_args(&env, &p, &["--count", "1"]));
    c.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    let m = c.next_event("message").await;
    assert_property_message(&m, &p, &env);
    if peer == AmqpPeer::Python {
        assert_eq!(
            m["generateTimeType"], "int",
            "generateTime is an integer: {m}"
        );
        assert_eq!(
            m["bodyType"], "memoryview",
            "payload in a Data section: {m}"
        );
    } else {
        assert_eq!(
            m["bodyType"], "section:117",
            "payload in a Data section: {m}"
        );
    }
    c.next_event("done").await;
    // Accepted: a new consumer of the group gets nothing more, and nothing is dead.
    c.next_event("exit").await;
    assert!(env.dead_letters(&p.pid).await.is_empty());
    let mut again = peer.spawn(&app_key_args(&env, &p, &["--count", "1"]));
    again.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 0})).await;
    let m2 = again.next_event("message").await;
    assert_ne!(
        m2["messageId"], m["messageId"],
        "the accepted message came back"
    );
    assert_eq!(m2["payload"]["items"]["LightSwitch"]["value"], 0);
    env.stop().await;
}

async fn released_message_comes_back(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut c = peer.spawn(&app_key_args(
        &env,
        &p,
        &["--count", "2", "--disposition", "release-first"],
    ));
    c.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    let first = c.next_event("message").await;
    let s = c.next_event("settled").await;
    assert_eq!(s["outcome"], "release");
    // Released → retry queue with backoff (1 s ± 20 % on the manual clock).
    let mut second = None;
    env.advance_until(1_300, || {
        second = c
            .drain()
            .into_iter()
            .find(|v| v["event"] == "message")
            .or(second.take());
        second.is_some()
    })
    .await;
    let second = second.unwrap();
    assert_eq!(second["messageId"], first["messageId"]);
    assert_eq!(second["payload"], first["payload"]);
    // The header's delivery-count says how many deliveries came before.
    assert_eq!(
        (
            first["deliveryCount"].as_u64(),
            second["deliveryCount"].as_u64()
        ),
        (Some(0), Some(1))
    );
    if !c.saw("done") {
        c.next_event("done").await;
    }
    assert!(env.dead_letters(&p.pid).await.is_empty());
    env.stop().await;
}

async fn rejected_message_lands_in_dead_letters(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut c = peer.spawn(&app_key_args(
        &env,
        &p,
        &["--count", "1", "--disposition", "reject"],
    ));
    c.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    let m = c.next_event("message").await;
    c.next_event("done").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let dead = env.dead_letters(&p.pid).await;
        if let Some(d) = dead.iter().find(|d| d["messageId"] == m["messageId"]) {
            assert_eq!(d["topic"], m["topic"]);
            assert_eq!(d["group"], p.app_key.as_str());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dead-lettered: {dead:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.stop().await;
}

async fn unsettled_messages_of_a_killed_client_reach_the_next_client(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut a = peer.spawn(&app_key_args(&env, &p, &["--disposition", "none"]));
    a.next_event("opened").await;
    // Three devices: one message each may be in flight at once.
    for i in 0..3 {
        env.report_on(&p, i, json!({"Brightness": i})).await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(a.next_event("message").await["messageId"].clone());
    }
    a.kill();
    let mut b = peer.spawn(&app_key_args(&env, &p, &["--count", "3"]));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(b.next_event("message").await["messageId"].clone());
    }
    ids.sort_by_key(|v| v.to_string());
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got, ids,
        "the killed client's unsettled messages reach the next client"
    );
    b.next_event("done").await;
    env.stop().await;
}

async fn refuses_bad_logins_with_unauthorized_access(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let stale = (env.now() - 16 * 60 * 1000).to_string();
    let now = env.now().to_string();
    let url = env.amqp_url();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "wrong secret",
            vec![
                "--app-key",
                &p.app_key,
                "--app-secret",
                "not-the-secret",
                "--ts",
                &now,
            ],
        ),
        (
            "stale timestamp",
            vec![
                "--app-key",
                &p.app_key,
                "--app-secret",
                &p.app_secret,
                "--ts",
                &stale,
            ],
        ),
        (
            "unknown appKey",
            vec![
                "--app-key",
                "nosuchkey42",
                "--app-secret",
                &p.app_secret,
                "--ts",
                &now,
            ],
        ),
        (
            "malformed username",
            vec!["--username", "just-a-name", "--password", "c2VjcmV0"],
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.into_iter().map(String::from).collect()))
    .collect();
    for (name, mut args) in cases {
        args.extend(["--url".into(), url.clone(), "--mode".into(), "login".into()]);
        let mut c = peer.spawn(&args);
        let e = c.next_event("error").await;
        assert_eq!(e["condition"], "amqp:unauthorized-access", "{name}: {e}");
        assert!(
            !c.seen.iter().any(|v| v["event"] == "opened"),
            "{name}: connection opened: {:?}",
            c.seen
        );
    }
    env.stop().await;
}

async fn refuses_sender_links_with_a_clear_error(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut c = peer.spawn(&app_key_args(&env, &p, &["--mode", "send"]));
    let e = c.next_event("error").await;
    assert_eq!(e["condition"], "amqp:not-allowed", "{e}");
    assert!(
        e["description"]
            .as_str()
            .is_some_and(|d| d.contains("sender links are refused")),
        "{e}"
    );
    env.stop().await;
}

macro_rules! over_every_peer {
    ($($name:ident),* $(,)?) => {
        mod python {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(AmqpPeer::Python).await
                }
            )*
        }
        mod rhea {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(AmqpPeer::Node).await
                }
            )*
        }
    };
}

/// A stock client settles each message with its own disposition frame; the server merges
/// runs of them into ranges before its AMQP engine (ADR 0003). Every message of a burst
/// must come out acknowledged exactly once: none left, none redelivered, none dead.
async fn a_burst_settled_one_by_one_is_acknowledged_exactly(peer: AmqpPeer) {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    // One delivery per device is in flight at a time: many devices, many in flight.
    let mut iots = p.iots();
    for i in 0..37 {
        let d = env
            .ok(
                reqwest::Method::POST,
                &format!("/api/v1/projects/{}/products/{}/devices", p.pid, p.pk),
                Some(json!({ "deviceName": format!("burst{i:03}") })),
            )
            .await;
        iots.push(d["iotId"].as_str().unwrap().to_owned());
    }
    let per_device = 5;
    for round in 0..per_device {
        for iot in &iots {
            env.ok(
                reqwest::Method::POST,
                &format!("/api/v1/projects/{}/devices/{iot}/properties", p.pid),
                Some(json!({ "items": { "Counter": round } })),
            )
            .await;
        }
    }
    // The reports, and one lifecycle message per device created above (those come
    // through the registry's outbox, a moment later).
    let n = iots.len() * per_device + (iots.len() - p.devices.len());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, st) = env
            .get(&format!("/api/v1/projects/{}/sync/stats", p.pid))
            .await;
        if st["groups"][0]["appendedTotal"] == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "want {n} appended: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let args = app_key_args(&env, &p, &["--count", &n.to_string(), "--credit", "100"]);
    let mut c = peer.spawn(&args);
    c.next_event("done").await;
    c.next_event("exit").await;
    let ids: std::collections::HashSet<String> = c
        .seen
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n, "every message once");
    // Acknowledged, all of them: nothing stacked, in flight or dead; acked_total = n.
    env.wait_all_acknowledged(&p.pid, n).await;
    assert!(env.dead_letters(&p.pid).await.is_empty());
    let merged = env.metric("iotsync_amqp_dispositions_merged_total").await;
    eprintln!("{peer:?}: {n} messages, {merged} disposition frames merged away");
    env.stop().await;
}

over_every_peer!(
    a_burst_settled_one_by_one_is_acknowledged_exactly,
    receives_a_property_message_and_accepts_it,
    released_message_comes_back,
    rejected_message_lands_in_dead_letters,
    unsettled_messages_of_a_killed_client_reach_the_next_client,
    refuses_bad_logins_with_unauthorized_access,
    refuses_sender_links_with_a_clear_error,
);

/// The Python sample the console shows (`crates/iotsync-sdk/examples/amqp_consumer.py`,
/// served as is) consumes and acknowledges over a real socket, run exactly as the
/// console's command line says.
#[tokio::test]
async fn the_consoles_python_sample_consumes_and_acknowledges() {
    // The sample signs with the wall clock, as a user's server does; the kit's manual
    // clock starts at the real time.
    let env = TestServer::start().await;
    let p = env.project("Samples").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    env.report(&p, json!({"LightSwitch": 0})).await;
    let root = iotsync_testkit::repo_root();
    let run = tokio::process::Command::new("python3")
        .arg(root.join("crates/iotsync-sdk/examples/amqp_consumer.py"))
        .env("IOTSYNC_ENDPOINT", env.amqp_url())
        .env("IOTSYNC_APP_KEY", &p.app_key)
        .env("IOTSYNC_APP_SECRET", &p.app_secret)
        .env("IOTSYNC_MAX_MESSAGES", "2")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT, run)
        .await
        .expect("the sample did not finish")
        .expect("python3 runs the sample");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sample failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let topic = format!("/{}/{}/thing/event/property/post", p.pk, p.dn());
    for (line, value) in lines.iter().zip([1, 0]) {
        // generateTime messageId topic payload
        let mut parts = line.splitn(4, ' ');
        let (gen, id, t, payload) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert!(gen.parse::<i64>().is_ok(), "{line}");
        assert!(!id.is_empty(), "{line}");
        assert_eq!(t, topic, "{line}");
        let pl: Value = serde_json::from_str(payload).unwrap();
        assert_eq!(pl["items"]["LightSwitch"]["value"], value, "{line}");
    }
    env.wait_all_acknowledged(&p.pid, 2).await;
    env.stop().await;
}
