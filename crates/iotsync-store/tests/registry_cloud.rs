//! Cloud API storage (SPEC §9): cloud tokens and the property timeline, on SQLite and on
//! the real PostgreSQL (each test in its own schema; a missing server fails, never skips).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::Arc;

use iotsync_core::{ManualClock, ProjectId};
use iotsync_store::*;
use serde_json::json;

#[macro_use]
mod common;

use common::{postgres, sqlite, Harness, T0};

impl Harness {
    async fn device(&self) -> (ProjectId, Device) {
        let p = self.reg.create_project("Home", "test").await.unwrap();
        let pid = p.project.project_id;
        let pr = self
            .reg
            .create_product(
                &pid,
                &NewProduct {
                    name: "Lamp".into(),
                    device_type: "Light".into(),
                    product_key: None,
                },
            )
            .await
            .unwrap();
        let d = self
            .reg
            .create_device(&pid, &pr.product_key, &"lamp01".parse().unwrap())
            .await
            .unwrap();
        (pid, d.device)
    }
}

both!(a_new_cloud_token_replaces_the_previous_one, h, {
    let (pid, _) = h.device().await;
    assert_eq!(h.reg.cloud_token(&pid).await.unwrap(), None);
    h.reg
        .put_cloud_token(&pid, "hash-1", T0, T0 + 10)
        .await
        .unwrap();
    h.reg
        .put_cloud_token(&pid, "hash-2", T0 + 1, T0 + 20)
        .await
        .unwrap();
    let t = h.reg.cloud_token(&pid).await.unwrap().unwrap();
    assert_eq!(
        t,
        CloudToken {
            token_hash: "hash-2".into(),
            issued_at: T0 + 1,
            expires_at: T0 + 20
        }
    );
    let other: ProjectId = "nosuchproject".parse().unwrap();
    assert!(matches!(
        h.reg.put_cloud_token(&other, "h", T0, T0).await,
        Err(StoreError::NotFound { .. })
    ));
});

both!(reported_values_form_a_bounded_timeline, h, {
    let (pid, d) = h.device().await;
    for i in 0..5 {
        h.reg
            .record_properties(
                &pid,
                &d.iot_id,
                &[
                    PropertyValue {
                        identifier: "Brightness".into(),
                        value: json!(i * 10),
                        time: T0 + i,
                    },
                    PropertyValue {
                        identifier: "Switch".into(),
                        value: json!(i % 2),
                        time: T0 + i,
                    },
                ],
            )
            .await
            .unwrap();
    }
    let q = TimelineQuery {
        identifier: "Brightness".into(),
        start: T0 + 1,
        end: T0 + 3,
        limit: 10,
        newest_first: true,
    };
    let got = h.reg.property_timeline(&pid, &d.iot_id, &q).await.unwrap();
    let values: Vec<_> = got.iter().map(|v| (v.value.clone(), v.time)).collect();
    assert_eq!(
        values,
        vec![
            (json!(30), T0 + 3),
            (json!(20), T0 + 2),
            (json!(10), T0 + 1)
        ]
    );
    let asc = TimelineQuery {
        newest_first: false,
        limit: 2,
        start: 0,
        end: i64::MAX,
        ..q
    };
    let got = h
        .reg
        .property_timeline(&pid, &d.iot_id, &asc)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|v| v.time).collect::<Vec<_>>(),
        vec![T0, T0 + 1]
    );
    // Last values are still kept as before.
    let last = h.reg.device_properties(&pid, &d.iot_id).await.unwrap();
    assert_eq!(last.len(), 2);
    assert_eq!(last[0].value, json!(40));
    // Another project cannot read it.
    let other = h.reg.create_project("Other", "test").await.unwrap();
    assert!(matches!(
        h.reg
            .property_timeline(&other.project.project_id, &d.iot_id, &asc)
            .await,
        Err(StoreError::NotFound { .. })
    ));
});

both!(the_timeline_keeps_only_the_newest_values, h, {
    let (pid, d) = h.device().await;
    let n = PROPERTY_HISTORY_MAX + 5;
    let items: Vec<PropertyValue> = (0..n)
        .map(|i| PropertyValue {
            identifier: "T".into(),
            value: json!(i),
            time: T0 + i,
        })
        .collect();
    // One report per value, as devices send them.
    for chunk in items.chunks(1) {
        h.reg
            .record_properties(&pid, &d.iot_id, chunk)
            .await
            .unwrap();
    }
    let q = TimelineQuery {
        identifier: "T".into(),
        start: 0,
        end: i64::MAX,
        limit: 1,
        newest_first: false,
    };
    let oldest = h.reg.property_timeline(&pid, &d.iot_id, &q).await.unwrap();
    assert_eq!(oldest[0].time, T0 + 5, "the 5 oldest values were trimmed");
});

