//! Issue 15, findings 4 and 8 (the sign-in parts), over real sockets:
//! - a captured signed cloud API call replayed after a restart, or on a second server
//!   sharing PostgreSQL, is refused (the nonce is in the registry);
//! - a device password whose timestamp is a year away is refused, a fresh one works
//!   (paho-mqtt);
//! - wrong operator tokens, console sign-ins and device passwords slow down their
//!   address (429 `auth.throttled` + Retry-After; CONNACK 5), while the real user from
//!   another address (127.0.0.2) is served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use iotsync_core::sign::api_gateway::{sign_request, OutgoingRequest};
use iotsync_core::{Clock, ManualClock, SystemClock};
use iotsync_testkit::peers;
use iotsync_testkit::{Device, Project, RawDevice, TestServer, TOKEN};

const YEAR_MS: i64 = 365 * 86_400_000;

/// A server on `dir` (and `store_url`, if given) with `clock`, every listener on port 0.
async fn start_on(
    dir: tempfile::TempDir,
    store_url: Option<String>,
    clock: ManualClock,
) -> TestServer {
    TestServer::builder()
        .temp_dir(dir)
        .clock(clock)
        .overrides(|o| o.store_url = store_url)
        .start()
        .await
}

/// Stops the server and starts a new one on the same data dir and clock.
async fn restart(env: TestServer) -> TestServer {
    let clock = env.clock.clone();
    let dir = env.stop().await;
    start_on(dir, None, clock).await
}

/// A signed cloud API call, exactly as sent (so it can be replayed byte for byte).
struct Captured {
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn signed(
    env: &TestServer,
    p: &Project,
    path: &str,
    token: Option<&str>,
    params: Value,
) -> Captured {
    let mut request = json!({"apiVer": "1.0.0"});
    if let Some(t) = token {
        request["cloudToken"] = json!(t);
    }
    let body = serde_json::to_vec(&json!({
        "id": "42", "version": "1.0", "request": request, "params": params,
    }))
    .unwrap();
    let nonce = format!("nonce-{}-{}", path, env.clock.now_ms());
    let headers = sign_request(
        &p.app_key.parse().unwrap(),
        &p.app_secret,
        &OutgoingRequest {
            method: "POST",
            path,
            query: &[],
            body: &body,
            accept: "application/json",
            content_type: "application/json; charset=utf-8",
            timestamp_ms: env.clock.now_ms(),
            nonce: &nonce,
        },
    );
    Captured {
        path: path.into(),
        headers,
        body,
    }
}

async fn send(env: &TestServer, c: &Captured) -> Value {
    let mut req = env
        .http
        .post(format!("{}{}", env.base, c.path))
        .body(c.body.clone());
    for (k, v) in &c.headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the cloud API answers HTTP 200");
    r.json().await.unwrap()
}

async fn cloud_token(env: &TestServer, p: &Project) -> String {
    let r = send(
        env,
        &signed(
            env,
            p,
            "/cloud/token",
            None,
            json!({"grantType": "project", "res": p.pid}),
        ),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    r["data"]["cloudToken"].as_str().unwrap().to_owned()
}

/// A user of `p` bound to its first device; the identityId.
async fn bound_user(env: &TestServer, p: &Project) -> String {
    let (s, u) = env
        .post(
            &format!("/api/v1/projects/{}/users", p.pid),
            json!({"loginName": "alice"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let id = u["identityId"].as_str().unwrap().to_owned();
    bind(env, p, &id).await;
    let (s, v) = env
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/{}/api-operations/device_binding", p.pid),
            Some(json!({"activated": true})),
        )
        .await;
    assert!(s.is_success(), "{v}");
    id
}

async fn bind(env: &TestServer, p: &Project, identity: &str) {
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/bindings", p.pid),
            json!({"identityId": identity, "iotId": p.devices[0].iot, "owned": true}),
        )
        .await;
    assert!(s.is_success(), "{v}");
}

async fn bindings(env: &TestServer, p: &Project) -> usize {
    let (s, v) = env
        .get(&format!("/api/v1/projects/{}/bindings", p.pid))
        .await;
    assert!(s.is_success(), "{v}");
    v["items"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_else(|| panic!("{v}"))
}

fn assert_replay_refused(r: &Value) {
    assert_eq!(r["code"], 401, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("X-Ca-Nonce was already used"),
        "{r}"
    );
}

#[tokio::test]
async fn a_signed_unbind_replayed_after_a_restart_is_refused() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let identity = bound_user(&env, &p).await;
    let token = cloud_token(&env, &p).await;
    let unbind = signed(
        &env,
        &p,
        "/cloud/user/device/unbind",
        Some(&token),
        json!({"identityId": identity, "iotId": p.devices[0].iot}),
    );
    let r = send(&env, &unbind).await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(bindings(&env, &p).await, 0);
    assert_replay_refused(&send(&env, &unbind).await);

    // The user binds again; the attacker replays the captured unbind after a restart,
    // still inside its 15-minute window.
    bind(&env, &p, &identity).await;
    let env = restart(env).await;
    env.clock.advance_ms(60_000);
    assert_replay_refused(&send(&env, &unbind).await);
    assert_eq!(bindings(&env, &p).await, 1, "the binding stays");
    env.stop().await;
}

#[tokio::test]
async fn a_signed_call_replayed_on_a_second_server_sharing_postgres_is_refused() {
    let (url, schema) = iotsync_testkit::pg::create_schema("auth").await;
    let now = SystemClock.now_ms();
    let one = start_on(
        tempfile::tempdir().unwrap(),
        Some(url.clone()),
        ManualClock::new(now),
    )
    .await;
    let two = start_on(
        tempfile::tempdir().unwrap(),
        Some(url),
        ManualClock::new(now),
    )
    .await;
    let p = one.project_with_devices("Home", &["lamp0001"]).await;
    let identity = bound_user(&one, &p).await;
    let token = cloud_token(&one, &p).await;
    let unbind = signed(
        &one,
        &p,
        "/cloud/user/device/unbind",
        Some(&token),
        json!({"identityId": identity, "iotId": p.devices[0].iot}),
    );
    assert_eq!(send(&one, &unbind).await["code"], 200);
    bind(&one, &p, &identity).await;
    assert_replay_refused(&send(&two, &unbind).await);
    assert_eq!(bindings(&two, &p).await, 1, "the binding stays");
    // A fresh call works on the second server: it is the nonce that is refused.
    let fresh = signed(
        &two,
        &p,
        "/cloud/device/queryByUser",
        Some(&token),
        json!({"identityId": identity}),
    );
    assert_eq!(send(&two, &fresh).await["code"], 200);
    one.stop().await;
    two.stop().await;
    iotsync_testkit::pg::drop_schema(&schema).await;
}

#[tokio::test]
async fn a_device_password_with_a_year_old_timestamp_is_refused_and_a_fresh_one_works() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    // paho signs with its own clock: a year later on the server, its timestamp is a
    // year old.
    env.clock.advance_ms(YEAR_MS);
    let mut paho = peers::paho(&env, &p.pk, &dev, "connect-only", &[]);
    // CONNACK 4 of MQTT 3.1.1 → paho v2 reason code 134 "bad user name or password".
    assert_eq!(paho.next_event("connack").await["code"], 134);
    paho.finish().await;
    env.clock.set_ms(SystemClock.now_ms());
    let mut paho = peers::paho(&env, &p.pk, &dev, "connect-only", &["--seconds", "1"]);
    assert_eq!(paho.next_event("connack").await["code"], 0);
    paho.finish().await;
    env.stop().await;
}

/// A raw MQTT CONNECT from `local` (an address of 127/8); the CONNACK return code.
async fn connack(env: &TestServer, local: &str, p: &Project, dev: &Device, secret: &str) -> u8 {
    let out = RawDevice::connect_packet(&p.pk, &dev.dn, secret, env.clock.now_ms(), 30);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut s = sock
        .connect(format!("127.0.0.1:{}", env.mqtt_port()).parse().unwrap())
        .await
        .unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut buf))
        .await
        .expect("a CONNACK")
        .unwrap();
    assert_eq!(buf[..2], [0x20, 2], "CONNACK");
    buf[3]
}

