//! The AMQP connection threads (`amqp.io_threads`, ADR 0003): as many as configured,
//! connections spread over them, and none left once the server has shut down. Alone in
//! its test binary, so the threads counted by name are this server's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use iotsync_sdk::amqp::AmqpConsumer;
use iotsync_testkit::{TestServer, WAIT};

/// Threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Waits until `n` such threads exist: a thread names itself once it runs, and leaves
/// `/proc` a moment after it said it finished (a deadline only to fail, not to time).
async fn until_threads(prefix: &str, n: usize) {
    let give_up = Instant::now() + WAIT;
    while threads_named(prefix) != n {
        assert!(
            Instant::now() < give_up,
            "{} threads named {prefix}*, want {n}",
            threads_named(prefix)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_share_the_configured_threads_and_the_threads_end_with_the_server() {
    let env = TestServer::builder()
        .config("[amqp]\nio_threads = 3\n")
        .start()
        .await;
    until_threads("iotsync-amqp-", 3).await;
    let p = env.project("Home").await;
    let mut consumers = Vec::new();
    for i in 0..3 {
        let c = AmqpConsumer::builder()
            .endpoint(env.amqp_url())
            .app_key(p.app_key.clone())
            .app_secret(p.app_secret.clone())
            .client_id(format!("c{i}"))
            .credit(10)
            .clock(Arc::new(env.clock.clone()))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        consumers.push(c);
    }
    let n = 30;
    for i in 0..n {
        env.report_on(&p, i % 3, json!({"Counter": i})).await;
    }
    // Every message once, whichever thread its consumer's connection runs on.
    let mut seen = HashSet::new();
    let give_up = Instant::now() + WAIT;
    while seen.len() < n {
        assert!(Instant::now() < give_up, "{} of {n} received", seen.len());
        for c in &mut consumers {
            if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(50), c.next()).await
            {
                assert!(
                    seen.insert(m.envelope.message_id.to_string()),
                    "delivered twice"
                );
                m.ack().await.unwrap();
            }
        }
    }
    // Shutdown closes the connections (the clients are still attached) and waits for
    // the threads to finish their teardown.
    env.stop().await;
    assert_eq!(
        threads_named("iotsync-amqp-"),
        0,
        "connection threads left running"
    );
    drop(consumers);
}
