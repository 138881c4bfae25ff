//! Consumer-group alerts (issue 14). Every group with thresholds in the registry
//! (`PUT …/consumer-groups/{name}/alerts`) is checked every `alerts.evaluate_every`
//! against the backlog's figures, read the way `GET …/sync/stats` reads them: a group is
//! alerting while `stacked > stackedMax`, `oldestStackedAgeMs > oldestAgeMaxMs` or
//! `deadLetters > deadLettersMax` (any threshold that is set). The state shows in
//! `sync/stats`, the console and `/metrics`; an optional operator webhook gets a signed
//! POST when a group starts alerting and when it recovers (docs/alerts.md).
//!
//! [`AlertEngine`] is the periodic task; [`AlertHandle`] its cloneable side (the state
//! for the API and `/metrics`, a kick after thresholds change). [`AlertWebhook`] sends
//! the events from a bounded queue, one at a time and in order, with retries: a slow or
//! dead receiver never holds up the evaluation, and a full queue drops (and logs) events
//! rather than growing.
//!
//! The state (since when each group alerts) is in this process's memory: that is right
//! for a single node, which is what evaluates. After a restart a group still over its
//! thresholds starts alerting again with a new `since` (and a new "alerting" event). With
//! several nodes on one PostgreSQL registry each would evaluate and send on its own; a
//! shared state (a lease on the evaluation) is for when that is built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch, Notify};

use iotsync_backlog::{Backlog, BacklogError, GroupStats};
use iotsync_core::{ProjectId, SharedClock};
use iotsync_store::{AlertThresholds, GroupAlerts, Registry};

/// Events waiting for the webhook; beyond it new ones are dropped (and logged).
const WEBHOOK_QUEUE: usize = 256;

/// The figures a group is judged on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertFigures {
    pub stacked: u64,
    pub oldest_age_ms: Option<i64>,
    pub dead_letters: u64,
}

impl From<&GroupStats> for AlertFigures {
    fn from(g: &GroupStats) -> Self {
        Self {
            stacked: g.stacked,
            oldest_age_ms: g.oldest_stacked_age_ms,
            dead_letters: g.dead_letters,
        }
    }
}

/// The thresholds `f` exceeds, by their API names (none: not alerting).
pub fn exceeded(t: &AlertThresholds, f: &AlertFigures) -> Vec<&'static str> {
    let age = f.oldest_age_ms.and_then(|a| u64::try_from(a).ok());
    [
        ("stackedMax", t.stacked_max.is_some_and(|m| f.stacked > m)),
        (
            "oldestAgeMaxMs",
            t.oldest_age_max_ms.zip(age).is_some_and(|(m, age)| age > m),
        ),
        (
            "deadLettersMax",
            t.dead_letters_max.is_some_and(|m| f.dead_letters > m),
        ),
    ]
    .into_iter()
    .filter_map(|(name, over)| over.then_some(name))
    .collect()
}

/// "alerting" or "recovered".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    Alerting,
    Recovered,
}

/// What the webhook receives (docs/alerts.md), and what the log says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEvent {
    pub event: AlertEventKind,
    pub project_id: String,
    pub group: String,
    /// When the group started alerting (for "recovered": the alert that ends).
    pub since: i64,
    /// When this change was seen.
    pub at: i64,
    pub stacked: u64,
    pub oldest_age_ms: Option<i64>,
    pub dead_letters: u64,
    pub thresholds: AlertThresholds,
    /// The thresholds exceeded at `at` (empty for "recovered").
    pub exceeded: Vec<&'static str>,
}

/// One group's alert state.
#[derive(Debug, Clone, Default)]
struct GroupState {
    /// Alerting since (ms), or not alerting.
    since: Option<i64>,
    thresholds: AlertThresholds,
    last: AlertFigures,
}

impl GroupState {
    /// Takes a new observation; the change it makes, if any.
    fn observe(
        &mut self,
        thresholds: AlertThresholds,
        figures: AlertFigures,
        now: i64,
    ) -> Option<(AlertEventKind, i64, Vec<&'static str>)> {
        self.thresholds = thresholds;
        self.last = figures;
        let over = exceeded(&thresholds, &figures);
        match (self.since, over.is_empty()) {
            (None, false) => {
                self.since = Some(now);
                Some((AlertEventKind::Alerting, now, over))
            }
            (Some(since), true) => {
                self.since = None;
                Some((AlertEventKind::Recovered, since, over))
            }
            _ => None,
        }
    }
}

type GroupKey = (ProjectId, String);

