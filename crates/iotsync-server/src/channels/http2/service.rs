//! `SyncService/Consume`: authenticates the call's metadata (SPEC §7), checks that the
//! project is on HTTP/2, attaches a consumer to the hub and hands the stream to its task.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use iotsync_core::message::DataClass;
use iotsync_core::sign::http2::{Http2AuthParams, HEADER_GROUP};
use iotsync_core::sign::{SignError, FRESHNESS_WINDOW_MS};
use iotsync_core::sync_rules::{Route, SyncSettings};
use iotsync_store::StoreError;

use super::pb::sync_service_server::{SyncService, SyncServiceServer};
use super::pb::{ConsumeRequest, ConsumeResponse};
use super::stream::ConsumerStream;
use crate::context::Context;
use crate::delivery::hub::{AttachError, AttachRequest};
use crate::delivery::ChannelKind;

/// Optional metadata naming the client, shown in the consumer list.
pub const HEADER_CLIENT_ID: &str = "x-client-id";

/// Group names starting with this are the platform's own (e.g. the legacy pusher's).
pub const RESERVED_GROUP_PREFIX: char = '_';

/// One answer for both, so appKeys cannot be probed.
const BAD_CREDENTIALS: &str =
    "authentication failed: unknown x-auth-param-app-key or x-auth-param-sign does not match";

#[derive(Clone)]
pub struct Http2Service {
    ctx: Context,
}

impl Http2Service {
    pub fn new(ctx: &Context) -> Self {
        Self { ctx: ctx.clone() }
    }

    pub fn into_server(self) -> SyncServiceServer<Self> {
        SyncServiceServer::new(self)
            .max_decoding_message_size(64 * 1024)
            .max_encoding_message_size(2 * 1024 * 1024)
    }
}

/// Which data classes a project sends over HTTP/2 (both, or device data only in the
/// mixed configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Routes {
    device: bool,
    user: bool,
}

/// The routes of a project as a consumer of HTTP/2 sees them, or why it may not connect.
fn routes(settings: &SyncSettings) -> Result<Routes, Status> {
    if !settings.enabled {
        return Err(Status::failed_precondition(
            "sync.not_enabled: data synchronization is not enabled for this project",
        ));
    }
    let r = Routes {
        device: settings.route_for(DataClass::Device) == Route::Http2,
        user: settings.route_for(DataClass::User) == Route::Http2,
    };
    if !r.device && !r.user {
        return Err(Status::failed_precondition(format!(
            "sync.wrong_method: this project's data synchronization does not use http2 (device data: {}, user data: {})",
            settings.device_data.as_str(),
            settings.user_data.as_str()
        )));
    }
    Ok(r)
}

fn store_status(e: StoreError) -> Status {
    tracing::warn!(error = %e, "http2: registry lookup failed");
    Status::unavailable("the platform cannot check credentials right now; retry later")
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
        let group = params.effective_group();
        if group.as_str().starts_with(RESERVED_GROUP_PREFIX) {
            return Err(Status::invalid_argument(format!(
                "invalid {HEADER_GROUP}: names starting with '{RESERVED_GROUP_PREFIX}' are reserved"
            )));
        }
        let client_id = md
            .get(HEADER_CLIENT_ID)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect::<String>());
        let remote = req
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());

        let project = match self.ctx.registry.project_by_app_key(&params.app_key).await {
            Ok(p) => p,
            Err(StoreError::NotFound { .. }) => {
                tracing::info!(%remote, app_key = %params.app_key, "http2: unknown appKey");
                return Err(Status::unauthenticated(BAD_CREDENTIALS));
            }
            Err(e) => return Err(store_status(e)),
        };
        let pid = project.project.project_id.clone();
        // Counted before the signature check, so a flood of bad logins is limited too.
        self.ctx
            .hub
            .note_attempt(&pid, &group)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        match params.verify(
            &project.app_secret,
            self.ctx.clock.now_ms(),
            FRESHNESS_WINDOW_MS,
        ) {
            Ok(()) => {}
            Err(e @ SignError::Stale { .. }) => {
                return Err(Status::unauthenticated(format!(
                    "authentication failed: {e}"
                )))
            }
            Err(e) => {
                tracing::info!(%remote, project = %pid, error = %e, "http2: bad signature");
                return Err(Status::unauthenticated(BAD_CREDENTIALS));
            }
        }
        let settings = self
            .ctx
            .registry
            .sync_settings(&pid)
            .await
            .map_err(store_status)?;
        routes(&settings)?;

        let link = self
            .ctx
            .hub
            .attach(AttachRequest {
                project: pid.clone(),
                group: group.clone(),
                channel: ChannelKind::Http2,
                remote: remote.clone(),
                client_id: client_id.unwrap_or_else(|| remote.clone()),
            })
            .await
            .map_err(|e| match e {
                AttachError::RateLimited { .. } => Status::resource_exhausted(e.to_string()),
                AttachError::SyncDisabled => {
                    Status::failed_precondition(format!("sync.not_enabled: {e}"))
                }
                AttachError::Backlog(_) | AttachError::Group(_) => {
                    tracing::error!(project = %pid, error = %e, "http2: attach failed");
                    Status::unavailable("the platform cannot serve this consumer right now")
                }
            })?;
        // Read again after attaching: a disable or switch in between would otherwise have
        // missed this consumer.
        let settings = self
            .ctx
            .registry
            .sync_settings(&pid)
            .await
            .map_err(store_status)?;
        match routes(&settings) {
            Ok(_) => {}
            Err(s) => {
                link.detach().await;
                return Err(s);
            }
        };

        let (tx, rx) = mpsc::channel(256);
        let consumer =
            ConsumerStream::new(link, Arc::clone(&self.ctx.clock), self.ctx.shutdown.clone());
        tokio::spawn(consumer.run(req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_and_amqp_projects_are_refused_with_a_reason() {
        let off = SyncSettings::default();
        let s = routes(&off).unwrap_err();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(
            s.message().starts_with("sync.not_enabled"),
            "{}",
            s.message()
        );
        let amqp = SyncSettings {
            enabled: true,
            device_data: Route::Amqp,
            user_data: Route::Amqp,
            ..SyncSettings::default()
        };
        let s = routes(&amqp).unwrap_err();
        assert!(
            s.message().contains("does not use http2"),
            "{}",
            s.message()
        );
    }

    #[test]
    fn mixed_projects_send_only_device_data_over_http2() {
        let mixed = SyncSettings {
            enabled: true,
            device_data: Route::Http2,
            user_data: Route::LegacyHttp,
            legacy_http_url: Some("http://x".into()),
            ..SyncSettings::default()
        };
        let r = routes(&mixed).unwrap();
        assert!(r.device && !r.user);
    }
}
