//! The pusher of one legacy project: a consumer of the internal group `_legacy_http`
//! like any other channel. It POSTs each delivery to the project's URL and settles it:
//! accepted on success, released on failure. The legacy schedule (10 s, 30 s, …, 16
//! pushes, then dead letter) is that group's retry policy in the backlog; the pusher
//! keeps no schedule of its own.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use iotsync_backlog::{Delivery, LeaseToken};
use iotsync_core::{AppKey, MessageId};

use super::push::{self, PushError};
use super::WebhookConfig;
use crate::delivery::hub::{ConsumerLink, LinkEnd};
use crate::delivery::Outcome;

pub struct Pusher {
    pub link: ConsumerLink,
    pub app_key: AppKey,
    pub app_secret: String,
    pub url: watch::Receiver<String>,
    pub http: reqwest::Client,
    pub cfg: Arc<WebhookConfig>,
    pub stop: watch::Receiver<bool>,
}

type Done = (LeaseToken, MessageId, u32, Result<(), PushError>);

impl Pusher {
    pub async fn run(mut self) {
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut stop = self.stop.clone();
        loop {
            let room = self.cfg.concurrency.saturating_sub(running.len());
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
                    let Ok((token, id, attempt, result)) = done else { continue };
                    self.finish(token, id, attempt, result).await;
                }
                r = next => match r {
                    Ok(deliveries) => {
                        for d in deliveries {
                            self.start(&mut running, d).await;
                        }
                    }
                    Err(LinkEnd::Closed(reason)) => {
                        tracing::info!(project = %self.link.project(), code = reason.code, "legacy pusher closed");
                        break;
                    }
                    Err(LinkEnd::Backlog(e)) => {
                        tracing::error!(project = %self.link.project(), error = %e, "legacy pusher: lease failed");
                        break;
                    }
                },
            }
        }
        // Pushes still running are abandoned: `detach` hands them back to the group.
        running.shutdown().await;
        self.link.detach().await;
    }

    async fn start(&self, running: &mut JoinSet<Done>, d: Delivery) {
        let id = d.message.envelope.message_id.clone();
        let Some(msg_code) = d.message.kind.legacy_msg_code() else {
            // The group's filter takes user data only, and every user-data kind has a
            // msgCode: this cannot be pushed, so it goes to the dead letters, loudly.
            tracing::error!(project = %self.link.project(), message_id = %id, kind = %d.message.kind, "legacy push: message has no msgCode; dead letter");
            self.settle(&d.token, Outcome::Rejected).await;
            return;
        };
        let message = String::from_utf8_lossy(&d.message.envelope.payload).into_owned();
        let fields = push::form(&self.app_key, &self.app_secret, msg_code, &message);
        let http = self.http.clone();
        let url = self.url.borrow().clone();
        let timeout = self.cfg.request_timeout;
        let (token, attempt) = (d.token, d.attempt);
        running.spawn(async move {
            let r = push::push(&http, &url, &fields, timeout).await;
            (token, id, attempt, r)
        });
    }

    async fn finish(
        &self,
        token: LeaseToken,
        id: MessageId,
        attempt: u32,
        result: Result<(), PushError>,
    ) {
        let project = self.link.project();
        match result {
            Ok(()) => {
                tracing::debug!(%project, message_id = %id, attempt, "legacy push delivered");
                self.settle(&token, Outcome::Accepted).await;
            }
            Err(e) => {
                // The group's retry policy decides when (or whether: dead letter after the
                // 16th push) it comes back.
                tracing::info!(%project, message_id = %id, attempt, error = %e, "legacy push failed");
                self.settle(&token, Outcome::Released).await;
            }
        }
    }

    async fn settle(&self, token: &LeaseToken, outcome: Outcome) {
        if let Err(e) = self.link.settle(token, outcome).await {
            tracing::warn!(project = %self.link.project(), error = %e, ?outcome, "legacy pusher: settle failed");
        }
    }
}