#[derive(Default)]
struct Shared {
    states: Mutex<HashMap<GroupKey, GroupState>>,
    kick: Notify,
    /// Webhook events delivered (a 2xx answer).
    webhook_sent: AtomicU64,
    /// Webhook events given up on after every retry, or dropped on a full queue.
    webhook_failed: AtomicU64,
}

/// The cloneable side of [`AlertEngine`].
#[derive(Clone, Default)]
pub struct AlertHandle {
    shared: Arc<Shared>,
}

impl AlertHandle {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, GroupState>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.shared.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Since when the group is alerting (ms), or `None`.
    pub fn alerting_since(&self, project: &ProjectId, group: &str) -> Option<i64> {
        self.states()
            .get(&(project.clone(), group.to_owned()))
            .and_then(|s| s.since)
    }

    /// Every alerting group: (project, group) → since.
    pub fn alerting(&self) -> HashMap<GroupKey, i64> {
        self.states()
            .iter()
            .filter_map(|(k, s)| s.since.map(|since| (k.clone(), since)))
            .collect()
    }

    /// Evaluates at once (thresholds changed) instead of at the next period.
    pub fn kick(&self) {
        self.shared.kick.notify_one();
    }

    /// Webhook events delivered, and given up on (after every retry, or a full queue).
    pub fn webhook_counts(&self) -> (u64, u64) {
        (
            self.shared.webhook_sent.load(Ordering::Relaxed),
            self.shared.webhook_failed.load(Ordering::Relaxed),
        )
    }
}

/// The periodic evaluation.
pub struct AlertEngine {
    registry: Arc<dyn Registry>,
    backlog: Arc<dyn Backlog>,
    clock: SharedClock,
    every: Duration,
    handle: AlertHandle,
    webhook: Option<mpsc::Sender<AlertEvent>>,
}

impl AlertEngine {
    /// The engine, its handle, and the webhook's sender task if a URL is configured.
    pub fn new(
        registry: Arc<dyn Registry>,
        backlog: Arc<dyn Backlog>,
        clock: SharedClock,
        cfg: &crate::config::AlertsConfig,
    ) -> Result<(Self, AlertHandle, Option<AlertWebhook>), reqwest::Error> {
        let handle = AlertHandle::default();
        let (webhook_tx, webhook) = if cfg.webhook_url.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(WEBHOOK_QUEUE);
            let w = AlertWebhook::new(
                cfg.webhook_url.clone(),
                cfg.webhook_secret.clone(),
                WebhookRetry::default(),
                rx,
                clock.clone(),
                handle.clone(),
            )?;
            (Some(tx), Some(w))
        };
        Ok((
            Self {
                registry,
                backlog,
                clock,
                every: cfg.evaluate_every.0,
                handle: handle.clone(),
                webhook: webhook_tx,
            },
            handle,
            webhook,
        ))
    }

    /// Evaluates every period (or when kicked) until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let shared = self.handle.shared.clone();
        let mut failures = 0u32;
        loop {
            match self.round().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // The first failure and then every 60th, not every period.
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::warn!(error = %e, failures, "group alert evaluation failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(self.every) => {}
                _ = shared.kick.notified() => {}
            }
        }
    }

    /// One evaluation of every group with thresholds.
    async fn round(&mut self) -> Result<(), iotsync_store::StoreError> {
        let mut by_project: BTreeMap<ProjectId, Vec<GroupAlerts>> = BTreeMap::new();
        for a in self.registry.all_group_alerts().await? {
            by_project.entry(a.project_id.clone()).or_default().push(a);
        }
        let mut seen: HashSet<GroupKey> = HashSet::new();
        let mut events = Vec::new();
        for (pid, alerts) in by_project {
            let stats = match self.backlog.stats(&pid).await {
                Ok(s) => s.groups,
                // Sync never enabled: nothing is stacked anywhere.
                Err(BacklogError::UnknownProject { .. }) => Vec::new(),
                Err(e) => {
                    // The project's state stays as it was until its figures can be read.
                    tracing::warn!(project = %pid, error = %e, "group alerts: reading the backlog figures failed");
                    seen.extend(alerts.iter().map(|a| (pid.clone(), a.group.to_string())));
                    continue;
                }
            };
            let now = self.clock.now_ms();
            let mut states = self.handle.states();
            for a in alerts {
                let key = (pid.clone(), a.group.to_string());
                // A group the backlog does not have (yet) owes nothing.
                let figures = stats
                    .iter()
                    .find(|g| g.group == key.1)
                    .map(AlertFigures::from)
                    .unwrap_or_default();
                let state = states.entry(key.clone()).or_default();
                if let Some((kind, since, over)) = state.observe(a.thresholds, figures, now) {
                    events.push(event(&key, kind, since, now, state, over));
                }
                seen.insert(key);
            }
        }
        // Groups whose thresholds were removed (or that were deleted): an open alert ends.
        let now = self.clock.now_ms();
        {
            let mut states = self.handle.states();
            let gone: Vec<GroupKey> = states
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(state) = states.remove(&key) {
                    if let Some(since) = state.since {
                        events.push(event(
                            &key,
                            AlertEventKind::Recovered,
                            since,
                            now,
                            &state,
                            Vec::new(),
                        ));
                    }
                }
            }
        }
        for e in events {
            self.emit(e);
        }
        Ok(())
    }

    fn emit(&self, e: AlertEvent) {
        match e.event {
            AlertEventKind::Alerting => tracing::warn!(
                project = %e.project_id, group = %e.group, stacked = e.stacked,
                oldest_age_ms = ?e.oldest_age_ms, dead_letters = e.dead_letters,
                exceeded = ?e.exceeded, "consumer group alerting"
            ),
            AlertEventKind::Recovered => tracing::info!(
                project = %e.project_id, group = %e.group, since = e.since,
                "consumer group recovered"
            ),
        }
        let Some(tx) = &self.webhook else { return };
        if let Err(mpsc::error::TrySendError::Full(e)) = tx.try_send(e) {
            self.handle
                .shared
                .webhook_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(project = %e.project_id, group = %e.group, event = ?e.event, "alert webhook queue full: event dropped");
        }
    }
}

