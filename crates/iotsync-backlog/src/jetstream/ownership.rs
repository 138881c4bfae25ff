//! Who pulls which (group, partition): leases in the `IOTSYNC_OWNERS` bucket (ADR 0013).
//!
//! Every `lease_ttl / 3` (or at once when a group gets its first or loses its last
//! consumer here, when a member joins or leaves the bucket, when a lease is given up,
//! and every 100 ms while one of its own handovers waits to settle) a node renews its membership of the groups it has consumers of and
//! its partition leases, claims free partitions up to ⌈P / members⌉, and hands over its
//! excess: it stops leasing from such a partition, waits until nothing of it is in
//! flight here and its pulls have stopped, naks what it had buffered, and only then
//! deletes its lease.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use iotsync_core::{ConsumerGroup, ProjectId};

use super::{nak_payload, wire, Inner, Owned};

/// Reply subjects to nak, each with the delay it still had to wait.
type Released = Vec<(async_nats::Subject, i64)>;

pub(super) async fn run(inner: Arc<Inner>) {
    let period = (inner.cfg.lease_ttl / 3).max(Duration::from_millis(100));
    // A handover waits for this node's in-flight messages of the partition to settle:
    // look again soon while one is under way, not a whole period later.
    let draining_period = Duration::from_millis(100).min(period);
    let mut watcher = AbortOnDrop(tokio::spawn(watch_changes(inner.clone())));
    loop {
        let draining = match cycle(&inner).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "partition ownership cycle failed");
                false
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(if draining { draining_period } else { period }) => {}
            _ = inner.wake_owners.notified() => {}
        }
        if watcher.0.is_finished() {
            // Ended with the connection: watch again (it is only a shortcut; the
            // periodic cycle alone is correct).
            watcher = AbortOnDrop(tokio::spawn(watch_changes(inner.clone())));
        }
    }
}

/// The watch task ends with the ownership task (the engine aborts that one on drop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the cycle when the membership changes (a member joins or leaves) or a lease is
/// given up, so partitions move within a round trip instead of a lease period. Lease
/// renewals (puts of known keys) do not wake it.
async fn watch_changes(inner: Arc<Inner>) {
    use async_nats::jetstream::kv::Operation;
    let mut w = match inner.owners.watch(">").await {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "cannot watch the ownership bucket");
            return;
        }
    };
    let mut members: HashSet<String> = HashSet::new();
    while let Some(Ok(e)) = w.next().await {
        let removed = matches!(e.operation, Operation::Delete | Operation::Purge);
        let changed = if e.key.starts_with("mem.") {
            if removed {
                members.remove(&e.key)
            } else {
                members.insert(e.key.clone())
            }
        } else {
            e.key.starts_with("own.") && removed
        };
        if changed {
            inner.wake_owners.notify_one();
        }
    }
}

struct GroupView {
    p: ProjectId,
    g: ConsumerGroup,
    has_consumers: bool,
    was_member: bool,
    owned: Vec<(u16, u64, bool)>,
}

