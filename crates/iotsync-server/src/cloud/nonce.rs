//! Single-use `X-Ca-Nonce` values, per project, for as long as a request carrying them
//! could pass the freshness window; after that the timestamp check refuses a replay on
//! its own.
//!
//! The registry is the source of truth (`cloud_nonces`, insert-if-absent in one
//! statement), so a restart or another node sharing the registry never accepts a nonce
//! twice. In front of it a bounded in-memory cache refuses a replay this node has seen
//! without a database round trip; only a nonce this node has not seen costs a write. The
//! registry's expired rows are purged from here every minute (driven by calls: no
//! traffic, nothing to purge).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use iotsync_core::ProjectId;
use iotsync_store::{Registry, StoreResult};

/// Most nonces the front cache holds; beyond it the registry alone answers.
const MAX_CACHED: usize = 100_000;
/// How often the cache prunes itself and the registry's expired rows are purged.
const PURGE_EVERY_MS: i64 = 60_000;

pub struct NonceCache {
    registry: Arc<dyn Registry>,
    window_ms: i64,
    seen: Mutex<Seen>,
    next_purge_ms: AtomicI64,
}

#[derive(Default)]
struct Seen {
    /// (project, nonce) → used until (ms).
    until: HashMap<(ProjectId, String), i64>,
    next_prune_ms: i64,
}

impl NonceCache {
    pub fn new(registry: Arc<dyn Registry>, window_ms: i64) -> Self {
        Self {
            registry,
            window_ms,
            seen: Mutex::new(Seen::default()),
            next_purge_ms: AtomicI64::new(0),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Plain values inside: a map left by a panicking holder is still usable.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True the first time `(project, nonce)` is used within the window, on any node
    /// sharing the registry. A registry error is an error (the call is refused).
    pub async fn use_once(
        &self,
        project: &ProjectId,
        nonce: &str,
        timestamp_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool> {
        // Remembered as long as a request with this timestamp could pass the window.
        let until = timestamp_ms.max(now_ms).saturating_add(self.window_ms);
        let key = (project.clone(), nonce.to_owned());
        {
            let mut s = self.seen();
            if now_ms >= s.next_prune_ms {
                s.until.retain(|_, u| *u > now_ms);
                s.next_prune_ms = now_ms + PURGE_EVERY_MS;
            }
            if s.until.get(&key).is_some_and(|u| *u > now_ms) {
                return Ok(false);
            }
        }
        self.purge_if_due(now_ms).await;
        let fresh = self
            .registry
            .use_nonce(project, nonce, now_ms, until)
            .await?;
        let mut s = self.seen();
        if s.until.len() < MAX_CACHED {
            s.until.insert(key, until);
        }
        Ok(fresh)
    }

    async fn purge_if_due(&self, now_ms: i64) {
        let due = self.next_purge_ms.load(Ordering::Relaxed);
        if now_ms < due
            || self
                .next_purge_ms
                .compare_exchange(
                    due,
                    now_ms + PURGE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        match self.registry.purge_nonces(now_ms).await {
            Ok(n) if n > 0 => tracing::debug!(purged = n, "expired cloud API nonces purged"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging expired cloud API nonces failed"),
        }
    }

    /// Nonces in the front cache.
    pub fn len(&self) -> usize {
        self.seen().until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iotsync_core::ManualClock;
    use iotsync_store::SqlRegistry;

    async fn registry(dir: &std::path::Path) -> (Arc<SqlRegistry>, ProjectId, ProjectId) {
        let reg = SqlRegistry::open_sqlite(
            &dir.join("registry.db"),
            Arc::new(ManualClock::new(1_700_000_000_000)),
        )
        .await
        .unwrap();
        let a = reg.create_project("A", "test").await.unwrap();
        let b = reg.create_project("B", "test").await.unwrap();
        (Arc::new(reg), a.project.project_id, b.project.project_id)
    }

    #[tokio::test]
    async fn a_nonce_is_used_once_per_project_and_the_registry_remembers_it() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, a, b) = registry(dir.path()).await;
        let c = NonceCache::new(reg.clone(), 1000);
        assert!(c.use_once(&a, "n", 0, 0).await.unwrap());
        assert!(!c.use_once(&a, "n", 0, 10).await.unwrap());
        assert!(
            c.use_once(&b, "n", 0, 10).await.unwrap(),
            "another project has its own nonces"
        );
        assert!(c.use_once(&a, "m", 0, 10).await.unwrap());
        // A second cache on the same registry (a restart, another node) knows them.
        let fresh = NonceCache::new(reg.clone(), 1000);
        assert!(!fresh.use_once(&a, "n", 0, 20).await.unwrap());
        assert!(!fresh.use_once(&b, "n", 0, 20).await.unwrap());
        // Past the window the front cache prunes itself and the registry is purged.
        assert!(c.use_once(&a, "x", 70_000, 70_000).await.unwrap());
        assert_eq!(c.len(), 1);
        assert_eq!(reg.purge_nonces(70_000).await.unwrap(), 0, "already purged");
        reg.close().await;
    }
}
