//! What the CLI's integration tests share.

/// Every listener of `iotsync serve` on a free port, so tests never collide with each
/// other or a running service.
pub const EPHEMERAL: [&str; 14] = [
    "--api-listen",
    "127.0.0.1:0",
    "--amqp-listen",
    "127.0.0.1:0",
    "--amqps-listen",
    "127.0.0.1:0",
    "--http2-listen",
    "127.0.0.1:0",
    "--http2-tls-listen",
    "127.0.0.1:0",
    "--mqtt-listen",
    "127.0.0.1:0",
    "--mqtts-listen",
    "127.0.0.1:0",
];
