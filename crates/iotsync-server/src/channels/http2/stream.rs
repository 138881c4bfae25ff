//! One gRPC consumer: leases within the client's credit, sends envelopes, settles acks,
//! and ends the stream with a status that says why when the platform closes it.

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use iotsync_backlog::{Delivery, LeaseToken};
use iotsync_core::SharedClock;

use super::pb::{consume_request, consume_response, ConsumeRequest, ConsumeResponse, SyncMessage};
use crate::delivery::hub::{CloseReason, ConsumerLink, LinkEnd};
use crate::delivery::Outcome;

/// Credit until the client sends its own.
pub const DEFAULT_CREDIT: usize = 32;
/// The most messages one consumer may have in flight.
pub const MAX_CREDIT: usize = 10_000;

/// The gRPC status a platform close ends the stream with; the message starts with the
/// stable code.
pub fn close_status(r: &CloseReason) -> Status {
    let msg = format!("{}: {}", r.code, r.message);
    match r.code {
        "sync.disabled" => Status::failed_precondition(msg),
        _ => Status::unavailable(msg),
    }
}

/// In-flight deliveries by messageId. A lease that timed out stays ackable (late acks
/// count) but stops counting against the credit.
#[derive(Default)]
struct InFlight {
    live: HashMap<String, (LeaseToken, i64)>,
    late: HashMap<String, LeaseToken>,
}

const MAX_LATE: usize = 10_000;

impl InFlight {
    fn insert(&mut self, id: String, token: LeaseToken, deadline: i64) {
        self.late.remove(&id);
        self.live.insert(id, (token, deadline));
    }

    fn take(&mut self, id: &str) -> Option<LeaseToken> {
        self.live
            .remove(id)
            .map(|(t, _)| t)
            .or_else(|| self.late.remove(id))
    }

    /// Room left under `credit`, after moving timed-out leases aside.
    fn room(&mut self, credit: usize, now: i64) -> usize {
        if self.live.len() >= credit {
            let expired: Vec<String> = self
                .live
                .iter()
                .filter(|(_, (_, d))| *d < now)
                .map(|(k, _)| k.clone())
                .collect();
            if self.late.len() + expired.len() > MAX_LATE {
                self.late.clear();
            }
            for k in expired {
                if let Some((t, _)) = self.live.remove(&k) {
                    self.late.insert(k, t);
                }
            }
        }
        credit.saturating_sub(self.live.len())
    }
}

pub struct ConsumerStream {
    link: ConsumerLink,
    clock: SharedClock,
    shutdown: watch::Receiver<bool>,
    credit: usize,
    in_flight: InFlight,
}

/// Why the loop ended.
enum End {
    /// The client went away or half-closed; nothing to send.
    ClientGone,
    /// End the stream with this status.
    Status(Status),
}

