//! The AMQP 1.0 consumer (SPEC §6) for enterprise servers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), iotsync_sdk::amqp::AmqpError> {
//! use iotsync_sdk::amqp::{AmqpConsumer, Disposition};
//! let consumer = AmqpConsumer::builder()
//!     .endpoint("amqps://iot.example.com:5671")
//!     .app_key("12345678")
//!     .app_secret("the-secret")
//!     .group("analytics")
//!     .credit(100)
//!     .build()?;
//! consumer
//!     .run(|env| async move {
//!         println!("{} {}", env.topic, env.message_id);
//!         Disposition::Accept
//!     })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! `stream()` and `run()` reconnect with exponential backoff and jitter; `connect()`
//! makes one connection and reports why it ended. Each message is settled with
//! [`AmqpMessage::ack`], [`AmqpMessage::release`] (retry later) or
//! [`AmqpMessage::reject`] (dead letter), or at receipt with `auto_ack(true)`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use iotsync_core::sign::amqp::{sign_password, AmqpAuthMode, AmqpCredentials};
use iotsync_core::{AppKey, ConsumerGroup, Envelope, SharedClock, SystemClock};

use crate::backoff::Backoff;

/// What went wrong, per operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("connecting to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    /// SASL refused the login (wrong secret, stale time, unknown appKey, rate limit).
    #[error("login refused: {0}")]
    Auth(String),
    /// The server closed the connection or link, with its AMQP error.
    #[error("closed by the server: {condition}: {description}")]
    Closed {
        condition: String,
        description: String,
    },
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("a message is missing {0}")]
    BadMessage(&'static str),
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Processed: the platform forgets it.
    Accept,
    /// Not now: the platform retries it later.
    Release,
    /// Never: the platform moves it to the dead-letter list.
    Reject,
}

/// One server address of the endpoint list.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    tls: bool,
    endpoint: String,
}

#[derive(Clone)]
struct Config {
    /// Tried in turn: a reconnect goes to the next one (a cluster's nodes).
    targets: Vec<Target>,
    app_key: AppKey,
    app_secret: String,
    group: Option<ConsumerGroup>,
    client_id: String,
    credit: u32,
    auto_ack: bool,
    extra_roots_pem: Option<Vec<u8>>,
    server_name: Option<String>,
    backoff: Backoff,
    clock: SharedClock,
    idle_timeout: Duration,
}

/// Builds an [`AmqpConsumer`].
#[derive(Clone)]
pub struct AmqpConsumerBuilder {
    endpoint: Option<String>,
    app_key: Option<String>,
    app_secret: Option<String>,
    group: Option<String>,
    client_id: Option<String>,
    credit: u32,
    auto_ack: bool,
    extra_roots_pem: Option<Vec<u8>>,
    server_name: Option<String>,
    backoff: Backoff,
    clock: Option<SharedClock>,
    idle_timeout: Duration,
}

