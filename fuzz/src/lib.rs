//! Helpers shared by the fuzz targets.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs a future that never waits on anything outside itself (in-memory I/O) to the end.
pub fn run_now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory future waited"),
    }
}

/// A connection whose peer sends `input` (then closes) and whose writes are kept.
pub struct MemStream<'a> {
    input: &'a [u8],
    pub written: Vec<u8>,
}

impl<'a> MemStream<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for MemStream<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemStream<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A received Base64 MAC as the server decodes it (trimmed, standard alphabet), to
/// compare two encodings of one MAC.
pub fn base64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// A real server in this process (fresh data dir under `$TMPDIR`, every listener on
/// port 0, the system clock) with one project set up: sync on AMQP, every cloud API
/// group activated, a product, a device, a user, and a cloud token.
pub mod server {
    use std::sync::{Arc, OnceLock};

    use iotsync_core::api_catalog::ApiGroup;
    use iotsync_core::sign::api_gateway::{sign_request, OutgoingRequest};
    use iotsync_core::{AppKey, Clock, SystemClock};
    use iotsync_server::{ConfigOverrides, RunningServer, ServerConfig};
    use serde_json::{json, Value};

    pub const TOKEN: &str = "fuzz-operator-token-0123456789";

    pub struct Harness {
        pub rt: tokio::runtime::Runtime,
        pub http: reqwest::Client,
        pub base: String,
        pub pid: String,
        pub app_key: String,
        pub app_secret: String,
        pub pk: String,
        pub dn: String,
        pub iot: String,
        pub identity: String,
        /// Replaced when a fuzzed `/cloud/token` call gets a new one.
        pub cloud_token: std::sync::Mutex<String>,
        _server: RunningServer,
        _dir: tempfile::TempDir,
    }

    /// An answer: status and body.
    pub struct Answer {
        pub status: u16,
        pub body: Vec<u8>,
    }

    impl Harness {
        pub fn get() -> &'static Harness {
            static H: OnceLock<Harness> = OnceLock::new();
            H.get_or_init(Harness::start)
        }

        fn start() -> Harness {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let dir = tempfile::tempdir().expect("temp dir");
            let flags = ConfigOverrides {
                data_dir: Some(dir.path().to_owned()),
                operator_token: Some(TOKEN.into()),
                ..Default::default()
            }
            .ephemeral_listeners();
            let cfg = ServerConfig::layered(None, Default::default(), flags).expect("config");
            let server = rt
                .block_on(iotsync_server::start(cfg, Arc::new(SystemClock)))
                .expect("server starts");
            let base = format!("http://{}", server.api_addr);
            let http = reqwest::Client::new();
            let mut h = Harness {
                rt,
                http,
                base,
                pid: String::new(),
                app_key: String::new(),
                app_secret: String::new(),
                pk: String::new(),
                dn: "lamp-0001".into(),
                iot: String::new(),
                identity: String::new(),
                cloud_token: std::sync::Mutex::new(String::new()),
                _server: server,
                _dir: dir,
            };
            h.set_up();
            h
        }