fn event(
    key: &GroupKey,
    kind: AlertEventKind,
    since: i64,
    at: i64,
    state: &GroupState,
    exceeded: Vec<&'static str>,
) -> AlertEvent {
    AlertEvent {
        event: kind,
        project_id: key.0.to_string(),
        group: key.1.clone(),
        since,
        at,
        stacked: state.last.stacked,
        oldest_age_ms: state.last.oldest_age_ms,
        dead_letters: state.last.dead_letters,
        thresholds: state.thresholds,
        exceeded,
    }
}

/// How a failed webhook POST is retried: `attempts` in all, waiting `initial`, then
/// twice as long each time, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct WebhookRetry {
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    /// A POST without an answer within this long failed.
    pub timeout: Duration,
}

impl Default for WebhookRetry {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

impl WebhookRetry {
    /// The wait after failed attempt `n` (1-based).
    fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Sends alert events to the operator's URL, signed (`iotsync_core::sign::alert`).
pub struct AlertWebhook {
    http: reqwest::Client,
    url: String,
    secret: String,
    retry: WebhookRetry,
    rx: mpsc::Receiver<AlertEvent>,
    clock: SharedClock,
    handle: AlertHandle,
}

impl AlertWebhook {
    fn new(
        url: String,
        secret: String,
        retry: WebhookRetry,
        rx: mpsc::Receiver<AlertEvent>,
        clock: SharedClock,
        handle: AlertHandle,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(retry.timeout)
            .timeout(retry.timeout)
            .user_agent(concat!("iotsync-alerts/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url,
            secret,
            retry,
            rx,
            clock,
            handle,
        })
    }

