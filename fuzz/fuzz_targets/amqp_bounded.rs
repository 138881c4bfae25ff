//! The AMQP frame bounds checker (crates/iotsync-server/src/channels/amqp/bounded.rs,
//! issue 15): what a client sends after the protocol header (the first byte of the input
//! picks the size of the reads it comes in).
//!
//! - No panic.
//! - The reads' sizes do not matter: fed in pieces, the guard passes on the same bytes,
//!   and refuses at the same point, as when fed everything at once.
//! - What it passes is the protocol header and whole frames within the limit, each of
//!   which `check_frame` accepts on its own.
//! - A frame it passes is safe for fe2o3's decoder: decoding it neither panics nor
//!   allocates more than the frame justifies (`-malloc_limit_mb` in scripts/fuzz.sh).
#![no_main]

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::FrameDecoder;
use iotsync_server::channels::amqp::bounded::{check_frame, FrameGuard};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
const MAX_FRAME_SIZE: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut all = HEADER.to_vec();
    all.extend_from_slice(stream);

    // At once.
    let mut input = BytesMut::from(&all[..]);
    let whole = FrameGuard::new(MAX_FRAME_SIZE).split_checked(&mut input);

    // In pieces.
    let mut g = FrameGuard::new(MAX_FRAME_SIZE);
    let (mut input, mut passed) = (BytesMut::new(), Vec::new());
    let mut refused = false;
    for piece in all.chunks(usize::from(chunk) + 1) {
        input.extend_from_slice(piece);
        match g.split_checked(&mut input) {
            Ok(c) => passed.extend_from_slice(&c),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    match &whole {
        Ok(c) => {
            assert!(!refused, "refused in pieces, passed at once");
            assert_eq!(&passed[..], &c[..], "passed other bytes in pieces");
        }
        Err(_) => {
            // At once it stops at the first bad frame; in pieces everything before it
            // may already be through, and then the same frame is refused.
            assert!(refused, "passed in pieces, refused at once");
        }
    }

    // What passed: the header, then whole frames that each check, and decode safely.
    assert!(passed.len() <= all.len() && all.starts_with(&passed));
    if passed.len() < 8 {
        return;
    }
    let mut rest = &passed[8..];
    while !rest.is_empty() {
        assert!(rest.len() >= 8, "a partial frame header passed");
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!((8..=MAX_FRAME_SIZE as usize).contains(&size) && size <= rest.len());
        let frame = &rest[..size];
        check_frame(frame, MAX_FRAME_SIZE).expect("a passed frame does not check alone");
        if frame[4] == 2 {
            let mut body = BytesMut::from(&frame[4..]);
            let _ = FrameDecoder {}.decode(&mut body);
        }
        rest = &rest[size..];
    }
});
