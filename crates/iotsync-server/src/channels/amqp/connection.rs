//! One consumer connection: SASL, open, one session, one receiver link pumped from the
//! hub, outcomes settled on their own task, teardown that hands unsettled deliveries back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle, SessionAcceptor,
};
use fe2o3_amqp::link::delivery::{DeliveryFut, Sendable};
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::definitions::{self, AmqpError, ConnectionError, LinkError};
use fe2o3_amqp::types::messaging::Outcome as AmqpOutcome;
use fe2o3_amqp::types::sasl::SaslCode;
use fe2o3_amqp::Sender;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use iotsync_backlog::LeaseToken;

use super::auth::{split_plain, Authenticated, CredentialChecker};
use super::io::Coalesced;
use super::message::to_amqp;
use super::sasl;
use crate::delivery::hub::{CloseReason, ConsumerLink, LinkEnd, LinkSettler};
use crate::delivery::Outcome;

/// A receiver link must be attached within this time of connecting (SPEC §6).
pub const RECEIVER_LINK_WITHIN: Duration = Duration::from_secs(15);
/// Our idle time-out: the client must send something (a heartbeat) at least this often.
pub const LOCAL_IDLE_TIMEOUT_MS: u32 = 60_000;
/// Most deliveries leased in one go while the link keeps having credit.
const MAX_LEASE: usize = 256;
/// Sent-but-unsettled deliveries queued for the settle task.
const SETTLE_QUEUE: usize = 4096;
/// How long teardown waits for the client's last dispositions and detach.
const TEARDOWN_WAIT: Duration = Duration::from_secs(3);

/// What every connection shares.
pub struct Shared {
    /// The channel's port into delivery's admission (logins, attach, counters).
    pub creds: CredentialChecker,
    pub shutdown: watch::Receiver<bool>,
    /// `limits.amqp.max_frame_size`: announced in `open` and enforced on every frame read.
    pub max_frame_size: u32,
    /// `limits.amqp.handshake_timeout`: TLS, protocol header and SASL within it.
    pub handshake_timeout: Duration,
}

type SendResult = Result<AmqpOutcome, SendError>;

/// Serves one accepted stream (plain TCP or TLS) until it ends; `accepted`: when the
/// socket was accepted (the handshake and link deadlines count from it).
pub async fn serve<S>(shared: Arc<Shared>, mut io: S, remote: SocketAddr, accepted: Instant)
where
    S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
{
    let deadline = accepted + RECEIVER_LINK_WITHIN;
    let handshake = accepted + shared.handshake_timeout;
    let login = match timeout_at(handshake, sasl::read_login(&mut io)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = %e, "amqp: SASL failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "amqp: no SASL login within limits.amqp.handshake_timeout");
            return;
        }
    };
    let checked = match split_plain(&login.response) {
        Ok((user, pass)) => shared.creds.authenticate(remote, &user, &pass).await,
        Err(e) => Err(e),
    };
    let who = match checked {
        Ok(who) => who,
        Err(e) => {
            tracing::info!(%remote, error = %e, "amqp: login refused");
            let code = if e.is_temporary() {
                SaslCode::SysTemp
            } else {
                SaslCode::Auth
            };
            let _ = sasl::send_outcome(&mut io, code).await;
            return;
        }
    };
    if let Err(e) = sasl::send_outcome(&mut io, SaslCode::Ok).await {
        tracing::info!(%remote, error = %e, "amqp: connection lost after login");
        return;
    }

    let acceptor = ConnectionAcceptor::builder()
        .container_id("iotsync")
        .idle_time_out(LOCAL_IDLE_TIMEOUT_MS)
        .max_frame_size(shared.max_frame_size)
        .build();
    // fe2o3 flushes every frame; coalescing turns a busy link's transfers into few writes.
    // Every frame is bounded by the bytes received before fe2o3 decodes it (ADR 0008).
    let io = Coalesced::new(io, shared.max_frame_size).counting_into(shared.creds.counters());
    let mut conn = match timeout_at(deadline, acceptor.accept(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::info!(%remote, error = ?e, "amqp: open failed");
            return;
        }
        Err(_) => {
            tracing::info!(%remote, "amqp: no open within 15 s");
            return;
        }
    };
    tracing::info!(%remote, project = %who.project, group = %who.group, client = %who.client_id, "amqp: connected");
    if let Some(why) = shared.creds.sync_refusal(&who.project).await {
        close(&mut conn, ConnectionError::ConnectionForced.into(), why).await;
        return;
    }
    let mut driver = Driver {
        shared: shared.clone(),
        who,
        remote,
        deadline,
    };
    driver.run(&mut conn).await;
}

