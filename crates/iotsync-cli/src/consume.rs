//! `iotsync consume …`: a consumer for testing and debugging a project's sync. Prints
//! each message as one JSON line on stdout and settles it as asked.

use clap::Subcommand;

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
