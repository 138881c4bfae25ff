//! The SDK's cloud API client against the running server: it signs, gets the token,
//! renews it when it was replaced, and surfaces answer codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use serde_json::json;

use iotsync_sdk::cloud::{code, CloudClient, CloudConfig};
use iotsync_testkit::TestServer;

#[tokio::test]
async fn sdk_client_signs_manages_the_token_and_reports_codes() {
    let env = TestServer::start().await;
    let p = env.project_with_devices("Home", &["lamp0001"]).await;
    let client = CloudClient::new(CloudConfig::new(
        &env.base,
        &p.app_key,
        &p.app_secret,
        &p.pid,
    ))
    .unwrap();
    let iot = json!({"iotId": p.devices[0].iot});
    let e = client
        .call("/cloud/thing/info/get", iot.clone())
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(code::FORBIDDEN),
        "thing model not activated yet"
    );
    let (s, _) = env
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/projects/{}/api-operations/thing_model", p.pid),
            Some(json!({"activated": true})),
        )
        .await;
    assert!(s.is_success());
    let info = client
        .call("/cloud/thing/info/get", iot.clone())
        .await
        .unwrap();
    assert_eq!(info["deviceName"], "lamp0001");
    // Someone else takes a new token: the client notices and renews its own.
    let other = CloudClient::new(CloudConfig::new(
        &env.base,
        &p.app_key,
        &p.app_secret,
        &p.pid,
    ))
    .unwrap();
    other.refresh_token().await.unwrap();
    let status = client
        .call("/cloud/thing/status/get", iot.clone())
        .await
        .unwrap();
    assert_eq!(status["status"], "inactive");
    let e = client
        .call(
            "/cloud/thing/properties/set",
            json!({"iotId": p.devices[0].iot, "items": {"A": 1}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(code::DEVICE_OFFLINE));
    let bad = CloudClient::new(CloudConfig::new(&env.base, &p.app_key, "wrong", &p.pid)).unwrap();
    assert_eq!(
        bad.call("/cloud/thing/info/get", iot)
            .await
            .unwrap_err()
            .code(),
        Some(code::SIGNATURE)
    );
    env.stop().await;
}