both!(batched_reports_keep_order_ties_and_an_exact_bound, h, {
    // The write-behind batches put many reports of one property in one chunk (ADR 0014):
    // time ranges, ties and the bound must read as if every value had its own row.
    let (pid, d) = h.device().await;
    let v = |i: i64, t: i64| PropertyValue {
        identifier: "T".into(),
        value: json!(i),
        time: t,
    };
    // 3 batches of 400 reports, one value each; times repeat (device clocks do), and
    // one report in each batch carries an older time than its predecessor.
    let mut i = 0;
    for _batch in 0..3 {
        let mut batch = Vec::new();
        for k in 0..400 {
            let t = if k == 7 { T0 } else { T0 + i / 2 };
            batch.push((pid.clone(), d.iot_id.clone(), vec![v(i, t)]));
            i += 1;
        }
        h.reg.record_properties_batch(&batch).await.unwrap();
    }
    // 1 200 reported, the newest 1 000 kept: values 200..1200 whatever the trim round.
    let all = |newest_first| TimelineQuery {
        identifier: "T".into(),
        start: 0,
        end: i64::MAX,
        limit: 200,
        newest_first,
    };
    let newest = h
        .reg
        .property_timeline(&pid, &d.iot_id, &all(true))
        .await
        .unwrap();
    assert_eq!(newest.len(), 200);
    // Times 599 (values 1198, 1199) first, the later report of a tie first.
    assert_eq!(newest[0].value, json!(1199));
    assert_eq!(newest[1].value, json!(1198));
    assert!(newest.windows(2).all(|w| w[0].time >= w[1].time));
    let oldest = h
        .reg
        .property_timeline(&pid, &d.iot_id, &all(false))
        .await
        .unwrap();
    // The reports stamped T0 inside the kept range (k == 7 of batches 1 and 2: values
    // 407 and 807) come first, in report order; value 7 (batch 0) was trimmed.
    let first: Vec<_> = oldest.iter().take(3).map(|p| p.value.clone()).collect();
    assert_eq!(first, vec![json!(407), json!(807), json!(200)]);
    assert!(oldest.iter().all(|p| p.value.as_i64().unwrap() >= 200));
    // A time range inside one chunk.
    let range = TimelineQuery {
        identifier: "T".into(),
        start: T0 + 300,
        end: T0 + 301,
        limit: 10,
        newest_first: false,
    };
    let got = h
        .reg
        .property_timeline(&pid, &d.iot_id, &range)
        .await
        .unwrap();
    let vals: Vec<_> = got.iter().map(|p| p.value.clone()).collect();
    assert_eq!(vals, vec![json!(600), json!(601), json!(602), json!(603)]);
    // An unknown property has no timeline.
    let none = TimelineQuery {
        identifier: "Nope".into(),
        ..range
    };
    assert!(h
        .reg
        .property_timeline(&pid, &d.iot_id, &none)
        .await
        .unwrap()
        .is_empty());
});

both!(
    a_nonce_is_accepted_once_until_it_expires_and_purged_after,
    h,
    {
        let (pid, _) = h.device().await;
        let other = h
            .reg
            .create_project("Other", "test")
            .await
            .unwrap()
            .project
            .project_id;
        assert!(h
            .reg
            .use_nonce(&pid, "n-1", T0, T0 + 900_000)
            .await
            .unwrap());
        assert!(!h
            .reg
            .use_nonce(&pid, "n-1", T0 + 1, T0 + 900_001)
            .await
            .unwrap());
        assert!(
            h.reg
                .use_nonce(&other, "n-1", T0, T0 + 900_000)
                .await
                .unwrap(),
            "nonces are per project"
        );
        // Once its window has passed the row no longer blocks a new use (even unpurged).
        assert!(!h
            .reg
            .use_nonce(&pid, "n-1", T0 + 899_999, T0 + 1_800_000)
            .await
            .unwrap());
        assert!(h
            .reg
            .use_nonce(&pid, "n-1", T0 + 900_000, T0 + 1_800_000)
            .await
            .unwrap());
        assert!(h.reg.use_nonce(&pid, "n-2", T0, T0 + 10).await.unwrap());
        assert_eq!(h.reg.purge_nonces(T0 + 10).await.unwrap(), 1, "n-2 only");
        assert_eq!(
            h.reg.purge_nonces(T0 + 900_000).await.unwrap(),
            1,
            "other's n-1"
        );
        assert!(!h
            .reg
            .use_nonce(&pid, "n-1", T0 + 900_001, T0 + 1_800_000)
            .await
            .unwrap());
        let ghost: ProjectId = "nosuchproject".parse().unwrap();
        assert!(matches!(
            h.reg.use_nonce(&ghost, "n", T0, T0 + 1).await,
            Err(StoreError::NotFound { .. })
        ));
        // Deleting the project takes its nonces with it: only pid's n-1 is left to purge.
        assert!(h
            .reg
            .use_nonce(&other, "n-3", T0, T0 + 900_000)
            .await
            .unwrap());
        h.reg.delete_project(&other, "test").await.unwrap();
        assert_eq!(h.reg.purge_nonces(i64::MAX).await.unwrap(), 1);
    }
);

both!(two_nodes_racing_on_one_nonce_accept_it_once, h, {
    let (pid, _) = h.device().await;
    let node2 = SqlRegistry::connect(&h.url, Arc::new(ManualClock::new(T0)))
        .await
        .unwrap();
    for i in 0..40 {
        let n = format!("race-{i}");
        let (a, b) = tokio::join!(
            h.reg.use_nonce(&pid, &n, T0, T0 + 900_000),
            node2.use_nonce(&pid, &n, T0, T0 + 900_000)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a != b,
            "{n}: node 1 {a}, node 2 {b}: exactly one must accept"
        );
    }
    node2.close().await;
});
