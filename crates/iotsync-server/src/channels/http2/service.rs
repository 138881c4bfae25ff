//! `SyncService/Consume`: hands the call's auth metadata (SPEC §7) to delivery's
//! admission (credentials, throttle, rate, whether the project is on HTTP/2), attaches
//! the consumer and hands the stream to its task.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use iotsync_core::sign::http2::{Http2AuthParams, HEADER_GROUP};
use iotsync_core::SharedClock;

use super::pb::sync_service_server::{SyncService, SyncServiceServer};
use super::pb::{ConsumeRequest, ConsumeResponse};
use super::stream::ConsumerStream;
use crate::channels::ChannelContext;
use crate::delivery::admission::{Admission, Refusal, BAD_CREDENTIALS};
use crate::delivery::ChannelKind;

/// Optional metadata naming the client, shown in the consumer list.
pub const HEADER_CLIENT_ID: &str = "x-client-id";

/// Group names starting with this are the platform's own (e.g. the legacy pusher's).
pub const RESERVED_GROUP_PREFIX: char = iotsync_core::subscription::RESERVED_PREFIX;

#[derive(Clone)]
pub struct Http2Service {
    admission: Arc<Admission>,
    clock: SharedClock,
    shutdown: watch::Receiver<bool>,
}

impl Http2Service {
    pub fn new(ctx: &ChannelContext) -> Self {
        Self {
            admission: ctx.admission.clone(),
            clock: ctx.clock.clone(),
            shutdown: ctx.shutdown.clone(),
        }
    }

    pub fn into_server(self) -> SyncServiceServer<Self> {
        SyncServiceServer::new(self)
            .max_decoding_message_size(64 * 1024)
            .max_encoding_message_size(2 * 1024 * 1024)
    }
}

/// The gRPC status of a refused consumer; its message starts with the stable code
/// (bad credentials keep the one answer that does not tell which part was wrong).
fn refusal_status(r: &Refusal) -> Status {
    match r {
        Refusal::BadCredentials(_) => Status::unauthenticated(BAD_CREDENTIALS),
        Refusal::Malformed(m) => Status::unauthenticated(format!("authentication failed: {m}")),
        Refusal::ReservedGroup(_) => Status::invalid_argument(format!(
            "invalid {HEADER_GROUP}: names starting with '{RESERVED_GROUP_PREFIX}' are reserved"
        )),
        Refusal::Throttled(_) | Refusal::RateLimited { .. } => {
            Status::resource_exhausted(r.client_message())
        }
        Refusal::SyncDisabled | Refusal::WrongMethod { .. } => {
            Status::failed_precondition(r.client_message())
        }
        Refusal::Unavailable(_) => Status::unavailable(r.client_message()),
    }
}

#[tonic::async_trait]
impl SyncService for Http2Service {
    type ConsumeStream = ReceiverStream<Result<ConsumeResponse, Status>>;

    async fn consume(
        &self,
        req: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let md = req.metadata();
        let params = Http2AuthParams::from_headers(|name| md.get(name)?.to_str().ok())
            .map_err(|e| Status::unauthenticated(format!("authentication failed: {e}")))?;
        let client_id = md
            .get(HEADER_CLIENT_ID)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect::<String>());
        let source = req.remote_addr();
        let remote = source
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let ip = source
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let who = match self.admission.login_http2(ip, &params, client_id).await {
            Ok(w) => w,
            Err(r) => {
                tracing::info!(%remote, error = %r, "http2: consumer refused");
                return Err(refusal_status(&r));
            }
        };
        let client_id = if who.client_id.is_empty() {
            remote.clone()
        } else {
            who.client_id.clone()
        };
        let link = self
            .admission
            .attach(&who, ChannelKind::Http2, remote.clone(), client_id)
            .await
            .map_err(|r| {
                tracing::info!(%remote, project = %who.project, error = %r, "http2: attach refused");
                refusal_status(&r)
            })?;
        let (tx, rx) = mpsc::channel(256);
        let consumer = ConsumerStream::new(link, Arc::clone(&self.clock), self.shutdown.clone());
        tokio::spawn(consumer.run(req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_grpc_statuses_with_their_code() {
        let s = refusal_status(&Refusal::SyncDisabled);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(
            s.message().starts_with("sync.not_enabled"),
            "{}",
            s.message()
        );
        let s = refusal_status(&Refusal::WrongMethod {
            channel: "http2",
            device: "amqp",
            user: "amqp",
        });
        assert!(
            s.message().contains("does not use http2"),
            "{}",
            s.message()
        );
        let s = refusal_status(&Refusal::BadCredentials("appKey 1234: bad sign".into()));
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        assert!(!s.message().contains("1234"));
        let s = refusal_status(&Refusal::RateLimited {
            group: "g".into(),
            limit: 100,
        });
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
    }
}
