//! The cluster side of a probe: long-lived kube-rs watchers on the chain's
//! ExternalSecret, Secret, Deployment and canary Pods, each reduced to the
//! few fields a run needs and stamped with the arrival time of its event.
//!
//! A run never lists: it subscribes to a [`View`] (latest state plus a short
//! log of recent [`Change`]s, in arrival order across all of a probe's
//! watchers) and reads each milestone's time from the change that showed it.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Reason, Stamp};
use crate::config::ChainConfig;

/// Changes kept per watcher. A run reads changes as they come, so this only
/// has to cover bursts between two wake-ups of a run.
const CHANGE_LOG: usize = 128;

/// Pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// ExternalSecret annotation whose change makes ESO sync at once (upstream
/// documents `kubectl annotate es NAME force-sync=$(date +%s) --overwrite`).
pub const FORCE_SYNC: &str = "force-sync";

/// Pod-template annotation Reloader's `annotations` strategy writes: JSON
/// with the Secret's `name` and `hash`.
pub const LAST_RELOADED_FROM: &str = "reloader.stakater.com/last-reloaded-from";

/// What a pod template (or a Pod made from one) says about the change that
/// made it: the `restartedAt` annotation and the Reloader hashes it carries.
/// A Pod and its template have the same marks, so the Pods of the template
/// that carries a run's value are the Pods whose marks are that template's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Marks {
    /// `kubectl.kubernetes.io/restartedAt`.
    pub restarted_at: Option<String>,
    /// Reloader hashes for the chain's Secret: the value of the
    /// `STAKATER_<NAME>_SECRET` env var (env-vars strategy) in any
    /// container, and the `hash` of `reloader.stakater.com/last-reloaded-from`
    /// (annotations strategy). Hashes of the Secret's data, never values.
    pub reloader: std::collections::BTreeSet<String>,
}

impl Marks {
    /// The marks of a template (or Pod): its annotations and containers.
    /// `secret`: the chain's Secret (its env var and annotation name it);
    /// without one, every `STAKATER_*_SECRET` variable counts.
    pub fn of(
        annotations: Option<&BTreeMap<String, String>>,
        spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
        secret: Option<&str>,
    ) -> Marks {
        let restarted_at = annotations.and_then(|a| a.get(RESTARTED_AT)).cloned();
        let var = secret.map(reloader_env_var);
        let mut reloader = std::collections::BTreeSet::new();
        let containers = spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        });
        for c in containers {
            for e in c.env.iter().flatten() {
                let ours = match &var {
                    Some(v) => e.name == *v,
                    None => e.name.starts_with("STAKATER_") && e.name.ends_with("_SECRET"),
                };
                if let (true, Some(v)) = (ours, &e.value) {
                    reloader.insert(v.clone());
                }
            }
        }
        if let Some(v) = annotations
            .and_then(|a| a.get(LAST_RELOADED_FROM))
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        {
            let name = v.get("name").and_then(|n| n.as_str());
            let kind_ok = v
                .get("type")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t.eq_ignore_ascii_case("secret"));
            let name_ok = secret.is_none_or(|s| name == Some(s));
            if let (true, true, Some(h)) =
                (kind_ok, name_ok, v.get("hash").and_then(|h| h.as_str()))
            {
                reloader.insert(h.to_string());
            }
        }
        Marks {
            restarted_at,
            reloader,
        }
    }
}

/// Reloader's env var for a Secret: `STAKATER_<NAME>_SECRET`, the name
/// upper-cased with every run of other characters made one `_`.
pub fn reloader_env_var(secret: &str) -> String {
    let mut out = String::from("STAKATER_");
    let mut last_valid = false;
    for ch in secret.to_uppercase().bytes() {
        if ch.is_ascii_uppercase() || ch.is_ascii_digit() {
            out.push(ch as char);
            last_valid = true;
        } else {
            if last_valid {
                out.push('_');
            }
            last_valid = false;
        }
    }
    out.push_str("_SECRET");
    out
}

