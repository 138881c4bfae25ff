//! JSON bodies of the REST API (crates/iotsync-server/src/api/): every route that reads a
//! body, called on a real server in this process (see `iotsync_fuzz::server`), so each
//! body goes through the real extractor into the real request type and on through the
//! handler's checks and the registry.
//!
//! Input: the first byte picks the route (and whether the body is sent as JSON), the rest
//! is the body; `$PID`, `$PK`, `$DN`, `$IOT`, `$ID`, `$AK` in it become the set-up's ids. Every
//! answer is below 500 (a refusal is the client's fault, never an internal error), and
//! every refusal is the JSON error `{code, message, …}` with a non-empty stable code.
#![no_main]

use iotsync_fuzz::server::Harness;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// (method, path) of each route with a JSON body; `{p}` is the project's prefix.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/projects"),
    ("POST", "{p}/products"),
    ("POST", "{p}/products/$PK/devices"),
    ("POST", "{p}/devices/$IOT/properties"),
    ("POST", "{p}/devices/$IOT/events/alarm"),
    ("POST", "{p}/users"),
    ("PATCH", "{p}/users/$ID"),
    ("POST", "{p}/bindings"),
    ("POST", "{p}/sync/enable"),
    ("POST", "{p}/sync/switch"),
    ("PUT", "{p}/sync/legacy"),
    ("PUT", "{p}/sync/products/$PK"),
    ("PUT", "{p}/api-operations/thing_model"),
    ("POST", "/api/v1/admin/import"),
    ("POST", "{p}/consumer-groups"),
    ("POST", "{p}/consumer-groups/$AK/seek"),
    ("POST", "{p}/consumer-groups/$AK/purge"),
    ("PUT", "{p}/consumer-groups/$AK/alerts"),
    ("PUT", "{p}/sync/backlog-settings"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let h = Harness::get();
    let (method, path) = ROUTES[usize::from(pick & 0x7f) % ROUTES.len()];
    let content_type = if pick & 0x80 == 0 {
        "application/json"
    } else {
        "text/plain"
    };
    let path = path.replace("{p}", "/api/v1/projects/$PID");
    let path = String::from_utf8(h.fill(path.as_bytes())).expect("ids are ASCII");
    let a = h.rest(method, &path, content_type, &h.fill(body));
    let text = String::from_utf8_lossy(&a.body);
    assert!(a.status < 500, "{method} {path}: {} {text}", a.status);
    if a.status >= 400 {
        let v: Value = serde_json::from_slice(&a.body)
            .unwrap_or_else(|_| panic!("{method} {path}: {} not JSON: {text}", a.status));
        let code = v["code"].as_str().unwrap_or("");
        assert!(
            !code.is_empty(),
            "{method} {path}: {} without a code: {text}",
            a.status
        );
        assert!(
            v["message"].is_string(),
            "{method} {path}: no message: {text}"
        );
        assert!(
            code.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.'),
            "{method} {path}: code {code:?} is not a stable code"
        );
    }
});
