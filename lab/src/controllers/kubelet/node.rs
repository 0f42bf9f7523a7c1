//! Node mode: the lab's kubelet as a node of a real cluster.
//!
//! What changes from the simulated cluster's node, and why:
//! - Identity: it talks to the API server as `system:node:<name>` (a client
//!   certificate in `system:nodes`), so the Node authorizer and the
//!   NodeRestriction admission plugin apply: it may read only the Secrets,
//!   ConfigMaps and ServiceAccounts of Pods bound to it, write only their
//!   status, and request only tokens bound to them.
//! - Registration: it creates its Node (capacity, allocatable, conditions,
//!   addresses, node info), renews its Lease in `kube-node-lease` and
//!   refreshes the Ready condition, as the node lifecycle controller expects
//!   (otherwise it marks the node unknown and evicts its Pods).
//! - Pods: only those the scheduler bound to it (`spec.nodeName`).
//! - Images: `secret-canary` runs the lab's binary; any other image is
//!   `ErrImagePull`, then `ImagePullBackOff`, as a kubelet reports it.
//! - Secret volumes: refreshed on the kubelet's resync (sync period plus up
//!   to 50 % jitter), read with GET (a node may not watch every Secret).
//! - Projected volumes (the ServiceAccount token the admission plugin adds):
//!   written with a TokenRequest bound to the Pod.
//! - Readiness probes run at the Pod's `periodSeconds` (default 10 s).
//! - Termination: the deletion's grace period (`deletionGracePeriodSeconds`)
//!   or the Pod's `terminationGracePeriodSeconds` (30 s by default), in
//!   full: SIGTERM (after a `preStop` sleep), the grace, SIGKILL, then the
//!   final delete. The simulated cluster caps it at 3 s.
//! - `vault:` values are not resolved by the node (that is the Bank-Vaults
//!   webhook's mutation plus vault-env, not a kubelet's job).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Probe, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::atomic_writer::write_atomic;
use super::container::image_is_canary;
use super::env::{field_ref, service_account};
use super::pod::{sleep_or_cancel, PodRun};
use super::secrets::secret_data;
use super::status::CState;
use super::volumes::{refresh_volume, secret_volumes};
use super::{serve, Kubelet, API_TIMEOUT, CONFIG_RETRY};
use crate::controllers::{bankvaults, Context};

/// The namespace of node Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How a node of a real cluster behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Node's name (its credentials must say `system:node:<name>`).
    pub name: String,
    /// The kubelet's sync period: Secret volumes are refreshed every period
    /// plus up to 50 % jitter (upstream: 1 min).
    pub volume_sync_period: Duration,
    /// The Lease's duration (upstream: 40 s).
    pub lease_duration: Duration,
    /// How often the Lease is renewed (upstream: a quarter of its duration).
    pub lease_renew: Duration,
    /// How often the Node status (Ready heartbeat) is written.
    pub status_period: Duration,
    /// First image pull back-off (upstream: 10 s, doubling to 5 min).
    pub image_pull_backoff: Duration,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet_version: String,
    /// Images of the lab's registry, pulled and run in their rootfs
    /// ([`super::image`], [`super::runtime`]); `None`: none.
    pub images: Option<std::sync::Arc<super::image::ImageRuntime>>,
    /// Advertise Pods at addresses the host cannot reach (the API server
    /// reaches them through the egress proxy); `None`: their loopback address.
    pub unroutable: Option<std::sync::Arc<super::unroutable::UnroutablePods>>,
    /// The port of the node's kubelet API (`status.daemonEndpoints`); the
    /// upstream default 10250 when nothing serves it.
    pub kubelet_port: u16,
}

impl NodeConfig {
    /// The upstream kubelet's defaults (for benchmarks).
    pub fn upstream(name: &str) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            volume_sync_period: Duration::from_secs(60),
            lease_duration: Duration::from_secs(40),
            lease_renew: Duration::from_secs(10),
            status_period: Duration::from_secs(10),
            image_pull_backoff: Duration::from_secs(10),
            kubelet_version: "v0.0.0-secret-canary-lab".into(),
            images: None,
            unroutable: None,
            kubelet_port: 10250,
        }
    }

    /// The lab's defaults for tests: the upstream ones with a short volume
    /// sync period (1 s), so a Secret volume follows in seconds.
    pub fn lab(name: &str) -> NodeConfig {
        NodeConfig {
            volume_sync_period: Duration::from_secs(1),
            ..NodeConfig::upstream(name)
        }
    }
}

