//! The AMQP channel's connection rules over real sockets (SPEC §6): a receiver link
//! within 15 s, connection attempts per group rate-limited, a rotated secret in force at
//! the next login, link credit bounding what is in flight (Qpid Proton), the client's
//! idle time-out honoured with heartbeats (Qpid Proton).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::Error as ConnError;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::definitions::{AmqpError as AmqpCondition, ErrorCondition};
use fe2o3_amqp::{Connection, Session};
use serde_json::json;

use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};
use iotsync_sdk::amqp::{AmqpConsumer, AmqpError, MessageStream};
use iotsync_testkit::{PeerProc, Project, TestServer, WAIT};

fn consumer(env: &TestServer, p: &Project, secret: &str, group: &str) -> AmqpConsumer {
    AmqpConsumer::builder()
        .endpoint(env.amqp_url())
        .app_key(p.app_key.clone())
        .app_secret(secret)
        .group(group)
        .client_id(format!("rules-{group}"))
        .credit(10)
        .clock(Arc::new(env.clock.clone()))
        .build()
        .unwrap()
}

/// Connects once; `Err` says why the login or attach failed.
async fn connect(c: &AmqpConsumer) -> Result<MessageStream, AmqpError> {
    tokio::time::timeout(WAIT, c.connect())
        .await
        .expect("connect neither succeeded nor failed")
}

fn refused(r: Result<MessageStream, AmqpError>) -> String {
    match r {
        Err(AmqpError::Auth(why)) => why,
        Err(other) => panic!("expected a refused login, got {other}"),
        Ok(_) => panic!("expected a refused login, but it was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_a_connection_that_attaches_no_receiver_link_within_15_seconds() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let creds = AmqpCredentials {
        client_id: "no-link".into(),
        auth: AmqpAuthMode::AppKey {
            random_ms: env.now(),
        },
        app_key: p.app_key.parse().unwrap(),
        group: None,
        iot_instance_id: None,
    };
    let tcp = tokio::net::TcpStream::connect(env.server().addr("amqp").unwrap())
        .await
        .unwrap();
    let mut conn = Connection::builder()
        .container_id("no-link")
        .hostname("localhost")
        .sasl_profile(SaslProfile::Plain {
            username: creds.username(),
            password: sign_password(&creds, &p.app_secret),
        })
        .open_with_stream(tcp)
        .await
        .expect("the login is valid");
    // A session, but never a link.
    let _session = Session::begin(&mut conn).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(45), conn.on_close())
        .await
        .expect("the server never closed a connection without a receiver link");
    match end {
        Err(ConnError::RemoteClosedWithError(e)) => {
            assert_eq!(
                e.condition,
                ErrorCondition::AmqpError(AmqpCondition::PreconditionFailed)
            );
            let why = e.description.unwrap_or_default();
            assert!(why.contains("receiver link"), "{why}");
        }
        other => panic!("expected a close with amqp:precondition-failed, got {other:?}"),
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_connection_attempts_of_a_group_beyond_the_per_minute_limit() {
    let env = TestServer::builder()
        .config("[delivery]\nconnects_per_minute = 3\n")
        .start()
        .await;
    let p = env.project("Home").await;
    let g1 = consumer(&env, &p, &p.app_secret, "analytics");
    let mut held = Vec::new();
    for i in 0..3 {
        match connect(&g1).await {
            Ok(s) => held.push(s),
            Err(e) => panic!("attempt {} is within the limit but failed: {e}", i + 1),
        }
    }
    let why = refused(connect(&g1).await);
    // Rate limiting is temporary: SASL `sys-temp`, not `auth`.
    assert!(why.contains("SysTemp"), "{why}");
    // Another group of the same project has its own budget.
    let g2 = consumer(&env, &p, &p.app_secret, "billing");
    held.push(connect(&g2).await.expect("another group is not limited"));
    // A minute later the group may connect again.
    env.clock.advance_ms(61_000);
    held.push(connect(&g1).await.expect("the window has passed"));
    drop(held);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_takes_effect_at_the_next_login() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let old = consumer(&env, &p, &p.app_secret, "ops");
    // Logged in once with the old secret, so the server has seen (and may cache) it.
    drop(connect(&old).await.expect("the current secret works"));
    let v = env
        .ok(
            reqwest::Method::POST,
            &format!("/api/v1/projects/{}/rotate-secret", p.pid),
            None,
        )
        .await;
    let new_secret = v["appSecret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, p.app_secret);

    refused(connect(&old).await);
    let new = consumer(&env, &p, &new_secret, "ops");
    let mut s = connect(&new).await.expect("the new secret works at once");
    env.report(&p, json!({"LightSwitch": 1})).await;
    let m = match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(Ok(m))) => m,
        _ => panic!("no message over the new login"),
    };
    m.ack().await.unwrap();
    // And the old one stays refused.
    refused(connect(&old).await);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_has_more_messages_in_flight_than_the_link_credit() {
    let env = TestServer::start().await;
    let mut p = env.project("Home").await;
    // The backlog keeps one message per device in flight: enough devices that the
    // link's credit (5) is the bound under test.
    for i in 4..=13 {
        env.add_device(&mut p, &format!("lamp{i:04}")).await;
    }
    for n in 0..50 {
        env.report_on(&p, n % p.devices.len(), json!({ "LightSwitch": n % 2 }))
            .await;
    }
    let args: Vec<String> = [
        "--url",
        &env.amqp_url(),
        "--app-key",
        &p.app_key,
        "--app-secret",
        &p.app_secret,
        "--ts",
        &env.now().to_string(),
        "--mode",
        "credit",
        "--credit",
        "5",
        "--count",
        "50",
        "--hold-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut probe = PeerProc::python("amqp/credit_probe.py", &args);
    let done = probe.next_event("done").await;
    assert_eq!(done["received"], 50, "{done}");
    assert_eq!(done["over_credit"], 0, "{done}");
    // The bound was reached (50 stacked, 13 devices), so it was really tested.
    assert_eq!(done["max_unsettled"], 5, "{done}");
    assert!(!probe.saw("error"), "{:?}", probe.seen);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_an_idle_connection_open_past_the_clients_idle_timeout() {
    let env = TestServer::start().await;
    let p = env.project("Home").await;
    let args: Vec<String> = [
        "--url",
        &env.amqp_url(),
        "--app-key",
        &p.app_key,
        "--app-secret",
        &p.app_secret,
        "--ts",
        &env.now().to_string(),
        "--mode",
        "heartbeat",
        "--idle-ms",
        "2000",
        "--wait-ms",
        "7000",
        "--count",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut probe = PeerProc::python("amqp/credit_probe.py", &args);
    probe.next_event("opened").await;
    // Proton closes the connection itself if nothing arrives within 2 s; the server's
    // heartbeats must keep it open through 7 idle seconds.
    probe.next_event("alive").await;
    assert!(!probe.saw("error"), "{:?}", probe.seen);
    env.report(&p, json!({"LightSwitch": 1})).await;
    probe.next_event("message").await;
    probe.next_event("done").await;
    assert!(!probe.saw("error"), "{:?}", probe.seen);
    env.stop().await;
}
