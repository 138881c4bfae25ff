//! The AMQP channel with the Rust SDK consumer (and Proton where a foreign client
//! matters): access-key logins, TLS with the generated certificate, consumer groups,
//! project isolation, every SPEC §4 message type, closing on disable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use iotsync_sdk::amqp::{AmqpConsumer, AmqpError, AmqpMessage, MessageStream};
use iotsync_testkit::peers::{app_key_args, AmqpPeer};
use iotsync_testkit::{Project, TestServer, WAIT};

fn consumer(env: &TestServer, p: &Project, group: Option<&str>, client: &str) -> AmqpConsumer {
    let mut b = AmqpConsumer::builder()
        .endpoint(env.amqp_url())
        .app_key(p.app_key.clone())
        .app_secret(p.app_secret.clone())
        .client_id(client)
        .credit(50)
        .clock(Arc::new(env.clock.clone()));
    if let Some(g) = group {
        b = b.group(g);
    }
    b.build().unwrap()
}

async fn next_msg(s: &mut MessageStream) -> AmqpMessage {
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!(
            "expected a message, got {:?}",
            other.map(|o| o.map(|r| r.map(|m| m.envelope)))
        ),
    }
}

/// Nothing arrives while the server is given a moment (not a timing assertion: a
/// message that should not exist must not show up).
async fn assert_quiet(s: &mut MessageStream) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), s.next()).await {
        panic!("unexpected message {:?}", m.envelope);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_key_form_logs_in_with_every_hmac_method() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    for method in ["hmacmd5", "hmacsha1", "hmacsha256"] {
        let mut args = app_key_args(&env, &p, &["--mode", "login"]);
        args.extend(["--auth", "aksign", "--sign-method", method].map(String::from));
        let mut c = AmqpPeer::Python.spawn(&args);
        c.next_event("opened").await;
        c.next_event("done").await;
        // The same with a wrong secret is refused.
        let mut bad = app_key_args(&env, &p, &["--mode", "login"]);
        bad[5] = "wrong-secret".into();
        bad.extend(["--auth", "aksign", "--sign-method", method].map(String::from));
        let mut c = AmqpPeer::Python.spawn(&bad);
        let e = c.next_event("error").await;
        assert_eq!(e["condition"], "amqp:unauthorized-access", "{method}: {e}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_generated_certificate_delivers() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    // Proton over amqps, verifying the server against the generated certificate.
    let mut args = app_key_args(&env, &p, &["--count", "1"]);
    args[1] = env.amqps_url();
    args.extend(["--ca".to_string(), env.ca_file().display().to_string()]);
    let mut c = AmqpPeer::Python.spawn(&args);
    c.next_event("opened").await;
    env.report(&p, json!({"LightSwitch": 1})).await;
    let m = c.next_event("message").await;
    assert_eq!(m["payload"]["items"]["LightSwitch"]["value"], 1);
    c.next_event("done").await;
    // The SDK over amqps too.
    let pem = std::fs::read(env.ca_file()).unwrap();
    let sdk = AmqpConsumer::builder()
        .endpoint(env.amqps_url())
        .server_name("localhost")
        .ca_pem(pem)
        .app_key(p.app_key.clone())
        .app_secret(p.app_secret.clone())
        .clock(Arc::new(env.clock.clone()))
        .build()
        .unwrap();
    let mut s = sdk.connect().await.unwrap();
    env.report(&p, json!({"LightSwitch": 0})).await;
    let m = next_msg(&mut s).await;
    assert_eq!(
        m.envelope.topic,
        format!("/{}/{}/thing/event/property/post", p.pk, p.dn())
    );
    m.ack().await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_of_one_group_share_and_two_groups_each_get_all() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut a1 = consumer(&env, &p, Some("analytics"), "a1")
        .connect()
        .await
        .unwrap();
    let mut a2 = consumer(&env, &p, Some("analytics"), "a2")
        .connect()
        .await
        .unwrap();
    let mut b = consumer(&env, &p, Some("billing"), "b")
        .connect()
        .await
        .unwrap();
    let n = 12;
    for i in 0..n {
        env.report_on(&p, i % 3, json!({"Counter": i})).await;
    }
    // Group "billing" gets every message.
    let mut billing = HashSet::new();
    while billing.len() < n {
        let m = next_msg(&mut b).await;
        billing.insert(m.envelope.message_id.to_string());
        m.ack().await.unwrap();
    }
    // Group "analytics": each message to exactly one of its two consumers.
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + WAIT;
    while got1.len() + got2.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} + {} of {n}",
            got1.len(),
            got2.len()
        );
        tokio::select! {
            Some(Ok(m)) = a1.next() => { got1.push(m.envelope.message_id.to_string()); m.ack().await.unwrap(); }
            Some(Ok(m)) = a2.next() => { got2.push(m.envelope.message_id.to_string()); m.ack().await.unwrap(); }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let all: HashSet<_> = got1.iter().chain(got2.iter()).cloned().collect();
    assert_eq!(
        all.len(),
        n,
        "no message went to both consumers of the group"
    );
    assert_eq!(all, billing);
    assert!(
        !got1.is_empty() && !got2.is_empty(),
        "both consumers got a share: {} / {}",
        got1.len(),
        got2.len()
    );
    assert_quiet(&mut a1).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_b_credentials_never_see_project_a_messages() {
    let env = TestServer::start().await;
    let a = env.project("A").await;
    let b = env.project("B").await;
    let mut sa = consumer(&env, &a, None, "ca").connect().await.unwrap();
    let mut sb = consumer(&env, &b, None, "cb").connect().await.unwrap();
    env.report(&a, json!({"Secret": 1})).await;
    let m = next_msg(&mut sa).await;
    assert!(m.envelope.topic.starts_with(&format!("/{}/", a.pk)));
    m.ack().await.unwrap();
    assert_quiet(&mut sb).await;
    // B's appKey with A's secret is refused; B's group name on A's key is A's group.
    let forged = AmqpConsumer::builder()
        .endpoint(env.amqp_url())
        .app_key(b.app_key.clone())
        .app_secret(a.app_secret.clone())
        .clock(Arc::new(env.clock.clone()))
        .build()
        .unwrap();
    assert!(matches!(forged.connect().await, Err(AmqpError::Auth(_))));
    env.stop().await;
}

fn payload(m: &AmqpMessage) -> Value {
    serde_json::from_slice(&m.envelope.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_type_arrives_with_its_topic_and_fields() {
    use reqwest::Method;
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let mut s = consumer(&env, &p, None, "all").connect().await.unwrap();
    let pid = &p.pid;
    let iot = &p.iot();
    let mut seen: Vec<(String, Value)> = Vec::new();
    let mut take = |m: AmqpMessage| {
        let v = payload(&m);
        let t = m.envelope.topic.clone();
        assert_eq!(m.envelope.generate_time, env.now());
        seen.push((t.clone(), v.clone()));
        (m, t, v)
    };

    // Property post.
    env.report(&p, json!({"LightSwitch": 1})).await;
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/{}/{}/thing/event/property/post", p.pk, p.dn()));
    for f in [
        "deviceType",
        "iotId",
        "productKey",
        "deviceName",
        "gmtCreate",
        "items",
    ] {
        assert!(v.get(f).is_some(), "{t}: {f} in {v}");
    }
    m.ack().await.unwrap();

    // Event post.
    env.ok(
        Method::POST,
        &format!("/api/v1/projects/{pid}/devices/{iot}/events/Overheat"),
        Some(json!({"value": {"temp": 90}, "type": "alert"})),
    )
    .await;
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/{}/{}/thing/event/Overheat/post", p.pk, p.dn()));
    for f in [
        "deviceType",
        "iotId",
        "productKey",
        "deviceName",
        "identifier",
        "name",
        "type",
        "time",
        "value",
    ] {
        assert!(v.get(f).is_some(), "{t}: {f} in {v}");
    }
    assert_eq!(v["type"], "alert");
    assert_eq!(v["value"]["temp"], 90);
    m.ack().await.unwrap();

    // Device lifecycle: disable, enable (create is covered by a new device).
    for action in ["disable", "enable"] {
        env.ok(
            Method::POST,
            &format!("/api/v1/projects/{pid}/devices/{iot}/{action}"),
            None,
        )
        .await;
        let (m, t, v) = take(next_msg(&mut s).await);
        assert_eq!(t, format!("/{}/{}/thing/lifecycle", p.pk, p.dn()));
        assert_eq!(v["action"], action);
        for f in ["iotId", "productKey", "deviceName", "messageCreateTime"] {
            assert!(v.get(f).is_some(), "{t}: {f} in {v}");
        }
        m.ack().await.unwrap();
    }
    env.ok(
        Method::POST,
        &format!("/api/v1/projects/{pid}/products/{}/devices", p.pk),
        Some(json!({"deviceName": "newlamp"})),
    )
    .await;
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/{}/newlamp/thing/lifecycle", p.pk));
    assert_eq!(v["action"], "create");
    assert!(v["deviceSecret"].is_string(), "{v}");
    m.ack().await.unwrap();

    // Account lifecycle.
    let u = env
        .ok(
            Method::POST,
            &format!("/api/v1/projects/{pid}/users"),
            Some(json!({"loginName": "alice", "email": "a@example.com"})),
        )
        .await;
    let identity = u["identityId"].as_str().unwrap().to_owned();
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/_account/{identity}/lifecycle"));
    assert_eq!(v["action"], "create");
    for f in [
        "identityId",
        "loginName",
        "nickName",
        "phone",
        "email",
        "gmtCreate",
        "gmtModified",
    ] {
        assert!(v.get(f).is_some(), "{t}: {f} in {v}");
    }
    m.ack().await.unwrap();

    // Binding.
    env.ok(
        Method::POST,
        &format!("/api/v1/projects/{pid}/bindings"),
        Some(json!({"identityId": identity, "iotId": iot, "owned": 1})),
    )
    .await;
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/{}/{}/thing/user/binding", p.pk, p.dn()));
    assert_eq!(v["operation"], "Bind");
    for f in [
        "identityId",
        "iotId",
        "productKey",
        "deviceName",
        "owned",
        "gmtCreate",
    ] {
        assert!(v.get(f).is_some(), "{t}: {f} in {v}");
    }
    m.ack().await.unwrap();

    // Device delete.
    env.ok(
        Method::DELETE,
        &format!("/api/v1/projects/{pid}/devices/{}", p.devices[2].iot),
        None,
    )
    .await;
    let (m, t, v) = take(next_msg(&mut s).await);
    assert_eq!(t, format!("/{}/lamp0003/thing/lifecycle", p.pk));
    assert_eq!(v["action"], "delete");
    m.ack().await.unwrap();
    assert!(seen.len() >= 8);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_sync_closes_the_connection_with_the_reason() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    // Proton sees the close frame's condition and description.
    let mut c = AmqpPeer::Python.spawn(&app_key_args(&env, &p, &[]));
    c.next_event("opened").await;
    let mut s = consumer(&env, &p, None, "sdk").connect().await.unwrap();
    // Both consumers are attached once a message has been delivered to the group.
    env.report(&p, json!({"LightSwitch": 1})).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), s.next()).await;
    env.ok(
        reqwest::Method::POST,
        &format!("/api/v1/projects/{}/sync/disable", p.pid),
        None,
    )
    .await;
    // The link is detached with the reason, then the connection is closed with it.
    let e = c.next_event("error").await;
    assert!(
        e["condition"] == "amqp:connection:forced" || e["condition"] == "amqp:link:detach-forced",
        "{e}"
    );
    assert!(
        e["description"]
            .as_str()
            .unwrap_or("")
            .contains("sync.disabled"),
        "{e}"
    );
    // The SDK reports it too.
    let end = loop {
        match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => break e,
            other => panic!("stream ended without the reason: {}", other.is_ok()),
        }
    };
    match end {
        AmqpError::Closed {
            condition,
            description,
        } => {
            assert_eq!(condition, "amqp:connection:forced");
            assert!(description.contains("disabled"), "{description}");
        }
        other => panic!("{other:?}"),
    }
    // A new connection is refused with the reason while sync is off.
    let refused = consumer(&env, &p, None, "late").connect().await;
    match refused {
        Ok(mut s) => match tokio::time::timeout(WAIT, s.next()).await {
            Ok(Some(Err(AmqpError::Closed { description, .. }))) => {
                assert!(description.contains("sync.disabled"), "{description}")
            }
            other => panic!("{:?}", other.map(|o| o.map(|r| r.map(|m| m.envelope)))),
        },
        Err(AmqpError::Closed { description, .. }) | Err(AmqpError::Lost(description)) => {
            assert!(
                description.contains("disabled") || !description.is_empty(),
                "{description}"
            )
        }
        Err(other) => panic!("{other:?}"),
    }
    env.stop().await;
}

/// fe2o3's own receiver, settling every message with its own disposition frame (as JMS
/// and .NET clients do): runs of them reach the server together and are merged into
/// ranges before its engine (ADR 0003). Every message must end acknowledged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_settling_one_by_one_gets_every_message_acknowledged_once() {
    use fe2o3_amqp::sasl_profile::SaslProfile;
    use fe2o3_amqp::types::messaging::Body;
    use fe2o3_amqp::types::primitives::Value as AmqpValue;
    use fe2o3_amqp::{link::receiver::CreditMode, Connection, Receiver, Session};
    use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};

    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let per_device = 40;
    for round in 0..per_device {
        for i in 0..p.devices.len() {
            env.report_on(&p, i, json!({ "Counter": round })).await;
        }
    }
    let n = per_device * p.devices.len();
    let creds = AmqpCredentials {
        client_id: "fe2o3-one-by-one".into(),
        auth: AmqpAuthMode::AppKey {
            random_ms: env.now(),
        },
        app_key: p.app_key.parse().unwrap(),
        group: None,
        iot_instance_id: None,
    };
    let mut conn = Connection::builder()
        .container_id("fe2o3-one-by-one")
        .sasl_profile(SaslProfile::Plain {
            username: creds.username(),
            password: sign_password(&creds, &p.app_secret),
        })
        .open(env.amqp_url().as_str())
        .await
        .unwrap();
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut rx = Receiver::builder()
        .name("one-by-one")
        .source("default")
        .credit_mode(CreditMode::Auto(100))
        .attach(&mut session)
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for _ in 0..n {
        let d = tokio::time::timeout(WAIT, rx.recv::<Body<AmqpValue>>())
            .await
            .expect("a message")
            .unwrap();
        let id = d
            .message()
            .application_properties
            .as_ref()
            .and_then(|ap| ap.get("messageId").cloned());
        assert!(ids.insert(format!("{id:?}")), "delivered twice: {id:?}");
        rx.accept(&d).await.unwrap();
    }
    // Acknowledged, all of them, before the client leaves.
    env.wait_all_acknowledged(&p.pid, n).await;
    let merged = env.metric("iotsync_amqp_dispositions_merged_total").await;
    eprintln!("{n} messages settled one by one, {merged} disposition frames merged away");
    let _ = rx.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    env.stop().await;
}
