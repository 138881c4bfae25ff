//! The signed cloud API over real HTTP, called by a Python client that computes the
//! API-gateway signature itself (tests/peers/cloud/call.py), acting on a paho-mqtt
//! device. Produced messages are read through the in-process delivery hub.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use serde_json::{json, Value};

use iotsync_testkit::peers::{self, cloud_call, CloudCall};
use iotsync_testkit::{Project, TestServer};

type Call<'a> = CloudCall<'a>;

async fn cloud(env: &TestServer, p: &Project, path: &str, params: Value, o: Call<'_>) -> Value {
    let v = cloud_call(env, p, path, params, o).await;
    assert_eq!(
        v["status"], 200,
        "the cloud API always answers HTTP 200: {v}"
    );
    v["body"].clone()
}

async fn token(env: &TestServer, p: &Project) -> String {
    peers::cloud_token(env, p).await
}

/// A call with the project's live cloud token.
async fn with_token(env: &TestServer, p: &Project, t: &str, path: &str, params: Value) -> Value {
    cloud(
        env,
        p,
        path,
        params,
        Call {
            token: Some(t),
            ..Call::default()
        },
    )
    .await
}

async fn activate(env: &TestServer, p: &Project, group: &str, on: bool) {
    peers::activate_operations(env, p, group, on).await;
}

#[tokio::test]
async fn properties_set_reaches_the_paho_device_and_its_reply_is_a_control_record() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    activate(&env, &p, "thing_model", true).await;
    let dev = p.devices[0].clone();
    let mut c = env.consumer(&p).await;
    c.until("/thing/lifecycle").await;
    let mut paho = peers::paho(&env, &p.pk, &dev, "serve", &[]);
    assert_eq!(paho.next_event("connack").await["code"], 0);
    paho.next_event("ready").await;
    c.until("/mqtt/status").await;

    let t = token(&env, &p).await;
    let tok = Call {
        token: Some(&t),
        ..Default::default()
    };
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/status/get",
        json!({"iotId": dev.iot}),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["status"], "online");

    let r = cloud(
        &env,
        &p,
        "/cloud/thing/properties/set",
        json!({"productKey": p.pk, "deviceName": dev.dn, "items": {"LightSwitch": 1}}),
        tok,
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let rid = r["data"]["requestId"].as_str().unwrap().to_owned();
    let d = paho.next_event("downlink").await;
    assert_eq!(
        d["topic"],
        format!("/sys/{}/{}/thing/service/property/set", p.pk, dev.dn)
    );
    assert_eq!(d["request"]["id"], rid.as_str());
    assert_eq!(d["request"]["params"], json!({"LightSwitch": 1}));
    assert_eq!(d["request"]["method"], "thing.service.property.set");

    let ms = c.until("/thing/downlink/reply/message").await;
    let cr = &ms.last().unwrap().payload;
    assert_eq!(
        ms.last().unwrap().topic,
        format!("/{}/{}/thing/downlink/reply/message", p.pk, dev.dn)
    );
    assert_eq!(cr["requestId"], rid.as_str());
    assert_eq!(cr["code"], 200);
    assert_eq!(cr["iotId"], dev.iot.as_str());
    assert_eq!(
        cr["topic"],
        format!("/sys/{}/{}/thing/service/property/set", p.pk, dev.dn)
    );

    // A service call answers with the device's output.
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/service/invoke",
        json!({"iotId": dev.iot, "identifier": "Blink", "args": {"times": 3}}),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["output"]["echo"], json!({"times": 3}));
    let d = paho.next_event("downlink").await;
    assert_eq!(
        d["topic"],
        format!("/sys/{}/{}/thing/service/Blink", p.pk, dev.dn)
    );
    let ms = c.until("/thing/downlink/reply/message").await;
    assert_eq!(ms.last().unwrap().payload["data"]["ok"], true);

    paho.finish().await;
    c.until("/mqtt/status").await;
    // Offline now: 9201, and a control record says so.
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/properties/set",
        json!({"iotId": dev.iot, "items": {"LightSwitch": 0}}),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 9201, "{r}");
    let ms = c.until("/thing/downlink/reply/message").await;
    assert_eq!(ms.last().unwrap().payload["code"], 9201);
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/service/invoke",
        json!({"iotId": dev.iot, "identifier": "Blink"}),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 9201, "{r}");
    env.stop().await;
}

