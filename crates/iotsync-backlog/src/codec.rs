//! On-disk records of the log. Every record is framed as
//! `[len: u32 LE][crc32(body): u32 LE][body: len bytes]`; the first byte of the body is
//! the record tag. Integers are little-endian; strings carry a u8 or u16 length prefix.
//!
//! The log is the only persistent structure: replaying it in order rebuilds the index.

use iotsync_core::{DataClass, Envelope, GroupFilter, MessageKind, ProjectId, SyncMessage};

use crate::types::{GroupRetry, GroupSpec};

/// Frame header: length + checksum.
pub(crate) const FRAME_HEADER: usize = 8;
/// Largest body accepted when scanning (guards against reading garbage lengths).
pub(crate) const MAX_BODY: usize = 32 * 1024 * 1024;

pub(crate) const TAG_MSG: u8 = 2;
pub(crate) const TAG_ACK: u8 = 3;
pub(crate) const TAG_REJECT: u8 = 4;
pub(crate) const TAG_DEAD_RETRY: u8 = 5;
pub(crate) const TAG_DEAD_DROP: u8 = 6;
pub(crate) const TAG_GROUP_CREATE: u8 = 7;
pub(crate) const TAG_GROUP_DELETE: u8 = 8;
pub(crate) const TAG_RETENTION: u8 = 9;
pub(crate) const TAG_PAUSED: u8 = 10;
pub(crate) const TAG_EXPIRE: u8 = 11;
pub(crate) const TAG_PROJECT_STATE: u8 = 12;
pub(crate) const TAG_RELOCATED: u8 = 13;
/// A project snapshot that also carries each group's spec and the group-delete counter
/// (written from now on; `TAG_PROJECT_STATE` is still read).
pub(crate) const TAG_PROJECT_STATE2: u8 = 14;
/// A group's spec (filter, retry) was set: after its create record, or changed.
pub(crate) const TAG_GROUP_SPEC: u8 = 15;
/// A run of consecutive messages was leased to a group with this attempt count (so
/// attempt counts survive a restart).
pub(crate) const TAG_LEASED: u8 = 16;
/// A relocated message that also carries each group's attempt count (written from now
/// on; `TAG_RELOCATED` is still read).
pub(crate) const TAG_RELOCATED2: u8 = 17;
/// A project snapshot that also carries `keepAcknowledged` and each group's seek/purge
/// counters (written from now on; the older ones are still read).
pub(crate) const TAG_PROJECT_STATE3: u8 = 18;
/// A group was sought to a time (or purged: `from_ms == i64::MAX`) and got a new
/// generation: everything it took from `from_ms` on is owed again, what it owed before
/// is dropped.
pub(crate) const TAG_SEEK: u8 = 19;
/// The project's `keepAcknowledged` setting changed.
pub(crate) const TAG_KEEP_ACKED: u8 = 20;
/// A relocated message that also carries who took it, who dropped it, when it was last
/// acknowledged and its expiry mark (written from now on).
pub(crate) const TAG_RELOCATED3: u8 = 21;
/// The highest tag a frame may carry.
const TAG_MAX: u8 = TAG_RELOCATED3;

/// Byte offset of the `owners` field inside a message body (tag, proj, pseq).
pub(crate) const MSG_OWNERS_AT: usize = 1 + 4 + 8;

/// Counters of a group as persisted in a project snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupCounters {
    pub appended: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub expired: u64,
    pub rejected: u64,
    pub nacked: u64,
    pub timed_out: u64,
    pub unreadable: u64,
    /// (message) drops by purge or seek: what the group owed and will not get.
    pub dropped: u64,
    /// Messages owed again by a seek (acknowledged or dropped before it).
    pub replayed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupSnapshot {
    pub slot: u8,
    pub gen: u32,
    pub start_pseq: u64,
    pub name: String,
    pub counters: GroupCounters,
    pub spec: GroupSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProjectSnapshot {
    pub proj: u32,
    pub id: String,
    pub next_pseq: u64,
    pub retention_ms: i64,
    pub paused: bool,
    pub next_gen: u32,
    pub discarded: u64,
    pub dropped_by_group_delete: u64,
    pub keep_acked: bool,
    pub groups: Vec<GroupSnapshot>,
}

/// What a relocated copy keeps of a message's retention state (`TAG_RELOCATED3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetainMarks {
    pub takers: u32,
    pub dropped: u32,
    pub acked_s: u32,
    pub meta: u16,
}

