//! A clean shutdown drains the property writer (issue 15, finding 9): last values of
//! reports answered before the stop are in the registry after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use reqwest::StatusCode;
use serde_json::{json, Value};

use iotsync_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_reported_values_survive_a_clean_shutdown() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let env = TestServer::builder().data_dir(&data.clone()).start().await;
    let p = env
        .project_with_devices("Drain", &["lamp0001", "lamp0002", "lamp0003", "lamp0004"])
        .await;
    // In-process and concurrent, so reports are answered faster than the writer's
    // batches commit and some are still queued when the stop comes.
    const REPORTS: i64 = 400;
    let ingest = env.server().ingest();
    let mut tasks = Vec::new();
    for d in &p.devices {
        let (ingest, pid, iot) = (
            ingest.clone(),
            p.pid.parse::<iotsync_core::ProjectId>().unwrap(),
            d.iot.parse::<iotsync_core::IotId>().unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            for n in 1..=REPORTS {
                let mut items = serde_json::Map::new();
                for k in 0..16 {
                    items.insert(format!("P{k:02}"), json!(n));
                }
                items.insert("Counter".into(), json!(n));
                ingest.report_properties(&pid, &iot, &items).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Straight to a clean stop: nothing read the values (no settle) in between.
    env.stop().await;

    let env = TestServer::builder().data_dir(&data).start().await;
    for d in &p.devices {
        let (s, v) = env
            .get(&format!(
                "/api/v1/projects/{}/devices/{}/properties",
                p.pid, d.iot
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let counter = v
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["identifier"] == "Counter")
            .map(|i| i["value"].clone())
            .unwrap_or(Value::Null);
        assert_eq!(counter, json!(REPORTS), "{}: last value lost: {v}", d.dn);
    }
    env.stop().await;
}
