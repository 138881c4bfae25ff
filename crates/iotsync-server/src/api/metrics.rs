//! `/metrics` in the Prometheus text format through the `prometheus` crate, rendered at
//! scrape time from the backlog's figures (no second copy of the counters to drift), plus
//! the standard `process_*` metrics (CPU seconds, resident and virtual memory, open and
//! maximum file descriptors, threads, start time).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use prometheus::process_collector::ProcessCollector;
use prometheus::{CounterVec, Encoder, GaugeVec, Opts, Registry, TextEncoder};

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
    pub const DROPPED: &str = "iotsync_backlog_dropped_total";
    pub const REPLAYED: &str = "iotsync_backlog_replayed_total";
    pub const PAUSED: &str = "iotsync_project_sync_paused";
    pub const INDEX_RESIDENT: &str = "iotsync_backlog_index_memory_bytes";
    pub const INDEX_SPILLED: &str = "iotsync_backlog_index_spilled_bytes";
    pub const AMQP_MERGED: &str = "iotsync_amqp_dispositions_merged_total";
    pub const NODE_INFO: &str = "iotsync_node_info";
    // Group alerts (docs/alerts.md); the figures they judge are the backlog series above.
    pub const GROUP_ALERTING: &str = "iotsync_group_alerting";
    pub const ALERT_STACKED_MAX: &str = "iotsync_group_alert_stacked_max";
    pub const ALERT_OLDEST_AGE_MAX: &str = "iotsync_group_alert_oldest_age_max_seconds";
    pub const ALERT_DEAD_LETTERS_MAX: &str = "iotsync_group_alert_dead_letters_max";
    pub const ALERT_WEBHOOK_SENT: &str = "iotsync_alert_webhook_sent_total";
    pub const ALERT_WEBHOOK_FAILED: &str = "iotsync_alert_webhook_failed_total";
}

/// The per-group series, in the order of [`group_values`]: (name, help, is a counter).
const GROUP_SERIES: [(&str, &str, bool); 13] = [
    (
        names::STACKED,
        "Messages a group still has to acknowledge.",
        false,
    ),
    (
        names::OLDEST_AGE,
        "Age of the oldest stacked message.",
        false,
    ),
    (names::IN_FLIGHT, "Deliveries awaiting an outcome.", false),
    (
        names::RETRY_WAITING,
        "Messages waiting for their retry time.",
        false,
    ),
    (
        names::DEAD_LETTERS,
        "Rejected messages in the dead-letter list.",
        false,
    ),
    (names::CONSUMERS, "Connected consumers.", false),
    (names::APPENDED, "Messages appended for a group.", true),
    (names::ACKED, "Messages acknowledged by a group.", true),
    (names::REDELIVERED, "Redeliveries.", true),
    (names::EXPIRED, "Messages removed by retention.", true),
    (
        names::REJECTED,
        "Messages rejected to the dead-letter list.",
        true,
    ),
    (
        names::DROPPED,
        "Messages a group owed and dropped by a purge or a seek.",
        true,
    ),
    (names::REPLAYED, "Messages owed again by a seek.", true),
];

fn group_values(g: &iotsync_backlog::GroupStats, consumers: usize) -> [f64; 13] {
    [
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
        g.dropped_total as f64,
        g.replayed_total as f64,
    ]
}

/// A gauge or a counter family; a counter's value is the backlog's own total, so it is
/// set (once, on a fresh registry) rather than counted here.
enum Family {
    Gauge(GaugeVec),
    Counter(CounterVec),
}

impl Family {
    fn new(
        reg: &Registry,
        name: &str,
        help: &str,
        counter: bool,
        labels: &[&str],
    ) -> prometheus::Result<Family> {
        let opts = Opts::new(name, help);
        let (f, collector): (Family, Box<dyn prometheus::core::Collector>) = if counter {
            let c = CounterVec::new(opts, labels)?;
            (Family::Counter(c.clone()), Box::new(c))
        } else {
            let g = GaugeVec::new(opts, labels)?;
            (Family::Gauge(g.clone()), Box::new(g))
        };
        reg.register(collector)?;
        Ok(f)
    }

    fn set(&self, labels: &[&str], v: f64) {
        match self {
            Family::Gauge(g) => g.with_label_values(labels).set(v),
            Family::Counter(c) => c.with_label_values(labels).inc_by(v.max(0.0)),
        }
    }
}

/// Renders every metric on a registry made for this scrape: the figures come from the
/// backlog, the hub and the process (`process_*`, the standard process collector).
pub async fn render(State(st): State<ApiState>) -> Response {
    match gather(&st).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics unavailable; see the server log",
            )
                .into_response()
        }
    }
}