/// A dead-letter mark carried by a relocated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadMark {
    pub group: u8,
    pub attempts: u32,
    pub at_ms: i64,
}

/// The routing facts of a message record, decoded without copying the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MsgHead {
    pub proj: u32,
    pub pseq: u64,
    pub owners: u32,
    pub generate_time: i64,
    pub key_hash: u32,
    pub id_hash: u16,
}

/// A decoded record, as replay sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Msg(MsgHead),
    Relocated {
        head: MsgHead,
        dead: Vec<DeadMark>,
        /// Attempt counts per group slot at relocation (`None` in the older format).
        tries: Option<Vec<(u8, u32)>>,
        /// Retention state at relocation (`None` before `TAG_RELOCATED3`).
        retain: Option<RetainMarks>,
    },
    Ack {
        proj: u32,
        group: u8,
        pseq: u64,
    },
    Reject {
        proj: u32,
        group: u8,
        pseq: u64,
        attempts: u32,
        at_ms: i64,
    },
    DeadRetry {
        proj: u32,
        group: u8,
        pseq: u64,
    },
    DeadDrop {
        proj: u32,
        group: u8,
        pseq: u64,
    },
    GroupCreate {
        proj: u32,
        group: u8,
        gen: u32,
        start_pseq: u64,
        name: String,
    },
    GroupDelete {
        proj: u32,
        group: u8,
    },
    GroupSpec {
        proj: u32,
        group: u8,
        gen: u32,
        spec: GroupSpec,
    },
    Leased {
        proj: u32,
        group: u8,
        first: u64,
        count: u32,
        attempts: u32,
    },
    Retention {
        proj: u32,
        ms: i64,
    },
    Paused {
        proj: u32,
        paused: bool,
    },
    Expire {
        proj: u32,
        cutoff_s: u32,
    },
    Seek {
        proj: u32,
        group: u8,
        gen: u32,
        from_ms: i64,
    },
    KeepAcked {
        proj: u32,
        keep: bool,
    },
    ProjectState(ProjectSnapshot),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DecodeError(pub String);

fn derr(what: &str) -> DecodeError {
    DecodeError(what.to_owned())
}

/// The ordering-key hash kept in memory (per-key order within a group). A collision only
/// serialises two keys more than needed; it never reorders.
pub(crate) fn key_hash(key: &str) -> u32 {
    crc32fast::hash(key.as_bytes())
}

/// 16 bits of a message id's hash, kept in its slot: a lookup by id reads the body only
/// of the slots whose hash matches (1 in 65 536 of the others).
pub(crate) fn id_hash(id: &str) -> u16 {
    (crc32fast::hash(id.as_bytes()) >> 16) as u16
}

/// Appends framed records to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Enc {
    pub buf: Vec<u8>,
    start: usize,
}

