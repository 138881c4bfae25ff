//! Ingest → backlog → delivery through the running server: reports over real HTTP,
//! consumers attached through the delivery hub (the same handle every channel uses).
//! Time is a manual clock, so backoff and retention are tested without sleeping on them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use iotsync_core::Clock;
use iotsync_server::delivery::hub::LinkEnd;
use iotsync_server::delivery::{ChannelKind, Outcome};
use iotsync_testkit::{ack_all, nothing, payload, take, Project, TestServer, T0};

/// The delivery tests' server: a manual clock at [`T0`], so generate times are exact.
async fn start() -> TestServer {
    TestServer::builder().clock_at(T0).start().await
}

/// A project with sync on (amqp), one product, the device lamp0001.
async fn project(env: &TestServer) -> Project {
    env.project_with_devices("Home", &["lamp0001"]).await
}

#[tokio::test]
async fn property_report_arrives_with_the_spec_payload() {
    let env = start().await;
    let p = project(&env).await;
    let mut link = env.attach(&p.pid, &p.app_key).await;
    let lifecycle = take(&mut link, 1).await;
    ack_all(&link, &lifecycle).await;
    let out = env
        .report(
            &p,
            json!({"LightSwitch": 1, "Brightness": {"value": 80, "time": T0 - 5}}),
        )
        .await;
    assert_eq!(out["produced"], true);
    let d = take(&mut link, 1).await.remove(0);
    assert_eq!(
        d.message.envelope.message_id.as_str(),
        out["messageId"].as_str().unwrap()
    );
    assert_eq!(
        d.message.envelope.topic,
        format!("/{}/lamp0001/thing/event/property/post", p.pk)
    );
    assert_eq!(d.message.envelope.generate_time, T0);
    assert_eq!(
        payload(&d),
        json!({"deviceType": "Light", "iotId": p.iot(), "productKey": p.pk, "deviceName": "lamp0001",
               "gmtCreate": T0, "items": {"Brightness": {"value": 80, "time": T0 - 5},
                                          "LightSwitch": {"value": 1, "time": T0}}})
    );
    link.settle(&d.token, Outcome::Accepted).await.unwrap();
    // The last values are kept.
    let (_, props) = env
        .get(&format!(
            "/api/v1/projects/{}/devices/{}/properties",
            p.pid,
            p.iot()
        ))
        .await;
    assert_eq!(props.as_array().unwrap().len(), 2);
    // An event.
    let (s, ev) = env
        .post(
            &format!(
                "/api/v1/projects/{}/devices/{}/events/Overheat",
                p.pid,
                p.iot()
            ),
            json!({"value": {"temperature": 91}, "type": "alert"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ev}");
    let d = take(&mut link, 1).await.remove(0);
    assert_eq!(
        d.message.envelope.topic,
        format!("/{}/lamp0001/thing/event/Overheat/post", p.pk)
    );
    let pl = payload(&d);
    assert_eq!(pl["identifier"], "Overheat");
    assert_eq!(pl["type"], "alert");
    assert_eq!(pl["value"]["temperature"], 91);
    assert_eq!(pl["time"], T0);
    env.stop().await;
}

#[tokio::test]
async fn bad_reports_are_refused_and_store_nothing() {
    let env = start().await;
    let p = project(&env).await;
    let base = format!("/api/v1/projects/{}/devices/{}", p.pid, p.iot());
    for (body, field) in [
        (json!({"items": {}}), "items"),
        (json!({"items": {"bad id": 1}}), "items.bad id"),
        (
            json!({"items": {"x": {"value": 1, "time": "later"}}}),
            "items.x.time",
        ),
        (json!({"itemz": {"x": 1}}), "itemz"),
    ] {
        let (s, e) = env.post(&format!("{base}/properties"), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["field"], field, "{e}");
    }
    let (s, e) = env
        .post(&format!("{base}/events/property"), json!({"value": {}}))
        .await;
    assert_eq!(
        (s, e["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("identifier"))
    );
    let (s, e) = env
        .post(&format!("{base}/events/Boom"), json!({"value": 5}))
        .await;
    assert_eq!(
        (s, e["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("value"))
    );
    let (s, _) = env
        .post(
            &format!("{base}/events/Boom"),
            json!({"value": {}, "type": "fatal"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    env.post(&format!("{base}/disable"), json!({})).await;
    let (s, e) = env
        .post(&format!("{base}/properties"), json!({"items": {"x": 1}}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(e["code"], "device.disabled");
    let (_, props) = env.get(&format!("{base}/properties")).await;
    assert_eq!(props, json!([]), "nothing half-written");
    env.stop().await;
}

#[tokio::test]
async fn a_product_switched_off_produces_no_device_data() {
    let env = start().await;
    let p = project(&env).await;
    let mut link = env.attach(&p.pid, &p.app_key).await;
    let l = take(&mut link, 1).await;
    ack_all(&link, &l).await;
    // A report while the product is on (ingest now knows the device and its product)...
    let on = env.report(&p, json!({"LightSwitch": 1})).await;
    assert_eq!(on["produced"], true);
    let d = take(&mut link, 1).await;
    ack_all(&link, &d).await;
    // ...then the switch takes effect for the very next report.
    env.call(
        reqwest::Method::PUT,
        &format!("/api/v1/projects/{}/sync/products/{}", p.pid, p.pk),
        Some(json!({"enabled": false})),
    )
    .await;
    let out = env.report(&p, json!({"LightSwitch": 0})).await;
    assert_eq!(out["produced"], false);
    nothing(&mut link).await;
    // Disabling the device is seen at once too.
    env.post(
        &format!("/api/v1/projects/{}/devices/{}/disable", p.pid, p.iot()),
        json!({}),
    )
    .await;
    let (s, e) = env
        .post(
            &format!("/api/v1/projects/{}/devices/{}/properties", p.pid, p.iot()),
            json!({"items": {"x": 1}}),
        )
        .await;
    assert_eq!(
        (s, e["code"].clone()),
        (StatusCode::FORBIDDEN, json!("device.disabled"))
    );
    env.stop().await;
}

#[tokio::test]
async fn released_messages_come_back_and_rejected_ones_are_dead_letters() {
    let env = start().await;
    let p = project(&env).await;
    let mut link = env.attach(&p.pid, &p.app_key).await;
    let l = take(&mut link, 1).await;
    ack_all(&link, &l).await;
    env.report(&p, json!({"a": 1})).await;
    let first = take(&mut link, 1).await.remove(0);
    assert_eq!(first.attempt, 1);
    link.settle(&first.token, Outcome::Released).await.unwrap();
    // Backoff: nothing before the retry time (1 s ± 20 %)...
    nothing(&mut link).await;
    // ...then it comes back once the clock passes it, same messageId.
    env.clock.advance_ms(1_300);
    let again = take(&mut link, 1).await.remove(0);
    assert_eq!(
        again.message.envelope.message_id,
        first.message.envelope.message_id
    );
    assert_eq!(again.attempt, 2);
    link.settle(&again.token, Outcome::Rejected).await.unwrap();
    let (_, dl) = env
        .get(&format!("/api/v1/projects/{}/sync/dead-letters", p.pid))
        .await;
    assert_eq!(dl.as_array().unwrap().len(), 1, "{dl}");
    let mid = dl[0]["messageId"].as_str().unwrap().to_owned();
    assert_eq!(mid, first.message.envelope.message_id.as_str());
    assert_eq!(dl[0]["payload"]["items"]["a"]["value"], 1);
    // Retry from the dead-letter list: delivered again.
    let (s, _) = env
        .post(
            &format!("/api/v1/projects/{}/sync/dead-letters/{mid}/retry", p.pid),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let back = take(&mut link, 1).await.remove(0);
    assert_eq!(back.message.envelope.message_id.as_str(), mid);
    link.settle(&back.token, Outcome::Rejected).await.unwrap();
    // Drop it for good.
    let (s, _) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/{}/sync/dead-letters/{mid}", p.pid),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, dl) = env
        .get(&format!("/api/v1/projects/{}/sync/dead-letters", p.pid))
        .await;
    assert_eq!(dl, json!([]));
    let (s, e) = env
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/projects/{}/sync/dead-letters/{mid}", p.pid),
            None,
        )
        .await;
    assert_eq!(
        (s, e["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    env.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_redelivered_after_the_ack_timeout() {
    let env = start().await;
    let p = project(&env).await;
    let mut link = env.attach(&p.pid, &p.app_key).await;
    let first = take(&mut link, 1).await.remove(0);
    nothing(&mut link).await;
    env.clock.advance_ms(30_001);
    // Timed out at the dispatcher's next tick → retry queue with backoff (1 s ± 20 %).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = env
            .get(&format!("/api/v1/projects/{}/sync/stats", p.pid))
            .await;
        if st["groups"][0]["retryWaiting"] == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never timed out: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.clock.advance_ms(1_300);
    let again = take(&mut link, 1).await.remove(0);
    assert_eq!(
        again.message.envelope.message_id,
        first.message.envelope.message_id
    );
    assert!(again.attempt >= 2);
    env.stop().await;
}

#[tokio::test]
async fn a_dropped_consumers_deliveries_go_to_the_next_one_at_once() {
    let env = start().await;
    let p = project(&env).await;
    let mut a = env.attach(&p.pid, &p.app_key).await;
    let got = take(&mut a, 1).await;
    drop(a); // the connection dropped without settling
    let mut b = env.attach(&p.pid, &p.app_key).await;
    let again = take(&mut b, 1).await;
    assert_eq!(
        again[0].message.envelope.message_id,
        got[0].message.envelope.message_id
    );
    env.stop().await;
}

#[tokio::test]
async fn consumers_of_one_group_share_and_groups_each_get_everything() {
    let env = start().await;
    let p = project(&env).await;
    let mut a = env.attach(&p.pid, &p.app_key).await;
    let mut b = env.attach(&p.pid, &p.app_key).await;
    let mut other = env.attach(&p.pid, "analytics").await;
    let l = take(&mut a, 1).await;
    ack_all(&a, &l).await;
    for i in 0..20 {
        // Separate devices so per-device order does not serialize the group.
        let (_, d) = env
            .post(
                &format!("/api/v1/projects/{}/products/{}/devices", p.pid, p.pk),
                json!({"deviceName": format!("dev{i:04}")}),
            )
            .await;
        let _ = d;
    }
    // 20 lifecycle messages: each goes to exactly one of a/b, and all to `other`.
    let mut seen = std::collections::HashSet::new();
    let mut from_a = 0;
    let mut from_b = 0;
    while seen.len() < 20 {
        tokio::select! {
            r = a.next(3) => { let ds = r.unwrap(); from_a += ds.len(); for d in &ds { assert!(seen.insert(d.message.envelope.message_id.clone())); } ack_all(&a, &ds).await; }
            r = b.next(3) => { let ds = r.unwrap(); from_b += ds.len(); for d in &ds { assert!(seen.insert(d.message.envelope.message_id.clone())); } ack_all(&b, &ds).await; }
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("only {} of 20", seen.len()),
        }
    }
    assert_eq!(from_a + from_b, 20);
    let all = take(&mut other, 20).await;
    assert_eq!(all.len(), 20);
    env.stop().await;
}

#[tokio::test]
async fn disabling_sync_closes_consumers_and_keeps_the_stack() {
    let env = start().await;
    let p = project(&env).await;
    let mut link = env.attach(&p.pid, &p.app_key).await;
    let l = take(&mut link, 1).await;
    ack_all(&link, &l).await;
    env.report(&p, json!({"a": 1})).await;
    env.post(
        &format!("/api/v1/projects/{}/sync/disable", p.pid),
        json!({}),
    )
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match link.next(10).await {
                Err(e) => return e,
                Ok(ds) => {
                    // A delivery that raced the close is simply not settled.
                    let _ = ds;
                }
            }
        }
    })
    .await
    .unwrap();
    match end {
        LinkEnd::Closed(r) => assert_eq!(r.code, "sync.disabled"),
        other => panic!("{other:?}"),
    }
    link.detach().await;
    // Nothing new is produced while disabled...
    let out = env.report(&p, json!({"a": 2})).await;
    assert_eq!(out["produced"], false);
    let st = env.stats_until(&p.pid, |st| st["paused"] == true).await;
    assert_eq!(st["groups"][0]["stacked"], 1, "{st}");
    // ...and the stacked message is delivered after enabling again in time.
    env.post(
        &format!("/api/v1/projects/{}/sync/enable", p.pid),
        json!({"method": "amqp"}),
    )
    .await;
    let mut again = env.attach(&p.pid, &p.app_key).await;
    let d = take(&mut again, 1).await.remove(0);
    assert_eq!(payload(&d)["items"]["a"]["value"], 1);
    env.stop().await;
}

#[tokio::test]
async fn expired_messages_are_counted_not_silently_lost() {
    let env = start().await;
    let p = project(&env).await;
    let st = env
        .stats_until(&p.pid, |st| st["groups"][0]["stacked"] == 1)
        .await;
    assert_eq!(st["retentionMs"], 86_400_000, "AMQP retention is one day");
    // Retention is kept in whole seconds of generateTime.
    env.clock.advance_ms(86_400_000 + 1_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, st) = env
            .get(&format!("/api/v1/projects/{}/sync/stats", p.pid))
            .await;
        if st["groups"][0]["expiredTotal"] == 1 {
            assert_eq!(st["groups"][0]["stacked"], 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = env.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "iotsync_backlog_expired_total{{group=\"{}\",project=\"{}\"}} 1",
            p.app_key, p.pid
        )),
        "{metrics}"
    );
    // The standard process metrics come with the exporter.
    for name in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)),
            "{name} missing: {metrics}"
        );
    }
    let index_bytes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("iotsync_backlog_index_memory_bytes "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        index_bytes.is_some_and(|b| b <= (32u64 << 20) as f64),
        "index memory gauge missing or out of its budget: {metrics}"
    );
    env.stop().await;
}

#[tokio::test]
async fn figures_show_stacked_rates_and_consumers() {
    let env = start().await;
    let p = project(&env).await;
    for i in 0..5 {
        env.report(&p, json!({"n": i})).await;
    }
    let link = env.attach(&p.pid, &p.app_key).await;
    let st = env
        .stats_until(&p.pid, |st| st["groups"][0]["stacked"] == 6)
        .await;
    let g = &st["groups"][0];
    assert_eq!(g["group"], p.app_key);
    assert_eq!(g["stacked"], 6);
    assert_eq!(g["consumers"], 1);
    assert_eq!(g["appendedTotal"], 6);
    assert!(g["oldestStackedAgeMs"].is_number());
    let (_, cs) = env
        .get(&format!("/api/v1/projects/{}/sync/consumers", p.pid))
        .await;
    assert_eq!(cs.as_array().unwrap().len(), 1);
    drop(link);
    let _ = env.clock.now_ms();
    env.stop().await;
}

#[tokio::test]
async fn switching_http2_to_amqp_carries_the_stack_over_with_amqp_retention() {
    let env = start().await;
    let (_, p) = env
        .post("/api/v1/projects", json!({"name": "Switch"}))
        .await;
    let pid = p["projectId"].as_str().unwrap().to_owned();
    let app_key = p["appKey"].as_str().unwrap().to_owned();
    env.post(
        &format!("/api/v1/projects/{pid}/sync/enable"),
        json!({"method": "http2"}),
    )
    .await;
    env.post(
        &format!("/api/v1/projects/{pid}/users"),
        json!({"loginName": "ann"}),
    )
    .await;
    let st = env
        .stats_until(&pid, |st| st["groups"][0]["stacked"] == 1)
        .await;
    assert_eq!(st["retentionMs"], 7 * 86_400_000i64, "HTTP/2 keeps 7 days");
    // An HTTP/2 consumer is connected when the project switches.
    let mut h2 = env.attach_as(&pid, &app_key, ChannelKind::Http2).await;
    let (s, _) = env
        .post(
            &format!("/api/v1/projects/{pid}/sync/switch"),
            json!({"method": "amqp"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let reason = tokio::time::timeout(Duration::from_secs(10), h2.closed())
        .await
        .unwrap();
    assert_eq!(reason.code, "sync.switched");
    h2.detach().await;
    let st = env
        .stats_until(&pid, |st| st["retentionMs"] == 86_400_000)
        .await;
    assert_eq!(st["groups"][0]["stacked"], 1, "the stack carries over");
    // The same message, byte for byte, now reaches an AMQP consumer.
    let mut amqp = env.attach(&pid, &app_key).await;
    let d = take(&mut amqp, 1).await.remove(0);
    assert_eq!(payload(&d)["loginName"], "ann");
    // And it is held to AMQP retention from now on: one day after generateTime it expires.
    amqp.settle(&d.token, Outcome::Released).await.unwrap();
    env.clock.advance_ms(86_400_000 + 1_000);
    env.stats_until(&pid, |st| st["groups"][0]["expiredTotal"] == 1)
        .await;
    env.stop().await;
}

#[tokio::test]
async fn an_imported_project_with_sync_on_stacks_messages_before_any_consumer() {
    let env = start().await;
    let (s, p) = env
        .post(
            "/api/v1/admin/import",
            json!({"name": "Imported", "appKey": "55667788", "appSecret": "imported-secret-9",
                   "sync": {"enabled": true, "deviceData": "amqp", "userData": "amqp"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    let pid = p["projectId"].as_str().unwrap().to_owned();
    env.post(
        &format!("/api/v1/projects/{pid}/users"),
        json!({"loginName": "zoe"}),
    )
    .await;
    let st = env
        .stats_until(&pid, |st| st["groups"][0]["stacked"] == 1)
        .await;
    assert_eq!(
        st["groups"][0]["group"], "55667788",
        "the default group is the appKey"
    );
    let mut link = env.attach(&pid, "55667788").await;
    let d = take(&mut link, 1).await.remove(0);
    assert_eq!(payload(&d)["loginName"], "zoe");
    env.stop().await;
}
