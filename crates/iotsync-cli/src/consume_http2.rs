//! `iotsync consume http2`. Not built yet: see the open issues.

#[derive(Debug, clap::Args)]
pub struct Http2Args {}

pub async fn run(_args: Http2Args) -> anyhow::Result<()> {
    anyhow::bail!("iotsync consume http2 is not built yet")
}