/// Why the node could not register.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("node agent {node}: {what}: {source}")]
    Api {
        /// The node.
        node: String,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// An API call did not answer in time.
    #[error("node agent {node}: {what}: timed out")]
    TimedOut {
        /// The node.
        node: String,
        /// What was being done.
        what: String,
    },
    /// The Pods directory.
    #[error(transparent)]
    Kubelet(#[from] super::Error),
}

async fn call<T>(
    node: &str,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|source| Error::Api {
            node: node.into(),
            what: what.into(),
            source,
        }),
        Err(_) => Err(Error::TimedOut {
            node: node.into(),
            what: what.into(),
        }),
    }
}

/// Register the node (Node, status, Lease), then run it in the background
/// until `cancel` fires: the heartbeat and the Pods bound to it. `ctx.client`
/// must carry the node's credentials.
pub async fn start_node(
    ctx: Context,
    cfg: NodeConfig,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, Error> {
    let pods_dir = ctx.dir.join("pods");
    std::fs::create_dir_all(&pods_dir).map_err(|source| super::Error::PodsDir {
        path: pods_dir.display().to_string(),
        source,
    })?;
    let cfg = Arc::new(cfg);
    let node_uid = register(&ctx.client, &cfg).await?;
    renew_lease(&ctx.client, &cfg, &node_uid).await?;
    tracing::info!(node = %cfg.name, "node agent registered");
    let mut kl = Kubelet::new(ctx);
    kl.node = Some(cfg.clone());
    let kl = Arc::new(kl);
    Ok(tokio::spawn(async move {
        let hb = tokio::spawn(heartbeat(
            kl.ctx.client.clone(),
            cfg.clone(),
            node_uid,
            cancel.clone(),
        ));
        serve(kl, cancel).await;
        let _ = hb.await;
    }))
}

/// [`start_node`], then wait until it stops.
pub async fn run_node(
    ctx: Context,
    cfg: NodeConfig,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let task = start_node(ctx, cfg, cancel).await?;
    let _ = task.await;
    Ok(())
}

fn now_micro() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The Node's status: what a kubelet reports about itself.
fn node_status(cfg: &NodeConfig, since: DateTime<Utc>) -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": "8Gi",
        "pods": "110",
        "ephemeral-storage": "20Gi",
    });
    let now = ts(Utc::now());
    let cond = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": ty,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": ts(since),
        })
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": cfg.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": "secret-canary-lab",
            "systemUUID": "secret-canary-lab",
            "bootID": "secret-canary-lab",
            "kernelVersion": "",
            "osImage": "secret-canary-lab node agent",
            "containerRuntimeVersion": "secret-canary-lab://local-processes",
            "kubeletVersion": cfg.kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH,
        },
    })
}

/// Create the Node (or find it) and write its status; returns its uid.
async fn register(client: &kube::Client, cfg: &NodeConfig) -> Result<String, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.name,
            "labels": {
                "kubernetes.io/hostname": cfg.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
            },
        },
        "spec": {},
    }))
    .map_err(|e| Error::Api {
        node: cfg.name.clone(),
        what: "build Node".into(),
        source: kube::Error::SerdeError(e),
    })?;
    let created = tokio::time::timeout(API_TIMEOUT, nodes.create(&PostParams::default(), &node))
        .await
        .map_err(|_| Error::TimedOut {
            node: cfg.name.clone(),
            what: "create Node".into(),
        })?;
    let node = match created {
        Ok(n) => n,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            call(&cfg.name, "get Node", nodes.get(&cfg.name)).await?
        }
        Err(source) => {
            return Err(Error::Api {
                node: cfg.name.clone(),
                what: "create Node".into(),
                source,
            })
        }
    };
    write_status(client, cfg, Utc::now()).await?;
    Ok(node.uid().unwrap_or_default())
}

async fn write_status(
    client: &kube::Client,
    cfg: &NodeConfig,
    since: DateTime<Utc>,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = Patch::Merge(json!({"status": node_status(cfg, since)}));
    call(
        &cfg.name,
        "patch Node status",
        nodes.patch_status(&cfg.name, &PatchParams::default(), &patch),
    )
    .await
    .map(|_| ())
}

