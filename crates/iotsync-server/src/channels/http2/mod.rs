//! The HTTP/2 (gRPC) channel of SPEC §7: `iotsync.sync.v1.SyncService/Consume`, one
//! bidirectional stream per consumer, over h2c (`http2.listen`) and TLS
//! (`http2.tls_listen`). See `docs/adr/0004-http2-and-legacy-push.md`.
//!
//! - [`service`]: metadata auth and attach through delivery's admission.
//! - [`stream`]: one consumer's loop (credit, leases, acks, close reasons).

mod service;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::server::Connected;

use super::ChannelContext;
use crate::context::{Listener, Started};
use crate::listen::guarded::{Activity, Guarded, Policy};
use crate::listen::http::{self, HttpOptions, KeepAlive};
use crate::listen::ConnLimiter;

pub use service::Http2Service;

/// The generated protobuf types and server of `proto/iotsync/sync/v1/sync.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("iotsync.sync.v1");
}

/// HTTP/2 PING interval: a client that vanished without closing its socket is noticed
/// after at most interval + timeout, and its in-flight messages go back to its group.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/2 connection preface every client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;

/// Resolves once `rx` turns true (or its sender is gone). Holds no borrow of the value
/// across an await, so the future stays `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// How each gRPC connection is served (`limits.http2`): TLS handshake and preface
/// within `handshake_timeout` of connecting; closed after `idle_timeout` without an
/// open stream; PINGs find dead peers of open streams.
fn options(ctx: &ChannelContext) -> HttpOptions {
    let lim = &ctx.cfg.limits.http2;
    HttpOptions {
        policy: Policy {
            preface: PREFACE_LEN,
            handshake: lim.handshake_timeout.0,
            head: None,
            idle: lim.idle_timeout.0,
            write_stall: lim.idle_timeout.0,
        },
        body_timeout: None,
        http2_only: true,
        keep_alive: Some(KeepAlive {
            interval: KEEPALIVE_INTERVAL,
            timeout: KEEPALIVE_TIMEOUT,
        }),
    }
}

/// Binds the configured listeners (an empty address turns one off) and serves, each
/// from its own accept loop within the caps of `limits.http2`.
pub async fn start(ctx: &ChannelContext) -> anyhow::Result<Started> {
    let mut started = Started::default();
    let svc = Http2Service::new(ctx);
    let routes = Routes::new(svc.into_server()).prepare();
    let lim = &ctx.cfg.limits.http2;
    let opts = options(ctx);

    let plain = ctx.cfg.http2.listen.trim();
    if !plain.is_empty() {
        let listener = TcpListener::bind(plain)
            .await
            .with_context(|| format!("binding http2.listen {plain}"))?;
        let addr = listener.local_addr()?;
        let limiter =
            ConnLimiter::new("http2", lim.max_connections, lim.max_connections_per_source);
        started.tasks.push(tokio::spawn(http::serve(
            listener,
            limiter,
            routes.clone(),
            opts,
            ctx.shutdown.clone(),
        )));
        started.listeners.push(Listener {
            name: "http2",
            addr,
            url: format!("grpc://{addr} (h2c)"),
        });
    }

    let tls = ctx.cfg.http2.tls_listen.trim();
    if !tls.is_empty() {
        let listener = TcpListener::bind(tls)
            .await
            .with_context(|| format!("binding http2.tls_listen {tls}"))?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(
            ctx.tls
                .server_config(&[b"h2"])
                .context("TLS configuration for http2.tls_listen")?,
        );
        let limiter = ConnLimiter::new(
            "http2-tls",
            lim.max_connections,
            lim.max_connections_per_source,
        );
        started.tasks.push(tokio::spawn(serve_tls(
            listener,
            limiter,
            acceptor,
            routes,
            opts,
            ctx.shutdown.clone(),
        )));
        started.listeners.push(Listener {
            name: "http2-tls",
            addr,
            url: format!("grpcs://{addr}"),
        });
    }
    Ok(started)
}

/// The TLS listener's accept loop: handshakes run beside it (a slow client never holds
/// others up), each within the handshake time-out counted from accept.
async fn serve_tls(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    acceptor: TlsAcceptor,
    routes: Routes,
    opts: HttpOptions,
    shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let (sock, remote, permit): (TcpStream, SocketAddr, _) = tokio::select! {
            c = limiter.accept(&listener) => c,
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = sock.set_nodelay(true);
        let (acceptor, routes, shutdown) = (acceptor.clone(), routes.clone(), shutdown.clone());
        conns.spawn(async move {
            let now = Instant::now();
            let deadline = now + opts.policy.handshake;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(sock)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "http2 TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "http2 TLS handshake timed out");
                    return;
                }
            };
            let mut ext = axum::http::Extensions::new();
            ext.insert(tls.connect_info());
            let act = Activity::new(now);
            let io = Guarded::new(tls, act.clone(), opts.policy, now, Some(permit));
            http::serve_connection(io, act, routes, opts, ext, shutdown).await;
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
