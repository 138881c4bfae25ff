//! `iotsync consume http2`: consumes a project's sync messages over HTTP/2 (gRPC) with the
//! SDK consumer, prints each as a JSON line (topic, messageId, generateTime, payload,
//! attempt) and settles it (commit success by default; failure / unsettled for testing).

use iotsync_sdk::http2::{Commit, Http2Consumer};

#[derive(Debug, clap::Args)]
pub struct Http2Args {
    /// `http://host:port` (h2c, development) or `https://host:port` (TLS).
    #[arg(long, default_value = "http://127.0.0.1:7881")]
    pub endpoint: String,
    #[command(flatten)]
    pub common: crate::consume::ConsumerArgs,
    /// Answer "commit failure" to every message (the platform retries it).
    #[arg(long, conflicts_with = "no_ack")]
    pub fail: bool,
    /// Leave messages unacknowledged (they come back after the ack time-out or disconnect).
    #[arg(long, conflicts_with = "fail")]
    pub no_ack: bool,
}

pub async fn run(args: Http2Args) -> anyhow::Result<()> {
    let c = &args.common;
    let mut b = Http2Consumer::builder()
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
    let consumer = b.build()?;
    let commit = if args.no_ack {
        None
    } else if args.fail {
        Some(Commit::Failure)
    } else {
        Some(Commit::Success)
    };
    let mut stream = consumer.stream();
    let mut n = 0u64;
    let mut held = Vec::new();
    while let Some(item) = stream.next().await {
        let m = match item {
            Ok(m) => m,
            Err(e) => {
                eprintln!("iotsync consume http2: {e}; reconnecting");
                continue;
            }
        };
        crate::consume::print_line(&m.envelope, Some(m.attempt))?;
        match commit {
            Some(c) => {
                if let Err(e) = m.settle(c).await {
                    eprintln!("iotsync consume http2: {e}");
                }
            }
            // Kept (not dropped) so nothing is settled until we exit.
            None => held.push(m),
        }
        n += 1;
        if args.common.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    drop(held);
    Ok(())
}
