//! Write coalescing under fe2o3's connection engine (see ADR 0003).
//!
//! The engine writes and flushes every frame on its own, so each transfer costs one
//! `writev` (and on loopback the receiver's wake-up too). [`Coalesced`] hands the written
//! bytes to a writer task instead: what the engine writes while that task is in a system
//! call goes out in the next single write. Under load that is tens of frames per write;
//! idle, one frame goes out at once, as before.
//!
//! Invariants: bytes go out in the order written; `poll_write` refuses more when
//! [`HIGH_WATER`] bytes wait (backpressure reaches the engine); `poll_flush` only reports
//! a failed writer (the bytes are on their way); `poll_shutdown` waits until everything
//! is written and the write side shut down; a write error fails every later call; once
//! the stream is dropped the writer gets [`DROP_GRACE`] to send what is queued.
//!
//! Reads are bounded ([`FrameGuard`], ADR 0008): what the client sends reaches the
//! merger and fe2o3 only as whole frames within the frame-size limit whose every
//! length field fits the bytes received; anything else fails the read with
//! `InvalidData` (fe2o3 then ends the connection), before any decoder allocates.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BytesMut};
use tokio_util::io::poll_read_buf;

use super::bounded::FrameGuard;
use super::merge::Merger;
use crate::delivery::hub::ChannelCounters;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

/// Bytes waiting for the writer beyond which writes wait.
pub const HIGH_WATER: usize = 256 * 1024;

/// How long the writer may go on sending after the stream was dropped.
pub const DROP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Room made for each read from the client.
const READ_CHUNK: usize = 16 * 1024;

/// Capacity each of the two buffers starts with.
const BUF_START: usize = 64 * 1024;

#[derive(Default)]
struct State {
    buf: BytesMut,
    /// The buffer the writer finished with, kept for reuse (two buffers take turns, so
    /// a busy connection does not reallocate).
    spare: Option<BytesMut>,
    /// The engine asked to shut down: write what is left, then shut the write side.
    closing: bool,
    /// The writer task is over (after shutdown, or after an error).
    done: bool,
    failed: Option<io::ErrorKind>,
    writer: Option<Waker>,
    producer: Option<Waker>,
}

struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stream whose writes are coalesced by a writer task (spawned on the current runtime)
/// and whose reads have the client's runs of dispositions merged ([`Merger`]).
pub struct Coalesced<S> {
    read: ReadHalf<S>,
    guard: FrameGuard,
    merger: Merger,
    /// Bytes read from the client and not yet checked (a partial frame).
    inbuf: BytesMut,
    /// Bytes through the merger that fe2o3 has not read yet.
    outbuf: BytesMut,
    eof: bool,
    /// Where merged frames are counted (the hub's counters), if anywhere.
    merged: Option<Arc<ChannelCounters>>,
    shared: Arc<Shared>,
    writer: tokio::task::AbortHandle,
}

impl<S> fmt::Debug for Coalesced<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesced").finish_non_exhaustive()
    }
}

impl<S> Coalesced<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// `max_frame_size`: the largest frame the client may send (the `max-frame-size`
    /// the server's `open` announces); larger ones fail the read.
    pub fn new(io: S, max_frame_size: u32) -> Self {
        let (read, write) = tokio::io::split(io);
        let shared = Arc::new(Shared(Mutex::new(State {
            buf: BytesMut::with_capacity(BUF_START),
            ..State::default()
        })));
        let writer = tokio::spawn(writer(write, shared.clone())).abort_handle();
        Self {
            read,
            guard: FrameGuard::new(max_frame_size),
            merger: Merger::default(),
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            outbuf: BytesMut::with_capacity(READ_CHUNK),
            eof: false,
            merged: None,
            shared,
            writer,
        }
    }
}

impl<S> Coalesced<S> {
    /// Counts the dispositions merged on this stream into `counters`.
    pub fn counting_into(mut self, counters: Arc<ChannelCounters>) -> Self {
        self.merged = Some(counters);
        self
    }
}

