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
use kube::runtime::WatchStreamExt;
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

/// What a watcher knows: the objects now, recent changes, its health.
#[derive(Debug)]
pub struct View<T> {
    /// The initial list completed at least once.
    pub synced: bool,
    /// Current objects by name.
    pub objects: BTreeMap<String, Arc<T>>,
    /// The latest changes, oldest first.
    pub changes: VecDeque<Change<T>>,
    /// Set while the watcher's last attempt failed; cleared by its next success.
    pub fault: Option<Fault>,
}

impl<T> Default for View<T> {
    fn default() -> Self {
        View {
            synced: false,
            objects: BTreeMap::new(),
            changes: VecDeque::new(),
            fault: None,
        }
    }
}

impl<T> View<T> {
    /// The sequence number of the latest change, 0 if none.
    pub fn last_seq(&self) -> u64 {
        self.changes.back().map(|c| c.seq).unwrap_or(0)
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
    /// `status.refreshTime`: when the last successful sync started (whole seconds).
    pub refresh_time: Option<DateTime<Utc>>,
    /// `status.conditions[type=Ready]`.
    pub ready: Option<Condition>,
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
            ready,
        }
    }

    /// `Ready=True`.
    pub fn is_ready(&self) -> bool {
        self.ready.as_ref().is_some_and(|c| c.status == "True")
    }

    /// `Ready=False` (e.g. `SecretSyncedError`).
    pub fn sync_failed(&self) -> Option<&Condition> {
        self.ready.as_ref().filter(|c| c.status == "False")
    }
}

/// What a run needs of a Secret: the digest of one key, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecretState {
    /// Every event of the object is a distinct state.
    pub resource_version: Option<String>,
    /// SHA-256 (hex) of `data[key]`; `None` if the key is absent.
    pub digest: Option<String>,
}

impl SecretState {
    /// Reduce a Secret to the digest of `key`.
    pub fn from_secret(s: &Secret, key: &str) -> SecretState {
        let digest = s
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| hex::encode(Sha256::digest(&v.0)));
        SecretState {
            resource_version: s.metadata.resource_version.clone(),
            digest,
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
    /// Reduce a Deployment.
    pub fn from_deployment(d: &Deployment) -> DeploymentState {
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
}

impl PodState {
    /// Reduce a Pod.
    pub fn from_pod(p: &Pod) -> PodState {
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
        // Our own request was malformed (bad selector, bad patch).
        400 | 422 => Reason::ProberError,
        _ => Reason::ApiError,
    }
}

/// Record a change in the view, keeping the log bounded.
fn push<T>(v: &mut View<T>, seq: &AtomicU64, stamp: Stamp, name: String, state: Option<Arc<T>>) {
    let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
    v.changes.push_back(Change {
        seq,
        stamp,
        name,
        state,
    });
    while v.changes.len() > CHANGE_LOG {
        v.changes.pop_front();
    }
}

/// Follow one watch until `cancel`, reducing each object with `project`.
async fn follow<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + 'static,
    tx: watch::Sender<View<T>>,
    seq: Arc<AtomicU64>,
    what: String,
    cancel: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    T: PartialEq + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // Objects of a (re)list, published together when it completes.
    let mut relist: Option<Vec<(Stamp, String, T)>> = None;
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            item = stream.next() => item,
        };
        let stamp = Stamp::now();
        let Some(item) = item else {
            tracing::warn!(watch = %what, "watch stream ended");
            return;
        };
        match item {
            Err(e) => {
                let Some(reason) = classify(&e) else { continue };
                tracing::debug!(watch = %what, error = %e, "watch error; retrying with backoff");
                tx.send_modify(|v| {
                    v.fault = Some(Fault {
                        reason,
                        message: e.to_string(),
                        stamp,
                    })
                });
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
                    v.fault = None;
                    v.synced = true;
                    let mut seen = BTreeMap::new();
                    for (st, name, state) in listed {
                        let changed = v.objects.get(&name).is_none_or(|old| **old != state);
                        let state = Arc::new(state);
                        if changed {
                            push(v, &seq, st, name.clone(), Some(state.clone()));
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
                        push(v, &seq, stamp, name, None);
                    }
                    v.objects = seen;
                });
            }
            Ok(watcher::Event::Apply(o)) => {
                let name = o.name_any();
                let state = project(&o);
                tx.send_if_modified(|v| {
                    let was_faulty = v.fault.take().is_some();
                    if v.objects.get(&name).is_some_and(|old| **old == state) {
                        return was_faulty;
                    }
                    let state = Arc::new(state);
                    v.objects.insert(name.clone(), state.clone());
                    push(v, &seq, stamp, name, Some(state));
                    true
                });
            }
            Ok(watcher::Event::Delete(o)) => {
                let name = o.name_any();
                tx.send_modify(|v| {
                    v.fault = None;
                    v.objects.remove(&name);
                    push(v, &seq, stamp, name, None);
                });
            }
        }
    }
}

/// Start a watcher task and return its view.
fn spawn<K, T>(
    api: Api<K>,
    config: watcher::Config,
    project: impl Fn(&K) -> T + Send + 'static,
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
    #[error("patching {restarted_at} into Deployment {namespace}/{name}: {source}")]
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
    #[error("annotating ExternalSecret {namespace}/{name} with force-sync={value}: {source}")]
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
        let deployment = chain.rollout.as_ref().map(|r| r.deployment.clone());
        let deployments = deployment.as_ref().map(|name| {
            spawn(
                Api::<Deployment>::namespaced(client.clone(), ns),
                by_name(name),
                DeploymentState::from_deployment,
                &seq,
                format!("deployment {ns}/{name}"),
                cancel,
            )
        });
        let pods = spawn(
            Api::<Pod>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(&chain.canary.selector),
            PodState::from_pod,
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
    /// merge patch of the pod template's `restartedAt` annotation.
    pub async fn restart(&self, now: DateTime<Utc>, timeout: Duration) -> Result<(), ClusterError> {
        let Some(name) = &self.deployment else {
            return Ok(());
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
            Ok(Ok(_)) => Ok(()),
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
