//! MQTT device credentials (crates/iotsync-core/src/sign/device.rs), as the gateway reads
//! a CONNECT: client id, username, password.
//!
//! Input: `clientId \0 username \0 password \0 deviceSecret`. No panic; a parsed client id
//! and username written back (`Display`) parse to the same; the password the secret gives
//! verifies; the fuzzed password verifies only if it is that MAC (hex, either case).
#![no_main]

use iotsync_core::sign::device::{sign_password, verify, DeviceClientId, DeviceUsername};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(4, '\0');
    let client_id = parts.next().unwrap_or("");
    let username = parts.next().unwrap_or("");
    let password = parts.next().unwrap_or("");
    let secret = parts.next().unwrap_or("");

    let cid = client_id.parse::<DeviceClientId>();
    if let Ok(c) = &cid {
        let w = c.to_string();
        let again: DeviceClientId = w
            .parse()
            .unwrap_or_else(|e| panic!("{w:?} (written back from {client_id:?}) refused: {e}"));
        assert_eq!(&again, c, "client id round trip through {w:?}");
    }
    let user = username.parse::<DeviceUsername>();
    if let Ok(u) = &user {
        let w = u.to_string();
        let again: DeviceUsername = w
            .parse()
            .unwrap_or_else(|e| panic!("{w:?} (written back from {username:?}) refused: {e}"));
        assert_eq!(&again, u, "username round trip through {w:?}");
    }
    let (Ok(c), Ok(u)) = (cid, user) else {
        return;
    };
    let good = sign_password(&c, &u, secret);
    verify(&c, &u, &good, secret).expect("own password refused");
    verify(&c, &u, &good.to_ascii_uppercase(), secret).expect("upper-case hex refused");
    if verify(&c, &u, password, secret).is_ok() {
        assert_eq!(
            hex::decode(password.trim()).ok(),
            hex::decode(&good).ok(),
            "a wrong password verified"
        );
    }
});
