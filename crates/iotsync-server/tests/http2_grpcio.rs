//! The HTTP/2 channel against a client nobody here wrote: Python grpcio with stubs
//! generated at test time from the published `.proto`, signing its metadata itself.
//! A missing peer (python3, grpcio, grpcio-tools) fails these tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use iotsync_testkit::peers::{grpcio, payload_of};
use iotsync_testkit::{repo_root, PeerProc, TestServer};

fn ids(lines: &[Value], event: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|v| v["event"] == event)
        .map(|v| v["messageId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_receives_property_event_lifecycle_account_and_binding_messages_and_acks() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.produce_each_kind(&p).await;
    let mut peer = grpcio(&env, &p, &["--max", "5"]);
    let lines = peer.collect("message", 5).await;
    peer.next_event("done").await;
    let msgs: Vec<&Value> = lines.iter().filter(|v| v["event"] == "message").collect();
    let topics: Vec<&str> = msgs.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    let dn = "lamp0001";
    for want in [
        format!("/{}/{dn}/thing/lifecycle", p.pk),
        format!("/{}/{dn}/thing/event/property/post", p.pk),
        format!("/{}/{dn}/thing/event/Overheat/post", p.pk),
        format!("/{}/{dn}/thing/user/binding", p.pk),
    ] {
        assert!(topics.contains(&want.as_str()), "{want} not in {topics:?}");
    }
    assert!(
        topics
            .iter()
            .any(|t| t.starts_with("/_account/") && t.ends_with("/lifecycle")),
        "{topics:?}"
    );
    for m in &msgs {
        let payload: Value = serde_json::from_slice(&payload_of(m)).unwrap();
        assert!(payload.is_object(), "{payload}");
        assert!(m["generateTime"].as_i64().unwrap() > 0);
        assert_eq!(m["attempt"], 1);
    }
    let prop = msgs
        .iter()
        .find(|m| m["topic"].as_str().unwrap().ends_with("/property/post"))
        .unwrap();
    let payload: Value = serde_json::from_slice(&payload_of(prop)).unwrap();
    assert_eq!(payload["items"]["LightSwitch"]["value"], 1);
    assert_eq!(payload["iotId"], p.iot());

    // Every ack counted: nothing stacked for the default group.
    let mut stacked = Value::Null;
    for _ in 0..50 {
        stacked = env.group_stats(&p.pid, &p.app_key).await["stacked"].clone();
        if stacked == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stacked, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_failure_is_redelivered_with_the_same_message_id() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.reports(&p, 2).await;
    // The lifecycle message and two reports; the first delivery is refused.
    let mut peer = grpcio(&env, &p, &["--fail-first", "1", "--max", "3"]);
    let failed = peer.next_event("acked").await;
    assert_eq!(failed["success"], false);
    let id = failed["messageId"].as_str().unwrap().to_owned();
    // The backlog's retry backoff (1 s ± 20 %) runs on the manual clock, from the nack.
    env.wait_stat(&p.pid, &p.app_key, "retryWaiting", 1).await;
    env.clock.advance_ms(2_000);
    let mut lines = Vec::new();
    loop {
        let v = peer.next().await;
        if v["event"] == "done" {
            break;
        }
        lines.push(v);
    }
    let again = lines
        .iter()
        .find(|v| v["event"] == "message" && v["messageId"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not redelivered: {lines:?}"));
    assert_eq!(again["attempt"], 2);
    assert_eq!(
        ids(&lines, "acked")
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len(),
        3
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_stale_random_and_unknown_app_key_are_unauthenticated() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    let cases: [(&str, Vec<&str>); 3] = [
        ("bad signature", vec!["--bad-sign"]),
        ("stale random", vec!["--random-offset-ms", "-1000000"]),
        ("unknown appKey", vec![]),
    ];
    for (what, extra) in cases {
        let mut p2 = p.clone();
        if what == "unknown appKey" {
            p2.app_key = "99999999".into();
        }
        let mut peer = grpcio(&env, &p2, &extra);
        let st = peer.next_event("status").await;
        assert_eq!(st["code"], "UNAUTHENTICATED", "{what}: {st}");
        let details = st["details"].as_str().unwrap();
        if what == "stale random" {
            assert!(details.contains("x-auth-param-random"), "{details}");
        } else {
            assert!(details.contains("authentication failed"), "{details}");
        }
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_in_flight_messages_reach_the_next_client() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.reports(&p, 4).await;
    // Holds what it gets unacknowledged (one message: per device, the next waits for
    // it), then dies without a word.
    let mut first = grpcio(&env, &p, &["--ack-first", "0"]);
    let held = first.next_event("message").await["messageId"]
        .as_str()
        .unwrap()
        .to_owned();
    first.kill();
    let mut second = grpcio(&env, &p, &["--max", "5"]);
    let lines = second.collect("message", 5).await;
    second.next_event("done").await;
    let got: BTreeSet<String> = ids(&lines, "message").into_iter().collect();
    assert_eq!(got.len(), 5);
    assert!(got.contains(&held), "{held} not in {got:?}");
    let redelivered = lines
        .iter()
        .find(|v| v["event"] == "message" && v["messageId"] == held.as_str())
        .unwrap();
    assert_eq!(redelivered["attempt"], 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_ends_the_stream_with_a_reason_and_reenabling_needs_a_new_connection() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    let mut peer = grpcio(&env, &p, &["--ack-first", "1"]);
    peer.next_event("acked").await;
    let base = format!("/api/v1/projects/{}/sync", p.pid);
    env.post(&format!("{base}/disable"), json!({})).await;
    let st = peer.next_event("status").await;
    assert_eq!(st["code"], "FAILED_PRECONDITION", "{st}");
    assert!(
        st["details"].as_str().unwrap().starts_with("sync.disabled"),
        "{st}"
    );

    // While disabled, a new connection is refused with the reason.
    let mut refused = grpcio(&env, &p, &[]);
    let st = refused.next_event("status").await;
    assert_eq!(st["code"], "FAILED_PRECONDITION", "{st}");
    assert!(
        st["details"].as_str().unwrap().contains("not enabled"),
        "{st}"
    );

    // Enabled again: the old stream stays closed; a new connection gets new messages.
    let (s, v) = env
        .post(&format!("{base}/enable"), json!({"method": "http2"}))
        .await;
    assert_eq!(s, 200, "{v}");
    env.reports(&p, 1).await;
    let mut again = grpcio(&env, &p, &["--max", "1"]);
    let m = again.next_event("message").await;
    assert!(
        m["topic"].as_str().unwrap().ends_with("/property/post"),
        "{m}"
    );
    again.next_event("done").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_of_one_group_share_and_groups_each_get_everything() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    // Named group first, so it exists before the messages are produced.
    let mut g2 = grpcio(&env, &p, &["--group", "analytics", "--max", "4"]);
    g2.next_event("ready").await;
    let mut tries = 0;
    while env.group_stats(&p.pid, "analytics").await.is_null() {
        tries += 1;
        assert!(tries < 100, "group analytics never created");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    env.reports(&p, 4).await;
    let mut d = grpcio(&env, &p, &["--max", "5"]);
    let a = d.collect("message", 5).await;
    let b = g2.collect("message", 4).await;
    let a: HashMap<String, Vec<u8>> = a
        .iter()
        .filter(|v| v["event"] == "message")
        .map(|v| (v["messageId"].as_str().unwrap().to_owned(), payload_of(v)))
        .collect();
    for v in b.iter().filter(|v| v["event"] == "message") {
        let id = v["messageId"].as_str().unwrap();
        assert_eq!(a.get(id), Some(&payload_of(v)), "{id}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_grpcio_with_the_development_certificate() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    let target = env.server().addr("http2-tls").unwrap().to_string();
    let root = repo_root();
    let ca = env.server().tls.cert_file.to_string_lossy().into_owned();
    let args: Vec<String> = [
        root.join("tests/peers/grpc/consumer.py")
            .to_string_lossy()
            .into_owned(),
        "--target".into(),
        target,
        "--proto-root".into(),
        root.join("proto").to_string_lossy().into_owned(),
        "--app-key".into(),
        p.app_key.clone(),
        "--app-secret".into(),
        p.app_secret.clone(),
        "--ca".into(),
        ca,
        "--max".into(),
        "1".into(),
    ]
    .into();
    let mut peer = PeerProc::command("grpcio-tls", "python3", &args);
    let m = peer.next_event("message").await;
    assert!(
        m["topic"].as_str().unwrap().ends_with("/thing/lifecycle"),
        "{m}"
    );
    peer.next_event("done").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_group_collects_before_its_first_consumer_connects() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/consumer-groups", p.pid),
            json!({"name": "crm", "dataClasses": ["user"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Produced while nobody of the group has ever connected: a report, an event, an
    // account and a binding; the group takes the last two.
    env.produce_each_kind(&p).await;
    let mut peer = grpcio(&env, &p, &["--group", "crm", "--max", "2"]);
    let lines = peer.collect("message", 2).await;
    peer.next_event("done").await;
    let mut topics: Vec<&str> = lines
        .iter()
        .filter(|v| v["event"] == "message")
        .map(|v| v["topic"].as_str().unwrap())
        .collect();
    topics.sort();
    assert!(topics[0].starts_with("/_account/"), "{topics:?}");
    assert!(topics[1].ends_with("/thing/user/binding"), "{topics:?}");
    env.wait_stat(&p.pid, "crm", "ackedTotal", 2).await;
    let st = env.group_stats(&p.pid, "crm").await;
    assert_eq!(st["appendedTotal"], 2, "{st}");
    env.stop().await;
}
