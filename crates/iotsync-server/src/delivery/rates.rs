//! Push and ack rates per (project, group), derived from the backlog's counters sampled
//! over a sliding window of about a minute.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use iotsync_backlog::ProjectStats;

/// Samples are kept at least this far apart.
const SPACING_MS: i64 = 2_000;
/// Rates are measured over at most this window.
const WINDOW_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    /// Messages appended per second to the group.
    pub push_per_sec: f64,
    /// Messages acknowledged per second by the group.
    pub ack_per_sec: f64,
}

/// (time ms, appended total, acked total).
type Sample = (i64, u64, u64);

#[derive(Default)]
pub struct RateSampler {
    samples: Mutex<HashMap<(String, String), VecDeque<Sample>>>,
}

impl RateSampler {
    /// Records the figures seen at `now` and returns each group's rates.
    pub fn observe(&self, now: i64, stats: &ProjectStats) -> HashMap<String, Rates> {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = HashMap::new();
        for g in &stats.groups {
            let q = samples
                .entry((stats.project.clone(), g.group.clone()))
                .or_default();
            if q.back().is_none_or(|(t, _, _)| now - *t >= SPACING_MS) {
                q.push_back((now, g.appended_total, g.acked_total));
            }
            while q.len() > 2 && q.front().is_some_and(|(t, _, _)| now - *t > WINDOW_MS) {
                q.pop_front();
            }
            let rates = match q.front() {
                Some(&(t0, a0, k0)) if now > t0 => {
                    let dt = (now - t0) as f64 / 1000.0;
                    Rates {
                        push_per_sec: g.appended_total.saturating_sub(a0) as f64 / dt,
                        ack_per_sec: g.acked_total.saturating_sub(k0) as f64 / dt,
                    }
                }
                _ => Rates::default(),
            };
            out.insert(g.group.clone(), rates);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotsync_backlog::GroupStats;

    fn stats(appended: u64, acked: u64) -> ProjectStats {
        ProjectStats {
            project: "p".into(),
            groups: vec![GroupStats {
                group: "g".into(),
                appended_total: appended,
                acked_total: acked,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn rates_are_deltas_over_the_window() {
        let s = RateSampler::default();
        assert_eq!(s.observe(0, &stats(0, 0))["g"], Rates::default());
        let r = s.observe(10_000, &stats(1000, 500))["g"];
        assert_eq!(r.push_per_sec, 100.0);
        assert_eq!(r.ack_per_sec, 50.0);
    }
}
