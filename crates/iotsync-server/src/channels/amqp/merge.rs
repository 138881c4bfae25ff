//! Disposition merging on the read side (ADR 0003).
//!
//! Stock clients (Proton, rhea, fe2o3's receiver) settle every message with its own
//! disposition frame: `first = n, settled, accepted`, then `n + 1`, … fe2o3's engines
//! then decode each frame, hand it from the connection task to the session task and look
//! the delivery up, one frame at a time. AMQP 1.0 (2.7.6) lets one disposition settle a
//! range `first..=last` with the same state, so the frames that arrive together in one
//! read are merged here, before fe2o3 sees them: consecutive dispositions of one channel
//! that settle contiguous deliveries as `accepted` (the common case, and the one without
//! per-delivery data) become one frame. Everything else passes through byte for byte, in
//! order: a merged run is written out before the next frame that is not part of it, and
//! at the end of what the read brought, so nothing is held back waiting for more bytes.

use bytes::{Buf, BufMut, BytesMut};
use fe2o3_amqp::types::definitions::Role;
use fe2o3_amqp::types::messaging::{Accepted, DeliveryState};
use fe2o3_amqp::types::performatives::Disposition;

/// The AMQP protocol header the client sends first (after SASL): passed through.
const PROTOCOL_HEADER: usize = 8;
/// Frame header: size (4), data offset (1), type (1), channel (2).
const FRAME_HEADER: usize = 8;
/// Frames up to this size are looked at whole; larger ones are streamed through.
const MAX_INSPECTED: usize = 64 * 1024;

/// A run of merged dispositions not yet written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    channel: u16,
    first: u32,
    last: u32,
    /// Frames merged into it (1: written back as it came).
    frames: usize,
}

/// Turns the client's bytes into the bytes fe2o3 reads.
#[derive(Debug)]
pub struct Merger {
    header_left: usize,
    /// Bytes of a large frame still to stream through unread.
    passthrough_left: usize,
    run: Option<(Run, BytesMut)>,
    /// Frames merged away so far (the stream adds them to the hub's counters).
    pub merged_frames: u64,
}

impl Default for Merger {
    fn default() -> Self {
        Self {
            header_left: PROTOCOL_HEADER,
            passthrough_left: 0,
            run: None,
            merged_frames: 0,
        }
    }
}

impl Merger {
    /// Moves every complete frame of `input` to `out` (merging where it can); an
    /// incomplete frame stays in `input` for the next read.
    pub fn process(&mut self, input: &mut BytesMut, out: &mut BytesMut) {
        loop {
            let raw = self.header_left.max(self.passthrough_left);
            if raw > 0 {
                let take = raw.min(input.len());
                if take == 0 {
                    break;
                }
                self.flush(out);
                out.extend_from_slice(&input[..take]);
                input.advance(take);
                if self.header_left > 0 {
                    self.header_left -= take;
                } else {
                    self.passthrough_left -= take;
                }
                continue;
            }
            if input.len() < FRAME_HEADER {
                break;
            }
            let size = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
            if !(FRAME_HEADER..=MAX_INSPECTED).contains(&size) {
                // Not ours to judge (fe2o3 refuses a bad size): stream it through.
                self.passthrough_left = size.max(FRAME_HEADER);
                continue;
            }
            if input.len() < size {
                break;
            }
            let frame = input.split_to(size);
            match accepted_disposition(&frame) {
                Some((channel, first, last)) => self.add(channel, first, last, frame, out),
                None => {
                    self.flush(out);
                    out.extend_from_slice(&frame);
                }
            }
        }
        self.flush(out);
    }

    fn add(&mut self, channel: u16, first: u32, last: u32, frame: BytesMut, out: &mut BytesMut) {
        if let Some((run, _)) = &mut self.run {
            if run.channel == channel && run.last.checked_add(1) == Some(first) {
                run.last = last;
                run.frames += 1;
                self.merged_frames += 1;
                return;
            }
        }
        self.flush(out);
        self.run = Some((
            Run {
                channel,
                first,
                last,
                frames: 1,
            },
            frame,
        ));
    }

