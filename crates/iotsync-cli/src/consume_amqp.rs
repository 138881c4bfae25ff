//! `iotsync consume amqp`: consumes a project's sync messages over AMQP 1.0 with the SDK
//! consumer, prints each as a JSON line (topic, messageId, generateTime, payload) and
//! settles it (accept by default; release / reject / leave unsettled for testing).

use anyhow::Context;
use iotsync_sdk::amqp::{AmqpConsumer, Disposition};

#[derive(Debug, clap::Args)]
pub struct AmqpArgs {
    /// `amqps://host:port` or `amqp://host:port` (plain, development).
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub app_key: String,
    #[arg(long, env = "IOTSYNC_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Consumer group (default: the project's default group, named after the appKey).
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long, default_value = "iotsync-cli")]
    pub client_id: String,
    /// Link credit: most messages unsettled at once.
    #[arg(long, default_value_t = 100)]
    pub credit: u32,
    /// Extra trusted CA certificate (PEM), e.g. the server's generated development cert.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
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
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

pub async fn run(args: AmqpArgs) -> anyhow::Result<()> {
    let mut b = AmqpConsumer::builder()
        .endpoint(&args.endpoint)
        .app_key(&args.app_key)
        .app_secret(&args.app_secret)
        .client_id(&args.client_id)
        .credit(args.credit);
    if let Some(g) = &args.group {
        b = b.group(g);
    }
    if let Some(f) = &args.ca_file {
        let pem = std::fs::read(f).with_context(|| format!("reading --ca-file {}", f.display()))?;
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
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    drop(held);
    // Graceful: the last outcomes reach the server before the connection ends.
    stream.close().await;
    Ok(())
}
