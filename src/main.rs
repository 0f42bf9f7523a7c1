//! The `secret-canary` command line: parses arguments and hands over to the
//! library. Nothing else lives here.
//!
//! Exit codes: 0 success (`once`: every probe passed); 1 a probe failed or
//! broke its SLO, or the prober failed at run time; 2 usage or config errors.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secret_canary::app::{self, OnceOptions, RunOptions};
use secret_canary::config::{Config, ConfigError};
use secret_canary::report::{self, Format, EXIT_USAGE};
use secret_canary::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "secret-canary",
    version,
    about = "End-to-end canary prober for secret delivery in Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct LogArgs {
    /// Log line format (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SECRET_CANARY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter: a level or directives like `info,kube=warn` (RUST_LOG wins).
    #[arg(long, default_value = "info", env = "SECRET_CANARY_LOG_LEVEL")]
    log_level: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run every probe on its schedule and export metrics until SIGTERM.
    Run {
        /// The prober's config file.
        #[arg(long, short, env = "SECRET_CANARY_CONFIG")]
        config: PathBuf,
        /// Address of the metrics / health endpoint.
        #[arg(long, default_value = app::DEFAULT_LISTEN, env = "SECRET_CANARY_LISTEN")]
        listen: SocketAddr,
        /// How long in-flight runs get to end after SIGTERM (e.g. `10s`).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run the selected probes once, now, print a report and exit 0 (all
    /// passed), 1 (a probe failed or broke its SLO) or 2 (usage/config error).
    Once {
        /// The prober's config file.
        #[arg(long, short, env = "SECRET_CANARY_CONFIG")]
        config: PathBuf,
        /// Run only this probe (repeatable; default: all).
        #[arg(long = "probe", short = 'p')]
        probes: Vec<String>,
        /// Report format on stdout.
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// How long to wait for the watchers' first sync (e.g. `30s`).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a config file: print "ok: N probes" or every problem (exit 2).
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// The canary workload: serves the SHA-256 digest of the secret value it sees.
    Canary(secret_canary::canary::CanaryArgs),
}

fn main() -> ExitCode {
    // Both ring and aws-lc-rs are in the dependency tree: pick one before
    // any TLS client exists.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Run {
            config,
            listen,
            grace,
            log,
        } => {
            let Some(config) = load(&config, &log) else {
                return ExitCode::from(EXIT_USAGE);
            };
            runtime(|cancel| async move {
                app::spawn_signal_handler(cancel.clone());
                match app::run(config, RunOptions { listen, grace }, cancel).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %e, "secret-canary run failed");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
        }
        Command::Once {
            config: path,
            probes,
            output,
            ready_timeout,
            log,
        } => {
            let Some(config) = load(&path, &log) else {
                return ExitCode::from(EXIT_USAGE);
            };
            let opts = OnceOptions {
                probes,
                ready_timeout: Some(ready_timeout),
            };
            runtime(|cancel| async move {
                app::spawn_signal_handler(cancel.clone());
                match app::once(&config, &opts, cancel).await {
                    Ok(outcomes) => {
                        print!("{}", report::render(&config, &outcomes, output));
                        ExitCode::from(report::exit_code(&config, &outcomes))
                    }
                    Err(e) => {
                        eprintln!("secret-canary once: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
        }
        Command::Canary(args) => runtime(|cancel| async move {
            // The canary logs what it serves and when it stops, never the value.
            if let Err(e) = telemetry::init(LogFormat::Text, "info") {
                eprintln!("secret-canary canary: {e}");
            }
            match secret_canary::canary::run(args, cancel).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("secret-canary canary: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
    }
}

/// Set up logging and load the config; on failure print why and return None.
fn load(path: &std::path::Path, log: &LogArgs) -> Option<Config> {
    if let Err(e) = telemetry::init(log.log_format, &log.log_level) {
        eprintln!("secret-canary: {e}");
        return None;
    }
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            print_config_error(&e);
            None
        }
    }
}

fn print_config_error(e: &ConfigError) {
    for line in e.lines() {
        eprintln!("error: {line}");
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!("ok: {} probes", c.probes.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(&e);
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Run `f` on a multi-threaded runtime with a fresh cancellation token.
fn runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(f(CancellationToken::new()));
            // The drivers have already drained what matters; do not let a
            // straggling blocking task hold the exit.
            rt.shutdown_timeout(Duration::from_millis(500));
            code
        }
        Err(e) => {
            eprintln!("secret-canary: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
