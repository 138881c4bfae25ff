//! The management REST API over a real HTTP socket: the server runs in-process on port 0
//! with a temporary data dir and the embedded SQLite registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use iotsync_server::delivery::Outcome;
use iotsync_testkit::{assert_error, audit_actions, receive, TestServer, TOKEN};

/// The API tests' server, on the real clock (audit entries are ordered by time).
async fn start() -> TestServer {
    TestServer::builder().system_clock().start().await
}

/// A project named "Home": its id and the create answer.
async fn project(api: &TestServer) -> (String, Value) {
    let p = api
        .post_expect(
            "/api/v1/projects",
            json!({"name": "Home"}),
            StatusCode::CREATED,
        )
        .await;
    (p["projectId"].as_str().unwrap().to_owned(), p)
}

#[tokio::test]
async fn openapi_document_lists_the_core_paths() {
    let api = start().await;
    let doc: Value = reqwest::get(format!("{}/api/v1/openapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/projects",
        "/api/v1/projects/{project_id}/sync/enable",
        "/api/v1/projects/{project_id}/sync/switch",
        "/api/v1/projects/{project_id}/api-operations/{group}",
        "/api/v1/projects/{project_id}/bindings/{identity_id}/{iot_id}",
        "/api/v1/admin/import",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    api.stop().await;
}

#[tokio::test]
async fn every_call_needs_the_operator_token() {
    let api = start().await;
    let r = api
        .http
        .get(format!("{}/api/v1/projects", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let r = api
        .http
        .get(format!("{}/api/v1/projects", api.base))
        .bearer_auth("not-the-token-at-all-000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    api.stop().await;
}

#[tokio::test]
async fn quick_start_creates_project_product_device_user_and_binding() {
    let api = start().await;
    let (pid, p) = project(&api).await;
    assert_eq!(p["appSecret"].as_str().unwrap().len(), 32);
    assert!(p["appKey"].as_str().is_some());
    // The secret is never shown again.
    let (_, got) = api.get(&format!("/api/v1/projects/{pid}")).await;
    assert!(got.get("appSecret").is_none(), "{got}");
    let (_, list) = api.get("/api/v1/projects").await;
    assert!(!list.to_string().contains(p["appSecret"].as_str().unwrap()));

    api.enable_sync(&pid, "amqp").await;
    let pk = api.add_product(&pid).await;
    let (s, d) = api
        .post(
            &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": "lamp-01"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    assert_eq!(d["status"], "inactive");
    assert_eq!(d["deviceType"], "Light");
    assert_eq!(d["deviceSecret"].as_str().unwrap().len(), 32);
    let iot = d["iotId"].as_str().unwrap();
    let (s, u) = api
        .post(
            &format!("/api/v1/projects/{pid}/users"),
            json!({"loginName": "ann", "email": "ann@example.test"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    let ident = u["identityId"].as_str().unwrap();
    let (s, b) = api
        .post(
            &format!("/api/v1/projects/{pid}/bindings"),
            json!({"identityId": ident, "iotId": iot, "owned": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["owned"], 1);
    let (_, bl) = api
        .get(&format!(
            "/api/v1/projects/{pid}/bindings?identityId={ident}"
        ))
        .await;
    assert_eq!(bl["total"], 1);

    // Each change wrote its message (outbox, same transaction); the dispatcher moved it
    // into the backlog, where the default group (named after the appKey) receives it.
    let app_key = p["appKey"].as_str().unwrap();
    let mut link = api.attach(&pid, app_key).await;
    let out = receive(&mut link, 3, Outcome::Accepted).await;
    let topics: Vec<&str> = out
        .iter()
        .map(|d| d.message.envelope.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        vec![
            format!("/{pk}/lamp-01/thing/lifecycle").as_str(),
            format!("/_account/{ident}/lifecycle").as_str(),
            format!("/{pk}/lamp-01/thing/user/binding").as_str(),
        ]
    );

    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{pid}/bindings/{ident}/{iot}"),
            None,
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT);
    let r = api
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{pid}/users/{ident}"),
            Some(json!({"nickName": "Annie"})),
        )
        .await;
    assert_eq!(r.1["nickName"], "Annie");
    let r = api
        .post(
            &format!("/api/v1/projects/{pid}/devices/{iot}/disable"),
            json!({}),
        )
        .await;
    assert_eq!(r.1["status"], "disabled");
    let r = api
        .post(
            &format!("/api/v1/projects/{pid}/devices/{iot}/enable"),
            json!({}),
        )
        .await;
    assert_eq!(r.1["status"], "inactive");
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{pid}/devices/{iot}"),
            None,
        )
        .await;
    assert_eq!(r.0, StatusCode::NO_CONTENT);
    let r = api
        .get(&format!("/api/v1/projects/{pid}/devices/{iot}"))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let kinds: Vec<String> = receive(&mut link, 5, Outcome::Accepted)
        .await
        .iter()
        .map(|d| d.message.kind.code().to_owned())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "user.binding.unbind",
            "account.update",
            "device.lifecycle.disable",
            "device.lifecycle.enable",
            "device.lifecycle.delete"
        ]
    );
    api.stop().await;
}

#[tokio::test]
async fn bad_inputs_get_a_stable_code_and_name_the_field() {
    let api = start().await;
    let (pid, _) = project(&api).await;
    let pk = api.add_product(&pid).await;

    // Not JSON at all.
    let r = api
        .http
        .post(format!("{}/api/v1/projects", api.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_json");
    // Wrong media type.
    let r = api
        .http
        .post(format!("{}/api/v1/projects", api.base))
        .bearer_auth(TOKEN)
        .body("name=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let cases: Vec<(String, Value, &str)> = vec![
        ("/api/v1/projects".into(), json!({}), "name"),
        ("/api/v1/projects".into(), json!({"name": ""}), "name"),
        (
            "/api/v1/projects".into(),
            json!({"name": "x".repeat(65)}),
            "name",
        ),
        (
            "/api/v1/projects".into(),
            json!({"name": "ok", "colour": "red"}),
            "colour",
        ),
        ("/api/v1/projects".into(), json!({"name": 5}), "name"),
        (
            format!("/api/v1/projects/{pid}/products"),
            json!({"name": "L", "deviceType": "Light", "productKey": "bad key!"}),
            "productKey",
        ),
        (
            format!("/api/v1/projects/{pid}/products"),
            json!({"name": "L"}),
            "deviceType",
        ),
        (
            format!("/api/v1/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": "ab"}),
            "deviceName",
        ),
        (
            format!("/api/v1/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": "a/b/c/d"}),
            "deviceName",
        ),
        (
            format!("/api/v1/projects/{pid}/users"),
            json!({"nickName": "x"}),
            "loginName",
        ),
        (
            format!("/api/v1/projects/{pid}/users"),
            json!({"loginName": "x", "phone": "1".repeat(40)}),
            "phone",
        ),
        (
            format!("/api/v1/projects/{pid}/bindings"),
            json!({"identityId": "u", "iotId": "d", "owned": 2}),
            "owned",
        ),
        (
            format!("/api/v1/projects/{pid}/bindings"),
            json!({"identityId": "u u", "iotId": "d", "owned": 1}),
            "identityId",
        ),
        (
            format!("/api/v1/projects/{pid}/sync/enable"),
            json!({"method": "smtp"}),
            "method",
        ),
        (
            "/api/v1/admin/import".into(),
            json!({"name": "x", "appKey": "12345678", "appSecret": "secret0001",
            "sync": {"enabled": true, "deviceData": "amqp", "userData": "http2"}}),
            "sync.userData",
        ),
        (
            "/api/v1/admin/import".into(),
            json!({"name": "x", "appKey": "12345678", "appSecret": "secret0001",
            "sync": {"enabled": true, "deviceData": "amqp", "userData": "carrier_pigeon"}}),
            "sync.userData",
        ),
    ];
    for (path, body, field) in cases {
        let r = api.post(&path, body.clone()).await;
        assert_eq!(r.0, StatusCode::BAD_REQUEST, "{path} {body}: {}", r.1);
        assert_eq!(r.1["field"], field, "{path} {body}: {}", r.1);
        assert!(r.1["code"].is_string());
    }
    let r = api.get("/api/v1/projects?pageSize=500").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("pageSize"),
    );
    let r = api.get("/api/v1/projects?pageNo=abc").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("pageNo"),
    );
    let r = api.get("/api/v1/projects/nope-does-not-exist").await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = api.get("/api/v1/projects/bad%20id").await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("projectId"),
    );
    // Too large a body.
    let r = api
        .post("/api/v1/projects", json!({"name": "x".repeat(2 << 20)}))
        .await;
    assert_eq!(r.0, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.1);
    // Duplicates conflict and name the field.
    let r = api
        .post(
            &format!("/api/v1/projects/{pid}/products"),
            json!({"name": "L", "deviceType": "Light", "productKey": pk}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("productKey"));
    // Nothing half-written: still one product.
    let (_, prods) = api.get(&format!("/api/v1/projects/{pid}/products")).await;
    assert_eq!(prods["total"], 1);
    api.stop().await;
}

#[tokio::test]
async fn every_sync_rule_answers_with_its_clear_error() {
    let api = start().await;
    let (pid, _) = project(&api).await;
    let pk = api.add_product(&pid).await;
    let base = format!("/api/v1/projects/{pid}/sync");

    let (_, st) = api.get(&base).await;
    assert_eq!(st["enabled"], false);
    assert_eq!(st["mode"], "disabled");
    // A product cannot be switched while sync is off.
    let r = api
        .put(&format!("{base}/products/{pk}"), json!({"enabled": false}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "sync.not_enabled", None);
    // Legacy HTTP push can be enabled by no one.
    let r = api
        .post(&format!("{base}/enable"), json!({"method": "legacy_http"}))
        .await;
    assert_error(
        &r,
        StatusCode::CONFLICT,
        "sync.legacy_not_allowed",
        Some("method"),
    );
    // Enable without a body: amqp, the recommended default; all products on.
    let r = api
        .call(Method::POST, &format!("{base}/enable"), None)
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["method"], "amqp");
    assert_eq!(r.1["products"][0]["enabled"], true);
    let r = api
        .post(&format!("{base}/enable"), json!({"method": "http2"}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "sync.already_enabled", None);
    // amqp cannot switch back to http2 directly.
    let r = api
        .post(&format!("{base}/switch"), json!({"method": "http2"}))
        .await;
    assert_error(
        &r,
        StatusCode::CONFLICT,
        "sync.switch_not_supported",
        Some("method"),
    );
    let r = api
        .post(&format!("{base}/switch"), json!({"method": "amqp"}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "sync.same_method", Some("method"));
    let r = api.post(&format!("{base}/switch"), json!({})).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("method"),
    );
    // Per-product off and on.
    let r = api
        .put(&format!("{base}/products/{pk}"), json!({"enabled": false}))
        .await;
    assert_eq!(r.1["syncEnabled"], false);
    let (_, st) = api.get(&base).await;
    assert_eq!(st["products"][0]["enabled"], false);
    let r = api
        .put(&format!("{base}/products/{pk}"), json!({"enabled": "no"}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("enabled"),
    );
    // A product created later is on.
    let pk2 = api.add_product(&pid).await;
    let (_, st) = api.get(&base).await;
    let later = st["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["productKey"] == pk2.as_str())
        .unwrap()
        .clone();
    assert_eq!(later["enabled"], true);
    // Disable, then enable with http2, then switch directly to amqp.
    let r = api.post(&format!("{base}/disable"), json!({})).await;
    assert_eq!(r.1["enabled"], false);
    let r = api.post(&format!("{base}/disable"), json!({})).await;
    assert_error(&r, StatusCode::CONFLICT, "sync.not_enabled", None);
    let r = api
        .post(&format!("{base}/enable"), json!({"method": "http2"}))
        .await;
    assert_eq!(r.1["method"], "http2");
    assert!(
        r.1["products"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["enabled"] == true),
        "enable turns every product on"
    );
    let r = api
        .post(&format!("{base}/switch"), json!({"method": "amqp"}))
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    assert_eq!(r.1["method"], "amqp");
    // Every change is in the audit log: who, when, before, after.
    let (_, audit) = api.get(&format!("/api/v1/projects/{pid}/audit")).await;
    let actions = audit_actions(&audit);
    assert_eq!(
        actions,
        vec![
            "sync.switch",
            "sync.enable",
            "sync.disable",
            "sync.product",
            "sync.enable",
            // The first enable declared the default group in the same change.
            "consumer_group.create",
            "project.create"
        ]
    );
    let sw = &audit["items"][0];
    assert_eq!(sw["actor"], "operator");
    assert!(sw["at"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(sw["before"]["deviceData"], "http2");
    assert_eq!(sw["after"]["deviceData"], "amqp");
    api.stop().await;
}

#[tokio::test]
async fn imported_legacy_and_mixed_projects_keep_their_rules() {
    let api = start().await;
    let (s, mixed) = api
        .post(
            "/api/v1/admin/import",
            json!({"name": "Old shop", "appKey": "31415926", "appSecret": "imported-secret-1",
                   "sync": {"enabled": true, "deviceData": "http2", "userData": "legacy_http",
                            "legacyHttpUrl": "http://127.0.0.1:9/push"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{mixed}");
    assert!(mixed.get("appSecret").is_none());
    let pid = mixed["projectId"].as_str().unwrap();
    let base = format!("/api/v1/projects/{pid}/sync");
    let (_, st) = api.get(&base).await;
    assert_eq!(st["mode"], "mixed");
    assert_eq!(st["legacyHttpUrl"], "http://127.0.0.1:9/push");
    // Any change of method on a mixed project needs disable + enable with one method.
    let r = api
        .post(&format!("{base}/switch"), json!({"method": "amqp"}))
        .await;
    assert_error(&r, StatusCode::CONFLICT, "sync.mixed_must_reenable", None);
    // The URL can be changed while legacy push is active.
    let r = api
        .put(
            &format!("{base}/legacy"),
            json!({"url": "https://hooks.example.test/iot"}),
        )
        .await;
    assert_eq!(r.1["legacyHttpUrl"], "https://hooks.example.test/iot");
    let r = api
        .put(&format!("{base}/legacy"), json!({"url": "not a url"}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("legacyHttpUrl"),
    );
    api.post(&format!("{base}/disable"), json!({})).await;
    // Once disabled, legacy push can never come back.
    let r = api
        .post(&format!("{base}/enable"), json!({"method": "legacy_http"}))
        .await;
    assert_error(
        &r,
        StatusCode::CONFLICT,
        "sync.legacy_retired",
        Some("method"),
    );
    let r = api
        .put(
            &format!("{base}/legacy"),
            json!({"url": "https://hooks.example.test/iot"}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "sync.legacy_not_active", None);
    let r = api
        .post(&format!("{base}/enable"), json!({"method": "amqp"}))
        .await;
    assert_eq!(r.1["mode"], "single");
    assert_eq!(r.1["legacyRetired"], true);
    // The same appKey cannot be imported twice.
    let r = api
        .post(
            "/api/v1/admin/import",
            json!({"name": "Again", "appKey": "31415926", "appSecret": "imported-secret-2",
                   "sync": {"enabled": false, "deviceData": "none", "userData": "none"}}),
        )
        .await;
    assert_error(&r, StatusCode::CONFLICT, "conflict", Some("appKey"));
    api.stop().await;
}

#[tokio::test]
async fn api_operations_show_activation_and_toggle_by_group() {
    let api = start().await;
    let (pid, _) = project(&api).await;
    let (s, cat) = api
        .get(&format!("/api/v1/projects/{pid}/api-operations"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let groups = cat.as_array().unwrap();
    assert_eq!(groups.len(), 5);
    let token = groups.iter().find(|g| g["group"] == "cloud_token").unwrap();
    assert_eq!(token["activated"], true);
    assert_eq!(token["operations"][0]["path"], "/cloud/token");
    let thing = groups.iter().find(|g| g["group"] == "thing_model").unwrap();
    assert_eq!(thing["activated"], false);
    assert!(thing["operations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["path"] == "/cloud/thing/properties/set"));
    let r = api
        .put(
            &format!("/api/v1/projects/{pid}/api-operations/thing_model"),
            json!({"activated": true}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK);
    assert_eq!(
        r.1.as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"] == "thing_model")
            .unwrap()["activated"],
        true
    );
    let r = api
        .put(
            &format!("/api/v1/projects/{pid}/api-operations/teleport"),
            json!({"activated": true}),
        )
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("group"),
    );
    let (_, audit) = api.get(&format!("/api/v1/projects/{pid}/audit")).await;
    assert_eq!(audit["items"][0]["action"], "api.activation");
    assert_eq!(audit["items"][0]["after"]["group"], "thing_model");
    api.stop().await;
}

#[tokio::test]
async fn one_project_cannot_reach_anothers_things() {
    let api = start().await;
    let (a, _) = project(&api).await;
    let (b, _) = project(&api).await;
    let pk = api.add_product(&a).await;
    let (_, d) = api
        .post(
            &format!("/api/v1/projects/{a}/products/{pk}/devices"),
            json!({"deviceName": "lamp0001"}),
        )
        .await;
    let iot = d["iotId"].as_str().unwrap();
    let r = api
        .get(&format!("/api/v1/projects/{b}/devices/{iot}"))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = api
        .get(&format!("/api/v1/projects/{b}/products/{pk}"))
        .await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);
    let r = api
        .post(
            &format!("/api/v1/projects/{b}/products/{pk}/devices"),
            json!({"deviceName": "lamp0002"}),
        )
        .await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);
    let r = api
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{b}/devices/{iot}"),
            None,
        )
        .await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);
    let (_, devs) = api.get(&format!("/api/v1/projects/{b}/devices")).await;
    assert_eq!(devs["total"], 0);
    let (_, devs) = api.get(&format!("/api/v1/projects/{a}/devices")).await;
    assert_eq!(devs["total"], 1);
    api.stop().await;
}

#[tokio::test]
async fn rotating_credentials_returns_a_new_secret_once() {
    let api = start().await;
    let (pid, p) = project(&api).await;
    let (s, r) = api
        .post(&format!("/api/v1/projects/{pid}/rotate-secret"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(r["appSecret"], p["appSecret"]);
    assert_eq!(r["appKey"], p["appKey"]);
    let (s, _) = api
        .call(Method::DELETE, &format!("/api/v1/projects/{pid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r = api.get(&format!("/api/v1/projects/{pid}")).await;
    assert_eq!(r.0, StatusCode::NOT_FOUND);
    api.stop().await;
}
