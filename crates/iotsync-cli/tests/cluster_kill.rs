//! SIGKILL under load (issue 13): of one node of a 3-node cluster, and of the JetStream
//! stream leader of a 3-server NATS cluster (R3) under the same 3 nodes. Three `iotsync serve`
//! processes share one PostgreSQL schema and one NATS JetStream backlog (a throw-away
//! `nats-server -js` on a free port). A fleet of paho-mqtt devices publishes numbered
//! property reports at QoS 1 to all three nodes; three Rust SDK AMQP consumers of the
//! default group (one starting on each node, every node in their endpoint list) ack
//! what they get; a REST client creates devices through every node. Node 1 is SIGKILLed
//! mid-run. Until then the three consumers share the group (each message to one of
//! them). The killed node's devices and consumer move to the other nodes by themselves,
//! and:
//!
//! - every report whose PUBACK came back is delivered at least once;
//! - every device creation answered 201 is delivered (its lifecycle message) at least once;
//! - per device, reports arrive in the order they were published, except where a
//!   redelivery intervened (a message delivered before);
//! - the duplicates are counted and printed.
//!
//! PostgreSQL and nats-server are required: a missing one fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use iotsync_backlog::{NatsTestCluster, NatsTestServer};
use iotsync_sdk::amqp::AmqpConsumer;
use iotsync_testkit::{pg, PeerProc, ProjectSpec, ServeProcess};

const TOKEN: &str = "cluster-kill-operator-token-01";
const DEVICES: usize = 12;

/// One delivery as a consumer saw it, in the order all consumers saw them.
#[derive(Debug, Clone)]
struct Seen {
    consumer: usize,
    id: String,
    topic: String,
    payload: Value,
    /// 1 for a first delivery (the AMQP header's delivery-count + 1).
    attempt: u32,
}

fn node(dir: &Path, store: &str, nats: &str, name: &str) -> ServeProcess {
    // Short ack time-out and partition lease, so what the killed node held comes back
    // within seconds (defaults: 30 s and 10 s).
    let config = dir.join("cluster.toml");
    std::fs::write(&config, "[delivery]\nack_timeout = \"4s\"\n").unwrap();
    ServeProcess::start(
        Path::new(env!("CARGO_BIN_EXE_iotsync")),
        dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--operator-token",
            TOKEN,
            "--store-url",
            store,
            "--backlog-url",
            nats,
            "--node-name",
            name,
        ],
    )
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// What the test SIGKILLs mid-run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    /// iotsync node 1 (one `nats-server`, R1).
    Node,
    /// The leader of the message stream (three routed `nats-server`s, R3).
    StreamLeader,
}

/// The NATS side of a run: one server, or a 3-server cluster.
enum Nats {
    One(NatsTestServer),
    Three(NatsTestCluster),
}

