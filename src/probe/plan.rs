//! Which hops a probe's chain has, read once from its config: the shape
//! every run of the probe follows.

use crate::config::{CanarySource, ChainConfig, Trigger};

use super::Stage;

/// Which hops a chain has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// An ExternalSecret is synced (`eso_sync`).
    pub eso: bool,
    /// A Kubernetes Secret carries the value (`secret_update`).
    pub secret: bool,
    /// Who rolls the Deployment; `None` when nothing rolls.
    pub trigger: Option<Trigger>,
    /// A Deployment is named (for the replica count).
    pub deployment: bool,
    /// The canary reads an env var (fixed at process start).
    pub env_canary: bool,
}

impl Plan {
    /// The plan of a configured chain.
    pub fn of(chain: &ChainConfig) -> Plan {
        Plan {
            eso: chain.external_secret.is_some(),
            secret: chain.secret.is_some(),
            trigger: chain
                .rollout
                .as_ref()
                .map(|r| r.trigger)
                .filter(|t| *t != Trigger::None),
            deployment: chain.rollout.is_some(),
            env_canary: chain.canary.source == CanarySource::Env,
        }
    }

    /// The chain's stages, in order (without `end_to_end`).
    pub fn stages(&self) -> Vec<Stage> {
        Stage::chain(self.eso, self.secret, self.trigger.is_some())
    }
}
