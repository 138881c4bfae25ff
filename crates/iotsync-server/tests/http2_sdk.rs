//! The Rust SDK's HTTP/2 consumer against the running server: stream style with acks and
//! commit failures, handler style, and reconnecting by itself after the platform closed
//! the stream (sync disabled, then enabled again).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use serde_json::json;

use iotsync_sdk::backoff::Backoff;
use iotsync_sdk::http2::{Commit, Http2Consumer, Http2Error, Http2Message, Http2MessageStream};

use iotsync_testkit::{Project, TestServer};

fn consumer(env: &TestServer, p: &Project) -> Http2Consumer {
    Http2Consumer::builder()
        .endpoint(format!("http://{}", env.http2_target()))
        .app_key(&p.app_key)
        .app_secret(&p.app_secret)
        .client_id("sdk-test")
        .credit(8)
        .backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(200),
        ))
        .build()
        .unwrap()
}

async fn next(s: &mut Http2MessageStream) -> Result<Http2Message, Http2Error> {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .expect("nothing within 30 s")
        .expect("stream ended")
}

async fn next_message(s: &mut Http2MessageStream) -> Http2Message {
    loop {
        match next(s).await {
            Ok(m) => return m,
            Err(e) => eprintln!("reconnecting after: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_consumer_acks_and_a_commit_failure_comes_back() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.reports(&p, 1).await;
    let c = consumer(&env, &p);
    let mut s = c.stream();
    let first = next_message(&mut s).await;
    assert!(first.envelope.topic.ends_with("/thing/lifecycle"));
    assert_eq!(first.attempt, 1);
    let id = first.envelope.message_id.clone();
    first.fail().await.unwrap();
    // The backlog's retry backoff (1 s ± 20 %) runs on the manual clock, from the nack.
    env.wait_stat(&p.pid, &p.app_key, "retryWaiting", 1).await;
    env.clock.advance_ms(2_000);
    // The device's report may come before the redelivery (the consumer holds the device,
    // so its next message is pipelined; only a redelivery may reorder).
    let (mut again, mut report) = (None, None);
    for _ in 0..2 {
        let m = next_message(&mut s).await;
        if m.envelope.message_id == id {
            again = Some(m);
        } else {
            report = Some(m);
        }
    }
    let (again, report) = (again.expect("no redelivery"), report.expect("no report"));
    assert_eq!(again.attempt, 2);
    again.ack().await.unwrap();
    assert!(report.envelope.topic.ends_with("/property/post"));
    assert_eq!(report.attempt, 1);
    report.ack().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_consumer_reconnects_by_itself_after_sync_is_enabled_again() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    let c = consumer(&env, &p);
    let mut s = c.stream();
    next_message(&mut s).await.ack().await.unwrap();
    let base = format!("/api/v1/projects/{}/sync", p.pid);
    env.post(&format!("{base}/disable"), json!({})).await;
    match next(&mut s).await {
        Err(Http2Error::Disconnected { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.starts_with("sync.disabled"), "{message}");
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    env.post(&format!("{base}/enable"), json!({"method": "http2"}))
        .await;
    env.reports(&p, 1).await;
    let m = next_message(&mut s).await;
    assert!(m.envelope.topic.ends_with("/property/post"));
    m.ack().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handler_style_acks_what_the_handler_commits() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.reports(&p, 2).await;
    let c = consumer(&env, &p);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        c.run(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.topic);
                Commit::Success
            }
        })
        .await
    });
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    for _ in 0..100 {
        if env.group_stats(&p.pid, &p.app_key).await["stacked"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.group_stats(&p.pid, &p.app_key).await["stacked"], 0);
    task.abort();
    env.stop().await;
}
