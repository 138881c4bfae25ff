//! State shared between nodes on one registry (issue 13): console sessions, failed
//! sign-in counters and the change feed, on SQLite and on the real PostgreSQL (each test
//! in its own schema; a missing server fails, never skips).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::Arc;
use std::time::Duration;

use iotsync_core::ManualClock;
use iotsync_store::*;

#[macro_use]
mod common;

use common::{postgres, sqlite, Harness, T0};

fn session(hash: &str, expires_at: i64) -> ConsoleSession {
    ConsoleSession {
        token_hash: hash.into(),
        operator_fp: "fp".into(),
        csrf_token: format!("csrf-{hash}"),
        created_at: T0,
        expires_at,
    }
}

/// A second registry on the same database: another node.
async fn other_node(h: &Harness) -> SqlRegistry {
    SqlRegistry::connect(&h.url, Arc::new(ManualClock::new(T0)))
        .await
        .unwrap()
}

both!(
    a_console_session_is_seen_by_every_node_until_it_ends_or_expires,
    h,
    {
        let node2 = other_node(h).await;
        h.reg
            .create_console_session(&session("a", T0 + 1000), T0, 10)
            .await
            .unwrap();
        let got = node2.console_session("a", T0).await.unwrap().unwrap();
        assert_eq!(got, session("a", T0 + 1000));
        assert_eq!(
            node2.console_session("a", T0 + 1000).await.unwrap(),
            None,
            "expired"
        );
        assert_eq!(node2.console_session("b", T0).await.unwrap(), None);
        assert!(node2.delete_console_session("a").await.unwrap());
        assert_eq!(
            h.reg.console_session("a", T0).await.unwrap(),
            None,
            "signed out elsewhere"
        );
        assert!(!h.reg.delete_console_session("a").await.unwrap());
        node2.close().await;
    }
);

both!(
    live_console_sessions_are_bounded_dropping_the_soonest_expiring,
    h,
    {
        for (i, exp) in [(1, 5000), (2, 3000), (3, 4000)] {
            h.reg
                .create_console_session(&session(&format!("s{i}"), T0 + exp), T0, 3)
                .await
                .unwrap();
        }
        h.reg
            .create_console_session(&session("s4", T0 + 6000), T0, 3)
            .await
            .unwrap();
        assert_eq!(h.reg.console_session("s2", T0).await.unwrap(), None);
        for k in ["s1", "s3", "s4"] {
            assert!(h.reg.console_session(k, T0).await.unwrap().is_some(), "{k}");
        }
        // Expired ones are purged before counting.
        h.reg
            .create_console_session(&session("s5", T0 + 9000), T0 + 5500, 3)
            .await
            .unwrap();
        assert!(h
            .reg
            .console_session("s4", T0 + 5500)
            .await
            .unwrap()
            .is_some());
        assert!(h
            .reg
            .console_session("s5", T0 + 5500)
            .await
            .unwrap()
            .is_some());
    }
);

fn plus_one(c: Option<AuthFailures>) -> AuthFailures {
    let n = c.map_or(0, |c| c.failures) + 1;
    AuthFailures {
        failures: n,
        blocked_until: T0 + i64::from(n),
        forget_at: T0 + 100,
    }
}

both!(failure_counters_add_up_over_nodes_and_clear, h, {
    let node2 = other_node(h).await;
    assert!(h.reg.auth_failures(&["k"]).await.unwrap().is_empty());
    h.reg.note_auth_failure("k", T0, &plus_one).await.unwrap();
    let c = node2.note_auth_failure("k", T0, &plus_one).await.unwrap();
    assert_eq!(c.failures, 2);
    let got = h.reg.auth_failures(&["k", "other"]).await.unwrap();
    assert_eq!(got, vec![("k".to_owned(), c)]);
    node2.clear_auth_failures("k").await.unwrap();
    assert!(h.reg.auth_failures(&["k"]).await.unwrap().is_empty());
    node2.close().await;
});

both!(concurrent_failures_on_two_nodes_are_never_lost, h, {
    let node2 = Arc::new(other_node(h).await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let n2 = node2.clone();
        let url = h.url.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                n2.note_auth_failure("race", T0, &plus_one).await.unwrap();
            } else {
                let r = SqlRegistry::connect(&url, Arc::new(ManualClock::new(T0)))
                    .await
                    .unwrap();
                r.note_auth_failure("race", T0, &plus_one).await.unwrap();
                r.close().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = h.reg.auth_failures(&["race"]).await.unwrap();
    assert_eq!(got[0].1.failures, 20);
    node2.close().await;
});

#[tokio::test]
async fn on_postgres_a_change_committed_by_one_node_reaches_the_others() {
    let h = postgres().await;
    let node2 = other_node(&h).await;
    let mut feed = node2
        .subscribe_changes()
        .expect("PostgreSQL has a change feed");
    let p = h.reg.create_project("Home", "test").await.unwrap();
    let pid = p.project.project_id;
    let before = node2.change_epoch();
    h.reg.rotate_secret(&pid, "test").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .expect("a change within 10 s")
        .unwrap();
    assert_eq!(
        got,
        RegistryChange {
            project: Some(pid.clone()),
            kind: ChangeKind::Secret
        }
    );
    assert!(
        node2.change_epoch() > before,
        "the other node's caches reload"
    );
    h.reg
        .apply_sync(
            &pid,
            &iotsync_core::sync_rules::SyncCommand::Enable {
                method: "amqp".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.kind, ChangeKind::Sync);
    node2.close().await;
    h.done().await;
}

#[tokio::test]
async fn on_sqlite_there_is_no_change_feed() {
    let h = sqlite().await;
    assert!(h.reg.subscribe_changes().is_none());
    h.done().await;
}