impl Enc {
    fn begin(&mut self, tag: u8) {
        self.start = self.buf.len();
        self.buf.extend_from_slice(&[0u8; FRAME_HEADER]);
        self.buf.push(tag);
    }
    /// Closes the record opened by `begin`; returns (offset, framed length).
    fn end(&mut self) -> (usize, usize) {
        let body = &self.buf[self.start + FRAME_HEADER..];
        let len = body.len() as u32;
        let crc = crc32fast::hash(body);
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[self.start + 4..self.start + 8].copy_from_slice(&crc.to_le_bytes());
        (self.start, self.buf.len() - self.start)
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn str8(&mut self, s: &str) {
        let b = s.as_bytes();
        let n = b.len().min(u8::MAX as usize);
        self.buf.push(n as u8);
        self.buf.extend_from_slice(&b[..n]);
    }
    fn str16(&mut self, s: &str) {
        let b = s.as_bytes();
        let n = b.len().min(u16::MAX as usize);
        self.buf.extend_from_slice(&(n as u16).to_le_bytes());
        self.buf.extend_from_slice(&b[..n]);
    }

    /// A message record. Returns (offset, framed length).
    pub fn msg(&mut self, proj: u32, pseq: u64, owners: u32, m: &SyncMessage) -> (usize, usize) {
        self.begin(TAG_MSG);
        self.u32(proj);
        self.u64(pseq);
        self.u32(owners);
        self.i64(m.envelope.generate_time);
        self.str8(m.kind.code());
        match &m.product_key {
            Some(pk) => {
                self.u8(1);
                self.str8(pk.as_str());
            }
            None => self.u8(0),
        }
        self.str16(&m.ordering_key);
        self.str16(&m.envelope.topic);
        self.str8(m.envelope.message_id.as_str());
        self.u32(m.envelope.payload.len() as u32);
        self.buf.extend_from_slice(&m.envelope.payload);
        self.end()
    }

    /// A relocated copy of a message record: current owners and dead-letter marks, then
    /// the original body.
    pub fn relocated(
        &mut self,
        dead: &[DeadMark],
        tries: &[(u8, u32)],
        retain: RetainMarks,
        owners: u32,
        original_body: &[u8],
    ) {
        self.begin(TAG_RELOCATED3);
        self.u8(dead.len() as u8);
        for d in dead {
            self.u8(d.group);
            self.u32(d.attempts);
            self.i64(d.at_ms);
        }
        self.u8(tries.len() as u8);
        for (g, a) in tries {
            self.u8(*g);
            self.u32(*a);
        }
        self.u32(retain.takers);
        self.u32(retain.dropped);
        self.u32(retain.acked_s);
        self.buf.extend_from_slice(&retain.meta.to_le_bytes());
        let inner = self.buf.len();
        self.buf.extend_from_slice(original_body);
        if self.buf.len() >= inner + MSG_OWNERS_AT + 4 {
            self.buf[inner + MSG_OWNERS_AT..inner + MSG_OWNERS_AT + 4]
                .copy_from_slice(&owners.to_le_bytes());
        }
        self.end();
    }

    fn group_op(&mut self, tag: u8, proj: u32, group: u8, pseq: u64) {
        self.begin(tag);
        self.u32(proj);
        self.u8(group);
        self.u64(pseq);
        self.end();
    }
    pub fn ack(&mut self, proj: u32, group: u8, pseq: u64) {
        self.group_op(TAG_ACK, proj, group, pseq)
    }
    pub fn dead_retry(&mut self, proj: u32, group: u8, pseq: u64) {
        self.group_op(TAG_DEAD_RETRY, proj, group, pseq)
    }
    pub fn dead_drop(&mut self, proj: u32, group: u8, pseq: u64) {
        self.group_op(TAG_DEAD_DROP, proj, group, pseq)
    }
    pub fn reject(&mut self, proj: u32, group: u8, pseq: u64, attempts: u32, at_ms: i64) {
        self.begin(TAG_REJECT);
        self.u32(proj);
        self.u8(group);
        self.u64(pseq);
        self.u32(attempts);
        self.i64(at_ms);
        self.end();
    }
    pub fn group_create(&mut self, proj: u32, group: u8, gen: u32, start_pseq: u64, name: &str) {
        self.begin(TAG_GROUP_CREATE);
        self.u32(proj);
        self.u8(group);
        self.u32(gen);
        self.u64(start_pseq);
        self.str8(name);
        self.end();
    }
    pub fn group_spec(&mut self, proj: u32, group: u8, gen: u32, spec: &GroupSpec) {
        self.begin(TAG_GROUP_SPEC);
        self.u32(proj);
        self.u8(group);
        self.u32(gen);
        self.spec(spec);
        self.end();
    }
    pub fn leased(&mut self, proj: u32, group: u8, first: u64, count: u32, attempts: u32) {
        self.begin(TAG_LEASED);
        self.u32(proj);
        self.u8(group);
        self.u64(first);
        self.u32(count);
        self.u32(attempts);
        self.end();
    }
    fn spec(&mut self, spec: &GroupSpec) {
        let f = &spec.filter;
        let flags = f.data_classes.is_some() as u8
            | (f.kinds.is_some() as u8) << 1
            | (f.products.is_some() as u8) << 2;
        self.u8(flags);
        if let Some(dc) = &f.data_classes {
            let m = dc.iter().fold(0u8, |m, c| {
                m | match c {
                    DataClass::Device => 1,
                    DataClass::User => 2,
                }
            });
            self.u8(m);
        }
        if let Some(kinds) = &f.kinds {
            let m = kinds.iter().fold(0u32, |m, k| {
                m | MessageKind::ALL
                    .iter()
                    .position(|a| a == k)
                    .map_or(0, |i| 1 << i)
            });
            self.u32(m);
        }
        if let Some(products) = &f.products {
            let n = products.len().min(u16::MAX as usize);
            self.buf.extend_from_slice(&(n as u16).to_le_bytes());
            for p in &products[..n] {
                self.str8(p.as_str());
            }
        }
        match &spec.retry {
            GroupRetry::Backoff => self.u8(0),
            GroupRetry::Schedule {
                delays_ms,
                max_deliveries,
            } => {
                self.u8(1);
                let n = delays_ms.len().min(u8::MAX as usize);
                self.u8(n as u8);
                for d in &delays_ms[..n] {
                    self.u64(*d);
                }
                self.u32(*max_deliveries);
            }
        }
    }
    pub fn group_delete(&mut self, proj: u32, group: u8) {
        self.begin(TAG_GROUP_DELETE);
        self.u32(proj);
        self.u8(group);
        self.end();
    }
    pub fn retention(&mut self, proj: u32, ms: i64) {
        self.begin(TAG_RETENTION);
        self.u32(proj);
        self.i64(ms);
        self.end();
    }
    pub fn paused(&mut self, proj: u32, paused: bool) {
        self.begin(TAG_PAUSED);
        self.u32(proj);
        self.u8(paused as u8);
        self.end();
    }
    pub fn expire(&mut self, proj: u32, cutoff_s: u32) {
        self.begin(TAG_EXPIRE);
        self.u32(proj);
        self.u32(cutoff_s);
        self.end();
    }
    pub fn seek(&mut self, proj: u32, group: u8, gen: u32, from_ms: i64) {
        self.begin(TAG_SEEK);
        self.u32(proj);
        self.u8(group);
        self.u32(gen);
        self.i64(from_ms);
        self.end();
    }
    pub fn keep_acked(&mut self, proj: u32, keep: bool) {
        self.begin(TAG_KEEP_ACKED);
        self.u32(proj);
        self.u8(keep as u8);
        self.end();
    }
    pub fn project_state(&mut self, s: &ProjectSnapshot) {
        self.begin(TAG_PROJECT_STATE3);
        self.u32(s.proj);
        self.str8(&s.id);
        self.u64(s.next_pseq);
        self.i64(s.retention_ms);
        self.u8(s.paused as u8);
        self.u32(s.next_gen);
        self.u64(s.discarded);
        self.u8(s.groups.len() as u8);
        for g in &s.groups {
            self.u8(g.slot);
            self.u32(g.gen);
            self.u64(g.start_pseq);
            self.str8(&g.name);
            let c = &g.counters;
            for v in [
                c.appended,
                c.acked,
                c.redelivered,
                c.expired,
                c.rejected,
                c.nacked,
                c.timed_out,
                c.unreadable,
            ] {
                self.u64(v);
            }
            self.spec(&g.spec);
        }
        self.u64(s.dropped_by_group_delete);
        self.u8(s.keep_acked as u8);
        for g in &s.groups {
            self.u64(g.counters.dropped);
            self.u64(g.counters.replayed);
        }
        self.end();
    }
}

/// Reads fields from a record body.
struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| derr("record shorter than its fields"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    fn str8(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| derr("string is not UTF-8"))
    }
    fn str16(&mut self) -> Result<&'a str, DecodeError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        let n = u16::from_le_bytes(a) as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| derr("string is not UTF-8"))
    }
    fn done(&self) -> Result<(), DecodeError> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(derr("trailing bytes after record"))
        }
    }
}