impl Nats {
    fn urls(&self) -> String {
        match self {
            Nats::One(n) => n.url(),
            Nats::Three(c) => c.urls(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_under_load_loses_nothing_acknowledged() {
    let nats = Nats::One(NatsTestServer::start().expect("nats-server must be installed"));
    run(nats, Victim::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_stream_leader_under_load_loses_nothing_and_publishing_resumes() {
    let cluster = NatsTestCluster::start()
        .await
        .expect("three nats-servers must start (nats-server must be installed)");
    run(Nats::Three(cluster), Victim::StreamLeader).await;
}

async fn run(mut nats: Nats, victim: Victim) {
    let (store, schema) = pg::create_schema("cluster_kill").await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<ServeProcess> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| node(d.path(), &store, &nats.urls(), &format!("n{}", i + 1)))
        .collect();
    let names: Vec<String> = (0..DEVICES).map(|i| format!("fleet{i:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let p = nodes[0]
        .rest(TOKEN)
        .create_project(
            &ProjectSpec::new("cluster-kill")
                .devices(&name_refs)
                .sync_first("amqp"),
        )
        .await;

    // Consumers: consumer k starts on node k and has every node in its list.
    let amqp: Vec<String> = nodes
        .iter()
        .map(|n| n.listener("amqp").to_owned())
        .collect();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let mut consumers = Vec::new();
    for k in 0..3 {
        let list: Vec<&str> = (0..3).map(|j| amqp[(k + j) % 3].as_str()).collect();
        let c = AmqpConsumer::builder()
            .endpoint(list.join(","))
            .app_key(p.app_key.clone())
            .app_secret(p.app_secret.clone())
            .client_id(format!("kill-consumer-{k}"))
            .credit(50)
            .build()
            .unwrap();
        let seen = seen.clone();
        consumers.push(tokio::spawn(async move {
            let mut s = c.stream();
            while let Some(item) = s.next().await {
                let Ok(m) = item else { continue };
                let e = &m.envelope;
                seen.lock().unwrap().push(Seen {
                    consumer: k,
                    id: e.message_id.to_string(),
                    topic: e.topic.clone(),
                    payload: serde_json::from_slice(&e.payload).unwrap_or(Value::Null),
                    attempt: m.attempt,
                });
                let _ = m.ack().await;
            }
        }));
    }

    // Devices: device i starts on node i % 3.
    let mqtt_ports: Vec<String> = nodes
        .iter()
        .map(|n| port_of(n.listener("mqtt")).to_string())
        .collect();
    let creds: Vec<String> = p
        .devices
        .iter()
        .map(|d| format!("{}:{}", d.dn, d.secret))
        .collect();
    let mut fleet = PeerProc::python(
        "mqtt/fleet.py",
        &[
            "--ports".into(),
            mqtt_ports.join(","),
            "--pk".into(),
            p.pk.clone(),
            "--devices".into(),
            creds.join(","),
            "--interval".into(),
            "0.02".into(),
        ],
    );
    fleet.next_event("ready").await;

    // Registry changes through every node; the ones answered 201 must be delivered.
    let apis: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
    let created: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop_rest = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let registry_task = {
        let (created, stop, pid, pk) = (
            created.clone(),
            stop_rest.clone(),
            p.pid.clone(),
            p.pk.clone(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let dn = format!("made{i:04}");
                // A dead node refuses the connection: the change was never made.
                let r = http
                    .post(format!(
                        "{}/api/v1/projects/{pid}/products/{pk}/devices",
                        apis[i % 3]
                    ))
                    .bearer_auth(TOKEN)
                    .json(&json!({"deviceName": dn}))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 201) {
                    created.lock().unwrap().push(dn);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(4)).await;
    // Before the kill: the three consumers share the group, each message to one of them.
    let before = {
        let all = seen.lock().unwrap();
        let mut to: HashMap<&str, BTreeSet<usize>> = HashMap::new();
        for s in all.iter() {
            to.entry(&s.id).or_default().insert(s.consumer);
        }
        let shared: BTreeSet<usize> = all.iter().map(|s| s.consumer).collect();
        assert_eq!(shared.len(), 3, "every node's consumer takes a share");
        let twice: Vec<_> = to.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(twice.is_empty(), "delivered to two consumers: {twice:?}");
        all.len()
    };
    // The fleet's lines so far; what comes after the kill is counted apart.
    let mut lines = fleet.drain();
    let acked_before = lines.iter().filter(|v| v["event"] == "acked").count();
    match &mut nats {
        Nats::One(_) => nodes[0].kill(),
        Nats::Three(c) => {
            let admin = async_nats::connect(c.addrs().unwrap()).await.unwrap();
            let leader = c
                .stream_leader(&admin, "IOTSYNC_D1")
                .await
                .expect("the message stream has a leader");
            c.kill(leader);
            eprintln!("cluster kill: stream leader n{} SIGKILLed", leader + 1);
        }
    }
    eprintln!(
        "cluster kill ({victim:?}): SIGKILL after {before} deliveries, {acked_before} PUBACKs"
    );
    // A stream leader election takes seconds (appends fail meanwhile, and are retried
    // by the devices); then the last two seconds must see reports PUBACKed again.
    tokio::time::sleep(Duration::from_secs(8)).await;
    lines.extend(fleet.drain());
    let late_from = lines.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_rest.store(true, std::sync::atomic::Ordering::Relaxed);
    registry_task.await.unwrap();
    fleet.close_stdin();
    loop {
        let v = fleet.next().await;
        let end = v["event"] == "finished";
        lines.push(v);
        if end {
            break;
        }
    }
    let acked_after = lines.iter().filter(|v| v["event"] == "acked").count() - acked_before;
    let acked_late = lines[late_from..]
        .iter()
        .filter(|v| v["event"] == "acked")
        .count();
    assert!(acked_late > 0, "publishing resumes after the SIGKILL");
    let mut acked: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut moved = Vec::new();
    for v in lines {
        match v["event"].as_str() {
            Some("acked") => {
                acked.insert((
                    v["dn"].as_str().unwrap().to_owned(),
                    v["seq"].as_u64().unwrap(),
                ));
            }
            Some("moved") => moved.push(v),
            _ => {}
        }
    }
    if victim == Victim::Node {
        let killed_port: u64 = mqtt_ports[0].parse().unwrap();
        assert!(
            moved.iter().any(|m| m["from"] == killed_port),
            "node 1's devices reconnect to the other nodes: {moved:?}"
        );
    }
    let created = created.lock().unwrap().clone();
    assert!(!created.is_empty());

    // Wait (bounded) until everything acknowledged to its source was delivered.
    let want_reports = acked.len();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (missing_reports, missing_made) = loop {
        let (reports, made) = delivered(&seen.lock().unwrap());
        let missing_reports: Vec<_> = acked
            .iter()
            .filter(|k| !reports.contains(*k))
            .cloned()
            .collect();
        let missing_made: Vec<_> = created
            .iter()
            .filter(|d| !made.contains(*d))
            .cloned()
            .collect();
        if (missing_reports.is_empty() && missing_made.is_empty()) || Instant::now() > deadline {
            break (missing_reports, missing_made);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all = seen.lock().unwrap().clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for s in &all {
        *per_id.entry(&s.id).or_default() += 1;
    }
    let duplicates: usize = per_id.values().map(|n| n - 1).sum();
    let after_kill: BTreeSet<usize> = all[before..].iter().map(|s| s.consumer).collect();
    eprintln!(
        "cluster kill ({victim:?}): {want_reports} reports PUBACKed ({acked_after} after the kill), {} devices created (201), {} deliveries, \
         {} distinct messages, {duplicates} duplicates, {} device moves; consumers delivering \
         after the kill: {after_kill:?}",
        created.len(),
        all.len(),
        per_id.len(),
        moved.len()
    );
    assert!(
        missing_reports.is_empty(),
        "PUBACKed but never delivered: {missing_reports:?}"
    );
    assert!(
        missing_made.is_empty(),
        "answered 201 but never delivered: {missing_made:?}"
    );
    if victim == Victim::Node {
        assert_eq!(
            after_kill.len(),
            3,
            "the consumer that was on node 1 reconnects to another node and takes messages"
        );
    }

    // Per-device order: among first deliveries that are not redeliveries (attempt 1), a
    // device's reports arrive in the order it published them; a report may come later
    // only as a redelivery (the node or JetStream lost it in transit and it came back
    // after the ack time-out: "except where a redelivery intervened").
    let mut first_seen: BTreeMap<String, Vec<(u64, u32)>> = BTreeMap::new();
    let mut ids_seen: BTreeSet<&str> = BTreeSet::new();
    for s in &all {
        if !ids_seen.insert(&s.id) {
            continue;
        }
        if let Some((dn, seq)) = report_of(s) {
            first_seen.entry(dn).or_default().push((seq, s.attempt));
        }
    }
    let mut overtaken_by_redelivery = 0;
    for (dn, seqs) in &first_seen {
        let fresh: Vec<u64> = seqs
            .iter()
            .filter(|(_, a)| *a == 1)
            .map(|(q, _)| *q)
            .collect();
        for w in fresh.windows(2) {
            assert!(
                w[1] >= w[0],
                "{dn}: report {} delivered after {} with no redelivery between: {seqs:?}",
                w[1],
                w[0]
            );
        }
        overtaken_by_redelivery += seqs.windows(2).filter(|w| w[1].0 < w[0].0).count();
    }
    eprintln!("cluster kill ({victim:?}): {overtaken_by_redelivery} reports came after a later one, each as a redelivery");

    for c in consumers {
        c.abort();
    }
    for n in nodes.iter_mut() {
        n.kill();
    }
    pg::drop_schema(&schema).await;
}

/// The (device, seq) of a fleet report.
fn report_of(s: &Seen) -> Option<(String, u64)> {
    if !s.topic.ends_with("/thing/event/property/post") {
        return None;
    }
    let dn = s.payload["deviceName"].as_str()?.to_owned();
    let seq = s.payload["items"]["Seq"]["value"].as_u64()?;
    Some((dn, seq))
}

/// The reports and the created devices among the deliveries.
fn delivered(all: &[Seen]) -> (BTreeSet<(String, u64)>, BTreeSet<String>) {
    let mut reports = BTreeSet::new();
    let mut made = BTreeSet::new();
    for s in all {
        if let Some(k) = report_of(s) {
            reports.insert(k);
        } else if s.topic.ends_with("/thing/lifecycle") && s.payload["action"] == "create" {
            if let Some(dn) = s.payload["deviceName"].as_str() {
                made.insert(dn.to_owned());
            }
        }
    }
    (reports, made)
}
