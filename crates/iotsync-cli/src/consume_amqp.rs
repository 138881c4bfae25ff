//! `iotsync consume amqp`. Not built yet: see the open issues.

#[derive(Debug, clap::Args)]
pub struct AmqpArgs {}

pub async fn run(_args: AmqpArgs) -> anyhow::Result<()> {
    anyhow::bail!("iotsync consume amqp is not built yet")
}
