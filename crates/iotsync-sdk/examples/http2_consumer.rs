//! Consume a project's sync messages over HTTP/2 (gRPC) with a handler.
//!
//! ```text
//! IOTSYNC_APP_KEY=12345678 IOTSYNC_APP_SECRET=… \
//!   cargo run -p iotsync-sdk --example http2_consumer -- http://127.0.0.1:7881
//! ```
//!
//! The handler returns `Commit::Success` once the message is stored on the enterprise
//! side, or `Commit::Failure` to have it delivered again later. Messages can come twice
//! (at-least-once): de-duplicate by `messageId`.

use iotsync_sdk::http2::{Commit, Http2Consumer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7881".into());
    let consumer = Http2Consumer::builder()
        .endpoint(endpoint)
        .app_key(std::env::var("IOTSYNC_APP_KEY")?)
        .app_secret(std::env::var("IOTSYNC_APP_SECRET")?)
        .client_id("example-consumer")
        .credit(64)
        .build()?;
    consumer
        .run(|envelope| async move {
            println!(
                "{} {} {}",
                envelope.message_id,
                envelope.topic,
                String::from_utf8_lossy(&envelope.payload)
            );
            Commit::Success
        })
        .await;
    Ok(())
}
