//! The disposition merge on the AMQP read side (crates/iotsync-server/src/channels/amqp/
//! merge.rs): what a logged-in client sends after the AMQP protocol header, cut into
//! reads of a size the input's first byte picks.
//!
//! Oracle (as merge.rs's unit tests): the frames before and after the merge, decoded with
//! serde_amqp, say the same thing. Each side becomes a list of items, an accepted
//! settlement `(channel, first..=last)` for a disposition serde_amqp reads as a settled
//! receiver `accepted`, the frame's bytes otherwise; neighbouring settlements of one
//! channel over contiguous ranges are joined; the lists must be equal. Also: bytes after
//! a frame size fe2o3 refuses pass unchanged, nothing is held back that is a whole frame,
//! the merged-frame count is what disappeared, and with nothing merged the bytes are
//! identical.
//!
//! With the `bounded` feature the input is first cut where the frame bounds checker
//! (bounded.rs) refuses a frame, as the connection does (it ends there). Without it,
//! serde_amqp's own decoding of an unchecked frame can overflow (a list count near
//! 2^32, found by this target): the checker is what keeps such frames from fe2o3.
#![no_main]

use bytes::BytesMut;
use fe2o3_amqp::types::definitions::Role;
use fe2o3_amqp::types::messaging::DeliveryState;
use fe2o3_amqp::types::performatives::Disposition;
use iotsync_server::channels::amqp::merge::Merger;
use libfuzzer_sys::fuzz_target;

const HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
/// The merger reads frames up to this size (merge.rs `MAX_INSPECTED`).
const MAX_INSPECTED: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
enum Item<'a> {
    Accepted { channel: u16, first: u32, last: u32 },
    Raw(&'a [u8]),
}

/// The items of a stream (after the protocol header), what is left after the last whole
/// frame, and whether a frame size below 8 ended it (fe2o3 refuses the connection there,
/// so nothing after it counts).
fn items(mut s: &[u8]) -> (Vec<Item<'_>>, &[u8], bool) {
    let mut out: Vec<Item<'_>> = Vec::new();
    while s.len() >= 8 {
        let size = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if size < 8 {
            return (out, s, true);
        }
        if s.len() < size {
            break;
        }
        let (frame, rest) = s.split_at(size);
        s = rest;
        let item = accepted(frame).unwrap_or(Item::Raw(frame));
        match (out.last_mut(), &item) {
            (
                Some(Item::Accepted {
                    channel,
                    first: _,
                    last,
                }),
                Item::Accepted {
                    channel: c2,
                    first: f2,
                    last: l2,
                },
            ) if channel == c2 && last.checked_add(1) == Some(*f2) => *last = *l2,
            _ => out.push(item),
        }
    }
    (out, s, false)
}

fn accepted(frame: &[u8]) -> Option<Item<'static>> {
    if frame.len() > MAX_INSPECTED || frame[4] != 2 || frame[5] != 0 || frame.len() == 8 {
        return None;
    }
    let d: Disposition = serde_amqp::from_slice(&frame[8..]).ok()?;
    let last = d.last.unwrap_or(d.first);
    (d.role == Role::Receiver
        && d.settled
        && matches!(d.state, Some(DeliveryState::Accepted(_)))
        && last >= d.first)
        .then_some(Item::Accepted {
            channel: u16::from_be_bytes([frame[6], frame[7]]),
            first: d.first,
            last,
        })
}

/// The stream up to the first frame the bounds checker refuses (all of it without the
/// `bounded` feature).
#[cfg(feature = "bounded")]
fn bounded(stream: &[u8]) -> &[u8] {
    use iotsync_server::channels::amqp::bounded::check_frame;
    /// fe2o3's default max-frame-size, which the server announces.
    const MAX_FRAME_SIZE: u32 = 256 * 1024;
    let mut at = 0;
    while stream.len() - at >= 4 {
        let s = &stream[at..];
        let size = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if size > s.len() {
            break;
        }
        if size < 8 || check_frame(&s[..size], MAX_FRAME_SIZE).is_err() {
            return &stream[..at];
        }
        at += size;
    }
    stream
}

#[cfg(not(feature = "bounded"))]
fn bounded(stream: &[u8]) -> &[u8] {
    stream
}

fn count_frames(mut s: &[u8]) -> usize {
    // Only called on streams without a frame size below 8.
    let mut n = 0;
    while s.len() >= 8 {
        let size = u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if size < 8 || s.len() < size {
            break;
        }
        s = &s[size..];
        n += 1;
    }
    n
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) + 1;
    let mut all = HEADER.to_vec();
    all.extend_from_slice(bounded(stream));

    let mut m = Merger::default();
    let (mut input, mut out) = (BytesMut::new(), BytesMut::new());
    for piece in all.chunks(chunk) {
        input.extend_from_slice(piece);
        m.process(&mut input, &mut out);
        // What stays unread is the start of one frame the merger reads whole.
        if input.len() >= 8 {
            let size = u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
            assert!(
                (8..=MAX_INSPECTED).contains(&size) && input.len() < size,
                "held back {} bytes of a frame of {size}",
                input.len()
            );
        }
    }
    let mut after = out.to_vec();
    after.extend_from_slice(&input);

    assert_eq!(&after[..8], HEADER, "the protocol header changed");
    let (want, want_tail, broken) = items(&all[8..]);
    let (got, got_tail, got_broken) = items(&after[8..]);
    assert_eq!(got, want, "the merge changed what the frames say");
    assert_eq!(
        got_broken, broken,
        "the merge moved or hid a bad frame size"
    );
    if m.merged_frames == 0 {
        assert_eq!(after, all, "nothing merged, yet the bytes changed");
    }
    if !broken {
        assert_eq!(
            got_tail, want_tail,
            "bytes after the last whole frame changed"
        );
        assert_eq!(
            count_frames(&all[8..]) - count_frames(&after[8..]),
            m.merged_frames as usize,
            "merged-frame count"
        );
    }
});