impl Default for AmqpConsumerBuilder {
    fn default() -> Self {
        Self {
            endpoint: None,
            app_key: None,
            app_secret: None,
            group: None,
            client_id: None,
            credit: 100,
            auto_ack: false,
            extra_roots_pem: None,
            server_name: None,
            backoff: Backoff::default(),
            clock: None,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

fn parse_target(endpoint: &str) -> Result<Target, AmqpError> {
    let (tls, rest) = if let Some(r) = endpoint.strip_prefix("amqps://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("amqp://") {
        (false, r)
    } else {
        return Err(AmqpError::Config {
            field: "endpoint",
            reason: format!("{endpoint:?} must start with amqps:// or amqp://"),
        });
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse::<u16>().map_err(|_| AmqpError::Config {
                field: "endpoint",
                reason: format!("bad port {p:?}"),
            })?,
        ),
        None => (rest.to_owned(), if tls { 5671 } else { 5672 }),
    };
    Ok(Target {
        host,
        port,
        tls,
        endpoint: endpoint.to_owned(),
    })
}

impl AmqpConsumerBuilder {
    /// `amqps://host:port` (TLS) or `amqp://host:port` (plain, development). Several,
    /// comma-separated (`amqps://n1:5671,amqps://n2:5671`), are the nodes of a cluster:
    /// the consumer starts on the first and, whenever a connection ends or cannot be
    /// made, goes on with the next.
    pub fn endpoint(mut self, v: impl Into<String>) -> Self {
        self.endpoint = Some(v.into());
        self
    }
    pub fn app_key(mut self, v: impl Into<String>) -> Self {
        self.app_key = Some(v.into());
        self
    }
    pub fn app_secret(mut self, v: impl Into<String>) -> Self {
        self.app_secret = Some(v.into());
        self
    }
    /// The consumer group; the default group (named after the appKey) when unset.
    pub fn group(mut self, v: impl Into<String>) -> Self {
        self.group = Some(v.into());
        self
    }
    pub fn client_id(mut self, v: impl Into<String>) -> Self {
        self.client_id = Some(v.into());
        self
    }
    /// Link credit: the most messages in flight (unsettled) at once.
    pub fn credit(mut self, v: u32) -> Self {
        self.credit = v.max(1);
        self
    }
    /// Accept each message as it arrives (settle methods become no-ops).
    pub fn auto_ack(mut self, v: bool) -> Self {
        self.auto_ack = v;
        self
    }
    /// Extra trusted root certificates (PEM), e.g. a development server's own certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.extra_roots_pem = Some(pem.into());
        self
    }
    /// The TLS server name to verify (default: the endpoint's host).
    pub fn server_name(mut self, v: impl Into<String>) -> Self {
        self.server_name = Some(v.into());
        self
    }
    pub fn backoff(mut self, v: Backoff) -> Self {
        self.backoff = v;
        self
    }
    /// The clock that timestamps the signature (tests use a manual one).
    pub fn clock(mut self, v: SharedClock) -> Self {
        self.clock = Some(v);
        self
    }
    /// Our idle time-out in the open frame: the server sends heartbeats within it.
    pub fn idle_timeout(mut self, v: Duration) -> Self {
        self.idle_timeout = v;
        self
    }

    pub fn build(self) -> Result<AmqpConsumer, AmqpError> {
        let endpoint = self.endpoint.ok_or(AmqpError::Config {
            field: "endpoint",
            reason: "required".into(),
        })?;
        let targets = endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_target)
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err(AmqpError::Config {
                field: "endpoint",
                reason: "no address given".into(),
            });
        }
        let app_key: AppKey = self
            .app_key
            .ok_or(AmqpError::Config {
                field: "app_key",
                reason: "required".into(),
            })?
            .parse()
            .map_err(|e: iotsync_core::IdError| AmqpError::Config {
                field: "app_key",
                reason: e.to_string(),
            })?;
        let app_secret = self.app_secret.ok_or(AmqpError::Config {
            field: "app_secret",
            reason: "required".into(),
        })?;
        let group = match self.group.filter(|g| !g.is_empty()) {
            Some(g) => Some(g.parse::<ConsumerGroup>().map_err(|e| AmqpError::Config {
                field: "group",
                reason: e.to_string(),
            })?),
            None => None,
        };
        let client_id = self
            .client_id
            .unwrap_or_else(|| format!("iotsync-sdk-{}", rand::random::<u32>()));
        Ok(AmqpConsumer {
            cfg: Arc::new(Config {
                targets,
                app_key,
                app_secret,
                group,
                client_id,
                credit: self.credit,
                auto_ack: self.auto_ack,
                extra_roots_pem: self.extra_roots_pem,
                server_name: self.server_name,
                backoff: self.backoff,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                idle_timeout: self.idle_timeout,
            }),
        })
    }
}

/// A configured consumer; cheap to clone.
#[derive(Clone)]
pub struct AmqpConsumer {
    cfg: Arc<Config>,
}

/// One received message.
pub struct AmqpMessage {
    pub envelope: Envelope,
    /// 1 for a first delivery, 2 for the first redelivery, … (the AMQP header's
    /// `delivery-count` + 1).
    pub attempt: u32,
    settle: Option<(DeliveryInfo, mpsc::Sender<(DeliveryInfo, Disposition)>)>,
}

