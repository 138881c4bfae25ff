//! Small protocol edges of issue 15, finding 8: errors answered outside the handlers
//! have the API's JSON shape (or the cloud envelope), and a QoS 1 PUBLISH with packet
//! identifier 0 is refused by closing the connection (MQTT 3.1.1 §2.3.1).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use reqwest::StatusCode;
use serde_json::{json, Value};

use iotsync_server::gateway::codec::{Packet, Publish};
use iotsync_testkit::{RawDevice, TestServer, TOKEN};

fn json_of(r: &reqwest::Response) -> bool {
    r.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[tokio::test]
async fn invalid_utf8_in_a_path_answers_the_json_error_shape() {
    let env = TestServer::start().await;
    let r = env
        .http
        .get(format!("{}/api/v1/projects/%FF%FE", env.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(json_of(&r), "{:?}", r.headers());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "invalid_argument", "{v}");
    assert!(!v["message"].as_str().unwrap().is_empty());
    env.stop().await;
}

#[tokio::test]
async fn method_not_allowed_answers_a_json_error_and_keeps_allow() {
    let env = TestServer::start().await;
    let r = env
        .http
        .delete(format!("{}/api/v1/projects", env.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(json_of(&r), "{:?}", r.headers());
    let allow = r
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "http.method_not_allowed", "{v}");
    let allow = allow.expect("Allow header");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    env.stop().await;
}

#[tokio::test]
async fn oversized_cloud_body_answers_the_cloud_envelope() {
    let env = TestServer::start().await;
    let body = format!("{{\"id\":\"1\",\"pad\":\"{}\"}}", "x".repeat(3 << 20));
    let r = env
        .http
        .post(format!("{}/cloud/api/v1/thing/properties/get", env.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the cloud API answers 200 with a code"
    );
    assert!(json_of(&r), "{:?}", r.headers());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], 413, "{v}");
    assert!(v.get("data").is_some() && v.get("message").is_some(), "{v}");
    env.stop().await;
}

#[tokio::test]
async fn qos1_publish_with_packet_id_zero_closes_the_connection() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Pid", &["lamp0001"]).await;
    let dev = &p.devices[0];
    let (code, mut d) = RawDevice::connect(&env, &p.pk, dev).await;
    assert_eq!(code, 0);
    let body = json!({"id": "1", "version": "1.0", "params": {"LightSwitch": 1}});
    assert!(
        d.send(&Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: format!("/sys/{}/{}/thing/event/property/post", p.pk, dev.dn),
            packet_id: Some(0),
            payload: serde_json::to_vec(&body).unwrap(),
        }))
        .await
    );
    loop {
        match d.recv().await {
            None => break,
            Some(Packet::PubAck(id)) => panic!("PUBACK {id} for packet id 0"),
            Some(_) => {}
        }
    }
    // A well-formed one on a new connection is acknowledged.
    let (code, mut d) = RawDevice::connect(&env, &p.pk, dev).await;
    assert_eq!(code, 0);
    assert!(
        d.post_properties(&p.pk, &dev.dn, 1, json!({"LightSwitch": 1}))
            .await
    );
    loop {
        match d.recv().await {
            Some(Packet::PubAck(1)) => break,
            Some(_) => {}
            None => panic!("closed instead of PUBACK 1"),
        }
    }
    env.stop().await;
}
