//! The repository suite: every test runs against SQLite (a temp file) and against the
//! real PostgreSQL (each test in its own schema). PostgreSQL comes from
//! `IOTSYNC_TEST_PG_URL` or `postgres://postgres@127.0.0.1:5432/test`; a missing server
//! fails the PostgreSQL half, it never skips.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::sync::Arc;

use iotsync_core::api_catalog::ApiGroup;
use iotsync_core::sync_rules::{ImportedSync, Route, SyncCommand, SyncMethod, SyncMode};
use iotsync_core::{ManualClock, MessageKind, ProjectId};
use iotsync_store::*;

#[macro_use]
mod common;

use common::{postgres, sqlite, Harness, T0};

impl Harness {
    async fn outbox_kinds(&self) -> Vec<(String, String)> {
        self.reg
            .outbox_peek(1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.message.kind.code().to_string(), e.message.envelope.topic))
            .collect()
    }

    async fn drain(&self) -> Vec<OutboxEntry> {
        let all = self.reg.outbox_peek(1000).await.unwrap();
        let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
        self.reg.outbox_remove(&seqs).await.unwrap();
        all
    }

    async fn project(&self) -> ProjectWithSecret {
        self.reg.create_project("Smart home", "test").await.unwrap()
    }

    async fn product(&self, p: &ProjectId, name: &str) -> Product {
        // Lists order by creation time; keep creations apart.
        self.clock.advance_ms(1);
        self.reg
            .create_product(
                p,
                &NewProduct {
                    name: name.into(),
                    device_type: "Light".into(),
                    product_key: None,
                },
            )
            .await
            .unwrap()
    }

    async fn enable(&self, p: &ProjectId, m: &str) {
        self.reg
            .apply_sync(p, &SyncCommand::Enable { method: m.into() }, "test")
            .await
            .unwrap();
    }
}

both!(creates_project_with_only_cloud_token_activated, h, {
    let p = h.project().await;
    assert_eq!(p.app_secret.len(), 32);
    let got = h.reg.get_project(&p.project.project_id).await.unwrap();
    assert_eq!(got, p.project);
    let act = h.reg.api_activation(&p.project.project_id).await.unwrap();
    assert_eq!(act.len(), ApiGroup::ALL.len());
    for (g, on) in act {
        assert_eq!(on, g == ApiGroup::CloudToken, "{g}");
    }
    let by_key = h.reg.project_by_app_key(&p.project.app_key).await.unwrap();
    assert_eq!(by_key.app_secret, p.app_secret);
});