impl AmqpMessage {
    pub async fn ack(self) -> Result<(), AmqpError> {
        self.settle(Disposition::Accept).await
    }
    pub async fn release(self) -> Result<(), AmqpError> {
        self.settle(Disposition::Release).await
    }
    pub async fn reject(self) -> Result<(), AmqpError> {
        self.settle(Disposition::Reject).await
    }
    /// Settles with `d`. After the connection was lost this fails; the platform then
    /// delivers the message again (de-duplicate by `messageId`).
    pub async fn settle(self, d: Disposition) -> Result<(), AmqpError> {
        match self.settle {
            None => Ok(()),
            Some((info, tx)) => tx
                .send((info, d))
                .await
                .map_err(|_| AmqpError::Lost("the connection ended before settling".into())),
        }
    }
}

/// Messages from a consumer. Dropping it closes the connection.
pub struct MessageStream {
    rx: mpsc::Receiver<Result<AmqpMessage, AmqpError>>,
    task: JoinHandle<()>,
}

impl MessageStream {
    /// The next message; `Some(Err)` reports why a connection ended (a reconnecting stream
    /// goes on after it); `None` when a single connection is over.
    pub async fn next(&mut self) -> Option<Result<AmqpMessage, AmqpError>> {
        self.rx.recv().await
    }

