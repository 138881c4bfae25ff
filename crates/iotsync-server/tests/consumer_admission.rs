//! Delivery's admission over real sockets: failed logins are throttled per source
//! address and never count against the group's connections (issue 15, finding 5), and
//! a declared group collects what was produced before any consumer of it connected
//! (issue 12), over AMQP (fe2o3 and python-qpid-proton) and HTTP/2 (grpcio).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::sasl::SaslCode;
use fe2o3_amqp::{Connection, Receiver, Session};
use serde_json::json;

use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};
use iotsync_testkit::peers::{app_key_args, AmqpPeer};
use iotsync_testkit::{Project, TestServer, WAIT};

fn creds(env: &TestServer, p: &Project, group: &str) -> AmqpCredentials {
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
    env: &TestServer,
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
        WAIT,
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
async fn real_consumer_receives(env: &TestServer, p: &Project, source: Ipv4Addr) -> String {
    let c = creds(env, p, "ops");
    let mut conn = open_from(env, source, c.username(), sign_password(&c, &p.app_secret))
        .await
        .unwrap_or_else(|e| panic!("the real consumer from {source} was refused: {e:?}"));
    let mut session = Session::begin(&mut conn).await.unwrap();
    let mut rx = Receiver::attach(&mut session, "ops-receiver", "default")
        .await
        .unwrap();
    let d = tokio::time::timeout(
        WAIT,
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
    let env = TestServer::builder()
        .config("[auth]\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"\n")
        .start()
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
    let env = TestServer::start().await;
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
    let mut peer = AmqpPeer::Python.spawn(&args);
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
    let deadline = std::time::Instant::now() + WAIT;
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

mod grpc {
    use super::*;
    use iotsync_core::sign::http2::Http2AuthParams;
    use iotsync_sdk::http2::pb::sync_service_client::SyncServiceClient;
    use iotsync_sdk::http2::pb::{consume_request, consume_response, ConsumeRequest, Credit};
    use tonic::metadata::{MetadataKey, MetadataValue};

    async fn channel_from(env: &TestServer, source: Ipv4Addr) -> tonic::transport::Channel {
        let addr = env.server().addr("http2").expect("http2 listener");
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .local_address(Some(IpAddr::V4(source)))
            .connect()
            .await
            .unwrap()
    }

    /// One Consume call signed with `secret`; Ok(first message topic) or the status.
    async fn consume(
        ch: &tonic::transport::Channel,
        env: &TestServer,
        p: &Project,
        secret: &str,
    ) -> Result<String, tonic::Status> {
        let mut client = SyncServiceClient::new(ch.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<ConsumeRequest>(4);
        tx.send(ConsumeRequest {
            kind: Some(consume_request::Kind::Credit(Credit { max_in_flight: 1 })),
        })
        .await
        .unwrap();
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let auth = Http2AuthParams::signed(
            p.app_key.parse().unwrap(),
            Some("ops".parse().unwrap()),
            secret,
            env.now(),
        );
        for (k, v) in auth.to_headers() {
            req.metadata_mut().insert(
                MetadataKey::from_static(k),
                MetadataValue::try_from(v.as_str()).unwrap(),
            );
        }
        let mut stream = client.consume(req).await?.into_inner();
        let first = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("no message for the real consumer")?
            .expect("the stream ended");
        drop(tx);
        match first.kind {
            Some(consume_response::Kind::Message(m)) => Ok(m.topic),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hundred_bad_signatures_do_not_lock_the_real_grpc_consumer_out() {
        let env = TestServer::builder()
            .config("[auth]\nbackoff_initial = \"1s\"\nbackoff_max = \"4s\"\n")
            .start()
            .await;
        let p = env.project("Home").await;
        for (path, body) in [
            ("sync/disable", json!({})),
            ("sync/enable", json!({"method": "http2"})),
            ("consumer-groups", json!({"name": "ops"})),
        ] {
            let (s, v) = env
                .post(&format!("/api/v1/projects/{}/{path}", p.pid), body)
                .await;
            assert!(s.is_success(), "{path}: {v}");
        }
        let attacker = Ipv4Addr::new(127, 0, 0, 1);
        let bad = channel_from(&env, attacker).await;
        let (mut unauth, mut throttled) = (0, 0);
        for i in 0..200 {
            match consume(&bad, &env, &p, "not-the-secret").await {
                Err(s) if s.code() == tonic::Code::Unauthenticated => unauth += 1,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    assert!(s.message().starts_with("auth.throttled"), "{s:?}");
                    throttled += 1
                }
                other => panic!("unexpected: {other:?}"),
            }
            if i % 20 == 19 {
                env.clock.advance_ms(1_100);
            }
        }
        assert!(
            unauth >= 5 && throttled > 100,
            "unauthenticated {unauth}, throttled {throttled}"
        );

        env.report(&p, json!({"LightSwitch": 1})).await;
        let good = channel_from(&env, Ipv4Addr::new(127, 0, 0, 2)).await;
        let topic = consume(&good, &env, &p, &p.app_secret)
            .await
            .expect("the real consumer from another address");
        assert!(topic.ends_with("/thing/event/property/post"), "{topic}");

        // From the attacker's address: throttled until the back-off has passed.
        let s = consume(&bad, &env, &p, &p.app_secret).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        env.clock.advance_ms(4_100);
        consume(&bad, &env, &p, &p.app_secret)
            .await
            .expect("the real consumer after the back-off");
        env.stop().await;
    }
}
