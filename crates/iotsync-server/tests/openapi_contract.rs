//! The published contract (issue 17). The OpenAPI document at `/api/v1/openapi.json` covers
//! every route the router serves (read from the router's own route table) and every path
//! SPEC §12 lists, with request bodies where a handler reads one, answers with schemas and
//! error answers with the `{code, message, field?}` schema. Then schemathesis, run against
//! the live server, finds no 5xx, no answer outside its documented status, content type and
//! schema, and no error of another shape.
//!
//! The server runs in-process on port 0 with a temporary data dir and the embedded SQLite
//! registry; schemathesis (PyPI) is the real outside client (`scripts/install-test-deps.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use iotsync_server::api::ApiRoute;
use iotsync_server::delivery::hub::{AttachRequest, ConsumerLink};
use iotsync_server::delivery::{ChannelKind, Outcome};
use iotsync_testkit::{TestServer, TOKEN};

/// Examples schemathesis generates per operation and phase (fuzzing; the coverage phase
/// adds its own deterministic cases). Bounded so the run stays within a few minutes on a
/// 2-core machine.
const EXAMPLES_PER_OPERATION: u32 = 100;

/// The kit's server on the system clock (schemathesis and the probes sign nothing, but
/// dead letters and audit times must be real), with the two calls this file adds.
struct Server(TestServer);

impl std::ops::Deref for Server {
    type Target = TestServer;
    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl Server {
    async fn start() -> Self {
        Server(TestServer::builder().system_clock().start().await)
    }

    /// A POST that must answer 201; returns the body.
    async fn create(&self, path: &str, body: Value) -> Value {
        self.post_expect(path, body, StatusCode::CREATED).await
    }

    async fn document(&self) -> Value {
        let (status, doc) = self.get("/api/v1/openapi.json").await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        doc
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

/// The (method, path) pairs SPEC §12 lists, in the document's spelling of the parameters.
const SPEC_12: &[(&str, &str)] = &[
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects"),
    ("GET", "/api/v1/projects/{project_id}"),
    ("POST", "/api/v1/projects/{project_id}/products"),
    (
        "POST",
        "/api/v1/projects/{project_id}/products/{product_key}/devices",
    ),
    ("GET", "/api/v1/projects/{project_id}/devices/{iot_id}"),
    ("DELETE", "/api/v1/projects/{project_id}/devices/{iot_id}"),
    (
        "POST",
        "/api/v1/projects/{project_id}/devices/{iot_id}/enable",
    ),
    (
        "POST",
        "/api/v1/projects/{project_id}/devices/{iot_id}/disable",
    ),
    (
        "POST",
        "/api/v1/projects/{project_id}/devices/{iot_id}/properties",
    ),
    (
        "POST",
        "/api/v1/projects/{project_id}/devices/{iot_id}/events/{identifier}",
    ),
    ("POST", "/api/v1/projects/{project_id}/users"),
    ("PATCH", "/api/v1/projects/{project_id}/users/{identity_id}"),
    (
        "DELETE",
        "/api/v1/projects/{project_id}/users/{identity_id}",
    ),
    ("POST", "/api/v1/projects/{project_id}/bindings"),
    (
        "DELETE",
        "/api/v1/projects/{project_id}/bindings/{identity_id}/{iot_id}",
    ),
    ("GET", "/api/v1/projects/{project_id}/sync"),
    ("POST", "/api/v1/projects/{project_id}/sync/enable"),
    ("POST", "/api/v1/projects/{project_id}/sync/disable"),
    ("POST", "/api/v1/projects/{project_id}/sync/switch"),
    (
        "PUT",
        "/api/v1/projects/{project_id}/sync/products/{product_key}",
    ),
    ("GET", "/api/v1/projects/{project_id}/sync/stats"),
    ("GET", "/api/v1/projects/{project_id}/sync/dead-letters"),
    (
        "POST",
        "/api/v1/projects/{project_id}/sync/dead-letters/{message_id}/retry",
    ),
    (
        "DELETE",
        "/api/v1/projects/{project_id}/sync/dead-letters/{message_id}",
    ),
    ("GET", "/api/v1/projects/{project_id}/api-operations"),
    (
        "PUT",
        "/api/v1/projects/{project_id}/api-operations/{group}",
    ),
    ("POST", "/api/v1/admin/import"),
];

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every operation of the document: (METHOD, path) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.insert((m.to_uppercase(), path.clone()), op.clone());
            }
        }
    }
    out
}

