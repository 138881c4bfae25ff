//! Not built yet: see the open issues.

use crate::context::{Context, Started};

/// Starts this component's listeners and tasks.
pub async fn start(_ctx: &Context) -> anyhow::Result<Started> {
    Ok(Started::default())
}
