//! The HTTP/2 (gRPC) channel of SPEC §7: `iotsync.sync.v1.SyncService/Consume`, one
//! bidirectional stream per consumer, over h2c (`http2.listen`) and TLS
//! (`http2.tls_listen`). See `docs/adr/0004-http2-and-legacy-push.md`.
//!
//! - [`service`]: metadata auth, the project's routes, attaching to the hub.
//! - [`stream`]: one consumer's loop (credit, leases, acks, close reasons).

mod service;
mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

use crate::context::{Context, Listener, Started};

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
/// A TLS handshake that takes longer than this is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
}

async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    stopped(&mut rx).await
}

/// Resolves once `rx` turns true (or its sender is gone). Holds no borrow of the value
/// across an await, so the future stays `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Binds the configured listeners (an empty address turns one off) and serves.
pub async fn start(ctx: &Context) -> anyhow::Result<Started> {
    let mut started = Started::default();
    let svc = Http2Service::new(ctx);

    let plain = ctx.cfg.http2.listen.trim();
    if !plain.is_empty() {
        let listener = TcpListener::bind(plain)
            .await
            .with_context(|| format!("binding http2.listen {plain}"))?;
        let addr = listener.local_addr()?;
        let server = server_builder().add_service(svc.clone().into_server());
        let stop = shutdown_signal(ctx.shutdown.clone());
        started.tasks.push(tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "http2 listener failed");
            }
        }));
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
        // Handshakes run beside the accept loop, so a slow client never holds others up.
        let (tx, rx) = mpsc::channel(64);
        started.tasks.push(tokio::spawn(accept_tls(
            listener,
            acceptor,
            tx,
            ctx.shutdown.clone(),
        )));
        let server = server_builder().add_service(svc.into_server());
        let stop = shutdown_signal(ctx.shutdown.clone());
        started.tasks.push(tokio::spawn(async move {
            let incoming = ReceiverStream::new(rx);
            if let Err(e) = server.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(error = %e, "http2 TLS listener failed");
            }
        }));
        started.listeners.push(Listener {
            name: "http2-tls",
            addr,
            url: format!("grpcs://{addr}"),
        });
    }
    Ok(started)
}

type TlsConn = tokio_rustls::server::TlsStream<TcpStream>;

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<TlsConn, std::io::Error>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (sock, remote): (TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "http2 TLS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                Ok(Ok(conn)) => {
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "http2 TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "http2 TLS handshake timed out"),
            }
        });
    }
}
