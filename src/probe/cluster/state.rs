//! The states a run needs of each watched object: ExternalSecret, Secret,
//! Deployment (and its rollout) and canary Pod, reduced from the API objects.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::DynamicObject;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::marks::{reloader_hash, Marks, RESTARTED_AT};

/// A condition of an object's status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Condition {
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

/// What a run needs of an ExternalSecret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EsState {
    /// Every event of the object is a distinct state.
    pub resource_version: Option<String>,
    /// `status.refreshTime`: when the last successful sync started (whole
    /// seconds, ESO's clock: only ever compared with itself).
    pub refresh_time: Option<DateTime<Utc>>,
    /// `status.syncedResourceVersion`: the ExternalSecret version the last
    /// sync was for.
    pub synced_resource_version: Option<String>,
    /// `status.conditions[type=Ready]`.
    pub ready: Option<Condition>,
    /// `spec.refreshPolicy` (absent: `Periodic`).
    pub refresh_policy: Option<String>,
    /// `spec.refreshInterval` as written (e.g. `1h`, `0s`).
    pub refresh_interval: Option<String>,
}

impl EsState {
    /// Reduce an ExternalSecret (any served version with the v1 status shape).
    pub fn from_object(o: &DynamicObject) -> EsState {
        let status = o.data.get("status");
        let refresh_time = status
            .and_then(|s| s.get("refreshTime"))
            .and_then(|t| t.as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let ready = status
            .and_then(|s| s.get("conditions"))
            .and_then(|c| c.as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.get("type").and_then(|t| t.as_str()) == Some("Ready"))
            })
            .map(|c| {
                let field = |k: &str| {
                    c.get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                Condition {
                    status: field("status"),
                    reason: field("reason"),
                    message: field("message"),
                }
            });
        EsState {
            resource_version: o.metadata.resource_version.clone(),
            refresh_time,
            synced_resource_version: status
                .and_then(|s| s.get("syncedResourceVersion"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
            ready,
            refresh_policy: spec_str(o, "refreshPolicy"),
            refresh_interval: spec_str(o, "refreshInterval"),
        }
    }

    /// Why ESO would ignore a `force-sync` annotation on this object, if it
    /// would: `refreshPolicy: CreatedOnce` never refreshes after the first
    /// sync; with the periodic policy a zero `refreshInterval` does not
    /// either (`OnChange` refreshes on any metadata change, whatever the
    /// interval).
    pub fn ignores_force_sync(&self) -> Option<String> {
        match self.refresh_policy.as_deref() {
            Some("CreatedOnce") => Some("spec.refreshPolicy is CreatedOnce".into()),
            Some("OnChange") => None,
            _ => self
                .refresh_interval
                .as_deref()
                .filter(|i| is_zero_duration(i))
                .map(|i| format!("spec.refreshInterval is {i:?}")),
        }
    }

    /// `Ready=True`.
    pub fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|c| c.status == "True")
    }

    /// The sync ESO last reported: `refreshTime` and `syncedResourceVersion`.
    /// A new sync changes it (ESO's clock is only compared with itself).
    pub fn sync_mark(&self) -> (Option<DateTime<Utc>>, Option<&str>) {
        (self.refresh_time, self.synced_resource_version.as_deref())
    }

    /// `Ready=False` (e.g. `SecretSyncedError`).
    pub fn sync_failed(&self) -> Option<&Condition> {
        self.ready.as_ref().filter(|c| c.status == "False")
    }
}

/// A string field of an object's `spec`.
fn spec_str(o: &DynamicObject, field: &str) -> Option<String> {
    o.data
        .get("spec")
        .and_then(|s| s.get(field))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// A Go duration string (`0`, `0s`, `0h0m0s`, `0.0s`) that is zero: every
/// digit in it is 0.
pub(super) fn is_zero_duration(d: &str) -> bool {
    d.bytes().any(|b| b.is_ascii_digit()) && d.bytes().all(|b| !b.is_ascii_digit() || b == b'0')
}

/// What a run needs of a Secret: the digest of one key, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretState {
    /// Every event of the object is a distinct state.
    pub resource_version: Option<String>,
    /// SHA-256 (hex) of `data[key]`; `None` if the key is absent.
    pub digest: Option<String>,
    /// Reloader's hash of the whole Secret ([`reloader_hash`]): what its
    /// pod-template change for this state carries.
    pub reloader_hash: Option<String>,
}

impl SecretState {
    /// Reduce a Secret to the digest of `key`.
    pub fn from_secret(s: &Secret, key: &str) -> SecretState {
        let digest = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| hex::encode(Sha256::digest(&v.0)));
        let empty = BTreeMap::new();
        SecretState {
            resource_version: s.metadata.resource_version.clone(),
            digest,
            reloader_hash: Some(reloader_hash(s.data.as_ref().unwrap_or(&empty))),
        }
    }
}

/// Where a Deployment's rollout stands, decided as `kubectl rollout status`
/// does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStatus {
    /// Every replica updated and available, no old ones left.
    Complete,
    /// Still going; the text says what it waits for.
    Waiting(&'static str),
    /// `Progressing=False` with `ProgressDeadlineExceeded`.
    DeadlineExceeded(String),
}