fn spec(d: &mut Dec<'_>) -> Result<GroupSpec, DecodeError> {
    let flags = d.u8()?;
    let mut filter = GroupFilter::default();
    if flags & 1 != 0 {
        let m = d.u8()?;
        let mut v = Vec::new();
        if m & 1 != 0 {
            v.push(DataClass::Device);
        }
        if m & 2 != 0 {
            v.push(DataClass::User);
        }
        filter.data_classes = Some(v);
    }
    if flags & 2 != 0 {
        let m = d.u32()?;
        filter.kinds = Some(
            MessageKind::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| m & (1 << i) != 0)
                .map(|(_, k)| *k)
                .collect(),
        );
    }
    if flags & 4 != 0 {
        let mut a = [0u8; 2];
        a.copy_from_slice(d.take(2)?);
        let n = u16::from_le_bytes(a) as usize;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(
                d.str8()?
                    .parse()
                    .map_err(|_| derr("group filter has a bad productKey"))?,
            );
        }
        filter.products = Some(v);
    }
    let retry = match d.u8()? {
        0 => GroupRetry::Backoff,
        1 => {
            let n = d.u8()? as usize;
            let mut delays_ms = Vec::with_capacity(n);
            for _ in 0..n {
                delays_ms.push(d.u64()?);
            }
            GroupRetry::Schedule {
                delays_ms,
                max_deliveries: d.u32()?,
            }
        }
        other => return Err(DecodeError(format!("unknown group retry kind {other}"))),
    };
    Ok(GroupSpec { filter, retry })
}

