//! Bounds every AMQP frame from a client by the bytes actually received, before any
//! decoder allocates (ADR 0008).
//!
//! serde_amqp allocates what a length or count field claims before it checks that the
//! frame holds that much (`read_bytes` is `vec![0; n]`): a 32-byte `sasl-init` whose
//! mechanism claims 1 GiB costs 1 GiB. So every frame is walked here first, over the
//! AMQP type encoding (AMQP 1.0 part 1), and refused unless
//!
//! - its size is at least the 8-byte frame header and at most the negotiated limit, and
//!   its data offset lies inside it;
//! - every value in its body is complete: each variable-width value (`vbin8/32`,
//!   `str8/32`, `sym8/32`) claims no more bytes than remain; each compound (`list8/32`,
//!   `map8/32`) and array (`array8/32`) claims a size within what remains, a count that
//!   its size can hold (at least one byte per element; a map has an even count), and
//!   its elements fill exactly that size;
//! - values nest at most [`MAX_DEPTH`] deep (the decoder recurses; a frame of nested
//!   lists would otherwise cost stack, not heap);
//! - every format code is one AMQP defines.
//!
//! The body of a frame is read as a sequence of whole values: the performative, then,
//! for a `transfer`, the message sections. A consumer never sends transfers (iotsync
//! refuses sender links), so no valid client frame is a partial message.
//!
//! [`check_frame`] checks one whole frame; [`FrameGuard`] cuts a byte stream into
//! checked frames (after the protocol header) and is what the AMQP connection reads
//! through. Both are plain functions of their input, for the fuzz targets.

use bytes::BytesMut;

/// Frame header: size (4), data offset (1), type (1), channel or type-specific (2).
pub const FRAME_HEADER: usize = 8;
/// The AMQP protocol header that precedes the frames.
pub const PROTOCOL_HEADER: usize = 8;
/// Deepest nesting of described types, lists, maps and arrays accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("frame size {size} is outside 8..={max}")]
    FrameSize { size: u64, max: u32 },
    #[error("frame data offset {doff} (x4) is outside the frame of {size} bytes")]
    DataOffset { doff: u8, size: usize },
    #[error("value at body offset {at} claims {claimed} bytes, {left} remain")]
    Length {
        at: usize,
        claimed: u64,
        left: usize,
    },
    #[error("{kind} at body offset {at} claims {count} elements in {size} bytes")]
    Count {
        kind: &'static str,
        at: usize,
        count: u64,
        size: u64,
    },
    #[error("{kind} at body offset {at}: its elements do not fill its {size} bytes")]
    Fill {
        kind: &'static str,
        at: usize,
        size: u64,
    },
    #[error("unknown format code 0x{code:02x} at body offset {at}")]
    FormatCode { code: u8, at: usize },
    #[error("values nest deeper than {MAX_DEPTH} at body offset {at}")]
    Depth { at: usize },
}

/// Checks one whole frame (`frame` holds exactly the frame, size field included)
/// against `max_frame_size` and walks its body.
pub fn check_frame(frame: &[u8], max_frame_size: u32) -> Result<(), BoundsError> {
    let size = check_frame_size(frame, max_frame_size)?;
    if frame.len() != size {
        return Err(BoundsError::Length {
            at: 0,
            claimed: size as u64,
            left: frame.len(),
        });
    }
    let doff = frame[4];
    let body_at = usize::from(doff) * 4;
    if doff < 2 || body_at > size {
        return Err(BoundsError::DataOffset { doff, size });
    }
    check_body(&frame[body_at..])
}

/// The declared size of the frame starting `head` (at least its 4-byte size field),
/// checked against the bounds.
fn check_frame_size(head: &[u8], max_frame_size: u32) -> Result<usize, BoundsError> {
    let Some(size) = head.get(..4) else {
        return Err(BoundsError::Length {
            at: 0,
            claimed: 4,
            left: head.len(),
        });
    };
    let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
    if (size as usize) < FRAME_HEADER || size > max_frame_size {
        return Err(BoundsError::FrameSize {
            size: u64::from(size),
            max: max_frame_size,
        });
    }
    Ok(size as usize)
}

/// Walks a frame body: a sequence of whole AMQP values, nothing left over.
pub fn check_body(body: &[u8]) -> Result<(), BoundsError> {
    let mut w = Walker { buf: body, at: 0 };
    while w.at < body.len() {
        w.value(0)?;
    }
    Ok(())
}

