//! Names, subjects and headers of the JetStream layout (ADR 0013). Pure functions.

use async_nats::HeaderMap;
use iotsync_core::{ConsumerGroup, Envelope, MessageKind, ProjectId, SyncMessage};

pub const STREAM_D1: &str = "IOTSYNC_D1";
pub const STREAM_D7: &str = "IOTSYNC_D7";
pub const STREAM_DEAD: &str = "IOTSYNC_DEAD";
pub const BUCKET_META: &str = "IOTSYNC_META";
pub const BUCKET_OWNERS: &str = "IOTSYNC_OWNERS";
pub const BUCKET_FIGURES: &str = "IOTSYNC_FIGURES";

pub const H_MSG_ID: &str = "Nats-Msg-Id";
pub const H_KEY: &str = "Iotsync-Key";
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

/// The headers a stored message carries: the dedup id, the device (ordering key), and
/// the groups that take it when not all of the project's do. The rest is in the body.
pub fn headers(m: &SyncMessage, only_groups: Option<&[&ConsumerGroup]>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(H_MSG_ID, m.envelope.message_id.as_str());
    h.insert(H_KEY, m.ordering_key.as_str());
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

const BODY_V1: u8 = 1;

/// The body of a stored message: version 1, then length-prefixed project, messageId,
/// kind code, productKey (empty: none), ordering key, topic (u16 lengths for the last
/// two), generateTime (i64 big-endian), then the payload as it came. One allocation to
/// read back, where a header per field cost a map entry each.
pub fn body(m: &SyncMessage) -> Vec<u8> {
    let e = &m.envelope;
    let product = m.product_key.as_ref().map(|p| p.as_str()).unwrap_or("");
    let mut b = Vec::with_capacity(
        24 + m.project_id.as_str().len()
            + e.message_id.as_str().len()
            + product.len()
            + m.ordering_key.len()
            + e.topic.len()
            + e.payload.len(),
    );
    b.push(BODY_V1);
    for s in [
        m.project_id.as_str(),
        e.message_id.as_str(),
        m.kind.code(),
        product,
    ] {
        // Ids and codes are at most 64 bytes (checked at parse).
        b.push(s.len().min(255) as u8);
        b.extend_from_slice(&s.as_bytes()[..s.len().min(255)]);
    }
    for s in [m.ordering_key.as_str(), e.topic.as_str()] {
        let n = s.len().min(u16::MAX as usize);
        b.extend_from_slice(&(n as u16).to_be_bytes());
        b.extend_from_slice(&s.as_bytes()[..n]);
    }
    b.extend_from_slice(&e.generate_time.to_be_bytes());
    b.extend_from_slice(&e.payload);
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("body cut short".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn str8(&mut self) -> Result<&'a str, String> {
        let n = self.take(1)?[0] as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
    fn str16(&mut self) -> Result<&'a str, String> {
        let l = self.take(2)?;
        let n = u16::from_be_bytes([l[0], l[1]]) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())
    }
}

/// Rebuilds a message from a stored body; `Err` says what is wrong.
pub fn decode(body: &[u8]) -> Result<SyncMessage, String> {
    let mut r = Reader(body);
    if r.take(1)?[0] != BODY_V1 {
        return Err("unknown body version".into());
    }
    let project_id: ProjectId = r.str8()?.parse().map_err(|e| format!("{e}"))?;
    let message_id = r.str8()?.parse().map_err(|e| format!("{e}"))?;
    let kind: MessageKind = r.str8()?.parse().map_err(|e| format!("{e}"))?;
    let product_key = match r.str8()? {
        "" => None,
        p => Some(p.parse().map_err(|e| format!("{e}"))?),
    };
    let ordering_key = r.str16()?.to_owned();
    let topic = r.str16()?.to_owned();
    let t = r.take(8)?;
    let mut tb = [0u8; 8];
    tb.copy_from_slice(t);
    Ok(SyncMessage {
        project_id,
        kind,
        product_key,
        ordering_key,
        envelope: Envelope {
            topic,
            message_id,
            generate_time: i64::from_be_bytes(tb),
            payload: r.0.to_vec(),
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
    fn a_message_round_trips_through_its_body() {
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
        let b = body(&m);
        assert_eq!(decode(&b).unwrap(), m);
        for cut in 0..b.len() - m.envelope.payload.len() {
            assert!(decode(&b[..cut]).is_err(), "a body cut at {cut} is refused");
        }
        let mut none = m.clone();
        none.product_key = None;
        assert_eq!(decode(&body(&none)).unwrap(), none);
        assert!(for_group(Some(&h), &g));
        assert!(!for_group(Some(&h), &"g2".parse().unwrap()));
        assert!(for_group(Some(&headers(&m, None)), &"g2".parse().unwrap()));
    }
}
