//! The canary workload (`secret-canary canary`): serves the SHA-256 digest of
//! the secret value it sees, never the value.

use tokio_util::sync::CancellationToken;

/// Command-line arguments of `secret-canary canary`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryArgs {
    /// Address to listen on.
    #[arg(long, env = "SECRET_CANARY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
}

/// Why the canary stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("not implemented")]
    NotImplemented,
}

/// Serve until cancelled.
pub async fn run(_args: CanaryArgs, _cancel: CancellationToken) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
