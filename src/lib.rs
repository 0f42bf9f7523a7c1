//! secret-canary: an end-to-end canary prober for secret delivery in Kubernetes.
//!
//! Data flows left to right, one module per box:
//!
//! ```text
//! config -> schedule -> probe (store, cluster, canary client) -> outcome
//!                       outcome -> metrics -> http (/metrics /probes)
//!                       outcome -> report  (`once`: table / JSON / Markdown / JUnit, exit code)
//!                       run progress -> progress (`once`: live bars or lines on stderr)
//! canary: the workload in the canary Pods (`secret-canary canary`)
//! ```
//!
//! Around them: `app` (the `run` and `once` drivers, which share one code
//! path per run), `telemetry` (logging) and `main.rs` (parsing only).
//!
//! # Dependency order
//!
//! Top to bottom, each module uses only modules below it (no import
//! cycle; `scripts/module-graph.py` checks it):
//!
//! ```text
//! app          the drivers: everything below
//! telemetry    -> progress
//! http         -> report, metrics, config, vocab
//! progress     -> report, config, vocab
//! schedule     -> metrics, cadence
//! probe        -> config, vocab
//! metrics      -> slo, config, vocab
//! report       -> slo, config, vocab
//! slo          -> config, vocab          the SLO rule (breaches, end-to-end)
//! config       -> cadence, vocab         the YAML model and its validation
//! cadence      cron parsed once, intervals
//! vocab        Stage, Reason, Outcome, the chain's stages, DEFAULT_DEADLINE
//! canary, leader: on their own (the workload; leader election)
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cadence;
pub mod canary;
pub mod check;
pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod slo;
pub mod telemetry;
pub mod vocab;

#[cfg(test)]
mod fuzz_tests;
