//! Three nodes on one PostgreSQL schema and one NATS JetStream backlog (issue 13): a
//! device reporting over MQTT (paho) to node 1 reaches a python-qpid-proton consumer on
//! node 2, in the device's order, with its online status first. The test starts its own
//! `nats-server -js` on a free port; PostgreSQL and nats-server are required (a missing
//! one fails the test, never skips it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use serde_json::{json, Value};

use iotsync_backlog::NatsTestServer;
use iotsync_testkit::peers::{self, app_key_args, AmqpPeer};
use iotsync_testkit::{pg, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_report_on_node_1_reaches_an_amqp_consumer_on_node_2() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let (url, schema) = pg::create_schema("cluster_js").await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (u, n) = (url.clone(), nats.url());
        nodes.push(
            TestServer::builder()
                .overrides(move |o| {
                    o.store_url = Some(u);
                    o.backlog_url = Some(n);
                })
                .start()
                .await,
        );
    }
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let p = n1.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();

    // The consumer on node 2: the device's online status, property post and event.
    let mut c = AmqpPeer::Python.spawn(&app_key_args(n2, &p, &[]));
    c.next_event("opened").await;
    let mut paho = peers::paho(n1, &p.pk, &dev, "post", &[]);
    let puback = paho.next_event("puback").await;
    assert_eq!(puback["acked"], true, "{puback}");

    let mut topics = Vec::new();
    let mut got: Vec<Value> = Vec::new();
    while !topics
        .iter()
        .any(|t: &String| t.ends_with("/thing/event/Alarm/post"))
    {
        let m = c.next_event("message").await;
        let t = m["topic"].as_str().unwrap_or_default().to_owned();
        // The registry's own changes (the device's creation…) may come first.
        if t.starts_with(&format!("/{}/lamp0001/", p.pk)) && !t.ends_with("/thing/lifecycle") {
            topics.push(t);
            got.push(m);
        }
    }
    let suffixes: Vec<&str> = topics
        .iter()
        .map(|t| t.rsplit_once("/lamp0001/").map(|(_, s)| s).unwrap_or(""))
        .collect();
    assert_eq!(
        suffixes,
        vec![
            "mqtt/status",
            "thing/event/property/post",
            "thing/event/Alarm/post"
        ],
        "in the device's order, through another node: {got:?}"
    );
    assert_eq!(got[0]["payload"]["action"], "online", "{}", got[0]);
    assert_eq!(
        got[1]["payload"]["items"]["Brightness"]["value"],
        json!(42),
        "{}",
        got[1]
    );
    paho.finish().await;
    drop(c);
    for n in nodes {
        n.stop().await;
    }
    pg::drop_schema(&schema).await;
}