        fn json(&self, method: &str, path: &str, body: Value) -> Value {
            let a = self.rest(
                method,
                path,
                "application/json",
                body.to_string().as_bytes(),
            );
            assert!(
                a.status < 300,
                "set-up {method} {path}: {} {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            serde_json::from_slice(&a.body).unwrap_or(Value::Null)
        }

        fn set_up(&mut self) {
            let p = self.json("POST", "/api/v1/projects", json!({"name": "fuzz"}));
            self.pid = p["projectId"].as_str().expect("projectId").to_owned();
            self.app_key = p["appKey"].as_str().expect("appKey").to_owned();
            self.app_secret = p["appSecret"].as_str().expect("appSecret").to_owned();
            let pp = format!("/api/v1/projects/{}", self.pid);
            self.json(
                "POST",
                &format!("{pp}/sync/enable"),
                json!({"method": "amqp"}),
            );
            for g in [
                ApiGroup::CloudToken,
                ApiGroup::ThingModel,
                ApiGroup::UserAccount,
                ApiGroup::DeviceBinding,
                ApiGroup::DataSync,
            ] {
                self.json(
                    "PUT",
                    &format!("{pp}/api-operations/{}", g.as_str()),
                    json!({"activated": true}),
                );
            }
            let pr = self.json(
                "POST",
                &format!("{pp}/products"),
                json!({"name": "Lamp", "deviceType": "Light"}),
            );
            self.pk = pr["productKey"].as_str().expect("productKey").to_owned();
            let d = self.json(
                "POST",
                &format!("{pp}/products/{}/devices", self.pk),
                json!({"deviceName": self.dn}),
            );
            self.iot = d["iotId"].as_str().expect("iotId").to_owned();
            let u = self.json("POST", &format!("{pp}/users"), json!({"loginName": "ann"}));
            self.identity = u["identityId"].as_str().expect("identityId").to_owned();
            self.json(
                "POST",
                &format!("{pp}/bindings"),
                json!({"identityId": self.identity, "iotId": self.iot, "owned": 1}),
            );
            let t = self.cloud(
                "/cloud/token",
                json!({"id": "1", "version": "1.0", "request": {"apiVer": "1.0.0"},
                       "params": {"grantType": "project", "res": self.pid}})
                .to_string()
                .as_bytes(),
            );
            let t: Value = serde_json::from_slice(&t.body).expect("token answer");
            *self.token() = t["data"]["cloudToken"]
                .as_str()
                .unwrap_or_else(|| panic!("no cloud token: {t}"))
                .to_owned();
        }

        /// The cloud token in force.
        pub fn token(&self) -> std::sync::MutexGuard<'_, String> {
            self.cloud_token.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// `$PID`, `$PK`, `$DN`, `$IOT`, `$ID`, `$AK` (the appKey: the default consumer
        /// group's name), `$TOKEN` in `s` replaced by the set-up's.
        pub fn fill(&self, s: &[u8]) -> Vec<u8> {
            let token = self.token().clone();
            let mut out = s.to_vec();
            for (k, v) in [
                ("$TOKEN", &token),
                ("$PID", &self.pid),
                ("$IOT", &self.iot),
                ("$PK", &self.pk),
                ("$DN", &self.dn),
                ("$ID", &self.identity),
                ("$AK", &self.app_key),
            ] {
                out = replace(&out, k.as_bytes(), v.as_bytes());
            }
            out
        }

        /// A REST call with the operator token.
        pub fn rest(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Answer {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let req = self
                .http
                .request(m, format!("{}{}", self.base, path))
                .bearer_auth(TOKEN)
                .header("content-type", content_type)
                .body(body.to_vec());
            self.send(req)
        }

        /// A cloud API call signed for the set-up's project, with a fresh nonce.
        pub fn cloud(&self, path: &str, body: &[u8]) -> Answer {
            let app_key: AppKey = self.app_key.parse().expect("appKey");
            let nonce = uuid::Uuid::new_v4().to_string();
            let headers = sign_request(
                &app_key,
                &self.app_secret,
                &OutgoingRequest {
                    method: "POST",
                    path,
                    query: &[],
                    body,
                    accept: "application/json",
                    content_type: "application/json",
                    timestamp_ms: SystemClock.now_ms(),
                    nonce: &nonce,
                },
            );
            let mut req = self
                .http
                .post(format!("{}{}", self.base, path))
                .body(body.to_vec());
            for (k, v) in headers {
                req = req.header(k, v);
            }
            self.send(req)
        }

        fn send(&self, req: reqwest::RequestBuilder) -> Answer {
            self.rt.block_on(async {
                let r = req.send().await.expect("the server answers");
                let status = r.status().as_u16();
                let body = r.bytes().await.expect("the whole answer").to_vec();
                Answer { status, body }
            })
        }
    }

    fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        out
    }
}
