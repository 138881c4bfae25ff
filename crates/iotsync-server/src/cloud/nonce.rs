//! Single-use `X-Ca-Nonce` values, per appKey, in memory. A nonce is remembered until
//! its request's timestamp leaves the freshness window: after that the timestamp check
//! refuses a replay on its own. Per node (see ADR 0005).

use std::collections::HashMap;
use std::sync::Mutex;

pub struct NonceCache {
    window_ms: i64,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// (appKey, nonce) → forget after (ms).
    until: HashMap<(String, String), i64>,
    next_prune_ms: i64,
}

impl NonceCache {
    pub fn new(window_ms: i64) -> Self {
        Self {
            window_ms,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// True the first time `(app_key, nonce)` is seen within the window.
    pub fn use_once(&self, app_key: &str, nonce: &str, timestamp_ms: i64, now_ms: i64) -> bool {
        let mut s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms >= s.next_prune_ms {
            s.until.retain(|_, until| *until > now_ms);
            s.next_prune_ms = now_ms + 10_000;
        }
        let key = (app_key.to_owned(), nonce.to_owned());
        if s.until.get(&key).is_some_and(|until| *until > now_ms) {
            return false;
        }
        // Remembered as long as a request with this timestamp could pass the window.
        let until = timestamp_ms.max(now_ms) + self.window_ms;
        s.until.insert(key, until);
        true
    }

    pub fn len(&self) -> usize {
        self.seen.lock().map(|s| s.until.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_used_once_per_app_key_and_forgotten_after_the_window() {
        let c = NonceCache::new(1000);
        assert!(c.use_once("k1", "n", 0, 0));
        assert!(!c.use_once("k1", "n", 0, 10));
        assert!(
            c.use_once("k2", "n", 0, 10),
            "another appKey has its own nonces"
        );
        assert!(c.use_once("k1", "m", 0, 10));
        // Past the window the entry is pruned (a replay then fails the freshness check).
        assert!(c.use_once("k1", "x", 20_000, 20_000));
        assert_eq!(c.len(), 1);
    }
}
