//! The outbox relay: drains the registry outbox into the backlog (rows are removed only
//! once the backlog holds them durably, so a crash in between redelivers, never loses),
//! and drives the backlog's timers. It runs only after every declared consumer group is
//! in the backlog (see `delivery::groups::GroupDirectory::reconcile_all`), so nothing
//! is appended before the groups that should take it exist.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use iotsync_backlog::Backlog;
use iotsync_store::Registry;

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Outbox rows moved per round.
    pub batch: u32,
    /// How often the outbox is looked at when nobody kicked the dispatcher.
    pub poll: Duration,
    /// How often the backlog's timers run (ack time-outs, retries due, expiry).
    pub tick: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            batch: 512,
            poll: Duration::from_millis(200),
            tick: Duration::from_millis(200),
        }
    }
}

/// Moves outbox rows into the backlog. One drain at a time (the lock), so a row is never
/// appended twice by two concurrent drains of this process.
struct Drainer {
    registry: Arc<dyn Registry>,
    backlog: Arc<dyn Backlog>,
    batch: u32,
    lock: tokio::sync::Mutex<()>,
}

impl Drainer {
    async fn drain_once(&self) -> anyhow::Result<usize> {
        let _one_at_a_time = self.lock.lock().await;
        let entries = self.registry.outbox_peek(self.batch).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
        let batch = entries.into_iter().map(|e| e.message).collect();
        self.backlog.append(batch).await?;
        self.registry.outbox_remove(&seqs).await?;
        Ok(seqs.len())
    }
}

/// The cloneable side: wakes the dispatcher after a registry change, or drains at once.
#[derive(Clone)]
pub struct DispatcherHandle {
    kick: Arc<Notify>,
    drainer: Arc<Drainer>,
}

impl DispatcherHandle {
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Drains the outbox now and returns once what was there is durable in the backlog.
    /// The device gateway calls it before CONNACK, so a device's `online` status is in
    /// the backlog before anything the device publishes (per-device order).
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.drainer.drain_once().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }
}

/// The relay's task (historically "the dispatcher").
pub struct DispatcherEngine {
    drainer: Arc<Drainer>,
    backlog: Arc<dyn Backlog>,
    cfg: DispatcherConfig,
    kick: Arc<Notify>,
}

impl DispatcherEngine {
    pub fn new(
        registry: Arc<dyn Registry>,
        backlog: Arc<dyn Backlog>,
        cfg: DispatcherConfig,
    ) -> (Self, DispatcherHandle) {
        let kick = Arc::new(Notify::new());
        let drainer = Arc::new(Drainer {
            registry,
            backlog: backlog.clone(),
            batch: cfg.batch,
            lock: tokio::sync::Mutex::new(()),
        });
        (
            Self {
                drainer: drainer.clone(),
                backlog,
                cfg,
                kick: kick.clone(),
            },
            DispatcherHandle { kick, drainer },
        )
    }

    /// Moves one batch; returns how many rows it moved.
    pub async fn drain_once(&self) -> anyhow::Result<usize> {
        self.drainer.drain_once().await
    }

    /// Runs until `stop` turns true, then drains what is left (best effort).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            match self.drain_once().await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // Log the first failure and then every 50th, not every poll.
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::error!(error = %e, failures, "outbox drain failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(self.cfg.poll) => {}
                _ = tick.tick() => {
                    match self.backlog.tick().await {
                        Ok(r) if r.timed_out > 0 || r.expired > 0 => {
                            tracing::debug!(timed_out = r.timed_out, expired = r.expired, "backlog tick");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "backlog tick failed"),
                    }
                }
                r = stop.changed() => {
                    let stopping = r.is_err() || *stop.borrow();
                    if stopping {
                        let _ = self.drain_once().await;
                        return;
                    }
                }
            }
        }
    }
}