    fn flush(&mut self, out: &mut BytesMut) {
        let Some((run, frame)) = self.run.take() else {
            return;
        };
        if run.frames == 1 {
            out.extend_from_slice(&frame);
            return;
        }
        let d = Disposition {
            role: Role::Receiver,
            first: run.first,
            last: Some(run.last),
            settled: true,
            state: Some(DeliveryState::Accepted(Accepted {})),
            batchable: false,
        };
        match serde_amqp::to_vec(&d) {
            Ok(body) => {
                out.reserve(FRAME_HEADER + body.len());
                out.put_u32((FRAME_HEADER + body.len()) as u32);
                out.put_u8(2);
                out.put_u8(0);
                out.put_u16(run.channel);
                out.extend_from_slice(&body);
            }
            // Cannot happen for this value; never lose the settlements if it did.
            Err(_) => out.extend_from_slice(&frame),
        }
    }
}

/// `(channel, first, last)` of a frame that is a receiver's disposition settling
/// deliveries as accepted; `None` for anything else.
///
/// Read by hand, not through serde_amqp: it runs on every frame the client sends and a
/// generic decode costs more than the merge saves. Only the encodings clients use are
/// recognised (list8 or list32; booleans as `true`/`false`/`boolean`; delivery numbers
/// as `uint`, `smalluint` or `uint0`; `accepted` with an empty list); anything else is
/// passed through untouched, which is always correct.
fn accepted_disposition(frame: &[u8]) -> Option<(u16, u32, u32)> {
    // doff 2 (no extended header), type 0 (AMQP).
    if frame[4] != 2 || frame[5] != 0 {
        return None;
    }
    let channel = u16::from_be_bytes([frame[6], frame[7]]);
    let mut r = Reader(&frame[FRAME_HEADER..]);
    if r.take(3)? != [0x00, 0x53, 0x15] {
        return None;
    }
    let count = match r.byte()? {
        0xc0 => {
            let size = r.byte()? as usize;
            if size != r.0.len() {
                return None;
            }
            r.byte()? as usize
        }
        0xd0 => {
            let size = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
            if size != r.0.len() {
                return None;
            }
            u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize
        }
        _ => return None,
    };
    // role, first, last, settled, state: all five needed to be an accepted settlement.
    if !(5..=6).contains(&count) {
        return None;
    }
    // role: receiver = true.
    if r.boolean()? != Some(true) {
        return None;
    }
    let first = r.uint()??;
    let last = r.uint()?.unwrap_or(first);
    if r.boolean()? != Some(true) {
        return None;
    }
    // state: accepted, an empty list.
    if r.take(3)? != [0x00, 0x53, 0x24] {
        return None;
    }
    match r.byte()? {
        0x45 => {}
        0xc0 => {
            if r.take(2)? != [0x01, 0x00] {
                return None;
            }
        }
        _ => return None,
    }
    if count == 6 {
        r.boolean()?; // batchable: no bearing on the outcome
    }
    (r.0.is_empty() && last >= first).then_some((channel, first, last))
}

