//! Logging set-up: tracing-subscriber to stderr (stdout carries `once`'s
//! report), text or JSON, filtered by `--log-level` or `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, span fields included (for log shippers).
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The level or filter directive does not parse.
    #[error("invalid log level {level:?}: {source}")]
    InvalidLevel {
        /// What was given.
        level: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging already initialised: {0}")]
    AlreadySet(String),
}

/// Install the global subscriber. `level` is a filter directive (`info`,
/// `secret_canary=debug,kube=warn`); a set `RUST_LOG` takes precedence.
pub fn init(format: LogFormat, level: &str) -> Result<(), Error> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            EnvFilter::try_new(&env).map_err(|source| Error::InvalidLevel {
                level: env.clone(),
                source,
            })?
        }
        _ => EnvFilter::try_new(level).map_err(|source| Error::InvalidLevel {
            level: level.to_string(),
            source,
        })?,
    };
    // Colour codes only for a person at a terminal, never into log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        // Lines step around `once`'s progress bars when those are drawn.
        .with_writer(crate::progress::LogWriter);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    }
    .map_err(|e| Error::AlreadySet(e.to_string()))
}