/// What a run needs of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentState {
    /// Every event of the object is a distinct state.
    pub resource_version: Option<String>,
    /// `metadata.generation`.
    pub generation: i64,
    /// SHA-256 of `spec.template` as JSON: changes exactly when the pod
    /// template does (Reloader's patch, `restartedAt`).
    pub template: String,
    /// The pod template's `restartedAt` annotation.
    pub restarted_at: Option<String>,
    /// What the pod template carries ([`Marks`]).
    pub marks: Marks,
    /// `spec.replicas` (default 1).
    pub spec_replicas: i32,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.availableReplicas`.
    pub available_replicas: i32,
    /// `status.conditions[type=Progressing]`.
    pub progressing: Option<Condition>,
    /// `status.conditions[type=ReplicaFailure]`.
    pub replica_failure: Option<Condition>,
}

impl DeploymentState {
    /// Reduce a Deployment (marks of any Secret).
    pub fn from_deployment(d: &Deployment) -> DeploymentState {
        DeploymentState::from_deployment_for(d, None)
    }

    /// Reduce a Deployment whose chain's Secret is `secret`.
    pub fn from_deployment_for(d: &Deployment, secret: Option<&str>) -> DeploymentState {
        let spec = &d.spec;
        let template = serde_json::to_vec(&spec.template).unwrap_or_default();
        let restarted_at = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTARTED_AT))
            .cloned();
        let status = d.status.as_ref();
        let cond = |t: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_.as_deref() == Some(t)))
                .map(|c| Condition {
                    status: c.status.clone().unwrap_or_default(),
                    reason: c.reason.clone().unwrap_or_default(),
                    message: c.message.clone().unwrap_or_default(),
                })
        };
        DeploymentState {
            resource_version: d.metadata.resource_version.clone(),
            generation: d.metadata.generation.unwrap_or(0),
            template: hex::encode(Sha256::digest(&template)),
            restarted_at,
            marks: Marks::of(
                spec.template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.annotations.as_ref()),
                spec.template.spec.as_ref(),
                secret,
            ),
            spec_replicas: spec.replicas.unwrap_or(1),
            observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
            replicas: status.and_then(|s| s.replicas).unwrap_or(0),
            updated_replicas: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            available_replicas: status.and_then(|s| s.available_replicas).unwrap_or(0),
            progressing: cond("Progressing"),
            replica_failure: cond("ReplicaFailure"),
        }
    }

    /// The rollout's state, in `kubectl rollout status` order.
    pub fn rollout(&self) -> RolloutStatus {
        if self.generation > self.observed_generation {
            return RolloutStatus::Waiting("the controller to observe the new generation");
        }
        if let Some(c) = &self.progressing {
            if c.reason == "ProgressDeadlineExceeded" {
                return RolloutStatus::DeadlineExceeded(c.message.clone());
            }
        }
        if self.updated_replicas < self.spec_replicas {
            return RolloutStatus::Waiting("replicas to be updated");
        }
        if self.replicas > self.updated_replicas {
            return RolloutStatus::Waiting("old replicas to terminate");
        }
        if self.available_replicas < self.updated_replicas {
            return RolloutStatus::Waiting("updated replicas to become available");
        }
        RolloutStatus::Complete
    }

    /// `ReplicaFailure=True` (e.g. Pods cannot be created).
    pub fn replica_failure(&self) -> Option<&Condition> {
        self.replica_failure.as_ref().filter(|c| c.status == "True")
    }
}

/// What a run needs of a canary Pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodState {
    /// Every event of the object is a distinct state.
    pub resource_version: Option<String>,
    /// `status.podIP`.
    pub ip: Option<String>,
    /// `Ready=True`.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// The ReplicaSet it belongs to: the `pod-template-hash` label, else the
    /// controller owner's name.
    pub owner: Option<String>,
    /// Sum of its containers' restart counts.
    pub restarts: i32,
    /// A container waits in `CrashLoopBackOff` (or another failure state);
    /// the reason and message.
    pub crash: Option<String>,
    /// What the template it was made from carried ([`Marks`]).
    pub marks: Marks,
}

impl PodState {
    /// Reduce a Pod (marks of any Secret).
    pub fn from_pod(p: &Pod) -> PodState {
        PodState::from_pod_for(p, None)
    }

    /// Reduce a Pod whose chain's Secret is `secret`.
    pub fn from_pod_for(p: &Pod, secret: Option<&str>) -> PodState {
        let status = p.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let owner = p.labels().get("pod-template-hash").cloned().or_else(|| {
            p.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.name.clone())
        });
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .collect::<Vec<_>>();
        // Saturating: the API server hands over any i32, and a plain sum of
        // several large counts overflows (found by fuzzing).
        let restarts = statuses
            .iter()
            .fold(0i32, |n, c| n.saturating_add(c.restart_count));
        let crash = statuses.iter().find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            let reason = w.reason.as_deref()?;
            const FAILING: [&str; 5] = [
                "CrashLoopBackOff",
                "CreateContainerConfigError",
                "CreateContainerError",
                "RunContainerError",
                "ErrImagePull",
            ];
            FAILING.contains(&reason).then(|| {
                format!(
                    "container {} {}: {}",
                    c.name,
                    reason,
                    w.message.as_deref().unwrap_or("")
                )
            })
        });
        PodState {
            resource_version: p.metadata.resource_version.clone(),
            ip: status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
            owner,
            restarts,
            crash,
            marks: Marks::of(p.metadata.annotations.as_ref(), p.spec.as_ref(), secret),
        }
    }
}
