//! Turns accepted sync-setting transitions into backlog and consumer actions, and
//! reconciles the backlog with the registry at start.

use std::sync::Arc;

use async_trait::async_trait;

use std::time::Duration;

use iotsync_backlog::Backlog;
use iotsync_core::sync_rules::{Route, SyncMethod, SyncSettings, Transition};
use iotsync_core::ProjectId;
use iotsync_store::{ChangeKind, Registry, RegistryChange};
use tokio::sync::broadcast::error::RecvError;

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

/// The close reason of a consumer whose project's secret was rotated.
fn secret_rotated() -> CloseReason {
    CloseReason {
        code: "auth.secret_rotated",
        message: "the project's appSecret was rotated; connect again with the new secret".into(),
    }
}

fn sync_disabled() -> CloseReason {
    CloseReason {
        code: "sync.disabled",
        message:
            "data synchronization was disabled for this project; connect again after it is enabled"
                .into(),
    }
}

fn sync_switched(from: SyncMethod, to: SyncMethod) -> CloseReason {
    CloseReason {
        code: "sync.switched",
        message: format!("data synchronization switched from {from} to {to}; connect over {to}"),
    }
}

fn kind_of(m: SyncMethod) -> ChannelKind {
    match m {
        SyncMethod::Amqp => ChannelKind::Amqp,
        SyncMethod::Http2 => ChannelKind::Http2,
    }
}

impl SyncController {
    /// Follows changes committed by other nodes on a shared registry (issue 13): each
    /// re-checks this node's own backlog state and connected consumers against the
    /// registry and closes those no longer admitted, with the reasons a local change
    /// gives. A feed that lagged or reconnected re-checks every project with consumers
    /// here. Runs until shutdown.
    pub async fn follow_changes(
        self: Arc<Self>,
        mut feed: tokio::sync::broadcast::Receiver<RegistryChange>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let change = tokio::select! {
                _ = shutdown.changed() => return,
                c = feed.recv() => c,
            };
            match change {
                Ok(RegistryChange {
                    project: Some(p),
                    kind,
                }) => self.recheck(&p, kind).await,
                Ok(RegistryChange { project: None, .. }) | Err(RecvError::Lagged(_)) => {
                    for p in self.hub.projects_with_consumers() {
                        self.recheck(&p, ChangeKind::Sync).await;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Brings this node in line with one project's committed state.
    async fn recheck(&self, project: &ProjectId, kind: ChangeKind) {
        match kind {
            ChangeKind::Secret => self.close_rotated(project),
            ChangeKind::Registry => {}
            ChangeKind::Sync => {
                let settings = match self.registry.sync_settings(project).await {
                    Ok(s) => s,
                    Err(iotsync_store::StoreError::NotFound { .. }) => return,
                    Err(e) => {
                        tracing::warn!(project = %project, error = %e, "re-reading sync settings after a change on another node failed");
                        return;
                    }
                };
                if let Err(e) = self.groups.sync_project(project).await {
                    tracing::error!(project = %project, error = %e, "declaring the project's groups in the backlog failed");
                }
                if let Err(e) = self.prepare(project, &settings).await {
                    tracing::error!(project = %project, error = %e, "applying a sync change from another node to the backlog failed");
                }
                if !settings.enabled {
                    self.hub.close_project(project, None, sync_disabled());
                } else if let Some(to) = settings.method() {
                    let from = match to {
                        SyncMethod::Amqp => SyncMethod::Http2,
                        SyncMethod::Http2 => SyncMethod::Amqp,
                    };
                    self.hub
                        .close_project(project, Some(kind_of(from)), sync_switched(from, to));
                }
            }
        }
    }

    fn close_rotated(&self, project: &ProjectId) {
        for kind in [ChannelKind::Amqp, ChannelKind::Http2] {
            self.hub
                .close_project(project, Some(kind), secret_rotated());
        }
    }
}

#[async_trait]
impl SyncListener for SyncController {
    async fn on_secret_rotated(&self, project: &ProjectId) {
        self.close_rotated(project);
    }

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
                self.hub.close_project(project, None, sync_disabled());
            }
            Transition::Switched { from, to } => {
                self.hub
                    .close_project(project, Some(kind_of(from)), sync_switched(from, to));
            }
            Transition::Enabled { .. } | Transition::LegacyUrlChanged => {}
        }
    }
}