async fn writer<S: AsyncWrite>(mut io: WriteHalf<S>, shared: Arc<Shared>) {
    loop {
        // Everything written so far, or the end.
        let next = std::future::poll_fn(|cx| {
            let mut st = shared.lock();
            if !st.buf.is_empty() {
                let fresh = st
                    .spare
                    .take()
                    .unwrap_or_else(|| BytesMut::with_capacity(BUF_START));
                let chunk = std::mem::replace(&mut st.buf, fresh);
                if let Some(w) = st.producer.take() {
                    w.wake();
                }
                return Poll::Ready(Some(chunk));
            }
            if st.closing {
                return Poll::Ready(None);
            }
            st.writer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let result = match next {
            Some(mut chunk) => {
                let r = match io.write_all(&chunk).await {
                    Ok(()) => io.flush().await,
                    Err(e) => Err(e),
                };
                chunk.clear();
                shared.lock().spare = Some(chunk);
                r
            }
            None => {
                let r = io.shutdown().await;
                let mut st = shared.lock();
                st.done = true;
                if let Err(e) = r {
                    st.failed.get_or_insert(e.kind());
                }
                if let Some(w) = st.producer.take() {
                    w.wake();
                }
                return;
            }
        };
        if let Err(e) = result {
            let mut st = shared.lock();
            st.failed = Some(e.kind());
            st.done = true;
            st.buf.clear();
            if let Some(w) = st.producer.take() {
                w.wake();
            }
            return;
        }
    }
}

fn failed(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "amqp: the connection's writer failed")
}

impl<S: AsyncRead> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.outbuf.is_empty() {
                let n = this.outbuf.len().min(buf.remaining());
                buf.put_slice(&this.outbuf[..n]);
                this.outbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.inbuf.reserve(READ_CHUNK);
            let n =
                std::task::ready!(poll_read_buf(Pin::new(&mut this.read), cx, &mut this.inbuf))?;
            if n == 0 {
                this.eof = true;
                if !this.inbuf.is_empty() {
                    // A partial frame is never handed on unchecked.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "amqp: the client closed inside a frame",
                    )));
                }
                continue;
            }
            let mut checked = match this.guard.split_checked(&mut this.inbuf) {
                Ok(c) => c,
                Err(e) => {
                    this.eof = true;
                    this.inbuf.clear();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("amqp: frame refused: {e}"),
                    )));
                }
            };
            let before = this.merger.merged_frames;
            this.merger.process(&mut checked, &mut this.outbuf);
            // Whole frames only went in, so the merger took them all.
            this.outbuf.extend_from_slice(&checked);
            if let (Some(c), n @ 1..) = (&this.merged, this.merger.merged_frames - before) {
                c.amqp_dispositions_merged.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl<S> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        if let Some(k) = st.failed {
            return Poll::Ready(Err(failed(k)));
        }
        if st.closing || st.done {
            return Poll::Ready(Err(failed(io::ErrorKind::BrokenPipe)));
        }
        if st.buf.len() >= HIGH_WATER {
            st.producer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        st.buf.extend_from_slice(data);
        if let Some(w) = st.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.shared.lock().failed {
            Some(k) => Poll::Ready(Err(failed(k))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        st.closing = true;
        if let Some(w) = st.writer.take() {
            w.wake();
        }
        if st.done {
            return Poll::Ready(match st.failed {
                Some(k) => Err(failed(k)),
                None => Ok(()),
            });
        }
        st.producer = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<S> Drop for Coalesced<S> {
    fn drop(&mut self) {
        // Dropped without shutdown: the writer still sends what is queued, then ends;
        // a peer that stops reading cannot keep it (and the socket) alive past the grace.
        {
            let mut st = self.shared.lock();
            st.closing = true;
            if let Some(w) = st.writer.take() {
                w.wake();
            }
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.clone();
            rt.spawn(async move {
                tokio::time::sleep(DROP_GRACE).await;
                writer.abort();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_arrive_in_order_and_shutdown_waits_for_them() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut c = Coalesced::new(a, 512);
        for i in 0..1000u32 {
            c.write_all(&i.to_be_bytes()).await.unwrap();
            c.flush().await.unwrap();
        }
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            b.read_to_end(&mut all).await.unwrap();
            all
        });
        c.shutdown().await.unwrap();
        drop(c);
        let all = reader.await.unwrap();
        let expected: Vec<u8> = (0..1000u32).flat_map(|i| i.to_be_bytes()).collect();
        assert_eq!(all, expected);
    }

    #[tokio::test]
    async fn a_gone_peer_fails_later_writes() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let mut c = Coalesced::new(a, 512);
        let mut failed = false;
        for _ in 0..100 {
            if c.write_all(&[0u8; 1024]).await.is_err() || c.flush().await.is_err() {
                failed = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failed);
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut c = Coalesced::new(a, 512);
        b.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