impl ConsumerStream {
    pub fn new(link: ConsumerLink, clock: SharedClock, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            link,
            clock,
            shutdown,
            credit: DEFAULT_CREDIT,
            in_flight: InFlight::default(),
        }
    }

    pub async fn run(
        mut self,
        mut inbound: Streaming<ConsumeRequest>,
        out: mpsc::Sender<Result<ConsumeResponse, Status>>,
    ) {
        let end = self.pump(&mut inbound, &out).await;
        if let End::Status(s) = end {
            let _ = out.send(Err(s)).await;
        }
        // Unsettled deliveries go back to the group at once.
        self.link.detach().await;
    }

    async fn pump(
        &mut self,
        inbound: &mut Streaming<ConsumeRequest>,
        out: &mpsc::Sender<Result<ConsumeResponse, Status>>,
    ) -> End {
        let mut shutdown = self.shutdown.clone();
        loop {
            let room = self.in_flight.room(self.credit, self.clock.now_ms());
            let link = &mut self.link;
            // `lease` completes in one poll, so dropping this future when another branch
            // wins loses nothing.
            let next = async move {
                if room > 0 {
                    link.next(room).await
                } else {
                    Err(LinkEnd::Closed(link.closed().await))
                }
            };
            tokio::select! {
                biased;
                _ = crate::channels::http2::stopped(&mut shutdown) => {
                    return End::Status(Status::unavailable("server.shutdown: the server is shutting down; connect again"));
                }
                r = inbound.message() => match r {
                    Ok(Some(req)) => {
                        if let Err(s) = self.on_request(req).await {
                            return End::Status(s);
                        }
                    }
                    Ok(None) => return End::ClientGone,
                    Err(s) => {
                        tracing::debug!(consumer = self.link.id().0, status = %s, "http2 client stream ended");
                        return End::ClientGone;
                    }
                },
                r = next => match r {
                    Ok(deliveries) => {
                        if let Err(end) = self.send(deliveries, out).await {
                            return end;
                        }
                    }
                    Err(LinkEnd::Closed(reason)) => return End::Status(close_status(&reason)),
                    Err(LinkEnd::Backlog(e)) => {
                        tracing::error!(consumer = self.link.id().0, error = %e, "http2: lease failed");
                        return End::Status(Status::unavailable("the platform cannot deliver right now; connect again"));
                    }
                },
                _ = out.closed() => return End::ClientGone,
            }
        }
    }

    async fn on_request(&mut self, req: ConsumeRequest) -> Result<(), Status> {
        match req.kind {
            Some(consume_request::Kind::Ack(ack)) => {
                let Some(token) = self.in_flight.take(&ack.message_id) else {
                    tracing::debug!(consumer = self.link.id().0, message_id = %ack.message_id, "http2: ack of a message not in flight");
                    return Ok(());
                };
                let outcome = if ack.success {
                    Outcome::Accepted
                } else {
                    Outcome::Released
                };
                self.settle(&token, outcome).await
            }
            Some(consume_request::Kind::Credit(c)) => {
                let n = c.max_in_flight as usize;
                if n == 0 || n > MAX_CREDIT {
                    return Err(Status::invalid_argument(format!(
                        "credit.max_in_flight must be 1..={MAX_CREDIT}, got {n}"
                    )));
                }
                self.credit = n;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn settle(&self, token: &LeaseToken, outcome: Outcome) -> Result<(), Status> {
        match self.link.settle(token, outcome).await {
            Ok(()) => Ok(()),
            // The delivery is no longer leased: its group was sought or purged (or it
            // timed out and was acknowledged elsewhere). Nothing to record; the stream
            // goes on.
            Err(iotsync_backlog::BacklogError::UnknownLease { seq }) => {
                tracing::debug!(
                    consumer = self.link.id().0,
                    seq,
                    "http2: ack of a delivery no longer leased"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(consumer = self.link.id().0, error = %e, "http2: settle failed");
                Err(Status::unavailable(
                    "the platform cannot record acknowledgements right now",
                ))
            }
        }
    }

    async fn send(
        &mut self,
        deliveries: Vec<Delivery>,
        out: &mpsc::Sender<Result<ConsumeResponse, Status>>,
    ) -> Result<(), End> {
        let mut gone = false;
        // Routing happened at append: the group's filter took only what this project
        // sends to its consumers, so every delivery is sent.
        for d in deliveries {
            if gone {
                // Not sent: `detach` hands it back to the group at once.
                continue;
            }
            let env = d.message.envelope;
            let id = env.message_id.to_string();
            self.in_flight
                .insert(id.clone(), d.token, d.ack_deadline_ms);
            let msg = ConsumeResponse {
                kind: Some(consume_response::Kind::Message(SyncMessage {
                    topic: env.topic,
                    message_id: id,
                    generate_time: env.generate_time,
                    payload: env.payload,
                    attempt: d.attempt,
                })),
            };
            if out.send(Ok(msg)).await.is_err() {
                gone = true;
            }
        }
        if gone {
            return Err(End::ClientGone);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switched_consumers_end_with_unavailable_and_disabled_with_failed_precondition() {
        let s = close_status(&CloseReason {
            code: "sync.switched",
            message: "connect over amqp".into(),
        });
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(s.message(), "sync.switched: connect over amqp");
        let s = close_status(&CloseReason {
            code: "sync.disabled",
            message: "off".into(),
        });
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    }
}
