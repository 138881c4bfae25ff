//! The figures only a node knows (in flight, waiting for a retry, the oldest message it
//! holds, its consumers and its counters), shared so that `stats` on any node sums
//! them over the cluster (ADR 0013, "Figures"). Every node puts its own per project into
//! the bucket `IOTSYNC_FIGURES` (`fig.<project>.<node>`, JSON) once a second when they
//! changed, and at least every `REFRESH` so the bucket's `MaxAge` keeps only live nodes;
//! `stats` adds the other nodes' documents to its own live figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use iotsync_core::ProjectId;
use serde::{Deserialize, Serialize};

use super::{Counters, Inner};

/// How often a node publishes its figures (when they changed).
pub(super) const PERIOD: Duration = Duration::from_secs(1);
/// A node's document is put again at least this often, changed or not.
const REFRESH: Duration = Duration::from_secs(10);
/// The bucket's `MaxAge`: a node silent this long (stopped, killed) drops out of the sums.
pub(super) const MAX_AGE: Duration = Duration::from_secs(30);

/// One node's figures of one project.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodeFigures {
    pub groups: BTreeMap<String, GroupFigures>,
    pub discarded_no_group: u64,
    pub dropped_by_group_delete: u64,
}

/// One node's figures of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GroupFigures {
    pub in_flight: u64,
    pub retry_waiting: u64,
    /// generateTime of the oldest message this node holds (buffered, in flight, waiting).
    pub oldest_generate_time: Option<i64>,
    pub consumers: u64,
    pub appended: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub expired: u64,
    pub rejected: u64,
    pub nacked: u64,
    pub timed_out: u64,
    pub dropped: u64,
}

impl GroupFigures {
    pub(super) fn new(
        in_flight: u64,
        retry_waiting: u64,
        oldest: Option<i64>,
        consumers: u64,
        c: Counters,
    ) -> Self {
        Self {
            in_flight,
            retry_waiting,
            oldest_generate_time: oldest,
            consumers,
            appended: c.appended,
            acked: c.acked,
            redelivered: c.redelivered,
            expired: c.expired,
            rejected: c.rejected,
            nacked: c.nacked,
            timed_out: c.timed_out,
            dropped: c.dropped,
        }
    }

    /// Adds another node's figures of the same group.
    pub(super) fn add(&mut self, o: &GroupFigures) {
        self.in_flight += o.in_flight;
        self.retry_waiting += o.retry_waiting;
        self.oldest_generate_time = match (self.oldest_generate_time, o.oldest_generate_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.consumers += o.consumers;
        self.appended += o.appended;
        self.acked += o.acked;
        self.redelivered += o.redelivered;
        self.expired += o.expired;
        self.rejected += o.rejected;
        self.nacked += o.nacked;
        self.timed_out += o.timed_out;
        self.dropped += o.dropped;
    }
}

pub(super) fn key(project: &ProjectId, node: &str) -> String {
    format!("fig.{project}.{node}")
}

impl Inner {
    /// This node's live figures of every project it has state of.
    pub(super) fn own_figures(&self) -> HashMap<ProjectId, NodeFigures> {
        let st = self.lock();
        st.projects
            .iter()
            .map(|(p, ps)| {
                let groups = ps
                    .groups
                    .iter()
                    .map(|(g, gs)| {
                        (
                            g.to_string(),
                            GroupFigures::new(
                                gs.local.in_flight() as u64,
                                gs.local.retry_waiting() as u64,
                                gs.local.oldest_generate_time(),
                                gs.consumers.len() as u64,
                                gs.counters,
                            ),
                        )
                    })
                    .collect();
                (
                    p.clone(),
                    NodeFigures {
                        groups,
                        discarded_no_group: ps.discarded_no_group,
                        dropped_by_group_delete: ps.dropped_by_group_delete,
                    },
                )
            })
            .collect()
    }

    /// The other nodes' figures of `project` (those that published within `MAX_AGE`).
    pub(super) async fn peer_figures(&self, project: &ProjectId) -> Vec<NodeFigures> {
        let prefix = format!("fig.{project}.");
        let own = key(project, &self.node);
        let mut keys = Vec::new();
        if let Ok(mut ks) = self.figures.keys().await {
            while let Some(Ok(k)) = ks.next().await {
                if k.starts_with(&prefix) && k != own {
                    keys.push(k);
                }
            }
        }
        let mut out = Vec::new();
        for k in keys {
            if let Ok(Some(v)) = self.figures.get(&k).await {
                match serde_json::from_slice::<NodeFigures>(&v) {
                    Ok(f) => out.push(f),
                    Err(e) => tracing::debug!(key = %k, error = %e, "unreadable node figures"),
                }
            }
        }
        out
    }
}

/// Publishes this node's figures while the engine lives.
pub(super) async fn run(inner: Arc<Inner>) {
    let mut last: HashMap<ProjectId, (NodeFigures, std::time::Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(PERIOD).await;
        for (p, f) in inner.own_figures() {
            let fresh = last
                .get(&p)
                .is_some_and(|(prev, at)| *prev == f && at.elapsed() < REFRESH);
            if fresh {
                continue;
            }
            let Ok(body) = serde_json::to_vec(&f) else {
                continue;
            };
            match inner
                .figures
                .put(key(&p, &inner.node), Bytes::from(body))
                .await
            {
                Ok(_) => {
                    last.insert(p, (f, std::time::Instant::now()));
                }
                Err(e) => tracing::debug!(project = %p, error = %e, "publishing node figures"),
            }
        }
    }
}
