//! Backlog operations (issue 14) over real sockets with real clients: seek a consumer
//! group to a time and get the messages again through Apache Qpid Proton (AMQP 1.0) and
//! grpcio (HTTP/2), purge during a burst, and look messages up by id or by device.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{json, Value};

use iotsync_testkit::peers::{app_key_args, grpcio, payload_of, AmqpPeer};
use iotsync_testkit::{assert_error, audit_actions};
use iotsync_testkit::{Project, TestServer};

/// `n` reports spread over the project's devices, 1 ms apart on the manual clock;
/// returns (messageId, generateTime, device index) of each in production order.
async fn produce(env: &TestServer, p: &Project, n: usize) -> Vec<(String, i64, usize)> {
    let mut out = Vec::new();
    for i in 0..n {
        env.clock.advance_ms(1);
        let dev = i % p.devices.len();
        let r = env.report_on(p, dev, json!({ "Brightness": i })).await;
        out.push((r["messageId"].as_str().unwrap().to_owned(), env.now(), dev));
    }
    out
}

fn seek_path(p: &Project, group: &str, what: &str) -> String {
    format!("/api/v1/projects/{}/consumer-groups/{group}/{what}", p.pid)
}

/// Checks that `got` (message ids in arrival order) holds exactly `want` and that each
/// device's messages arrive in production order.
fn assert_in_order_per_device(got: &[String], want: &[(String, i64, usize)]) {
    let mut a: Vec<&str> = got.iter().map(String::as_str).collect();
    let mut b: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the messages sought to");
    let pos: HashMap<&str, usize> = got
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let devices: std::collections::BTreeSet<usize> = want.iter().map(|w| w.2).collect();
    for d in devices {
        let order: Vec<usize> = want
            .iter()
            .filter(|w| w.2 == d)
            .map(|w| pos[w.0.as_str()])
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "device {d}'s messages out of order: {order:?}"
        );
    }
}