/// Renew the node's Lease (create it when missing).
async fn renew_lease(client: &kube::Client, cfg: &NodeConfig, node_uid: &str) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let renew = Patch::Merge(json!({"spec": {
        "holderIdentity": cfg.name,
        "leaseDurationSeconds": cfg.lease_duration.as_secs(),
        "renewTime": now_micro(),
    }}));
    let r = tokio::time::timeout(
        API_TIMEOUT,
        leases.patch(&cfg.name, &PatchParams::default(), &renew),
    )
    .await;
    match r {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => {}
        Ok(Err(source)) => {
            return Err(Error::Api {
                node: cfg.name.clone(),
                what: "renew Lease".into(),
                source,
            })
        }
        Err(_) => {
            return Err(Error::TimedOut {
                node: cfg.name.clone(),
                what: "renew Lease".into(),
            })
        }
    }
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": cfg.name,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Node",
                "name": cfg.name,
                "uid": node_uid,
            }],
        },
        "spec": {
            "holderIdentity": cfg.name,
            "leaseDurationSeconds": cfg.lease_duration.as_secs(),
            "renewTime": now_micro(),
        },
    }))
    .map_err(|e| Error::Api {
        node: cfg.name.clone(),
        what: "build Lease".into(),
        source: kube::Error::SerdeError(e),
    })?;
    call(
        &cfg.name,
        "create Lease",
        leases.create(&PostParams::default(), &lease),
    )
    .await
    .map(|_| ())
}

/// Renew the Lease every `lease_renew`, write the status every `status_period`.
async fn heartbeat(
    client: kube::Client,
    cfg: Arc<NodeConfig>,
    node_uid: String,
    cancel: CancellationToken,
) {
    let since = Utc::now();
    let mut last_status = tokio::time::Instant::now();
    loop {
        if !sleep_or_cancel(cfg.lease_renew, &cancel).await {
            return;
        }
        if let Err(e) = renew_lease(&client, &cfg, &node_uid).await {
            tracing::warn!(error = %e, "node agent: Lease renewal failed");
        }
        if last_status.elapsed() >= cfg.status_period {
            last_status = tokio::time::Instant::now();
            if let Err(e) = write_status(&client, &cfg, since).await {
                tracing::warn!(error = %e, "node agent: Node status write failed");
            }
        }
    }
}

/// The Pod status as a node may write it: `qosClass` is the API server's
/// (set at creation, immutable), so it is left out.
pub(super) fn adjust_status(body: &mut Value) {
    if let Some(o) = body.as_object_mut() {
        o.remove("qosClass");
    }
}

/// A readiness probe's period (`periodSeconds`, default 10 s, at least 1 s).
pub(super) fn probe_period(probe: Option<&Probe>) -> Duration {
    let secs = probe.and_then(|p| p.period_seconds).unwrap_or(10).max(1);
    Duration::from_secs(u64::try_from(secs).unwrap_or(10))
}

/// "Pull" a container's image: only the `secret-canary` image exists here.
pub(super) fn pull_image(c: &Container) -> Result<(), String> {
    let image = c.image.clone().unwrap_or_default();
    if image_is_canary(&image) {
        Ok(())
    } else {
        Err(format!(
            "Failed to pull image \"{image}\": the lab's node agent runs only the secret-canary image"
        ))
    }
}

/// ErrImagePull, then ImagePullBackOff with a doubling back-off, retried
/// until the Pod stops (its image cannot change under a running Pod here).
/// Returns `false` when cancelled.
pub(super) async fn image_pull_backoff(
    run: &Arc<PodRun>,
    idx: usize,
    msg: &str,
    cancel: &CancellationToken,
) -> bool {
    let image = run.spec.containers[idx].image.clone().unwrap_or_default();
    let base = run
        .kl
        .node
        .as_ref()
        .map(|n| n.image_pull_backoff)
        .unwrap_or(Duration::from_secs(10));
    let mut backoff = base;
    loop {
        tracing::info!(ns = %run.ns, pod = %run.name, %image, "node agent: ErrImagePull");
        run.update_container(idx, |s| {
            s.state = CState::Waiting {
                reason: "ErrImagePull".into(),
                message: Some(msg.to_string()),
            }
        });
        if !sleep_or_cancel(Duration::from_secs(1), cancel).await {
            return false;
        }
        run.update_container(idx, |s| {
            s.state = CState::Waiting {
                reason: "ImagePullBackOff".into(),
                message: Some(format!("Back-off pulling image \"{image}\"")),
            }
        });
        if !sleep_or_cancel(backoff, cancel).await {
            return false;
        }
        backoff = (backoff * 2).min(base * 30);
    }
}

