//! The store tests' harness: one registry on SQLite (a temp file) or on the real
//! PostgreSQL (a schema of its own), on a manual clock.

#![allow(dead_code)]

pub mod pg;

use std::sync::Arc;

use iotsync_core::ManualClock;
use iotsync_store::SqlRegistry;

pub const T0: i64 = 1_700_000_000_000;

pub struct Harness {
    pub reg: SqlRegistry,
    pub clock: ManualClock,
    /// Where `reg` lives, for a second registry on the same database (another node).
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

pub async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("registry.db").display()
    );
    let clock = ManualClock::new(T0);
    let reg = SqlRegistry::open_sqlite(&dir.path().join("registry.db"), Arc::new(clock.clone()))
        .await
        .unwrap();
    Harness {
        reg,
        clock,
        url,
        _dir: Some(dir),
        pg_schema: None,
    }
}

pub async fn postgres() -> Harness {
    let (url, schema) = pg::create_schema("t").await;
    let clock = ManualClock::new(T0);
    let reg = SqlRegistry::connect(&url, Arc::new(clock.clone()))
        .await
        .unwrap();
    Harness {
        reg,
        clock,
        url,
        _dir: None,
        pg_schema: Some(schema),
    }
}

impl Harness {
    pub async fn done(self) {
        self.reg.close().await;
        if let Some(schema) = self.pg_schema {
            pg::drop_schema(&schema).await;
        }
    }
}

/// `both!(name, h, { … })`: the scenario once on SQLite and once on PostgreSQL, each in
/// a fresh registry (`h: &Harness`).
#[allow(unused_macros)]
macro_rules! both {
    ($name:ident, $h:ident, $body:block) => {
        mod $name {
            use super::*;
            async fn scenario($h: &Harness) $body
            #[tokio::test]
            async fn on_sqlite() {
                let h = sqlite().await;
                scenario(&h).await;
                h.done().await;
            }
            #[tokio::test]
            async fn on_postgres() {
                let h = postgres().await;
                scenario(&h).await;
                h.done().await;
            }
        }
    };
}
