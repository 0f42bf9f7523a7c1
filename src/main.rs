//! The `secret-canary` command line: parses arguments and hands over to the
//! library. Nothing else lives here.

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "secret-canary", version, about = "End-to-end canary prober for secret delivery in Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The canary workload: serves the SHA-256 digest of the secret value it sees.
    Canary(secret_canary::canary::CanaryArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cancel = CancellationToken::new();
    match cli.command {
        Command::Canary(args) => match secret_canary::canary::run(args, cancel).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("secret-canary canary: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}
