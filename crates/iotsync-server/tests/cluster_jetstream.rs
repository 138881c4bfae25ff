//! Three nodes on one PostgreSQL schema and one NATS JetStream backlog (issue 13): a
//! device reporting over MQTT (paho) to node 1 reaches a grpcio consumer of a declared
//! group on node 3 and a python-qpid-proton consumer on node 2, in the device's order;
//! a device moving between nodes is taken over, and downlinks reach it from any node. The test starts its own
//! `nats-server -js` on a free port; PostgreSQL and nats-server are required (a missing
//! one fails the test, never skips it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use serde_json::{json, Value};

use iotsync_backlog::NatsTestServer;
use iotsync_testkit::peers::{self, app_key_args, AmqpPeer};
use iotsync_testkit::{pg, TestServer};

/// `n` nodes on one fresh PostgreSQL schema and one fresh `nats-server -js`.
struct Cluster {
    nodes: Vec<TestServer>,
    schema: String,
    _nats: NatsTestServer,
}

async fn cluster(n: usize) -> Cluster {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let (url, schema) = pg::create_schema("cluster_js").await;
    let mut nodes = Vec::new();
    for _ in 0..n {
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
    Cluster {
        nodes,
        schema,
        _nats: nats,
    }
}

impl Cluster {
    async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
        pg::drop_schema(&self.schema).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_report_on_node_1_reaches_grpcio_on_node_3_and_proton_on_node_2() {
    let cl = cluster(3).await;
    let (n1, n2, n3) = (&cl.nodes[0], &cl.nodes[1], &cl.nodes[2]);
    let p = n1.synced_project("http2").await;
    let dev = p.devices[0].clone();
    // A group declared on node 3 for the whole cluster, beside the default group.
    let (s, v) = n3
        .post(
            &format!("/api/v1/projects/{}/consumer-groups", p.pid),
            json!({"name": "analytics"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let mut paho = peers::paho(n1, &p.pk, &dev, "post", &[]);
    let puback = paho.next_event("puback").await;
    assert_eq!(puback["acked"], true, "{puback}");
    paho.next_event("done").await;
    paho.finish().await;

    // The group's grpcio consumer on node 3: the device's online status, property post
    // and event, in the device's order.
    let mut g = peers::grpcio(n3, &p, &["--group", "analytics"]);
    g.next_event("ready").await;
    let mut over_http2: Vec<Value> = Vec::new();
    while !over_http2.last().is_some_and(|m| {
        m["topic"]
            .as_str()
            .unwrap()
            .ends_with("/thing/event/Alarm/post")
    }) {
        let mut m = g.next_event("message").await;
        let bytes = peers::payload_of(&m);
        m["payload"] = serde_json::from_slice(&bytes).unwrap();
        over_http2.push(m);
    }
    drop(g);
    assert_eq!(
        device_suffixes(&over_http2),
        [
            "mqtt/status",
            "thing/event/property/post",
            "thing/event/Alarm/post"
        ],
        "in the device's order, through node 3: {over_http2:?}"
    );
    assert_eq!(over_http2[0]["payload"]["action"], "online");
    assert_eq!(
        over_http2[1]["payload"]["items"]["Brightness"]["value"],
        json!(42)
    );

    // Switched to AMQP on node 3, the default group's proton consumer on node 2 gets the
    // same reports: same ids, same payloads, same order.
    let (s, v) = n3
        .post(
            &format!("/api/v1/projects/{}/sync/switch", p.pid),
            json!({"method": "amqp"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut c = AmqpPeer::Python.spawn(&app_key_args(n2, &p, &[]));
    c.next_event("opened").await;
    let mut over_amqp: Vec<Value> = Vec::new();
    while over_amqp.len() < 3 {
        let m = c.next_event("message").await;
        // The registry's own changes (the device's creation) come first.
        if m["topic"].as_str().unwrap().contains("/lamp0001/")
            && !m["topic"].as_str().unwrap().ends_with("/thing/lifecycle")
        {
            over_amqp.push(m);
        }
    }
    drop(c);
    for (h, a) in over_http2.iter().zip(&over_amqp) {
        assert_eq!(h["messageId"], a["messageId"], "{h} / {a}");
        assert_eq!(h["payload"], a["payload"], "{h} / {a}");
    }
    cl.stop().await;
}

/// The part of each message's topic after the device name.
fn device_suffixes(ms: &[Value]) -> Vec<&str> {
    ms.iter()
        .filter_map(|m| m["topic"].as_str())
        .map(|t| t.rsplit_once("/lamp0001/").map_or("", |(_, s)| s))
        .collect()
}

/// MQTT take-over across the cluster and downlinks from any node (ADR 0015): a device on
/// node 1 reconnecting to node 2 ends its node-1 session (offline, then online, in that
/// order); a property set on node 3 and a service call on node 1 reach it on node 2 and
/// their replies become control records; once it is gone, 9201 from every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moving_to_node_2_is_taken_over_and_reached_from_every_node() {
    let cl = cluster(3).await;
    let (n1, n2, n3) = (&cl.nodes[0], &cl.nodes[1], &cl.nodes[2]);
    let p = n1.project_with_devices("Home", &["lamp0001"]).await;
    peers::activate_operations(n1, &p, "thing_model", true).await;
    let dev = p.devices[0].clone();
    let mut c = n3.consumer(&p).await;
    c.until("/thing/lifecycle").await;

    let mut first = peers::paho(n1, &p.pk, &dev, "connect-only", &[]);
    assert_eq!(first.next_event("connack").await["code"], 0);
    first.next_event("ready").await;
    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms.last().unwrap().payload["action"], "online");

    let mut second = peers::paho(n2, &p.pk, &dev, "serve", &[]);
    assert_eq!(second.next_event("connack").await["code"], 0);
    second.next_event("ready").await;
    let gone = first.next_event("disconnected").await;
    assert_eq!(
        gone["value"], true,
        "node 1 ends the session node 2 took: {gone}"
    );
    first.finish().await;
    let mut actions = Vec::new();
    for _ in 0..2 {
        let ms = c.until("/mqtt/status").await;
        actions.push(ms.last().unwrap().payload["action"].clone());
    }
    assert_eq!(actions, vec![json!("offline"), json!("online")]);
    let d = n3
        .server()
        .registry()
        .get_device(&p.pid.parse().unwrap(), &dev.iot.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(d.status.as_str(), "online");

    // A property set through node 3 reaches the device on node 2.
    let t = peers::cloud_token(n3, &p).await;
    let r = peers::cloud_body(
        n3,
        &p,
        "/cloud/thing/properties/set",
        json!({"iotId": dev.iot, "items": {"LightSwitch": 1}}),
        Some(&t),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let rid = r["data"]["requestId"].as_str().unwrap().to_owned();
    let d = second.next_event("downlink").await;
    assert_eq!(d["request"]["id"], rid.as_str(), "{d}");
    let ms = c.until("/thing/downlink/reply/message").await;
    let cr = &ms.last().unwrap().payload;
    assert_eq!(
        (cr["requestId"].as_str(), cr["code"].as_i64()),
        (Some(rid.as_str()), Some(200)),
        "{cr}"
    );

    // A service call through node 1 answers with the device's output.
    let r = peers::cloud_body(
        n1,
        &p,
        "/cloud/thing/service/invoke",
        json!({"iotId": dev.iot, "identifier": "Blink", "args": {"times": 2}}),
        Some(&t),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["output"]["echo"], json!({"times": 2}), "{r}");

    second.finish().await;
    let ms = c.until("/mqtt/status").await;
    assert_eq!(ms.last().unwrap().payload["action"], "offline");
    for node in [n1, n2, n3] {
        let r = peers::cloud_body(
            node,
            &p,
            "/cloud/thing/properties/set",
            json!({"iotId": dev.iot, "items": {"LightSwitch": 0}}),
            Some(&t),
        )
        .await;
        assert_eq!(r["code"], 9201, "offline on every node: {r}");
        let ms = c.until("/thing/downlink/reply/message").await;
        assert_eq!(ms.last().unwrap().payload["code"], 9201);
    }
    drop(c);
    cl.stop().await;
}
