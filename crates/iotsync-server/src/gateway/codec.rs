//! The MQTT 3.1.1 packets a device-facing server needs, decoded from and encoded into
//! byte buffers. Pure: no I/O, no async, so the parser can be fuzzed on its own.
//!
//! Invariants: the remaining length is checked against the maximum packet size before
//! anything is allocated; every length field inside a packet is checked against the
//! bytes actually present; strings must be UTF-8 (MQTT §1.5.3).

use std::fmt;

/// Largest packet accepted from a device (Alink payloads are small).
pub const DEFAULT_MAX_PACKET: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The fixed header's remaining length is larger than allowed.
    TooLarge { len: usize, max: usize },
    /// A packet that breaks MQTT 3.1.1.
    Malformed(&'static str),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::TooLarge { len, max } => {
                write!(f, "packet of {len} bytes exceeds the {max} byte limit")
            }
            CodecError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

impl std::error::Error for CodecError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol_name: String,
    pub protocol_level: u8,
    pub clean_session: bool,
    pub keep_alive_s: u16,
    pub client_id: String,
    pub will: Option<(String, Vec<u8>)>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Publish),
    PubAck(u16),
    /// QoS 2 flow packets: decoded so the session can refuse them by closing.
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        filters: Vec<(String, u8)>,
    },
    SubAck {
        packet_id: u16,
        codes: Vec<u8>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
pub mod connack {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// SUBACK failure return code.
pub const SUBACK_FAILURE: u8 = 0x80;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, CodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(CodecError::Malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    /// A packet identifier: MQTT 3.1.1 §2.3.1 requires it non-zero.
    fn packet_id(&mut self) -> Result<u16, CodecError> {
        match self.u16()? {
            0 => Err(CodecError::Malformed("packet identifier 0")),
            id => Ok(id),
        }
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(CodecError::Malformed("length field beyond the packet"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn binary(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.u16()? as usize;
        Ok(self.bytes(n)?.to_vec())
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let n = self.u16()? as usize;
        let b = self.bytes(n)?;
        let s = std::str::from_utf8(b).map_err(|_| CodecError::Malformed("string not UTF-8"))?;
        if s.contains('\0') {
            return Err(CodecError::Malformed("string contains U+0000"));
        }
        Ok(s.to_owned())
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
}

/// Decodes one packet from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the packet and how many bytes it used.
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Option<(Packet, usize)>, CodecError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((b & 0x7f) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(CodecError::Malformed("remaining length over 4 bytes"));
        }
    }
    if len > max_packet {
        return Err(CodecError::TooLarge {
            len,
            max: max_packet,
        });
    }
    let total = i + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[i..total];
    let packet = decode_body(first, body)?;
    Ok(Some((packet, total)))
}

fn expect_flags(first: u8, flags: u8) -> Result<(), CodecError> {
    if first & 0x0f != flags {
        return Err(CodecError::Malformed("reserved fixed-header flags"));
    }
    Ok(())
}

fn decode_body(first: u8, body: &[u8]) -> Result<Packet, CodecError> {
    let mut r = Reader { buf: body, pos: 0 };
    let p = match first >> 4 {
        1 => {
            expect_flags(first, 0)?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        2 => {
            let flags = r.u8()?;
            Packet::ConnAck {
                session_present: flags & 1 == 1,
                code: r.u8()?,
            }
        }
        3 => {
            let qos = (first >> 1) & 0x03;
            if qos == 3 {
                return Err(CodecError::Malformed("QoS 3"));
            }
            let topic = r.string()?;
            let packet_id = if qos > 0 { Some(r.packet_id()?) } else { None };
            Packet::Publish(Publish {
                dup: first & 0x08 != 0,
                qos,
                retain: first & 0x01 != 0,
                topic,
                packet_id,
                payload: r.rest().to_vec(),
            })
        }
        4 => Packet::PubAck(r.u16()?),
        5 => Packet::PubRec(r.u16()?),
        6 => Packet::PubRel(r.u16()?),
        7 => Packet::PubComp(r.u16()?),
        8 => {
            expect_flags(first, 0x02)?;
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.done() {
                let f = r.string()?;
                let q = r.u8()?;
                if q > 2 {
                    return Err(CodecError::Malformed("subscription QoS over 2"));
                }
                filters.push((f, q));
            }
            if filters.is_empty() {
                return Err(CodecError::Malformed("SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe { packet_id, filters }
        }
        9 => {
            let packet_id = r.u16()?;
            Packet::SubAck {
                packet_id,
                codes: r.rest().to_vec(),
            }
        }
        10 => {
            expect_flags(first, 0x02)?;
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.done() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(CodecError::Malformed("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe { packet_id, filters }
        }
        11 => Packet::UnsubAck(r.u16()?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect,
        _ => return Err(CodecError::Malformed("unknown packet type")),
    };
    Ok(p)
}

fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, CodecError> {
    let protocol_name = r.string()?;
    let protocol_level = r.u8()?;
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(CodecError::Malformed("CONNECT reserved flag set"));
    }
    let keep_alive_s = r.u16()?;
    let client_id = r.string()?;
    let will = if flags & 0x04 != 0 {
        let t = r.string()?;
        let m = r.binary()?;
        Some((t, m))
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol_name,
        protocol_level,
        clean_session: flags & 0x02 != 0,
        keep_alive_s,
        client_id,
        will,
        username,
        password,
    })
}

fn put_len(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Callers only pass topics and ids bounded well below 64 KiB.
    let n = s.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&s[..n]);
}

/// Appends the encoding of `p` to `out`.
pub fn encode(p: &Packet, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    let first: u8 = match p {
        Packet::Connect(c) => {
            put_str(&mut body, c.protocol_name.as_bytes());
            body.push(c.protocol_level);
            let mut flags = 0u8;
            if c.clean_session {
                flags |= 0x02;
            }
            if c.will.is_some() {
                flags |= 0x04;
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            body.push(flags);
            body.extend_from_slice(&c.keep_alive_s.to_be_bytes());
            put_str(&mut body, c.client_id.as_bytes());
            if let Some((t, m)) = &c.will {
                put_str(&mut body, t.as_bytes());
                put_str(&mut body, m);
            }
            if let Some(u) = &c.username {
                put_str(&mut body, u.as_bytes());
            }
            if let Some(pw) = &c.password {
                put_str(&mut body, pw);
            }
            0x10
        }
        Packet::ConnAck {
            session_present,
            code,
        } => {
            body.push(u8::from(*session_present));
            body.push(*code);
            0x20
        }
        Packet::Publish(pb) => {
            put_str(&mut body, pb.topic.as_bytes());
            if let Some(id) = pb.packet_id {
                body.extend_from_slice(&id.to_be_bytes());
            }
            body.extend_from_slice(&pb.payload);
            0x30 | (u8::from(pb.dup) << 3) | ((pb.qos & 0x03) << 1) | u8::from(pb.retain)
        }
        Packet::PubAck(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x40
        }
        Packet::PubRec(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x50
        }
        Packet::PubRel(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x62
        }
        Packet::PubComp(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0x70
        }
        Packet::Subscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for (f, q) in filters {
                put_str(&mut body, f.as_bytes());
                body.push(*q);
            }
            0x82
        }
        Packet::SubAck { packet_id, codes } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            body.extend_from_slice(codes);
            0x90
        }
        Packet::Unsubscribe { packet_id, filters } => {
            body.extend_from_slice(&packet_id.to_be_bytes());
            for f in filters {
                put_str(&mut body, f.as_bytes());
            }
            0xa2
        }
        Packet::UnsubAck(id) => {
            body.extend_from_slice(&id.to_be_bytes());
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect => 0xe0,
    };
    out.push(first);
    put_len(out, body.len());
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(p: Packet) {
        let mut out = Vec::new();
        encode(&p, &mut out);
        let (q, n) = decode(&out, DEFAULT_MAX_PACKET).unwrap().unwrap();
        assert_eq!(n, out.len());
        assert_eq!(q, p);
        // Every strict prefix needs more bytes, never errors.
        for cut in 0..out.len() {
            assert_eq!(
                decode(&out[..cut], DEFAULT_MAX_PACKET),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn packet_identifier_zero_is_malformed() {
        // QoS 1 PUBLISH "a/b", packet id 0, payload "x".
        let publish = [0x32, 8, 0, 3, b'a', b'/', b'b', 0, 0, b'x'];
        assert_eq!(
            decode(&publish[..], DEFAULT_MAX_PACKET),
            Err(CodecError::Malformed("packet identifier 0"))
        );
        let mut ok = publish;
        ok[8] = 1;
        assert!(matches!(
            decode(&ok[..], DEFAULT_MAX_PACKET),
            Ok(Some((Packet::Publish(_), 10)))
        ));
        // SUBSCRIBE and UNSUBSCRIBE with packet id 0.
        let subscribe = [0x82, 8, 0, 0, 0, 3, b'a', b'/', b'b', 1];
        assert!(decode(&subscribe[..], DEFAULT_MAX_PACKET).is_err());
        let unsubscribe = [0xa2, 7, 0, 0, 0, 3, b'a', b'/', b'b'];
        assert!(decode(&unsubscribe[..], DEFAULT_MAX_PACKET).is_err());
    }

    #[test]
    fn every_packet_round_trips() {
        roundtrip(Packet::Connect(Box::new(Connect {
            protocol_name: "MQTT".into(),
            protocol_level: 4,
            clean_session: true,
            keep_alive_s: 60,
            client_id: "d1|securemode=3,signmethod=hmacsha256|".into(),
            will: Some(("/w".into(), b"bye".to_vec())),
            username: Some("dn&pk".into()),
            password: Some(b"abc".to_vec()),
        })));
        roundtrip(Packet::ConnAck {
            session_present: false,
            code: connack::NOT_AUTHORIZED,
        });
        roundtrip(Packet::Publish(Publish {
            dup: false,
            qos: 1,
            retain: false,
            topic: "/sys/pk/dn/thing/event/property/post".into(),
            packet_id: Some(7),
            payload: vec![b'x'; 300],
        }));
        roundtrip(Packet::Publish(Publish {
            dup: false,
            qos: 0,
            retain: true,
            topic: "t".into(),
            packet_id: None,
            payload: vec![],
        }));
        roundtrip(Packet::PubAck(9));
        roundtrip(Packet::Subscribe {
            packet_id: 3,
            filters: vec![("/sys/pk/dn/#".into(), 1), ("a".into(), 0)],
        });
        roundtrip(Packet::SubAck {
            packet_id: 3,
            codes: vec![1, SUBACK_FAILURE],
        });
        roundtrip(Packet::Unsubscribe {
            packet_id: 4,
            filters: vec!["a".into()],
        });
        roundtrip(Packet::UnsubAck(4));
        roundtrip(Packet::PingReq);
        roundtrip(Packet::PingResp);
        roundtrip(Packet::Disconnect);
    }

    #[test]
    fn refuses_oversized_packets_before_reading_them() {
        let mut out = vec![0x30];
        put_len(&mut out, 10_000);
        assert_eq!(
            decode(&out, 1024),
            Err(CodecError::TooLarge {
                len: 10_000,
                max: 1024
            })
        );
    }

    #[test]
    fn refuses_inner_lengths_past_the_packet() {
        // PUBLISH whose topic length claims 200 bytes in a 4-byte body.
        let buf = [0x30, 4, 0, 200, b'a', b'b'];
        assert!(matches!(
            decode(&buf, DEFAULT_MAX_PACKET),
            Err(CodecError::Malformed(_))
        ));
        // Five length bytes.
        let buf = [0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(decode(&buf, usize::MAX).is_err());
    }

    #[test]
    fn refuses_bad_flags_and_types() {
        assert!(decode(&[0x80, 2, 0, 1], 100).is_err()); // SUBSCRIBE without 0x02 flags
        assert!(decode(&[0xf0, 0], 100).is_err()); // reserved type 15
        assert!(decode(&[0x36, 0], 100).is_err()); // QoS 3
    }
}