async fn gather(st: &ApiState) -> prometheus::Result<String> {
    let reg = Registry::new();
    if let Err(e) = reg.register(Box::new(ProcessCollector::for_self())) {
        tracing::warn!(error = %e, "process metrics unavailable");
    }
    let groups: Vec<Family> = GROUP_SERIES
        .iter()
        .map(|(name, help, counter)| Family::new(&reg, name, help, *counter, &["project", "group"]))
        .collect::<prometheus::Result<_>>()?;
    let paused = Family::new(
        &reg,
        names::PAUSED,
        "1 while the project's sync is disabled.",
        false,
        &["project"],
    )?;
    let alerting_family = Family::new(
        &reg,
        names::GROUP_ALERTING,
        "1 while the group is over one of its alert thresholds.",
        false,
        &["project", "group"],
    )?;
    let alerting = st.alerts.alerting();
    let projects = st.registry.all_sync_settings().await.unwrap_or_default();
    for (pid, _, settings) in projects {
        if !settings.enabled && settings.last_method.is_none() {
            continue;
        }
        let Ok(stats) = st.backlog.stats(&pid).await else {
            continue;
        };
        let live = st.hub.consumers(&pid);
        paused.set(&[pid.as_str()], f64::from(u8::from(stats.paused)));
        for g in &stats.groups {
            let consumers = live
                .iter()
                .filter(|c| c.group == g.group)
                .count()
                .max(usize::try_from(g.consumers).unwrap_or(usize::MAX));
            for (family, v) in groups.iter().zip(group_values(g, consumers)) {
                family.set(&[pid.as_str(), &g.group], v);
            }
            let on = alerting.contains_key(&(pid.clone(), g.group.clone()));
            alerting_family.set(&[pid.as_str(), &g.group], f64::from(u8::from(on)));
        }
    }
    alert_thresholds(st, &reg).await?;
    if let Some(m) = st.backlog.index_memory() {
        Family::new(
            &reg,
            names::INDEX_RESIDENT,
            "Memory held by the backlog index's per-message slots (bounded by delivery.index_memory).",
            false,
            &[],
        )?
        .set(&[], m.resident_bytes as f64);
        Family::new(
            &reg,
            names::INDEX_SPILLED,
            "Index slots written out to the spill file.",
            false,
            &[],
        )?
        .set(&[], m.spilled_bytes as f64);
    }
    Family::new(
        &reg,
        names::AMQP_MERGED,
        "Consumer disposition frames merged into ranges before the AMQP engine (ADR 0003).",
        true,
        &[],
    )?
    .set(
        &[],
        st.hub
            .counters
            .amqp_dispositions_merged
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    Family::new(
        &reg,
        names::NODE_INFO,
        "1, labelled with this node's name (node.name).",
        false,
        &["node"],
    )?
    .set(&[&st.node_name], 1.0);
    let mut out = String::new();
    TextEncoder::new().encode_utf8(&reg.gather(), &mut out)?;
    Ok(out)
}

/// The groups' alert thresholds (only those set), to compare the backlog series with in
/// Prometheus rules, and the webhook's counters.
async fn alert_thresholds(st: &ApiState, reg: &Registry) -> prometheus::Result<()> {
    let families = [
        (
            names::ALERT_STACKED_MAX,
            "The group's stackedMax alert threshold.",
        ),
        (
            names::ALERT_OLDEST_AGE_MAX,
            "The group's oldestAgeMaxMs alert threshold, in seconds.",
        ),
        (
            names::ALERT_DEAD_LETTERS_MAX,
            "The group's deadLettersMax alert threshold.",
        ),
    ]
    .iter()
    .map(|(name, help)| Family::new(reg, name, help, false, &["project", "group"]))
    .collect::<prometheus::Result<Vec<_>>>()?;
    for a in st.registry.all_group_alerts().await.unwrap_or_default() {
        let t = &a.thresholds;
        let values = [
            t.stacked_max.map(|v| v as f64),
            t.oldest_age_max_ms.map(|v| v as f64 / 1000.0),
            t.dead_letters_max.map(|v| v as f64),
        ];
        for (family, v) in families.iter().zip(values) {
            if let Some(v) = v {
                family.set(&[a.project_id.as_str(), a.group.as_str()], v);
            }
        }
    }
    let (sent, failed) = st.alerts.webhook_counts();
    for (name, help, v) in [
        (
            names::ALERT_WEBHOOK_SENT,
            "Alert webhook events delivered (a 2xx answer).",
            sent,
        ),
        (
            names::ALERT_WEBHOOK_FAILED,
            "Alert webhook events given up on after every retry, or dropped on a full queue.",
            failed,
        ),
    ] {
        Family::new(reg, name, help, true, &[])?.set(&[], v as f64);
    }
    Ok(())
}
