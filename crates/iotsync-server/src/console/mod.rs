//! The web console at `/` (ADR 0006): one HTML shell, a stylesheet and a vanilla-JS
//! script, embedded with `include_str!` (no build step). The script drives the same
//! `/api/v1` the operator uses, authenticated by the console session cookie
//! ([`session`]), so every rule the API enforces shows its own `{code, message, field}`.
//!
//! Routes: `/` (the page), `/console/*` (assets, session sign-in/out, connection details).

pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::context::Listener;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_CSS: &str = include_str!("assets/console.css");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The code samples on the connection panel are the SDK's own examples, which the
/// build compiles (Rust) and a test runs against a server (Python): never a sketch.
const SAMPLES: [Sample; 3] = [
    Sample {
        title: "Rust (iotsync-sdk), AMQP 1.0",
        name: "Rust AMQP sample",
        file: "crates/iotsync-sdk/examples/amqp_consumer.rs",
        code: include_str!("../../../iotsync-sdk/examples/amqp_consumer.rs"),
        channel: "amqp",
    },
    Sample {
        title: "Python (python-qpid-proton, any AMQP 1.0 client)",
        name: "Python qpid-proton sample",
        file: "crates/iotsync-sdk/examples/amqp_consumer.py",
        code: include_str!("../../../iotsync-sdk/examples/amqp_consumer.py"),
        channel: "amqp",
    },
    Sample {
        title: "Rust (iotsync-sdk), HTTP/2 (gRPC)",
        name: "Rust HTTP/2 sample",
        file: "crates/iotsync-sdk/examples/http2_consumer.rs",
        code: include_str!("../../../iotsync-sdk/examples/http2_consumer.rs"),
        channel: "http2",
    },
];

#[derive(Debug, Serialize, PartialEq, Eq)]
struct Sample {
    title: &'static str,
    /// The short label of its code block (and its copy button).
    name: &'static str,
    /// Where the sample lives in the repository.
    file: &'static str,
    code: &'static str,
    /// The channel it consumes: `amqp` or `http2`.
    channel: &'static str,
}

/// Everything the page may load comes from this origin; no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct ConsoleState {
    api: ApiState,
    endpoints: Arc<Endpoints>,
}

impl axum::extract::FromRef<ConsoleState> for ApiState {
    fn from_ref(s: &ConsoleState) -> ApiState {
        s.api.clone()
    }
}

/// The consumer endpoints as bound, shown on the Device Data Synchronization tab. A
/// listener that is not configured is `None`; one on port 0 carries its real port.
#[derive(Debug, Clone, Default)]
struct Endpoints {
    amqp: Option<SocketAddr>,
    amqps: Option<SocketAddr>,
    http2: Option<SocketAddr>,
    http2_tls: Option<SocketAddr>,
}

impl Endpoints {
    fn from_bound(listeners: &[Listener]) -> Endpoints {
        let find = |name: &str| listeners.iter().find(|l| l.name == name).map(|l| l.addr);
        Endpoints {
            amqp: find("amqp"),
            amqps: find("amqps"),
            http2: find("http2"),
            http2_tls: find("http2-tls"),
        }
    }
}

/// The console's routes; `listeners` are the consumer listeners already bound.
pub fn router(api: ApiState, listeners: &[Listener]) -> Router {
    let state = ConsoleState {
        api,
        endpoints: Arc::new(Endpoints::from_bound(listeners)),
    };
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/console/console.css", get(css))
        .route("/console/console.js", get(js))
        .route("/console/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .route(
            "/console/session",
            get(session::current)
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .route("/console/connection", get(connection))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // No other origin may open, embed or read the console's answers, and the page asks
    // for no powerful feature.
    h.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), usb=(), payment=()"),
    );
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Embedded in the binary: a new binary may bring new assets, so revalidate.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CONSOLE_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", CONSOLE_JS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Connection {
    /// `amqp://host:port` (plain, development), if that listener is configured.
    amqp: Option<String>,
    amqps: Option<String>,
    /// `http://host:port` (h2c, development) for gRPC clients.
    http2: Option<String>,
    http2_tls: Option<String>,
    samples: &'static [Sample],
    /// The node that served the page.
    node: String,
}

/// `GET /console/connection`: the consumer endpoints as a client outside reaches them.
async fn connection(
    State(st): State<ConsoleState>,
    headers: HeaderMap,
) -> Result<Json<Connection>, ApiError> {
    session::signed_in(&st.api, &headers).await?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(host_only);
    let e = &st.endpoints;
    Ok(Json(Connection {
        amqp: endpoint("amqp", e.amqp, host),
        amqps: endpoint("amqps", e.amqps, host),
        http2: endpoint("http", e.http2, host),
        http2_tls: endpoint("https", e.http2_tls, host),
        samples: &SAMPLES,
        node: st.api.node_name.to_string(),
    }))
}

/// `example.com:7880` → `example.com`; `[::1]:7880` → `[::1]`.
fn host_only(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The URL of a bound listener; an unspecified address (`0.0.0.0`) is shown with the
/// host the browser used to reach the console. Not bound → `None`.
fn endpoint(scheme: &str, addr: Option<SocketAddr>, request_host: Option<&str>) -> Option<String> {
    let addr = addr?;
    let host = match (addr.ip().is_unspecified(), request_host) {
        (true, Some(h)) if !h.is_empty() => h.to_owned(),
        _ if addr.is_ipv6() => format!("[{}]", addr.ip()),
        _ => addr.ip().to_string(),
    };
    Some(format!("{scheme}://{host}:{}", addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_the_browser_host_for_unspecified_addresses() {
        let a = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(
            endpoint("amqp", a("0.0.0.0:5682"), Some("iot.example.com")).as_deref(),
            Some("amqp://iot.example.com:5682")
        );
        assert_eq!(
            endpoint("amqp", a("127.0.0.1:5682"), Some("iot.example.com")).as_deref(),
            Some("amqp://127.0.0.1:5682")
        );
        assert_eq!(
            endpoint("http", a("[::1]:7881"), None).as_deref(),
            Some("http://[::1]:7881")
        );
        assert_eq!(endpoint("amqps", None, Some("x")), None);
    }

    #[test]
    fn host_header_loses_its_port() {
        assert_eq!(host_only("example.com:7880"), "example.com");
        assert_eq!(host_only("example.com"), "example.com");
        assert_eq!(host_only("[::1]:7880"), "[::1]");
    }
}
