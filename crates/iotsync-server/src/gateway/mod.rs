//! The MQTT 3.1.1 device gateway (SPEC §10, ADR 0005): plain and TLS listeners, device
//! authentication, one session per device, uplink into `Ingest`, downlink from the cloud
//! API.
//!
//! - `codec`: the MQTT packets, pure.
//! - `session`: one device's topic rules and Alink parsing, pure.
//! - `sessions`: the table of connected devices, take-over, downlink requests.
//! - `cluster`: the same across nodes, over core NATS (ADR 0015).
//! - `connection`: the per-connection `select!` loop.

pub mod cluster;
pub mod codec;
pub mod connection;
pub mod session;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};

use crate::context::{Context, Listener, Started};
use crate::listen::{ConnLimiter, ConnPermit};
use connection::Gateway;

pub use sessions::{sessions, DeviceReply, DeviceSessions, DownlinkError, DownlinkPublish};

/// Binds `mqtt.listen` and `mqtt.tls_listen` (either may be empty = off).
pub async fn start(ctx: &Context) -> anyhow::Result<Started> {
    let gw = Arc::new(Gateway {
        registry: ctx.registry.clone(),
        ingest: ctx.ingest.clone(),
        dispatcher: ctx.dispatcher.clone(),
        clock: ctx.clock.clone(),
        sessions: sessions(ctx),
        max_packet: codec::DEFAULT_MAX_PACKET,
        connect_timeout: ctx.cfg.limits.mqtt.handshake_timeout.0,
        shutdown: ctx.shutdown.clone(),
        timestamps: iotsync_core::sign::device::TimestampPolicy {
            window_ms: i64::try_from(ctx.cfg.auth.device_timestamp_window.0.as_millis())
                .unwrap_or(i64::MAX),
            required: ctx.cfg.auth.device_timestamp_required,
        },
        throttles: ctx.throttles.clone(),
    });
    let mut started = Started::default();
    let lim = &ctx.cfg.limits.mqtt;
    let limiter =
        |name| ConnLimiter::new(name, lim.max_connections, lim.max_connections_per_source);
    if !ctx.cfg.mqtt.listen.is_empty() {
        let l = TcpListener::bind(&ctx.cfg.mqtt.listen)
            .await
            .with_context(|| format!("binding mqtt.listen {}", ctx.cfg.mqtt.listen))?;
        let addr = l.local_addr()?;
        started.listeners.push(Listener {
            name: "mqtt",
            addr,
            url: format!("mqtt://{addr}"),
        });
        started.tasks.push(tokio::spawn(accept_loop(
            gw.clone(),
            l,
            limiter("mqtt"),
            None,
            ctx.shutdown.clone(),
        )));
    }
    if !ctx.cfg.mqtt.tls_listen.is_empty() {
        let tls = ctx
            .tls
            .server_config(&[b"mqtt"])
            .context("TLS for mqtt.tls_listen")?;
        let l = TcpListener::bind(&ctx.cfg.mqtt.tls_listen)
            .await
            .with_context(|| format!("binding mqtt.tls_listen {}", ctx.cfg.mqtt.tls_listen))?;
        let addr = l.local_addr()?;
        started.listeners.push(Listener {
            name: "mqtts",
            addr,
            url: format!("mqtts://{addr}"),
        });
        started.tasks.push(tokio::spawn(accept_loop(
            gw,
            l,
            limiter("mqtts"),
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            ctx.shutdown.clone(),
        )));
    }
    Ok(started)
}

/// Resolves once the server is stopping (the watch guard is dropped inside, so the
/// future stays `Send`).
pub(crate) async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Accepts within the listener's caps (`limits.mqtt`); over a cap the socket is closed
/// at once.
async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (sock, peer, permit) = tokio::select! {
            c = limiter.accept(&listener) => c,
            _ = stopped(&mut shutdown) => return,
        };
        tokio::spawn(handle(gw.clone(), sock, peer, tls.clone(), permit));
    }
}

async fn handle(
    gw: Arc<Gateway>,
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    _permit: ConnPermit,
) {
    let _ = sock.set_nodelay(true);
    let peer_s = peer.to_string();
    match tls {
        None => connection::serve(gw, sock, peer_s).await,
        Some(acceptor) => {
            // The TLS handshake gets `limits.mqtt.handshake_timeout`, then CONNECT again.
            match tokio::time::timeout(gw.connect_timeout, acceptor.accept(sock)).await {
                Ok(Ok(s)) => connection::serve(gw, s, peer_s).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer_s, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer_s, "TLS handshake timed out"),
            }
        }
    }
}
