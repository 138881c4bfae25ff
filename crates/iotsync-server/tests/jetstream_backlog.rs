//! A server whose backlog is NATS JetStream (`backlog.url`): a report through the REST
//! ingest reaches a python-qpid-proton AMQP consumer, the node keeps no messages on its
//! disk, and operations the engine does not have answer 501 with a stable code. The
//! test starts its own `nats-server -js` on a free port and fails if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use reqwest::StatusCode;
use serde_json::json;

use iotsync_backlog::NatsTestServer;
use iotsync_testkit::peers::{app_key_args, AmqpPeer};
use iotsync_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_reaches_a_proton_consumer_through_the_jetstream_backlog() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let env = TestServer::builder()
        .overrides(|o| o.backlog_url = Some(nats.url()))
        .start()
        .await;
    let p = env.project("Home").await;
    let mut c = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &["--count", "2"]));
    c.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    env.report(&p, json!({"LightSwitch": 0})).await;
    let m1 = c.next_event("message").await;
    let m2 = c.next_event("message").await;
    assert_eq!(
        m1["topic"],
        format!("/{}/{}/thing/event/property/post", p.pk, p.dn()),
        "{m1}"
    );
    assert_eq!(m1["generateTime"], json!(env.now()), "{m1}");
    // One device: in production order.
    assert_eq!(m1["payload"]["items"]["LightSwitch"]["value"], 1, "{m1}");
    assert_eq!(m2["payload"]["items"]["LightSwitch"]["value"], 0, "{m2}");
    c.next_event("done").await;
    c.next_event("exit").await;

    // Accepted: the group owes nothing; the node stored no message of its own.
    env.rest()
        .stats_until(&p.pid, |s| {
            s["groups"][0]["stacked"] == 0 && s["groups"][0]["ackedTotal"] == 2
        })
        .await;
    let data_dir = &env.server().data_dir;
    assert!(
        !data_dir.join("backlog").exists(),
        "no backlog directory under {}",
        data_dir.display()
    );

    // Seek is not there yet on this engine: a stable 501, not a pretend answer.
    let (s, v) = env
        .post(
            &format!(
                "/api/v1/projects/{}/consumer-groups/{}/seek",
                p.pid, p.app_key
            ),
            json!({"from": env.now() - 60_000}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED, "{v}");
    assert_eq!(v["code"], "backlog.unsupported", "{v}");
    env.stop().await;
}
