//! The lab's kubelet: one node that runs every Pod as real local processes,
//! each Pod on its own loopback address (`127.X.Y.Z` from a per-lab random
//! block), with env from Secrets, Secret volumes written and refreshed the
//! way the kubelet's atomic writer does, readiness probes, crash back-off,
//! and graceful termination. It records ground truth as it goes.
//!
//! Lab rules where a process cannot see what a container would:
//! - Mount paths: a Pod's files live under `DIR/pods/<ns>/<pod>/`; every
//!   occurrence of a volume's `mountPath` (and of the ServiceAccount token
//!   mount `/var/run/secrets/kubernetes.io/serviceaccount`) in a container's
//!   command, args and literal env values is rewritten to the host directory.
//! - Listen addresses: a container has no network namespace of its own, so
//!   `0.0.0.0:` in its command, args and literal env values is rewritten to
//!   `<podIP>:`, and a `secret-canary` container given no listen address gets
//!   `SECRET_CANARY_LISTEN=<podIP>:8080`.
//! - Images: a command of `secret-canary` (or no command with an image named
//!   `secret-canary`) runs the lab's canary binary; other commands run as
//!   host programs found on PATH.
//!
//! ```text
//! mod.rs         the node: Pod watch -> one task a Pod; shared state (Kubelet)
//! pod.rs         one Pod's lifetime: address, status model, mount, containers, release
//! ip_pool.rs     loopback Pod addresses (and the decoy for `canary-unreachable`)
//! secrets.rs     watch-fed Secret cache, frozen while `canary-stale` is on
//! volumes.rs     Secret volumes and the token: set up, then refreshed
//! atomic_writer.rs  `..data` symlink swap, as the kubelet writes volumes
//! env.rs         env, envFrom, downward API, `$(VAR)` expansion
//! mounts.rs      mount paths on the host; rewriting paths and listen addresses
//! container.rs   prepare, spawn, record, terminate one container process
//! supervise.rs   restart policy and crash back-off around container.rs
//! readiness.rs   readiness probes
//! status.rs      the status model and its writer
//! unroutable.rs  advertised Pod addresses the host cannot reach (real tier option)
//! node.rs        node mode: the same kubelet as a node of a real cluster
//!                (Node, Lease, bound tokens, projected volumes, resync, image pulls)
//! ```
//!
//! Two modes: [`run`] is the simulated cluster's node (every Pod, Secrets
//! from a cluster-wide watch, lab knobs); [`node::run_node`] makes the same
//! kubelet a node of a real API server, as `system:node:<name>` under the
//! Node authorizer (see [`node`]).

mod atomic_writer;
mod container;
mod env;
pub mod image;
mod ip_pool;
mod mounts;
pub mod node;
mod pod;
mod readiness;
mod runtime;
mod secrets;
mod status;
mod supervise;
pub mod unroutable;
mod volumes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use atomic_writer::write_atomic;
pub(crate) use container::image_is_canary;
pub use env::{expand, field_ref, NODE_NAME};
pub use ip_pool::IpPool;
pub use mounts::rewrite;
pub use node::{run_node, NodeConfig};

use super::Context;
use pod::run_pod;
use secrets::{watch_secrets, SecretCache};

/// Where a real Pod sees its ServiceAccount token.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The simulated cluster caps `terminationGracePeriodSeconds` so a stuck
/// process cannot hold up a test for the default 30 s; node mode (the real
/// cluster) honours it as a kubelet does.
pub const GRACE_CAP: Duration = Duration::from_secs(3);

/// The crash back-off grows to this many times its base (10 s → 5 min).
const BACKOFF_CAP_FACTOR: u32 = 30;

/// How long to wait before retrying a Pod whose config (a Secret) is missing,
/// unless a Secret in its namespace changes first.
const CONFIG_RETRY: Duration = Duration::from_secs(1);

/// Every API call of the kubelet gets this long.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The port a `secret-canary` container listens on when not told otherwise.
const CANARY_DEFAULT_PORT: u16 = 8080;

/// Why the kubelet could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Pods directory could not be created.
    #[error("could not create the Pods directory {path}: {source}")]
    PodsDir {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The directory of one Pod: volumes, token, container logs.
pub fn pod_dir(lab_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    lab_dir.join("pods").join(namespace).join(name)
}

/// Run the node until `cancel` fires; then stop every process it started.
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let pods_dir = ctx.dir.join("pods");
    std::fs::create_dir_all(&pods_dir).map_err(|source| Error::PodsDir {
        path: pods_dir.display().to_string(),
        source,
    })?;
    serve(Arc::new(Kubelet::new(ctx)), cancel).await;
    Ok(())
}

