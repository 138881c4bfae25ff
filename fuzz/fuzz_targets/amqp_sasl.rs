//! AMQP before SASL (crates/iotsync-server/src/channels/amqp/sasl.rs and auth.rs): what
//! an unauthenticated client sends first, read exactly as a connection reads it — the
//! SASL protocol header, the server's mechanisms, the client's `sasl-init` — then the
//! PLAIN response split and its username parsed. No panic, and no allocation beyond what
//! a ≤ 16 KiB frame can justify (scripts/fuzz.sh runs it with `-malloc_limit_mb`).
#![no_main]

use iotsync_core::sign::amqp::AmqpCredentials;
use iotsync_fuzz::{run_now, MemStream};
use iotsync_server::channels::amqp::auth::split_plain;
use iotsync_server::channels::amqp::sasl::{read_login, SASL_HEADER};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut io = MemStream::new(data);
    let login = run_now(read_login(&mut io));
    // Once a protocol header came in, the server answered with its own SASL header.
    if data.len() >= 8 {
        assert_eq!(io.written.get(..8), Some(&SASL_HEADER[..]));
    }
    if let Ok(login) = login {
        if let Ok((user, _password)) = split_plain(&login.response) {
            let _ = user.parse::<AmqpCredentials>();
        }
    }
});