/// Reloader's hash of a Secret: SHA-1 (hex) of its sorted `key=value`
/// entries joined with `;`. A digest of the data, never logged.
pub fn reloader_hash(data: &BTreeMap<String, k8s_openapi::ByteString>) -> String {
    use sha1::Digest as _;
    let mut entries: Vec<Vec<u8>> = data
        .iter()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(&v.0);
            e
        })
        .collect();
    entries.sort();
    hex::encode(sha1::Sha1::digest(entries.join(&b';')))
}

/// One object's new state (or its deletion), as an event delivered it.
#[derive(Debug, Clone)]
pub struct Change<T> {
    /// Arrival order across every watcher of the probe.
    pub seq: u64,
    /// When the event arrived.
    pub stamp: Stamp,
    /// The object's name.
    pub name: String,
    /// The new state; `None` when the object was deleted (or stopped matching).
    pub state: Option<Arc<T>>,
}

/// Why a watcher is failing right now.
#[derive(Debug, Clone)]
pub struct Fault {
    /// `not_found` (e.g. the ExternalSecret CRD is not installed), `api_error`,
    /// or `prober_error` (our request was malformed, e.g. a bad selector).
    pub reason: Reason,
    /// The error, for logs.
    pub message: String,
    /// When it was reported.
    pub stamp: Stamp,
}

/// The longest pause between two attempts of a failing watch. kube-runtime's
/// default goes up to 30 s; a run's stages are seconds long.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(3);

/// The first pause after a watch failed.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Gaps kept per watcher (enough to cover one run).
const GAPS_KEPT: usize = 16;

/// A stretch of time a watcher was failing: events of it may have arrived
/// late, so a duration measured across it is not the pipeline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// When the fault began.
    pub from: Stamp,
    /// When the watch was healthy again (`None`: still failing).
    pub to: Option<Stamp>,
}

impl Gap {
    /// Whether the gap overlaps `[start, end]` (`end` `None`: still open).
    pub fn overlaps(&self, start: Stamp, end: Option<Stamp>) -> bool {
        let before_end = end.is_none_or(|e| self.from.at <= e.at);
        let after_start = self.to.is_none_or(|t| t.at >= start.at);
        before_end && after_start
    }
}

/// The next pause of a failing watch: doubling, capped at [`WATCH_BACKOFF_MAX`].
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
}

/// What a watcher knows: the objects now, recent changes, its health.
#[derive(Debug)]
pub struct View<T> {
    /// The initial list completed at least once.
    pub synced: bool,
    /// Current objects by name.
    pub objects: BTreeMap<String, Arc<T>>,
    /// The latest changes, oldest first.
    pub changes: VecDeque<Change<T>>,
    /// Set while the watcher's last attempt failed; cleared by its next
    /// success (a relist completing, or any event).
    pub fault: Option<Fault>,
    /// Recent stretches of failure, oldest first (the current one is `fault`).
    pub gaps: VecDeque<Gap>,
    /// Changes dropped from the log before every run had read them (the
    /// log overflowed between two wake-ups of a run): the seq of the last
    /// change dropped.
    pub evicted: u64,
}

impl<T> Default for View<T> {
    fn default() -> Self {
        View {
            synced: false,
            objects: BTreeMap::new(),
            changes: VecDeque::new(),
            fault: None,
            gaps: VecDeque::new(),
            evicted: 0,
        }
    }
}

impl<T> View<T> {
    /// The sequence number of the latest change, 0 if none.
    pub fn last_seq(&self) -> u64 {
        self.changes.back().map(|c| c.seq).unwrap_or(0)
    }

