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
