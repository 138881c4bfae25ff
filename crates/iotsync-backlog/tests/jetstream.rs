//! What only the JetStream engine has to show: de-duplication by messageId, nothing
//! acknowledged by `append` lost across a nats-server restart, and two engines ("nodes")
//! on one NATS sharing a group: each message to one of them, per-device order kept,
//! also while partitions are handed over; a dead node's partitions and un-acked
//! messages going to the other node; a pause made on one node holding on the other; a
//! purge made on one node dropping what the other had pulled.
//! Each test starts its own `nats-server -js` on a free port and fails if it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step panics the test

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use iotsync_backlog::{
    Backlog, ConsumerId, GroupSpec, JetStreamBacklog, JetStreamConfig, NatsTestServer,
};
use iotsync_core::{ConsumerGroup, ProjectId, SystemClock};

fn config(node: &str, partitions: u16) -> JetStreamConfig {
    JetStreamConfig {
        partitions,
        node_name: Some(node.to_owned()),
        lease_ttl: Duration::from_secs(2),
        pull_expires: Duration::from_millis(300),
        ..JetStreamConfig::default()
    }
}

async fn engine(nats: &NatsTestServer, node: &str, partitions: u16) -> Arc<JetStreamBacklog> {
    Arc::new(
        JetStreamBacklog::connect(&nats.url(), config(node, partitions), Arc::new(SystemClock))
            .await
            .unwrap(),
    )
}

fn now_ms() -> i64 {
    iotsync_core::Clock::now_ms(&SystemClock)
}

/// One delivery as a consumer saw it, in the order leases happened across all nodes.
#[derive(Debug, Clone)]
struct Seen {
    node: &'static str,
    id: String,
    attempt: u32,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Leases and acks until `stop`; every lease is logged under the shared lock, so the log
/// order is the order in which the nodes handed messages out.
fn consume(
    b: Arc<JetStreamBacklog>,
    node: &'static str,
    consumer: ConsumerId,
    p: ProjectId,
    g: ConsumerGroup,
    log: Log,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut w = b.watch(&p, &g).unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let ds = {
                let ds = b.lease(&p, &g, consumer, 64).await.unwrap();
                let mut l = log.lock().unwrap();
                for d in &ds {
                    l.push(Seen {
                        node,
                        id: d.message.envelope.message_id.to_string(),
                        attempt: d.attempt,
                    });
                }
                ds
            };
            if ds.is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(50), w.changed()).await;
                continue;
            }
            for d in ds {
                b.ack(&d.token).await.unwrap();
            }
        }
        b.consumer_gone(consumer).await.unwrap();
    })
}