/// How a pump ended.
#[derive(Debug)]
enum PumpExit {
    /// The driver told it to stop (connection gone, shutdown).
    Stopped,
    /// The client detached the link.
    ClientDetached,
    /// The platform closed the consumer (sync disabled or switched).
    Closed(CloseReason),
    /// The link failed (send error, backlog error).
    Failed(String),
}

struct Pump {
    stop: watch::Sender<bool>,
    done: oneshot::Receiver<PumpExit>,
}

struct Driver {
    shared: Arc<Shared>,
    who: Authenticated,
    remote: SocketAddr,
    deadline: Instant,
}

impl Driver {
    async fn run(&mut self, conn: &mut ListenerConnectionHandle) {
        let mut shutdown = self.shared.shutdown.clone();
        let session_acceptor = SessionAcceptor::new();
        let session = tokio::select! {
            s = session_acceptor.accept(conn) => s,
            _ = sleep_until(self.deadline) => {
                close(conn, AmqpError::PreconditionFailed.into(), no_link_message()).await;
                return;
            }
            _ = stopped(&mut shutdown) => {
                close(conn, ConnectionError::ConnectionForced.into(), "the server is shutting down".into()).await;
                return;
            }
        };
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(remote = %self.remote, error = ?e, "amqp: begin failed");
                let _ = timeout(TEARDOWN_WAIT, conn.close()).await;
                return;
            }
        };
        let links = LinkAcceptor::new();
        let mut pump: Option<Pump> = None;
        loop {
            let waiting_link = pump.is_none();
            tokio::select! {
                _ = sleep_until(self.deadline), if waiting_link => {
                    close(conn, AmqpError::PreconditionFailed.into(), no_link_message()).await;
                    break;
                }
                r = conn.on_close() => {
                    if let Err(e) = r {
                        tracing::info!(remote = %self.remote, error = ?e, "amqp: connection ended");
                    }
                    break;
                }
                _ = stopped(&mut shutdown) => {
                    stop_pump(pump.take()).await;
                    close(conn, ConnectionError::ConnectionForced.into(), "server.shutdown: the server is shutting down".into()).await;
                    break;
                }
                exit = async { match pump.as_mut() { Some(p) => (&mut p.done).await, None => std::future::pending().await } } => {
                    pump = None;
                    match exit {
                        Ok(PumpExit::Closed(reason)) => {
                            close(conn, ConnectionError::ConnectionForced.into(), format!("{}: {}", reason.code, reason.message)).await;
                            break;
                        }
                        Ok(PumpExit::ClientDetached) => {
                            // The client may attach a new receiver link.
                            self.deadline = Instant::now() + RECEIVER_LINK_WITHIN;
                        }
                        Ok(PumpExit::Failed(why)) => {
                            close(conn, AmqpError::InternalError.into(), why).await;
                            break;
                        }
                        Ok(PumpExit::Stopped) | Err(_) => break,
                    }
                }
                attach = session.next_incoming_attach() => {
                    let Some(attach) = attach else { break };
                    match links.accept_incoming_attach(attach, &mut session).await {
                        Ok(LinkEndpoint::Receiver(r)) => {
                            let err = definitions::Error::new(
                                AmqpError::NotAllowed,
                                "sender links are refused: iotsync only delivers messages; attach a receiver link".to_string(),
                                None,
                            );
                            let _ = timeout(TEARDOWN_WAIT, r.close_with_error(err)).await;
                        }
                        Ok(LinkEndpoint::Sender(s)) if pump.is_some() => {
                            let err = definitions::Error::new(
                                AmqpError::NotAllowed,
                                "one receiver link per connection: open another connection to consume in parallel".to_string(),
                                None,
                            );
                            let _ = timeout(TEARDOWN_WAIT, s.close_with_error(err)).await;
                        }
                        Ok(LinkEndpoint::Sender(s)) => match self.start_pump(s).await {
                            Ok(p) => pump = Some(p),
                            Err(why) => {
                                close(conn, AmqpError::ResourceLimitExceeded.into(), why).await;
                                break;
                            }
                        },
                        Err(e) => tracing::info!(remote = %self.remote, error = ?e, "amqp: attach failed"),
                    }
                }
            }
        }
        stop_pump(pump).await;
        let _ = timeout(TEARDOWN_WAIT, session.end()).await;
        tracing::info!(remote = %self.remote, project = %self.who.project, "amqp: disconnected");
    }

    async fn start_pump(&self, sender: Sender) -> Result<Pump, String> {
        let link = self.shared.creds.attach(&self.who, self.remote).await?;
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            let exit = pump(sender, link, stop_rx).await;
            let _ = done_tx.send(exit);
        });
        Ok(Pump { stop, done })
    }
}

/// Resolves once the flag turns true (or its sender is gone). Holds no borrow across
/// an await, so the future stays `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        let now = *rx.borrow_and_update();
        if now || rx.changed().await.is_err() {
            return;
        }
    }
}

