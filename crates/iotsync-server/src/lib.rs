//! iotsync-server: wires the pipeline. Ingest (sources: the REST API in `api/`, the
//! device gateway in `gateway/`, the cloud API in `cloud/`; `ingest/` with the outbox
//! relay) → durable backlog (routing each message to the groups that take it) →
//! `delivery/` (admission, groups, hub) → `channels/` (AMQP, HTTP/2, webhook).
//! Only this crate knows all the parts.

pub mod api;
pub mod channels;
pub mod cloud;
pub mod config;
pub mod console;
pub mod context;
pub mod data_dir;
pub mod delivery;
pub mod gateway;
pub mod ingest;
pub mod listen;
pub mod throttle;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use iotsync_backlog::{Backlog, EmbeddedBacklog, JetStreamBacklog, RecoveryReport};
use iotsync_core::SharedClock;
use iotsync_store::{Registry, SqlRegistry};

use delivery::controller::SyncController;
use delivery::hub::DeliveryHub;
use ingest::outbox_relay::{DispatcherConfig, DispatcherEngine};

pub use config::{ConfigOverrides, ServerConfig};

/// Where the operator token came from, for the start-up banner (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Config,
    File(PathBuf),
    Generated(PathBuf),
}

/// A running server: its bound addresses and a way to stop it.
pub struct RunningServer {
    pub api_addr: SocketAddr,
    /// Every bound listener but the API (AMQP, HTTP/2, MQTT, …), by name.
    pub listeners: Vec<context::Listener>,
    pub tls: tls::TlsMaterial,
    pub token_source: TokenSource,
    pub data_dir: PathBuf,
    pub store_description: String,
    pub recovery: RecoveryReport,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    registry: Arc<SqlRegistry>,
    backlog: Arc<dyn Backlog>,
    /// The embedded engine, to close at shutdown (None on JetStream).
    embedded: Option<Arc<EmbeddedBacklog>>,
    hub: Arc<DeliveryHub>,
    _data_lock: std::fs::File,
    ingest: Arc<ingest::Ingest>,
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish (up to `drain`), writes the queued
    /// property last values (up to `drain`), closes the backlog and the store.
    pub async fn shutdown(self, drain: std::time::Duration) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            if tokio::time::timeout(drain, t).await.is_err() {
                tracing::warn!("a task did not stop within the drain time-out");
            }
        }
        // Last values reported before the stop are written before the store closes.
        self.ingest.drain(drain).await;
        if let Some(b) = &self.embedded {
            if let Err(e) = b.close().await {
                tracing::warn!(error = %e, "closing the backlog");
            }
        }
        self.registry.close().await;
    }

    /// The bound address of the listener named `name` (e.g. "amqp", "http2", "mqtt").
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.addr)
    }

    pub fn registry(&self) -> Arc<dyn Registry> {
        self.registry.clone()
    }

    /// The channels' own counters (also on `/metrics`).
    pub fn channel_counters(&self) -> Arc<delivery::hub::ChannelCounters> {
        self.hub.counters.clone()
    }

    pub fn backlog(&self) -> Arc<dyn Backlog> {
        self.backlog.clone()
    }

    pub fn hub(&self) -> Arc<DeliveryHub> {
        self.hub.clone()
    }

    pub fn ingest(&self) -> Arc<ingest::Ingest> {
        self.ingest.clone()
    }
}

