//! Admission: the one path by which a consumer becomes a consumer, for every channel.
//! Credentials → project and group → what it may receive now → a [`ConsumerLink`].
//!
//! - Failed logins are throttled per source address (and per source + appKey) with
//!   back-off ([`crate::throttle`]); a throttled source is refused before its
//!   credentials are even looked at. Failures never count against the group.
//! - Only authenticated attempts count toward the group's connection rate
//!   (`delivery.connects_per_minute` per (project, group) per minute), so nobody who
//!   merely knows an appKey can lock its consumers out.
//! - Group names starting with `_` are the platform's; a consumer may not use them.
//! - An undeclared group is declared on its first connect ([`super::groups`]).
//!
//! Channels see this, [`ConsumerLink`] and [`super::hub::CloseReason`]: never the
//! backlog or the registry.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use iotsync_core::sign::amqp::{self as amqp_sign, AmqpCredentials};
use iotsync_core::sign::http2::Http2AuthParams;
use iotsync_core::sign::{SignError, FRESHNESS_WINDOW_MS};
use iotsync_core::subscription::{needs_legacy_group, LEGACY_GROUP, RESERVED_PREFIX};
use iotsync_core::sync_rules::{Route, SyncSettings};
use iotsync_core::{AppKey, ConsumerGroup, ProjectId, SharedClock};
use iotsync_store::{Registry, StoreError};

use super::groups::GroupDirectory;
use super::hub::{AttachError, AttachRequest, ChannelCounters, ConsumerLink, DeliveryHub};
use super::ChannelKind;
use crate::throttle::{AuthThrottle, RetryAfter};

/// Who was admitted.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub project: ProjectId,
    pub app_key: AppKey,
    pub group: ConsumerGroup,
    /// The client's own name, from its credentials (may be empty).
    pub client_id: String,
}

/// Why a consumer was refused. `Display` is for the server log; channels show
/// [`Refusal::client_message`].
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// Unknown appKey or a signature that does not match (one answer for both, so
    /// appKeys cannot be probed); the detail is for the log.
    #[error("bad credentials: {0}")]
    BadCredentials(String),
    /// Credentials that are well formed but not acceptable as given (stale timestamp,
    /// malformed username); safe to tell the client.
    #[error("credentials refused: {0}")]
    Malformed(String),
    #[error("consumer group {0} is reserved for the platform (names starting with '_')")]
    ReservedGroup(ConsumerGroup),
    #[error("{0}")]
    Throttled(RetryAfter),
    #[error("too many connection attempts for group {group}: at most {limit} per minute")]
    RateLimited { group: String, limit: u32 },
    #[error("data synchronization is not enabled for this project")]
    SyncDisabled,
    #[error("this project's data synchronization does not use {channel} (device data: {device}, user data: {user})")]
    WrongMethod {
        channel: &'static str,
        device: &'static str,
        user: &'static str,
    },
    #[error("the platform cannot serve this consumer right now: {0}")]
    Unavailable(String),
}

/// One answer for unknown appKeys and bad signatures.
pub const BAD_CREDENTIALS: &str =
    "authentication failed: unknown appKey or the signature does not match";

impl Refusal {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadCredentials(_) | Refusal::Malformed(_) => "auth.failed",
            Refusal::ReservedGroup(_) => "auth.reserved_group",
            Refusal::Throttled(_) => crate::throttle::THROTTLED_CODE,
            Refusal::RateLimited { .. } => "auth.rate_limited",
            Refusal::SyncDisabled => "sync.not_enabled",
            Refusal::WrongMethod { .. } => "sync.wrong_method",
            Refusal::Unavailable(_) => "server.unavailable",
        }
    }

    /// Try again later (AMQP `sys-temp`, gRPC `UNAVAILABLE`/`RESOURCE_EXHAUSTED`).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Refusal::Throttled(_) | Refusal::RateLimited { .. } | Refusal::Unavailable(_)
        )
    }

    /// What the client is told: `code: message`, never the log detail.
    pub fn client_message(&self) -> String {
        let msg = match self {
            Refusal::BadCredentials(_) => BAD_CREDENTIALS.to_owned(),
            Refusal::Unavailable(_) => {
                "the platform cannot serve this consumer right now; try again".to_owned()
            }
            other => other.to_string(),
        };
        format!("{}: {msg}", self.code())
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(error = %e, "admission: registry or backlog unavailable");
    Refusal::Unavailable(e.to_string())
}

/// A legacy HTTP push target: a project whose user data is pushed, and its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyTarget {
    pub project: ProjectId,
    pub app_key: AppKey,
    pub url: String,
}

pub struct Admission {
    registry: Arc<dyn Registry>,
    hub: Arc<DeliveryHub>,
    groups: Arc<GroupDirectory>,
    clock: SharedClock,
    throttle: Arc<crate::throttle::Throttles>,
    connects_per_minute: u32,
    attempts: Mutex<HashMap<(ProjectId, ConsumerGroup), VecDeque<i64>>>,
}

