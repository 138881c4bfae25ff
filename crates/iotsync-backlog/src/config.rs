//! Engine settings and the retry schedule.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with jitter for redeliveries (nack, ack timeout).
///
/// The n-th redelivery waits `min(initial * factor^(n-1), max)`, then scaled by a random
/// factor in `[1 - jitter, 1 + jitter]` (so the cap itself is jittered too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    /// Relative jitter, 0.2 = ±20 %.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            factor: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// Delay before redelivery after `attempts` deliveries (≥ 1) failed; `unit` is a
    /// uniform random number in `[0, 1)`.
    pub fn delay_ms(&self, attempts: u32, unit: f64) -> i64 {
        let n = attempts.max(1) - 1;
        let base = self.initial.as_millis() as f64 * self.factor.max(1.0).powi(n.min(64) as i32);
        let capped = base.min(self.max.as_millis() as f64);
        let j = self.jitter.clamp(0.0, 1.0);
        let scaled = capped * (1.0 - j + 2.0 * j * unit.clamp(0.0, 1.0));
        scaled.max(0.0).round() as i64
    }
}

/// Settings of the embedded engine. Defaults follow SPEC §5.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BacklogConfig {
    /// A segment file is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// An unacknowledged lease goes to the retry queue after this long.
    pub ack_timeout: Duration,
    pub retry: RetryPolicy,
    /// Retention of a project whose retention was never set (`set_retention`).
    pub default_retention: Duration,
    /// Largest payload accepted by `append`.
    pub max_message_bytes: usize,
    /// Appends wait (backpressure) while this many bytes are queued for the writer.
    pub max_pending_bytes: usize,
    /// At most this many stacked messages are looked at by one `lease` call while
    /// skipping messages held back by per-key order.
    pub max_scan_per_lease: usize,
    /// At most this many messages of a group wait parked behind their ordering key (8 B
    /// each); past it the group's scan stops at the next message of a held key until
    /// some are released, so one chatty device cannot make memory grow with its backlog.
    pub max_parked_per_group: usize,
    /// The oldest segment is compacted (its live messages copied to the head) when less
    /// than this fraction of its bytes is still live.
    pub compact_below_live_ratio: f64,
    /// Seed of the jitter generator (tests fix it; `None` derives it from the clock).
    pub jitter_seed: Option<u64>,
    /// Memory for the index's per-message slots (24 B each); beyond it, the coldest
    /// chunks of slots go to the spill file `index.spill` in the backlog directory, so
    /// memory does not grow with the backlog.
    pub index_memory_bytes: usize,
    /// Settlement records (ack, release, reject) alone do not wake the writer at once:
    /// they are written with the next commit, or after this long, or once
    /// `settle_flush_bytes` of them wait, whichever comes first. A crash loses at most
    /// this interval's settlements, whose messages are delivered again (at-least-once).
    pub settle_flush_interval: Duration,
    /// Settlement records waiting past this many bytes are written at once.
    pub settle_flush_bytes: usize,
    /// Whether a new project keeps acknowledged messages stored until retention, so a
    /// group can be sought back to a time (`Backlog::seek`); per project with
    /// `Backlog::set_keep_acknowledged`. The server turns it on; off, an acknowledged
    /// message's space is freed as soon as no group owes it.
    pub keep_acknowledged: bool,
    /// A message past retention stays this much longer as a trace: its lookup answers
    /// "expired" (with its envelope) instead of "not found".
    pub expired_trace: Duration,
}

impl Default for BacklogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            ack_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            default_retention: Duration::from_secs(24 * 3600),
            max_message_bytes: 1024 * 1024,
            max_pending_bytes: 16 * 1024 * 1024,
            max_scan_per_lease: 4096,
            max_parked_per_group: 65_536,
            compact_below_live_ratio: 0.5,
            jitter_seed: None,
            index_memory_bytes: 32 * 1024 * 1024,
            settle_flush_interval: Duration::from_millis(10),
            settle_flush_bytes: 256 * 1024,
            keep_acknowledged: false,
            expired_trace: Duration::from_secs(3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_caps_at_five_minutes() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 0.5), 1000);
        assert_eq!(p.delay_ms(2, 0.5), 2000);
        assert_eq!(p.delay_ms(4, 0.5), 8000);
        assert_eq!(p.delay_ms(30, 0.5), 300_000);
        assert_eq!(p.delay_ms(u32::MAX, 0.5), 300_000);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 0.0), 800);
        assert_eq!(p.delay_ms(1, 0.999_999), 1200);
        assert_eq!(p.delay_ms(30, 0.0), 240_000);
    }
}