    /// Closes gracefully: the outcomes already settled reach the server, then the session
    /// and connection end. (Dropping the stream instead cuts the connection at once;
    /// outcomes still on their way are then lost and those messages delivered again.)
    pub async fn close(mut self) {
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

impl Drop for MessageStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AmqpConsumer {
    pub fn builder() -> AmqpConsumerBuilder {
        AmqpConsumerBuilder::default()
    }

    /// One connection: waits until it is open and the receiver is attached, then
    /// streams; the stream yields the error that ended it, then `None`.
    pub async fn connect(&self) -> Result<MessageStream, AmqpError> {
        let cfg = self.cfg.clone();
        let (tx, rx) = mpsc::channel(cfg.credit as usize + 1);
        // The first endpoint that takes the connection (`build` refused an empty list).
        let mut last = AmqpError::Config {
            field: "endpoint",
            reason: "no address given".into(),
        };
        let mut opened = None;
        for t in &cfg.targets {
            match open(&cfg, t).await {
                Ok(l) => {
                    opened = Some(l);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let mut link = opened.ok_or(last)?;
        let task = tokio::spawn(async move {
            if let Err(e) = link.pump(&cfg, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(MessageStream { rx, task })
    }

    /// Reconnects forever with backoff and jitter; connection errors are yielded as
    /// `Err` items and the stream goes on.
    pub fn stream(&self) -> MessageStream {
        let cfg = self.cfg.clone();
        let (tx, rx) = mpsc::channel(cfg.credit as usize + 1);
        let task = tokio::spawn(async move {
            let mut backoff = cfg.backoff.clone();
            let mut at = 0usize;
            loop {
                let target = &cfg.targets[at % cfg.targets.len()];
                let r = match open(&cfg, target).await {
                    Ok(mut link) => {
                        let opened = Instant::now();
                        let r = link.pump(&cfg, &tx).await;
                        if opened.elapsed() > Duration::from_secs(10) {
                            backoff.reset();
                        }
                        r
                    }
                    Err(e) => Err(e),
                };
                if tx.is_closed() {
                    return;
                }
                if let Err(e) = r {
                    tracing::warn!(error = %e, "amqp consumer: connection ended; reconnecting");
                    if tx.send(Err(e)).await.is_err() {
                        return;
                    }
                }
                // A cluster: the next node (one endpoint: the same one again).
                at = at.wrapping_add(1);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        });
        MessageStream { rx, task }
    }

    /// Runs `handler` for every message (reconnecting as needed) and settles each with
    /// the handler's answer (with `auto_ack`, the answer is ignored). Never returns.
    pub async fn run<F, Fut>(&self, mut handler: F)
    where
        F: FnMut(Envelope) -> Fut,
        Fut: std::future::Future<Output = Disposition>,
    {
        let mut s = self.stream();
        while let Some(item) = s.next().await {
            match item {
                Ok(m) => {
                    let d = handler(m.envelope.clone()).await;
                    if let Err(e) = m.settle(d).await {
                        tracing::debug!(error = %e, "amqp consumer: settle after disconnect");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "amqp consumer: reconnecting"),
            }
        }
    }
}

struct OpenLink {
    conn: ConnectionHandle<()>,
    session: fe2o3_amqp::session::SessionHandle<()>,
    receiver: Receiver,
}

async fn open(cfg: &Config, t: &Target) -> Result<OpenLink, AmqpError> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| AmqpError::Connect {
            endpoint: t.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    if t.tls {
        let tls = tls_connect(cfg, t, tcp).await?;
        open_on(cfg, t, tls).await
    } else {
        open_on(cfg, t, tcp).await
    }
}

async fn tls_connect(
    cfg: &Config,
    t: &Target,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, AmqpError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = &cfg.extra_roots_pem {
        for c in CertificateDer::pem_slice_iter(pem) {
            let c = c.map_err(|e| AmqpError::Tls(format!("reading the CA PEM: {e}")))?;
            roots
                .add(c)
                .map_err(|e| AmqpError::Tls(format!("adding the CA: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AmqpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = cfg.server_name.clone().unwrap_or_else(|| t.host.clone());
    let name = ServerName::try_from(name).map_err(|e| AmqpError::Tls(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(tls_cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| AmqpError::Tls(e.to_string()))
}

async fn open_on<S>(cfg: &Config, t: &Target, io: S) -> Result<OpenLink, AmqpError>
where
    S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let creds = AmqpCredentials {
        client_id: cfg.client_id.clone(),
        auth: AmqpAuthMode::AppKey {
            random_ms: cfg.clock.now_ms(),
        },
        app_key: cfg.app_key.clone(),
        group: cfg.group.clone(),
        iot_instance_id: None,
    };
    let password = sign_password(&creds, &cfg.app_secret);
    let idle = u32::try_from(cfg.idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let mut conn = Connection::builder()
        .container_id(cfg.client_id.clone())
        .hostname(cfg.server_name.as_deref().unwrap_or(t.host.as_str()))
        .sasl_profile(SaslProfile::Plain {
            username: creds.username(),
            password,
        })
        .idle_time_out(idle)
        .open_with_stream(io)
        .await
        .map_err(|e| match e {
            fe2o3_amqp::connection::OpenError::SaslError { code, .. } => {
                AmqpError::Auth(format!("SASL outcome {code:?}"))
            }
            other => AmqpError::Connect {
                endpoint: t.endpoint.clone(),
                reason: format!("{other:?}"),
            },
        })?;
    let mut session = Session::begin(&mut conn)
        .await
        .map_err(|e| closed_or_lost(format!("{e:?}")))?;
    let receiver = Receiver::builder()
        .name(format!("{}-receiver", cfg.client_id))
        .source("default")
        .credit_mode(CreditMode::Auto(cfg.credit))
        .attach(&mut session)
        .await
        .map_err(|e| closed_or_lost(format!("{e:?}")))?;
    Ok(OpenLink {
        conn,
        session,
        receiver,
    })
}

fn closed_or_lost(s: String) -> AmqpError {
    AmqpError::Lost(s)
}

fn connection_end(r: Result<(), fe2o3_amqp::connection::Error>) -> AmqpError {
    use fe2o3_amqp::connection::Error as E;
    match r {
        Ok(()) => AmqpError::Lost("the server closed the connection".into()),
        Err(E::RemoteClosedWithError(e)) => AmqpError::Closed {
            condition: condition_name(&e.condition),
            description: e.description.unwrap_or_default(),
        },
        Err(other) => AmqpError::Lost(format!("{other:?}")),
    }
}

fn condition_name(c: &fe2o3_amqp::types::definitions::ErrorCondition) -> String {
    use fe2o3_amqp::types::definitions::ErrorCondition as C;
    use fe2o3_amqp::types::primitives::Symbol;
    let s = match c {
        C::AmqpError(e) => Symbol::from(e),
        C::ConnectionError(e) => Symbol::from(e),
        C::SessionError(e) => Symbol::from(e),
        C::LinkError(e) => Symbol::from(e),
        C::Custom(s) => s.clone(),
        #[allow(unreachable_patterns)]
        _ => Symbol::from("unknown"),
    };
    s.as_str().to_owned()
}

impl OpenLink {
    async fn pump(
        &mut self,
        cfg: &Config,
        tx: &mpsc::Sender<Result<AmqpMessage, AmqpError>>,
    ) -> Result<(), AmqpError> {
        let (settle_tx, mut settle_rx) =
            mpsc::channel::<(DeliveryInfo, Disposition)>(cfg.credit as usize + 1);
        let result = loop {
            tokio::select! {
                d = self.receiver.recv::<Body<Value>>() => {
                    let d = match d {
                        Ok(d) => d,
                        Err(e) => break Err(AmqpError::Lost(format!("{e:?}"))),
                    };
                    let (info, message) = d.into_parts();
                    let attempt = message
                        .header
                        .as_ref()
                        .map_or(1, |h| h.delivery_count.saturating_add(1));
                    let envelope = match envelope_of(message) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = self.receiver.reject(info, None).await;
                            tracing::warn!(error = %e, "amqp consumer: rejected a malformed message");
                            continue;
                        }
                    };
                    let settle = if cfg.auto_ack {
                        if let Err(e) = self.receiver.accept(info).await {
                            break Err(AmqpError::Lost(format!("{e:?}")));
                        }
                        None
                    } else {
                        Some((info, settle_tx.clone()))
                    };
                    if tx.send(Ok(AmqpMessage {
                        envelope,
                        attempt,
                        settle,
                    })).await.is_err() {
                        break Ok(());
                    }
                }
                Some(first) = settle_rx.recv() => {
                    // Everything settled by now goes out together: one disposition frame
                    // per run of consecutive delivery ids and outcome, not one per message.
                    if let Err(e) = settle_ready(&self.receiver, first, &mut settle_rx).await {
                        break Err(AmqpError::Lost(format!("{e:?}")));
                    }
                }
                r = self.conn.on_close() => break Err(connection_end(r)),
                _ = tx.closed() => break Ok(()),
            }
        };
        if result.is_ok() {
            // The application closed the stream: send the outcomes it already settled
            // before ending the session, so none is lost on the way out.
            if let Ok(first) = settle_rx.try_recv() {
                let _ = settle_ready(&self.receiver, first, &mut settle_rx).await;
            }
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                let _ = self.session.end().await;
                let _ = self.conn.close().await;
            })
            .await;
        } else if !self.conn.is_closed() {
            // A link-level error: the connection may still be up. Learn why it ends.
            if let Ok(r) =
                tokio::time::timeout(Duration::from_millis(500), self.conn.on_close()).await
            {
                return Err(connection_end(r));
            }
        }
        result
    }
}

/// Most outcomes sent in one go (they are already settled by the application; this only
/// bounds the work between two polls of the receiver).
const SETTLE_BATCH: usize = 1024;

/// Sends `first` and every outcome already queued behind it (up to [`SETTLE_BATCH`]),
/// grouped by outcome: fe2o3 sends one disposition frame per range of consecutive
/// delivery ids, so a busy consumer settles many messages per frame. Outcomes are the
/// same as settling one by one; only the number of frames changes.
async fn settle_ready(
    receiver: &Receiver,
    first: (DeliveryInfo, Disposition),
    queue: &mut mpsc::Receiver<(DeliveryInfo, Disposition)>,
) -> Result<(), fe2o3_amqp::link::DispositionError> {
    let (mut accept, mut release, mut reject) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = Some(first);
    let mut n = 0;
    while let Some((info, d)) = next {
        match d {
            Disposition::Accept => accept.push(info),
            Disposition::Release => release.push(info),
            Disposition::Reject => reject.push(info),
        }
        n += 1;
        next = if n < SETTLE_BATCH {
            queue.try_recv().ok()
        } else {
            None
        };
    }
    if !accept.is_empty() {
        receiver.accept_all(accept).await?;
    }
    if !release.is_empty() {
        receiver.release_all(release).await?;
    }
    if !reject.is_empty() {
        receiver.reject_all(reject, None).await?;
    }
    Ok(())
}

/// Takes the message apart: payload and topic move into the envelope uncopied.
fn envelope_of(
    m: fe2o3_amqp::types::messaging::Message<Body<Value>>,
) -> Result<Envelope, AmqpError> {
    let mut ap = m
        .application_properties
        .ok_or(AmqpError::BadMessage("application-properties"))?
        .0;
    let topic = match ap.swap_remove("topic") {
        Some(SimpleValue::String(s)) => s,
        _ => return Err(AmqpError::BadMessage("topic")),
    };
    let message_id = match ap.get("messageId") {
        Some(SimpleValue::String(s)) => s
            .parse()
            .map_err(|_| AmqpError::BadMessage("a valid messageId"))?,
        _ => return Err(AmqpError::BadMessage("messageId")),
    };
    let generate_time = match ap.get("generateTime") {
        Some(SimpleValue::Long(v)) => *v,
        Some(SimpleValue::Ulong(v)) => i64::try_from(*v).unwrap_or(i64::MAX),
        _ => return Err(AmqpError::BadMessage("generateTime")),
    };
    let payload = match m.body {
        Body::Data(batch) => {
            let mut sections = batch.into_inner();
            if sections.len() == 1 {
                sections.pop().map(|d| d.0.into_vec()).unwrap_or_default()
            } else {
                let mut all = Vec::with_capacity(sections.iter().map(|d| d.0.len()).sum());
                for d in &sections {
                    all.extend_from_slice(&d.0);
                }
                all
            }
        }
        _ => return Err(AmqpError::BadMessage("a Data section")),
    };
    Ok(Envelope {
        topic,
        message_id,
        generate_time,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_parses_endpoints_and_requires_credentials() {
        let c = AmqpConsumer::builder()
            .endpoint("amqps://iot.example.com:5671")
            .app_key("12345678")
            .app_secret("s")
            .build()
            .unwrap();
        let t = &c.cfg.targets[0];
        assert!(t.tls);
        assert_eq!(t.host, "iot.example.com");
        assert_eq!(t.port, 5671);
        let c = AmqpConsumer::builder()
            .endpoint("amqp://127.0.0.1")
            .app_key("12345678")
            .app_secret("s")
            .build()
            .unwrap();
        assert_eq!((c.cfg.targets[0].tls, c.cfg.targets[0].port), (false, 5672));
        let c = AmqpConsumer::builder()
            .endpoint("amqp://n1:5001, amqps://n2:5002,")
            .app_key("12345678")
            .app_secret("s")
            .build()
            .unwrap();
        let nodes: Vec<_> = c
            .cfg
            .targets
            .iter()
            .map(|t| (t.host.as_str(), t.port, t.tls))
            .collect();
        assert_eq!(nodes, [("n1", 5001, false), ("n2", 5002, true)]);
        for bad in ["", " , ", "amqp://a:1,http://b:2", "amqp://a:x"] {
            assert!(
                matches!(
                    AmqpConsumer::builder()
                        .endpoint(bad)
                        .app_key("12345678")
                        .app_secret("s")
                        .build(),
                    Err(AmqpError::Config {
                        field: "endpoint",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            AmqpConsumer::builder()
                .endpoint("http://x")
                .app_key("12345678")
                .app_secret("s")
                .build(),
            Err(AmqpError::Config {
                field: "endpoint",
                ..
            })
        ));
        assert!(matches!(
            AmqpConsumer::builder()
                .endpoint("amqp://x:1")
                .app_secret("s")
                .build(),
            Err(AmqpError::Config {
                field: "app_key",
                ..
            })
        ));
    }
}
