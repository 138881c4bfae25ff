//! Connection threads (ADR 0003): every accepted AMQP connection runs on one of a few
//! threads, each driving its own single-threaded tokio runtime.
//!
//! A connection is five tasks that hand every delivery to each other: our link pump,
//! fe2o3's link → session → connection engines, the coalescing writer, and back through
//! the outcome futures to our settle task. On the server's work-stealing runtime each
//! hand-over may wake another worker thread (a futex call and a cache miss per hop);
//! on one thread the hand-overs are plain queue pushes. Connections are spread over the
//! threads by the fewest live connections, so several connections still use every core.
//!
//! Shutdown: the accept loops end on the server's shutdown signal and drop their
//! [`ConnThreads`]; each thread then waits for its connections (they see the same
//! signal and close with a reason) and exits. [`ConnThreads::finished`] resolves when
//! all threads have, so `RunningServer::shutdown` waits for the AMQP teardown (unsettled
//! deliveries handed back) before it closes the backlog.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::connection::Shared;
use crate::listen::ConnPermit;

/// One accepted socket for a connection thread.
struct Job {
    stream: std::net::TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    /// Its place in the listener's caps, held for the connection's life.
    permit: ConnPermit,
    accepted: tokio::time::Instant,
}

struct Thread {
    jobs: mpsc::UnboundedSender<Job>,
    live: Arc<AtomicUsize>,
}

/// The connection threads; dropping every handle lets them finish.
pub struct ConnThreads {
    threads: Vec<Thread>,
}

/// Resolves when every connection thread has ended.
pub struct Finished(Vec<oneshot::Receiver<()>>);

impl Finished {
    pub async fn wait(self) {
        for done in self.0 {
            let _ = done.await;
        }
    }
}

impl ConnThreads {
    /// Starts `count` threads (0: one per CPU core, at most `MAX_IO_THREADS`).
    pub fn start(count: usize, shared: Arc<Shared>) -> std::io::Result<(Arc<Self>, Finished)> {
        let count = match count {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(crate::config::MAX_IO_THREADS),
            n => n,
        };
        let mut threads = Vec::with_capacity(count);
        let mut dones = Vec::with_capacity(count);
        for i in 0..count {
            let (jobs, rx) = mpsc::unbounded_channel();
            let (done_tx, done) = oneshot::channel();
            let live = Arc::new(AtomicUsize::new(0));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (shared, live2) = (shared.clone(), live.clone());
            std::thread::Builder::new()
                .name(format!("iotsync-amqp-{i}"))
                .spawn(move || {
                    rt.block_on(run(rx, shared, live2));
                    // Tasks fe2o3 left behind (engines of closed connections) go with
                    // the runtime, before `finished` reports.
                    drop(rt);
                    let _ = done_tx.send(());
                })?;
            threads.push(Thread { jobs, live });
            dones.push(done);
        }
        Ok((Arc::new(Self { threads }), Finished(dones)))
    }

    /// Hands an accepted socket to the thread with the fewest live connections.
    pub fn dispatch(
        &self,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
        tls: Option<TlsAcceptor>,
        permit: ConnPermit,
    ) {
        let accepted = tokio::time::Instant::now();
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%remote, error = %e, "amqp: could not hand the socket over");
                return;
            }
        };
        let Some(t) = self
            .threads
            .iter()
            .min_by_key(|t| t.live.load(Ordering::Relaxed))
        else {
            return;
        };
        // Counted now, so a burst of accepts spreads before the threads pick them up.
        t.live.fetch_add(1, Ordering::Relaxed);
        if t.jobs
            .send(Job {
                stream,
                remote,
                tls,
                permit,
                accepted,
            })
            .is_err()
        {
            t.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%remote, "amqp: connection thread gone; connection dropped");
        }
    }
}

async fn run(mut jobs: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>, live: Arc<AtomicUsize>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => {
                    let guard = LiveGuard(live.clone());
                    conns.spawn(serve(job, shared.clone(), guard));
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// Counts a connection as live on its thread until dropped.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(job: Job, shared: Arc<Shared>, _live: LiveGuard) {
    let Job {
        stream,
        remote,
        tls,
        permit,
        accepted,
    } = job;
    match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => super::handle(s, remote, tls, shared, accepted, permit).await,
        Err(e) => tracing::info!(%remote, error = %e, "amqp: could not register the socket"),
    }
}