fn key(r: &ApiRoute) -> (String, String) {
    (r.method.clone(), r.path.clone())
}

#[tokio::test]
async fn the_document_lists_every_route_the_router_serves_and_every_spec_path() {
    let s = Server::start().await;
    let doc = s.document().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let documented: BTreeSet<_> = operations(&doc).into_keys().collect();

    let routes = iotsync_server::api::routes();
    // The router's table has what the issue found missing; a table that lost them (or
    // came back empty) would pass the comparison below trivially.
    assert!(routes.len() >= SPEC_12.len(), "{routes:?}");
    let served: BTreeSet<_> = routes.iter().map(key).collect();

    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the document: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not routed: {unserved:?}"
    );

    for (m, p) in SPEC_12 {
        let k = (m.to_string(), p.to_string());
        assert!(
            documented.contains(&k),
            "SPEC §12 {m} {p} is not in the document"
        );
    }
    s.stop().await;
}

/// `#/components/schemas/ErrorBody` as a `$ref`.
const ERROR_REF: &str = "#/components/schemas/ErrorBody";

#[tokio::test]
async fn every_operation_documents_its_body_its_answers_and_its_errors() {
    let s = Server::start().await;
    let doc = s.document().await;

    let err = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(err["type"], "object", "{err}");
    for f in ["code", "message", "field"] {
        assert!(err["properties"][f].is_object(), "ErrorBody.{f}: {err}");
    }
    let required: BTreeSet<_> = err["required"]
        .as_array()
        .expect("ErrorBody.required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message"]), "{err}");

    let routes: BTreeMap<_, _> = iotsync_server::api::routes()
        .into_iter()
        .map(|r| (key(&r), r))
        .collect();
    let mut ids = BTreeSet::new();
    for ((method, path), op) in operations(&doc) {
        let at = format!("{method} {path}");
        let id = op["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no operationId"));
        assert!(
            ids.insert(id.to_owned()),
            "{at}: operationId {id} is used twice"
        );

        // Every `{param}` of the path is declared.
        let declared: BTreeSet<_> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let in_path: BTreeSet<_> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        assert_eq!(declared, in_path, "{at}: path parameters");

        if let Some(body) = op.get("requestBody") {
            assert!(
                body["content"]["application/json"]["schema"].is_object(),
                "{at}: request body without a JSON schema: {body}"
            );
        }

        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|c| c.starts_with('2')),
            "{at}: no success answer"
        );
        for (code, r) in responses {
            let schema = &r["content"]["application/json"]["schema"];
            match code.as_str() {
                "204" => assert!(r.get("content").is_none(), "{at} 204 has a body"),
                c if c.starts_with('2') => {
                    assert!(schema.is_object(), "{at} {c}: no JSON schema: {r}")
                }
                c => assert_eq!(schema["$ref"], ERROR_REF, "{at} {c}: {r}"),
            }
        }

        let route = routes
            .get(&(method.clone(), path.clone()))
            .unwrap_or_else(|| panic!("{at} is not routed"));
        if route.operator {
            for c in ["401", "429", "500"] {
                assert!(responses.contains_key(c), "{at}: no {c}");
            }
            if !in_path.is_empty() {
                for c in ["400", "404"] {
                    assert!(responses.contains_key(c), "{at}: no {c} (it has path ids)");
                }
            }
            if op.get("requestBody").is_some() {
                for c in ["400", "413", "415"] {
                    assert!(responses.contains_key(c), "{at}: no {c} (it takes a body)");
                }
            }
            if method != "GET" {
                assert!(responses.contains_key("507"), "{at}: no 507 (it writes)");
            }
        } else {
            assert_eq!(
                op["security"],
                json!([{}]),
                "{at}: public, yet asks for a token"
            );
        }
    }
    s.stop().await;
}

/// An id no identifier newtype accepts (`!` is outside every id alphabet).
const BAD_ID: &str = "bad!id";