#[tokio::test]
async fn wrong_device_passwords_slow_their_address_and_not_the_device_elsewhere() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = p.devices[0].clone();
    // Defaults: five free failures per address and device, then 1 s, doubling.
    for i in 0..6 {
        assert_eq!(
            connack(&env, "127.0.0.1", &p, &dev, "guess").await,
            4,
            "failure {i}"
        );
    }
    // The address waits now: even the right password is not looked at (CONNACK 5).
    assert_eq!(connack(&env, "127.0.0.1", &p, &dev, &dev.secret).await, 5);
    // The device itself, from another address, is not slowed at all.
    assert_eq!(connack(&env, "127.0.0.2", &p, &dev, &dev.secret).await, 0);
    // After the wait the address is heard again; the next failure waits twice as long.
    env.clock.advance_ms(1_000);
    assert_eq!(connack(&env, "127.0.0.1", &p, &dev, "guess").await, 4);
    env.clock.advance_ms(1_000);
    assert_eq!(connack(&env, "127.0.0.1", &p, &dev, &dev.secret).await, 5);
    env.clock.advance_ms(1_000);
    assert_eq!(connack(&env, "127.0.0.1", &p, &dev, &dev.secret).await, 0);
    env.stop().await;
}

fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn projects_with(env: &TestServer, http: &reqwest::Client, token: &str) -> reqwest::Response {
    http.get(format!("{}/api/v1/projects", env.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn sign_in(env: &TestServer, http: &reqwest::Client, token: &str) -> reqwest::Response {
    http.post(format!("{}/console/session", env.base))
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap()
}

async fn assert_throttled(r: reqwest::Response) {
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(after >= 1, "{after}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "auth.throttled", "{v}");
    assert_eq!(v["retryAfterSeconds"], after, "{v}");
    assert!(v["message"].as_str().unwrap().contains("retry"), "{v}");
}

#[tokio::test]
async fn wrong_operator_tokens_and_console_sign_ins_answer_429_and_spare_other_addresses() {
    let env = TestServer::start().await;
    let attacker = client_from("127.0.0.1");
    let operator = client_from("127.0.0.2");
    let wrong = "wrong-operator-token-000000";
    // Bearer and console sign-in guess at the same secret: they count together.
    for i in 0..3 {
        let r = projects_with(&env, &attacker, wrong).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    for i in 0..3 {
        let r = sign_in(&env, &attacker, wrong).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {}", i + 3);
    }
    assert_throttled(projects_with(&env, &attacker, TOKEN).await).await;
    assert_throttled(sign_in(&env, &attacker, TOKEN).await).await;
    // The operator elsewhere is served, on both.
    assert_eq!(
        projects_with(&env, &operator, TOKEN).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        sign_in(&env, &operator, TOKEN).await.status(),
        StatusCode::OK
    );
    // The wait ends; the next failure doubles it (2 s).
    env.clock.advance_ms(1_000);
    let r = projects_with(&env, &attacker, wrong).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = projects_with(&env, &attacker, TOKEN).await;
    assert_eq!(r.headers()["retry-after"], "2");
    assert_throttled(r).await;
    env.clock.advance_ms(2_000);
    assert_eq!(
        projects_with(&env, &attacker, TOKEN).await.status(),
        StatusCode::OK
    );
    env.stop().await;
}
