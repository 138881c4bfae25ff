//! AMQP after SASL: what a logged-in client sends after the AMQP protocol header, through
//! the path a connection reads it on — the frame bounds checker (bounded.rs, with the
//! `bounded` feature: only what it passes goes on), the disposition merge (merge.rs), then fe2o3's
//! transport (length-delimited frames up to its default 256 KiB max-frame-size, each
//! decoded into a performative) — until the stream ends or a frame is refused. No panic,
//! and no allocation beyond what the bytes received justify (scripts/fuzz.sh runs it
//! with `-malloc_limit_mb`).
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use fe2o3_amqp::frames::amqp::Frame;
use fe2o3_amqp::transport::Transport;
use futures_util::Stream;
use iotsync_fuzz::MemStream;
use iotsync_server::channels::amqp::merge::Merger;
use libfuzzer_sys::fuzz_target;

const HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";
const MAX_FRAME_SIZE: usize = 256 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut input = BytesMut::from(&HEADER[..]);
    input.extend_from_slice(data);
    #[cfg(feature = "bounded")]
    let mut input = {
        use iotsync_server::channels::amqp::bounded::FrameGuard;
        match FrameGuard::new(MAX_FRAME_SIZE as u32).split_checked(&mut input) {
            Ok(checked) => checked,
            Err(_) => return,
        }
    };
    let mut merged = BytesMut::new();
    Merger::default().process(&mut input, &mut merged);
    merged.extend_from_slice(&input);

    let mut transport: Transport<_, Frame> =
        Transport::bind(MemStream::new(&merged[8..]), MAX_FRAME_SIZE, None);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match Pin::new(&mut transport).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(_frame))) => {}
            Poll::Ready(Some(Err(_)) | None) => break,
            Poll::Pending => panic!("an in-memory stream waited"),
        }
    }
});
