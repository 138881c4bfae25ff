//! Reconnect delays: exponential backoff with jitter, reset after a healthy connection.

use std::time::Duration;

/// Exponential backoff with full ± jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    /// Relative jitter, 0.2 = ±20 %.
    pub jitter: f64,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2.0,
            jitter: 0.2,
            attempt: 0,
        }
    }

    /// The delay before the next attempt; each call grows it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.powi(self.attempt.min(32) as i32);
        let capped = base.min(self.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let unit: f64 = rand::random();
        let j = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped * (1.0 - j + 2.0 * j * unit)).max(0.0))
    }

    /// After a connection that worked: start again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let bounds = [(0.8, 1.2), (1.6, 2.4), (3.2, 4.8), (6.4, 9.6), (6.4, 9.6)];
        for (lo, hi) in bounds {
            let d = b.next_delay().as_secs_f64();
            assert!(d >= lo && d <= hi, "{d} not in [{lo}, {hi}]");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
