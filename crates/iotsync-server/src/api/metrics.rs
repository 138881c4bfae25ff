//! `/metrics` in the Prometheus text format, rendered at scrape time from the backlog's
//! figures (no second copy of the counters to drift).

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;

/// Metric names live here, one place.
pub mod names {
    pub const STACKED: &str = "iotsync_backlog_stacked_messages";
    pub const OLDEST_AGE: &str = "iotsync_backlog_oldest_stacked_age_seconds";
    pub const IN_FLIGHT: &str = "iotsync_backlog_in_flight_messages";
    pub const RETRY_WAITING: &str = "iotsync_backlog_retry_waiting_messages";
    pub const DEAD_LETTERS: &str = "iotsync_backlog_dead_letters";
    pub const CONSUMERS: &str = "iotsync_consumers_connected";
    pub const APPENDED: &str = "iotsync_backlog_appended_total";
    pub const ACKED: &str = "iotsync_backlog_acked_total";
    pub const REDELIVERED: &str = "iotsync_backlog_redelivered_total";
    pub const EXPIRED: &str = "iotsync_backlog_expired_total";
    pub const REJECTED: &str = "iotsync_backlog_rejected_total";
    pub const PAUSED: &str = "iotsync_project_sync_paused";
    pub const INDEX_RESIDENT: &str = "iotsync_backlog_index_memory_bytes";
    pub const INDEX_SPILLED: &str = "iotsync_backlog_index_spilled_bytes";
    pub const AMQP_MERGED: &str = "iotsync_amqp_dispositions_merged_total";
}

/// (name, type, help, rows of (labels, value)).
type Series = (&'static str, &'static str, &'static str, Vec<(String, f64)>);

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn render(State(st): State<ApiState>) -> impl IntoResponse {
    let mut out = String::new();
    let mut series: Vec<Series> = vec![
        (
            names::STACKED,
            "gauge",
            "Messages a group still has to acknowledge.",
            vec![],
        ),
        (
            names::OLDEST_AGE,
            "gauge",
            "Age of the oldest stacked message.",
            vec![],
        ),
        (
            names::IN_FLIGHT,
            "gauge",
            "Deliveries awaiting an outcome.",
            vec![],
        ),
        (
            names::RETRY_WAITING,
            "gauge",
            "Messages waiting for their retry time.",
            vec![],
        ),
        (
            names::DEAD_LETTERS,
            "gauge",
            "Rejected messages in the dead-letter list.",
            vec![],
        ),
        (names::CONSUMERS, "gauge", "Connected consumers.", vec![]),
        (
            names::APPENDED,
            "counter",
            "Messages appended for a group.",
            vec![],
        ),
        (
            names::ACKED,
            "counter",
            "Messages acknowledged by a group.",
            vec![],
        ),
        (names::REDELIVERED, "counter", "Redeliveries.", vec![]),
        (
            names::EXPIRED,
            "counter",
            "Messages removed by retention.",
            vec![],
        ),
        (
            names::REJECTED,
            "counter",
            "Messages rejected to the dead-letter list.",
            vec![],
        ),
        (
            names::PAUSED,
            "gauge",
            "1 while the project's sync is disabled.",
            vec![],
        ),
    ];
    let projects = st.registry.all_sync_settings().await.unwrap_or_default();
    for (pid, _, settings) in projects {
        if !settings.enabled && settings.last_method.is_none() {
            continue;
        }
        let Ok(stats) = st.backlog.stats(&pid).await else {
            continue;
        };
        let live = st.hub.consumers(&pid);
        let p = esc(pid.as_str());
        series[11].3.push((
            format!("project=\"{p}\""),
            f64::from(u8::from(stats.paused)),
        ));
        for g in &stats.groups {
            let l = format!("project=\"{p}\",group=\"{}\"", esc(&g.group));
            let consumers = live.iter().filter(|c| c.group == g.group).count();
            let vals = [
                g.stacked as f64,
                g.oldest_stacked_age_ms.unwrap_or(0) as f64 / 1000.0,
                g.in_flight as f64,
                g.retry_waiting as f64,
                g.dead_letters as f64,
                consumers as f64,
                g.appended_total as f64,
                g.acked_total as f64,
                g.redelivered_total as f64,
                g.expired_total as f64,
                g.rejected_total as f64,
            ];
            for (i, v) in vals.into_iter().enumerate() {
                series[i].3.push((l.clone(), v));
            }
        }
    }
    if let Some(m) = st.backlog.index_memory() {
        series.push((
            names::INDEX_RESIDENT,
            "gauge",
            "Memory held by the backlog index's per-message slots (bounded by delivery.index_memory).",
            vec![(String::new(), m.resident_bytes as f64)],
        ));
        series.push((
            names::INDEX_SPILLED,
            "gauge",
            "Index slots written out to the spill file.",
            vec![(String::new(), m.spilled_bytes as f64)],
        ));
    }
    series.push((
        names::AMQP_MERGED,
        "counter",
        "Consumer disposition frames merged into ranges before the AMQP engine (ADR 0003).",
        vec![(
            String::new(),
            st.hub
                .counters
                .amqp_dispositions_merged
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        )],
    ));
    for (name, kind, help, rows) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
