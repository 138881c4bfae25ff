//! The HTTP/2 (gRPC) consumer of SPEC §7.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iotsync_sdk::http2::Http2Error> {
//! use iotsync_sdk::http2::{Http2Consumer, Http2ConsumerConfig};
//! let cfg = Http2ConsumerConfig::new("http://127.0.0.1:7881", "appKey", "appSecret");
//! let mut consumer = Http2Consumer::connect(cfg)?;
//! // Stream style: take deliveries one by one and settle each.
//! while let Some(d) = consumer.next().await {
//!     println!("{} {}", d.envelope.topic, String::from_utf8_lossy(&d.envelope.payload));
//!     d.ack().await; // commit success; `d.fail()` asks for a redelivery
//! }
//! # Ok(()) }
//! ```
//!
//! Or hand a handler to [`Http2Consumer::run`]: `Ok(())` acks, `Err(_)` is a commit
//! failure (redelivered later). The consumer reconnects by itself with exponential
//! backoff and jitter; it signs each connection with a fresh `random`. Deliveries of a
//! connection that dropped are redelivered by the platform (de-duplicate by messageId).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use iotsync_core::sign::http2::Http2AuthParams;
use iotsync_core::{AppKey, ConsumerGroup, Envelope};

use crate::backoff::Backoff;

/// The generated protobuf types and client of `proto/iotsync/sync/v1/sync.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("iotsync.sync.v1");
}

use pb::sync_service_client::SyncServiceClient;
use pb::{consume_request, consume_response, Ack, ConsumeRequest, Credit};

#[derive(Debug, thiserror::Error)]
pub enum Http2Error {
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
}

/// How to reach and authenticate.
#[derive(Debug, Clone)]
pub struct Http2ConsumerConfig {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub endpoint: String,
    pub app_key: String,
    pub app_secret: String,
    /// Consumer group; `None` = the default group (named after the appKey).
    pub group: Option<String>,
    /// Shown in the platform's consumer list.
    pub client_id: Option<String>,
    /// Most unacknowledged messages in flight (1..=10000).
    pub credit: u32,
    /// PEM of a CA to trust for `https://` (e.g. the server's self-signed development
    /// certificate); `None` = the built-in web PKI roots are not included, so give one.
    pub ca_pem: Option<Vec<u8>>,
    /// Reconnect delays.
    pub backoff: Backoff,
}

impl Http2ConsumerConfig {
    pub fn new(endpoint: impl Into<String>, app_key: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            app_key: app_key.into(),
            app_secret: app_secret.into(),
            group: None,
            client_id: None,
            credit: 256,
            ca_pem: None,
            backoff: Backoff::default(),
        }
    }
}

/// The state of the connection, for logs and health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Connecting,
    Connected,
    /// Disconnected with the server's reason (gRPC status and message); reconnecting.
    Disconnected { code: String, message: String },
    Closed,
}

/// One received message; settle it with [`Delivery::ack`] or [`Delivery::fail`].
/// Dropping it unsettled leaves it in flight until the connection ends or the ack
/// time-out passes; then it is redelivered.
#[derive(Debug)]
pub struct Delivery {
    pub envelope: Envelope,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    acks: mpsc::Sender<ConsumeRequest>,
}

impl Delivery {
    async fn settle(self, success: bool) {
        let req = ConsumeRequest {
            kind: Some(consume_request::Kind::Ack(Ack {
                message_id: self.envelope.message_id.to_string(),
                success,
            })),
        };
        // A closed connection: the platform redelivers it anyway.
        let _ = self.acks.send(req).await;
    }

    /// Commit success: the message is done.
    pub async fn ack(self) {
        self.settle(true).await
    }

    /// Commit failure: deliver it again later.
    pub async fn fail(self) {
        self.settle(false).await
    }
}

pub struct Http2Consumer {
    rx: mpsc::Receiver<Delivery>,
    state: watch::Receiver<ConnectionState>,
    task: JoinHandle<()>,
}

impl Http2Consumer {
    /// Starts connecting in the background (and reconnecting whenever the connection
    /// drops); messages arrive through [`Http2Consumer::next`].
    pub fn connect(cfg: Http2ConsumerConfig) -> Result<Self, Http2Error> {
        let app_key: AppKey = cfg.app_key.parse().map_err(|e: iotsync_core::ids::IdError| {
            Http2Error::Config {
                field: "app_key",
                reason: e.to_string(),
            }
        })?;
        let group = match &cfg.group {
            Some(g) => Some(g.parse::<ConsumerGroup>().map_err(|e| Http2Error::Config {
                field: "group",
                reason: e.to_string(),
            })?),
            None => None,
        };
        if cfg.credit == 0 || cfg.credit > 10_000 {
            return Err(Http2Error::Config {
                field: "credit",
                reason: "must be 1..=10000".into(),
            });
        }
        let endpoint = endpoint(&cfg)?;
        let (tx, rx) = mpsc::channel(cfg.credit as usize);
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let task = tokio::spawn(connection_loop(cfg, endpoint, app_key, group, tx, state_tx));
        Ok(Self { rx, state, task })
    }

