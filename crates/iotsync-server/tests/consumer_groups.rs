//! Declared consumer groups over the REST API (issue 12): declare, list, delete with
//! validation and audit; a declared group collects before any consumer connects; a
//! mixed project's messages are appended only to the groups that take them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use iotsync_testkit::{assert_error, audit_actions, wait_for, TestServer};

/// The server of these tests, on the real clock (audit entries are ordered by time).
async fn start() -> TestServer {
    TestServer::builder().system_clock().start().await
}

fn group<'a>(stats: &'a Value, name: &str) -> Option<&'a Value> {
    stats["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
}

#[tokio::test]
async fn groups_are_declared_listed_and_deleted_with_clear_errors_and_audit() {
    let api = start().await;
    let (s, p) = api.post("/api/v1/projects", json!({"name": "Home"})).await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["projectId"].as_str().unwrap().to_owned();
    let app_key = p["appKey"].as_str().unwrap().to_owned();
    let base = format!("/api/v1/projects/{pid}/consumer-groups");

    let (s, g) = api
        .post(
            &base,
            json!({"name": "billing", "dataClasses": ["device"],
                   "topics": ["/${pk}/${dn}/thing/event/property/post", "device.status"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{g}");
    assert_eq!(g["name"], "billing");
    assert_eq!(g["dataClasses"], json!(["device"]));
    assert_eq!(g["kinds"], json!(["device.property.post", "device.status"]));
    assert_eq!(g["internal"], false);
    assert_eq!(g["default"], false);
    assert_eq!(g["retry"], "backoff");

    // Refusals name the field.
    let cases = [
        (
            json!({"name": "billing"}),
            StatusCode::CONFLICT,
            "conflict",
            "name",
        ),
        (
            json!({"name": "_mine"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "name",
        ),
        (
            json!({"name": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "name",
        ),
        (
            json!({"name": "a b"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "name",
        ),
        (
            json!({"name": "x".repeat(65)}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "name",
        ),
        (
            json!({"name": app_key}),
            StatusCode::CONFLICT,
            "consumer_group.default",
            "name",
        ),
        (
            json!({"name": "t", "topics": ["device.status", "/${pk}/${dn}/thing/nope"]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "topics[1]",
        ),
        (
            json!({"name": "t", "topics": []}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "topics",
        ),
        (
            json!({"name": "t", "dataClasses": ["robots"]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "dataClasses[0]",
        ),
        (
            json!({"name": "t", "dataClasses": []}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "dataClasses",
        ),
        (
            json!({"name": "t", "products": ["ok1234", "bad/pk"]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "products[1]",
        ),
        (
            json!({"name": "t", "colour": "red"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "colour",
        ),
    ];
    for (body, status, code, field) in cases {
        let r = api.post(&base, body.clone()).await;
        assert_error(&r, status, code, Some(field));
    }
    let r = api
        .post(
            "/api/v1/projects/nope/consumer-groups",
            json!({"name": "x"}),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);

    // Enabling sync declares the default group; the list shows both.
    api.enable_sync(&pid, "amqp").await;
    let (_, list) = api.get(&base).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    let mut want = vec![app_key.as_str(), "billing"];
    want.sort();
    assert_eq!(names, want, "{list}");
    let default = list
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == app_key.as_str())
        .unwrap();
    assert_eq!(default["default"], true);
    assert!(default.get("dataClasses").is_none(), "{default}");
    let (s, one) = api.get(&format!("{base}/billing")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["stacked"], 0);

    // Delete: 204, then 404; the reserved prefix is refused.
    let (s, _) = api.delete(&format!("{base}/billing")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let r = api.delete(&format!("{base}/billing")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = api.get(&format!("{base}/billing")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = api.delete(&format!("{base}/_legacy_http")).await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("name"),
    );

    let (_, audit) = api.get(&format!("/api/v1/projects/{pid}/audit")).await;
    let actions = audit_actions(&audit);
    assert_eq!(
        &actions[..4],
        &[
            "consumer_group.delete",
            "sync.enable",
            "consumer_group.create",
            "consumer_group.create"
        ],
        "{audit}"
    );

    // The OpenAPI document lists the paths.
    let (_, doc) = api.get("/api/v1/openapi.json").await;
    assert!(doc["paths"]["/api/v1/projects/{project_id}/consumer-groups"]["post"].is_object());
    assert!(
        doc["paths"]["/api/v1/projects/{project_id}/consumer-groups/{name}"]["delete"].is_object()
    );
    api.stop().await;
}

#[tokio::test]
async fn a_declared_group_collects_what_its_filter_takes_and_a_delete_is_counted() {
    let api = start().await;
    let (_, p) = api.post("/api/v1/projects", json!({"name": "Home"})).await;
    let pid = p["projectId"].as_str().unwrap().to_owned();
    api.post(
        &format!("/api/v1/projects/{pid}/sync/enable"),
        json!({"method": "amqp"}),
    )
    .await;
    let (_, prod) = api
        .post(
            &format!("/api/v1/projects/{pid}/products"),
            json!({"name": "Lamp", "deviceType": "Light"}),
        )
        .await;
    let pk = prod["productKey"].as_str().unwrap();
    let (s, _) = api
        .post(
            &format!("/api/v1/projects/{pid}/consumer-groups"),
            json!({"name": "props", "topics": ["/${productKey}/${deviceName}/thing/event/property/post"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .post(
            &format!("/api/v1/projects/{pid}/consumer-groups"),
            json!({"name": "people", "dataClasses": ["user"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, d) = api
        .post(
            &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
            json!({"deviceName": "lamp-01"}),
        )
        .await;
    let iot = d["iotId"].as_str().unwrap();
    for i in 0..3 {
        let (s, r) = api
            .post(
                &format!("/api/v1/projects/{pid}/devices/{iot}/properties"),
                json!({"items": {"power": i}}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
    }
    let (s, _) = api
        .post(
            &format!("/api/v1/projects/{pid}/users"),
            json!({"loginName": "ann"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let app_key = p["appKey"].as_str().unwrap();
    // Default: lifecycle + 3 reports + account = 5; props: 3; people: 1.
    wait_for("every message appended", async || {
        let st = api.stats(&pid).await;
        group(&st, app_key).is_some_and(|g| g["appendedTotal"] == 5)
    })
    .await;
    let st = api.stats(&pid).await;
    assert_eq!(group(&st, "props").unwrap()["appendedTotal"], 3, "{st}");
    assert_eq!(group(&st, "people").unwrap()["appendedTotal"], 1, "{st}");
    assert_eq!(group(&st, "props").unwrap()["stacked"], 3, "{st}");
    assert_eq!(st["droppedByGroupDelete"], 0);
    let (s, _) = api
        .delete(&format!("/api/v1/projects/{pid}/consumer-groups/props"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let st = api.stats(&pid).await;
    assert_eq!(st["droppedByGroupDelete"], 3, "{st}");
    assert!(group(&st, "props").is_none(), "{st}");

    // Declarations survive a restart and the backlog has them again.
    let dir = api.stop().await;
    let api = TestServer::builder()
        .system_clock()
        .temp_dir(dir)
        .start()
        .await;
    let (_, list) = api
        .get(&format!("/api/v1/projects/{pid}/consumer-groups"))
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let st = api.stats(&pid).await;
    assert_eq!(group(&st, "people").unwrap()["stacked"], 1, "{st}");
    api.stop().await;
}

#[tokio::test]
async fn a_mixed_project_appends_each_message_only_to_the_groups_that_take_it() {
    let api = start().await;
    let url = "http://127.0.0.1:9/push";
    let mut p = api
        .import(
            "31415927",
            "imported-secret-1",
            "http2",
            "legacy_http",
            Some(url),
        )
        .await;
    let pid = p.pid.clone();
    let (_, list) = api
        .get(&format!("/api/v1/projects/{pid}/consumer-groups"))
        .await;
    assert_eq!(list[0]["name"], "31415927");
    assert_eq!(list[0]["dataClasses"], json!(["device"]));
    assert_eq!(list[1]["name"], "_legacy_http");
    assert_eq!(list[1]["dataClasses"], json!(["user"]));
    assert_eq!(list[1]["internal"], true);
    assert_eq!(list[1]["retry"], "legacy_http");

    let iot = api.add_device(&mut p, "lamp-01").await.iot;
    for i in 0..4 {
        api.post(
            &format!("/api/v1/projects/{pid}/devices/{iot}/properties"),
            json!({"items": {"power": i}}),
        )
        .await;
    }
    for n in ["ann", "bob"] {
        let (s, _) = api
            .post(
                &format!("/api/v1/projects/{pid}/users"),
                json!({"loginName": n}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    // Device data (lifecycle + 4 reports) only to the default group, user data only to
    // the legacy group.
    wait_for("every message appended", async || {
        let st = api.stats(&pid).await;
        group(&st, "31415927").is_some_and(|g| g["appendedTotal"] == 5)
            && group(&st, "_legacy_http").is_some_and(|g| g["appendedTotal"] == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st = api.stats(&pid).await;
    assert_eq!(group(&st, "31415927").unwrap()["appendedTotal"], 5, "{st}");
    assert_eq!(
        group(&st, "_legacy_http").unwrap()["appendedTotal"],
        2,
        "{st}"
    );
    assert_eq!(st["storedMessages"], 7, "{st}");
    api.stop().await;
}
