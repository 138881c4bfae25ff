//! Declared consumer groups: the registry holds the declarations (durable, audited,
//! shared by every node later), the backlog holds what each group still owes. A group
//! collects from the moment its declaration is committed and the backlog has it; this
//! module is the one place that keeps the two in step:
//!
//! - a declaration through the API commits to the registry, then creates the group in
//!   the backlog, before the API answers;
//! - a consumer connecting with an undeclared name declares it (taking everything) on
//!   that first connect;
//! - at start, every declared group is created (or its spec updated) in the backlog
//!   before the outbox relay runs, which mends a crash between the two steps above;
//! - a delete drops the group from the backlog first (what it still owed is counted),
//!   then the declaration. A crash in between leaves a declared, empty group.

use std::collections::HashSet;
use std::sync::Arc;

use iotsync_backlog::{Backlog, GroupRetry, GroupSpec, MAX_GROUPS_PER_PROJECT};
use iotsync_core::subscription::RESERVED_PREFIX;
use iotsync_core::{ConsumerGroup, GroupFilter, GroupFilterDoc, ProjectId};
use iotsync_store::{DeclaredGroup, GroupRetryKind, Registry, StoreError};

/// Why a declaration could not be made or undone.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backlog(#[from] iotsync_backlog::BacklogError),
    #[error("stored filter of group {group} is not valid: {reason}")]
    BadFilter { group: String, reason: String },
}

/// The backlog spec of a declared group.
pub fn spec_of(g: &DeclaredGroup) -> Result<GroupSpec, GroupError> {
    let filter = GroupFilter::try_from(&g.filter).map_err(|e| GroupError::BadFilter {
        group: g.name.to_string(),
        reason: e.to_string(),
    })?;
    let retry = match g.retry {
        GroupRetryKind::Backoff => GroupRetry::Backoff,
        GroupRetryKind::LegacyHttp => GroupRetry::legacy_http(),
    };
    Ok(GroupSpec { filter, retry })
}

pub struct GroupDirectory {
    registry: Arc<dyn Registry>,
    backlog: Arc<dyn Backlog>,
}

impl GroupDirectory {
    pub fn new(registry: Arc<dyn Registry>, backlog: Arc<dyn Backlog>) -> Arc<Self> {
        Arc::new(Self { registry, backlog })
    }