    /// Sends events in order until `stop` turns true (what is still queued then is
    /// dropped, and logged).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let e = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                e = self.rx.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = self.deliver(&e) => {}
            }
        }
        self.rx.close();
        let mut left = 0;
        while self.rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            tracing::warn!(
                events = left,
                "alert webhook: events not sent before shutdown"
            );
        }
    }

    async fn deliver(&self, e: &AlertEvent) {
        let body = match serde_json::to_vec(e) {
            Ok(b) => b,
            Err(err) => {
                tracing::error!(error = %err, "alert webhook: encoding the event failed");
                return;
            }
        };
        let signature = iotsync_core::sign::alert::sign(&self.secret, &body);
        for attempt in 1..=self.retry.attempts {
            let sent = self
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(iotsync_core::sign::alert::SIGNATURE_HEADER, &signature)
                .header(
                    iotsync_core::sign::alert::TIMESTAMP_HEADER,
                    self.clock.now_ms().to_string(),
                )
                .body(body.clone())
                .send()
                .await;
            let failure = match sent {
                Ok(r) if r.status().is_success() => {
                    self.handle
                        .shared
                        .webhook_sent
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(project = %e.project_id, group = %e.group, event = ?e.event, attempt, "alert webhook delivered");
                    return;
                }
                Ok(r) => format!("HTTP {}", r.status()),
                // The URL may carry a token: the error's text without it.
                Err(err) => err.without_url().to_string(),
            };
            if attempt == self.retry.attempts {
                self.handle
                    .shared
                    .webhook_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(project = %e.project_id, group = %e.group, event = ?e.event, attempts = attempt, error = %failure, "alert webhook failed; event given up");
                return;
            }
            let wait = self.retry.delay(attempt);
            tracing::warn!(project = %e.project_id, group = %e.group, event = ?e.event, attempt, error = %failure, retry_in_ms = wait.as_millis() as u64, "alert webhook failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(stacked: u64, age: Option<i64>, dead: u64) -> AlertFigures {
        AlertFigures {
            stacked,
            oldest_age_ms: age,
            dead_letters: dead,
        }
    }

    #[test]
    fn each_threshold_is_exceeded_only_strictly_above_it() {
        let t = AlertThresholds {
            stacked_max: Some(10),
            oldest_age_max_ms: Some(60_000),
            dead_letters_max: Some(0),
        };
        assert!(exceeded(&t, &figures(10, Some(60_000), 0)).is_empty());
        assert_eq!(exceeded(&t, &figures(11, None, 0)), vec!["stackedMax"]);
        assert_eq!(
            exceeded(&t, &figures(0, Some(60_001), 0)),
            vec!["oldestAgeMaxMs"]
        );
        assert_eq!(exceeded(&t, &figures(0, None, 1)), vec!["deadLettersMax"]);
        assert_eq!(exceeded(&t, &figures(11, Some(70_000), 2)).len(), 3);
        // Nothing set: never alerting, whatever the figures.
        assert!(exceeded(
            &AlertThresholds::default(),
            &figures(u64::MAX, Some(i64::MAX), 9)
        )
        .is_empty());
        // No stacked message has no age (and a clock step back no negative one).
        let age = AlertThresholds {
            oldest_age_max_ms: Some(0),
            ..Default::default()
        };
        assert!(exceeded(&age, &figures(0, None, 0)).is_empty());
        assert!(exceeded(&age, &figures(1, Some(-5), 0)).is_empty());
    }

    #[test]
    fn a_group_alerts_once_from_when_it_went_over_until_it_recovers() {
        let t = AlertThresholds {
            stacked_max: Some(2),
            ..Default::default()
        };
        let mut s = GroupState::default();
        assert_eq!(s.observe(t, figures(2, None, 0), 100), None);
        let (kind, since, over) = s.observe(t, figures(3, None, 0), 200).unwrap();
        assert_eq!(
            (kind, since, over),
            (AlertEventKind::Alerting, 200, vec!["stackedMax"])
        );
        // Still over: no new event, the same since.
        assert_eq!(s.observe(t, figures(9, None, 0), 300), None);
        assert_eq!(s.since, Some(200));
        let (kind, since, _) = s.observe(t, figures(0, None, 0), 400).unwrap();
        assert_eq!((kind, since), (AlertEventKind::Recovered, 200));
        assert_eq!(s.since, None);
        // Raising the threshold above the figures is a recovery too.
        s.observe(t, figures(5, None, 0), 500).unwrap();
        let raised = AlertThresholds {
            stacked_max: Some(10),
            ..Default::default()
        };
        let (kind, since, _) = s.observe(raised, figures(5, None, 0), 600).unwrap();
        assert_eq!((kind, since), (AlertEventKind::Recovered, 500));
    }

    #[test]
    fn webhook_retries_double_up_to_the_cap() {
        let r = WebhookRetry {
            attempts: 6,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        };
        let waits: Vec<u64> = (1..=5).map(|n| r.delay(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
    }

    #[test]
    fn the_event_is_the_documented_json() {
        let e = AlertEvent {
            event: AlertEventKind::Alerting,
            project_id: "p1".into(),
            group: "billing".into(),
            since: 10,
            at: 10,
            stacked: 3,
            oldest_age_ms: None,
            dead_letters: 0,
            thresholds: AlertThresholds {
                stacked_max: Some(2),
                ..Default::default()
            },
            exceeded: vec!["stackedMax"],
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "event": "alerting", "projectId": "p1", "group": "billing", "since": 10,
                "at": 10, "stacked": 3, "oldestAgeMs": null, "deadLetters": 0,
                "thresholds": {"stackedMax": 2, "oldestAgeMaxMs": null, "deadLettersMax": null},
                "exceeded": ["stackedMax"],
            })
        );
    }
}