fn no_link_message() -> String {
    "no receiver link attached within 15 s of connecting: attach one receiver link (any source address, e.g. `default`)".into()
}

async fn stop_pump(pump: Option<Pump>) {
    if let Some(p) = pump {
        let _ = p.stop.send(true);
        let _ = timeout(TEARDOWN_WAIT * 2, p.done).await;
    }
}

async fn close(
    conn: &mut ListenerConnectionHandle,
    condition: definitions::ErrorCondition,
    description: String,
) {
    tracing::info!(condition = ?condition, %description, "amqp: closing connection");
    let err = definitions::Error::new(condition, description, None);
    let _ = timeout(TEARDOWN_WAIT, conn.close_with_error(err)).await;
}

/// Leases deliveries within the link's credit and sends them; see ADR 0003 for the
/// adaptive lease size.
async fn pump(
    mut sender: Sender,
    mut link: ConsumerLink,
    mut stop: watch::Receiver<bool>,
) -> PumpExit {
    let (tx, rx) = mpsc::channel::<(LeaseToken, DeliveryFut<SendResult>)>(SETTLE_QUEUE);
    let settle_task = tokio::spawn(settle_loop(link.settler(), rx));
    let mut lease = 1usize;
    let exit = 'pump: loop {
        let batch = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break PumpExit::Stopped,
            _ = sender.on_detach() => break PumpExit::ClientDetached,
            r = link.next(lease) => match r {
                Ok(b) => b,
                Err(LinkEnd::Closed(reason)) => break PumpExit::Closed(reason),
                Err(LinkEnd::Backlog(e)) => break PumpExit::Failed(format!("backlog: {e}")),
            },
        };
        let mut waited_for_credit = false;
        for d in batch {
            // By reference: the message is not moved into fe2o3's nested send futures.
            let msg = Sendable::from(to_amqp(d.message.envelope, d.attempt));
            let send = sender.send_batchable_ref(&msg);
            tokio::pin!(send);
            // One poll tells whether the link had credit; either way we keep polling the
            // same future, so nothing is cancelled.
            let first = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
            let sent = match first {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    waited_for_credit = true;
                    tokio::select! {
                        r = &mut send => r,
                        _ = stopped(&mut stop) => break 'pump PumpExit::Stopped,
                        reason = link.closed() => break 'pump PumpExit::Closed(reason),
                    }
                }
            };
            match sent {
                Ok(fut) => {
                    if tx.send((d.token, fut)).await.is_err() {
                        break 'pump PumpExit::Failed("settle task ended".into());
                    }
                }
                Err(SendError::Detached(_)) => break 'pump PumpExit::ClientDetached,
                Err(e) => break 'pump PumpExit::Failed(format!("send: {e}")),
            }
        }
        lease = if waited_for_credit {
            1
        } else {
            (lease * 2).min(MAX_LEASE)
        };
    };
    // Closing the sender first completes the outcome futures of a dead link. A platform
    // close says why on the link too (the connection's close frame follows).
    match &exit {
        PumpExit::Closed(reason) => {
            let err = definitions::Error::new(
                LinkError::DetachForced,
                format!("{}: {}", reason.code, reason.message),
                None,
            );
            let _ = timeout(TEARDOWN_WAIT, sender.close_with_error(err)).await;
        }
        _ => {
            let _ = timeout(TEARDOWN_WAIT, sender.close()).await;
        }
    }
    drop(tx);
    if timeout(TEARDOWN_WAIT, settle_task).await.is_err() {
        tracing::warn!("amqp: settling the last outcomes timed out");
    }
    link.detach().await;
    exit
}

async fn settle_loop(
    settler: LinkSettler,
    mut rx: mpsc::Receiver<(LeaseToken, DeliveryFut<SendResult>)>,
) {
    let mut pending = FuturesUnordered::new();
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some((token, fut)) => pending.push(async move { (token, fut.await) }),
                None => break,
            },
            Some((token, r)) = pending.next(), if !pending.is_empty() => {
                settle(&settler, &token, r).await;
            }
        }
    }
    while let Some((token, r)) = pending.next().await {
        settle(&settler, &token, r).await;
    }
}

async fn settle(settler: &LinkSettler, token: &LeaseToken, r: SendResult) {
    let outcome = match r {
        Ok(AmqpOutcome::Accepted(_)) => Outcome::Accepted,
        Ok(AmqpOutcome::Rejected(_)) => Outcome::Rejected,
        Ok(AmqpOutcome::Released(_)) | Ok(AmqpOutcome::Modified(_)) => Outcome::Released,
        #[allow(unreachable_patterns)]
        Ok(_) => Outcome::Released,
        // Not settled by the client: detach hands it back to the group.
        Err(_) => return,
    };
    if let Err(e) = settler.settle(token, outcome).await {
        tracing::debug!(error = %e, "amqp: settling a delivery failed");
    }
}