/// One round; true while a handover of this node is still under way.
async fn cycle(inner: &Arc<Inner>) -> Result<bool, String> {
    let views: Vec<GroupView> = {
        let st = inner.lock();
        let watched = |p: &ProjectId, g: &ConsumerGroup| {
            st.watches
                .get(&(p.clone(), g.clone()))
                .is_some_and(|w| w.receiver_count() > 0)
        };
        st.projects
            .iter()
            .flat_map(|(p, ps)| {
                ps.groups.iter().map(move |(g, gs)| GroupView {
                    p: p.clone(),
                    g: g.clone(),
                    has_consumers: !gs.consumers.is_empty() || watched(p, g),
                    was_member: gs.member,
                    owned: gs
                        .owned
                        .iter()
                        .map(|(part, o)| (*part, o.revision, o.draining))
                        .collect(),
                })
            })
            .collect()
    };
    for v in &views {
        let key = wire::member_key(&v.p, &v.g, &inner.node);
        if v.has_consumers {
            inner
                .owners
                .put(&key, Bytes::from(inner.node.clone()))
                .await
                .map_err(|e| e.to_string())?;
        } else if v.was_member {
            let _ = inner.owners.delete(&key).await;
        }
        if let Some(gs) = inner.lock().group_mut(&v.p, &v.g) {
            gs.member = v.has_consumers;
        }
    }
    let mut keys = HashSet::new();
    if let Ok(mut ks) = inner.owners.keys().await {
        while let Some(k) = ks.next().await {
            if let Ok(k) = k {
                keys.insert(k);
            }
        }
    }
    let parts = inner.partitions;
    for v in &views {
        // Renew what we hold (draining ones too: the lease stays ours until handed over).
        for (part, rev, _) in &v.owned {
            let key = wire::owner_key(&v.p, &v.g, *part);
            match inner
                .owners
                .update(&key, Bytes::from(inner.node.clone()), *rev)
                .await
            {
                Ok(new_rev) => {
                    if let Some(o) = inner
                        .lock()
                        .group_mut(&v.p, &v.g)
                        .and_then(|gs| gs.owned.get_mut(part))
                    {
                        o.revision = new_rev;
                    }
                }
                Err(e) => {
                    tracing::warn!(project = %v.p, group = %v.g, partition = part, error = %e, "partition lease lost");
                    lose(inner, &v.p, &v.g, *part).await;
                }
            }
        }
        let mut active: Vec<u16> = v
            .owned
            .iter()
            .filter(|(_, _, d)| !d)
            .map(|(p, _, _)| *p)
            .collect();
        let target = if v.has_consumers {
            let prefix = format!("mem.{}.{}.", v.p, v.g);
            let members = keys
                .iter()
                .filter(|k| k.starts_with(&prefix))
                .count()
                .max(1);
            (usize::from(parts)).div_ceil(members)
        } else {
            0
        };
        if active.len() < target {
            // Start at a node-specific offset so that nodes joining together collide less.
            let start = (wire::partition_of(&inner.node, parts) as usize) % usize::from(parts);
            for i in 0..usize::from(parts) {
                if active.len() >= target {
                    break;
                }
                let part = ((start + i) % usize::from(parts)) as u16;
                let key = wire::owner_key(&v.p, &v.g, part);
                if keys.contains(&key) || v.owned.iter().any(|(p, _, _)| *p == part) {
                    continue;
                }
                if let Ok(rev) = inner
                    .owners
                    .create(&key, Bytes::from(inner.node.clone()))
                    .await
                {
                    let stop = Arc::new(AtomicBool::new(false));
                    let tasks = inner.spawn_pulls(&v.p, &v.g, part, &stop);
                    let mut st = inner.lock();
                    match st.group_mut(&v.p, &v.g) {
                        Some(gs) => {
                            gs.owned.insert(
                                part,
                                Owned {
                                    revision: rev,
                                    draining: false,
                                    stop,
                                    tasks,
                                },
                            );
                            active.push(part);
                        }
                        None => {
                            stop.store(true, Ordering::Relaxed);
                            for t in tasks {
                                t.abort();
                            }
                        }
                    }
                }
            }
        } else if active.len() > target {
            active.sort_unstable();
            let excess = active.len() - target;
            let mut st = inner.lock();
            if let Some(gs) = st.group_mut(&v.p, &v.g) {
                for part in active.iter().rev().take(excess) {
                    if let Some(o) = gs.owned.get_mut(part) {
                        o.draining = true;
                        o.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        hand_over(inner, &v.p, &v.g).await;
    }
    let st = inner.lock();
    let draining = st
        .projects
        .values()
        .flat_map(|ps| ps.groups.values())
        .any(|gs| gs.owned.values().any(|o| o.draining));
    Ok(draining)
}

/// Finishes the handovers of a group whose partitions are settled here.
async fn hand_over(inner: &Arc<Inner>, p: &ProjectId, g: &ConsumerGroup) {
    let now = inner.clock.now_ms();
    let ready: Vec<(u16, u64, Released)> = {
        let mut st = inner.lock();
        let st = &mut *st;
        let Some(gs) = st.projects.get_mut(p).and_then(|ps| ps.groups.get_mut(g)) else {
            return;
        };
        let parts: Vec<u16> = gs
            .owned
            .iter()
            .filter(|(part, o)| {
                o.draining
                    && o.tasks.iter().all(|t| t.is_finished())
                    && gs.local.in_flight_of_part(**part) == 0
            })
            .map(|(part, _)| *part)
            .collect();
        parts
            .into_iter()
            .filter_map(|part| {
                let o = gs.owned.remove(&part)?;
                let (replies, gens) = gs.local.take_part(part, now);
                for gen in gens {
                    st.leases.remove(&gen);
                }
                Some((part, o.revision, replies))
            })
            .collect()
    };
    for (part, rev, replies) in ready {
        for (r, delay) in replies {
            let _ = inner.client.publish(r, nak_payload(delay)).await;
        }
        let _ = inner.client.flush().await;
        let _ = inner
            .owners
            .delete_expect_revision(wire::owner_key(p, g, part), Some(rev))
            .await;
        tracing::debug!(project = %p, group = %g, partition = part, "partition handed over");
    }
}

/// A lease this node no longer holds: stop pulling and let its buffered messages go.
async fn lose(inner: &Arc<Inner>, p: &ProjectId, g: &ConsumerGroup, part: u16) {
    let now = inner.clock.now_ms();
    let replies: Released = {
        let mut st = inner.lock();
        let st = &mut *st;
        let Some(gs) = st.projects.get_mut(p).and_then(|ps| ps.groups.get_mut(g)) else {
            return;
        };
        if let Some(o) = gs.owned.remove(&part) {
            o.abort();
        }
        let (replies, gens) = gs.local.take_part(part, now);
        for gen in gens {
            st.leases.remove(&gen);
        }
        replies
    };
    for (r, delay) in replies {
        let _ = inner.client.publish(r, nak_payload(delay)).await;
    }
}