    /// The watch failed: keep the stamp of the fault's beginning while it
    /// lasts (a fault counts against a stage only if it began after it).
    pub fn faulted(&mut self, reason: Reason, message: String, stamp: Stamp) {
        let since = self.fault.as_ref().map_or(stamp, |f| f.stamp);
        self.fault = Some(Fault {
            reason,
            message,
            stamp: since,
        });
    }

    /// The watch works again; returns whether it was failing.
    pub fn healthy(&mut self, stamp: Stamp) -> bool {
        let Some(f) = self.fault.take() else {
            return false;
        };
        self.gaps.push_back(Gap {
            from: f.stamp,
            to: Some(stamp),
        });
        while self.gaps.len() > GAPS_KEPT {
            self.gaps.pop_front();
        }
        true
    }

    /// Every recent gap, the current fault as an open one.
    pub fn all_gaps(&self) -> Vec<Gap> {
        let mut out: Vec<Gap> = self.gaps.iter().copied().collect();
        if let Some(f) = &self.fault {
            out.push(Gap {
                from: f.stamp,
                to: None,
            });
        }
        out
    }
}

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
fn is_zero_duration(d: &str) -> bool {
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

/// Classify a watcher error. `None`: not a fault (a 410 is a normal relist).
fn classify(e: &watcher::Error) -> Option<Reason> {
    let api = |err: &kube::Error| match err {
        kube::Error::Api(s) => code_reason(s.code),
        _ => Reason::ApiError,
    };
    match e {
        watcher::Error::WatchError(s) if s.code == 410 => None,
        watcher::Error::WatchError(s) => Some(code_reason(s.code)),
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(api(k)),
        watcher::Error::NoResourceVersion => Some(Reason::ApiError),
    }
}

/// The reason an API status code stands for.
pub fn code_reason(code: u16) -> Reason {
    match code {
        404 => Reason::NotFound,
        // Our own request was malformed (bad selector, bad patch), or the
        // prober's own credentials or RBAC (or a policy webhook) refused it:
        // the prober's owners must act, not the pipeline's.
        400 | 401 | 403 | 422 => Reason::ProberError,
        _ => Reason::ApiError,
    }
}

/// Record a change in the view, keeping the log bounded.
fn push<T>(v: &mut View<T>, seq: &AtomicU64, stamp: Stamp, name: String, state: Option<Arc<T>>) {
    let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
    debug_assert!(seq > v.evicted);
    v.changes.push_back(Change {
        seq,
        stamp,
        name,
        state,
    });
    while v.changes.len() > CHANGE_LOG {
        if let Some(c) = v.changes.pop_front() {
            v.evicted = c.seq;
        }
    }
}

/// Follow one watch until `cancel`, reducing each object with `project`.
///
/// kube-runtime's watcher emits nothing when a re-watch after an error
/// succeeds, so a fault would stay the view's state until the next object
/// event. Instead every fault ends the stream: after a pause (doubling, at
/// most [`WATCH_BACKOFF_MAX`]) a new one starts with a relist, whose
/// completion clears the fault. Relists only publish what changed.
async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + Sync + 'static,
    tx: watch::Sender<View<T>>,
    seq: Arc<AtomicU64>,
    what: String,
    cancel: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let mut backoff = Duration::ZERO;
    loop {
        let ended = follow_stream(&api, &config, &project, &tx, &seq, &what, &cancel).await;
        if ended {
            return;
        }
        backoff = next_backoff(backoff);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}

/// One watch stream from its first list to its first fault; `true` when
/// the watcher should stop (cancelled, or the stream ended).
async fn follow_stream<K, T>(
    api: &Api<K>,
    config: &watcher::Config,
    project: &impl Fn(&K) -> T,
    tx: &watch::Sender<View<T>>,
    seq: &AtomicU64,
    what: &str,
    cancel: &CancellationToken,
) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let stream = watcher(api.clone(), config.clone());
    futures::pin_mut!(stream);
    // Objects of a (re)list, published together when it completes.
    let mut relist: Option<Vec<(Stamp, String, T)>> = None;
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return true,
            item = stream.next() => item,
        };
        let stamp = Stamp::now();
        let Some(item) = item else {
            tracing::warn!(watch = %what, "watch stream ended");
            return true;
        };
        match item {
            Err(e) => {
                let Some(reason) = classify(&e) else { continue };
                tracing::debug!(watch = %what, error = %e, "watch error; starting over after a pause");
                tx.send_modify(|v| v.faulted(reason, e.to_string(), stamp));
                return false;
            }
            Ok(watcher::Event::Init) => relist = Some(Vec::new()),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(buf) = relist.as_mut() {
                    buf.push((stamp, o.name_any(), project(&o)));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = relist.take().unwrap_or_default();
                tx.send_modify(|v| {
                    if v.healthy(stamp) {
                        tracing::info!(watch = %what, "watch recovered");
                    }
                    v.synced = true;
                    let mut seen = BTreeMap::new();
                    for (st, name, state) in listed {
                        let changed = v.objects.get(&name).is_none_or(|old| **old != state);
                        let state = Arc::new(state);
                        if changed {
                            push(v, seq, st, name.clone(), Some(state.clone()));
                        }
                        seen.insert(name, state);
                    }
                    let gone: Vec<String> = v
                        .objects
                        .keys()
                        .filter(|k| !seen.contains_key(*k))
                        .cloned()
                        .collect();
                    for name in gone {
                        push(v, seq, stamp, name, None);
                    }
                    v.objects = seen;
                });
            }
            Ok(watcher::Event::Apply(o)) => {
                let name = o.name_any();
                let state = project(&o);
                tx.send_if_modified(|v| {
                    let was_faulty = v.healthy(stamp);
                    if v.objects.get(&name).is_some_and(|old| **old == state) {
                        return was_faulty;
                    }
                    let state = Arc::new(state);
                    v.objects.insert(name.clone(), state.clone());
                    push(v, seq, stamp, name, Some(state));
                    true
                });
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                tx.send_modify(|v| {
                    v.healthy(stamp);
                    v.objects.remove(&name);
                    push(v, seq, stamp, name, None);
                });
            }
        }
    }
}

