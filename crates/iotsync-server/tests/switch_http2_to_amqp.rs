//! Switching a project from HTTP/2 to AMQP mid-stream (SPEC §3): the HTTP/2 stream ends
//! with a status that says why, nothing is lost, and a message seen over both channels is
//! byte-identical (grpcio's bytes against python-qpid-proton's Data section).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use iotsync_testkit::peers::{grpcio, payload_of};
use iotsync_testkit::{repo_root, PeerProc, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_http2_to_amqp_mid_stream_loses_nothing_and_keeps_bytes_identical() {
    let env = TestServer::start().await;
    let p = env.synced_project("http2").await;
    env.reports(&p, 4).await; // lifecycle + 4 reports

    // grpcio acks three messages and holds the fourth when the switch comes.
    let mut g = grpcio(&env, &p, &["--ack-first", "3"]);
    let lines = g.collect("message", 4).await;
    let by_id = |lines: &[Value]| -> BTreeMap<String, Value> {
        lines
            .iter()
            .filter(|v| v["event"] == "message")
            .map(|v| (v["messageId"].as_str().unwrap().to_owned(), v.clone()))
            .collect()
    };
    let grpc_msgs = by_id(&lines);
    let mut stacked = Value::Null;
    for _ in 0..100 {
        stacked = env.group_stats(&p.pid, &p.app_key).await["stacked"].clone();
        if stacked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stacked, 2, "three acks counted, one held, one waiting");
    let acked: BTreeSet<String> = lines
        .iter()
        .filter(|v| v["event"] == "acked")
        .map(|v| v["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(acked.len(), 3);

    let base = format!("/api/v1/projects/{}/sync", p.pid);
    let (s, v) = env
        .post(&format!("{base}/switch"), json!({"method": "amqp"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let st = g.next_event("status").await;
    assert_eq!(st["code"], "UNAVAILABLE", "{st}");
    assert!(
        st["details"].as_str().unwrap().starts_with("sync.switched"),
        "{st}"
    );
    // Held to the AMQP retention from now on.
    let (_, stats) = env.get(&format!("{base}/stats")).await;
    assert_eq!(stats["retentionMs"], 86_400_000, "{stats}");
    // HTTP/2 is refused now, with the reason.
    let mut late = grpcio(&env, &p, &[]);
    let st = late.next_event("status").await;
    assert_eq!(st["code"], "FAILED_PRECONDITION", "{st}");

    env.reports(&p, 2).await;
    let root = repo_root();
    let args: Vec<String> = vec![
        root.join("tests/peers/grpc/amqp_bytes.py")
            .to_string_lossy()
            .into_owned(),
        "--url".into(),
        format!(
            "amqp://{}",
            env.server().addr("amqp").expect("amqp listener")
        ),
        "--app-key".into(),
        p.app_key.clone(),
        "--app-secret".into(),
        p.app_secret.clone(),
        "--count".into(),
        "4".into(),
    ];
    let mut amqp = PeerProc::command("proton", "python3", &args);
    let lines = amqp.collect("message", 4).await;
    amqp.next_event("done").await;
    let amqp_msgs = by_id(&lines);

    // Nothing lost: 7 messages, each acked over HTTP/2 or received over AMQP.
    let all: BTreeSet<String> = acked
        .iter()
        .cloned()
        .chain(amqp_msgs.keys().cloned())
        .collect();
    assert_eq!(all.len(), 7, "acked {acked:?} amqp {:?}", amqp_msgs.keys());
    // The held message came over both: same topic, id, time and payload bytes.
    let both: Vec<&String> = grpc_msgs
        .keys()
        .filter(|id| amqp_msgs.contains_key(*id))
        .collect();
    assert_eq!(both.len(), 1, "{both:?}");
    for id in both {
        let (h, a) = (&grpc_msgs[id], &amqp_msgs[id]);
        assert_eq!(payload_of(h), payload_of(a), "payload bytes of {id}");
        assert_eq!(h["topic"], a["topic"]);
        assert_eq!(h["generateTime"], a["generateTime"]);
    }
    env.stop().await;
}
