//! The REST client of the tests: the operator token on every request, JSON both ways, and
//! the reads of the figures the tests wait on.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::WAIT;

/// A client of one server's REST API (`base` is `http://host:port`).
#[derive(Clone)]
pub struct Rest {
    pub base: String,
    pub http: Client,
    token: String,
}

impl Rest {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            http: Client::new(),
            token: token.into(),
        }
    }

    /// One request to `path` (from the root, e.g. `/api/v1/projects`); the body is the
    /// answer's JSON, `Null` when empty, a JSON string when it is not JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None).await
    }

    /// The answer of a request that must succeed (2xx).
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    /// The answer of a POST that must answer `want`.
    pub async fn post_expect(&self, path: &str, body: Value, want: StatusCode) -> Value {
        let (s, v) = self.post(path, body).await;
        assert_eq!(s, want, "{path}: {v}");
        v
    }

    /// Property `items` reported on a device's behalf; the answer (with `messageId`).
    pub async fn report_device(&self, pid: &str, iot: &str, items: Value) -> Value {
        self.post_expect(
            &format!("/api/v1/projects/{pid}/devices/{iot}/properties"),
            json!({ "items": items }),
            StatusCode::OK,
        )
        .await
    }

    /// The project's delivery figures (`GET …/sync/stats`).
    pub async fn stats(&self, pid: &str) -> Value {
        let (s, v) = self
            .get(&format!("/api/v1/projects/{pid}/sync/stats"))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// The figures of one group (`Null` while the group does not exist).
    pub async fn group_stats(&self, pid: &str, group: &str) -> Value {
        let st = self.stats(pid).await;
        st["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == group).cloned())
            .unwrap_or(Value::Null)
    }

    /// Polls the project's figures until `pred` holds (the dispatcher moves outbox rows
    /// shortly after the API answers); returns them.
    pub async fn stats_until(&self, pid: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let st = self.stats(pid).await;
            if pred(&st) {
                return st;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "figures never matched: {st}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `key` of the group's figures is `want` (e.g. a nack was counted).
    pub async fn wait_stat(&self, pid: &str, group: &str, key: &str, want: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let g = self.group_stats(pid, group).await;
            if g[key] == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{group}.{key} never became {want}: {g}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the project's (only) group has acknowledged `n` messages and holds
    /// none; none may have been delivered twice meanwhile.
    pub async fn wait_all_acknowledged(&self, pid: &str, n: usize) {
        let st = self
            .stats_until(pid, |st| {
                st["groups"][0]["ackedTotal"] == n && st["groups"][0]["stacked"] == 0
            })
            .await;
        assert_eq!(st["groups"][0]["inFlight"], 0, "{st}");
        assert_eq!(st["groups"][0]["redeliveredTotal"], 0, "{st}");
    }

    /// The project's dead letters.
    pub async fn dead_letters(&self, pid: &str) -> Vec<Value> {
        let v = self
            .ok(
                Method::GET,
                &format!("/api/v1/projects/{pid}/sync/dead-letters"),
                None,
            )
            .await;
        v.as_array().cloned().unwrap_or_default()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "/metrics: {}", r.status());
        r.text().await.unwrap()
    }

    /// The value of an unlabelled series on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("{name} not on /metrics"))
            .parse()
            .unwrap()
    }
}

/// The `action`s of an audit page (`GET …/audit`), newest first.
pub fn audit_actions(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not an audit page: {page}"))
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect()
}

/// Asserts an error answer: its status, stable `code`, a message, and `field` or none.
pub fn assert_error(r: &(StatusCode, Value), status: StatusCode, code: &str, field: Option<&str>) {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["code"], code, "{}", r.1);
    assert!(
        r.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.1
    );
    match field {
        Some(f) => assert_eq!(r.1["field"], f, "{}", r.1),
        None => assert!(r.1.get("field").is_none(), "{}", r.1),
    }
}
