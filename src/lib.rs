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

pub mod app;
pub mod canary;
pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod telemetry;

#[cfg(test)]
mod fuzz_tests;
