//! SASL PLAIN logins (SPEC §6), through delivery's admission: the username forms and
//! signature are checked there (with the per-source throttle of failed logins and the
//! group's connection rate); this module only unwraps the SASL response and words the
//! AMQP side of a refusal.
//!
//! Every login reads the project's current secret from the registry, so a rotated
//! secret is in force at the very next login in both directions (caught by
//! `tests/amqp_rules.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use iotsync_core::ProjectId;

use crate::delivery::admission::{Admission, Admitted, Refusal};
use crate::delivery::hub::{ChannelCounters, ConsumerLink};
use crate::delivery::ChannelKind;

/// Who logged in.
pub type Authenticated = Admitted;

/// Why a login was refused. Shown in the server log only: the client gets a SASL outcome.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("SASL PLAIN response is malformed: {0}")]
    BadPlainResponse(&'static str),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl AuthError {
    /// Temporary failures get `sys-temp` (try again later), the rest `auth`.
    pub fn is_temporary(&self) -> bool {
        matches!(self, AuthError::Refused(r) if r.is_temporary())
    }
}

/// The AMQP channel's port into admission.
pub struct CredentialChecker {
    admission: Arc<Admission>,
}

impl CredentialChecker {
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }

    /// Checks a SASL PLAIN login from `remote`.
    pub async fn authenticate(
        &self,
        remote: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Authenticated, AuthError> {
        Ok(self
            .admission
            .login_amqp(remote.ip(), username, password)
            .await?)
    }

    /// Why this project may not consume over AMQP right now, if it may not.
    pub async fn sync_refusal(&self, project: &ProjectId) -> Option<String> {
        self.admission
            .may_receive(project, ChannelKind::Amqp)
            .await
            .err()
            .map(|r| amqp_reason(&r))
    }

    /// Attaches the connection's receiver link as a consumer of its group.
    pub async fn attach(
        &self,
        who: &Authenticated,
        remote: SocketAddr,
    ) -> Result<ConsumerLink, String> {
        let client_id = if who.client_id.is_empty() {
            remote.to_string()
        } else {
            who.client_id.clone()
        };
        self.admission
            .attach(who, ChannelKind::Amqp, remote.to_string(), client_id)
            .await
            .map_err(|r| amqp_reason(&r))
    }

    /// Where the channel's own counters go.
    pub fn counters(&self) -> Arc<ChannelCounters> {
        self.admission.counters()
    }
}

/// The close description of a refusal, starting with its stable code.
fn amqp_reason(r: &Refusal) -> String {
    match r {
        Refusal::SyncDisabled => {
            "sync.disabled: data synchronization is not enabled for this project".into()
        }
        Refusal::WrongMethod { .. } => {
            "sync.method: this project's data synchronization does not use AMQP".into()
        }
        other => other.client_message(),
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
