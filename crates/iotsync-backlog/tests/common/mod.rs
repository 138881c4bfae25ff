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
