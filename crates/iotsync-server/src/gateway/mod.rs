//! The MQTT 3.1.1 device gateway (SPEC §10, ADR 0005): plain and TLS listeners, device
//! authentication, one session per device, uplink into `Ingest`, downlink from the cloud
//! API.
//!
//! - `codec`: the MQTT packets, pure.
//! - `session`: one device's topic rules and Alink parsing, pure.
//! - `sessions`: the table of connected devices, take-over, downlink requests.
//! - `connection`: the per-connection `select!` loop.

pub mod codec;
pub mod connection;
pub mod session;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};

use crate::context::{Context, Listener, Started};
use connection::Gateway;

pub use sessions::{sessions, DeviceReply, DeviceSessions, DownlinkError, DownlinkPublish};

/// How long a new connection may take to send CONNECT (and finish TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `mqtt.listen` and `mqtt.tls_listen` (either may be empty = off).
pub async fn start(ctx: &Context) -> anyhow::Result<Started> {
    let gw = Arc::new(Gateway {
        registry: ctx.registry.clone(),
        ingest: ctx.ingest.clone(),
        dispatcher: ctx.dispatcher.clone(),
        clock: ctx.clock.clone(),
        sessions: sessions(ctx),
        max_packet: codec::DEFAULT_MAX_PACKET,
        connect_timeout: CONNECT_TIMEOUT,
        shutdown: ctx.shutdown.clone(),
        timestamps: iotsync_core::sign::device::TimestampPolicy {
            window_ms: i64::try_from(ctx.cfg.auth.device_timestamp_window.0.as_millis())
                .unwrap_or(i64::MAX),
            required: ctx.cfg.auth.device_timestamp_required,
        },
        throttles: ctx.throttles.clone(),
    });
    let mut started = Started::default();
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

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        tokio::spawn(handle(gw.clone(), sock, peer, tls.clone()));
    }
}

async fn handle(
    gw: Arc<Gateway>,
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = sock.set_nodelay(true);
    let peer_s = peer.to_string();
    match tls {
        None => connection::serve(gw, sock, peer_s).await,
        Some(acceptor) => {
            match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(s)) => connection::serve(gw, s, peer_s).await,
                Ok(Err(e)) => tracing::debug!(peer = %peer_s, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer_s, "TLS handshake timed out"),
            }
        }
    }
}