    /// The next delivery; `None` once the consumer is closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Watches the connection state.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Waits until the first connection is up (or `timeout` passes).
    pub async fn wait_connected(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(
            timeout,
            self.state.wait_for(|s| *s == ConnectionState::Connected),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Handler style: `Ok(())` acks, `Err(_)` is a commit failure (redelivered later).
    /// Runs until the consumer is closed.
    pub async fn run<H, Fut, E>(mut self, mut handler: H)
    where
        H: FnMut(Envelope) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        while let Some(d) = self.next().await {
            match handler(d.envelope.clone()).await {
                Ok(()) => d.ack().await,
                Err(e) => {
                    tracing::warn!(message_id = %d.envelope.message_id, error = %e, "handler failed: asking for a redelivery");
                    d.fail().await
                }
            }
        }
    }

    /// Stops consuming; unsettled deliveries are redelivered by the platform.
    pub fn close(self) {
        self.task.abort();
    }
}

impl Drop for Http2Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn endpoint(cfg: &Http2ConsumerConfig) -> Result<Endpoint, Http2Error> {
    let bad = |reason: String| Http2Error::Config {
        field: "endpoint",
        reason,
    };
    let mut ep = Endpoint::from_shared(cfg.endpoint.clone())
        .map_err(|e| bad(e.to_string()))?
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if cfg.endpoint.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = &cfg.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        ep = ep.tls_config(tls).map_err(|e| bad(e.to_string()))?;
    }
    Ok(ep)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn connection_loop(
    mut cfg: Http2ConsumerConfig,
    endpoint: Endpoint,
    app_key: AppKey,
    group: Option<ConsumerGroup>,
    out: mpsc::Sender<Delivery>,
    state: watch::Sender<ConnectionState>,
) {
    loop {
        let _ = state.send(ConnectionState::Connecting);
        let (code, message, healthy) =
            match one_connection(&cfg, &endpoint, &app_key, &group, &out, &state).await {
                Ok(healthy) => ("OK".to_owned(), "stream ended".to_owned(), healthy),
                Err((s, healthy)) => (format!("{:?}", s.code()), s.message().to_owned(), healthy),
            };
        if out.is_closed() {
            let _ = state.send(ConnectionState::Closed);
            return;
        }
        if healthy {
            cfg.backoff.reset();
        }
        let delay = cfg.backoff.next_delay();
        tracing::info!(%code, %message, retry_in = ?delay, "iotsync http2 consumer disconnected");
        let _ = state.send(ConnectionState::Disconnected { code, message });
        tokio::time::sleep(delay).await;
    }
}

/// One connection; `healthy` = it got at least one message or lasted 30 s.
async fn one_connection(
    cfg: &Http2ConsumerConfig,
    endpoint: &Endpoint,
    app_key: &AppKey,
    group: &Option<ConsumerGroup>,
    out: &mpsc::Sender<Delivery>,
    state: &watch::Sender<ConnectionState>,
) -> Result<bool, (tonic::Status, bool)> {
    let started = std::time::Instant::now();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| (tonic::Status::unavailable(format!("connect: {e}")), false))?;
    let mut client = SyncServiceClient::new(channel);
    let (req_tx, req_rx) = mpsc::channel::<ConsumeRequest>(cfg.credit as usize + 16);
    let _ = req_tx
        .send(ConsumeRequest {
            kind: Some(consume_request::Kind::Credit(Credit {
                max_in_flight: cfg.credit,
            })),
        })
        .await;
    let mut request = tonic::Request::new(ReceiverStream::new(req_rx));
    let auth = Http2AuthParams::signed(app_key.clone(), group.clone(), &cfg.app_secret, now_ms());
    let md = request.metadata_mut();
    let mut headers = auth.to_headers();
    if let Some(c) = &cfg.client_id {
        headers.push(("x-client-id", c.clone()));
    }
    for (k, v) in headers {
        let key = MetadataKey::from_static(k);
        match MetadataValue::try_from(v.as_str()) {
            Ok(val) => {
                md.insert(key, val);
            }
            Err(_) => {
                return Err((
                    tonic::Status::invalid_argument(format!("{k} is not a valid header value")),
                    false,
                ))
            }
        }
    }
    let mut stream = client
        .consume(request)
        .await
        .map_err(|s| (s, false))?
        .into_inner();
    let _ = state.send(ConnectionState::Connected);
    let mut got_any = false;
    loop {
        let healthy = got_any || started.elapsed() >= Duration::from_secs(30);
        match stream.message().await {
            Ok(Some(resp)) => {
                let Some(consume_response::Kind::Message(m)) = resp.kind else {
                    continue;
                };
                got_any = true;
                let Ok(message_id) = m.message_id.parse() else {
                    tracing::warn!(message_id = %m.message_id, "message with an invalid messageId skipped");
                    continue;
                };
                let d = Delivery {
                    envelope: Envelope {
                        topic: m.topic,
                        message_id,
                        generate_time: m.generate_time,
                        payload: m.payload,
                    },
                    attempt: m.attempt,
                    acks: req_tx.clone(),
                };
                if out.send(d).await.is_err() {
                    return Ok(true);
                }
            }
            Ok(None) => return Ok(healthy),
            Err(s) => return Err((s, healthy)),
        }
    }
}