impl Admission {
    pub fn new(
        registry: Arc<dyn Registry>,
        hub: Arc<DeliveryHub>,
        groups: Arc<GroupDirectory>,
        clock: SharedClock,
        throttle: Arc<crate::throttle::Throttles>,
        connects_per_minute: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry,
            hub,
            groups,
            clock,
            throttle,
            connects_per_minute,
            attempts: Mutex::new(HashMap::new()),
        })
    }

    fn consumer_throttle(&self) -> &AuthThrottle {
        &self.throttle.consumer
    }

    /// The channels' own counters (shown on `/metrics`).
    pub fn counters(&self) -> Arc<ChannelCounters> {
        self.hub.counters.clone()
    }

    /// An AMQP SASL PLAIN login (SPEC §6).
    pub async fn login_amqp(
        &self,
        source: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<Admitted, Refusal> {
        let creds: AmqpCredentials = match username.parse() {
            Ok(c) => c,
            Err(e) => {
                let credential = username.chars().take(128).collect::<String>();
                self.consumer_throttle()
                    .check(source, &credential)
                    .map_err(Refusal::Throttled)?;
                self.consumer_throttle().note_failure(source, &credential);
                return Err(Refusal::Malformed(format!("username: {e}")));
            }
        };
        let group = creds.effective_group();
        let (project, secret) = self
            .credential_check(source, &creds.app_key, &group)
            .await?;
        let now = self.clock.now_ms();
        match amqp_sign::verify(&creds, password, &secret, now, FRESHNESS_WINDOW_MS) {
            Ok(()) => {}
            Err(e) => return Err(self.failed(source, &creds.app_key, e)),
        }
        self.admitted(
            source,
            project,
            creds.app_key,
            group,
            creds.client_id,
            ChannelKind::Amqp,
        )
        .await
    }

    /// An HTTP/2 call's auth metadata (SPEC §7).
    pub async fn login_http2(
        &self,
        source: IpAddr,
        params: &Http2AuthParams,
        client_id: Option<String>,
    ) -> Result<Admitted, Refusal> {
        let group = params.effective_group();
        let (project, secret) = self
            .credential_check(source, &params.app_key, &group)
            .await?;
        match params.verify(&secret, self.clock.now_ms(), FRESHNESS_WINDOW_MS) {
            Ok(()) => {}
            Err(e) => return Err(self.failed(source, &params.app_key, e)),
        }
        self.admitted(
            source,
            project,
            params.app_key.clone(),
            group,
            client_id.unwrap_or_default(),
            ChannelKind::Http2,
        )
        .await
    }

    /// Throttle, reserved names, the appKey's project and secret.
    async fn credential_check(
        &self,
        source: IpAddr,
        app_key: &AppKey,
        group: &ConsumerGroup,
    ) -> Result<(ProjectId, String), Refusal> {
        self.consumer_throttle()
            .check(source, app_key.as_str())
            .map_err(Refusal::Throttled)?;
        if group.as_str().starts_with(RESERVED_PREFIX) {
            return Err(Refusal::ReservedGroup(group.clone()));
        }
        match self.registry.project_by_app_key(app_key).await {
            Ok(p) => Ok((p.project.project_id, p.app_secret)),
            Err(StoreError::NotFound { .. }) => {
                self.consumer_throttle()
                    .note_failure(source, app_key.as_str());
                Err(Refusal::BadCredentials(format!("unknown appKey {app_key}")))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    fn failed(&self, source: IpAddr, app_key: &AppKey, e: SignError) -> Refusal {
        self.consumer_throttle()
            .note_failure(source, app_key.as_str());
        match e {
            e @ SignError::Stale { .. } => Refusal::Malformed(e.to_string()),
            e => Refusal::BadCredentials(format!("appKey {app_key}: {e}")),
        }
    }

    /// Authenticated: clears the source's failures with this appKey, counts the attempt
    /// toward the group's connection rate and, if the project sends to this channel,
    /// declares the group now if this is its first connect: before the client is told
    /// it is in, so nothing produced after that is missed by the group.
    async fn admitted(
        &self,
        source: IpAddr,
        project: ProjectId,
        app_key: AppKey,
        group: ConsumerGroup,
        client_id: String,
        channel: ChannelKind,
    ) -> Result<Admitted, Refusal> {
        self.consumer_throttle()
            .note_success(source, app_key.as_str());
        self.note_attempt(&project, &group)?;
        if self.may_receive(&project, channel).await.is_ok() {
            self.groups
                .ensure(&project, &group, consumer_actor(channel))
                .await
                .map_err(unavailable)?;
        }
        Ok(Admitted {
            project,
            app_key,
            group,
            client_id,
        })
    }

    /// Counts an authenticated connection attempt of (project, group).
    fn note_attempt(&self, project: &ProjectId, group: &ConsumerGroup) -> Result<(), Refusal> {
        let now = self.clock.now_ms();
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        // Keys are authenticated now, but group names are still the client's choice.
        if attempts.len() > 10_000 {
            attempts.retain(|_, q| q.back().is_some_and(|t| now - *t < 60_000));
        }
        let q = attempts
            .entry((project.clone(), group.clone()))
            .or_default();
        while q.front().is_some_and(|t| now - *t >= 60_000) {
            q.pop_front();
        }
        if q.len() as u32 >= self.connects_per_minute {
            return Err(Refusal::RateLimited {
                group: group.to_string(),
                limit: self.connects_per_minute,
            });
        }
        q.push_back(now);
        Ok(())
    }

    /// Whether the project's settings let `channel` consume now.
    pub async fn may_receive(
        &self,
        project: &ProjectId,
        channel: ChannelKind,
    ) -> Result<(), Refusal> {
        let s = self
            .registry
            .sync_settings(project)
            .await
            .map_err(unavailable)?;
        routes_to(&s, channel)
    }

    /// Attaches an admitted consumer; the group is declared on its first connect. The
    /// settings are read again after attaching, so a disable or switch in between
    /// cannot miss this consumer.
    pub async fn attach(
        &self,
        who: &Admitted,
        channel: ChannelKind,
        remote: String,
        client_id: String,
    ) -> Result<ConsumerLink, Refusal> {
        self.may_receive(&who.project, channel).await?;
        let link = self
            .hub
            .attach(AttachRequest {
                project: who.project.clone(),
                group: who.group.clone(),
                channel,
                remote,
                client_id,
            })
            .await
            .map_err(|e| match e {
                AttachError::SyncDisabled => Refusal::SyncDisabled,
                e => unavailable(e),
            })?;
        if let Err(r) = self.may_receive(&who.project, channel).await {
            link.detach().await;
            return Err(r);
        }
        Ok(link)
    }

    /// The projects whose user data goes to the legacy HTTP push now.
    pub async fn legacy_targets(&self) -> Result<Vec<LegacyTarget>, Refusal> {
        let all = self
            .registry
            .all_sync_settings()
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        for (project, app_key, s) in all {
            let Some(url) = s.legacy_http_url.clone().filter(|u| !u.is_empty()) else {
                continue;
            };
            if !needs_legacy_group(&s) {
                continue;
            }
            out.push(LegacyTarget {
                project,
                app_key,
                url,
            });
        }
        Ok(out)
    }

    /// Attaches the pusher of a legacy target to the internal group `_legacy_http`
    /// (declared with the import); returns it with the secret pushes are signed with.
    pub async fn attach_legacy(&self, t: &LegacyTarget) -> Result<(ConsumerLink, String), Refusal> {
        let group: ConsumerGroup = LEGACY_GROUP
            .parse()
            .map_err(|e| Refusal::Unavailable(format!("legacy group name: {e}")))?;
        let secret = self
            .registry
            .project_by_app_key(&t.app_key)
            .await
            .map_err(unavailable)?
            .app_secret;
        let link = self
            .hub
            .attach(AttachRequest {
                project: t.project.clone(),
                group,
                channel: ChannelKind::Webhook,
                remote: t.url.clone(),
                client_id: "legacy-http-push".into(),
            })
            .await
            .map_err(unavailable)?;
        Ok((link, secret))
    }
}

/// The audit log's actor of a declaration on first connect.
pub fn consumer_actor(channel: ChannelKind) -> &'static str {
    match channel {
        ChannelKind::Amqp => "consumer:amqp",
        ChannelKind::Http2 => "consumer:http2",
        ChannelKind::Webhook => "consumer:webhook",
    }
}

/// Whether a project's settings send anything to consumers of `channel`.
fn routes_to(s: &SyncSettings, channel: ChannelKind) -> Result<(), Refusal> {
    if !s.enabled {
        return Err(Refusal::SyncDisabled);
    }
    let (route, name) = match channel {
        ChannelKind::Amqp => (Route::Amqp, "amqp"),
        ChannelKind::Http2 => (Route::Http2, "http2"),
        ChannelKind::Webhook => (Route::LegacyHttp, "legacy_http"),
    };
    if s.device_data != route && s.user_data != route {
        return Err(Refusal::WrongMethod {
            channel: name,
            device: s.device_data.as_str(),
            user: s.user_data.as_str(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_routes_to_the_channels_of_its_settings() {
        assert!(matches!(
            routes_to(&SyncSettings::default(), ChannelKind::Amqp),
            Err(Refusal::SyncDisabled)
        ));
        let mixed = SyncSettings {
            enabled: true,
            device_data: Route::Http2,
            user_data: Route::LegacyHttp,
            legacy_http_url: Some("http://x/".into()),
            ..SyncSettings::default()
        };
        assert!(routes_to(&mixed, ChannelKind::Http2).is_ok());
        assert!(routes_to(&mixed, ChannelKind::Webhook).is_ok());
        let e = routes_to(&mixed, ChannelKind::Amqp).unwrap_err();
        assert_eq!(e.code(), "sync.wrong_method");
        assert!(e.client_message().contains("does not use amqp"), "{e}");
    }

    #[test]
    fn bad_credentials_never_tell_the_client_which_part_was_wrong() {
        let e = Refusal::BadCredentials("unknown appKey 1234".into());
        assert!(!e.client_message().contains("1234"));
        assert!(!e.is_temporary());
        assert!(Refusal::Throttled(RetryAfter(std::time::Duration::from_secs(2))).is_temporary());
    }
}
