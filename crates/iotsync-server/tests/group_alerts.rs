//! Consumer-group alerts (issue 14) over real sockets: thresholds set through the REST API,
//! messages stacked with no consumer, the alert seen in `sync/stats`, on `/metrics` and by
//! a real HTTP receiver of the operator webhook (its HMAC checked), then a consumer drains
//! the group and the same three see it recover. Every wait is a deadline, never a timing
//! assertion.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use iotsync_server::delivery::Outcome;
use iotsync_testkit::{assert_error, audit_actions, receive, wait_for, TestServer, WAIT};

const SECRET: &str = "alert-webhook-secret-0123";

/// What the operator's webhook receiver got: one entry per POST, failed ones included.
struct Hook {
    url: String,
    posts: mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
}

impl Hook {
    /// A receiver on 127.0.0.1 port 0 answering 500 to its first `failures` POSTs, 200
    /// after.
    async fn start(failures: usize) -> Hook {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, posts) = mpsc::unbounded_channel();
        let left = Arc::new(AtomicUsize::new(failures));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                let left = left.clone();
                async move {
                    let _ = tx.send((headers, body));
                    let fail = left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if fail {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hook {
            url: format!("http://{addr}/hook"),
            posts,
        }
    }

    /// The next POST: its headers, raw body and body as JSON.
    async fn next(&mut self) -> (HeaderMap, Bytes, Value) {
        let (h, b) = tokio::time::timeout(WAIT, self.posts.recv())
            .await
            .expect("no webhook POST within the wait")
            .unwrap();
        let v = serde_json::from_slice(&b).unwrap();
        (h, b, v)
    }
}

/// Checks the signature the way a receiver would: HMAC-SHA256 of the raw body, hex.
fn assert_signed(headers: &HeaderMap, body: &[u8]) {
    assert_eq!(headers["content-type"], "application/json");
    let sig = headers["x-iotsync-signature"].to_str().unwrap();
    let mac = iotsync_core::sign::HmacMethod::Sha256.mac(SECRET.as_bytes(), body);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sig, format!("sha256={hex}"));
    assert_eq!(iotsync_core::sign::alert::verify(SECRET, body, sig), Ok(()));
    let ts: i64 = headers["x-iotsync-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ts > 0);
}

fn alerts_config(webhook: Option<&str>) -> String {
    let mut c = "[alerts]\nevaluate_every = \"200ms\"\n".to_owned();
    if let Some(url) = webhook {
        c.push_str(&format!(
            "webhook_url = \"{url}\"\nwebhook_secret = \"{SECRET}\"\n"
        ));
    }
    c
}

fn alerts_path(pid: &str, group: &str) -> String {
    format!("/api/v1/projects/{pid}/consumer-groups/{group}/alerts")
}

fn group<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["groups"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["group"] == name))
        .unwrap_or(&Value::Null)
}

/// The line of a series with these labels on `/metrics` (labels in alphabetical order).
fn series(name: &str, pid: &str, group: &str) -> String {
    format!("{name}{{group=\"{group}\",project=\"{pid}\"}}")
}

async fn metric_is(s: &TestServer, line: &str) {
    wait_for(line, async || {
        s.metrics_text().await.lines().any(|l| l == line)
    })
    .await;
}

