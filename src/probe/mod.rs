//! One probe run: write a fresh value to the store, then follow it through
//! the cluster to the canary, ending as exactly one [`Outcome`].

pub mod outcome;

pub use outcome::{Failure, Outcome, Reason, RunResult, Stage, StageTiming};