/// Cuts the bytes a client sends (after SASL) into checked frames.
#[derive(Debug)]
pub struct FrameGuard {
    max_frame_size: u32,
    header_left: usize,
}

impl FrameGuard {
    /// For a stream that starts with the 8-byte AMQP protocol header.
    pub fn new(max_frame_size: u32) -> Self {
        Self {
            max_frame_size,
            header_left: PROTOCOL_HEADER,
        }
    }

    /// Splits off the front of `input` everything complete and checked: the protocol
    /// header, then whole frames. An incomplete frame stays in `input` (its size is
    /// checked as soon as its 4 size bytes are there, so it never grows past the limit).
    pub fn split_checked(&mut self, input: &mut BytesMut) -> Result<BytesMut, BoundsError> {
        let mut at = self.header_left.min(input.len());
        self.header_left -= at;
        if self.header_left == 0 {
            while input.len() - at >= 4 {
                let size = check_frame_size(&input[at..], self.max_frame_size)?;
                if input.len() - at < size {
                    break;
                }
                check_frame(&input[at..at + size], self.max_frame_size)?;
                at += size;
            }
        }
        Ok(input.split_to(at))
    }
}

struct Walker<'a> {
    buf: &'a [u8],
    at: usize,
}

/// How the bytes of a value after its format code are laid out.
#[derive(Clone, Copy)]
enum Width {
    Fixed(usize),
    /// A length of 1 or 4 bytes, then that many bytes.
    Variable(usize),
    /// Size and count of 1 or 4 bytes each, then the elements (each with its own
    /// constructor); `map` wants an even count.
    Compound {
        len: usize,
        map: bool,
    },
    /// Size and count of 1 or 4 bytes each, one constructor, then the elements.
    Array(usize),
}

fn width(code: u8) -> Option<Width> {
    use Width::*;
    Some(match code {
        // null, true, false, uint0, ulong0, list0
        0x40..=0x45 => Fixed(0),
        // ubyte, byte, smalluint, smallulong, smallint, smalllong, boolean
        0x50..=0x56 => Fixed(1),
        0x60 | 0x61 => Fixed(2),
        // uint, int, float, char, decimal32
        0x70..=0x74 => Fixed(4),
        // ulong, long, double, timestamp, decimal64
        0x80..=0x84 => Fixed(8),
        0x94 => Fixed(16),
        0x98 => Fixed(16),
        0xa0 | 0xa1 | 0xa3 => Variable(1),
        0xb0 | 0xb1 | 0xb3 => Variable(4),
        0xc0 => Compound { len: 1, map: false },
        0xc1 => Compound { len: 1, map: true },
        0xd0 => Compound { len: 4, map: false },
        0xd1 => Compound { len: 4, map: true },
        0xe0 => Array(1),
        0xf0 => Array(4),
        _ => return None,
    })
}