/// The routing facts of a message body (tag included).
fn msg_head(d: &mut Dec<'_>) -> Result<MsgHead, DecodeError> {
    if d.u8()? != TAG_MSG {
        return Err(derr("relocated record does not wrap a message"));
    }
    let proj = d.u32()?;
    let pseq = d.u64()?;
    let owners = d.u32()?;
    let generate_time = d.i64()?;
    d.str8()?;
    if d.u8()? == 1 {
        d.str8()?;
    }
    let key = d.str16()?;
    d.str16()?;
    let id = d.str8()?;
    Ok(MsgHead {
        proj,
        pseq,
        owners,
        generate_time,
        key_hash: key_hash(key),
        id_hash: id_hash(id),
    })
}

fn tries_marks(d: &mut Dec<'_>) -> Result<Vec<(u8, u32)>, DecodeError> {
    let n = d.u8()? as usize;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((d.u8()?, d.u32()?));
    }
    Ok(v)
}

/// (group slot, attempts) of a relocated message.
pub(crate) type AttemptMarks = Vec<(u8, u32)>;

/// Reads the marks in front of a relocated record's message body.
type RelocationMarks = (Vec<DeadMark>, Option<AttemptMarks>, Option<RetainMarks>);

fn relocation_marks(d: &mut Dec<'_>, tag: u8) -> Result<RelocationMarks, DecodeError> {
    d.u8()?;
    let dead = dead_marks(d)?;
    let tries = if tag == TAG_RELOCATED2 || tag == TAG_RELOCATED3 {
        Some(tries_marks(d)?)
    } else {
        None
    };
    let retain = if tag == TAG_RELOCATED3 {
        let (takers, dropped, acked_s) = (d.u32()?, d.u32()?, d.u32()?);
        let m = d.take(2)?;
        Some(RetainMarks {
            takers,
            dropped,
            acked_s,
            meta: u16::from_le_bytes([m[0], m[1]]),
        })
    } else {
        None
    };
    Ok((dead, tries, retain))
}

fn dead_marks(d: &mut Dec<'_>) -> Result<Vec<DeadMark>, DecodeError> {
    let n = d.u8()? as usize;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(DeadMark {
            group: d.u8()?,
            attempts: d.u32()?,
            at_ms: d.i64()?,
        });
    }
    Ok(v)
}

