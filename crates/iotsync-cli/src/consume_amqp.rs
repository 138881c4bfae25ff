//! `iotsync consume amqp`: consumes a project's sync messages over AMQP 1.0 with the SDK
//! consumer, prints each as a JSON line (topic, messageId, generateTime, payload) and
//! settles it (accept by default; release / reject / leave unsettled for testing).

use iotsync_sdk::amqp::{AmqpConsumer, Disposition};

#[derive(Debug, clap::Args)]
pub struct AmqpArgs {
    /// `amqps://host:port` or `amqp://host:port` (plain, development).
    #[arg(long)]
    pub endpoint: String,
    #[command(flatten)]
    pub common: crate::consume::ConsumerArgs,
    /// TLS server name to verify (default: the endpoint's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Release every message (the platform retries it) instead of accepting it.
    #[arg(long, conflicts_with_all = ["reject", "no_ack"])]
    pub release: bool,
    /// Reject every message (the platform dead-letters it).
    #[arg(long, conflicts_with_all = ["release", "no_ack"])]
    pub reject: bool,
    /// Leave messages unsettled (they come back after the ack time-out or disconnect).
    #[arg(long, conflicts_with_all = ["release", "reject"])]
    pub no_ack: bool,
}

pub async fn run(args: AmqpArgs) -> anyhow::Result<()> {
    let c = &args.common;
    let mut b = AmqpConsumer::builder()
        .endpoint(&args.endpoint)
        .app_key(&c.app_key)
        .app_secret(&c.app_secret)
        .client_id(&c.client_id)
        .credit(c.credit);
    if let Some(g) = &c.group {
        b = b.group(g);
    }
    if let Some(pem) = c.ca_pem()? {
        b = b.ca_pem(pem);
    }
    if let Some(n) = &args.server_name {
        b = b.server_name(n);
    }
    let consumer = b.build()?;
    let disposition = if args.release {
        Some(Disposition::Release)
    } else if args.reject {
        Some(Disposition::Reject)
    } else if args.no_ack {
        None
    } else {
        Some(Disposition::Accept)
    };
    let mut stream = consumer.stream();
    let mut n = 0u64;
    let mut held = Vec::new();
    while let Some(item) = stream.next().await {
        let m = match item {
            Ok(m) => m,
            Err(e) => {
                eprintln!("iotsync consume amqp: {e}; reconnecting");
                continue;
            }
        };
        crate::consume::print_line(&m.envelope, None)?;
        match disposition {
            Some(d) => m.settle(d).await?,
            // Kept (not dropped) so nothing is settled until we exit.
            None => held.push(m),
        }
        n += 1;
        if args.common.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    drop(held);
    // Graceful: the last outcomes reach the server before the connection ends.
    stream.close().await;
    Ok(())
}