/// A ServiceAccount token bound to the Pod (the only kind a node may ask for).
async fn pod_token(
    run: &PodRun,
    audiences: Vec<String>,
    expiration_seconds: i64,
) -> Result<String, String> {
    let sa = service_account(&run.pod);
    let api: Api<ServiceAccount> = Api::namespaced(run.kl.ctx.client.clone(), &run.ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences).filter(|a| !a.is_empty()),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(run.name.clone()),
                uid: run.pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pp = PostParams::default();
    let fut = api.create_token_request(&sa, &pp, &req);
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(Ok(r)) => Ok(r.status.and_then(|s| s.token).unwrap_or_default()),
        Ok(Err(e)) => Err(format!("token request for serviceaccount {sa}: {e}")),
        Err(_) => Err(format!("token request for serviceaccount {sa}: timed out")),
    }
}

/// What vault-env does at container start: log in with the Pod's (bound)
/// ServiceAccount token and resolve every `vault:` value.
pub(super) async fn resolve_vault_env(
    run: &PodRun,
    cfg: &bankvaults::VaultConfig,
    env: &mut Vec<bankvaults::EnvValue>,
) -> Result<(), String> {
    let jwt = pod_token(run, Vec::new(), 600).await?;
    bankvaults::resolve_as(&run.kl.ctx, &run.pod, cfg, env, &jwt)
        .await
        .map_err(|e| e.to_string())
}

