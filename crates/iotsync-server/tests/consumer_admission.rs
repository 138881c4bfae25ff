//! Delivery's admission over real sockets: failed logins are throttled per source
//! address and never count against the group's connections (issue 15, finding 5), and
//! a declared group collects what was produced before any consumer of it connected
//! (issue 12), over AMQP (fe2o3 and python-qpid-proton) and HTTP/2 (grpcio).

mod amqp_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::sasl::SaslCode;
use fe2o3_amqp::{Connection, Receiver, Session};
use serde_json::json;

use amqp_common::{app_key_args, Env, PeerProc, Project, PEER_WAIT};
use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};

fn creds(env: &Env, p: &Project, group: &str) -> AmqpCredentials {
    AmqpCredentials {
        client_id: "lockout".into(),
        auth: AmqpAuthMode::AppKey {
            random_ms: env.now(),
        },
        app_key: p.app_key.parse().unwrap(),
        group: Some(group.parse().unwrap()),
        iot_instance_id: None,
    }
}

/// Opens an AMQP connection from `source` (a loopback address) with SASL PLAIN.
async fn open_from(
    env: &Env,
    source: Ipv4Addr,
    username: String,
    password: String,
) -> Result<ConnectionHandle<()>, OpenError> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    let tcp = sock
        .connect(env.server().addr("amqp").unwrap())
        .await
        .unwrap();
    tokio::time::timeout(
        PEER_WAIT,
        Connection::builder()
            .container_id("lockout")
            .hostname("localhost")
            .sasl_profile(SaslProfile::Plain { username, password })
            .open_with_stream(tcp),
    )
    .await
    .expect("the login neither succeeded nor failed")
}

fn sasl_code(r: Result<ConnectionHandle<()>, OpenError>) -> SaslCode {
    match r {
        Err(OpenError::SaslError { code, .. }) => code,
        Err(other) => panic!("expected a SASL refusal, got {other:?}"),
        Ok(_) => panic!("expected a refused login, but it was accepted"),
    }
}

/// The real consumer: logs in from `source`, attaches a receiver and takes one message.
async fn real_consumer_receives(env: &Env, p: &Project, source: Ipv4Addr) -> String {
    let c = creds(env, p, "ops");
    let mut conn = open_from(env, source, c.username(), sign_password(&c, &p.app_secret))
        .await
        .unwrap_or_else(|e| panic!("the real consumer from {source} was refused: {e:?}"));
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut rx = Receiver::attach(&mut session, "ops-receiver", "default")
        .await
        .unwrap();
    let d = tokio::time::timeout(
        PEER_WAIT,
        rx.recv::<fe2o3_amqp::types::messaging::Body<fe2o3_amqp::types::primitives::Value>>(),
    )
    .await
    .expect("no message for the real consumer")
    .unwrap();
    rx.accept(&d).await.unwrap();
    let _ = rx.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    format!("{:?}", d.body())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_bad_passwords_do_not_lock_the_real_consumer_out() {
    // The group's budget (100 per minute by default) would be gone after 200 attempts if
    // failures counted against it.
    let env = Env::start_with(Some(
        "[auth]\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"\n",
    ))
    .await;
    let p = env.project("Home").await;
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/consumer-groups", p.pid),
            json!({"name": "ops"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let attacker = Ipv4Addr::new(127, 0, 0, 1);
    let mut auth = 0;
    let mut temp = 0;
    for i in 0..200 {
        let c = creds(&env, &p, "ops");
        match sasl_code(open_from(&env, attacker, c.username(), "not-the-password".into()).await) {
            SaslCode::Auth => auth += 1,
            SaslCode::SysTemp => temp += 1,
            other => panic!("unexpected SASL code {other:?}"),
        }
        // Time passes between bursts: the attacker's back-off grows to its cap.
        if i % 20 == 19 {
            env.clock.advance_ms(1_100);
        }
    }
    // A few were checked and failed; the rest were turned away by the throttle before
    // their password was looked at.
    assert!(auth >= 5 && temp > 100, "auth {auth}, throttled {temp}");

    // The real consumer, from another address, at once.
    env.report(&p, json!({"LightSwitch": 1})).await;
    real_consumer_receives(&env, &p, Ipv4Addr::new(127, 0, 0, 2)).await;

    // From the attacker's address the right password waits out the back-off too…
    let c = creds(&env, &p, "ops");
    let code = sasl_code(
        open_from(
            &env,
            attacker,
            c.username(),
            sign_password(&c, &p.app_secret),
        )
        .await,
    );
    assert_eq!(code, SaslCode::SysTemp);
    // …and connects once it has passed.
    env.clock.advance_ms(4_100);
    env.report(&p, json!({"LightSwitch": 0})).await;
    real_consumer_receives(&env, &p, attacker).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_group_collects_before_its_first_consumer_connects_over_amqp() {
    let env = Env::start().await;
    let p = env.project("Home").await;
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/consumer-groups", p.pid),
            json!({"name": "billing", "topics": ["/${pk}/${dn}/thing/event/property/post"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Produced while nobody of the group has ever connected.
    for i in 0..3 {
        env.report(&p, json!({"LightSwitch": i})).await;
    }
    // python-qpid-proton, a consumer nobody here wrote.
    let args = app_key_args(&env, &p, &["--group", "billing", "--count", "3"]);
    let mut peer = PeerProc::spawn(amqp_common::Peer::Python, &args);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = peer.next_event("message").await;
        got.push(m);
    }
    for m in &got {
        let topic = m["topic"].as_str().unwrap_or_default();
        assert!(topic.ends_with("/thing/event/property/post"), "{m}");
    }
    // Only the reports went to the group (not the devices' lifecycle messages), and all
    // three were acknowledged.
    let deadline = std::time::Instant::now() + PEER_WAIT;
    loop {
        let (_, st) = env
            .get(&format!("/api/v1/projects/{}/sync/stats", p.pid))
            .await;
        let g = st["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == "billing")
            .cloned()
            .unwrap();
        assert_eq!(g["appendedTotal"], 3, "{st}");
        if g["ackedTotal"] == 3 && g["stacked"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not acknowledged: {st}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    peer.kill();
    env.stop().await;
}
