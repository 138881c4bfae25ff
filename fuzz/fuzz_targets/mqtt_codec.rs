//! The device gateway's MQTT 3.1.1 codec (crates/iotsync-server/src/gateway/codec.rs).
//!
//! The input is what a device sends on one connection. Decoded packet by packet as the
//! session does; for each packet: no panic, the used length is within the input, and
//! decode(encode(p)) gives back `p` with the whole encoding used, while every strict
//! prefix of that encoding asks for more bytes.
#![no_main]

use iotsync_server::gateway::codec::{decode, encode, DEFAULT_MAX_PACKET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((packet, used))) = decode(rest, DEFAULT_MAX_PACKET) {
        assert!(
            used > 0 && used <= rest.len(),
            "used {used} of {}",
            rest.len()
        );
        let mut enc = Vec::new();
        encode(&packet, &mut enc);
        match decode(&enc, DEFAULT_MAX_PACKET) {
            Ok(Some((again, n))) => {
                assert_eq!(again, packet, "re-encoding changed the packet");
                assert_eq!(n, enc.len(), "re-encoding left bytes unused");
            }
            other => panic!("re-encoded {packet:?} does not decode: {other:?}"),
        }
        // Short packets only: the check is quadratic in the length.
        if enc.len() <= 256 {
            for cut in 0..enc.len() {
                assert_eq!(
                    decode(&enc[..cut], DEFAULT_MAX_PACKET),
                    Ok(None),
                    "cut {cut}"
                );
            }
        }
        rest = &rest[used..];
    }
});