/// One consumer (id 1) on `node` until `total` distinct messages were delivered (within
/// `secs`); everything it saw, in order.
async fn consume_all(
    b: &Arc<JetStreamBacklog>,
    node: &'static str,
    p: &ProjectId,
    g: &ConsumerGroup,
    total: usize,
    secs: u64,
) -> Vec<Seen> {
    let log: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = consume(
        b.clone(),
        node,
        ConsumerId(1),
        p.clone(),
        g.clone(),
        log.clone(),
        stop.clone(),
    );
    wait_for(&format!("{node} to deliver every message"), secs, || {
        let l = log.lock().unwrap();
        l.iter().map(|s| &s.id).collect::<HashSet<_>>().len() >= total
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    let l = log.lock().unwrap();
    l.clone()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn device_msg(p: &ProjectId, dev: usize, n: usize) -> iotsync_core::SyncMessage {
    msg(p, &format!("dev{dev}"), &format!("d{dev}-{n}"), now_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_id_is_stored_once() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let b = engine(&nats, "node-a", 2).await;
    let (p, g) = (project("p1"), group("g1"));
    b.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    let m = msg(&p, "k1", "m1", now_ms());
    b.append(vec![m.clone()]).await.unwrap();
    // A producer retrying after a lost answer: the same messageId again, twice.
    b.append(vec![m.clone(), m.clone()]).await.unwrap();
    b.append(vec![msg(&p, "k1", "m2", now_ms())]).await.unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 && Instant::now() < until {
        got.extend(ids(&b.lease(&p, &g, ConsumerId(1), 10).await.unwrap()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    got.extend(ids(&b.lease(&p, &g, ConsumerId(1), 10).await.unwrap()));
    assert_eq!(got, ["m1", "m2"]);
    let s = b.stats(&p).await.unwrap();
    assert_eq!(s.stored_messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_loses_nothing_that_append_acknowledged() {
    let mut nats = NatsTestServer::start().expect("nats-server must be installed");
    let b = engine(&nats, "node-a", 4).await;
    let (p, g) = (project("p1"), group("g1"));
    b.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    let total = 2000;
    for chunk in 0..(total / 100) {
        let batch = (0..100)
            .map(|i| device_msg(&p, i % 20, chunk * 100 + i))
            .collect();
        assert_eq!(b.append(batch).await.unwrap().stored, 100);
    }
    // SIGKILL: what append acknowledged must be there after the restart.
    nats.kill_and_restart().unwrap();
    let l = consume_all(&b, "node-a", &p, &g, total, 60).await;
    let distinct: HashSet<&String> = l.iter().map(|s| &s.id).collect();
    assert_eq!(distinct.len(), total);
    check_device_order(l.iter().map(|s| (s.id.as_str(), s.attempt)), false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_group_each_message_to_one_in_device_order_across_a_handover() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let parts = 4;
    let a = engine(&nats, "node-a", parts).await;
    let b = engine(&nats, "node-b", parts).await;
    let (p, g) = (project("p1"), group("g1"));
    // Declared on both nodes: idempotent, one group for the cluster.
    a.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    b.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    assert_eq!(b.groups(&p).await.unwrap().len(), 1);

    let log: Log = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ta = consume(
        a.clone(),
        "node-a",
        ConsumerId(1),
        p.clone(),
        g.clone(),
        log.clone(),
        stop.clone(),
    );
    wait_for("node a to own every partition", 15, || {
        a.owned_partitions(&p, &g).len() == usize::from(parts)
    })
    .await;
    let (devices, per_device) = (40, 100);
    let total = devices * per_device;
    let produce = |from: usize, to: usize| {
        let (a, p) = (a.clone(), p.clone());
        async move {
            for n in from..to {
                let batch = (0..devices).map(|d| device_msg(&p, d, n)).collect();
                a.append(batch).await.unwrap();
                // A steady stream, so that the handover happens under load.
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    };
    produce(0, per_device / 2).await;
    // Node b's consumer arrives while node a is busy: partitions are handed over.
    let tb = consume(
        b.clone(),
        "node-b",
        ConsumerId(1),
        p.clone(),
        g.clone(),
        log.clone(),
        stop.clone(),
    );
    let producer = tokio::spawn(produce(per_device / 2, per_device));
    wait_for("the partitions to be split between the nodes", 30, || {
        let (na, nb) = (a.owned_partitions(&p, &g), b.owned_partitions(&p, &g));
        na.len() == 2 && nb.len() == 2 && na.iter().all(|x| !nb.contains(x))
    })
    .await;
    producer.await.unwrap();
    wait_for("every message", 90, || {
        let l = log.lock().unwrap();
        l.iter().map(|s| &s.id).collect::<HashSet<_>>().len() >= total
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    ta.await.unwrap();
    tb.await.unwrap();

    let l = log.lock().unwrap();
    let distinct: HashSet<&String> = l.iter().map(|s| &s.id).collect();
    assert_eq!(distinct.len(), total, "every message delivered");
    let on_b = l.iter().filter(|s| s.node == "node-b").count();
    assert!(on_b > 0, "node b got none");
    assert!(l.len() - on_b > 0, "node a got none");
    let redelivered = check_device_order(l.iter().map(|s| (s.id.as_str(), s.attempt)), true);
    eprintln!(
        "two nodes: {total} messages, {} deliveries, {redelivered} redelivered, {on_b} on node b",
        l.len()
    );
    // Nothing failed: a handover settles the old owner's deliveries first and gives back
    // only what it had not handed out, so each message went to exactly one consumer.
    assert_eq!((l.len(), redelivered), (total, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_partitions_and_unacked_messages_go_to_the_other_node() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let cfg = |node: &str| JetStreamConfig {
        // JetStream's AckWait is the ack time-out: a dead node's deliveries come back
        // after it.
        ack_timeout: Duration::from_secs(2),
        ..config(node, 4)
    };
    let connect = |node: &'static str| {
        let url = nats.url();
        let c = cfg(node);
        async move {
            Arc::new(
                JetStreamBacklog::connect(&url, c, Arc::new(SystemClock))
                    .await
                    .unwrap(),
            )
        }
    };
    let a = connect("node-a").await;
    let (p, g) = (project("p1"), group("g1"));
    a.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    let total = 400;
    let batch = (0..total).map(|i| device_msg(&p, i % 10, i)).collect();
    a.append(batch).await.unwrap();
    // Node a leases some and dies before acking them (dropped: its connection closes
    // and it renews no lease).
    let mut held = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while held.len() < 100 && Instant::now() < until {
        held.extend(
            a.lease(&p, &g, ConsumerId(1), 100 - held.len())
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held.len(), 100);
    let held_ids: HashSet<String> = held
        .iter()
        .map(|d| d.message.envelope.message_id.to_string())
        .collect();
    drop(held);
    drop(a);

    let b = connect("node-b").await;
    let l = consume_all(&b, "node-b", &p, &g, total, 30).await;
    // What node a had in flight comes again as a redelivery.
    for s in l.iter().filter(|s| held_ids.contains(&s.id)) {
        assert!(
            s.attempt >= 2,
            "{} was in flight on the dead node: {s:?}",
            s.id
        );
    }
    check_device_order(l.iter().map(|s| (s.id.as_str(), s.attempt)), false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_on_one_node_stops_leases_on_the_other() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let a = engine(&nats, "node-a", 2).await;
    let b = engine(&nats, "node-b", 2).await;
    let (p, g) = (project("p1"), group("g1"));
    a.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    // Node b learns of the group from KV and leases from it.
    assert!(b.lease(&p, &g, ConsumerId(7), 10).await.unwrap().is_empty());
    a.set_paused(&p, true).await.unwrap();
    a.append(vec![msg(&p, "k1", "m1", now_ms())]).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !b.stats(&p).await.unwrap().paused {
        assert!(Instant::now() < until, "node b never saw the pause");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(b.lease(&p, &g, ConsumerId(7), 10).await.unwrap().is_empty());
    a.set_paused(&p, false).await.unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < until {
        got = b.lease(&p, &g, ConsumerId(7), 10).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ids(&got), ["m1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_node_drops_what_the_other_node_had_pulled() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let a = engine(&nats, "node-a", 4).await;
    let b = engine(&nats, "node-b", 4).await;
    let (p, g) = (project("p1"), group("g1"));
    a.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    // Consumers on both nodes (leasing nothing yet: credit 0), so they split the partitions.
    a.lease(&p, &g, ConsumerId(1), 0).await.unwrap();
    b.lease(&p, &g, ConsumerId(1), 0).await.unwrap();
    wait_for("the partitions to be split", 30, || {
        a.owned_partitions(&p, &g).len() == 2 && b.owned_partitions(&p, &g).len() == 2
    })
    .await;
    let old = (0..40).map(|i| device_msg(&p, i, 0)).collect();
    a.append(old).await.unwrap();
    wait_for("both nodes to pull the old messages", 10, || {
        a.buffered(&p, &g) + b.buffered(&p, &g) == 40 && b.buffered(&p, &g) > 0
    })
    .await;
    let out = a.purge(&p, &g).await.unwrap();
    assert_eq!(out.dropped, 40);
    wait_for("node b to drop what it had pulled", 10, || {
        b.buffered(&p, &g) == 0
    })
    .await;
    let new = (0..40).map(|i| device_msg(&p, i, 1)).collect();
    a.append(new).await.unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(15);
    while got.len() < 40 && Instant::now() < until {
        for node in [&a, &b] {
            for d in node.lease(&p, &g, ConsumerId(1), 100).await.unwrap() {
                got.push(d.message.envelope.message_id.to_string());
                node.ack(&d.token).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for node in [&a, &b] {
        for d in node.lease(&p, &g, ConsumerId(1), 100).await.unwrap() {
            got.push(d.message.envelope.message_id.to_string());
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..40).map(|i| format!("d{i}-1")).collect();
    want.sort();
    assert_eq!(got, want, "only what was appended after the purge");
}

/// What only a node knows (in flight, its consumers, its counters, the oldest message it
/// holds) is summed over the cluster: stats on node b show node a's consumer and leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_any_node_sum_every_nodes_figures() {
    let nats = NatsTestServer::start().expect("nats-server must be installed");
    let a = engine(&nats, "node-a", 2).await;
    let b = engine(&nats, "node-b", 2).await;
    let (p, g) = (project("p1"), group("g1"));
    a.create_group(&p, &g, &GroupSpec::all()).await.unwrap();
    let old = now_ms() - 60_000;
    b.append(
        (0..6)
            .map(|i| msg(&p, &format!("k{i}"), &format!("m{i}"), old + i))
            .collect(),
    )
    .await
    .unwrap();
    // Node a leases everything (its consumer is the only member) and acks two.
    let mut held = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while held.len() < 6 {
        assert!(Instant::now() < until, "node a leased {} of 6", held.len());
        held.extend(a.lease(&p, &g, ConsumerId(1), 10).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in held.drain(..2) {
        a.ack(&d.token).await.unwrap();
    }
    let want = |s: &iotsync_backlog::ProjectStats| {
        let gs = s.groups.iter().find(|x| x.group == g.as_str()).unwrap();
        (
            gs.in_flight,
            gs.consumers,
            gs.acked_total,
            gs.appended_total,
        )
    };
    let local = a.stats(&p).await.unwrap();
    assert_eq!(want(&local).0, 4, "{local:?}");
    // Node b: its own appends plus node a's leases, consumer and acks (published ≤ 1 s).
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let s = b.stats(&p).await.unwrap();
        if want(&s) == (4, 1, 2, 6) {
            let gs = s.groups.iter().find(|x| x.group == g.as_str()).unwrap();
            let age = gs.oldest_stacked_age_ms.unwrap_or(0);
            assert!(age >= 59_000, "the oldest age comes from node a: {gs:?}");
            break;
        }
        assert!(
            Instant::now() < until,
            "node b's stats never summed node a's: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
