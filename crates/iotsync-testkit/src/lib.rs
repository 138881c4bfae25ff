//! The one test harness of the iotsync workspace (a dev-dependency, never published).
//!
//! - [`TestServer`]: the server in-process on port 0 with a fresh data dir and a manual
//!   clock; [`ServeProcess`]: the real `iotsync serve` binary, its banner read for the
//!   bound addresses.
//! - [`Rest`]: the REST client with the operator token, and the fixtures built on it
//!   ([`ProjectSpec`] → [`Project`] with its [`Device`]s), stats and dead letters.
//! - [`HubConsumer`]: a consumer attached in-process through the delivery hub (the handle
//!   every channel uses); [`RawDevice`]: MQTT through the gateway's own codec.
//! - [`PeerProc`] and the wrappers of the outside peers in `tests/peers/`
//!   (python-qpid-proton, rhea, grpcio, the legacy webhook receiver, paho-mqtt,
//!   mosquitto_pub), all printing JSON lines. A missing peer fails the test and says
//!   to run `scripts/install-test-deps.sh`.
//!
//! Every wait here is a failure bound ([`WAIT`]), never a timing assertion.

// Test code: a fixture that cannot be set up panics the test that asked for it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod binary;
mod fixtures;
mod hub;
pub mod peers;
/// A PostgreSQL schema of its own per test (one file with the store's tests).
#[path = "../../iotsync-store/tests/common/pg.rs"]
pub mod pg;
mod rest;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use binary::{ServeProcess, EPHEMERAL};
pub use fixtures::{Device, Project, ProjectSpec, LAMPS};
pub use hub::{ack_all, nothing, payload, receive, settle_all, take, HubConsumer, Msg, RawDevice};
pub use peers::{AmqpPeer, PeerProc};
pub use rest::{assert_error, audit_actions, Rest};
pub use server::{ServerBuilder, TestServer};

/// The operator token of every test server.
pub const TOKEN: &str = "test-operator-token-0123456789";
/// A fixed start for a manual clock (2027-01-15), for tests that check absolute times.
pub const T0: i64 = 1_800_000_000_000;
/// How long a test waits for something that should happen before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// The workspace root (where `tests/peers/` and `proto/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls `f` until it holds; fails with `what` after [`WAIT`].
pub async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
