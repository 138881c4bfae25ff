//! iotsync-sdk: what an enterprise server links to stay in sync with iotsync.
//!
//! - [`amqp`]: the AMQP 1.0 consumer (recommended channel).
//! - [`http2`]: the HTTP/2 (gRPC) consumer.
//! - [`webhook`]: verifying legacy HTTP push signatures.
//! - [`cloud`]: a cloud API client that signs requests and manages the cloud token.
//! - [`backoff`]: reconnect delays with exponential backoff and jitter.
//!
//! The SDK never depends on the server crates; it shares only `iotsync-core` (envelope,
//! signing).

pub mod amqp;
pub mod backoff;
pub mod cloud;
pub mod http2;
pub mod webhook;

pub use iotsync_core::Envelope;
