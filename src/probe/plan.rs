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

    /// This run's shape, from the cluster at run start. A Secret that does
    /// not exist yet while no canary is ready is a first delivery (a fresh
    /// install, the store path still empty): the canaries wait for the
    /// Secret and start with the value ESO creates, and Reloader does not act
    /// on a Secret's creation (upstream's `--reload-on-create` is off by
    /// default), so there is no rollout to wait for. A missing Secret while
    /// canaries run (deleted under them) keeps the rollout: their old value
    /// is what a missing rollout would leave.
    pub fn for_run(self, secret_absent: bool, ready_canaries: usize) -> Plan {
        if self.trigger == Some(Trigger::Reloader) && secret_absent && ready_canaries == 0 {
            return Plan {
                trigger: None,
                ..self
            };
        }
        self
    }

    /// The chain's stages, in order (without `end_to_end`).
    pub fn stages(&self) -> Vec<Stage> {
        Stage::chain(self.eso, self.secret, self.trigger.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reloader_plan() -> Plan {
        Plan {
            eso: true,
            secret: true,
            trigger: Some(Trigger::Reloader),
            deployment: true,
            env_canary: true,
        }
    }

    #[test]
    fn a_first_delivery_has_no_rollout_to_wait_for() {
        let p = reloader_plan();
        let first = p.for_run(true, 0);
        assert_eq!(first.trigger, None);
        assert_eq!(
            first.stages(),
            vec![
                Stage::StoreWrite,
                Stage::EsoSync,
                Stage::SecretUpdate,
                Stage::CanaryObserve
            ]
        );
        // Deleted under running canaries: their old value stays until a rollout.
        assert_eq!(p.for_run(true, 2), p);
        assert_eq!(p.for_run(false, 0), p);
        // The prober's own restart does not depend on Reloader.
        let restart = Plan {
            trigger: Some(Trigger::Restart),
            ..p
        };
        assert_eq!(restart.for_run(true, 0), restart);
    }
}
