//! Turns accepted sync-setting transitions into backlog and consumer actions, and
//! reconciles the backlog with the registry at start.

use std::sync::Arc;

use async_trait::async_trait;

use std::time::Duration;

use iotsync_backlog::Backlog;
use iotsync_core::sync_rules::{Route, SyncMethod, SyncSettings, Transition};
use iotsync_core::ProjectId;
use iotsync_store::Registry;

use super::groups::GroupDirectory;
use super::hub::{CloseReason, DeliveryHub};
use super::{ChannelKind, SyncListener};

/// How long a project's backlog is kept, by its sync method (SPEC §5: AMQP 1 day,
/// HTTP/2 7 days). The backlog knows retention, not methods: this is where they meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub amqp: Duration,
    pub http2: Duration,
}

impl RetentionPolicy {
    pub fn for_method(&self, method: SyncMethod) -> Duration {
        match method {
            SyncMethod::Amqp => self.amqp,
            SyncMethod::Http2 => self.http2,
        }
    }
}

pub struct SyncController {
    pub registry: Arc<dyn Registry>,
    pub backlog: Arc<dyn Backlog>,
    pub hub: Arc<DeliveryHub>,
    pub groups: Arc<GroupDirectory>,
    pub retention: RetentionPolicy,
}

/// The method whose retention a project's stack is held to: the single method, or
/// HTTP/2 for the mixed configuration, or the last method while disabled.
fn retention_method(s: &SyncSettings) -> Option<SyncMethod> {
    s.method()
        .or_else(|| (s.device_data == Route::Http2).then_some(SyncMethod::Http2))
        .or(s.last_method)
}

impl SyncController {
    /// Retention and pause state of one project from its settings.
    async fn prepare(&self, project: &ProjectId, settings: &SyncSettings) -> anyhow::Result<()> {
        if let Some(m) = retention_method(settings) {
            self.backlog
                .set_retention(project, self.retention.for_method(m))
                .await?;
        }
        self.backlog.set_paused(project, !settings.enabled).await?;
        Ok(())
    }

    /// Brings the backlog in line with the registry at start: every declared group
    /// (the default group and `_legacy_http` were declared with the enable or import
    /// that needed them), then every project's retention and pause state. Runs before
    /// the outbox relay, so nothing is appended before its groups exist.
    pub async fn reconcile_all(&self) -> anyhow::Result<usize> {
        self.groups.reconcile_all().await?;
        let all = self.registry.all_sync_settings().await?;
        let mut n = 0;
        for (project, _app_key, settings) in all {
            if settings.enabled || settings.last_method.is_some() {
                self.prepare(&project, &settings).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl SyncListener for SyncController {
    async fn on_transition(
        &self,
        project: &ProjectId,
        settings: &SyncSettings,
        transition: Transition,
    ) {
        // The registry declared (or retired) the project's platform groups in the same
        // transaction as the change: create them in the backlog before answering.
        if let Err(e) = self.groups.sync_project(project).await {
            tracing::error!(project = %project, error = %e, "declaring the project's groups in the backlog failed");
        }
        if let Err(e) = self.prepare(project, settings).await {
            tracing::error!(project = %project, error = %e, "applying sync transition to the backlog failed");
        }
        match transition {
            Transition::Disabled => {
                self.hub.close_project(
                    project,
                    None,
                    CloseReason {
                        code: "sync.disabled",
                        message: "data synchronization was disabled for this project; connect again after it is enabled".into(),
                    },
                );
            }
            Transition::Switched { from, to } => {
                let kind = match from {
                    SyncMethod::Amqp => ChannelKind::Amqp,
                    SyncMethod::Http2 => ChannelKind::Http2,
                };
                self.hub.close_project(
                    project,
                    Some(kind),
                    CloseReason {
                        code: "sync.switched",
                        message: format!(
                            "data synchronization switched from {from} to {to}; connect over {to}"
                        ),
                    },
                );
            }
            Transition::Enabled { .. } | Transition::LegacyUrlChanged => {}
        }
    }
}
