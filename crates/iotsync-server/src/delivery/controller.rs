//! Turns accepted sync-setting transitions into backlog and consumer actions, and
//! reconciles the backlog with the registry at start.

use std::sync::Arc;

use async_trait::async_trait;

use std::time::Duration;

use iotsync_backlog::{Backlog, GroupSpec};
use iotsync_core::sync_rules::{Route, SyncMethod, SyncSettings, Transition};
use iotsync_core::{ConsumerGroup, ProjectId};
use iotsync_store::Registry;

use super::hub::{CloseReason, DeliveryHub};
use super::ChannelKind;
use crate::api::SyncListener;

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
    pub hub: Arc<DeliveryHub>,
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
    fn backlog(&self) -> &Arc<dyn Backlog> {
        self.hub.backlog()
    }

    async fn prepare(&self, project: &ProjectId, settings: &SyncSettings) -> anyhow::Result<()> {
        let p = self.registry.get_project(project).await?;
        if settings.enabled {
            // The default group exists from enabling on, so nothing produced before the
            // first consumer connects is lost.
            self.backlog()
                .create_group(
                    project,
                    &ConsumerGroup::default_for(&p.app_key),
                    &GroupSpec::all(),
                )
                .await?;
        }
        if let Some(m) = retention_method(settings) {
            self.backlog()
                .set_retention(project, self.retention.for_method(m))
                .await?;
        }
        self.backlog()
            .set_paused(project, !settings.enabled)
            .await?;
        Ok(())
    }

    /// Brings the backlog in line with every project's stored settings.
    pub async fn reconcile_all(&self) -> anyhow::Result<usize> {
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