/// Decodes a record body (checksum already verified).
pub(crate) fn decode(body: &[u8]) -> Result<Record, DecodeError> {
    let mut d = Dec::new(body);
    let tag = *body.first().ok_or_else(|| derr("empty record"))?;
    Ok(match tag {
        TAG_MSG => Record::Msg(msg_head(&mut d)?),
        TAG_RELOCATED | TAG_RELOCATED2 | TAG_RELOCATED3 => {
            let (dead, tries, retain) = relocation_marks(&mut d, tag)?;
            Record::Relocated {
                head: msg_head(&mut d)?,
                dead,
                tries,
                retain,
            }
        }
        _ => {
            d.u8()?;
            let r = match tag {
                TAG_ACK | TAG_DEAD_RETRY | TAG_DEAD_DROP => {
                    let (proj, group, pseq) = (d.u32()?, d.u8()?, d.u64()?);
                    match tag {
                        TAG_ACK => Record::Ack { proj, group, pseq },
                        TAG_DEAD_RETRY => Record::DeadRetry { proj, group, pseq },
                        _ => Record::DeadDrop { proj, group, pseq },
                    }
                }
                TAG_REJECT => Record::Reject {
                    proj: d.u32()?,
                    group: d.u8()?,
                    pseq: d.u64()?,
                    attempts: d.u32()?,
                    at_ms: d.i64()?,
                },
                TAG_GROUP_CREATE => Record::GroupCreate {
                    proj: d.u32()?,
                    group: d.u8()?,
                    gen: d.u32()?,
                    start_pseq: d.u64()?,
                    name: d.str8()?.to_owned(),
                },
                TAG_GROUP_DELETE => Record::GroupDelete {
                    proj: d.u32()?,
                    group: d.u8()?,
                },
                TAG_GROUP_SPEC => Record::GroupSpec {
                    proj: d.u32()?,
                    group: d.u8()?,
                    gen: d.u32()?,
                    spec: spec(&mut d)?,
                },
                TAG_LEASED => Record::Leased {
                    proj: d.u32()?,
                    group: d.u8()?,
                    first: d.u64()?,
                    count: d.u32()?,
                    attempts: d.u32()?,
                },
                TAG_RETENTION => Record::Retention {
                    proj: d.u32()?,
                    ms: d.i64()?,
                },
                TAG_PAUSED => Record::Paused {
                    proj: d.u32()?,
                    paused: d.u8()? != 0,
                },
                TAG_EXPIRE => Record::Expire {
                    proj: d.u32()?,
                    cutoff_s: d.u32()?,
                },
                TAG_SEEK => Record::Seek {
                    proj: d.u32()?,
                    group: d.u8()?,
                    gen: d.u32()?,
                    from_ms: d.i64()?,
                },
                TAG_KEEP_ACKED => Record::KeepAcked {
                    proj: d.u32()?,
                    keep: d.u8()? != 0,
                },
                TAG_PROJECT_STATE | TAG_PROJECT_STATE2 | TAG_PROJECT_STATE3 => {
                    let v3 = tag == TAG_PROJECT_STATE3;
                    let v2 = tag == TAG_PROJECT_STATE2 || v3;
                    let proj = d.u32()?;
                    let id = d.str8()?.to_owned();
                    let next_pseq = d.u64()?;
                    let retention_ms = d.i64()?;
                    let paused = d.u8()? != 0;
                    let next_gen = d.u32()?;
                    let discarded = d.u64()?;
                    let n = d.u8()? as usize;
                    let mut groups = Vec::with_capacity(n);
                    for _ in 0..n {
                        let slot = d.u8()?;
                        let gen = d.u32()?;
                        let start_pseq = d.u64()?;
                        let name = d.str8()?.to_owned();
                        let counters = GroupCounters {
                            appended: d.u64()?,
                            acked: d.u64()?,
                            redelivered: d.u64()?,
                            expired: d.u64()?,
                            rejected: d.u64()?,
                            nacked: d.u64()?,
                            timed_out: d.u64()?,
                            unreadable: d.u64()?,
                            dropped: 0,
                            replayed: 0,
                        };
                        let spec = if v2 { spec(&mut d)? } else { GroupSpec::all() };
                        groups.push(GroupSnapshot {
                            slot,
                            gen,
                            start_pseq,
                            name,
                            counters,
                            spec,
                        });
                    }
                    let dropped_by_group_delete = if v2 { d.u64()? } else { 0 };
                    let keep_acked = v3 && d.u8()? != 0;
                    if v3 {
                        for g in &mut groups {
                            g.counters.dropped = d.u64()?;
                            g.counters.replayed = d.u64()?;
                        }
                    }
                    Record::ProjectState(ProjectSnapshot {
                        proj,
                        id,
                        next_pseq,
                        retention_ms,
                        paused,
                        next_gen,
                        discarded,
                        dropped_by_group_delete,
                        keep_acked,
                        groups,
                    })
                }
                other => return Err(DecodeError(format!("unknown record tag {other}"))),
            };
            d.done()?;
            r
        }
    })
}

