//! Names, subjects and headers of the JetStream layout (ADR 0013). Pure functions.

use async_nats::HeaderMap;
use iotsync_core::{ConsumerGroup, Envelope, MessageKind, ProjectId, SyncMessage};

pub const STREAM_D1: &str = "IOTSYNC_D1";
pub const STREAM_D7: &str = "IOTSYNC_D7";
pub const STREAM_DEAD: &str = "IOTSYNC_DEAD";
pub const BUCKET_META: &str = "IOTSYNC_META";
pub const BUCKET_OWNERS: &str = "IOTSYNC_OWNERS";

pub const H_MSG_ID: &str = "Nats-Msg-Id";
pub const H_KEY: &str = "Iotsync-Key";
pub const H_KIND: &str = "Iotsync-Kind";
pub const H_PRODUCT: &str = "Iotsync-Product";
pub const H_TOPIC: &str = "Iotsync-Topic";
pub const H_TIME: &str = "Iotsync-Time";
pub const H_PROJECT: &str = "Iotsync-Project";
pub const H_ID: &str = "Iotsync-Id";
/// Present when not every group of the project takes the message: the ones that do.
pub const H_GROUPS: &str = "Iotsync-Groups";
/// Dead letters: the group, the deliveries before and when.
pub const H_DEAD_GROUP: &str = "Iotsync-Dead-Group";
pub const H_DEAD_ATTEMPTS: &str = "Iotsync-Dead-Attempts";
pub const H_DEAD_AT: &str = "Iotsync-Dead-At";

/// A retention class: one stream each, since `MaxAge` is per stream on 2.9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    D1,
    D7,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::D1, Class::D7];
    pub const DAY_MS: i64 = 24 * 3600 * 1000;

    pub fn for_retention(retention_ms: i64) -> Class {
        if retention_ms <= Self::DAY_MS {
            Class::D1
        } else {
            Class::D7
        }
    }

    pub fn token(self) -> &'static str {
        match self {
            Class::D1 => "d1",
            Class::D7 => "d7",
        }
    }

    pub fn stream(self) -> &'static str {
        match self {
            Class::D1 => STREAM_D1,
            Class::D7 => STREAM_D7,
        }
    }

    pub fn max_age_ms(self) -> i64 {
        match self {
            Class::D1 => Self::DAY_MS,
            Class::D7 => 7 * Self::DAY_MS,
        }
    }
}

/// The partition of an ordering key: FNV-1a 64, stable across nodes and versions.
pub fn partition_of(ordering_key: &str, partitions: u16) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ordering_key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u16
}

pub fn subject(class: Class, project: &ProjectId, partition: u16) -> String {
    format!("iotsync.{}.{project}.{partition}", class.token())
}

pub fn dead_subject(project: &ProjectId, group: &ConsumerGroup) -> String {
    format!("iotsync.dead.{project}.{group}")
}

pub fn dead_subjects_of(project: &ProjectId) -> String {
    format!("iotsync.dead.{project}.*")
}

/// Durable consumer name. Project ids and group names both allow `_` and `-`, so the
/// project's length comes first to keep names unambiguous.
pub fn consumer_name(
    project: &ProjectId,
    group: &ConsumerGroup,
    class: Class,
    partition: u16,
) -> String {
    format!(
        "{}-{project}-{group}-{}-{partition}",
        project.as_str().len(),
        class.token()
    )
}

pub fn project_key(project: &ProjectId) -> String {
    format!("project.{project}")
}

pub fn owner_key(project: &ProjectId, group: &ConsumerGroup, partition: u16) -> String {
    format!("own.{project}.{group}.{partition}")
}

pub fn member_key(project: &ProjectId, group: &ConsumerGroup, node: &str) -> String {
    format!("mem.{project}.{group}.{node}")
}