fn probe_path(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { BAD_ID } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

/// The route table agrees with what the server does: every route is served (not the API's
/// fallback 404 nor a 405), the operator's routes refuse a call without the token and the
/// public ones do not, and a handler reads a body exactly where the document says (a
/// non-JSON body: 415 from the body extractor before the handler's own id checks; no body
/// extractor: the handler's 400 on the path id).
#[tokio::test]
async fn every_route_of_the_table_is_served_and_reads_a_body_where_documented() {
    let s = Server::start().await;
    let ops = operations(&s.document().await);
    for r in iotsync_server::api::routes() {
        let at = format!("{} {}", r.method, r.path);
        let method = Method::from_bytes(r.method.as_bytes()).unwrap();
        let url = format!("{}{}", s.base, probe_path(&r.path));

        let anonymous = s.http.request(method.clone(), &url).send().await.unwrap();
        if r.operator {
            assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{at}");
        } else {
            assert!(
                anonymous.status().is_success(),
                "{at}: {}",
                anonymous.status()
            );
        }

        let mut req = s.http.request(method.clone(), &url).bearer_auth(TOKEN);
        let writes = method != Method::GET;
        if writes {
            req = req.header("content-type", "text/plain").body("probe");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{at}: {body}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["message"] == "no such API route"),
            "{at} is not routed: {body}"
        );
        if writes {
            let takes_body = ops[&key(&r)].get("requestBody").is_some();
            if takes_body {
                assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{at}: {body}");
            } else {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{at}: {body}");
                assert_eq!(body["code"], "invalid_argument", "{at}: {body}");
            }
        }
    }

    // And nothing more: a method the document does not list for a path is not served
    // there (a `routes!` grouping handlers of different paths would serve each on both).
    let mut by_path: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, p) in ops.keys() {
        by_path.entry(p.clone()).or_default().insert(m.clone());
    }
    for (path, methods) in by_path {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            if methods.contains(m) {
                continue;
            }
            let resp = s
                .http
                .request(
                    Method::from_bytes(m.as_bytes()).unwrap(),
                    format!("{}{}", s.base, probe_path(&path)),
                )
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is served undocumented: {body}"
            );
            assert_eq!(
                body["code"], "http.method_not_allowed",
                "{m} {path}: {body}"
            );
        }
    }
    s.stop().await;
}

/// Real objects for the path parameters: schemathesis fills them from its config, so its
/// cases reach the handlers' logic instead of stopping at a 404. Destructive operations
/// get objects of their own, so they do not take the shared ones from the rest.
struct Fixture {
    /// A consumer of the default group, connected through the run (`sync/consumers` lists
    /// it); it rejected the two reports into dead letters.
    _consumer: ConsumerLink,
    /// Dead letters: one for `retry`, one for `DELETE`.
    dead_letters: [String; 2],
    project: String,
    spare_project: String,
    product: String,
    device: String,
    spare_device: String,
    user: String,
    spare_user: String,
}

