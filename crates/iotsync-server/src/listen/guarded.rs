//! A connection's stream with its time-outs, enforced where the bytes are read and
//! written (so they hold whatever protocol runs on top):
//!
//! - **handshake**: the first `preface` bytes must arrive by a deadline (the HTTP/2
//!   connection preface; for HTTP/1 the first request's head, see `head`);
//! - **head**: with no request in flight, once a byte of the next request came, the
//!   request must be under way (its head parsed: [`Activity::start`]) within `head`;
//! - **idle**: with no request in flight and nothing of the next one, the connection
//!   is closed after `idle`;
//! - **write stall**: a write that cannot proceed (the peer stopped reading) for
//!   `write_stall` fails.
//!
//! A time-out fails the read (or write) with `TimedOut`; the server on top then drops
//! the connection. Requests in flight are counted by [`Activity`], which the service
//! side updates; while one is in flight only the write stall applies (the body has its
//! own deadline, see [`super::http`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::ConnPermit;

/// The time-outs of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Bytes the peer must send before `handshake` has passed since the start.
    pub preface: usize,
    pub handshake: Duration,
    /// See the module doc; `None`: bytes while idle do not start a head deadline (HTTP/2,
    /// where PINGs and SETTINGS come and go between streams).
    pub head: Option<Duration>,
    pub idle: Duration,
    pub write_stall: Duration,
}

#[derive(Debug)]
struct ActState {
    in_flight: usize,
    idle_since: Instant,
    head_started: Option<Instant>,
    reader: Option<Waker>,
}

/// Requests in flight on one connection, shared by its stream and its service.
#[derive(Debug)]
pub struct Activity(Mutex<ActState>);

/// One request in flight; dropped when its response is done.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Activity {
    pub fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self(Mutex::new(ActState {
            in_flight: 0,
            idle_since: now,
            head_started: None,
            reader: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, ActState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head was read; it is in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        let mut st = self.lock();
        st.in_flight += 1;
        st.head_started = None;
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.in_flight == 0 {
            st.idle_since = Instant::now();
            // The reader arms the idle deadline on its next poll.
            if let Some(w) = st.reader.take() {
                w.wake();
            }
        }
    }
}

/// A stream with the time-outs of [`Policy`]; holds the connection's place in its
/// listener's caps until dropped.
pub struct Guarded<S> {
    inner: S,
    act: Arc<Activity>,
    policy: Policy,
    started: Instant,
    preface_left: usize,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    _permit: Option<ConnPermit>,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("connection {what}"))
}