async fn group_state(env: &TestServer, p: &Project, id: &str) -> Value {
    let (s, v) = env
        .get(&format!("/api/v1/projects/{}/messages/{id}", p.pid))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn a_proton_consumer_gets_messages_again_from_the_time_its_group_seeks_to() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let sent = produce(&env, &p, 100).await;
    let mut c = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", "100"]));
    let first: Vec<String> = c
        .collect("message", 100)
        .await
        .iter()
        .filter(|v| v["event"] == "message")
        .map(|v| v["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_in_order_per_device(&first, &sent);
    c.next_event("exit").await;
    env.wait_all_acknowledged(&p.pid, 100).await;
    let m = group_state(&env, &p, &sent[10].0).await;
    assert_eq!(m["groups"][0]["group"], p.app_key.as_str(), "{m}");
    assert_eq!(m["groups"][0]["state"], "acknowledged", "{m}");
    assert_eq!(m["generateTime"], sent[10].1, "{m}");
    assert_eq!(m["payload"]["items"]["Brightness"]["value"], 10, "{m}");

    // Seek to the time of the 40th (index 39): the 40th to the 100th come again.
    let r = env
        .post(
            &seek_path(&p, &p.app_key, "seek"),
            json!({"from": sent[39].1}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["replayed"], 61, "{}", r.1);
    assert_eq!(r.1["owed"], 61);
    assert_eq!(r.1["dropped"], 0);
    let mut again = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", "61"]));
    let second: Vec<String> = again
        .collect("message", 61)
        .await
        .iter()
        .filter(|v| v["event"] == "message")
        .map(|v| v["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_in_order_per_device(&second, &sent[39..]);
    again.next_event("exit").await;
    let st = env
        .stats_until(&p.pid, |s| s["groups"][0]["ackedTotal"] == 161)
        .await;
    assert_eq!(st["groups"][0]["stacked"], 0, "{st}");
    assert_eq!(st["groups"][0]["replayedTotal"], 61, "{st}");
    // Nothing more comes: a third consumer waits for nothing.
    let mut third = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", "1"]));
    third.next_event("opened").await;
    assert!(
        third
            .line_within(std::time::Duration::from_millis(800))
            .await
            .is_none_or(|v| v["event"] != "message"),
        "a message came back after the replay was acknowledged"
    );
    // The seek is audited.
    let audit = env
        .get(&format!("/api/v1/projects/{}/audit", p.pid))
        .await
        .1;
    assert!(
        audit_actions(&audit).contains(&"consumer_group.seek"),
        "{audit}"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_grpcio_consumer_gets_messages_again_after_a_seek() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    // The lifecycle message of the device comes first; then 30 reports.
    let sent = produce(&env, &p, 30).await;
    let mut peer = grpcio(&env, &p, &["--max", "31"]);
    peer.collect("message", 31).await;
    peer.next_event("done").await;
    env.wait_all_acknowledged(&p.pid, 31).await;
    let r = env
        .post(
            &seek_path(&p, &p.app_key, "seek"),
            json!({"from": sent[9].1}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["owed"], 21, "{}", r.1);
    let mut again = grpcio(&env, &p, &["--max", "21"]);
    let lines = again.collect("message", 21).await;
    again.next_event("done").await;
    let msgs: Vec<&Value> = lines.iter().filter(|v| v["event"] == "message").collect();
    let ids: Vec<String> = msgs
        .iter()
        .map(|m| m["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_in_order_per_device(&ids, &sent[9..]);
    // Each comes as a fresh delivery with its original payload.
    for m in &msgs {
        assert_eq!(m["attempt"], 1, "{m}");
        let pl: Value = serde_json::from_slice(&payload_of(m)).unwrap();
        assert!(pl["items"]["Brightness"]["value"].as_i64().unwrap() >= 9);
    }
    env.stop().await;
}

#[tokio::test]
async fn purge_during_a_burst_leaves_nothing_owed_and_no_acknowledged_message_returns() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let before = produce(&env, &p, 20).await;
    // A consumer acknowledges the first 20.
    let mut c = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", "20"]));
    c.collect("message", 20).await;
    c.next_event("exit").await;
    env.wait_all_acknowledged(&p.pid, 20).await;
    // A burst with nobody consuming, purged while it is still being produced.
    let burst = {
        let env2 = env.rest().clone();
        let p2 = p.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                env2.report_on(&p2, i % 3, json!({ "Brightness": i })).await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    env.stats_until(&p.pid, |s| s["groups"][0]["stacked"].as_u64() >= Some(50))
        .await;
    let r = env
        .post(&seek_path(&p, &p.app_key, "purge"), json!({}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let dropped = r.1["dropped"].as_u64().unwrap();
    assert!(dropped >= 50, "{}", r.1);
    burst.await.unwrap();
    // What came after the purge is owed; nothing from before it.
    let st = env.stats(&p.pid).await;
    let owed = st["groups"][0]["stacked"].as_u64().unwrap();
    assert_eq!(owed + dropped, 200, "{st}");
    assert!(
        owed > 0,
        "the purge came after the burst, not during it: {st}"
    );
    assert_eq!(st["groups"][0]["droppedTotal"], dropped, "{st}");
    let text = env.metrics_text().await;
    let line = format!(
        "iotsync_backlog_dropped_total{{group=\"{}\",project=\"{}\"}} {dropped}",
        p.app_key, p.pid
    );
    assert!(
        text.lines().any(|l| l == line),
        "{line} not in /metrics:\n{text}"
    );
    let mut d = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", &owed.to_string()]));
    let got: Vec<Value> = if owed > 0 {
        d.collect("message", owed as usize).await
    } else {
        Vec::new()
    };
    let first20: std::collections::HashSet<&str> = before.iter().map(|b| b.0.as_str()).collect();
    for m in got.iter().filter(|v| v["event"] == "message") {
        let id = m["messageId"].as_str().unwrap();
        assert!(
            !first20.contains(id),
            "an acknowledged message came back: {id}"
        );
        // Nothing dropped comes back either: what arrives was produced after the purge.
        let st = group_state(&env, &p, id).await;
        let state = st["groups"][0]["state"].as_str().unwrap().to_owned();
        assert!(
            ["inFlight", "acknowledged"].contains(&state.as_str()),
            "{st}"
        );
    }
    let st = env
        .stats_until(&p.pid, |s| s["groups"][0]["stacked"] == 0)
        .await;
    assert_eq!(st["groups"][0]["inFlight"], 0, "{st}");
    let audit = env
        .get(&format!("/api/v1/projects/{}/audit", p.pid))
        .await
        .1;
    assert!(
        audit_actions(&audit).contains(&"consumer_group.purge"),
        "{audit}"
    );
    env.stop().await;
}

#[tokio::test]
async fn lookups_show_dead_lettered_and_expired_messages_and_list_a_devices_messages() {
    let env = TestServer::builder()
        .config("[delivery]\nretention_amqp = \"1h\"\nexpired_trace = \"1h\"\n")
        .start()
        .await;
    let p = env.project("Home").await;
    let sent = produce(&env, &p, 6).await;
    // The consumer rejects the first message.
    let mut c = AmqpPeer::Python.spawn(&app_key_args(
        &env,
        &p,
        &["--count", "1", "--disposition", "reject"],
    ));
    let m = c.next_event("message").await;
    c.next_event("exit").await;
    let rejected = m["messageId"].as_str().unwrap().to_owned();
    assert_eq!(rejected, sent[0].0);
    env.wait_stat(&p.pid, &p.app_key, "deadLetters", 1).await;
    let v = group_state(&env, &p, &rejected).await;
    assert_eq!(v["groups"][0]["state"], "deadLettered", "{v}");
    assert_eq!(v["groups"][0]["attempts"], 1, "{v}");
    assert!(v["groups"][0]["deadLetteredAt"].is_number(), "{v}");
    // The others were prefetched (credit 10) and released when the link closed.
    let v = group_state(&env, &p, &sent[1].0).await;
    assert_eq!(v["groups"][0]["state"], "retryWaiting", "{v}");
    assert_eq!(v["groups"][0]["attempts"], 1, "{v}");

    // A device's messages, newest first, paged.
    let dev = &p.devices[1].iot;
    let (s, page) = env
        .get(&format!(
            "/api/v1/projects/{}/messages?iotId={dev}&limit=1",
            p.pid
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(
        page["messages"][0]["messageId"],
        sent[4].0.as_str(),
        "{page}"
    );
    let next = page["nextBeforeSeq"].as_u64().unwrap();
    let (_, page2) = env
        .get(&format!(
            "/api/v1/projects/{}/messages?productKey={}&deviceName={}&beforeSeq={next}&limit=5",
            p.pid, p.pk, p.devices[1].dn
        ))
        .await;
    let ids: Vec<&str> = page2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [sent[1].0.as_str()], "{page2}");
    assert!(page2.get("nextBeforeSeq").is_none(), "{page2}");
    // A time range that excludes them.
    let (_, none) = env
        .get(&format!(
            "/api/v1/projects/{}/messages?iotId={dev}&from={}&to={}",
            p.pid,
            sent[5].1 + 1,
            sent[5].1 + 10
        ))
        .await;
    assert_eq!(none["messages"], json!([]), "{none}");

    // Past retention (1 h): the lookup says expired while its trace lasts.
    env.clock.advance_ms(3_600_000 + 2_000);
    // (The backlog's tick, every few hundred ms, expires it.)
    iotsync_testkit::wait_for("the message to expire", async || {
        let v = env
            .get(&format!(
                "/api/v1/projects/{}/messages/{}",
                p.pid, sent[2].0
            ))
            .await
            .1;
        v["groups"][0]["state"] == "expired"
    })
    .await;
    let v = group_state(&env, &p, &sent[2].0).await;
    assert_eq!(v["expired"], true, "{v}");
    // After its trace time it is gone.
    env.clock.advance_ms(3_600_000 + 2_000);
    iotsync_testkit::wait_for("the trace to go", async || {
        env.get(&format!(
            "/api/v1/projects/{}/messages/{}",
            p.pid, sent[2].0
        ))
        .await
        .0 == StatusCode::NOT_FOUND
    })
    .await;
    env.stop().await;
}

#[tokio::test]
async fn bad_operations_get_clear_errors_and_change_nothing() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    produce(&env, &p, 3).await;
    let seek = seek_path(&p, &p.app_key, "seek");
    let future = env.now() + 60_000;
    assert_error(
        &env.post(&seek, json!({"from": future})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("from"),
    );
    assert_error(
        &env.post(&seek, json!({"from": "yesterday"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("from"),
    );
    assert_error(
        &env.post(&seek, json!({})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("from"),
    );
    assert_error(
        &env.post(&seek, json!({"from": 0, "extra": 1})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("extra"),
    );
    assert_error(
        &env.post(&seek_path(&p, "nosuchgroup", "seek"), json!({"from": 0}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &env.post(&seek_path(&p, "nosuchgroup", "purge"), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // A purge confirmed for more than the group owes is refused.
    assert_error(
        &env.post(
            &seek_path(&p, &p.app_key, "purge"),
            json!({"expectedStacked": 99}),
        )
        .await,
        StatusCode::CONFLICT,
        "purge.count_changed",
        Some("expectedStacked"),
    );
    let st = env.stats(&p.pid).await;
    assert_eq!(st["groups"][0]["stacked"], 3, "nothing changed: {st}");
    assert_eq!(st["groups"][0]["droppedTotal"], 0, "{st}");
    // Lookups.
    let base = format!("/api/v1/projects/{}/messages", p.pid);
    assert_error(
        &env.get(&format!("{base}/no%20such")).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("messageId"),
    );
    assert_error(
        &env.get(&format!("{base}/unknown0123")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    assert_error(
        &env.get(&base).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("iotId"),
    );
    let dev = &p.devices[0].iot;
    assert_error(
        &env.get(&format!("{base}?iotId={dev}&limit=0")).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("limit"),
    );
    assert_error(
        &env.get(&format!("{base}?iotId={dev}&from=10&to=5")).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("from"),
    );
    assert_error(
        &env.get(&format!("{base}?iotId=nosuchdevice")).await,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    );
    // The settings.
    let settings = format!("/api/v1/projects/{}/sync/backlog-settings", p.pid);
    assert_eq!(env.get(&settings).await.1["keepAcknowledged"], true);
    assert_error(
        &env.put(&settings, json!({"keepAcknowledged": "yes"})).await,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("keepAcknowledged"),
    );
    let r = env.put(&settings, json!({"keepAcknowledged": false})).await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(env.get(&settings).await.1["keepAcknowledged"], false);
    assert_eq!(env.stats(&p.pid).await["groups"][0]["stacked"], 3);
    env.stop().await;
}

#[tokio::test]
async fn a_grpcio_consumer_acking_deliveries_a_purge_dropped_keeps_its_stream() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    produce(&env, &p, 2).await;
    // It holds everything it gets (the lifecycle message and the two reports).
    let mut peer = grpcio(&env, &p, &["--ack-first", "0", "--ack-held-on-stdin"]);
    peer.collect("message", 3).await;
    let r = env
        .post(&seek_path(&p, &p.app_key, "purge"), json!({}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["inFlight"], 3, "{}", r.1);
    // Its acks of the purged deliveries are no longer leases: ignored, stream open.
    peer.send(&json!("ack"));
    peer.collect("acked", 3).await;
    let after = produce(&env, &p, 1).await;
    let m = peer.next_event("message").await;
    assert_eq!(m["messageId"], after[0].0.as_str(), "{m}");
    assert!(!peer.saw("status"), "the stream ended");
    let st = env.stats(&p.pid).await;
    assert_eq!(st["groups"][0]["droppedTotal"], 3, "{st}");
    assert_eq!(st["groups"][0]["ackedTotal"], 0, "{st}");
    env.stop().await;
}
