//! Shared helpers of the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use iotsync_backlog::{BacklogConfig, EmbeddedBacklog, RecoveryReport};
use iotsync_core::{ConsumerGroup, Envelope, ManualClock, MessageKind, ProjectId, SyncMessage};

pub const T0: i64 = 1_700_000_000_000;

pub fn project(s: &str) -> ProjectId {
    s.parse().unwrap()
}

pub fn group(s: &str) -> ConsumerGroup {
    s.parse().unwrap()
}

pub fn msg(project: &ProjectId, key: &str, id: &str, generate_time: i64) -> SyncMessage {
    SyncMessage {
        project_id: project.clone(),
        kind: MessageKind::PropertyPost,
        product_key: Some("a1prod".parse().unwrap()),
        ordering_key: key.to_owned(),
        envelope: Envelope {
            topic: format!("/a1prod/{key}/thing/event/property/post"),
            message_id: id.parse().unwrap(),
            generate_time,
            payload: format!(r#"{{"id":"{id}","v":1}}"#).into_bytes(),
        },
    }
}

pub fn config() -> BacklogConfig {
    BacklogConfig {
        jitter_seed: Some(7),
        ..BacklogConfig::default()
    }
}

pub fn open(
    dir: &Path,
    clock: &ManualClock,
    cfg: BacklogConfig,
) -> (EmbeddedBacklog, RecoveryReport) {
    EmbeddedBacklog::open(dir, cfg, Arc::new(clock.clone())).unwrap()
}

pub fn ids(ds: &[iotsync_backlog::Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| d.message.envelope.message_id.to_string())
        .collect()
}

/// A user-data message (a binding) of the device `key`.
pub fn user_msg(project: &ProjectId, key: &str, id: &str, generate_time: i64) -> SyncMessage {
    let mut m = msg(project, key, id, generate_time);
    m.kind = MessageKind::Binding(iotsync_core::BindingOperation::Bind);
    m.envelope.topic = format!("/a1prod/{key}/thing/user/binding");
    m
}

/// Per device, the message numbers (ids `<device>-<n>`) in the order first handed out;
/// panics on a step back that no redelivery explains (`strict`: none at all, whatever
/// the attempt says: a handover's give-back reaches the new owner as attempt 2 though no
/// consumer had it). Returns the number of repeated deliveries.
pub fn check_device_order<'a>(
    log: impl IntoIterator<Item = (&'a str, u32)>,
    strict: bool,
) -> usize {
    let mut last: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut repeated = 0;
    for (id, attempt) in log {
        if !seen.insert(id) {
            repeated += 1;
            continue;
        }
        let (dev, n) = id.split_once('-').expect("ids are <device>-<n>");
        let n: usize = n.parse().expect("ids are <device>-<n>");
        if let Some(prev) = last.get(dev) {
            assert!(
                n > *prev || (attempt > 1 && !strict),
                "{dev}: {n} first delivered after {prev} at attempt {attempt}"
            );
        }
        last.insert(dev, n);
    }
    repeated
}