#[tokio::test]
async fn a_stacked_group_alerts_in_stats_metrics_and_the_signed_webhook_until_a_consumer_drains_it()
{
    // The receiver fails the first POST: the same signed body comes again.
    let mut hook = Hook::start(1).await;
    let s = TestServer::builder()
        .config(&alerts_config(Some(&hook.url)))
        .start()
        .await;
    let p = s.project("Alerts").await;
    let ak = p.app_key.clone();
    let path = alerts_path(&p.pid, &ak);

    let v = s.ok(Method::GET, &path, None).await;
    assert_eq!(v["stackedMax"], Value::Null, "{v}");
    assert_eq!(v["alerting"], false, "{v}");
    let v = s
        .ok(Method::PUT, &path, Some(json!({"stackedMax": 2})))
        .await;
    assert_eq!(
        (
            &v["group"],
            &v["stackedMax"],
            &v["oldestAgeMaxMs"],
            &v["deadLettersMax"]
        ),
        (&json!(ak), &json!(2), &Value::Null, &Value::Null),
        "{v}"
    );
    assert!(v["updatedAt"].is_i64(), "{v}");
    assert_eq!(s.ok(Method::GET, &path, None).await["stackedMax"], 2);
    let audit = s
        .ok(
            Method::GET,
            &format!("/api/v1/projects/{}/audit", p.pid),
            None,
        )
        .await;
    assert_eq!(audit_actions(&audit)[0], "consumer_group.alerts", "{audit}");
    assert_eq!(audit["items"][0]["after"]["stackedMax"], 2);

    // No consumer: three reports (one per device) stack three messages, over 2.
    for i in 0..3 {
        s.report_on(&p, i, json!({"power": i})).await;
    }
    let st = s
        .stats_until(&p.pid, |st| group(st, &ak)["alerting"] == true)
        .await;
    let g = group(&st, &ak);
    assert!(g["stacked"].as_u64().unwrap() >= 3, "{g}");
    assert_eq!(g["thresholds"]["stackedMax"], 2, "{g}");
    assert_eq!(g["thresholds"]["deadLettersMax"], Value::Null, "{g}");
    let since = g["alertingSince"].as_i64().expect("alertingSince");
    assert_eq!(s.ok(Method::GET, &path, None).await["alertingSince"], since);
    metric_is(
        &s,
        &format!("{} 1", series("iotsync_group_alerting", &p.pid, &ak)),
    )
    .await;
    metric_is(
        &s,
        &format!(
            "{} 2",
            series("iotsync_group_alert_stacked_max", &p.pid, &ak)
        ),
    )
    .await;

    // The "alerting" POST, refused once, then sent again byte for byte.
    let (h1, b1, first) = hook.next().await;
    assert_signed(&h1, &b1);
    let (h2, b2, again) = hook.next().await;
    assert_signed(&h2, &b2);
    assert_eq!(b1, b2);
    assert_eq!(h1["x-iotsync-signature"], h2["x-iotsync-signature"]);
    assert_eq!(first["event"], "alerting", "{first}");
    assert_eq!(first["projectId"], p.pid);
    assert_eq!(first["group"], ak);
    assert_eq!(first["since"], since);
    assert_eq!(first["at"], since);
    assert!(first["stacked"].as_u64().unwrap() >= 3, "{first}");
    assert_eq!(first["deadLetters"], 0);
    assert!(first.get("oldestAgeMs").is_some(), "{first}");
    assert_eq!(
        first["thresholds"],
        json!({"stackedMax": 2, "oldestAgeMaxMs": null, "deadLettersMax": null})
    );
    assert_eq!(first["exceeded"], json!(["stackedMax"]));
    drop(again);

    // A consumer drains the group: it recovers everywhere.
    let mut link = s.attach(&p.pid, &ak).await;
    receive(&mut link, 3, Outcome::Accepted).await;
    let st = s
        .stats_until(&p.pid, |st| group(st, &ak)["alerting"] == false)
        .await;
    assert_eq!(group(&st, &ak)["alertingSince"], Value::Null, "{st}");
    assert_eq!(group(&st, &ak)["stacked"], 0, "{st}");
    let (h, b, recovered) = hook.next().await;
    assert_signed(&h, &b);
    assert_eq!(recovered["event"], "recovered", "{recovered}");
    assert_eq!(recovered["since"], since);
    assert!(recovered["at"].as_i64().unwrap() >= since);
    assert_eq!(recovered["stacked"], 0);
    assert_eq!(recovered["exceeded"], json!([]));
    metric_is(
        &s,
        &format!("{} 0", series("iotsync_group_alerting", &p.pid, &ak)),
    )
    .await;
    metric_is(&s, "iotsync_alert_webhook_sent_total 2").await;
    assert_eq!(s.metric("iotsync_alert_webhook_failed_total").await, 0.0);
    drop(link);
    s.stop().await;
}

