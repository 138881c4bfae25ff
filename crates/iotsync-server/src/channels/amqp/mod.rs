//! The AMQP 1.0 channel (SPEC §6): plain and TLS listeners, SASL PLAIN with the
//! platform's signed usernames, one receiver link per connection fed from the delivery
//! hub within the client's credit, dispositions turned into outcomes. See ADR 0003.
//!
//! - [`sasl`]: the SASL exchange, run before fe2o3's acceptor so checks can await.
//! - [`auth`]: SASL PLAIN through delivery's admission (forms, signature, throttle, rate).
//! - [`connection`]: connection driver, link pump, settle task, teardown.
//! - [`io`]: write coalescing under fe2o3's engine (one write per burst of frames).
//! - [`merge`]: runs of the client's accepted dispositions merged into ranges on read.
//! - [`message`]: envelope → AMQP message.
//! - [`threads`]: the connection threads, one single-threaded runtime each.

pub mod auth;
pub mod bounded;
pub mod connection;
pub mod io;
pub mod merge;
pub mod message;
pub mod sasl;
pub mod threads;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::ChannelContext;
use crate::context::{Listener, Started};
use crate::listen::{ConnLimiter, ConnPermit};
use auth::CredentialChecker;
use connection::Shared;
use threads::ConnThreads;

/// Starts the configured listeners (`amqp.listen` plain, `amqp.tls_listen` TLS); an
/// empty address turns a listener off.
pub async fn start(ctx: &ChannelContext) -> anyhow::Result<Started> {
    let shared = Arc::new(Shared {
        creds: CredentialChecker::new(ctx.admission.clone()),
        shutdown: ctx.shutdown.clone(),
        max_frame_size: ctx.cfg.limits.amqp.max_frame_size(),
        handshake_timeout: ctx.cfg.limits.amqp.handshake_timeout.0,
    });
    let lim = &ctx.cfg.limits.amqp;
    let mut started = Started::default();
    if ctx.cfg.amqp.listen.is_empty() && ctx.cfg.amqp.tls_listen.is_empty() {
        return Ok(started);
    }
    let (threads, finished) = ConnThreads::start(ctx.cfg.amqp.io_threads, shared.clone())
        .context("starting the AMQP connection threads")?;
    if !ctx.cfg.amqp.listen.is_empty() {
        let l = TcpListener::bind(&ctx.cfg.amqp.listen)
            .await
            .with_context(|| format!("binding amqp.listen {}", ctx.cfg.amqp.listen))?;
        let addr = l.local_addr()?;
        started.listeners.push(Listener {
            name: "amqp",
            addr,
            url: format!("amqp://{addr}"),
        });
        let limiter = ConnLimiter::new("amqp", lim.max_connections, lim.max_connections_per_source);
        started.tasks.push(tokio::spawn(accept_loop(
            l,
            limiter,
            None,
            shared.clone(),
            threads.clone(),
        )));
    }
    if !ctx.cfg.amqp.tls_listen.is_empty() {
        let tls = TlsAcceptor::from(
            ctx.tls
                .server_config(&[])
                .context("TLS for amqp.tls_listen")?,
        );
        let l = TcpListener::bind(&ctx.cfg.amqp.tls_listen)
            .await
            .with_context(|| format!("binding amqp.tls_listen {}", ctx.cfg.amqp.tls_listen))?;
        let addr = l.local_addr()?;
        started.listeners.push(Listener {
            name: "amqps",
            addr,
            url: format!("amqps://{addr}"),
        });
        let limiter =
            ConnLimiter::new("amqps", lim.max_connections, lim.max_connections_per_source);
        started.tasks.push(tokio::spawn(accept_loop(
            l,
            limiter,
            Some(tls),
            shared,
            threads,
        )));
    }
    // Ends once the accept loops dropped the threads' handle and every connection closed.
    started.tasks.push(tokio::spawn(finished.wait()));
    Ok(started)
}

/// Accepts within the listener's caps (`limits.amqp`); over a cap the socket is closed
/// at once.
async fn accept_loop(
    listener: TcpListener,
    limiter: Arc<ConnLimiter>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    threads: Arc<ConnThreads>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, remote, permit) = tokio::select! {
            c = limiter.accept(&listener) => c,
            _ = connection::stopped(&mut shutdown) => return,
        };
        threads.dispatch(stream, remote, tls.clone(), permit);
    }
}

async fn handle(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    accepted: tokio::time::Instant,
    _permit: ConnPermit,
) {
    // Small messages at low credit: without it Nagle costs an order of magnitude.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "amqp: TCP_NODELAY");
    }
    match tls {
        None => connection::serve(shared, stream, remote, accepted).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout_at(
                accepted + shared.handshake_timeout,
                acceptor.accept(stream),
            )
            .await;
            match handshake {
                Ok(Ok(s)) => connection::serve(shared, s, remote, accepted).await,
                Ok(Err(e)) => tracing::info!(%remote, error = %e, "amqps: TLS handshake failed"),
                Err(_) => tracing::info!(%remote, "amqps: TLS handshake timed out"),
            }
        }
    }
}
