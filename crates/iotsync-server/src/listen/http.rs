//! Serving HTTP (the API listener: REST, cloud API, console; and the gRPC listeners)
//! from our own accept loop through hyper-util's connection builder, with the caps of
//! [`super::ConnLimiter`] and the time-outs of [`super::guarded`], plus a deadline on
//! each request body ([`DeadlineBody`]): a body not complete within it fails to read
//! and the request is answered `408 body_timeout` (API) before the connection closes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use super::guarded::{Activity, Guarded, Policy};

/// The HTTP/2 keep-alive of a listener: PING every `interval`, dead after `timeout`.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub interval: Duration,
    pub timeout: Duration,
}

/// How one HTTP listener serves each connection.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    pub policy: Policy,
    /// `None`: request bodies are not timed (gRPC streams are long by design).
    pub body_timeout: Option<Duration>,
    /// `true`: HTTP/2 only (gRPC); `false`: HTTP/1.1 and h2c.
    pub http2_only: bool,
    pub keep_alive: Option<KeepAlive>,
}

/// A request body that fails once `deadline` passes before it ended; `expired` says so
/// to the service that answers.
pub struct DeadlineBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
    done: bool,
}

/// The error a [`DeadlineBody`] fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, timeout: Duration, expired: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            expired,
            done: false,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => Poll::Ready(Some(r.map_err(Into::into))),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    this.expired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one accepted connection until it ends or `shutdown` turns true (then
/// gracefully: requests in flight finish). `extensions` adds per-connection values to
/// every request (the connect info gRPC handlers read).
pub async fn serve_connection<IO, S, B>(
    io: Guarded<IO>,
    act: Arc<Activity>,
    svc: S,
    opts: HttpOptions,
    extensions: axum::http::Extensions,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let body_timeout = opts.body_timeout;
    let hyper_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_flight = act.start();
        let expired = Arc::new(AtomicBool::new(false));
        let mut req = match body_timeout {
            Some(t) => req.map(|b| Body::new(DeadlineBody::new(b, t, expired.clone()))),
            None => req.map(Body::new),
        };
        req.extensions_mut().extend(extensions.clone());
        let svc = svc.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(svc, req).await?;
            let resp = if expired.load(Ordering::Relaxed) {
                body_timed_out(body_timeout.unwrap_or_default())
            } else {
                resp.map(Body::new)
            };
            // In flight until the response body is done with (a stream's whole life).
            Ok::<_, Infallible>(resp.map(move |b| {
                Body::new(b.map_frame(move |f| {
                    let _ = &in_flight;
                    f
                }))
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if opts.http2_only {
        builder = builder.http2_only();
    }
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    // hyper's own header time-out would also run while idle; ours (Guarded) tells the
    // two apart.
    builder.http1().header_read_timeout(None);
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new());
    if let Some(k) = opts.keep_alive {
        h2.keep_alive_interval(Some(k.interval))
            .keep_alive_timeout(k.timeout);
    }
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// `408 body_timeout`, and the connection closes after it.
fn body_timed_out(t: Duration) -> Response<Body> {
    let mut r = crate::api::error::ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} (limits.api.body_timeout)",
            humantime::format_duration(t)
        ),
    )
    .into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Accepts on `listener` within `limiter`'s caps and serves each connection with
/// `svc` until `shutdown`; then waits for the connections to finish (the caller bounds
/// that with its drain time).
pub async fn serve<S, B>(
    listener: tokio::net::TcpListener,
    limiter: Arc<super::ConnLimiter>,
    svc: S,
    opts: HttpOptions,
    shutdown: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Body>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut conns = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let (stream, remote, permit) = tokio::select! {
            c = limiter.accept(&listener) => c,
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let now = Instant::now();
        let act = Activity::new(now);
        let mut ext = axum::http::Extensions::new();
        ext.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(remote),
        });
        let io = Guarded::new(stream, act.clone(), opts.policy, now, Some(permit));
        conns.spawn(serve_connection(
            io,
            act,
            svc.clone(),
            opts,
            ext,
            shutdown.clone(),
        ));
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Resolves once `rx` turns true (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}
