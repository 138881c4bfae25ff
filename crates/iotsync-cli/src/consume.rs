//! `iotsync consume …`: a consumer for testing and debugging a project's sync. Prints
//! each message as one JSON line on stdout and settles it as asked.

use anyhow::Context;
use clap::Subcommand;

/// What every `consume` command takes besides its endpoint and its settle choice.
#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    #[arg(long)]
    pub app_key: String,
    #[arg(long, env = "IOTSYNC_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Consumer group (default: the project's default group, named after the appKey).
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long, default_value = "iotsync-cli")]
    pub client_id: String,
    /// Most messages unsettled at once (link credit / max in flight).
    #[arg(long, default_value_t = 100)]
    pub credit: u32,
    /// Extra trusted CA certificate (PEM), e.g. the server's generated development cert.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

impl ConsumerArgs {
    /// The `--ca-file` PEM, if given.
    pub fn ca_pem(&self) -> anyhow::Result<Option<Vec<u8>>> {
        self.ca_file
            .as_ref()
            .map(|f| std::fs::read(f).with_context(|| format!("reading --ca-file {}", f.display())))
            .transpose()
    }
}

#[derive(Debug, Subcommand)]
pub enum ConsumeCommand {
    /// Consume over AMQP 1.0 (the recommended channel).
    Amqp(crate::consume_amqp::AmqpArgs),
    /// Consume over HTTP/2 (gRPC).
    Http2(crate::consume_http2::Http2Args),
}

pub async fn run(cmd: ConsumeCommand) -> anyhow::Result<()> {
    match cmd {
        ConsumeCommand::Amqp(a) => crate::consume_amqp::run(a).await,
        ConsumeCommand::Http2(a) => crate::consume_http2::run(a).await,
    }
}

/// One received message as a JSON line on stdout (payload shown as the JSON it is, or as
/// text when it is not JSON), flushed at once so pipes see it.
pub fn print_line(env: &iotsync_sdk::Envelope, attempt: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    let payload: serde_json::Value = serde_json::from_slice(&env.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&env.payload).into())
    });
    let mut line = serde_json::json!({
        "topic": env.topic,
        "messageId": env.message_id.to_string(),
        "generateTime": env.generate_time,
        "payload": payload,
    });
    if let Some(a) = attempt {
        line["attempt"] = a.into();
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}