impl<S> Guarded<S> {
    /// `started`: when the connection was accepted (the handshake deadline counts from
    /// it, TLS included).
    pub fn new(
        inner: S,
        act: Arc<Activity>,
        policy: Policy,
        started: Instant,
        permit: Option<ConnPermit>,
    ) -> Self {
        if policy.head.is_some() {
            // A new connection's first request counts as begun at accept.
            act.lock().head_started = Some(started);
        }
        Self {
            inner,
            act,
            policy,
            started,
            preface_left: policy.preface,
            read_timer: Box::pin(tokio::time::sleep_until(started + policy.handshake)),
            write_timer: None,
            _permit: permit,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The deadline reads are held to now, and what it is for.
    fn read_deadline(&self, cx: &Context<'_>) -> Option<(Instant, &'static str)> {
        if self.preface_left > 0 {
            return Some((self.started + self.policy.handshake, "handshake timed out"));
        }
        let mut st = self.act.lock();
        if st.in_flight > 0 {
            st.reader = Some(cx.waker().clone());
            return None;
        }
        match (st.head_started, self.policy.head) {
            (Some(t), Some(h)) => Some((t + h, "request head timed out")),
            _ => Some((st.idle_since + self.policy.idle, "idle timed out")),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let deadline = this.read_deadline(cx);
        if let Some((at, what)) = deadline {
            if Instant::now() >= at {
                return Poll::Ready(Err(timed_out(what)));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.preface_left = this.preface_left.saturating_sub(n);
                    if this.policy.head.is_some() {
                        let mut st = this.act.lock();
                        if st.in_flight == 0 && st.head_started.is_none() {
                            st.head_started = Some(Instant::now());
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some((at, what)) = deadline {
                    if this.read_timer.deadline() != at {
                        this.read_timer.as_mut().reset(at);
                    }
                    if this.read_timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(timed_out(what)));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending => {
                let stall = this.policy.write_stall;
                let timer = this
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("write stalled: the peer stopped reading")));
                }
                Poll::Pending
            }
            ready => {
                this.write_timer = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => {
                let stall = this.policy.write_stall;
                let timer = this
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out("write stalled: the peer stopped reading")));
                }
                Poll::Pending
            }
            ready => {
                this.write_timer = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Policy {
        Policy {
            preface: 4,
            handshake: 200 * MS,
            head: None,
            idle: 600 * MS,
            write_stall: 200 * MS,
        }
    }

    async fn read_until_error(g: &mut Guarded<tokio::io::DuplexStream>) -> (usize, io::Error) {
        let mut buf = [0u8; 16];
        let mut got = 0;
        loop {
            match g.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => return (got, e),
            }
        }
    }

    #[tokio::test]
    async fn a_peer_that_sends_nothing_or_half_the_preface_times_out() {
        for sent in [&b""[..], b"PR"] {
            let (a, mut b) = tokio::io::duplex(64);
            let act = Activity::new(Instant::now());
            let mut g = Guarded::new(a, act, policy(), Instant::now(), None);
            b.write_all(sent).await.unwrap();
            let (got, e) = read_until_error(&mut g).await;
            assert_eq!(got, sent.len());
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert!(e.to_string().contains("handshake"), "{e}");
        }
    }

    #[tokio::test]
    async fn after_the_preface_idle_applies_and_a_request_in_flight_suspends_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let act = Activity::new(Instant::now());
        let mut g = Guarded::new(a, act.clone(), policy(), Instant::now(), None);
        b.write_all(b"PRI*").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(g.read(&mut buf).await.unwrap(), 4);
        // In flight: nothing times out, well past the idle time.
        let req = act.start();
        let quiet = tokio::time::timeout(1500 * MS, g.read(&mut buf)).await;
        assert!(quiet.is_err(), "a read finished: {quiet:?}");
        drop(req);
        let (_, e) = read_until_error(&mut g).await;
        assert!(e.to_string().contains("idle"), "{e}");
    }

    #[tokio::test]
    async fn a_started_head_must_finish_within_the_head_time_out() {
        let p = Policy {
            preface: 0,
            head: Some(200 * MS),
            ..policy()
        };
        let (a, mut b) = tokio::io::duplex(64);
        let act = Activity::new(Instant::now());
        let mut g = Guarded::new(a, act.clone(), p, Instant::now(), None);
        // The first request's head counts from accept.
        b.write_all(b"GET / HT").await.unwrap();
        let (got, e) = read_until_error(&mut g).await;
        assert_eq!(got, 8);
        assert!(e.to_string().contains("request head"), "{e}");

        // After a request, an idle connection gets `idle` (longer than the head's);
        // a byte of the next request starts the head deadline.
        let (a, mut b) = tokio::io::duplex(64);
        let act = Activity::new(Instant::now());
        let mut g = Guarded::new(a, act.clone(), p, Instant::now(), None);
        drop(act.start());
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(400 * MS, g.read(&mut buf)).await;
        assert!(r.is_err(), "idle is 600 ms, not the head's 200 ms: {r:?}");
        b.write_all(b"G").await.unwrap();
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        let (_, e) = read_until_error(&mut g).await;
        assert!(e.to_string().contains("request head"), "{e}");
    }

    #[tokio::test]
    async fn a_write_to_a_peer_that_stopped_reading_fails_after_the_stall_time() {
        let (a, _b) = tokio::io::duplex(16);
        let act = Activity::new(Instant::now());
        let mut g = Guarded::new(a, act, policy(), Instant::now(), None);
        let e = g.write_all(&[0u8; 1024]).await.unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
    }
}