impl Walker<'_> {
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }

    fn take(&mut self, n: u64) -> Result<&[u8], BoundsError> {
        let left = self.left();
        if n > left as u64 {
            return Err(BoundsError::Length {
                at: self.at,
                claimed: n,
                left,
            });
        }
        let n = n as usize;
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn uint(&mut self, len: usize) -> Result<u64, BoundsError> {
        let b = self.take(len as u64)?;
        Ok(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// One value: its constructor, then its data.
    fn value(&mut self, depth: usize) -> Result<(), BoundsError> {
        let code = self.constructor(depth)?;
        self.data(code, depth)
    }

    /// A constructor: a format code, or `0x00` + a descriptor value + a constructor.
    /// Returns the format code the data is read with.
    fn constructor(&mut self, depth: usize) -> Result<u8, BoundsError> {
        if depth >= MAX_DEPTH {
            return Err(BoundsError::Depth { at: self.at });
        }
        let at = self.at;
        let code = self.take(1)?[0];
        if code != 0x00 {
            return match width(code) {
                Some(_) => Ok(code),
                None => Err(BoundsError::FormatCode { code, at }),
            };
        }
        self.value(depth + 1)?;
        self.constructor(depth + 1)
    }

    /// The data of one value whose format code is `code`.
    fn data(&mut self, code: u8, depth: usize) -> Result<(), BoundsError> {
        let at = self.at.saturating_sub(1);
        let Some(w) = width(code) else {
            return Err(BoundsError::FormatCode { code, at });
        };
        match w {
            Width::Fixed(n) => {
                self.take(n as u64)?;
            }
            Width::Variable(len) => {
                let n = self.uint(len)?;
                let left = self.left();
                if n > left as u64 {
                    return Err(BoundsError::Length {
                        at,
                        claimed: n,
                        left,
                    });
                }
                self.take(n)?;
            }
            Width::Compound { len, map } => {
                let kind = if map { "map" } else { "list" };
                let (end, count) = self.sized(kind, len)?;
                if map && count % 2 != 0 {
                    return Err(BoundsError::Count {
                        kind,
                        at,
                        count,
                        size: (end - self.at) as u64,
                    });
                }
                for _ in 0..count {
                    if self.at >= end {
                        return Err(BoundsError::Fill {
                            kind,
                            at,
                            size: (end - at) as u64,
                        });
                    }
                    self.value(depth + 1)?;
                }
                self.filled(kind, at, end)?;
            }
            Width::Array(len) => {
                let (end, count) = self.sized("array", len)?;
                if count > 0 || self.at < end {
                    let elem = self.constructor(depth + 1)?;
                    for _ in 0..count {
                        if self.at > end {
                            break;
                        }
                        self.data(elem, depth + 1)?;
                    }
                }
                self.filled("array", at, end)?;
            }
        }
        Ok(())
    }

    /// Reads the size and count of a compound or array and checks them against what
    /// remains; returns where its data ends and the count.
    fn sized(&mut self, kind: &'static str, len: usize) -> Result<(usize, u64), BoundsError> {
        let at = self.at - 1;
        let size = self.uint(len)?;
        let left = self.left();
        if size > left as u64 || size < len as u64 {
            return Err(BoundsError::Length {
                at,
                claimed: size,
                left,
            });
        }
        let end = self.at + size as usize;
        let count = self.uint(len)?;
        // The count field is inside the size; each element takes at least one byte.
        let room = size - len as u64;
        if count > room {
            return Err(BoundsError::Count {
                kind,
                at,
                count,
                size,
            });
        }
        Ok((end, count))
    }

    fn filled(&self, kind: &'static str, at: usize, end: usize) -> Result<(), BoundsError> {
        if self.at != end {
            return Err(BoundsError::Fill {
                kind,
                at,
                size: end.saturating_sub(at) as u64,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use fe2o3_amqp::frames::sasl::{Frame as SaslFrame, FrameCodec as SaslCodec};
    use fe2o3_amqp::types::definitions::{Fields, Role};
    use fe2o3_amqp::types::messaging::{Accepted, DeliveryState, Source, Target};
    use fe2o3_amqp::types::performatives::{Attach, Disposition, Open};
    use fe2o3_amqp::types::primitives::{Array, Binary, Symbol, Value};
    use fe2o3_amqp::types::sasl::{SaslInit, SaslMechanisms};
    use tokio_util::codec::Encoder;

    /// The frame of issue 15: a sasl-init whose mechanism (sym32) claims 1 GiB.
    pub const BOMB: [u8; 24] = [
        0x00, 0x00, 0x00, 0x18, 0x02, 0x01, 0x00, 0x00, 0x00, 0x53, 0x41, 0xc0, 0x0a, 0x01, 0xb3,
        0x40, 0x00, 0x00, 0x00, 0x50, 0x4c, 0x41, 0x49, 0x4e,
    ];

    fn amqp_frame(body: &[u8]) -> Vec<u8> {
        let mut f = ((FRAME_HEADER + body.len()) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[2, 0, 0, 0]);
        f.extend_from_slice(body);
        f
    }

    fn sasl_frame(frame: SaslFrame) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[0, 0, 0, 0]);
        SaslCodec {}.encode(frame, &mut out).unwrap();
        let len = out.len() as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        out.to_vec()
    }

    #[test]
    fn the_issue_frame_is_refused_for_its_symbol_length() {
        let e = check_frame(&BOMB, 16 * 1024).unwrap_err();
        assert_eq!(
            e,
            BoundsError::Length {
                at: 6,
                claimed: 0x4000_0000,
                left: 5
            }
        );
        // The same frame with true lengths (the symbol's, and the list's, which the
        // issue's bytes also understate by one) passes.
        let mut ok = BOMB;
        ok[15..19].copy_from_slice(&5u32.to_be_bytes());
        ok[12] = 0x0b;
        check_frame(&ok, 16 * 1024).unwrap();
    }

    #[test]
    fn frames_serde_amqp_writes_pass() {
        let init = SaslFrame::Init(SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(b"\0user\0pass".to_vec())),
            hostname: Some("localhost".into()),
        });
        check_frame(&sasl_frame(init), 512).unwrap();
        let mechs = SaslFrame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: Array::from(vec![Symbol::from("PLAIN"), Symbol::from("X")]),
        });
        check_frame(&sasl_frame(mechs), 512).unwrap();

        let mut props = Fields::new();
        props.insert(Symbol::from("product"), Value::from("qpid-proton"));
        props.insert(
            Symbol::from("list"),
            Value::List(vec![Value::from(1u32), Value::from("x"), Value::Null]),
        );
        props.insert(
            Symbol::from("array"),
            Value::Array(Array::from(vec![Value::from(1i64), Value::from(2i64)])),
        );
        let open = Open {
            container_id: "client-1".into(),
            hostname: Some("localhost".into()),
            max_frame_size: 65536.into(),
            channel_max: 255.into(),
            idle_time_out: Some(30_000),
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: Some(vec![Symbol::from("ANONYMOUS-RELAY")].into()),
            properties: Some(props),
        };
        let body = serde_amqp::to_vec(&fe2o3_amqp::types::performatives::Performative::Open(open))
            .unwrap();
        check_frame(&amqp_frame(&body), 65536).unwrap();

        let attach = Attach {
            name: "receiver-link".into(),
            handle: 0.into(),
            role: Role::Receiver,
            snd_settle_mode: Default::default(),
            rcv_settle_mode: Default::default(),
            source: Some(Box::new(Source::builder().address("default").build())),
            target: Some(Box::new(Target::builder().address("me").build().into())),
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: Some(1 << 20),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let body = serde_amqp::to_vec(&fe2o3_amqp::types::performatives::Performative::Attach(
            attach,
        ))
        .unwrap();
        check_frame(&amqp_frame(&body), 65536).unwrap();

        let d = Disposition {
            role: Role::Receiver,
            first: 7,
            last: Some(90_000),
            settled: true,
            state: Some(DeliveryState::Accepted(Accepted {})),
            batchable: false,
        };
        let body =
            serde_amqp::to_vec(&fe2o3_amqp::types::performatives::Performative::Disposition(d))
                .unwrap();
        check_frame(&amqp_frame(&body), 65536).unwrap();
        // A heartbeat (empty body).
        check_frame(&[0, 0, 0, 8, 2, 0, 0, 0], 512).unwrap();
    }

    #[test]
    fn every_variable_width_claim_beyond_the_frame_is_refused() {
        for code in [0xa0u8, 0xa1, 0xa3] {
            let f = amqp_frame(&[code, 0xff, b'a']);
            assert!(
                matches!(
                    check_frame(&f, 512),
                    Err(BoundsError::Length { claimed: 255, .. })
                ),
                "{code:02x}"
            );
            check_frame(&amqp_frame(&[code, 1, b'a']), 512).unwrap();
        }
        for code in [0xb0u8, 0xb1, 0xb3] {
            let f = amqp_frame(&[code, 0xff, 0xff, 0xff, 0xff, b'a']);
            assert!(
                matches!(
                    check_frame(&f, 512),
                    Err(BoundsError::Length {
                        claimed: 0xffff_ffff,
                        ..
                    })
                ),
                "{code:02x}"
            );
            check_frame(&amqp_frame(&[code, 0, 0, 0, 1, b'a']), 512).unwrap();
        }
    }

    #[test]
    fn compound_sizes_and_counts_beyond_the_frame_are_refused() {
        // list8 / map8 / array8: size beyond the frame.
        for code in [0xc0u8, 0xc1, 0xe0] {
            let e = check_frame(&amqp_frame(&[code, 0x10, 0x00]), 512).unwrap_err();
            assert!(matches!(e, BoundsError::Length { claimed: 16, .. }), "{e}");
        }
        // list32 / map32 / array32 claiming 4 GiB.
        for code in [0xd0u8, 0xd1, 0xf0] {
            let e = check_frame(
                &amqp_frame(&[code, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0]),
                512,
            )
            .unwrap_err();
            assert!(matches!(e, BoundsError::Length { .. }), "{e}");
        }
        // A count far beyond the size (a decoder would reserve `count` slots).
        let e = check_frame(
            &amqp_frame(&[0xd0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]),
            512,
        )
        .unwrap_err();
        assert!(matches!(e, BoundsError::Count { .. }), "{e}");
        // An array of 200 nulls in 2 bytes: zero-width elements cannot claim a count
        // above their size either.
        let e = check_frame(&amqp_frame(&[0xe0, 0x02, 0xc8, 0x40]), 512).unwrap_err();
        assert!(matches!(e, BoundsError::Count { .. }), "{e}");
        // A map with an odd count.
        let e = check_frame(&amqp_frame(&[0xc1, 0x02, 0x01, 0x40]), 512).unwrap_err();
        assert!(matches!(e, BoundsError::Count { .. }), "{e}");
        // Elements that do not fill the size, or overrun it.
        let e = check_frame(&amqp_frame(&[0xc0, 0x03, 0x01, 0x40, 0x40]), 512).unwrap_err();
        assert!(matches!(e, BoundsError::Fill { .. }), "{e}");
        let e = check_frame(&amqp_frame(&[0xc0, 0x02, 0x01, 0x52, 0x01]), 512).unwrap_err();
        assert!(matches!(e, BoundsError::Fill { .. }), "{e}");
        // A string inside a list claiming more than the list holds but not more than
        // the frame holds is still caught by the list's fill.
        let e = check_frame(
            &amqp_frame(&[0xc0, 0x03, 0x01, 0xa1, 0x03, b'a', b'b', b'c']),
            512,
        )
        .unwrap_err();
        assert!(matches!(e, BoundsError::Fill { .. }), "{e}");
        // Well-formed ones pass.
        check_frame(&amqp_frame(&[0xc0, 0x03, 0x02, 0x40, 0x41]), 512).unwrap();
        check_frame(
            &amqp_frame(&[0xc1, 0x04, 0x02, 0xa3, 0x01, b'k', 0x40][..7]),
            512,
        )
        .unwrap_err();
        check_frame(
            &amqp_frame(&[0xc1, 0x05, 0x02, 0xa3, 0x01, b'k', 0x40]),
            512,
        )
        .unwrap();
        check_frame(&amqp_frame(&[0xe0, 0x04, 0x02, 0x52, 0x01, 0x02]), 512).unwrap();
        check_frame(&amqp_frame(&[0xe0, 0x01, 0x00]), 512).unwrap();
        check_frame(&amqp_frame(&[0x45]), 512).unwrap();
    }

    #[test]
    fn nesting_is_bounded() {
        // 40 nested list8s: the innermost is list0.
        let mut body = vec![0x45u8];
        for _ in 0..40 {
            let mut outer = vec![0xc0, (body.len() + 1) as u8, 0x01];
            outer.extend_from_slice(&body);
            body = outer;
            if body.len() > 250 {
                break;
            }
        }
        let e = check_frame(&amqp_frame(&body), 4096).unwrap_err();
        assert!(matches!(e, BoundsError::Depth { .. }), "{e}");
        // A chain of descriptors.
        let e = check_frame(&amqp_frame(&[0x00; 100]), 4096).unwrap_err();
        assert!(matches!(e, BoundsError::Depth { .. }), "{e}");
        // 10 deep is fine.
        let mut body = vec![0x45u8];
        for _ in 0..10 {
            let mut outer = vec![0xc0, (body.len() + 1) as u8, 0x01];
            outer.extend_from_slice(&body);
            body = outer;
        }
        check_frame(&amqp_frame(&body), 4096).unwrap();
    }

    #[test]
    fn frame_headers_are_checked() {
        // Too small (fe2o3 would panic reading the header of a 4-byte frame).
        for size in 0..8u32 {
            let mut f = size.to_be_bytes().to_vec();
            f.resize(8, 0);
            assert!(matches!(
                check_frame(&f, 512),
                Err(BoundsError::FrameSize { .. })
            ));
        }
        // Above the limit.
        let mut f = 1024u32.to_be_bytes().to_vec();
        f.resize(1024, 0x40);
        f[4] = 2;
        assert!(matches!(
            check_frame(&f, 512),
            Err(BoundsError::FrameSize { size: 1024, .. })
        ));
        // Data offset outside the frame, or below 2.
        assert!(matches!(
            check_frame(&[0, 0, 0, 8, 3, 0, 0, 0], 512),
            Err(BoundsError::DataOffset { .. })
        ));
        assert!(matches!(
            check_frame(&[0, 0, 0, 8, 1, 0, 0, 0], 512),
            Err(BoundsError::DataOffset { .. })
        ));
        // An extended header is skipped.
        check_frame(&[0, 0, 0, 13, 3, 0, 0, 0, 1, 2, 3, 4, 0x40], 512).unwrap();
        // Unknown format codes.
        assert!(matches!(
            check_frame(&amqp_frame(&[0x57]), 512),
            Err(BoundsError::FormatCode { code: 0x57, .. })
        ));
    }

    #[test]
    fn the_guard_passes_the_header_and_whole_checked_frames_only() {
        let a = amqp_frame(&[0xa1, 0x02, b'h', b'i']);
        let b = [0u8, 0, 0, 8, 2, 0, 0, 0];
        let mut all = b"AMQP\x00\x01\x00\x00".to_vec();
        all.extend_from_slice(&a);
        all.extend_from_slice(&b);
        // Every split point gives the same bytes out, never a partial frame.
        for cut in 0..=all.len() {
            let mut g = FrameGuard::new(512);
            let mut input = BytesMut::from(&all[..cut]);
            let mut out = g.split_checked(&mut input).unwrap().to_vec();
            let boundaries = [0, 1, 2, 3, 4, 5, 6, 7, 8, 8 + a.len(), all.len()];
            assert!(boundaries.contains(&out.len()), "cut {cut}: {}", out.len());
            input.extend_from_slice(&all[cut..]);
            out.extend_from_slice(&g.split_checked(&mut input).unwrap());
            assert!(input.is_empty());
            assert_eq!(out, all, "cut {cut}");
        }
        // A size beyond the limit is refused once its size field is in, before the
        // rest of the frame arrives.
        let mut g = FrameGuard::new(512);
        let mut input = BytesMut::from(&b"AMQP\x00\x01\x00\x00\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            g.split_checked(&mut input),
            Err(BoundsError::FrameSize { .. })
        ));
        // The issue's frame, after the header.
        let mut g = FrameGuard::new(65536);
        let mut input = BytesMut::from(&b"AMQP\x00\x01\x00\x00"[..]);
        input.extend_from_slice(&BOMB);
        assert!(matches!(
            g.split_checked(&mut input),
            Err(BoundsError::Length { .. })
        ));
    }

    /// Every one- and two-byte mutation of real frames is either accepted or refused,
    /// never a panic, and whatever is accepted decodes with serde_amqp without a claim
    /// beyond the frame (the decode is bounded by the frame it is given).
    #[test]
    fn mutations_never_panic_and_accepted_frames_decode_within_the_frame() {
        let init = sasl_frame(SaslFrame::Init(SaslInit {
            mechanism: Symbol::from("PLAIN"),
            initial_response: Some(Binary::from(b"\0u\0p".to_vec())),
            hostname: None,
        }));
        let d = Disposition {
            role: Role::Receiver,
            first: 7,
            last: Some(9),
            settled: true,
            state: Some(DeliveryState::Accepted(Accepted {})),
            batchable: false,
        };
        let disp = amqp_frame(
            &serde_amqp::to_vec(&fe2o3_amqp::types::performatives::Performative::Disposition(d))
                .unwrap(),
        );
        for frame in [init, disp] {
            for i in 0..frame.len() {
                for v in [0x00u8, 0x01, 0x40, 0x7f, 0x80, 0xb3, 0xd0, 0xf0, 0xff] {
                    let mut m = frame.clone();
                    m[i] = v;
                    if check_frame(&m, 512).is_ok() {
                        // Accepted: serde_amqp may still refuse it, but cheaply.
                        let _ = serde_amqp::from_slice::<Value>(&m[8..]);
                    }
                    for j in i + 1..frame.len().min(i + 4) {
                        let mut m2 = m.clone();
                        m2[j] = 0xff;
                        let _ = check_frame(&m2, 512);
                    }
                }
            }
        }
    }
}
