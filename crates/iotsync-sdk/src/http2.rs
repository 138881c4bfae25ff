//! The HTTP/2 (gRPC) consumer of SPEC §7, with the same shape as the AMQP consumer:
//! a builder, a reconnecting [`Http2Consumer::stream`] of messages to settle, or a
//! handler run by [`Http2Consumer::run`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), iotsync_sdk::http2::Http2Error> {
//! use iotsync_sdk::http2::{Commit, Http2Consumer};
//! let consumer = Http2Consumer::builder()
//!     .endpoint("http://127.0.0.1:7881")
//!     .app_key("12345678")
//!     .app_secret("appSecret")
//!     .build()?;
//! // Stream style: take messages one by one and settle each.
//! let mut stream = consumer.stream();
//! while let Some(item) = stream.next().await {
//!     let Ok(m) = item else { continue }; // Err: why a connection ended; it reconnects
//!     println!("{} {}", m.envelope.topic, String::from_utf8_lossy(&m.envelope.payload));
//!     m.ack().await?; // commit success; `m.fail()` asks for a redelivery
//! }
//! // Handler style: consumer.run(|envelope| async move { Commit::Success }).await;
//! # Ok(()) }
//! ```
//!
//! The consumer reconnects by itself with exponential backoff and jitter and signs each
//! connection with a fresh `random`. Messages of a connection that dropped are
//! redelivered by the platform (de-duplicate by messageId).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
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
    /// The connection ended (or could not be made); the status says why, e.g.
    /// `Unavailable: sync.switched: …` or `Unauthenticated: …`.
    #[error("{code:?}: {message}")]
    Disconnected { code: tonic::Code, message: String },
    #[error("the connection ended before settling; the platform delivers the message again")]
    Lost,
}

/// The consumer's verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Done.
    Success,
    /// Not committed: deliver it again later.
    Failure,
}

#[derive(Debug, Clone)]
struct Config {
    endpoint: String,
    app_key: AppKey,
    app_secret: String,
    group: Option<ConsumerGroup>,
    client_id: String,
    credit: u32,
    backoff: Backoff,
    grpc: Endpoint,
}

/// Builds an [`Http2Consumer`].
#[derive(Debug, Default)]
pub struct Http2ConsumerBuilder {
    endpoint: String,
    app_key: String,
    app_secret: String,
    group: Option<String>,
    client_id: Option<String>,
    credit: Option<u32>,
    ca_pem: Option<Vec<u8>>,
    backoff: Option<Backoff>,
}

impl Http2ConsumerBuilder {
    /// `http://host:port` (h2c) or `https://host:port` (TLS).
    pub fn endpoint(mut self, v: impl Into<String>) -> Self {
        self.endpoint = v.into();
        self
    }
    pub fn app_key(mut self, v: impl Into<String>) -> Self {
        self.app_key = v.into();
        self
    }
    pub fn app_secret(mut self, v: impl Into<String>) -> Self {
        self.app_secret = v.into();
        self
    }
    /// Consumer group (default: the project's default group, named after the appKey).
    pub fn group(mut self, v: impl Into<String>) -> Self {
        self.group = Some(v.into());
        self
    }
    /// Shown in the platform's consumer list.
    pub fn client_id(mut self, v: impl Into<String>) -> Self {
        self.client_id = Some(v.into());
        self
    }
    /// Most unacknowledged messages in flight (1..=10000, default 256).
    pub fn credit(mut self, v: u32) -> Self {
        self.credit = Some(v);
        self
    }
    /// A CA to trust for `https://` (e.g. the server's development certificate).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }
    /// Reconnect delays.
    pub fn backoff(mut self, v: Backoff) -> Self {
        self.backoff = Some(v);
        self
    }

    pub fn build(self) -> Result<Http2Consumer, Http2Error> {
        let app_key: AppKey = self
            .app_key
            .parse()
            .map_err(|e: iotsync_core::ids::IdError| Http2Error::Config {
                field: "app_key",
                reason: e.to_string(),
            })?;
        if self.app_secret.is_empty() {
            return Err(Http2Error::Config {
                field: "app_secret",
                reason: "is required".into(),
            });
        }
        let group = match &self.group {
            Some(g) => Some(g.parse::<ConsumerGroup>().map_err(|e| Http2Error::Config {
                field: "group",
                reason: e.to_string(),
            })?),
            None => None,
        };
        let credit = self.credit.unwrap_or(256);
        if credit == 0 || credit > 10_000 {
            return Err(Http2Error::Config {
                field: "credit",
                reason: "must be 1..=10000".into(),
            });
        }
        let grpc = endpoint(&self.endpoint, self.ca_pem.as_deref())?;
        Ok(Http2Consumer {
            cfg: Arc::new(Config {
                endpoint: self.endpoint,
                app_key,
                app_secret: self.app_secret,
                group,
                client_id: self.client_id.unwrap_or_else(|| "iotsync-sdk".into()),
                credit,
                backoff: self.backoff.unwrap_or_default(),
                grpc,
            }),
        })
    }
}

/// A configured consumer; cheap to clone.
#[derive(Clone)]
pub struct Http2Consumer {
    cfg: Arc<Config>,
}