/// The message body inside a message or relocated record body.
pub(crate) fn message_body(body: &[u8]) -> Result<&[u8], DecodeError> {
    if let Some(&tag @ (TAG_RELOCATED | TAG_RELOCATED2 | TAG_RELOCATED3)) = body.first() {
        let mut d = Dec::new(body);
        relocation_marks(&mut d, tag)?;
        Ok(&body[d.at..])
    } else {
        Ok(body)
    }
}

/// Decodes the full message of a message or relocated body, for delivery.
pub(crate) fn decode_message(body: &[u8], project: &ProjectId) -> Result<SyncMessage, DecodeError> {
    let mut d = Dec::new(body);
    if let Some(&tag @ (TAG_RELOCATED | TAG_RELOCATED2 | TAG_RELOCATED3)) = body.first() {
        relocation_marks(&mut d, tag)?;
    }
    if d.u8()? != TAG_MSG {
        return Err(derr("not a message record"));
    }
    d.take(4 + 8 + 4)?;
    let generate_time = d.i64()?;
    let kind: MessageKind = d
        .str8()?
        .parse()
        .map_err(|e: iotsync_core::UnknownMessageKind| DecodeError(e.to_string()))?;
    let product_key = if d.u8()? == 1 {
        Some(d.str8()?.parse().map_err(|e| DecodeError(format!("{e}")))?)
    } else {
        None
    };
    let ordering_key = d.str16()?.to_owned();
    let topic = d.str16()?.to_owned();
    let message_id = d.str8()?.parse().map_err(|e| DecodeError(format!("{e}")))?;
    let n = d.u32()? as usize;
    let payload = d.take(n)?.to_vec();
    d.done()?;
    Ok(SyncMessage {
        project_id: project.clone(),
        kind,
        product_key,
        ordering_key,
        envelope: Envelope {
            topic,
            message_id,
            generate_time,
            payload,
        },
    })
}

