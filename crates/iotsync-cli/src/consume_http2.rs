//! `iotsync consume http2`: consumes a project's sync messages over HTTP/2 (gRPC) with the
//! SDK consumer, prints each as a JSON line (topic, messageId, generateTime, payload,
//! attempt) and settles it (commit success by default; failure / unsettled for testing).

use anyhow::Context;
use iotsync_sdk::http2::{Commit, Http2Consumer};

#[derive(Debug, clap::Args)]
pub struct Http2Args {
    /// `http://host:port` (h2c, development) or `https://host:port` (TLS).
    #[arg(long, default_value = "http://127.0.0.1:7881")]
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
    /// Most unacknowledged messages in flight.
    #[arg(long, default_value_t = 100)]
    pub credit: u32,
    /// Extra trusted CA certificate (PEM), e.g. the server's generated development cert.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Answer "commit failure" to every message (the platform retries it).
    #[arg(long, conflicts_with = "no_ack")]
    pub fail: bool,
    /// Leave messages unacknowledged (they come back after the ack time-out or disconnect).
    #[arg(long, conflicts_with = "fail")]
    pub no_ack: bool,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

pub async fn run(args: Http2Args) -> anyhow::Result<()> {
    let mut b = Http2Consumer::builder()
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
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
    }
    drop(held);
    Ok(())
}
