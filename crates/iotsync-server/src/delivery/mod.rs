//! Delivery: between the durable backlog and the channels; it owns the consumer
//! contract.
//!
//! - [`admission`] is the one way in for every channel: credentials → project, group,
//!   what it may receive (with the failed-login throttle and the group's connection
//!   rate) → a [`hub::ConsumerLink`].
//! - [`groups`] keeps the declared consumer groups of the registry and the backlog's
//!   groups in step (declare, first-connect declaration, delete, reconcile at start).
//! - [`hub`] hands consumers of a group their deliveries within their credit and takes
//!   back their outcomes; a channel (AMQP link, gRPC stream, webhook pusher) only ever
//!   sees a [`hub::ConsumerLink`] (lease, settle, close reason), never the backlog.
//! - [`controller`] turns accepted sync-setting transitions into backlog and consumer
//!   actions (groups, retention, pause, closing connections), through [`SyncListener`],
//!   which the API calls.
//! - [`alerts`] checks groups against their alert thresholds every second or so and
//!   tells the operator's webhook when one starts or stops alerting.

pub mod admission;
pub mod alerts;
pub mod controller;
pub mod groups;
pub mod hub;
pub mod rates;

/// Reacts to accepted sync transitions (declaring the project's groups in the backlog,
/// closing consumer connections on disable, moving consumers on a switch). Delivery
/// implements it; the API calls it after the registry committed the change.
#[async_trait::async_trait]
pub trait SyncListener: Send + Sync + 'static {
    async fn on_transition(
        &self,
        project: &iotsync_core::ProjectId,
        settings: &iotsync_core::sync_rules::SyncSettings,
        transition: iotsync_core::sync_rules::Transition,
    );

    /// The project's appSecret was rotated: consumers that signed in with the old one
    /// are closed (they reconnect with the new one).
    async fn on_secret_rotated(&self, _project: &iotsync_core::ProjectId) {}
}

/// What a consumer said about one delivery, classified once for every channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// AMQP accepted, HTTP/2 commit success, webhook 200 + `{"code":200}`.
    Accepted,
    /// AMQP released/modified, HTTP/2 commit failure, webhook failure: retry later.
    Released,
    /// AMQP rejected: to the dead-letter list.
    Rejected,
}

/// Which kind of channel a consumer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Amqp,
    Http2,
    Webhook,
}