#[tokio::test]
async fn each_threshold_alone_puts_a_group_in_alert_and_clearing_it_ends_the_alert() {
    let s = TestServer::builder()
        .config(&alerts_config(None))
        .start()
        .await;
    let p = s.project("Ages").await;
    s.post_expect(
        &format!("/api/v1/projects/{}/consumer-groups", p.pid),
        json!({"name": "billing"}),
        StatusCode::CREATED,
    )
    .await;
    let path = alerts_path(&p.pid, "billing");
    s.ok(Method::PUT, &path, Some(json!({"oldestAgeMaxMs": 60000})))
        .await;
    s.report_device(&p.pid, p.iot(), json!({"power": 1})).await;
    s.stats_until(&p.pid, |st| group(st, "billing")["stacked"] == 1)
        .await;

    // The oldest message gets older than a minute (the server's manual clock).
    s.clock.advance_ms(61_000);
    let st = s
        .stats_until(&p.pid, |st| group(st, "billing")["alerting"] == true)
        .await;
    assert!(
        group(&st, "billing")["oldestStackedAgeMs"]
            .as_i64()
            .unwrap()
            > 60_000
    );
    // The default group has no thresholds: it never alerts.
    let d = group(&st, &p.app_key);
    assert_eq!(d["alerting"], false, "{d}");
    assert_eq!(
        d["thresholds"],
        json!({"stackedMax": null, "oldestAgeMaxMs": null, "deadLettersMax": null})
    );

    // Every threshold cleared (null counts as left out): the alert ends.
    let v = s
        .ok(Method::PUT, &path, Some(json!({"oldestAgeMaxMs": null})))
        .await;
    assert_eq!(v["updatedAt"], Value::Null, "{v}");
    s.stats_until(&p.pid, |st| {
        group(st, "billing")["alerting"] == false
            && group(st, "billing")["thresholds"]["oldestAgeMaxMs"].is_null()
    })
    .await;

    // Dead letters over 0: a consumer of the group rejects the message.
    s.ok(Method::PUT, &path, Some(json!({"deadLettersMax": 0})))
        .await;
    let mut link = s.attach(&p.pid, "billing").await;
    let d = receive(&mut link, 1, Outcome::Rejected).await;
    let st = s
        .stats_until(&p.pid, |st| group(st, "billing")["alerting"] == true)
        .await;
    assert_eq!(group(&st, "billing")["deadLetters"], 1, "{st}");
    // Dropping the dead letter ends it.
    let mid = d[0].message.envelope.message_id.to_string();
    let (status, _) = s
        .delete(&format!(
            "/api/v1/projects/{}/sync/dead-letters/{mid}",
            p.pid
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    s.stats_until(&p.pid, |st| group(st, "billing")["alerting"] == false)
        .await;
    drop(link);
    s.stop().await;
}

#[tokio::test]
async fn bad_thresholds_and_unknown_groups_are_refused_with_the_field_named() {
    let s = TestServer::builder()
        .config(&alerts_config(None))
        .start()
        .await;
    let p = s.project("Inputs").await;
    let path = alerts_path(&p.pid, &p.app_key);
    for (body, field) in [
        (json!({"stackedMax": -1}), "stackedMax"),
        (json!({"oldestAgeMaxMs": "5000"}), "oldestAgeMaxMs"),
        (json!({"deadLettersMax": 1.5}), "deadLettersMax"),
        (
            json!({"stackedMax": 9_223_372_036_854_775_808_u64}),
            "stackedMax",
        ),
        (json!({"stackedMax": 1, "stackedMAX": 1}), "stackedMAX"),
        (json!([1]), "body"),
    ] {
        let r = s.put(&path, body.clone()).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_argument", Some(field));
        assert!(
            r.1["message"].as_str().unwrap().contains(field) || field == "body",
            "{body}: {}",
            r.1
        );
    }
    let r = s
        .put(&alerts_path(&p.pid, "nobody"), json!({"stackedMax": 1}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    assert!(
        r.1["message"].as_str().unwrap().contains("nobody"),
        "{}",
        r.1
    );
    let r = s.get(&alerts_path(&p.pid, "nobody")).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = s
        .put(&alerts_path("nosuchproject", &p.app_key), json!({}))
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    let r = s
        .put(&alerts_path(&p.pid, "bad!name"), json!({"stackedMax": 1}))
        .await;
    assert_error(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        Some("name"),
    );
    let r = s
        .http
        .put(format!("{}{path}", s.base))
        .bearer_auth(iotsync_testkit::TOKEN)
        .header("content-type", "text/plain")
        .body("stackedMax=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Nothing of the refused bodies was stored.
    let v = s.ok(Method::GET, &path, None).await;
    assert_eq!(v["stackedMax"], Value::Null, "{v}");

    // A deleted group takes its thresholds along: declared again, it has none.
    let groups = format!("/api/v1/projects/{}/consumer-groups", p.pid);
    s.post_expect(&groups, json!({"name": "billing"}), StatusCode::CREATED)
        .await;
    let billing = alerts_path(&p.pid, "billing");
    s.ok(Method::PUT, &billing, Some(json!({"stackedMax": 10})))
        .await;
    let (status, _) = s.delete(&format!("{groups}/billing")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let r = s.get(&billing).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found", None);
    s.post_expect(&groups, json!({"name": "billing"}), StatusCode::CREATED)
        .await;
    let v = s.ok(Method::GET, &billing, None).await;
    assert_eq!(v["stackedMax"], Value::Null, "{v}");
    assert_eq!(v["updatedAt"], Value::Null, "{v}");
    s.stop().await;
}
