//! The lab: a loopback stand-in for a Kubernetes cluster that secret-canary's
//! tests, demo and benchmarks run against, with a real OpenBao as the store.
//!
//! ```text
//! apiserver    generic object store + watch hub speaking the Kubernetes HTTP API
//! controllers  small clients of that API: ESO, Reloader, Deployment/ReplicaSet,
//!              kubelet (real processes on 127.x addresses), Bank-Vaults resolution
//! faults       fault switches and latency knobs, flipped while the lab runs
//! truth        ground-truth log of every step, scored against the prober
//! openbao      the real store, as a child process
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apiserver;
pub mod controllers;
pub mod faults;
pub mod lab;
pub mod openbao;
pub mod scenario;
pub mod truth;