/// The Pod loop of either mode, until `cancel` fires.
async fn serve(kl: Arc<Kubelet>, cancel: CancellationToken) {
    tracing::info!(block = %kl.ips.lock().map(|p| p.describe()).unwrap_or_default(), "kubelet started");

    // A node of a real cluster may not watch every Secret (Node authorizer):
    // it reads the ones its Pods use, and resyncs volumes on its period.
    let secrets_task = match kl.node {
        None => Some(tokio::spawn(watch_secrets(kl.clone(), cancel.clone()))),
        Some(_) => None,
    };
    let mut pod_watch = watcher::Config::default();
    if let Some(n) = &kl.node {
        pod_watch = pod_watch.fields(&format!("spec.nodeName={}", n.name));
    }
    let mut pods = watcher(Api::<Pod>::all(kl.ctx.client.clone()), pod_watch)
        .default_backoff()
        .boxed();
    let mut running: HashMap<String, PodHandle> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            ev = pods.next() => ev,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = cancel.cancelled() => break,
        };
        let Some(ev) = ev else { break };
        match ev {
            Ok(watcher::Event::Apply(pod)) => kl.on_pod(pod, &mut running, &mut tasks, &cancel),
            Ok(watcher::Event::InitApply(pod)) => {
                relisted
                    .get_or_insert_with(HashSet::new)
                    .insert(pod_key(&pod));
                kl.on_pod(pod, &mut running, &mut tasks, &cancel);
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(h) = running.remove(&pod_key(&pod)) {
                    h.cancel.cancel();
                }
            }
            Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
            Ok(watcher::Event::InitDone) => {
                // Pods that vanished while the watch was down.
                let seen = relisted.take().unwrap_or_default();
                running.retain(|k, h| {
                    let keep = seen.contains(k);
                    if !keep {
                        h.cancel.cancel();
                    }
                    keep
                });
            }
            Err(e) => tracing::warn!(error = %e, "kubelet: Pod watch failed; retrying"),
        }
    }
    // Lab shutdown: every Pod task sees its token cancelled (children of
    // `cancel`) and stops its processes; wait for all of them.
    for h in running.values() {
        h.cancel.cancel();
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(GRACE_CAP + Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::warn!("kubelet: some Pods did not stop in time; aborting them (their processes are killed on drop)");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if let Some(t) = secrets_task {
        let _ = t.await;
    }
    tracing::info!("kubelet stopped");
}

fn pod_key(pod: &Pod) -> String {
    pod.uid()
        .unwrap_or_else(|| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()))
}

struct PodHandle {
    cancel: CancellationToken,
    /// Set once the Pod carries a deletionTimestamp, so it is stopped once.
    terminating: bool,
    /// Its deletion's grace period, shared with the Pod's task.
    deletion_grace: Arc<Mutex<Option<i64>>>,
}

/// State shared by the node's tasks.
struct Kubelet {
    ctx: Context,
    ips: Mutex<IpPool>,
    secrets: SecretCache,
    /// `(namespace, name)` of every Secret change the watch sees.
    secret_changed: broadcast::Sender<(String, String)>,
    /// For readiness probes.
    http: reqwest::Client,
    /// Node mode (a real cluster's node), or `None` on the simulated cluster.
    node: Option<Arc<NodeConfig>>,
}

impl Kubelet {
    fn new(ctx: Context) -> Kubelet {
        let (secret_changed, _) = broadcast::channel(1024);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Kubelet {
            ips: Mutex::new(IpPool::random()),
            secrets: SecretCache::default(),
            secret_changed,
            http,
            ctx,
            node: None,
        }
    }

    fn on_pod(
        self: &Arc<Self>,
        pod: Pod,
        running: &mut HashMap<String, PodHandle>,
        tasks: &mut tokio::task::JoinSet<()>,
        cancel: &CancellationToken,
    ) {
        let key = pod_key(&pod);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        if let Some(h) = running.get_mut(&key) {
            if deleting && !h.terminating {
                h.terminating = true;
                // The grace the deletion asked for (`--grace-period`, or the
                // spec's), read by the containers as they stop.
                if let Ok(mut g) = h.deletion_grace.lock() {
                    *g = pod.metadata.deletion_grace_period_seconds;
                }
                h.cancel.cancel();
            }
            return;
        }
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if deleting {
            // Nothing runs it here (e.g. deleted while the kubelet was
            // down): confirm the deletion at once, as the kubelet does.
            tasks.spawn(pod::confirm_deletion(self.clone(), pod));
            return;
        }
        if finished {
            return;
        }
        let pod_cancel = cancel.child_token();
        let deletion_grace = Arc::new(Mutex::new(None));
        running.insert(
            key,
            PodHandle {
                cancel: pod_cancel.clone(),
                terminating: false,
                deletion_grace: deletion_grace.clone(),
            },
        );
        tasks.spawn(run_pod(
            self.clone(),
            pod,
            pod_cancel,
            cancel.clone(),
            deletion_grace,
        ));
    }

    async fn get_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>, String> {
        if self.secrets.stale(&self.ctx.knobs) {
            if let Some(s) = self.secrets.view(&self.ctx.knobs, namespace, name) {
                return Ok(Some(s));
            }
        }
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), namespace);
        match tokio::time::timeout(API_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("reading secret \"{name}\": {e}")),
            Err(_) => Err(format!("reading secret \"{name}\": timed out")),
        }
    }

    async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ConfigMap>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), namespace);
        match tokio::time::timeout(API_TIMEOUT, api.get_opt(name)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("reading configmap \"{name}\": {e}")),
            Err(_) => Err(format!("reading configmap \"{name}\": timed out")),
        }
    }
}