/// Reads AMQP primitives off a slice; `None` = not a form we recognise.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// `Some(None)` for null.
    fn boolean(&mut self) -> Option<Option<bool>> {
        match self.byte()? {
            0x40 => Some(None),
            0x41 => Some(Some(true)),
            0x42 => Some(Some(false)),
            0x56 => match self.byte()? {
                0 => Some(Some(false)),
                1 => Some(Some(true)),
                _ => None,
            },
            _ => None,
        }
    }

    /// `Some(None)` for null.
    fn uint(&mut self) -> Option<Option<u32>> {
        match self.byte()? {
            0x40 => Some(None),
            0x43 => Some(Some(0)),
            0x52 => self.byte().map(|b| Some(u32::from(b))),
            0x70 => self
                .take(4)
                .map(|b| Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::{Rejected, Released};

    fn frame(channel: u16, d: &Disposition) -> Vec<u8> {
        let body = serde_amqp::to_vec(d).unwrap();
        let mut f = Vec::new();
        f.extend_from_slice(&((8 + body.len()) as u32).to_be_bytes());
        f.extend_from_slice(&[2, 0]);
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    fn disp(first: u32, last: Option<u32>, settled: bool, state: DeliveryState) -> Disposition {
        Disposition {
            role: Role::Receiver,
            first,
            last,
            settled,
            state: Some(state),
            batchable: false,
        }
    }

    fn accepted(first: u32) -> Disposition {
        disp(first, None, true, DeliveryState::Accepted(Accepted {}))
    }

    /// The frames `bytes` holds after the protocol header, decoded.
    fn frames(mut bytes: &[u8]) -> Vec<(u16, Disposition)> {
        assert_eq!(&bytes[..8], b"AMQP\x00\x01\x00\x00");
        bytes = &bytes[8..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let size = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            let ch = u16::from_be_bytes([bytes[6], bytes[7]]);
            out.push((ch, serde_amqp::from_slice(&bytes[8..size]).unwrap()));
            bytes = &bytes[size..];
        }
        out
    }

    fn run(chunks: &[Vec<u8>]) -> (Vec<u8>, Merger) {
        let mut m = Merger::default();
        let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
        for c in chunks {
            input.extend_from_slice(c);
            m.process(&mut input, &mut out);
        }
        assert!(input.is_empty(), "left unread: {input:?}");
        (out.to_vec(), m)
    }

    fn with_header(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut v = b"AMQP\x00\x01\x00\x00".to_vec();
        frames.iter().for_each(|f| v.extend_from_slice(f));
        v
    }

    /// The hand reader agrees with serde_amqp on every encoding serde_amqp produces, and
    /// reads the bytes Proton and rhea were seen sending.
    #[test]
    fn recognises_exactly_the_accepted_settlements() {
        let states = [
            Some(DeliveryState::Accepted(Accepted {})),
            Some(DeliveryState::Released(Released {})),
            Some(DeliveryState::Rejected(Rejected { error: None })),
            None,
        ];
        for role in [Role::Receiver, Role::Sender] {
            for first in [0, 1, 255, 256, 70_000, u32::MAX - 1] {
                for last in [None, Some(first), Some(first.saturating_add(3)), Some(0)] {
                    for settled in [true, false] {
                        for state in &states {
                            for batchable in [false, true] {
                                let d = Disposition {
                                    role: role.clone(),
                                    first,
                                    last,
                                    settled,
                                    state: state.clone(),
                                    batchable,
                                };
                                let f = frame(9, &d);
                                let want = (role == Role::Receiver
                                    && settled
                                    && matches!(state, Some(DeliveryState::Accepted(_)))
                                    && last.unwrap_or(first) >= first)
                                    .then_some((9, first, last.unwrap_or(first)));
                                assert_eq!(accepted_disposition(&f), want, "{d:?} {f:02x?}");
                            }
                        }
                    }
                }
            }
        }
        // Seen from Proton (list8, smalluint first/last) and rhea (list32).
        let proton = [
            0x00, 0x00, 0x00, 0x18, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x15, 0xc0, 0x0b, 0x05,
            0x41, 0x52, 0x3d, 0x52, 0x4f, 0x41, 0x00, 0x53, 0x24, 0x45,
        ];
        assert_eq!(accepted_disposition(&proton), Some((0, 0x3d, 0x4f)));
        let rhea = [
            0x00, 0x00, 0x00, 0x1e, 0x02, 0x00, 0x00, 0x00, 0x00, 0x53, 0x15, 0xd0, 0x00, 0x00,
            0x00, 0x0e, 0x00, 0x00, 0x00, 0x05, 0x41, 0x52, 0x78, 0x52, 0x9f, 0x41, 0x00, 0x53,
            0x24, 0x45,
        ];
        assert_eq!(accepted_disposition(&rhea), Some((0, 0x78, 0x9f)));
        // Truncated or padded bodies are not recognised.
        assert_eq!(accepted_disposition(&proton[..23]), None);
        let mut padded = proton.to_vec();
        padded.push(0x40);
        assert_eq!(accepted_disposition(&padded), None);
    }

    #[test]
    fn contiguous_accepts_of_one_read_become_one_range() {
        let input = with_header(&(5..105).map(|i| frame(1, &accepted(i))).collect::<Vec<_>>());
        let (out, m) = run(&[input]);
        assert_eq!(
            frames(&out),
            [(
                1,
                disp(5, Some(104), true, DeliveryState::Accepted(Accepted {}))
            )]
        );
        assert_eq!(m.merged_frames, 99);
    }

    #[test]
    fn gaps_channels_ranges_and_other_states_keep_their_order_and_meaning() {
        let released = disp(7, None, true, DeliveryState::Released(Released {}));
        let rejected = disp(
            8,
            None,
            true,
            DeliveryState::Rejected(Rejected { error: None }),
        );
        let unsettled = disp(9, None, false, DeliveryState::Accepted(Accepted {}));
        let input = vec![
            frame(0, &accepted(1)),
            frame(
                0,
                &disp(2, Some(4), true, DeliveryState::Accepted(Accepted {})),
            ),
            frame(0, &accepted(5)),
            frame(0, &accepted(10)), // gap
            frame(3, &accepted(11)), // other channel
            frame(0, &released),
            frame(0, &rejected),
            frame(0, &unsettled),
            frame(0, &accepted(12)),
        ];
        let (out, _) = run(&[with_header(&input)]);
        let acc = |f, l| disp(f, l, true, DeliveryState::Accepted(Accepted {}));
        assert_eq!(
            frames(&out),
            [
                (0, acc(1, Some(5))),
                (0, acc(10, None)),
                (3, acc(11, None)),
                (0, released),
                (0, rejected),
                (0, unsettled),
                (0, acc(12, None)),
            ]
        );
    }

    #[test]
    fn frames_split_across_reads_pass_whole_and_nothing_waits_for_more() {
        let all = with_header(&(0..4).map(|i| frame(0, &accepted(i))).collect::<Vec<_>>());
        // Every split point, including inside the protocol header and frame headers.
        for cut in 1..all.len() {
            let mut m = Merger::default();
            let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
            input.extend_from_slice(&all[..cut]);
            m.process(&mut input, &mut out);
            // What stays unread is less than one frame.
            assert!(input.len() < all.len() - 8, "cut {cut}");
            input.extend_from_slice(&all[cut..]);
            m.process(&mut input, &mut out);
            assert!(input.is_empty());
            let got = frames(&out);
            let ids: Vec<(u32, u32)> = got
                .iter()
                .map(|(_, d)| (d.first, d.last.unwrap_or(d.first)))
                .collect();
            // Covered exactly once, in order.
            let mut next = 0;
            for (f, l) in ids {
                assert_eq!(f, next, "cut {cut}");
                next = l + 1;
            }
            assert_eq!(next, 4, "cut {cut}");
        }
    }

    #[test]
    fn other_frames_and_large_frames_pass_through_byte_for_byte() {
        // An empty (heartbeat) frame, a non-disposition body, a huge frame.
        let heartbeat = vec![0, 0, 0, 8, 2, 0, 0, 0];
        let mut flow = vec![0, 0, 0, 14, 2, 0, 0, 1, 0x00, 0x53, 0x13, 0x45, 0x00, 0x00];
        flow[3] = flow.len() as u8;
        let mut big = ((MAX_INSPECTED + 10) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(&[2, 0, 0, 0]);
        big.resize(MAX_INSPECTED + 10, 0xab);
        let mut input = b"AMQP\x00\x01\x00\x00".to_vec();
        for f in [
            &heartbeat,
            &frame(0, &accepted(1)),
            &flow,
            &big,
            &frame(0, &accepted(2)),
        ] {
            input.extend_from_slice(f);
        }
        let (out, m) = run(&[input[..100].to_vec(), input[100..].to_vec()]);
        assert_eq!(out, input);
        assert_eq!(m.merged_frames, 0);
    }
}
