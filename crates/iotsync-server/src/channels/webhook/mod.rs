//! Legacy HTTP push (SPEC §8) for imported projects: user data POSTed as a signed form
//! to the project's URL, retried 10 s, 30 s, 1 min, … at most 16 pushes, then
//! dead-lettered. See `docs/adr/0004-http2-and-legacy-push.md` and ADR 0009.
//!
//! [`WebhookEngine`] runs one [`pusher::Pusher`] per project whose user data goes to
//! legacy HTTP. Every pusher consumes the internal group [`LEGACY_GROUP`], declared with
//! the import (filter: user data; retry: the legacy schedule), so it never competes with
//! the consumers of the default group and only ever receives what it pushes.

pub mod push;
pub mod pusher;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use iotsync_core::ProjectId;

use super::ChannelContext;
use crate::context::Started;
use crate::delivery::admission::{LegacyTarget, Refusal};

/// The internal consumer group every pusher consumes. Consumers may not use group names
/// starting with `_`.
pub const LEGACY_GROUP: &str = iotsync_core::subscription::LEGACY_GROUP;

/// The delays between pushes (after the 1st failed push 10 s, then 30 s, 1 min, …), as
/// the `_legacy_http` group's retry policy holds them (`GroupRetry::legacy_http`).
pub const LEGACY_SCHEDULE_SECS: [u64; 15] = [
    10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600,
];

/// At most this many pushes of one message; then the backlog dead-letters it.
pub const MAX_PUSHES: u32 = 16;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// A push without an answer within this long failed.
    pub request_timeout: Duration,
    /// Requests in flight per project.
    pub concurrency: usize,
    /// How often legacy projects and URL changes are looked for.
    pub reconcile_every: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            concurrency: 16,
            reconcile_every: Duration::from_millis(500),
        }
    }
}

/// Starts the legacy push engine.
pub async fn start(ctx: &ChannelContext) -> anyhow::Result<Started> {
    let engine = WebhookEngine::new(ctx.clone(), WebhookConfig::default())?;
    Ok(Started {
        listeners: Vec::new(),
        tasks: vec![tokio::spawn(engine.run())],
    })
}

struct Running {
    url: watch::Sender<String>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

pub struct WebhookEngine {
    ctx: ChannelContext,
    cfg: Arc<WebhookConfig>,
    http: reqwest::Client,
    pushers: HashMap<ProjectId, Running>,
}

impl WebhookEngine {
    pub fn new(ctx: ChannelContext, cfg: WebhookConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.request_timeout)
            .timeout(cfg.request_timeout)
            .user_agent(concat!("iotsync-legacy-push/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            ctx,
            cfg: Arc::new(cfg),
            http,
            pushers: HashMap::new(),
        })
    }

    pub async fn run(mut self) {
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "legacy push: looking for legacy projects failed");
            }
            tokio::select! {
                _ = crate::channels::http2::stopped(&mut shutdown) => break,
                _ = tokio::time::sleep(self.cfg.reconcile_every) => {}
            }
        }
        for (_, r) in self.pushers.drain() {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    async fn reconcile(&mut self) -> Result<(), Refusal> {
        let wanted: HashMap<ProjectId, LegacyTarget> = self
            .ctx
            .admission
            .legacy_targets()
            .await?
            .into_iter()
            .map(|t| (t.project.clone(), t))
            .collect();

        // Stop pushers of projects that left legacy HTTP (it can never come back).
        let gone: Vec<ProjectId> = self
            .pushers
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .cloned()
            .collect();
        for pid in gone {
            if let Some(r) = self.pushers.remove(&pid) {
                let _ = r.stop.send(true);
                let _ = r.task.await;
                tracing::info!(project = %pid, "legacy push stopped");
            }
        }

        for (pid, t) in wanted {
            if let Some(r) = self.pushers.get(&pid) {
                if !r.task.is_finished() {
                    r.url.send_if_modified(|u| {
                        if *u != t.url {
                            tracing::info!(project = %pid, "legacy push URL changed");
                            *u = t.url.clone();
                            true
                        } else {
                            false
                        }
                    });
                    continue;
                }
            }
            self.spawn(t).await;
        }
        Ok(())
    }

    async fn spawn(&mut self, t: LegacyTarget) {
        let (link, app_secret) = match self.ctx.admission.attach_legacy(&t).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(project = %t.project, error = %e, "legacy push: attach failed");
                return;
            }
        };
        let (url_tx, url_rx) = watch::channel(t.url);
        let (stop_tx, stop_rx) = watch::channel(false);
        let p = pusher::Pusher {
            link,
            app_key: t.app_key,
            app_secret,
            url: url_rx,
            http: self.http.clone(),
            cfg: self.cfg.clone(),
            stop: stop_rx,
        };
        tracing::info!(project = %t.project, group = LEGACY_GROUP, "legacy push started");
        let task = tokio::spawn(p.run());
        self.pushers.insert(
            t.project,
            Running {
                url: url_tx,
                stop: stop_tx,
                task,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_schedule_is_the_groups_retry_policy() {
        let iotsync_backlog::GroupRetry::Schedule {
            delays_ms,
            max_deliveries,
        } = iotsync_backlog::GroupRetry::legacy_http()
        else {
            panic!("not a schedule");
        };
        assert_eq!(max_deliveries, MAX_PUSHES);
        let secs: Vec<u64> = delays_ms.iter().map(|d| d / 1000).collect();
        assert_eq!(secs, LEGACY_SCHEDULE_SECS);
    }
}