/// Start a watcher task and return its view.
fn spawn<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + Sync + 'static,
    seq: &Arc<AtomicU64>,
    what: String,
    cancel: &CancellationToken,
) -> watch::Receiver<View<T>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + Debug + 'static,
{
    let (tx, rx) = watch::channel(View::default());
    tokio::spawn(follow(
        api,
        config,
        project,
        tx,
        seq.clone(),
        what,
        cancel.clone(),
    ));
    rx
}

/// The API resource of `external-secrets.io/v1` ExternalSecrets.
pub fn external_secret_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    )
}

/// Why a request of the prober to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The restart patch was refused or failed.
    #[error(
        "patching {restarted_at} into Deployment {namespace}/{name}{}: {source}",
        webhook_note(source)
    )]
    RestartPatch {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// The annotation value sent.
        restarted_at: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The restart patch got no answer in time.
    #[error("patching Deployment {namespace}/{name} timed out after {after:?}")]
    RestartTimeout {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// The timeout.
        after: Duration,
    },
    /// The `force-sync` annotation patch was refused or failed (RBAC: the
    /// prober needs `patch` on `externalsecrets`).
    #[error(
        "annotating ExternalSecret {namespace}/{name} with force-sync={value}{}: {source}",
        webhook_note(source)
    )]
    ForceSyncPatch {
        /// Namespace.
        namespace: String,
        /// ExternalSecret.
        name: String,
        /// The annotation value sent.
        value: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The `force-sync` patch got no answer in time.
    #[error("annotating ExternalSecret {namespace}/{name} timed out after {after:?}")]
    ForceSyncTimeout {
        /// Namespace.
        namespace: String,
        /// ExternalSecret.
        name: String,
        /// The timeout.
        after: Duration,
    },
}

