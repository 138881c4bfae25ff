//! What every component gets to start with, and what it hands back.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use iotsync_backlog::Backlog;
use iotsync_core::SharedClock;
use iotsync_store::Registry;

use crate::config::ServerConfig;
use crate::delivery::hub::DeliveryHub;
use crate::ingest::outbox_relay::DispatcherHandle;
use crate::ingest::Ingest;
use crate::tls::TlsMaterial;

/// The wired parts, shared by every component (channels, gateway, cloud API, console).
#[derive(Clone)]
pub struct Context {
    pub cfg: Arc<ServerConfig>,
    pub registry: Arc<dyn Registry>,
    pub backlog: Arc<dyn Backlog>,
    pub hub: Arc<DeliveryHub>,
    pub ingest: Arc<Ingest>,
    pub dispatcher: DispatcherHandle,
    pub clock: SharedClock,
    pub tls: TlsMaterial,
    /// The device gateway's live sessions (the cloud API's downlink goes through them).
    pub device_sessions: Arc<crate::gateway::sessions::DeviceSessions>,
    /// Turns true when the server is shutting down; listeners stop accepting and drain.
    pub shutdown: watch::Receiver<bool>,
    /// Failed sign-in throttles, per path (operator token, devices, consumers).
    pub throttles: Arc<crate::throttle::Throttles>,
}

/// A listener a component bound, for the banner and for tests (port 0 → real port).
pub struct Listener {
    /// Stable name, e.g. `amqp`, `amqps`, `http2`, `http2-tls`, `mqtt`, `mqtts`.
    pub name: &'static str,
    pub addr: SocketAddr,
    /// URL-ish description for the banner, e.g. `amqp://127.0.0.1:5682`.
    pub url: String,
}

/// What a component's `start` returns: its listeners and its tasks.
#[derive(Default)]
pub struct Started {
    pub listeners: Vec<Listener>,
    pub tasks: Vec<JoinHandle<()>>,
}
