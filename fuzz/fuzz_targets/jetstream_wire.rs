//! The JetStream engine's stored message body (crates/iotsync-backlog/src/jetstream/
//! wire.rs, hand-written): any bytes a stream could hand back decode to a message or to
//! an error, never a panic; a message that decodes encodes to a body that decodes to the
//! same message (nothing is lost or changed on the way through the stream).
#![no_main]

use iotsync_backlog::wire_format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = wire_format::decode(data) {
        let again = wire_format::decode(&wire_format::encode(&m))
            .expect("a body the engine wrote must decode");
        assert_eq!(again, m, "the body round-trips");
    }
});