/// The admission webhook named in an API error, if one refused (or failed
/// on) the request: `admission webhook "NAME" denied the request` or
/// `failed calling webhook "NAME"`.
pub fn refusing_webhook(e: &kube::Error) -> Option<String> {
    let kube::Error::Api(s) = e else { return None };
    ["admission webhook \"", "failed calling webhook \""]
        .iter()
        .find_map(|p| {
            let rest = &s.message[s.message.find(p)? + p.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
}

/// ` (refused by admission webhook NAME)` when one did.
fn webhook_note(e: &kube::Error) -> String {
    refusing_webhook(e)
        .map(|w| format!(" (refused by admission webhook {w})"))
        .unwrap_or_default()
}

impl ClusterError {
    /// The bounded failure reason.
    pub fn reason(&self) -> Reason {
        match self {
            ClusterError::RestartPatch {
                source: kube::Error::Api(s),
                ..
            }
            | ClusterError::ForceSyncPatch {
                source: kube::Error::Api(s),
                ..
            } => code_reason(s.code),
            ClusterError::RestartPatch { .. }
            | ClusterError::RestartTimeout { .. }
            | ClusterError::ForceSyncPatch { .. }
            | ClusterError::ForceSyncTimeout { .. } => Reason::ApiError,
        }
    }
}

/// The prober's restart patch, as the API server took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The `restartedAt` value sent.
    pub restarted_at: String,
    /// The Deployment's generation after the patch.
    pub generation: i64,
}

/// The watchers of one probe's chain.
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    deployment: Option<String>,
    external_secret_name: Option<String>,
    /// The ExternalSecret, if the chain has one.
    pub external_secret: Option<watch::Receiver<View<EsState>>>,
    /// The Secret, if the chain has one.
    pub secret: Option<watch::Receiver<View<SecretState>>>,
    /// The Deployment, if the chain rolls one.
    pub deployments: Option<watch::Receiver<View<DeploymentState>>>,
    /// The canary Pods.
    pub pods: watch::Receiver<View<PodState>>,
}

impl Cluster {
    /// Start the chain's watchers; they run until `cancel` fires.
    pub fn start(chain: &ChainConfig, client: kube::Client, cancel: &CancellationToken) -> Cluster {
        let ns = chain.namespace.as_str();
        let seq = Arc::new(AtomicU64::new(0));
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let external_secret = chain.external_secret.as_ref().map(|name| {
            let ar = external_secret_resource();
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
            spawn(
                api,
                by_name(name),
                EsState::from_object,
                &seq,
                format!("externalsecret {ns}/{name}"),
                cancel,
            )
        });
        let secret = chain.secret.as_ref().map(|s| {
            let key = s.key.clone();
            spawn(
                Api::<Secret>::namespaced(client.clone(), ns),
                by_name(&s.name),
                move |o: &Secret| SecretState::from_secret(o, &key),
                &seq,
                format!("secret {ns}/{}", s.name),
                cancel,
            )
        });
        let secret_name = chain.secret.as_ref().map(|s| s.name.clone());
        let deployment = chain.rollout.as_ref().map(|r| r.deployment.clone());
        let deployments = deployment.as_ref().map(|name| {
            let secret = secret_name.clone();
            spawn(
                Api::<Deployment>::namespaced(client.clone(), ns),
                by_name(name),
                move |d: &Deployment| DeploymentState::from_deployment_for(d, secret.as_deref()),
                &seq,
                format!("deployment {ns}/{name}"),
                cancel,
            )
        });
        let pods = spawn(
            Api::<Pod>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(&chain.canary.selector),
            move |p: &Pod| PodState::from_pod_for(p, secret_name.as_deref()),
            &seq,
            format!("pods {ns} {}", chain.canary.selector),
            cancel,
        );
        Cluster {
            client,
            namespace: chain.namespace.clone(),
            deployment,
            external_secret_name: chain.external_secret.clone(),
            external_secret,
            secret,
            deployments,
            pods,
        }
    }

    /// Every watcher completed its initial list.
    pub fn is_ready(&self) -> bool {
        self.external_secret
            .as_ref()
            .is_none_or(|r| r.borrow().synced)
            && self.secret.as_ref().is_none_or(|r| r.borrow().synced)
            && self.deployments.as_ref().is_none_or(|r| r.borrow().synced)
            && self.pods.borrow().synced
    }

    /// Until every watcher completed its initial list (returns at once if
    /// they have; a stopped watcher never completes it).
    pub async fn wait_ready(&self) {
        async fn synced<T>(rx: Option<&watch::Receiver<View<T>>>) {
            let Some(rx) = rx else { return };
            if rx.clone().wait_for(|v| v.synced).await.is_err() {
                std::future::pending::<()>().await
            }
        }
        synced(self.external_secret.as_ref()).await;
        synced(self.secret.as_ref()).await;
        synced(self.deployments.as_ref()).await;
        synced(Some(&self.pods)).await;
    }

    /// Restart the Deployment as `kubectl rollout restart` does: a strategic
    /// merge patch of the pod template's `restartedAt` annotation. Returns
    /// the value sent and the generation the patch made (`None` when the
    /// chain names no Deployment).
    pub async fn restart(
        &self,
        now: DateTime<Utc>,
        timeout: Duration,
    ) -> Result<Option<Restarted>, ClusterError> {
        let Some(name) = &self.deployment else {
            return Ok(None);
        };
        let current = self.deployments.as_ref().and_then(|r| {
            r.borrow()
                .objects
                .get(name)
                .and_then(|d| d.restarted_at.clone())
        });
        let mut value = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        // Two restarts in one second would make an empty patch.
        if current.as_deref() == Some(value.as_str()) {
            value = now.to_rfc3339_opts(SecondsFormat::Nanos, true);
        }
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}
        });
        let api = Api::<Deployment>::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some("secret-canary".into()),
            ..PatchParams::default()
        };
        match tokio::time::timeout(timeout, api.patch(name, &params, &Patch::Strategic(patch)))
            .await
        {
            Ok(Ok(d)) => Ok(Some(Restarted {
                generation: d.metadata.generation.unwrap_or(0),
                restarted_at: value,
            })),
            Ok(Err(source)) => Err(ClusterError::RestartPatch {
                namespace: self.namespace.clone(),
                name: name.clone(),
                restarted_at: value,
                source,
            }),
            Err(_) => Err(ClusterError::RestartTimeout {
                namespace: self.namespace.clone(),
                name: name.clone(),
                after: timeout,
            }),
        }
    }

    /// Make ESO sync now: a merge patch of the ExternalSecret's `force-sync`
    /// annotation to the unix time. Any metadata change triggers a
    /// reconcile; the time carries nanoseconds because an unchanged value
    /// (two runs in one second, from two processes) would trigger nothing.
    pub async fn force_sync(
        &self,
        now: DateTime<Utc>,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let Some(name) = &self.external_secret_name else {
            return Ok(());
        };
        let value = format!("{}.{:09}", now.timestamp(), now.timestamp_subsec_nanos());
        let patch = serde_json::json!({"metadata": {"annotations": {FORCE_SYNC: value}}});
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &external_secret_resource(),
        );
        let params = PatchParams {
            field_manager: Some("secret-canary".into()),
            ..PatchParams::default()
        };
        match tokio::time::timeout(timeout, api.patch(name, &params, &Patch::Merge(patch))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(ClusterError::ForceSyncPatch {
                namespace: self.namespace.clone(),
                name: name.clone(),
                value,
                source,
            }),
            Err(_) => Err(ClusterError::ForceSyncTimeout {
                namespace: self.namespace.clone(),
                name: name.clone(),
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