async fn fixture(s: &Server) -> Fixture {
    let project = s
        .create("/api/v1/projects", json!({"name": "Contract"}))
        .await;
    let pid = project["projectId"].as_str().unwrap().to_owned();
    let spare = s.create("/api/v1/projects", json!({"name": "Spare"})).await;
    let (st, v) = s
        .call(
            Method::POST,
            &format!("/api/v1/projects/{pid}/sync/enable"),
            Some(json!({"method": "amqp"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let product = s
        .create(
            &format!("/api/v1/projects/{pid}/products"),
            json!({"name": "Lamp", "deviceType": "Light"}),
        )
        .await;
    let pk = product["productKey"].as_str().unwrap().to_owned();
    let mut devices = Vec::new();
    for dn in ["lamp-0001", "lamp-0002"] {
        let d = s
            .create(
                &format!("/api/v1/projects/{pid}/products/{pk}/devices"),
                json!({ "deviceName": dn }),
            )
            .await;
        devices.push(d["iotId"].as_str().unwrap().to_owned());
    }
    let mut users = Vec::new();
    for login in ["alice", "bob"] {
        let u = s
            .create(
                &format!("/api/v1/projects/{pid}/users"),
                json!({ "loginName": login }),
            )
            .await;
        users.push(u["identityId"].as_str().unwrap().to_owned());
    }
    s.create(
        &format!("/api/v1/projects/{pid}/bindings"),
        json!({"identityId": users[0], "iotId": devices[0], "owned": 1}),
    )
    .await;
    s.create(
        &format!("/api/v1/projects/{pid}/consumer-groups"),
        json!({"name": "analytics"}),
    )
    .await;
    // Two property reports, rejected by a consumer of the default group: the stats, the
    // stack and the dead-letter list have something in them.
    let hub = s.server().hub();
    let mut consumer = hub
        .attach(AttachRequest {
            project: pid.parse().unwrap(),
            group: project["appKey"].as_str().unwrap().parse().unwrap(),
            channel: ChannelKind::Amqp,
            remote: "openapi_contract".into(),
            client_id: "openapi_contract".into(),
        })
        .await
        .unwrap();
    for power in [1, 0] {
        let (st, v) = s
            .call(
                Method::POST,
                &format!("/api/v1/projects/{pid}/devices/{}/properties", devices[0]),
                Some(json!({"items": {"power": power}})),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let mut dead = Vec::new();
    while dead.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(20), consumer.next(2))
            .await
            .expect("the reports reach the consumer")
            .unwrap();
        for d in batch {
            consumer.settle(&d.token, Outcome::Rejected).await.unwrap();
            dead.push(d.message.envelope.message_id.to_string());
        }
    }
    let (st, listed) = s
        .call(
            Method::GET,
            &format!("/api/v1/projects/{pid}/sync/dead-letters"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    Fixture {
        _consumer: consumer,
        dead_letters: [dead[0].clone(), dead[1].clone()],
        project: pid,
        spare_project: spare["projectId"].as_str().unwrap().to_owned(),
        product: pk,
        device: devices[0].clone(),
        spare_device: devices[1].clone(),
        user: users[0].clone(),
        spare_user: users[1].clone(),
    }
}

/// Per-operation blocks select by `include-name` ("METHOD path"): within one block,
/// separate `include-path` and `include-method` filters match either, not both.
fn schemathesis_config(f: &Fixture, hooks: &Path) -> String {
    format!(
        r#"hooks = "{hooks}"

[parameters]
project_id = "{pid}"
product_key = "{pk}"
iot_id = "{iot}"
identity_id = "{user}"
identifier = "alarm"
message_id = "{dead0}"
name = "analytics"
group = "thing_model"

# Bodies that name objects: real ones most of the time, so binds get past the 404.
[dictionaries.users]
values = ["{user}", "{spare_user}"]

[dictionaries.devices]
values = ["{iot}", "{spare_iot}"]

[[operations]]
include-name = "POST /api/v1/projects/{{project_id}}/bindings"
parameters = {{ project_id = "{pid}", "body.identityId" = {{ dictionary = "users", probability = 0.8 }}, "body.iotId" = {{ dictionary = "devices", probability = 0.8 }} }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project_id}}/sync/dead-letters/{{message_id}}"
parameters = {{ project_id = "{pid}", message_id = "{dead1}" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project_id}}"
parameters = {{ project_id = "{spare_pid}" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project_id}}/devices/{{iot_id}}"
parameters = {{ project_id = "{pid}", iot_id = "{spare_iot}" }}

[[operations]]
include-name = "DELETE /api/v1/projects/{{project_id}}/users/{{identity_id}}"
parameters = {{ project_id = "{pid}", identity_id = "{spare_user}" }}
"#,
        hooks = hooks.display(),
        pid = f.project,
        pk = f.product,
        iot = f.device,
        user = f.user,
        spare_pid = f.spare_project,
        spare_iot = f.spare_device,
        spare_user = f.spare_user,
        dead0 = f.dead_letters[0],
        dead1 = f.dead_letters[1],
    )
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let s = Server::start().await;
    let f = fixture(&s).await;
    let work = tempfile::tempdir().unwrap();
    let hooks = repo_root().join("tests/peers/schemathesis/hooks.py");
    assert!(hooks.is_file(), "{}", hooks.display());
    let config = work.path().join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config(&f, &hooks)).unwrap();
    let junit = work.path().join("junit.xml");
    // From a file, not the URL: loaded from `/api/v1/openapi.json`, schemathesis leaves
    // that operation out of the run.
    let doc = s.document().await;
    let schema = work.path().join("openapi.json");
    std::fs::write(&schema, serde_json::to_vec(&doc).unwrap()).unwrap();

    let started = Instant::now();
    // `python3 -m`: the same interpreter the other peers use, wherever pip put its scripts.
    let out = tokio::process::Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(&schema)
        .args(["--url", &s.base])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,error_body_shape",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &EXAMPLES_PER_OPERATION.to_string()])
        .args(["--seed", "17", "--workers", "2", "--no-color"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .current_dir(work.path())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run schemathesis ({e}); install the test peers with scripts/install-test-deps.sh")
        });
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    println!("schemathesis took {:.1} s", took.as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis found problems (output above)"
    );

    // It tested every operation of the document, not a handful.
    let documented: BTreeSet<String> = operations(&doc)
        .into_keys()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    let report = std::fs::read_to_string(&junit).unwrap();
    let tested: BTreeSet<String> = report
        .split("<testcase name=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    let untested: Vec<_> = documented.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "schemathesis did not test {untested:?}"
    );
    s.stop().await;
}
