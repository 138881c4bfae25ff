//! Channels turn deliveries into outcomes over a wire protocol. A channel gets a
//! [`ChannelContext`]: delivery's [`Admission`] (credentials → project, group, what it may
//! receive → a [`crate::delivery::hub::ConsumerLink`] that leases, settles and says why
//! the platform closed it) and its listener settings. It never sees the backlog or the
//! registry.
//!
//! Adding a channel: one folder here with a `start(&ChannelContext)`, and one entry in
//! [`start_all`].

pub mod amqp;
pub mod http2;
pub mod webhook;

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use iotsync_core::SharedClock;

use crate::config::ServerConfig;
use crate::context::Started;
use crate::delivery::admission::Admission;
use crate::tls::TlsMaterial;

/// What a channel starts with.
#[derive(Clone)]
pub struct ChannelContext {
    pub cfg: Arc<ServerConfig>,
    /// The consumer contract: logins, what a project may receive, attach.
    pub admission: Arc<Admission>,
    pub clock: SharedClock,
    pub tls: TlsMaterial,
    /// Turns true when the server is shutting down; listeners stop accepting and drain.
    pub shutdown: watch::Receiver<bool>,
}

/// Starts every channel, in order.
pub async fn start_all(ctx: &ChannelContext) -> anyhow::Result<Vec<Started>> {
    Ok(vec![
        amqp::start(ctx)
            .await
            .context("starting the AMQP channel")?,
        http2::start(ctx)
            .await
            .context("starting the HTTP/2 channel")?,
        webhook::start(ctx)
            .await
            .context("starting the legacy HTTP push")?,
    ])
}