    /// Declares a user group: registry first, then the backlog. If the backlog refuses,
    /// the declaration is withdrawn so the two never disagree while running.
    pub async fn declare(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        filter: &GroupFilterDoc,
        actor: &str,
    ) -> Result<DeclaredGroup, GroupError> {
        let g = self
            .registry
            .declare_group(project, name, filter, MAX_GROUPS_PER_PROJECT, actor)
            .await?;
        let created = match spec_of(&g) {
            Ok(spec) => self
                .backlog
                .create_group(project, name, &spec)
                .await
                .map_err(GroupError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            if let Err(undo) = self.registry.delete_group(project, name, actor).await {
                tracing::error!(project = %project, group = %name, error = %undo, "withdrawing a declaration the backlog refused failed; the next start mends it");
            }
            return Err(e);
        }
        tracing::info!(project = %project, group = %name, "consumer group declared");
        Ok(g)
    }

    /// A consumer connects with `name`: declared now if it was not, taking what the
    /// project routes to consumers (everything; device data only in the mixed
    /// configuration, whose user data goes to the legacy push), and present in the
    /// backlog either way.
    pub async fn ensure(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        actor: &str,
    ) -> Result<(), GroupError> {
        let settings = self.registry.sync_settings(project).await?;
        let filter = iotsync_core::subscription::default_group_filter_doc(&settings);
        let (g, new) = self
            .registry
            .ensure_group(project, name, &filter, MAX_GROUPS_PER_PROJECT, actor)
            .await?;
        let in_backlog = !new
            && self
                .backlog
                .groups(project)
                .await?
                .iter()
                .any(|i| &i.name == name);
        if !in_backlog {
            self.backlog
                .create_group(project, name, &spec_of(&g)?)
                .await?;
            if new {
                tracing::info!(project = %project, group = %name, "consumer group declared on first connect");
            }
        }
        Ok(())
    }

    /// Deletes a group: what it still owed is dropped (and counted by the backlog).
    pub async fn delete(
        &self,
        project: &ProjectId,
        name: &ConsumerGroup,
        actor: &str,
    ) -> Result<DeclaredGroup, GroupError> {
        // Refuse an unknown name before touching the backlog.
        let declared = self.registry.list_groups(project).await?;
        if !declared.iter().any(|g| &g.name == name) {
            return Err(StoreError::NotFound {
                entity: "consumer group",
                id: name.to_string(),
            }
            .into());
        }
        if self
            .backlog
            .groups(project)
            .await?
            .iter()
            .any(|i| &i.name == name)
        {
            self.backlog.delete_group(project, name).await?;
        }
        let g = self.registry.delete_group(project, name, actor).await?;
        tracing::info!(project = %project, group = %name, "consumer group deleted");
        Ok(g)
    }

    pub async fn list(&self, project: &ProjectId) -> Result<Vec<DeclaredGroup>, GroupError> {
        Ok(self.registry.list_groups(project).await?)
    }

    /// Brings one project's backlog groups in line with its declarations (after a sync
    /// transition declared or retired platform groups): every declared group exists with
    /// its spec; platform groups (`_…`) no longer declared are deleted.
    pub async fn sync_project(&self, project: &ProjectId) -> Result<(), GroupError> {
        let declared = self.registry.list_groups(project).await?;
        self.apply(project, &declared, false).await
    }

    /// At start, before the outbox relay runs: every declared group is in the backlog
    /// with its spec. Backlog groups without a declaration are adopted (declared, taking
    /// what they take now) when they are a user's (created at a connect by an earlier
    /// version), deleted when they are the platform's (`_…`).
    pub async fn reconcile_all(&self) -> Result<usize, GroupError> {
        let all = self.registry.all_groups().await?;
        let mut projects: Vec<ProjectId> = all.iter().map(|g| g.project_id.clone()).collect();
        for (pid, _, s) in self.registry.all_sync_settings().await? {
            if s.enabled || s.last_method.is_some() {
                projects.push(pid);
            }
        }
        projects.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        projects.dedup();
        let mut n = 0;
        for p in projects {
            let declared: Vec<DeclaredGroup> =
                all.iter().filter(|g| g.project_id == p).cloned().collect();
            n += declared.len();
            self.apply(&p, &declared, true).await?;
        }
        Ok(n)
    }

    async fn apply(
        &self,
        project: &ProjectId,
        declared: &[DeclaredGroup],
        adopt: bool,
    ) -> Result<(), GroupError> {
        let names: HashSet<&ConsumerGroup> = declared.iter().map(|g| &g.name).collect();
        for info in self.backlog.groups(project).await? {
            if names.contains(&info.name) {
                continue;
            }
            if info.name.as_str().starts_with(RESERVED_PREFIX) {
                tracing::info!(project = %project, group = %info.name, "deleting a platform group that is no longer declared");
                self.backlog.delete_group(project, &info.name).await?;
            } else if adopt {
                let doc = GroupFilterDoc::from(&info.spec.filter);
                match self
                    .registry
                    .declare_group(project, &info.name, &doc, usize::MAX, "platform")
                    .await
                {
                    Ok(_) | Err(StoreError::Conflict { .. }) => {
                        tracing::info!(project = %project, group = %info.name, "adopted an undeclared backlog group")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for g in declared {
            match spec_of(g) {
                Ok(spec) => self.backlog.create_group(project, &g.name, &spec).await?,
                Err(e) => tracing::error!(error = %e, "skipping a group with a bad stored filter"),
            }
        }
        Ok(())
    }
}
