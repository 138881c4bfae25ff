//! The pusher of one legacy project: a consumer of the hub like any other channel, that
//! POSTs each user-data message to the project's URL and keeps the legacy retry schedule
//! itself (the backlog's own is exponential from 1 s).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use iotsync_backlog::{Delivery, LeaseToken};
use iotsync_core::message::DataClass;
use iotsync_core::{AppKey, SharedClock, SyncMessage};

use super::push::{self, PushError};
use super::WebhookConfig;
use crate::delivery::hub::{ConsumerLink, LinkEnd};
use crate::delivery::Outcome;

/// A message the pusher holds until it is delivered or dead-lettered.
struct Pending {
    message: SyncMessage,
    token: LeaseToken,
    /// Pushes made so far.
    pushes: u32,
    /// When the next push is due (ms, by the injected clock).
    due_ms: i64,
    /// When the last push started: the schedule counts from there, so a slow receiver
    /// does not stretch it.
    started_ms: i64,
    running: bool,
}

pub struct Pusher {
    pub link: ConsumerLink,
    pub app_key: AppKey,
    pub app_secret: String,
    pub url: watch::Receiver<String>,
    pub http: reqwest::Client,
    pub clock: SharedClock,
    pub cfg: Arc<WebhookConfig>,
    pub stop: watch::Receiver<bool>,
}

impl Pusher {
    pub async fn run(mut self) {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut running: JoinSet<(String, Result<(), PushError>)> = JoinSet::new();
        let mut stop = self.stop.clone();
        loop {
            let now = self.clock.now_ms();
            self.start_due(&mut pending, &mut running, now);
            let room = self.cfg.max_held.saturating_sub(pending.len());
            let waiting = pending.values().any(|p| !p.running);
            let link = &mut self.link;
            let next = async move {
                if room > 0 {
                    link.next(room).await
                } else {
                    Err(LinkEnd::Closed(link.closed().await))
                }
            };
            tokio::select! {
                biased;
                _ = crate::channels::http2::stopped(&mut stop) => break,
                Some(done) = running.join_next() => {
                    let Ok((id, result)) = done else { continue };
                    self.finish(&mut pending, id, result).await;
                }
                r = next => match r {
                    Ok(deliveries) => self.hold(&mut pending, deliveries).await,
                    Err(LinkEnd::Closed(reason)) => {
                        tracing::info!(project = %self.link.project(), code = reason.code, "legacy pusher closed");
                        break;
                    }
                    Err(LinkEnd::Backlog(e)) => {
                        tracing::error!(project = %self.link.project(), error = %e, "legacy pusher: lease failed");
                        break;
                    }
                },
                // Due times are on the injected clock: look again shortly.
                _ = tokio::time::sleep(self.cfg.check_every), if waiting => {}
            }
        }
        running.shutdown().await;
        self.link.detach().await;
    }

    async fn hold(&self, pending: &mut HashMap<String, Pending>, deliveries: Vec<Delivery>) {
        let now = self.clock.now_ms();
        for d in deliveries {
            let id = d.message.envelope.message_id.to_string();
            if let Some(p) = pending.get_mut(&id) {
                // Held past the ack time-out and leased again: keep our own schedule.
                p.token = d.token;
                continue;
            }
            let legacy = d.message.data_class() == DataClass::User
                && d.message.kind.legacy_msg_code().is_some();
            if !legacy {
                // Device data of a mixed project travels over HTTP/2, not here.
                self.settle(&d.token, Outcome::Accepted).await;
                continue;
            }
            pending.insert(
                id,
                Pending {
                    message: d.message,
                    token: d.token,
                    pushes: 0,
                    due_ms: now,
                    started_ms: now,
                    running: false,
                },
            );
        }
    }

    fn start_due(
        &self,
        pending: &mut HashMap<String, Pending>,
        running: &mut JoinSet<(String, Result<(), PushError>)>,
        now: i64,
    ) {
        let url = self.url.borrow().clone();
        for (id, p) in pending.iter_mut() {
            if running.len() >= self.cfg.concurrency {
                break;
            }
            if p.running || p.due_ms > now {
                continue;
            }
            p.running = true;
            p.pushes += 1;
            p.started_ms = now;
            let msg_code = p.message.kind.legacy_msg_code().unwrap_or_default();
            let message = String::from_utf8_lossy(&p.message.envelope.payload).into_owned();
            let fields = push::form(&self.app_key, &self.app_secret, msg_code, &message);
            let http = self.http.clone();
            let url = url.clone();
            let id = id.clone();
            let timeout = self.cfg.request_timeout;
            running.spawn(async move {
                let r = push::push(&http, &url, &fields, timeout).await;
                (id, r)
            });
        }
    }

    async fn finish(
        &self,
        pending: &mut HashMap<String, Pending>,
        id: String,
        result: Result<(), PushError>,
    ) {
        let Some(p) = pending.get_mut(&id) else {
            return;
        };
        p.running = false;
        let project = self.link.project();
        match result {
            Ok(()) => {
                tracing::debug!(%project, message_id = %id, pushes = p.pushes, "legacy push delivered");
                let token = p.token;
                pending.remove(&id);
                self.settle(&token, Outcome::Accepted).await;
            }
            Err(e) if p.pushes >= self.cfg.max_pushes => {
                tracing::warn!(%project, message_id = %id, pushes = p.pushes, error = %e, "legacy push failed for the last time: dead letter");
                let token = p.token;
                pending.remove(&id);
                self.settle(&token, Outcome::Rejected).await;
            }
            Err(e) => {
                let delay = self.cfg.delay_after(p.pushes);
                p.due_ms = p.started_ms + delay.as_millis() as i64;
                tracing::info!(%project, message_id = %id, pushes = p.pushes, retry_in = ?delay, error = %e, "legacy push failed");
            }
        }
    }

    async fn settle(&self, token: &LeaseToken, outcome: Outcome) {
        if let Err(e) = self.link.settle(token, outcome).await {
            tracing::warn!(project = %self.link.project(), error = %e, ?outcome, "legacy pusher: settle failed");
        }
    }
}

/// The delay before push `n + 1` after `n` failed pushes, from `schedule` (the last
/// entry repeats if the schedule is shorter than the pushes allowed).
pub fn delay_after(schedule: &[Duration], failed_pushes: u32) -> Duration {
    let i = (failed_pushes.max(1) - 1) as usize;
    schedule
        .get(i)
        .or(schedule.last())
        .copied()
        .unwrap_or(Duration::from_secs(10))
}