/// Checks a frame at the start of `b`: returns the body length if the header is plausible,
/// the body is complete and its checksum matches.
pub(crate) fn check_frame(b: &[u8]) -> Option<usize> {
    if b.len() < FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > MAX_BODY || b.len() < FRAME_HEADER + len {
        return None;
    }
    let tag = b[FRAME_HEADER];
    if !(TAG_MSG..=TAG_MAX).contains(&tag) {
        return None;
    }
    (crc32fast::hash(&b[FRAME_HEADER..FRAME_HEADER + len]) == crc).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> SyncMessage {
        SyncMessage {
            project_id: "p1".parse().unwrap(),
            kind: MessageKind::PropertyPost,
            product_key: Some("a1prod".parse().unwrap()),
            ordering_key: "dev-1".into(),
            envelope: Envelope {
                topic: "/a1prod/dev1/thing/event/property/post".into(),
                message_id: "m-1".parse().unwrap(),
                generate_time: 1_700_000_000_123,
                payload: br#"{"x":1}"#.to_vec(),
            },
        }
    }

    #[test]
    fn message_record_round_trips_through_frame_and_decoders() {
        let mut e = Enc::default();
        let (off, len) = e.msg(7, 42, 0b101, &message());
        assert_eq!(off, 0);
        assert_eq!(len, e.buf.len());
        let body_len = check_frame(&e.buf).unwrap();
        let body = &e.buf[FRAME_HEADER..FRAME_HEADER + body_len];
        let rec = decode(body).unwrap();
        assert_eq!(
            rec,
            Record::Msg(MsgHead {
                proj: 7,
                pseq: 42,
                owners: 0b101,
                generate_time: 1_700_000_000_123,
                key_hash: key_hash("dev-1"),
                id_hash: id_hash("m-1"),
            })
        );
        assert_eq!(
            decode_message(body, &"p1".parse().unwrap()).unwrap(),
            message()
        );
    }

    #[test]
    fn relocated_record_carries_new_owners_and_dead_marks() {
        let mut e = Enc::default();
        e.msg(1, 5, 0b11, &message());
        let body = e.buf[FRAME_HEADER..].to_vec();
        let mut r = Enc::default();
        let marks = [DeadMark {
            group: 1,
            attempts: 3,
            at_ms: 9,
        }];
        let retain = RetainMarks {
            takers: 0b11,
            dropped: 0b01,
            acked_s: 77,
            meta: 123 | 1 << 15,
        };
        r.relocated(&marks, &[(0, 4)], retain, 0b10, &body);
        let n = check_frame(&r.buf).unwrap();
        let rbody = &r.buf[FRAME_HEADER..FRAME_HEADER + n];
        match decode(rbody).unwrap() {
            Record::Relocated {
                head,
                dead,
                tries,
                retain: got,
            } => {
                assert_eq!(got, Some(retain));
                assert_eq!(tries, Some(vec![(0, 4)]));
                assert_eq!(head.owners, 0b10);
                assert_eq!(head.pseq, 5);
                assert_eq!(dead, marks);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            decode_message(rbody, &"p1".parse().unwrap()).unwrap(),
            message()
        );
    }

    #[test]
    fn seek_and_keep_records_round_trip() {
        let mut e = Enc::default();
        e.seek(3, 2, 9, 1_700_000_000_456);
        e.keep_acked(3, true);
        let n = check_frame(&e.buf).unwrap();
        assert_eq!(
            decode(&e.buf[FRAME_HEADER..FRAME_HEADER + n]).unwrap(),
            Record::Seek {
                proj: 3,
                group: 2,
                gen: 9,
                from_ms: 1_700_000_000_456
            }
        );
        let rest = &e.buf[FRAME_HEADER + n..];
        let m = check_frame(rest).unwrap();
        assert_eq!(
            decode(&rest[FRAME_HEADER..FRAME_HEADER + m]).unwrap(),
            Record::KeepAcked {
                proj: 3,
                keep: true
            }
        );
    }

    #[test]
    fn flipped_bit_fails_the_checksum() {
        let mut e = Enc::default();
        e.ack(1, 2, 3);
        assert!(check_frame(&e.buf).is_some());
        let last = e.buf.len() - 1;
        e.buf[last] ^= 0x40;
        assert!(check_frame(&e.buf).is_none());
    }

    #[test]
    fn project_snapshot_round_trips() {
        let s = ProjectSnapshot {
            proj: 3,
            id: "proj-x".into(),
            next_pseq: 99,
            retention_ms: 86_400_000,
            paused: true,
            next_gen: 4,
            discarded: 2,
            dropped_by_group_delete: 11,
            keep_acked: true,
            groups: vec![GroupSnapshot {
                slot: 1,
                gen: 3,
                start_pseq: 10,
                name: "g".into(),
                counters: GroupCounters {
                    appended: 1,
                    acked: 2,
                    redelivered: 3,
                    expired: 4,
                    rejected: 5,
                    nacked: 6,
                    timed_out: 7,
                    unreadable: 8,
                    dropped: 9,
                    replayed: 10,
                },
                spec: GroupSpec {
                    filter: GroupFilter {
                        data_classes: Some(vec![DataClass::User]),
                        kinds: Some(vec![MessageKind::PropertyPost, MessageKind::EventPost]),
                        products: Some(vec!["a1prod".parse().unwrap()]),
                    },
                    retry: GroupRetry::legacy_http(),
                },
            }],
        };
        let mut e = Enc::default();
        e.project_state(&s);
        let n = check_frame(&e.buf).unwrap();
        assert_eq!(
            decode(&e.buf[FRAME_HEADER..FRAME_HEADER + n]).unwrap(),
            Record::ProjectState(s)
        );
    }

    #[test]
    fn group_spec_and_leased_records_round_trip() {
        let spec = GroupSpec {
            filter: GroupFilter {
                data_classes: None,
                kinds: Some(vec![MessageKind::DeviceStatus]),
                products: Some(vec![]),
            },
            retry: GroupRetry::Backoff,
        };
        let mut e = Enc::default();
        e.group_spec(2, 5, 9, &spec);
        e.leased(2, 5, 1000, 64, 3);
        let n = check_frame(&e.buf).unwrap();
        assert_eq!(
            decode(&e.buf[FRAME_HEADER..FRAME_HEADER + n]).unwrap(),
            Record::GroupSpec {
                proj: 2,
                group: 5,
                gen: 9,
                spec
            }
        );
        let rest = &e.buf[FRAME_HEADER + n..];
        let m = check_frame(rest).unwrap();
        assert_eq!(
            decode(&rest[FRAME_HEADER..FRAME_HEADER + m]).unwrap(),
            Record::Leased {
                proj: 2,
                group: 5,
                first: 1000,
                count: 64,
                attempts: 3
            }
        );
    }
}
