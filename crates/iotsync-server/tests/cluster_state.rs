//! State shared between nodes (issue 13): several in-process servers on one fresh
//! PostgreSQL schema, each with its own embedded backlog. A console session, a cloud
//! nonce or token, failed operator-token attempts and sync transitions made on one node
//! hold on the others. PostgreSQL is required: without it these tests fail, never skip.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use reqwest::{header, StatusCode};
use serde_json::{json, Value};

use iotsync_core::ManualClock;
use iotsync_server::delivery::ChannelKind;
use iotsync_testkit::peers::{app_key_args, cloud_call, AmqpPeer, CloudCall};
use iotsync_testkit::{pg, Project, TestServer, TOKEN};

/// Nodes on one new schema, sharing one manual clock (throttle waits and session expiry
/// are read against it on every node).
struct Cluster {
    nodes: Vec<TestServer>,
    schema: String,
}

async fn cluster(n: usize) -> Cluster {
    let (url, schema) = pg::create_schema("cluster").await;
    let clock = ManualClock::new(iotsync_core::Clock::now_ms(&iotsync_core::SystemClock));
    let mut nodes = Vec::new();
    for _ in 0..n {
        let u = url.clone();
        nodes.push(
            TestServer::builder()
                .clock(clock.clone())
                .overrides(move |o| o.store_url = Some(u))
                .start()
                .await,
        );
    }
    Cluster { nodes, schema }
}

impl Cluster {
    async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
        pg::drop_schema(&self.schema).await;
    }
}

/// Polls `f` until it is true or the deadline passes.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_console_session_made_on_node_1_works_on_node_2_and_sign_out_on_node_2_ends_it() {
    let c = cluster(2).await;
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/console/session", n1.base))
        .json(&json!({"token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = r.json::<Value>().await.unwrap()["csrfToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |node: &TestServer| {
        http.get(format!("{}/api/v1/projects", node.base))
            .header(header::COOKIE, cookie.clone())
            .send()
    };
    assert_eq!(get(n2).await.unwrap().status(), StatusCode::OK);
    // A write on node 2 with the session's CSRF token.
    let r = http
        .post(format!("{}/api/v1/projects", n2.base))
        .header(header::COOKIE, cookie.clone())
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "Made through the console"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let r = http
        .delete(format!("{}/console/session", n2.base))
        .header(header::COOKIE, cookie.clone())
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(get(n1).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(get(n2).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    c.stop().await;
}

/// One signed cloud API call through tests/peers/cloud/call.py; its body.
async fn cloud(
    node: &TestServer,
    p: &Project,
    path: &str,
    params: Value,
    nonce: Option<&str>,
    token: Option<&str>,
) -> Value {
    let o = CloudCall {
        token,
        nonce,
        ..CloudCall::default()
    };
    cloud_call(node, p, path, params, o).await["body"].clone()
}

#[tokio::test]
async fn a_cloud_nonce_used_on_node_1_is_refused_on_node_2_and_a_token_from_node_1_works_there() {
    let c = cluster(2).await;
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let p = n1.project_with_devices("Home", &["lamp0001"]).await;
    let (s, v) = n2
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/{}/api-operations/thing_model", p.pid),
            Some(json!({"activated": true})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let params = json!({"grantType": "project", "res": p.pid});
    let r = cloud(n1, &p, "/cloud/token", params.clone(), Some("n-1"), None).await;
    assert_eq!(r["code"], 200, "{r}");
    let token = r["data"]["cloudToken"].as_str().unwrap().to_owned();
    let r = cloud(n2, &p, "/cloud/token", params, Some("n-1"), None).await;
    assert_eq!(r["code"], 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("Nonce"), "{r}");
    let iot = json!({"iotId": p.devices[0].iot});
    let r = cloud(n2, &p, "/cloud/thing/info/get", iot, None, Some(&token)).await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["deviceName"], "lamp0001");
    c.stop().await;
}

#[tokio::test]
async fn failed_operator_tokens_on_node_1_count_on_node_2() {
    let c = cluster(2).await;
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    let http = reqwest::Client::new();
    let try_token = |node: &TestServer, token: &str| {
        http.get(format!("{}/api/v1/projects", node.base))
            .bearer_auth(token)
            .send()
    };
    let mut throttled = false;
    for _ in 0..50 {
        let s = try_token(n1, "wrong").await.unwrap().status();
        if s == StatusCode::TOO_MANY_REQUESTS {
            throttled = true;
            break;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    assert!(throttled, "node 1 never throttled the guesses");
    // Node 2 saw none of them, yet the address waits there too (even with the right
    // token: a waiting address learns nothing of its guess).
    let r = try_token(n2, TOKEN).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    // After the wait the right token works on node 2.
    n1.clock.advance_ms(10 * 60 * 1000);
    assert_eq!(try_token(n2, TOKEN).await.unwrap().status(), StatusCode::OK);
    c.stop().await;
}

/// A python-qpid-proton consumer on `node`, connected and attached.
async fn amqp_consumer(node: &TestServer, p: &Project) -> iotsync_testkit::peers::PeerProc {
    let mut peer = AmqpPeer::Python.spawn(&app_key_args(node, p, &[]));
    peer.next_event("opened").await;
    node.wait_consumer(&p.pid, ChannelKind::Amqp).await;
    peer
}

/// Waits for the platform to close `peer`; its close description.
async fn closed_with(peer: &mut iotsync_testkit::peers::PeerProc) -> String {
    loop {
        let e = peer.next_event("error").await;
        if let Some(d) = e["description"].as_str() {
            return d.to_owned();
        }
    }
}

#[tokio::test]
async fn disable_on_node_3_closes_the_projects_consumers_on_nodes_1_and_2_and_so_does_a_rotated_secret(
) {
    let c = cluster(3).await;
    let (n1, n2, n3) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    let p = n3.project("Home").await;
    let mut on1 = amqp_consumer(n1, &p).await;
    let mut on2 = amqp_consumer(n2, &p).await;
    n3.post(
        &format!("/api/v1/projects/{}/sync/disable", p.pid),
        json!({}),
    )
    .await;
    for peer in [&mut on1, &mut on2] {
        let d = closed_with(peer).await;
        assert!(d.starts_with("sync.disabled"), "{d}");
    }
    eventually("node 1 and 2 forget the closed consumers", async || {
        !n1.has_consumer(&p.pid, ChannelKind::Amqp) && !n2.has_consumer(&p.pid, ChannelKind::Amqp)
    })
    .await;

    // Enabled again (through node 2), a consumer on node 1 is closed by a rotation on
    // node 2.
    let (s, v) = n2
        .post(
            &format!("/api/v1/projects/{}/sync/enable", p.pid),
            json!({"method": "amqp"}),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let mut again = amqp_consumer(n1, &p).await;
    let (s, v) = n2
        .post(
            &format!("/api/v1/projects/{}/rotate-secret", p.pid),
            json!({}),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let d = closed_with(&mut again).await;
    assert!(d.starts_with("auth.secret_rotated"), "{d}");
    c.stop().await;
}