/// The headers a stored message carries (its body is the payload).
pub fn headers(m: &SyncMessage, only_groups: Option<&[&ConsumerGroup]>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_MSG_ID, m.envelope.message_id.as_str());
    h.insert(H_ID, m.envelope.message_id.as_str());
    h.insert(H_PROJECT, m.project_id.as_str());
    h.insert(H_KEY, m.ordering_key.as_str());
    h.insert(H_KIND, m.kind.code());
    if let Some(p) = &m.product_key {
        h.insert(H_PRODUCT, p.as_str());
    }
    h.insert(H_TOPIC, m.envelope.topic.as_str());
    h.insert(H_TIME, m.envelope.generate_time.to_string().as_str());
    if let Some(groups) = only_groups {
        let names: Vec<&str> = groups.iter().map(|g| g.as_str()).collect();
        h.insert(H_GROUPS, names.join(",").as_str());
    }
    h
}

/// Whether a string can travel in a header value.
pub fn fits_header(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n') && s.trim() == s
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

/// Rebuilds a message from its headers and body; `Err` names what is missing.
pub fn decode(h: Option<&HeaderMap>, payload: &[u8]) -> Result<SyncMessage, String> {
    let h = h.ok_or("no headers")?;
    let need = |n: &str| get(h, n).ok_or_else(|| format!("no {n} header"));
    let project_id: ProjectId = need(H_PROJECT)?.parse().map_err(|e| format!("{e}"))?;
    let message_id = need(H_ID)?.parse().map_err(|e| format!("{e}"))?;
    let kind: MessageKind = need(H_KIND)?.parse().map_err(|e| format!("{e}"))?;
    let product_key = match get(h, H_PRODUCT) {
        Some(p) => Some(p.parse().map_err(|e| format!("{e}"))?),
        None => None,
    };
    let generate_time = need(H_TIME)?
        .parse::<i64>()
        .map_err(|e| format!("{H_TIME}: {e}"))?;
    Ok(SyncMessage {
        project_id,
        kind,
        product_key,
        ordering_key: need(H_KEY)?.to_owned(),
        envelope: Envelope {
            topic: need(H_TOPIC)?.to_owned(),
            message_id,
            generate_time,
            payload: payload.to_vec(),
        },
    })
}

/// Whether `group` takes a pulled message (the `Iotsync-Groups` header, if any).
pub fn for_group(h: Option<&HeaderMap>, group: &ConsumerGroup) -> bool {
    match h.and_then(|h| get(h, H_GROUPS)) {
        None => true,
        Some(list) => list.split(',').any(|g| g == group.as_str()),
    }
}

pub fn header_i64(h: Option<&HeaderMap>, name: &str) -> Option<i64> {
    h.and_then(|h| get(h, name)).and_then(|v| v.parse().ok())
}

pub fn header_str<'a>(h: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    h.and_then(|h| get(h, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_stable_and_in_range() {
        assert_eq!(partition_of("dev-1", 8), partition_of("dev-1", 8));
        for i in 0..1000 {
            assert!(partition_of(&format!("d{i}"), 8) < 8);
        }
        // FNV-1a of the empty string, fixed so that nodes of other versions agree.
        assert_eq!(
            partition_of("", 1000),
            (0xcbf2_9ce4_8422_2325u64 % 1000) as u16
        );
    }

    #[test]
    fn consumer_names_do_not_collide_across_underscores() {
        let a = consumer_name(&"a_b".parse().unwrap(), &"c".parse().unwrap(), Class::D1, 0);
        let b = consumer_name(&"a".parse().unwrap(), &"b_c".parse().unwrap(), Class::D1, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn a_message_round_trips_through_headers() {
        let p: ProjectId = "p1".parse().unwrap();
        let m = SyncMessage {
            project_id: p.clone(),
            kind: MessageKind::PropertyPost,
            product_key: Some("a1prod".parse().unwrap()),
            ordering_key: "dev1".into(),
            envelope: Envelope {
                topic: "/a1prod/dev1/thing/event/property/post".into(),
                message_id: "m1".parse().unwrap(),
                generate_time: 1_700_000_000_123,
                payload: b"{\"a\":1}".to_vec(),
            },
        };
        let g: ConsumerGroup = "g1".parse().unwrap();
        let h = headers(&m, Some(&[&g]));
        assert_eq!(decode(Some(&h), &m.envelope.payload).unwrap(), m);
        assert!(for_group(Some(&h), &g));
        assert!(!for_group(Some(&h), &"g2".parse().unwrap()));
        assert!(for_group(Some(&headers(&m, None)), &"g2".parse().unwrap()));
    }
}
