//! The `secret-canary` command line: parses arguments and hands over to the
//! library. Nothing else lives here.
//!
//! Exit codes: 0 success (`once`: every probe passed); 1 a probe failed or
//! broke its SLO, or the prober failed at run time; 2 usage or config errors.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secret_canary::app::{self, OnceOptions, RunOptions};
use secret_canary::check;
use secret_canary::config::{Config, ConfigError};
use secret_canary::progress;
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
    /// Log filter: a level or directives like `info,kube=warn` (RUST_LOG
    /// wins). Default `info`; `once` defaults to `warn`, since its progress
    /// display and report already tell each run's story.
    #[arg(long, env = "SECRET_CANARY_LOG_LEVEL")]
    log_level: Option<String>,
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
        /// A file holding a bearer token that `/metrics` and `/probes`
        /// then require (`/healthz` and `/readyz` stay open).
        #[arg(long, env = "SECRET_CANARY_METRICS_TOKEN_FILE")]
        metrics_token_file: Option<PathBuf>,
        #[command(flatten)]
        leader: secret_canary::leader::LeaderElectArgs,
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
        /// Also write the report to this file, in the format its name
        /// suggests (`.json`, `.md`, `.xml` = JUnit, else table) unless
        /// `--report-format` says otherwise.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Format of the `--report` file.
        #[arg(long, value_enum, requires = "report")]
        report_format: Option<Format>,
        /// Live progress on stderr: `bars` at a terminal, `lines` (one per
        /// event) when stderr is not a terminal or `CI` is set.
        #[arg(long, value_enum, default_value_t = progress::Mode::Auto)]
        progress: progress::Mode,
        /// Right after the store write, annotate each ExternalSecret with
        /// `force-sync=<unix time>` so ESO syncs without waiting for its
        /// refreshInterval (needs `patch` on externalsecrets).
        #[arg(long)]
        force_sync: bool,
        /// Compare with a report saved earlier by `--output json` (or
        /// `--report before.json`); exit 1 when a stage got slower than
        /// both `--slower-percent` and `--slower-by`, or now fails.
        #[arg(long, value_name = "BEFORE.json")]
        compare: Option<PathBuf>,
        /// Relative threshold of `--compare`, percent of the earlier duration.
        #[arg(long, default_value_t = 50.0, value_parser = percent)]
        slower_percent: f64,
        /// Absolute threshold of `--compare` (e.g. `1s`, `250ms`).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        slower_by: Duration,
        /// How long to wait for the watchers' first sync (e.g. `30s`).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Ask a running prober (its `/probes`) whether every probe had a
    /// successful run recently, waiting up to `--timeout` for the next run;
    /// exit 0 (all passed), 1 (naming each failing probe and stage) or 2.
    /// Unlike `once` it writes nothing: what `helm test` runs beside the
    /// prober.
    Check {
        /// The prober's `/probes` URL (e.g. through `kubectl port-forward`).
        #[arg(long, required_unless_present = "pods", conflicts_with = "pods")]
        url: Option<String>,
        /// A label selector of the prober Pods, each asked at its Pod IP
        /// (needs `list` on pods in the namespace); with several replicas
        /// the leader's answer counts.
        #[arg(long)]
        pods: Option<String>,
        /// The Pods' namespace (default: the kubeconfig's or the Pod's).
        #[arg(long, requires = "pods")]
        namespace: Option<String>,
        /// The prober's port on its Pods.
        #[arg(long, default_value_t = 9850)]
        port: u16,
        /// A file with the bearer token `/probes` requires.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Check only this probe (repeatable; default: every probe reported).
        #[arg(long = "probe", short = 'p')]
        probes: Vec<String>,
        /// A successful run counts if it finished at most this long ago.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        within: Duration,
        /// How long to wait for every probe to have one.
        #[arg(long, default_value = "4m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a config file: print "ok: N probes" or every problem (exit 2).
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// The canary workload: serves the SHA-256 digest of the secret value it sees.
    Canary {
        #[command(flatten)]
        args: secret_canary::canary::CanaryArgs,
        #[command(flatten)]
        log: LogArgs,
    },
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
            metrics_token_file,
            leader,
            log,
        } => {
            let Some(config) = load(&config, &log, "info") else {
                return ExitCode::from(EXIT_USAGE);
            };
            let Some(metrics_token) = read_token(metrics_token_file.as_deref()) else {
                return ExitCode::from(EXIT_USAGE);
            };
            let leader_election = match leader.config() {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let opts = RunOptions {
                listen,
                grace,
                metrics_token,
                leader_election,
            };
            runtime(|cancel| async move {
                app::spawn_signal_handler(cancel.clone());
                match app::run(config, opts, cancel).await {
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
            report: report_file,
            report_format,
            progress: progress_mode,
            force_sync,
            compare,
            slower_percent,
            slower_by,
            ready_timeout,
            log,
        } => {
            let Some(config) = load(&path, &log, "warn") else {
                return ExitCode::from(EXIT_USAGE);
            };
            // Read the baseline before running: a bad file is a usage error
            // worth knowing before a run that may take minutes.
            let baseline = match compare.as_deref().map(report::Baseline::load).transpose() {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let thresholds = report::Thresholds {
                relative: slower_percent / 100.0,
                absolute: slower_by,
            };
            let file_format = report_file.as_deref().map(|f| {
                report_format
                    .or_else(|| Format::from_extension(f))
                    .unwrap_or(Format::Table)
            });
            runtime(|cancel| async move {
                app::spawn_signal_handler(cancel.clone());
                let display = match progress_mode.resolve() {
                    progress::Mode::None => None,
                    m => Some(progress::Display::new(m)),
                };
                let opts = OnceOptions {
                    probes,
                    ready_timeout: Some(ready_timeout),
                    force_sync,
                    progress: display,
                };
                match app::once(&config, &opts, cancel).await {
                    Ok(outcomes) => {
                        let built = match &baseline {
                            Some(b) => report::build_compared(&config, &outcomes, b, thresholds),
                            None => report::build(&config, &outcomes),
                        };
                        if let (Some(file), Some(format)) = (&report_file, file_format) {
                            let text = report::render_report(&built, format);
                            if let Err(e) = std::fs::write(file, text) {
                                eprintln!("error: writing the report to {}: {e}", file.display());
                                return ExitCode::from(report::EXIT_FAIL);
                            }
                        }
                        print!("{}", report::render_report(&built, output));
                        ExitCode::from(built.exit_code)
                    }
                    Err(e) => {
                        eprintln!("secret-canary once: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
        }
        Command::Check {
            url,
            pods,
            namespace,
            port,
            token_file,
            probes,
            within,
            timeout,
            log,
        } => {
            let level = log.log_level.as_deref().unwrap_or("warn");
            if let Err(e) = telemetry::init(log.log_format, level) {
                eprintln!("secret-canary check: {e}");
            }
            let Some(token) = read_token(token_file.as_deref()) else {
                return ExitCode::from(EXIT_USAGE);
            };
            let target = match (url, pods) {
                (Some(u), _) => check::Target::Url(u),
                (None, Some(selector)) => check::Target::Pods {
                    namespace,
                    selector,
                    port,
                },
                // clap requires one of them.
                (None, None) => return ExitCode::from(EXIT_USAGE),
            };
            let opts = check::CheckOptions {
                target,
                token,
                probes,
                within,
                timeout,
                poll: Duration::from_secs(2),
            };
            runtime(|cancel| async move {
                app::spawn_signal_handler(cancel.clone());
                match check::check(&opts, cancel).await {
                    Ok(v) => {
                        print!("{}", v.render(chrono::Utc::now(), opts.within));
                        if v.passed() {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(report::EXIT_FAIL)
                        }
                    }
                    Err(e) => {
                        eprintln!("secret-canary check: {e}");
                        ExitCode::from(e.exit_code())
                    }
                }
            })
        }
        Command::Canary { args, log } => runtime(|cancel| async move {
            // The canary logs what it serves and when it stops, never the value.
            let level = log.log_level.as_deref().unwrap_or("info");
            if let Err(e) = telemetry::init(log.log_format, level) {
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

/// `50`, `50%` or `12.5` (percent, not negative).
fn percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 50 or 50%)"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: a percentage must be 0 or more"))
    }
}

/// Set up logging and load the config; on failure print why and return None.
/// The bearer token in `path`, if one was given (`Some(None)` when not);
/// `None` after printing why the file will not do.
fn read_token(path: Option<&std::path::Path>) -> Option<Option<String>> {
    match path.map(secret_canary::http::read_token_file).transpose() {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn load(path: &std::path::Path, log: &LogArgs, default_level: &str) -> Option<Config> {
    let level = log.log_level.as_deref().unwrap_or(default_level);
    if let Err(e) = telemetry::init(log.log_format, level) {
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
