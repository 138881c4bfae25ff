//! Legacy HTTP push (SPEC §8) against a receiver nobody here wrote: Python's
//! `http.server`, checking the MD5 sign itself. The retry schedule (10 s, 30 s, …) runs on
//! the server's manual clock, so no test waits for minutes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use serde_json::{json, Value};

use iotsync_server::channels::webhook::{LEGACY_GROUP, LEGACY_SCHEDULE_SECS};
use iotsync_server::delivery::ChannelKind;

use iotsync_testkit::peers::{grpcio, receiver};
use iotsync_testkit::{PeerProc, TestServer};

async fn push(r: &mut PeerProc) -> Value {
    let v = r.next_event("push").await;
    assert_eq!(v["signOk"], true, "{v}");
    v
}

/// No further push arrives within `ms` of real time.
async fn quiet(r: &mut PeerProc, ms: u64) {
    if let Some(v) = r.line_within(Duration::from_millis(ms)).await {
        panic!("unexpected: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_answered_500_then_200_is_retried_after_10_seconds_then_delivered() {
    let env = TestServer::start().await;
    let (mut rx, url) = receiver("31415926", "imported-secret-1", "500,200").await;
    let p = env
        .import(
            "31415926",
            "imported-secret-1",
            "none",
            "legacy_http",
            Some(&url),
        )
        .await;
    env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
    let ident = env.add_user(&p.pid, "ann").await;

    let first = push(&mut rx).await;
    assert_eq!(first["status"], 500);
    assert_eq!(first["msgCode"], "account.create");
    assert_eq!(first["path"], "/iot/push");
    let msg: Value = serde_json::from_str(first["message"].as_str().unwrap()).unwrap();
    assert_eq!(msg["identityId"], ident.as_str());
    assert_eq!(msg["action"], "create");

    // The failed push is back in the group, waiting for the group's retry policy.
    env.wait_stat(&p.pid, LEGACY_GROUP, "retryWaiting", 1).await;
    // Not before 10 s (by the platform's clock)…
    env.clock.advance_ms(9_000);
    quiet(&mut rx, 300).await;
    // …then again, with the same content.
    env.clock.advance_ms(1_000);
    let second = push(&mut rx).await;
    assert_eq!(second["status"], 200);
    assert_eq!(second["message"], first["message"]);
    env.wait_stat(&p.pid, LEGACY_GROUP, "stacked", 0).await;
    env.clock.advance_ms(3_600_000);
    quiet(&mut rx, 300).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_right_after_a_mixed_import_is_pushed() {
    // Issue 12's race: the legacy group used to exist only from the pusher's first
    // attach, some 300 ms after the import answered, and what came before was lost.
    let env = TestServer::start().await;
    let (mut rx, url) = receiver("11235813", "imported-secret-6", "200").await;
    let p = env
        .import(
            "11235813",
            "imported-secret-6",
            "http2",
            "legacy_http",
            Some(&url),
        )
        .await;
    // No waiting for the pusher: the user comes at once.
    let ident = env.add_user(&p.pid, "fay").await;
    let v = push(&mut rx).await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["msgCode"], "account.create");
    let msg: Value = serde_json::from_str(v["message"].as_str().unwrap()).unwrap();
    assert_eq!(msg["identityId"], ident.as_str());
    env.wait_stat(&p.pid, LEGACY_GROUP, "stacked", 0).await;
    let st = env.group_stats(&p.pid, LEGACY_GROUP).await;
    assert_eq!(st["appendedTotal"], 1, "{st}");
    // The default group (device data only) never saw it.
    let st = env.group_stats(&p.pid, &p.app_key).await;
    assert_eq!(st["appendedTotal"], 0, "{st}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_never_answered_200_is_dead_lettered_after_16_pushes() {
    let env = TestServer::start().await;
    let (mut rx, url) = receiver("27182818", "imported-secret-2", "500").await;
    let p = env
        .import(
            "27182818",
            "imported-secret-2",
            "none",
            "legacy_http",
            Some(&url),
        )
        .await;
    env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
    env.add_user(&p.pid, "bob").await;
    let mut message = Value::Null;
    for n in 1..=16usize {
        let v = push(&mut rx).await;
        assert_eq!(v["n"], n);
        assert_eq!(v["status"], 500);
        if n == 1 {
            message = v["message"].clone();
        }
        assert_eq!(v["message"], message);
        if n < 16 {
            // Released by the pusher: the backlog schedules the next push from then.
            env.wait_stat(&p.pid, LEGACY_GROUP, "retryWaiting", 1).await;
            env.clock
                .advance_ms(LEGACY_SCHEDULE_SECS[n - 1] as i64 * 1000);
        }
    }
    env.wait_stat(&p.pid, LEGACY_GROUP, "deadLetters", 1).await;
    env.wait_stat(&p.pid, LEGACY_GROUP, "stacked", 0).await;
    env.clock.advance_ms(2 * 3_600_000);
    quiet(&mut rx, 300).await;
    let (s, dl) = env
        .get(&format!("/api/v1/projects/{}/sync/dead-letters", p.pid))
        .await;
    assert_eq!(s, 200, "{dl}");
    assert!(dl.to_string().contains("/lifecycle"), "{dl}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_counts_as_a_failed_push_and_a_new_url_is_used() {
    let env = TestServer::start().await;
    // Nobody listens at the imported URL.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/push", l.local_addr().unwrap())
    };
    let p = env
        .import(
            "16180339",
            "imported-secret-3",
            "none",
            "legacy_http",
            Some(&dead),
        )
        .await;
    env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
    env.add_user(&p.pid, "cat").await;
    env.wait_stat(&p.pid, LEGACY_GROUP, "retryWaiting", 1).await;
    let (mut rx, url) = receiver("16180339", "imported-secret-3", "200").await;
    let (s, v) = env
        .put(
            &format!("/api/v1/projects/{}/sync/legacy", p.pid),
            json!({ "url": url }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Give the engine a moment to pick up the URL, then let the 10 s retry fall due.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    env.clock.advance_ms(10_000);
    let v = push(&mut rx).await;
    assert_eq!(v["status"], 200);
    assert_eq!(v["msgCode"], "account.create");
    env.wait_stat(&p.pid, LEGACY_GROUP, "stacked", 0).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_projects_push_user_data_to_the_webhook_and_stream_device_data_over_http2() {
    let env = TestServer::start().await;
    let (mut rx, url) = receiver("14142135", "imported-secret-4", "200").await;
    let mut p = env
        .import(
            "14142135",
            "imported-secret-4",
            "http2",
            "legacy_http",
            Some(&url),
        )
        .await;
    env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
    env.add_device(&mut p, "lamp0001").await;
    let ident = env.add_user(&p.pid, "dan").await;
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/bindings", p.pid),
            json!({"identityId": ident, "iotId": p.iot(), "owned": 1}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    env.reports(&p, 1).await;

    // User data: account + binding, over the legacy push only.
    let a = push(&mut rx).await;
    let b = push(&mut rx).await;
    let mut codes = [
        a["msgCode"].as_str().unwrap(),
        b["msgCode"].as_str().unwrap(),
    ];
    codes.sort();
    assert_eq!(codes, ["account.create", "user.binding.bind"]);

    // Device data: lifecycle + property report, over HTTP/2 only.
    let mut g = grpcio(&env, &p, &["--max", "2"]);
    let lines = g.collect("message", 2).await;
    g.next_event("done").await;
    let topics: Vec<&str> = lines
        .iter()
        .filter(|v| v["event"] == "message")
        .map(|v| v["topic"].as_str().unwrap())
        .collect();
    assert!(
        topics.iter().any(|t| t.ends_with("/thing/lifecycle")),
        "{topics:?}"
    );
    assert!(
        topics.iter().any(|t| t.ends_with("/property/post")),
        "{topics:?}"
    );
    // Routing at append: the default group took the device data only (lifecycle and
    // report), the legacy group the user data only (account and binding).
    let st = env.group_stats(&p.pid, &p.app_key).await;
    assert_eq!(st["appendedTotal"], 2, "{st}");
    let st = env.group_stats(&p.pid, LEGACY_GROUP).await;
    assert_eq!(st["appendedTotal"], 2, "{st}");
    // A delivery still in flight when the client half-closed goes back to the group
    // (at-least-once) and waits for the next consumer; what the client acknowledged
    // never does.
    let mut st = env.group_stats(&p.pid, &p.app_key).await;
    for _ in 0..100 {
        if st["stacked"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = env.group_stats(&p.pid, &p.app_key).await;
    }
    if st["stacked"] != 0 {
        let received: Vec<&str> = lines
            .iter()
            .filter(|v| v["event"] == "message")
            .map(|v| v["messageId"].as_str().unwrap())
            .collect();
        let left = env
            .server()
            .backlog()
            .lease(
                &p.pid.parse().unwrap(),
                &p.app_key.parse().unwrap(),
                iotsync_backlog::ConsumerId(u64::MAX),
                10,
            )
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "{st}");
        for d in &left {
            let id = d.message.envelope.message_id.as_str();
            assert!(
                !received.contains(&id),
                "an acknowledged message came back: {id}"
            );
        }
        env.server()
            .backlog()
            .consumer_gone(iotsync_backlog::ConsumerId(u64::MAX))
            .await
            .unwrap();
    }
    quiet(&mut rx, 300).await;

    // Rules: a mixed project cannot switch; it must disable and enable one method.
    let base = format!("/api/v1/projects/{}/sync", p.pid);
    let (s, e) = env
        .post(&format!("{base}/switch"), json!({"method": "amqp"}))
        .await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["code"], "sync.mixed_must_reenable");
    env.post(&format!("{base}/disable"), json!({})).await;
    let (s, e) = env
        .post(&format!("{base}/enable"), json!({"method": "legacy_http"}))
        .await;
    assert_eq!(s, 409, "{e}");
    assert_eq!(e["code"], "sync.legacy_retired");
    let (s, v) = env
        .post(&format!("{base}/enable"), json!({"method": "http2"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["mode"], "single");
    // The pusher is gone; user data now travels over HTTP/2.
    for _ in 0..100 {
        if !env.has_consumer(&p.pid, ChannelKind::Webhook) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!env.has_consumer(&p.pid, ChannelKind::Webhook));
    env.add_user(&p.pid, "eve").await;
    // The default group takes everything again; a device-data delivery left in flight
    // by the earlier client may come first.
    let mut g = grpcio(&env, &p, &[]);
    loop {
        let m = g.next_event("message").await;
        let topic = m["topic"].as_str().unwrap();
        if topic.starts_with("/_account/") {
            break;
        }
        assert!(
            topic.ends_with("/property/post") || topic.ends_with("/thing/lifecycle"),
            "{m}"
        );
    }
    drop(g);
    quiet(&mut rx, 300).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_push_cannot_be_enabled_again_once_disabled() {
    let env = TestServer::start().await;
    let (mut rx, url) = receiver("17320508", "imported-secret-5", "200").await;
    let p = env
        .import(
            "17320508",
            "imported-secret-5",
            "none",
            "legacy_http",
            Some(&url),
        )
        .await;
    env.wait_consumer(&p.pid, ChannelKind::Webhook).await;
    let base = format!("/api/v1/projects/{}/sync", p.pid);
    env.post(&format!("{base}/disable"), json!({})).await;
    for method in ["legacy_http", "legacy"] {
        let (s, e) = env
            .post(&format!("{base}/enable"), json!({ "method": method }))
            .await;
        assert_eq!(s, 409, "{e}");
        assert_eq!(e["code"], "sync.legacy_retired");
        assert!(e["message"].as_str().unwrap().contains("never"), "{e}");
    }
    let (s, e) = env
        .put(&format!("{base}/legacy"), json!({ "url": url }))
        .await;
    assert_eq!(s, 409, "{e}");
    // Nothing is pushed any more.
    for _ in 0..100 {
        if !env.has_consumer(&p.pid, ChannelKind::Webhook) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(!env.has_consumer(&p.pid, ChannelKind::Webhook));
    env.add_user(&p.pid, "fay").await;
    quiet(&mut rx, 500).await;
    env.stop().await;
}
