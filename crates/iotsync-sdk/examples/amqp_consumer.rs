//! Consume a project's sync messages over AMQP 1.0 and print them.
//!
//! ```text
//! IOTSYNC_ENDPOINT=amqp://127.0.0.1:5682 IOTSYNC_APP_KEY=… IOTSYNC_APP_SECRET=… \
//!   cargo run -p iotsync-sdk --example amqp_consumer
//! ```

use iotsync_sdk::amqp::{AmqpConsumer, Disposition};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).map_err(|_| anyhow::anyhow!("set {k}"));
    let mut builder = AmqpConsumer::builder()
        .endpoint(env("IOTSYNC_ENDPOINT")?)
        .app_key(env("IOTSYNC_APP_KEY")?)
        .app_secret(env("IOTSYNC_APP_SECRET")?)
        .client_id("example-consumer")
        .credit(100);
    if let Ok(g) = env("IOTSYNC_GROUP") {
        builder = builder.group(g);
    }
    let consumer = builder.build()?;
    // Reconnects with backoff and jitter; each message is accepted after it is printed.
    consumer
        .run(|m| async move {
            println!(
                "{} {} {} {}",
                m.generate_time,
                m.message_id,
                m.topic,
                String::from_utf8_lossy(&m.payload)
            );
            Disposition::Accept
        })
        .await;
    Ok(())
}