/// Reads the operator token from config, or from `<data_dir>/operator-token`, or
/// generates one there (mode 0600).
fn operator_token(cfg: &ServerConfig) -> anyhow::Result<(String, TokenSource)> {
    if !cfg.api.operator_token.is_empty() {
        return Ok((cfg.api.operator_token.clone(), TokenSource::Config));
    }
    let path = cfg.data_dir.join("operator-token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_owned(), TokenSource::File(path))),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let token = format!(
        "iot_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok((token, TokenSource::Generated(path)))
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Holds an exclusive lock on `<data_dir>/LOCK` for the life of the server, so two
/// processes never open the same backlog and registry files.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("LOCK");
    let f = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
        data_dir::FILE_MODE,
    )
    .open(&path)
    .with_context(|| format!("opening {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "data dir {} is in use by another iotsync process (lock {})",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Starts every part of the server on the configured addresses.
pub async fn start(cfg: ServerConfig, clock: SharedClock) -> anyhow::Result<RunningServer> {
    data_dir::prepare(&cfg.data_dir)
        .with_context(|| format!("preparing data dir {}", cfg.data_dir.display()))?;
    let data_lock = lock_data_dir(&cfg.data_dir)?;
    let (token, token_source) = operator_token(&cfg)?;

    let (registry, store_description) = if cfg.store.url.is_empty() {
        let path = cfg.data_dir.join("registry.db");
        let r = SqlRegistry::open_sqlite(&path, clock.clone())
            .await
            .with_context(|| format!("opening registry {}", path.display()))?;
        (r, format!("sqlite {}", path.display()))
    } else {
        let r = SqlRegistry::connect(&cfg.store.url, clock.clone())
            .await
            .context("connecting to the registry database")?;
        (r, "postgres (store.url)".to_owned())
    };
    let registry = Arc::new(registry);

    let node_name = cfg.node_name();
    tracing::info!(node = %node_name, "node");
    let backlog_cfg = cfg.delivery.backlog_config();
    let (backlog, embedded, recovery): (Arc<dyn Backlog>, _, _) = if cfg.backlog.url.is_empty() {
        let backlog_dir = cfg.data_dir.join("backlog");
        let (backlog, recovery) =
            EmbeddedBacklog::open(&backlog_dir, backlog_cfg, clock.clone())
                .with_context(|| format!("opening the backlog in {}", backlog_dir.display()))?;
        if !recovery.is_clean() {
            tracing::warn!(
                damaged = recovery.damaged.len(),
                "the backlog had damaged ranges; the good part is served"
            );
        }
        let backlog = Arc::new(backlog);
        (backlog.clone(), Some(backlog), recovery)
    } else {
        // Scale-out: messages live in NATS JetStream, none on this node's disk.
        let js_cfg = iotsync_backlog::JetStreamConfig {
            node_name: Some(engine_node_id(&node_name)),
            ack_timeout: backlog_cfg.ack_timeout,
            retry: backlog_cfg.retry.clone(),
            default_retention: backlog_cfg.default_retention,
            max_message_bytes: backlog_cfg.max_message_bytes,
            ..Default::default()
        };
        let backlog = JetStreamBacklog::connect(&cfg.backlog.url, js_cfg, clock.clone())
            .await
            .context("connecting to the NATS JetStream backlog (backlog.url)")?;
        (Arc::new(backlog), None, RecoveryReport::default())
    };
    let groups = delivery::groups::GroupDirectory::new(registry.clone(), backlog.clone());
    let hub = DeliveryHub::new(backlog.clone(), groups.clone(), clock.clone());
    let controller = Arc::new(SyncController {
        registry: registry.clone(),
        backlog: backlog.clone(),
        hub: hub.clone(),
        groups: groups.clone(),
        retention: cfg.delivery.retention(),
    });
    controller
        .reconcile_all()
        .await
        .context("reconciling the backlog with the registry")?;
    let ingest = Arc::new(ingest::Ingest::new(
        registry.clone(),
        backlog.clone(),
        clock.clone(),
    ));
    let (dispatcher, dispatcher_handle) = DispatcherEngine::new(
        registry.clone(),
        backlog.clone(),
        DispatcherConfig::default(),
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tls = tls::TlsMaterial::resolve(&cfg)?;
    let throttle_cfg = throttle::AuthThrottleConfig::from_config(&cfg.auth);
    let throttles = Arc::new(match registry.backend() {
        // One node owns a SQLite registry: its memory is the whole picture.
        iotsync_store::StoreBackend::Sqlite => {
            throttle::Throttles::new(throttle_cfg, clock.clone())
        }
        iotsync_store::StoreBackend::Postgres => {
            throttle::Throttles::shared(throttle_cfg, clock.clone(), registry.clone())
        }
    });
    // In a cluster, devices held by other nodes are reached (and taken over) over NATS.
    let device_sessions = if cfg.backlog.url.is_empty() {
        Arc::default()
    } else {
        let bus = gateway::cluster::ClusterBus::connect(&cfg.backlog.url, &node_name)
            .await
            .context("connecting the device sessions to the cluster (backlog.url)")?;
        Arc::new(gateway::DeviceSessions::with_cluster(Arc::new(bus)))
    };
    let ctx = context::Context {
        cfg: Arc::new(cfg.clone()),
        registry: registry.clone(),
        backlog: backlog.clone(),
        hub: hub.clone(),
        ingest: ingest.clone(),
        dispatcher: dispatcher_handle.clone(),
        clock: clock.clone(),
        tls: tls.clone(),
        device_sessions,
        shutdown: shutdown_rx.clone(),
        throttles: throttles.clone(),
    };

    let admission = delivery::admission::Admission::new(
        registry.clone(),
        hub.clone(),
        groups.clone(),
        clock.clone(),
        throttles.clone(),
        cfg.delivery.connects_per_minute,
    );
    let channel_ctx = channels::ChannelContext {
        cfg: ctx.cfg.clone(),
        admission,
        clock: clock.clone(),
        tls: tls.clone(),
        shutdown: shutdown_rx.clone(),
    };

    let (alert_engine, alerts, alert_webhook) = delivery::alerts::AlertEngine::new(
        registry.clone(),
        backlog.clone(),
        clock.clone(),
        &cfg.alerts,
    )
    .context("starting the group alert evaluator")?;
    let state = api::ApiState {
        registry: registry.clone(),
        backlog: backlog.clone(),
        operator_token: Arc::from(token.as_str()),
        clock: clock.clone(),
        sync_listener: controller.clone(),
        hub: hub.clone(),
        groups: groups.clone(),
        alerts,
        ingest: ingest.clone(),
        dispatcher: dispatcher_handle,
        rates: Arc::new(delivery::rates::RateSampler::default()),
        throttles,
        keep_acknowledged_default: ctx.cfg.delivery.keep_acknowledged,
        node_name: Arc::from(node_name.as_str()),
    };
    let mut tasks = Vec::new();
    let mut listeners = Vec::new();
    let mut all = channels::start_all(&channel_ctx).await?;
    all.push(
        gateway::start(&ctx)
            .await
            .context("starting the device gateway")?,
    );
    for started in all {
        listeners.extend(started.listeners);
        tasks.extend(started.tasks);
    }

    // Built after the channels bound: the console shows the addresses actually bound
    // (a listener on port 0 has its real port by now).
    let app = api::router(state.clone(), cfg.api.max_body_bytes)
        .merge(cloud::router(&ctx))
        .merge(console::router(state, &listeners))
        .layer(tower_http::trace::TraceLayer::new_for_http());

    let listener = TcpListener::bind(&cfg.api.listen)
        .await
        .with_context(|| format!("binding api.listen {}", cfg.api.listen))?;
    let api_addr = listener.local_addr()?;
    let dispatcher_task = tokio::spawn(dispatcher.run(shutdown_rx.clone()));
    // Our own accept loop: connection caps and header/body/idle time-outs
    // (`limits.api`, docs/security.md); axum::serve has none.
    let lim = &cfg.limits.api;
    let api_limiter =
        listen::ConnLimiter::new("api", lim.max_connections, lim.max_connections_per_source);
    let api_opts = listen::http::HttpOptions {
        policy: listen::guarded::Policy {
            preface: 0,
            handshake: lim.header_read_timeout.0,
            head: Some(lim.header_read_timeout.0),
            idle: lim.idle_timeout.0,
            write_stall: lim.idle_timeout.0,
        },
        body_timeout: Some(lim.body_timeout.0),
        http2_only: false,
        keep_alive: None,
    };
    let api_task = tokio::spawn(listen::http::serve(
        listener,
        api_limiter,
        app,
        api_opts,
        shutdown_rx.clone(),
    ));
    tasks.push(api_task);
    tasks.push(dispatcher_task);
    // Several nodes on one PostgreSQL registry: follow the others' sync changes.
    if let Some(feed) = registry.subscribe_changes() {
        tasks.push(tokio::spawn(
            controller.clone().follow_changes(feed, shutdown_rx.clone()),
        ));
    }
    // Group alerts: every `alerts.evaluate_every`, and the operator webhook if set.
    tasks.push(tokio::spawn(alert_engine.run(shutdown_rx.clone())));
    if let Some(w) = alert_webhook {
        tasks.push(tokio::spawn(w.run(shutdown_rx.clone())));
    }

    Ok(RunningServer {
        api_addr,
        token_source,
        data_dir: cfg.data_dir.clone(),
        store_description,
        listeners,
        tls,
        recovery,
        shutdown: shutdown_tx,
        tasks,
        registry,
        backlog,
        embedded,
        hub,
        ingest,
        _data_lock: data_lock,
    })
}

/// The JetStream engine's member id: the node's name made a KV-key token, plus a random
/// suffix so two processes given the same name never share partition leases.
fn engine_node_id(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{token}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}