/// What one projected volume holds now.
async fn projected_files(
    run: &PodRun,
    src: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    for s in src.sources.iter().flatten() {
        if let Some(t) = &s.service_account_token {
            let audiences = t.audience.clone().into_iter().filter(|a| !a.is_empty());
            let token = pod_token(
                run,
                audiences.collect(),
                t.expiration_seconds.unwrap_or(3600),
            )
            .await?;
            files.insert(t.path.clone(), token.into_bytes());
        }
        if let Some(cm) = &s.config_map {
            let name = cm.name.clone();
            match run.kl.get_config_map(&run.ns, &name).await? {
                Some(m) => {
                    let data = m.data.unwrap_or_default();
                    match &cm.items {
                        None => files.extend(data.into_iter().map(|(k, v)| (k, v.into_bytes()))),
                        Some(items) => {
                            for it in items {
                                match data.get(&it.key) {
                                    Some(v) => {
                                        files.insert(it.path.clone(), v.clone().into_bytes());
                                    }
                                    None if cm.optional == Some(true) => {}
                                    None => {
                                        return Err(format!(
                                            "configmap references non-existent config key: {}",
                                            it.key
                                        ))
                                    }
                                }
                            }
                        }
                    }
                }
                None if cm.optional == Some(true) => {}
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        }
        if let Some(sec) = &s.secret {
            let name = sec.name.clone();
            match run.kl.get_secret(&run.ns, &name).await? {
                Some(secret) => {
                    let data = secret_data(&secret);
                    match &sec.items {
                        None => files.extend(data),
                        Some(items) => {
                            for it in items {
                                if let Some(v) = data.get(&it.key) {
                                    files.insert(it.path.clone(), v.clone());
                                } else if sec.optional != Some(true) {
                                    return Err(format!(
                                        "couldn't find key {} in Secret {}/{}",
                                        it.key, run.ns, name
                                    ));
                                }
                            }
                        }
                    }
                }
                None if sec.optional == Some(true) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        }
        if let Some(d) = &s.downward_api {
            for it in d.items.iter().flatten() {
                if let Some(f) = &it.field_ref {
                    let v = field_ref(&run.pod, &f.field_path, run.ip)
                        .ok_or_else(|| format!("unsupported fieldRef {:?}", f.field_path))?;
                    files.insert(it.path.clone(), v.into_bytes());
                }
            }
        }
    }
    Ok(files)
}

async fn try_mount_projected(run: &PodRun) -> Result<(), String> {
    for v in run.spec.volumes.iter().flatten() {
        let Some(p) = &v.projected else { continue };
        let files = projected_files(run, p).await?;
        let mode = p.default_mode.and_then(|m| u32::try_from(m).ok());
        write_atomic(&run.volume_dir(&v.name), &files, mode)
            .map_err(|e| format!("writing volume {}: {e}", v.name))?;
    }
    // The lab's path rewriting also maps the well-known token mount to
    // `serviceaccount/` (for Pods that mount no projected volume there).
    if run.spec.automount_service_account_token != Some(false) {
        let token = pod_token(run, Vec::new(), 3607).await?;
        let files = BTreeMap::from([
            ("token".to_string(), token.into_bytes()),
            ("namespace".to_string(), run.ns.clone().into_bytes()),
        ]);
        write_atomic(&run.dir.join("serviceaccount"), &files, Some(0o600))
            .map_err(|e| format!("writing the ServiceAccount token: {e}"))?;
    }
    Ok(())
}

/// Set up projected volumes and the token after the Secret volumes; waits
/// (as ContainerCreating) until they can be. `false` if cancelled.
pub(super) async fn mount_projected(run: &Arc<PodRun>, cancel: &CancellationToken) -> bool {
    loop {
        match try_mount_projected(run).await {
            Ok(()) => return true,
            Err(msg) => {
                tracing::info!(ns = %run.ns, name = %run.name, %msg, "node agent: projected volume not ready; retrying");
                for i in 0..run.spec.containers.len() {
                    let msg = msg.clone();
                    run.update_container(i, |c| {
                        c.state = CState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(format!("MountVolume.SetUp failed: {msg}")),
                        }
                    });
                }
                if !sleep_or_cancel(CONFIG_RETRY, cancel).await {
                    return false;
                }
            }
        }
    }
}

/// Projected tokens are renewed after this much of their life (the
/// kubelet's token manager renews at 80 % of the TTL; ours live 1 h).
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(48 * 60);

/// The kubelet's resync of Secret volumes: every sync period plus up to
/// 50 % jitter, each Secret read with GET and the volume rewritten (atomic
/// `..data` swap) when its content differs. Projected volumes (the token)
/// are rewritten when their token nears its end.
pub(super) async fn volume_resync(run: Arc<PodRun>, cfg: &NodeConfig, cancel: CancellationToken) {
    let mut tokens_written = tokio::time::Instant::now();
    let vols = secret_volumes(&run);
    loop {
        let period = cfg.volume_sync_period;
        let jitter = period.mul_f64(rand::rng().random_range(0.0..0.5));
        if !sleep_or_cancel(period + jitter, &cancel).await {
            return;
        }
        if tokens_written.elapsed() >= TOKEN_RENEW_AFTER {
            match try_mount_projected(&run).await {
                Ok(()) => tokens_written = tokio::time::Instant::now(),
                Err(e) => {
                    tracing::warn!(ns = %run.ns, pod = %run.name, error = %e, "node agent: token renewal failed; retrying")
                }
            }
        }
        for (vol_name, sv) in &vols {
            let name = sv.secret_name.clone().unwrap_or_default();
            let secret = match run.kl.get_secret(&run.ns, &name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(ns = %run.ns, pod = %run.name, volume = %vol_name, error = %e, "node agent: volume resync could not read its Secret");
                    continue;
                }
            };
            refresh_volume(&run, vol_name, sv, secret.as_ref(), "node agent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_is_ready_with_resources() {
        let cfg = NodeConfig::lab("n1");
        let s = node_status(&cfg, Utc::now());
        assert_eq!(s["conditions"][3]["type"], "Ready");
        assert_eq!(s["conditions"][3]["status"], "True");
        assert_eq!(s["allocatable"]["pods"], "110");
        assert_eq!(s["addresses"][0]["address"], "127.0.0.1");
        let _: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(s).unwrap();
        assert_eq!(
            NodeConfig::upstream("n").volume_sync_period,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn only_our_image_pulls() {
        let c = |image: &str| Container {
            name: "c".into(),
            image: Some(image.into()),
            ..Default::default()
        };
        assert!(pull_image(&c("secret-canary:latest")).is_ok());
        let err = pull_image(&c("nginx:1")).unwrap_err();
        assert!(err.contains("Failed to pull image \"nginx:1\""), "{err}");
        assert_eq!(probe_period(None), Duration::from_secs(10));
    }
}