/// One received message; settle it with [`Http2Message::ack`] or [`Http2Message::fail`].
/// Dropping it unsettled leaves it in flight until the connection ends or the ack
/// time-out passes; then it is redelivered.
#[derive(Debug)]
pub struct Http2Message {
    pub envelope: Envelope,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    acks: mpsc::Sender<ConsumeRequest>,
}

impl Http2Message {
    /// Sends the verdict. After the connection was lost this fails; the platform then
    /// delivers the message again.
    pub async fn settle(self, c: Commit) -> Result<(), Http2Error> {
        let req = ConsumeRequest {
            kind: Some(consume_request::Kind::Ack(Ack {
                message_id: self.envelope.message_id.to_string(),
                success: c == Commit::Success,
            })),
        };
        self.acks.send(req).await.map_err(|_| Http2Error::Lost)
    }
    /// Commit success: the message is done.
    pub async fn ack(self) -> Result<(), Http2Error> {
        self.settle(Commit::Success).await
    }
    /// Commit failure: deliver it again later.
    pub async fn fail(self) -> Result<(), Http2Error> {
        self.settle(Commit::Failure).await
    }
}

/// Messages from a consumer. Dropping it closes the connection.
pub struct Http2MessageStream {
    rx: mpsc::Receiver<Result<Http2Message, Http2Error>>,
    task: JoinHandle<()>,
}

impl Http2MessageStream {
    /// The next message; `Some(Err)` reports why a connection ended (the stream goes on
    /// after reconnecting).
    pub async fn next(&mut self) -> Option<Result<Http2Message, Http2Error>> {
        self.rx.recv().await
    }
}

impl Drop for Http2MessageStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Http2Consumer {
    pub fn builder() -> Http2ConsumerBuilder {
        Http2ConsumerBuilder::default()
    }

    /// Reconnects forever with backoff and jitter; connection errors are yielded as
    /// `Err` items and the stream goes on.
    pub fn stream(&self) -> Http2MessageStream {
        let cfg = self.cfg.clone();
        let (tx, rx) = mpsc::channel(cfg.credit as usize + 1);
        let task = tokio::spawn(connection_loop(cfg, tx));
        Http2MessageStream { rx, task }
    }

    /// Runs `handler` for every message (reconnecting as needed) and settles each with
    /// its answer. Never returns.
    pub async fn run<F, Fut>(&self, mut handler: F)
    where
        F: FnMut(Envelope) -> Fut,
        Fut: Future<Output = Commit>,
    {
        let mut s = self.stream();
        while let Some(item) = s.next().await {
            match item {
                Ok(m) => {
                    let c = handler(m.envelope.clone()).await;
                    if let Err(e) = m.settle(c).await {
                        tracing::debug!(error = %e, "http2 consumer: settle after disconnect");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "http2 consumer: reconnecting"),
            }
        }
    }
}

fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, Http2Error> {
    let bad = |reason: String| Http2Error::Config {
        field: "endpoint",
        reason,
    };
    let mut ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(pem) = ca_pem {
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

async fn connection_loop(cfg: Arc<Config>, out: mpsc::Sender<Result<Http2Message, Http2Error>>) {
    let mut backoff = cfg.backoff.clone();
    loop {
        let (status, healthy) = match one_connection(&cfg, &out).await {
            Ok(healthy) => (
                tonic::Status::unavailable("the server ended the stream"),
                healthy,
            ),
            Err(e) => e,
        };
        if out.is_closed() {
            return;
        }
        if healthy {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::info!(endpoint = %cfg.endpoint, code = ?status.code(), message = %status.message(), retry_in = ?delay, "iotsync http2 consumer disconnected");
        let err = Http2Error::Disconnected {
            code: status.code(),
            message: status.message().to_owned(),
        };
        if out.send(Err(err)).await.is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// One connection; `healthy` = it got at least one message or lasted 30 s.
async fn one_connection(
    cfg: &Config,
    out: &mpsc::Sender<Result<Http2Message, Http2Error>>,
) -> Result<bool, (tonic::Status, bool)> {
    let started = std::time::Instant::now();
    let channel = cfg.grpc.connect().await.map_err(|e| {
        (
            tonic::Status::unavailable(format!("connect {}: {e}", cfg.endpoint)),
            false,
        )
    })?;
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
    let auth = Http2AuthParams::signed(
        cfg.app_key.clone(),
        cfg.group.clone(),
        &cfg.app_secret,
        now_ms(),
    );
    let md = request.metadata_mut();
    let mut headers = auth.to_headers();
    headers.push(("x-client-id", cfg.client_id.clone()));
    for (k, v) in headers {
        let val = MetadataValue::try_from(v.as_str()).map_err(|_| {
            (
                tonic::Status::invalid_argument(format!("{k} is not a valid header value")),
                false,
            )
        })?;
        md.insert(MetadataKey::from_static(k), val);
    }
    let mut stream = client
        .consume(request)
        .await
        .map_err(|s| (s, false))?
        .into_inner();
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
                let msg = Http2Message {
                    envelope: Envelope {
                        topic: m.topic,
                        message_id,
                        generate_time: m.generate_time,
                        payload: m.payload,
                    },
                    attempt: m.attempt,
                    acks: req_tx.clone(),
                };
                if out.send(Ok(msg)).await.is_err() {
                    return Ok(true);
                }
            }
            Ok(None) => return Ok(healthy),
            Err(s) => return Err((s, healthy)),
        }
    }
}