#[tokio::test]
async fn bad_signature_reused_nonce_and_stale_timestamp_are_refused() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let params = json!({"grantType": "project", "res": p.pid});
    let r = cloud(
        &env,
        &p,
        "/cloud/token",
        params.clone(),
        Call {
            tamper: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("signature"), "{r}");

    let r = cloud(
        &env,
        &p,
        "/cloud/token",
        params.clone(),
        Call {
            nonce: Some("n-1"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = cloud(
        &env,
        &p,
        "/cloud/token",
        params.clone(),
        Call {
            nonce: Some("n-1"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("Nonce"), "{r}");

    let now = iotsync_core::Clock::now_ms(&env.clock);
    let r = cloud(
        &env,
        &p,
        "/cloud/token",
        params.clone(),
        Call {
            ts: Some(now - 16 * 60 * 1000),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("X-Ca-Timestamp"),
        "{r}"
    );

    let mut wrong = Project {
        app_secret: "wrong-secret".into(),
        ..p
    };
    wrong.devices.clear();
    let r = cloud(&env, &wrong, "/cloud/token", params, Call::default()).await;
    assert_eq!(r["code"], 401, "{r}");
    env.stop().await;
}

#[tokio::test]
async fn replaced_and_expired_tokens_are_refused() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    activate(&env, &p, "thing_model", true).await;
    let iot = json!({"iotId": p.devices[0].iot});
    let first = token(&env, &p).await;
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/info/get",
        iot.clone(),
        Call {
            token: Some(&first),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["deviceName"], "lamp0001");
    let second = token(&env, &p).await;
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/info/get",
        iot.clone(),
        Call {
            token: Some(&first),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "a new token invalidates the old: {r}");
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/info/get",
        iot.clone(),
        Call::default(),
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/info/get",
        iot.clone(),
        Call {
            token: Some(&second),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    env.clock.advance_ms(2 * 3600 * 1000 + 1);
    let r = cloud(
        &env,
        &p,
        "/cloud/thing/info/get",
        iot,
        Call {
            token: Some(&second),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("expired"), "{r}");
    env.stop().await;
}

#[tokio::test]
async fn inactive_group_answers_service_not_activated_and_changes_nothing() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let dev = &p.devices[0];
    let (_, u) = env
        .post(
            &format!("/api/v1/projects/{}/users", p.pid),
            json!({"loginName": "ann"}),
        )
        .await;
    let identity = u["identityId"].as_str().unwrap().to_owned();
    let (s, v) = env
        .post(
            &format!("/api/v1/projects/{}/bindings", p.pid),
            json!({"identityId": identity, "iotId": dev.iot, "owned": 1}),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let t = token(&env, &p).await;
    let unbind = json!({"identityId": identity, "iotId": dev.iot});
    let r = cloud(
        &env,
        &p,
        "/cloud/user/device/unbind",
        unbind.clone(),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 403, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("service not activated"),
        "{r}"
    );
    let bindings = env
        .server()
        .registry()
        .list_bindings(
            &p.pid.parse().unwrap(),
            Default::default(),
            iotsync_store::PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(bindings.total, 1, "nothing changed");

    activate(&env, &p, "device_binding", true).await;
    let r = cloud(
        &env,
        &p,
        "/cloud/device/queryByUser",
        json!({"identityId": identity}),
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["data"][0]["iotId"], dev.iot.as_str());
    assert_eq!(r["data"]["data"][0]["owned"], 1);
    let mut c = env.consumer(&p).await;
    let r = cloud(
        &env,
        &p,
        "/cloud/user/device/unbind",
        unbind,
        Call {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let mut ops = Vec::new();
    while ops.last() != Some(&json!("Unbind")) {
        let ms = c.until("/thing/user/binding").await;
        ops.push(ms.last().unwrap().payload["operation"].clone());
    }
    assert_eq!(ops, vec![json!("Bind"), json!("Unbind")]);
    env.stop().await;
}

#[tokio::test]
async fn project_b_cannot_touch_project_a_devices() {
    let env = TestServer::start().await;
    let a = env.project_with_devices("A", &["lamp0001"]).await;
    let b = env.project_with_devices("B", &["lamp0002"]).await;
    activate(&env, &b, "thing_model", true).await;
    let tb = token(&env, &b).await;
    let a_dev = &a.devices[0];
    let r = cloud(
        &env,
        &b,
        "/cloud/thing/info/get",
        json!({"iotId": a_dev.iot}),
        Call {
            token: Some(&tb),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 404, "{r}");
    let r = cloud(
        &env,
        &b,
        "/cloud/thing/properties/set",
        json!({"productKey": a.pk, "deviceName": a_dev.dn, "items": {"X": 1}}),
        Call {
            token: Some(&tb),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 404, "{r}");
    // B's signature cannot get a token for A.
    let r = cloud(
        &env,
        &b,
        "/cloud/token",
        json!({"grantType": "project", "res": a.pid}),
        Call::default(),
    )
    .await;
    assert_eq!(r["code"], 403, "{r}");
    // A's token is not B's.
    activate(&env, &a, "thing_model", true).await;
    let ta = token(&env, &a).await;
    let r = cloud(
        &env,
        &b,
        "/cloud/thing/info/get",
        json!({"iotId": b.devices[0].iot}),
        Call {
            token: Some(&ta),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["code"], 401, "{r}");
    env.stop().await;
}

#[tokio::test]
async fn catalogue_operations_answer_with_the_project_data() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    for g in ["thing_model", "user_account", "device_binding", "data_sync"] {
        activate(&env, &p, g, true).await;
    }
    let dev = &p.devices[0];
    for v in [10, 20, 30] {
        let (s, r) = env
            .post(
                &format!("/api/v1/projects/{}/devices/{}/properties", p.pid, dev.iot),
                json!({"items": {"Brightness": v}}),
            )
            .await;
        assert!(s.is_success(), "{r}");
        env.clock.advance_ms(1000);
    }
    env.post(
        &format!("/api/v1/projects/{}/users", p.pid),
        json!({"loginName": "bob"}),
    )
    .await;
    let t = token(&env, &p).await;
    let call = |path: &'static str, params: Value| with_token(&env, &p, &t, path, params);
    let r = call("/cloud/thing/properties/get", json!({"iotId": dev.iot})).await;
    assert_eq!(r["data"][0]["identifier"], "Brightness");
    assert_eq!(r["data"][0]["value"], 30);
    let r = call(
        "/cloud/thing/property/timeline/get",
        json!({"iotId": dev.iot, "identifier": "Brightness", "start": 0, "end": i64::MAX, "limit": 2}),
    )
    .await;
    let values: Vec<Value> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["value"].clone())
        .collect();
    assert_eq!(values, vec![json!(30), json!(20)], "{r}");
    let r = call(
        "/cloud/thing/productList/get",
        json!({"pageNo": 1, "pageSize": 10}),
    )
    .await;
    assert_eq!(r["data"]["total"], 1);
    assert_eq!(r["data"]["data"][0]["productKey"], p.pk.as_str());
    let r = call("/cloud/account/queryIdentityByPage", json!({})).await;
    assert_eq!(r["data"]["data"][0]["loginName"], "bob");
    let r = call("/cloud/sync/stats/get", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["projectId"], p.pid.as_str());
    let r = call("/cloud/thing/info/get", json!({"iotId": "nosuchdevice"})).await;
    assert_eq!(r["code"], 404);
    let r = call("/cloud/thing/info/get", json!({})).await;
    assert_eq!(r["code"], 460);
    let r = call("/cloud/thing/productList/get", json!({"pageSize": 0})).await;
    assert_eq!(r["code"], 460, "{r}");
    let r = call("/cloud/no/such/api", json!({})).await;
    assert_eq!(r["code"], 404);
    env.stop().await;
}

#[tokio::test]
async fn a_message_is_traced_through_the_cloud_api_and_another_projects_is_not_found() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let other = env.project_with_devices("Other", &["lamp0002"]).await;
    activate(&env, &p, "data_sync", true).await;
    let mine = env.report(&p, json!({"Brightness": 5})).await;
    let theirs = env.report(&other, json!({"Brightness": 6})).await;
    let t = token(&env, &p).await;
    let call = |path: &'static str, params: Value| with_token(&env, &p, &t, path, params);
    let r = call(
        "/cloud/sync/message/get",
        json!({"messageId": mine["messageId"]}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["data"]["messageId"], mine["messageId"], "{r}");
    assert_eq!(r["data"]["groups"][0]["group"], p.app_key.as_str(), "{r}");
    assert_eq!(r["data"]["groups"][0]["state"], "stacked", "{r}");
    assert_eq!(
        r["data"]["payload"]["items"]["Brightness"]["value"], 5,
        "{r}"
    );
    // Another project's message id is not this project's business.
    let r = call(
        "/cloud/sync/message/get",
        json!({"messageId": theirs["messageId"]}),
    )
    .await;
    assert_eq!(r["code"], 404, "{r}");
    let r = call("/cloud/sync/message/get", json!({})).await;
    assert_eq!(r["code"], 460, "{r}");
    let r = call(
        "/cloud/sync/message/query",
        json!({"iotId": p.iot(), "limit": 10}),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let ids: Vec<&Value> = r["data"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["messageId"])
        .collect();
    assert!(ids.contains(&&mine["messageId"]), "{r}");
    // Another project's device is not found either.
    let r = call("/cloud/sync/message/query", json!({"iotId": other.iot()})).await;
    assert_eq!(r["code"], 404, "{r}");
    let r = call(
        "/cloud/sync/message/query",
        json!({"iotId": p.iot(), "from": 10, "to": 5}),
    )
    .await;
    assert_eq!(r["code"], 460, "{r}");
    env.stop().await;
}