both!(rotating_the_secret_keeps_the_app_key_and_is_audited, h, {
    let p = h.project().await;
    let r = h
        .reg
        .rotate_secret(&p.project.project_id, "ops")
        .await
        .unwrap();
    assert_ne!(r.app_secret, p.app_secret);
    assert_eq!(r.project.app_key, p.project.app_key);
    let log = h
        .reg
        .audit_log(&p.project.project_id, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(log.items[0].action, "project.rotate_secret");
    assert_eq!(log.items[0].actor, "ops");
    assert!(!log.items[0].after.to_string().contains(&r.app_secret));
});

both!(nothing_is_produced_while_sync_is_off, h, {
    let p = h.project().await.project.project_id;
    let prod = h.product(&p, "Lamp").await;
    let d = h
        .reg
        .create_device(&p, &prod.product_key, &"lamp0001".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(d.device.status, DeviceStatus::Inactive);
    h.reg
        .create_user(
            &p,
            &NewUser {
                login_name: "ann".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(h.outbox_kinds().await.is_empty());
});

both!(
    registry_changes_write_their_messages_in_the_same_transaction,
    h,
    {
        let p = h.project().await.project.project_id;
        let prod = h.product(&p, "Lamp").await;
        h.enable(&p, "amqp").await;
        let d = h
            .reg
            .create_device(&p, &prod.product_key, &"lamp0001".parse().unwrap())
            .await
            .unwrap();
        let u = h
            .reg
            .create_user(
                &p,
                &NewUser {
                    login_name: "ann".into(),
                    nick_name: "Ann".into(),
                    phone: "+1 555".into(),
                    email: "ann@example.test".into(),
                },
            )
            .await
            .unwrap();
        h.reg
            .bind(&p, &u.identity_id, &d.device.iot_id, true)
            .await
            .unwrap();
        h.reg
            .update_user(
                &p,
                &u.identity_id,
                &UserPatch {
                    nick_name: Some("Annie".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        h.reg
            .set_device_enabled(&p, &d.device.iot_id, false)
            .await
            .unwrap();
        h.reg
            .set_device_enabled(&p, &d.device.iot_id, true)
            .await
            .unwrap();
        h.reg
            .unbind(&p, &u.identity_id, &d.device.iot_id)
            .await
            .unwrap();
        h.reg.delete_user(&p, &u.identity_id).await.unwrap();
        h.reg.delete_device(&p, &d.device.iot_id).await.unwrap();
        let pk = prod.product_key.as_str();
        let kinds = h.outbox_kinds().await;
        let expect = vec![
            (
                "device.lifecycle.create",
                format!("/{pk}/lamp0001/thing/lifecycle"),
            ),
            (
                "account.create",
                format!("/_account/{}/lifecycle", u.identity_id),
            ),
            (
                "user.binding.bind",
                format!("/{pk}/lamp0001/thing/user/binding"),
            ),
            (
                "account.update",
                format!("/_account/{}/lifecycle", u.identity_id),
            ),
            (
                "device.lifecycle.disable",
                format!("/{pk}/lamp0001/thing/lifecycle"),
            ),
            (
                "device.lifecycle.enable",
                format!("/{pk}/lamp0001/thing/lifecycle"),
            ),
            (
                "user.binding.unbind",
                format!("/{pk}/lamp0001/thing/user/binding"),
            ),
            (
                "account.delete",
                format!("/_account/{}/lifecycle", u.identity_id),
            ),
            (
                "device.lifecycle.delete",
                format!("/{pk}/lamp0001/thing/lifecycle"),
            ),
        ];
        let expect: Vec<(String, String)> = expect
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect();
        assert_eq!(kinds, expect);
        let out = h.reg.outbox_peek(1).await.unwrap();
        let payload: serde_json::Value =
            serde_json::from_slice(&out[0].message.envelope.payload).unwrap();
        assert_eq!(payload["action"], "create");
        assert_eq!(payload["deviceSecret"], d.device_secret.as_str());
        assert_eq!(out[0].message.envelope.generate_time, T0 + 1);
        assert_eq!(
            out[0].message.kind,
            MessageKind::DeviceLifecycle(iotsync_core::LifecycleAction::Create)
        );
    }
);

both!(a_failed_change_leaves_no_message, h, {
    let p = h.project().await.project.project_id;
    let prod = h.product(&p, "Lamp").await;
    h.enable(&p, "amqp").await;
    let dn = "lamp0001".parse().unwrap();
    h.reg
        .create_device(&p, &prod.product_key, &dn)
        .await
        .unwrap();
    h.drain().await;
    let e = h
        .reg
        .create_device(&p, &prod.product_key, &dn)
        .await
        .unwrap_err();
    assert_eq!(e.code(), "conflict");
    assert_eq!(e.field(), Some("deviceName"));
    assert!(h.outbox_kinds().await.is_empty());
    let u = h
        .reg
        .create_user(
            &p,
            &NewUser {
                login_name: "bob".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.drain().await;
    let e = h
        .reg
        .create_user(
            &p,
            &NewUser {
                login_name: "bob".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("loginName"));
    let d2 = h
        .reg
        .create_device(&p, &prod.product_key, &"lamp0002".parse().unwrap())
        .await
        .unwrap();
    h.reg
        .bind(&p, &u.identity_id, &d2.device.iot_id, true)
        .await
        .unwrap();
    h.drain().await;
    let other = h
        .reg
        .create_user(
            &p,
            &NewUser {
                login_name: "carl".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    h.drain().await;
    let e = h
        .reg
        .bind(&p, &other.identity_id, &d2.device.iot_id, true)
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("owned"));
    assert!(h.outbox_kinds().await.is_empty());
    // Sharing is fine.
    h.reg
        .bind(&p, &other.identity_id, &d2.device.iot_id, false)
        .await
        .unwrap();
    assert_eq!(h.outbox_kinds().await[0].0, "user.binding.share");
});

both!(
    a_product_switched_off_silences_device_data_and_its_bindings,
    h,
    {
        let p = h.project().await.project.project_id;
        let on = h.product(&p, "Lamp").await;
        let off = h.product(&p, "Plug").await;
        h.enable(&p, "http2").await;
        h.reg
            .set_product_sync(&p, &off.product_key, false, "test")
            .await
            .unwrap();
        let u = h
            .reg
            .create_user(
                &p,
                &NewUser {
                    login_name: "ann".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let d_on = h
            .reg
            .create_device(&p, &on.product_key, &"lamp0001".parse().unwrap())
            .await
            .unwrap();
        let d_off = h
            .reg
            .create_device(&p, &off.product_key, &"plug0001".parse().unwrap())
            .await
            .unwrap();
        h.reg
            .bind(&p, &u.identity_id, &d_on.device.iot_id, true)
            .await
            .unwrap();
        h.reg
            .bind(&p, &u.identity_id, &d_off.device.iot_id, true)
            .await
            .unwrap();
        h.reg
            .set_device_online(&p, &d_off.device.iot_id, true, T0 + 1)
            .await
            .unwrap();
        let kinds: Vec<String> = h.outbox_kinds().await.into_iter().map(|k| k.0).collect();
        assert_eq!(
            kinds,
            vec![
                "account.create",
                "device.lifecycle.create",
                "user.binding.bind"
            ]
        );
        // A later product is on.
        let later = h.product(&p, "Fan").await;
        assert!(later.sync_enabled);
        let st = h.reg.sync_state(&p).await.unwrap();
        let flags: Vec<bool> = st.products.iter().map(|x| x.enabled).collect();
        assert_eq!(flags, vec![true, false, true]);
        // Disable + enable turns every product on again.
        h.reg
            .apply_sync(&p, &SyncCommand::Disable, "test")
            .await
            .unwrap();
        h.enable(&p, "amqp").await;
        let st = h.reg.sync_state(&p).await.unwrap();
        assert!(st.products.iter().all(|x| x.enabled));
        assert_eq!(st.method, Some(SyncMethod::Amqp));
    }
);

both!(sync_rules_are_enforced_and_audited, h, {
    let p = h.project().await.project.project_id;
    let prod = h.product(&p, "Lamp").await;
    let e = h
        .reg
        .set_product_sync(&p, &prod.product_key, false, "t")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sync.not_enabled");
    let e = h
        .reg
        .apply_sync(
            &p,
            &SyncCommand::Enable {
                method: "legacy_http".into(),
            },
            "t",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sync.legacy_not_allowed");
    h.enable(&p, "http2").await;
    h.clock.advance_ms(1000);
    let (s, _) = h
        .reg
        .apply_sync(
            &p,
            &SyncCommand::Switch {
                method: "amqp".into(),
            },
            "alice",
        )
        .await
        .unwrap();
    assert_eq!(s.method(), Some(SyncMethod::Amqp));
    let log = h.reg.audit_log(&p, PageRequest::default()).await.unwrap();
    let actions: Vec<&str> = log.items.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        // Enabling declared the default group in the same change.
        vec![
            "sync.switch",
            "sync.enable",
            "consumer_group.create",
            "project.create"
        ]
    );
    assert_eq!(log.items[0].actor, "alice");
    assert_eq!(log.items[0].at, T0 + 1 + 1000);
    assert_eq!(log.items[0].before["deviceData"], "http2");
    assert_eq!(log.items[0].after["deviceData"], "amqp");
    // Nothing changes on a refused command.
    let e = h
        .reg
        .apply_sync(
            &p,
            &SyncCommand::Switch {
                method: "http2".into(),
            },
            "t",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sync.switch_not_supported");
    assert_eq!(
        h.reg
            .audit_log(&p, PageRequest::default())
            .await
            .unwrap()
            .total,
        4
    );
});

both!(imported_mixed_and_legacy_projects_follow_their_rules, h, {
    let mixed = h
        .reg
        .import_project(
            &ProjectImport {
                name: "Old".into(),
                app_key: "24681357".parse().unwrap(),
                app_secret: "oldsecret0001".into(),
                sync: ImportedSync {
                    enabled: true,
                    device_data: Route::Http2,
                    user_data: Route::LegacyHttp,
                    legacy_http_url: Some("http://127.0.0.1:9/push".into()),
                },
            },
            "operator",
        )
        .await
        .unwrap();
    let st = h.reg.sync_state(&mixed.project_id).await.unwrap();
    assert_eq!(st.mode, SyncMode::Mixed);
    let e = h
        .reg
        .apply_sync(
            &mixed.project_id,
            &SyncCommand::Switch {
                method: "amqp".into(),
            },
            "t",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sync.mixed_must_reenable");
    h.reg
        .apply_sync(&mixed.project_id, &SyncCommand::Disable, "t")
        .await
        .unwrap();
    let e = h
        .reg
        .apply_sync(
            &mixed.project_id,
            &SyncCommand::Enable {
                method: "legacy_http".into(),
            },
            "t",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), "sync.legacy_retired");
    h.enable(&mixed.project_id, "amqp").await;
    // Duplicate app keys are refused.
    let e = h
        .reg
        .import_project(
            &ProjectImport {
                name: "Dup".into(),
                app_key: "24681357".parse().unwrap(),
                app_secret: "oldsecret0002".into(),
                sync: ImportedSync {
                    enabled: false,
                    device_data: Route::None,
                    user_data: Route::None,
                    legacy_http_url: None,
                },
            },
            "operator",
        )
        .await
        .unwrap_err();
    assert_eq!(e.field(), Some("appKey"));
});

both!(projects_never_see_each_others_things, h, {
    let a = h.project().await.project.project_id;
    let b = h.project().await.project.project_id;
    let prod = h.product(&a, "Lamp").await;
    let d = h
        .reg
        .create_device(&a, &prod.product_key, &"lamp0001".parse().unwrap())
        .await
        .unwrap();
    let u = h
        .reg
        .create_user(
            &a,
            &NewUser {
                login_name: "ann".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        h.reg
            .get_device(&b, &d.device.iot_id)
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(
        h.reg
            .get_product(&b, &prod.product_key)
            .await
            .unwrap_err()
            .code(),
        "not_found"
    );
    assert_eq!(
        h.reg.get_user(&b, &u.identity_id).await.unwrap_err().code(),
        "not_found"
    );
    assert!(h
        .reg
        .create_device(&b, &prod.product_key, &"x0001".parse().unwrap())
        .await
        .is_err());
    assert!(h
        .reg
        .bind(&b, &u.identity_id, &d.device.iot_id, true)
        .await
        .is_err());
    assert_eq!(
        h.reg
            .list_devices(&b, None, PageRequest::default())
            .await
            .unwrap()
            .total,
        0
    );
    assert!(h.reg.delete_device(&b, &d.device.iot_id).await.is_err());
    assert!(h.reg.get_device(&a, &d.device.iot_id).await.is_ok());
});

both!(lists_are_paginated_and_searchable, h, {
    for i in 0..7 {
        h.reg
            .create_project(&format!("Proj {i}"), "t")
            .await
            .unwrap();
        h.clock.advance_ms(1);
    }
    h.reg.create_project("Special_one", "t").await.unwrap();
    let p1 = h
        .reg
        .list_projects(None, PageRequest::new(1, 3).unwrap())
        .await
        .unwrap();
    assert_eq!(p1.total, 8);
    assert_eq!(p1.items.len(), 3);
    assert_eq!(p1.items[0].name, "Special_one");
    let p3 = h
        .reg
        .list_projects(None, PageRequest::new(3, 3).unwrap())
        .await
        .unwrap();
    assert_eq!(p3.items.len(), 2);
    let s = h
        .reg
        .list_projects(Some("special_"), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(s.total, 1);
    let s = h
        .reg
        .list_projects(Some("%"), PageRequest::default())
        .await
        .unwrap();
    assert_eq!(s.total, 0, "a % in the search is literal");
    assert!(PageRequest::new(0, 10).is_err());
    assert_eq!(
        PageRequest::new(1, 201).unwrap_err().field(),
        Some("pageSize")
    );
});

both!(device_status_and_properties_are_kept, h, {
    let p = h.project().await.project.project_id;
    let prod = h.product(&p, "Lamp").await;
    h.enable(&p, "amqp").await;
    let d = h
        .reg
        .create_device(&p, &prod.product_key, &"lamp0001".parse().unwrap())
        .await
        .unwrap();
    h.drain().await;
    let on = h
        .reg
        .set_device_online(&p, &d.device.iot_id, true, T0 + 5)
        .await
        .unwrap();
    assert_eq!(on.status, DeviceStatus::Online);
    h.reg
        .set_device_online(&p, &d.device.iot_id, false, T0 + 6)
        .await
        .unwrap();
    let got = h.reg.get_device(&p, &d.device.iot_id).await.unwrap();
    assert_eq!(got.status, DeviceStatus::Offline);
    assert_eq!(got.status_time, T0 + 6);
    let msgs = h.drain().await;
    let payloads: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| serde_json::from_slice(&m.message.envelope.payload).unwrap())
        .collect();
    assert_eq!(payloads[0]["status"]["value"], "1");
    assert_eq!(payloads[1]["action"], "offline");
    // Disabled, then enabled again: offline (it was active once), not inactive.
    h.reg
        .set_device_enabled(&p, &d.device.iot_id, false)
        .await
        .unwrap();
    assert!(h
        .reg
        .set_device_online(&p, &d.device.iot_id, true, T0 + 7)
        .await
        .is_err());
    let back = h
        .reg
        .set_device_enabled(&p, &d.device.iot_id, true)
        .await
        .unwrap();
    assert_eq!(back.status, DeviceStatus::Offline);
    h.reg
        .record_properties(
            &p,
            &d.device.iot_id,
            &[PropertyValue {
                identifier: "LightSwitch".into(),
                value: serde_json::json!(1),
                time: 10,
            }],
        )
        .await
        .unwrap();
    // An older report does not overwrite a newer value.
    h.reg
        .record_properties(
            &p,
            &d.device.iot_id,
            &[PropertyValue {
                identifier: "LightSwitch".into(),
                value: serde_json::json!(0),
                time: 9,
            }],
        )
        .await
        .unwrap();
    let props = h.reg.device_properties(&p, &d.device.iot_id).await.unwrap();
    assert_eq!(props.len(), 1);
    assert_eq!(props[0].value, serde_json::json!(1));
});

both!(concurrent_writers_all_succeed, h, {
    let p = h.project().await.project.project_id;
    h.enable(&p, "amqp").await;
    let reg = &h.reg;
    let futs = (0..24).map(|i| {
        let p = p.clone();
        async move {
            reg.create_user(
                &p,
                &NewUser {
                    login_name: format!("user{i}"),
                    ..Default::default()
                },
            )
            .await
        }
    });
    let results = futures_join_all(futs).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        h.reg
            .list_users(&p, PageRequest::default())
            .await
            .unwrap()
            .total,
        24
    );
    assert_eq!(h.reg.outbox_peek(100).await.unwrap().len(), 24);
});

async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    // Poll them concurrently on this task.
    let pinned: Vec<_> = set.into_iter().map(Box::pin).collect();
    let mut pending: Vec<Option<_>> = pinned.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all_done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all_done = false,
                }
            }
        }
        if all_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    for r in results {
        out.extend(r);
    }
    out
}

both!(
    batched_property_reports_skip_deleted_devices_and_keep_newest,
    h,
    {
        let p = h.project().await.project.project_id;
        let prod = h.product(&p, "Lamp").await;
        let a = h
            .reg
            .create_device(&p, &prod.product_key, &"lamp0001".parse().unwrap())
            .await
            .unwrap();
        let b = h
            .reg
            .create_device(&p, &prod.product_key, &"lamp0002".parse().unwrap())
            .await
            .unwrap();
        h.reg.delete_device(&p, &b.device.iot_id).await.unwrap();
        let v = |x: i64, t: i64| {
            vec![PropertyValue {
                identifier: "x".into(),
                value: serde_json::json!(x),
                time: t,
            }]
        };
        h.reg
            .record_properties_batch(&[
                (p.clone(), a.device.iot_id.clone(), v(1, 10)),
                (p.clone(), b.device.iot_id.clone(), v(2, 10)),
                (p.clone(), a.device.iot_id.clone(), v(3, 30)),
                (p.clone(), a.device.iot_id.clone(), v(0, 20)),
            ])
            .await
            .unwrap();
        let props = h.reg.device_properties(&p, &a.device.iot_id).await.unwrap();
        assert_eq!(props.len(), 1);
        assert_eq!(
            props[0].value,
            serde_json::json!(3),
            "the newest report wins"
        );
        assert_eq!(props[0].time, 30);
    }
);

fn group_names(groups: &[DeclaredGroup]) -> Vec<String> {
    groups.iter().map(|g| g.name.to_string()).collect()
}

both!(
    consumer_groups_are_declared_listed_deleted_and_audited,
    h,
    {
        use iotsync_core::{ConsumerGroup, DataClass, GroupFilterDoc};
        let p = h.project().await;
        let pid = p.project.project_id.clone();
        assert!(h.reg.list_groups(&pid).await.unwrap().is_empty());
        let billing: ConsumerGroup = "billing".parse().unwrap();
        let filter = GroupFilterDoc {
            data_classes: Some(vec![DataClass::Device]),
            kinds: Some(vec!["device.property.post".into()]),
            products: None,
        };
        let g = h
            .reg
            .declare_group(&pid, &billing, &filter, 8, "ops")
            .await
            .unwrap();
        assert_eq!(g.filter, filter);
        assert!(!g.internal);
        assert_eq!(g.retry, GroupRetryKind::Backoff);
        assert_eq!(g.created_at, T0);
        let e = h
            .reg
            .declare_group(&pid, &billing, &filter, 8, "ops")
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.field()), ("conflict", Some("name")));
        // Enabling declares the default group (named after the appKey) in the same change.
        h.enable(&pid, "amqp").await;
        let all = h.reg.list_groups(&pid).await.unwrap();
        assert_eq!(
            group_names(&all),
            vec![p.project.app_key.to_string(), "billing".to_string()]
        );
        assert_eq!(all[0].filter, GroupFilterDoc::default());
        // A first connect with an undeclared name declares it, once.
        let ops: ConsumerGroup = "ops-1".parse().unwrap();
        let (g, new) = h
            .reg
            .ensure_group(&pid, &ops, &GroupFilterDoc::default(), 8, "amqp")
            .await
            .unwrap();
        assert!(new);
        assert_eq!(g.filter, GroupFilterDoc::default());
        let (_, new) = h
            .reg
            .ensure_group(&pid, &ops, &GroupFilterDoc::default(), 8, "amqp")
            .await
            .unwrap();
        assert!(!new);
        // The limit counts every group of the project.
        let e = h
            .reg
            .declare_group(&pid, &"more".parse().unwrap(), &filter, 3, "ops")
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.field()), ("limit_exceeded", Some("name")));
        let gone = h.reg.delete_group(&pid, &billing, "ops").await.unwrap();
        assert_eq!(gone.name, billing);
        let e = h.reg.delete_group(&pid, &billing, "ops").await.unwrap_err();
        assert_eq!(e.code(), "not_found");
        let log = h.reg.audit_log(&pid, PageRequest::default()).await.unwrap();
        let actions: Vec<&str> = log.items.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(
            &actions[..5],
            &[
                "consumer_group.delete",
                "consumer_group.create",
                "sync.enable",
                "consumer_group.create",
                "consumer_group.create",
            ]
        );
        assert_eq!(log.items[0].before["name"], "billing");
        assert_eq!(log.items[0].actor, "ops");
        // Unknown project.
        let e = h
            .reg
            .declare_group(&"nope".parse().unwrap(), &billing, &filter, 8, "ops")
            .await
            .unwrap_err();
        assert_eq!(e.code(), "not_found");
        let every = h.reg.all_groups().await.unwrap();
        assert_eq!(every.len(), 2);
    }
);

both!(an_import_declares_its_groups_in_the_same_change, h, {
    use iotsync_core::{DataClass, GroupFilterDoc};
    let mixed = h
        .reg
        .import_project(
            &ProjectImport {
                name: "Old".into(),
                app_key: "24681358".parse().unwrap(),
                app_secret: "oldsecret0001".into(),
                sync: ImportedSync {
                    enabled: true,
                    device_data: Route::Http2,
                    user_data: Route::LegacyHttp,
                    legacy_http_url: Some("http://127.0.0.1:9/push".into()),
                },
            },
            "operator",
        )
        .await
        .unwrap();
    let groups = h.reg.list_groups(&mixed.project_id).await.unwrap();
    assert_eq!(group_names(&groups), vec!["24681358", "_legacy_http"]);
    assert_eq!(groups[0].filter.data_classes, Some(vec![DataClass::Device]));
    assert!(!groups[0].internal);
    assert_eq!(groups[1].filter.data_classes, Some(vec![DataClass::User]));
    assert_eq!(groups[1].retry, GroupRetryKind::LegacyHttp);
    assert!(groups[1].internal);
    // Disabling retires legacy push: its group goes with it; re-enabling with one method
    // makes the default group take everything.
    h.reg
        .apply_sync(&mixed.project_id, &SyncCommand::Disable, "t")
        .await
        .unwrap();
    let groups = h.reg.list_groups(&mixed.project_id).await.unwrap();
    assert_eq!(group_names(&groups), vec!["24681358"]);
    h.enable(&mixed.project_id, "amqp").await;
    let groups = h.reg.list_groups(&mixed.project_id).await.unwrap();
    assert_eq!(groups[0].filter, GroupFilterDoc::default());
    // A project imported without sync has no groups.
    let off = h
        .reg
        .import_project(
            &ProjectImport {
                name: "Off".into(),
                app_key: "24681359".parse().unwrap(),
                app_secret: "oldsecret0002".into(),
                sync: ImportedSync {
                    enabled: false,
                    device_data: Route::None,
                    user_data: Route::None,
                    legacy_http_url: None,
                },
            },
            "operator",
        )
        .await
        .unwrap();
    assert!(h.reg.list_groups(&off.project_id).await.unwrap().is_empty());
    // Deleting a project deletes its groups.
    h.reg.delete_project(&mixed.project_id, "t").await.unwrap();
    assert!(h.reg.all_groups().await.unwrap().is_empty());
});

/// An older registry (before declared groups) gets its platform groups declared by the
/// migration: the default group of every project that had sync on, and `_legacy_http`.
#[tokio::test]
async fn the_migration_declares_the_groups_of_projects_that_had_sync_on() {
    use iotsync_core::{DataClass, GroupFilterDoc};
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let clock = ManualClock::new(T0);
    let (single, mixed, off) = {
        let reg = SqlRegistry::open_sqlite(&path, Arc::new(clock.clone()))
            .await
            .unwrap();
        let single = reg.create_project("One", "t").await.unwrap().project;
        reg.apply_sync(
            &single.project_id,
            &SyncCommand::Enable {
                method: "amqp".into(),
            },
            "t",
        )
        .await
        .unwrap();
        let mixed = reg
            .import_project(
                &ProjectImport {
                    name: "Old".into(),
                    app_key: "24681360".parse().unwrap(),
                    app_secret: "oldsecret0001".into(),
                    sync: ImportedSync {
                        enabled: true,
                        device_data: Route::Http2,
                        user_data: Route::LegacyHttp,
                        legacy_http_url: Some("http://127.0.0.1:9/push".into()),
                    },
                },
                "operator",
            )
            .await
            .unwrap();
        let off = reg.create_project("Off", "t").await.unwrap().project;
        reg.close().await;
        (single, mixed, off)
    };
    // Back to the schema before migration 4, as an older version left it.
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE consumer_groups")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 4")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();

    let reg = SqlRegistry::open_sqlite(&path, Arc::new(clock.clone()))
        .await
        .unwrap();
    let g = reg.list_groups(&single.project_id).await.unwrap();
    assert_eq!(group_names(&g), vec![single.app_key.to_string()]);
    assert_eq!(g[0].filter, GroupFilterDoc::default());
    let g = reg.list_groups(&mixed.project_id).await.unwrap();
    assert_eq!(group_names(&g), vec!["24681360", "_legacy_http"]);
    assert_eq!(g[0].filter.data_classes, Some(vec![DataClass::Device]));
    assert_eq!(g[1].retry, GroupRetryKind::LegacyHttp);
    assert!(g[1].internal);
    assert!(reg.list_groups(&off.project_id).await.unwrap().is_empty());
    reg.close().await;
}

both!(
    group_alert_thresholds_are_set_read_audited_and_go_with_their_group,
    h,
    {
        use iotsync_core::{ConsumerGroup, GroupFilterDoc};
        let p = h.project().await;
        let pid = p.project.project_id.clone();
        let billing: ConsumerGroup = "billing".parse().unwrap();
        // An undeclared group has no thresholds to read or set.
        let e = h.reg.group_alerts(&pid, &billing).await.unwrap_err();
        assert_eq!(e.code(), "not_found");
        let t = AlertThresholds {
            stacked_max: Some(100),
            ..Default::default()
        };
        let e = h
            .reg
            .set_group_alerts(&pid, &billing, &t, "ops")
            .await
            .unwrap_err();
        assert_eq!(e.code(), "not_found");
        h.reg
            .declare_group(&pid, &billing, &GroupFilterDoc::default(), 8, "ops")
            .await
            .unwrap();
        let none = h.reg.group_alerts(&pid, &billing).await.unwrap();
        assert!(none.thresholds.is_empty());
        assert_eq!(none.updated_at, None);
        assert!(h.reg.all_group_alerts().await.unwrap().is_empty());

        h.clock.advance_ms(5);
        let set = h
            .reg
            .set_group_alerts(&pid, &billing, &t, "ops")
            .await
            .unwrap();
        assert_eq!(set.thresholds, t);
        assert_eq!(set.updated_at, Some(T0 + 5));
        assert_eq!(h.reg.group_alerts(&pid, &billing).await.unwrap(), set);
        // Replaced whole: what the new set leaves out is no longer a threshold.
        let all = AlertThresholds {
            stacked_max: None,
            oldest_age_max_ms: Some(AlertThresholds::MAX),
            dead_letters_max: Some(0),
        };
        h.reg
            .set_group_alerts(&pid, &billing, &all, "ops")
            .await
            .unwrap();
        let got = h.reg.group_alerts(&pid, &billing).await.unwrap();
        assert_eq!(got.thresholds, all);
        assert_eq!(h.reg.project_alerts(&pid).await.unwrap(), vec![got.clone()]);
        assert_eq!(h.reg.all_group_alerts().await.unwrap(), vec![got]);
        // A value past the BIGINT column is refused, naming the threshold.
        let e = h
            .reg
            .set_group_alerts(
                &pid,
                &billing,
                &AlertThresholds {
                    dead_letters_max: Some(AlertThresholds::MAX + 1),
                    ..Default::default()
                },
                "ops",
            )
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.field()),
            ("invalid_argument", Some("deadLettersMax"))
        );
        // Setting the same again is not a change; the audit log has the two that were.
        h.reg
            .set_group_alerts(&pid, &billing, &all, "ops")
            .await
            .unwrap();
        let log = h.reg.audit_log(&pid, PageRequest::default()).await.unwrap();
        assert_eq!(
            log.items
                .iter()
                .filter(|a| a.action == "consumer_group.alerts")
                .count(),
            2
        );
        assert_eq!(log.items[0].action, "consumer_group.alerts");
        assert_eq!(log.items[0].actor, "ops");
        assert_eq!(log.items[0].before["stackedMax"], 100);
        assert_eq!(log.items[0].after["stackedMax"], serde_json::Value::Null);
        assert_eq!(log.items[0].after["deadLettersMax"], 0);
        assert_eq!(log.items[0].after["group"], "billing");

        // None set: the group no longer alerts and the round does not read it.
        h.reg
            .set_group_alerts(&pid, &billing, &AlertThresholds::default(), "ops")
            .await
            .unwrap();
        assert!(h.reg.all_group_alerts().await.unwrap().is_empty());
        assert!(h
            .reg
            .group_alerts(&pid, &billing)
            .await
            .unwrap()
            .thresholds
            .is_empty());

        // Deleting the group deletes its thresholds: declared again, it has none.
        h.reg
            .set_group_alerts(&pid, &billing, &t, "ops")
            .await
            .unwrap();
        h.reg.delete_group(&pid, &billing, "ops").await.unwrap();
        assert!(h.reg.all_group_alerts().await.unwrap().is_empty());
        h.reg
            .declare_group(&pid, &billing, &GroupFilterDoc::default(), 8, "ops")
            .await
            .unwrap();
        assert!(h
            .reg
            .group_alerts(&pid, &billing)
            .await
            .unwrap()
            .thresholds
            .is_empty());
        // And deleting the project deletes them with its groups.
        h.reg
            .set_group_alerts(&pid, &billing, &t, "ops")
            .await
            .unwrap();
        h.reg.delete_project(&pid, "ops").await.unwrap();
        assert!(h.reg.all_group_alerts().await.unwrap().is_empty());
    }
);
