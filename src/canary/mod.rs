//! The canary workload (`secret-canary canary`): serves the SHA-256 digest of
//! the secret value it sees, never the value, with a long-poll so a prober
//! learns of a change within milliseconds instead of polling.
//!
//! ```text
//! source (env at start | file re-read) -> server (/digest /healthz /readyz)
//! ```

pub mod server;
pub mod source;

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use source::Source;

/// How long in-flight requests get to finish after a stop is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Command-line arguments of `secret-canary canary`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryArgs {
    /// Address to listen on.
    #[arg(long, env = "SECRET_CANARY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Serve the digest of this environment variable (read once at start).
    #[arg(
        long,
        env = "SECRET_CANARY_FROM_ENV",
        value_name = "NAME",
        conflicts_with = "from_file",
        required_unless_present = "from_file"
    )]
    pub from_env: Option<String>,
    /// Serve the digest of this file (re-read on every request; a Secret
    /// volume's file).
    #[arg(long, env = "SECRET_CANARY_FROM_FILE", value_name = "PATH")]
    pub from_file: Option<PathBuf>,
}

/// Why the canary stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Neither `--from-env` nor `--from-file` was given.
    #[error("no value source: give --from-env NAME or --from-file PATH")]
    NoSource,
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address given.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The termination signal handler could not be installed.
    #[error("could not install the SIGTERM/SIGINT handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl CanaryArgs {
    fn source(&self) -> Result<Source, Error> {
        match (&self.from_env, &self.from_file) {
            (Some(name), _) => Ok(Source::env(name)),
            (None, Some(path)) => Ok(Source::file(path)),
            (None, None) => Err(Error::NoSource),
        }
    }
}

/// Serve until `cancel` fires or the process gets SIGTERM or SIGINT (the
/// kubelet's stop signal), then stop within a couple of seconds.
pub async fn run(args: CanaryArgs, cancel: CancellationToken) -> Result<(), Error> {
    let source = args.source()?;
    let stop = cancel.child_token();
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(listen = %local, source = %source.describe(), "canary serving");

    let shared = server::Shared::new(source);
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        })
    };
    let poller = tokio::spawn(server::poll_file(shared.clone(), stop.clone()));
    let app = server::router(shared, stop.clone());
    let serve = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let result = tokio::select! {
        r = serve => r.map_err(Error::Serve),
        // Graceful shutdown waits for open connections; do not let a slow
        // client keep the Pod from terminating.
        _ = async { stop.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    };
    stop.cancel();
    let _ = signals.await;
    let _ = poller.await;
    tracing::info!("canary stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CanaryArgs,
    }

    #[test]
    fn exactly_one_source_is_required() {
        let a = Cli::try_parse_from(["x", "--from-env", "V"]).unwrap().args;
        assert_eq!(a.from_env.as_deref(), Some("V"));
        assert_eq!(a.listen, "0.0.0.0:8080");
        let a = Cli::try_parse_from(["x", "--from-file", "/f", "--listen", "127.0.0.1:1"])
            .unwrap()
            .args;
        assert_eq!(a.from_file, Some(PathBuf::from("/f")));
        assert!(Cli::try_parse_from(["x", "--from-env", "V", "--from-file", "/f"]).is_err());
    }

    #[tokio::test]
    async fn stops_on_cancel() {
        let args = CanaryArgs {
            listen: "127.0.0.1:0".into(),
            from_env: Some("PATH".into()),
            from_file: None,
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(args, cancel.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let args = CanaryArgs {
            listen: addr.clone(),
            from_env: Some("PATH".into()),
            from_file: None,
        };
        let e = run(args, CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(&addr), "{e}");
    }
}
