//! SASL PLAIN credential checks (SPEC §6) against the registry.
//!
//! Every login reads the project's current secret from the registry (one indexed read;
//! logins are rare and rate-limited per group), so a rotated secret is in force at the
//! very next login in both directions: the new one works and the old one is refused. An
//! earlier version trusted a cached secret for a few seconds, which let the old secret
//! log in after a rotation (caught by `tests/amqp_rules.rs`).

use std::sync::Arc;

use iotsync_core::sign::amqp::{verify, AmqpCredentials, FRESHNESS_WINDOW_MS};
use iotsync_core::sign::SignError;
use iotsync_core::sync_rules::Route;
use iotsync_core::{AppKey, ConsumerGroup, ProjectId, SharedClock};
use iotsync_store::{Registry, StoreError};

use crate::delivery::hub::{AttachError, DeliveryHub};

/// Who logged in.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub project: ProjectId,
    pub app_key: AppKey,
    pub group: ConsumerGroup,
    pub client_id: String,
}

/// Why a login was refused. Shown in the server log only: the client gets a SASL outcome.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("SASL PLAIN response is malformed: {0}")]
    BadPlainResponse(&'static str),
    #[error("username refused: {0}")]
    Username(SignError),
    #[error("unknown appKey {0}")]
    UnknownAppKey(AppKey),
    #[error("signature refused: {0}")]
    Signature(SignError),
    #[error(transparent)]
    RateLimited(AttachError),
    #[error("consumer group {0} is reserved for the platform (names starting with '_')")]
    ReservedGroup(ConsumerGroup),
    #[error("registry unavailable: {0}")]
    Registry(StoreError),
}

impl AuthError {
    /// Temporary failures get `sys-temp` (try again later), the rest `auth`.
    pub fn is_temporary(&self) -> bool {
        matches!(self, AuthError::RateLimited(_) | AuthError::Registry(_))
    }
}

/// Checks logins against the registry.
pub struct CredentialChecker {
    registry: Arc<dyn Registry>,
    clock: SharedClock,
}

impl CredentialChecker {
    pub fn new(registry: Arc<dyn Registry>, clock: SharedClock) -> Self {
        Self { registry, clock }
    }

    /// Checks a SASL PLAIN login: username form, appKey, rate limit, freshness, signature.
    pub async fn authenticate(
        &self,
        hub: &DeliveryHub,
        username: &str,
        password: &str,
    ) -> Result<Authenticated, AuthError> {
        let creds: AmqpCredentials = username.parse().map_err(AuthError::Username)?;
        let group = creds.effective_group();
        // Internal groups (e.g. the legacy pusher's `_legacy_http`) are not for consumers.
        if group.as_str().starts_with('_') {
            return Err(AuthError::ReservedGroup(group));
        }
        let project = match self.registry.project_by_app_key(&creds.app_key).await {
            Ok(p) => p,
            Err(StoreError::NotFound { .. }) => {
                return Err(AuthError::UnknownAppKey(creds.app_key.clone()))
            }
            Err(e) => return Err(AuthError::Registry(e)),
        };
        let project_id = project.project.project_id.clone();
        // Counted before the signature is checked, so bad logins are limited too.
        hub.note_attempt(&project_id, &group)
            .map_err(AuthError::RateLimited)?;
        let now = self.clock.now_ms();
        verify(
            &creds,
            password,
            &project.app_secret,
            now,
            FRESHNESS_WINDOW_MS,
        )
        .map_err(AuthError::Signature)?;
        Ok(Authenticated {
            project: project_id,
            app_key: creds.app_key,
            group,
            client_id: creds.client_id,
        })
    }

    /// Why this project may not consume over AMQP right now, if it may not.
    pub async fn sync_refusal(&self, project: &ProjectId) -> Option<String> {
        match self.registry.sync_settings(project).await {
            Ok(s) if !s.enabled => {
                Some("sync.disabled: data synchronization is not enabled for this project".into())
            }
            Ok(s) if s.device_data != Route::Amqp && s.user_data != Route::Amqp => {
                Some("sync.method: this project's data synchronization does not use AMQP".into())
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(project = %project, error = %e, "reading sync settings failed");
                Some(
                    "server.unavailable: the project's settings cannot be read now; try again"
                        .into(),
                )
            }
        }
    }
}

/// Splits a SASL PLAIN initial response `authzid \0 authcid \0 passwd`.
pub fn split_plain(response: &[u8]) -> Result<(String, String), AuthError> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next().ok_or(AuthError::BadPlainResponse("empty"))?;
    let user = parts
        .next()
        .ok_or(AuthError::BadPlainResponse("no username"))?;
    let pass = parts
        .next()
        .ok_or(AuthError::BadPlainResponse("no password"))?;
    if parts.next().is_some() {
        return Err(AuthError::BadPlainResponse("too many fields"));
    }
    let user =
        std::str::from_utf8(user).map_err(|_| AuthError::BadPlainResponse("username not UTF-8"))?;
    let pass =
        std::str::from_utf8(pass).map_err(|_| AuthError::BadPlainResponse("password not UTF-8"))?;
    Ok((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_response_into_username_and_password() {
        let (u, p) = split_plain(b"\0user|a=b|\0secret").unwrap();
        assert_eq!(u, "user|a=b|");
        assert_eq!(p, "secret");
    }

    #[test]
    fn refuses_plain_response_without_password() {
        assert!(split_plain(b"\0user").is_err());
        assert!(split_plain(b"\0u\0p\0x").is_err());
    }
}
