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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::bankvaults::{self, EnvValue, VaultConfig};
use super::Context;
use crate::faults::{Fault, Knob};
use crate::truth::{self, step};

/// Where a real Pod sees its ServiceAccount token.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The lab caps `terminationGracePeriodSeconds` so a stuck process cannot
/// hold up a test for the default 30 s.
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
    let kl = Arc::new(Kubelet::new(ctx));
    tracing::info!(block = %kl.ips.lock().map(|p| p.describe()).unwrap_or_default(), "kubelet started");

    let secrets_task = tokio::spawn(watch_secrets(kl.clone(), cancel.clone()));
    let mut pods = watcher(
        Api::<Pod>::all(kl.ctx.client.clone()),
        watcher::Config::default(),
    )
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
    let _ = secrets_task.await;
    tracing::info!("kubelet stopped");
    Ok(())
}

fn pod_key(pod: &Pod) -> String {
    pod.uid()
        .unwrap_or_else(|| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()))
}

struct PodHandle {
    cancel: CancellationToken,
    /// Set once the Pod carries a deletionTimestamp, so it is stopped once.
    terminating: bool,
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
                h.cancel.cancel();
            }
            return;
        }
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if deleting || finished {
            return;
        }
        let pod_cancel = cancel.child_token();
        running.insert(
            key,
            PodHandle {
                cancel: pod_cancel.clone(),
                terminating: false,
            },
        );
        tasks.spawn(run_pod(self.clone(), pod, pod_cancel, cancel.clone()));
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

// ---------------------------------------------------------------------------
// Pod IPs

/// Pod addresses: `127.X.Y.2..=254` for a random `X.Y` per lab, so labs
/// running side by side on one machine rarely share a block, and every
/// address is checked free by binding its ports before use. `127.X.Y.1` is
/// kept as the decoy address nothing listens on (`canary-unreachable`).
#[derive(Debug)]
pub struct IpPool {
    x: u8,
    y: u8,
    used: HashSet<u8>,
    next: u8,
    /// Addresses taken in the overflow blocks, as (third octet, fourth octet).
    overflow: HashSet<(u8, u8)>,
}

/// Blocks after `127.X.Y.0/24` (`127.X.Y+1.0/24`, ...) a pool overflows into
/// once the first is full, so the benchmarks can run a thousand Pods. Until
/// then only the first block is used.
const OVERFLOW_BLOCKS: u8 = 7;

impl IpPool {
    /// A pool in a random block.
    pub fn random() -> IpPool {
        let mut rng = rand::rng();
        IpPool::new(rng.random_range(16..=250), rng.random())
    }

    /// A pool in block `127.x.y.0/24`.
    pub fn new(x: u8, y: u8) -> IpPool {
        IpPool {
            x,
            y,
            used: HashSet::new(),
            next: 2,
            overflow: HashSet::new(),
        }
    }

    fn describe(&self) -> String {
        format!("127.{}.{}.0/24", self.x, self.y)
    }

    /// The address nothing listens on.
    pub fn decoy(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.x, self.y, 1)
    }

    /// A free address where every port in `ports` can be bound.
    pub fn allocate(&mut self, ports: &[u16]) -> Option<Ipv4Addr> {
        for _ in 0..253 {
            let z = self.next;
            self.next = if self.next >= 254 { 2 } else { self.next + 1 };
            if self.used.contains(&z) {
                continue;
            }
            let ip = Ipv4Addr::new(127, self.x, self.y, z);
            let free = ports
                .iter()
                .all(|p| TcpListener::bind(SocketAddr::from((ip, *p))).is_ok());
            if free {
                self.used.insert(z);
                return Some(ip);
            }
        }
        for k in 1..=OVERFLOW_BLOCKS {
            let y = self.y.wrapping_add(k);
            for z in 2..=254u8 {
                if self.overflow.contains(&(y, z)) {
                    continue;
                }
                let ip = Ipv4Addr::new(127, self.x, y, z);
                let free = ports
                    .iter()
                    .all(|p| TcpListener::bind(SocketAddr::from((ip, *p))).is_ok());
                if free {
                    self.overflow.insert((y, z));
                    return Some(ip);
                }
            }
        }
        None
    }

    /// Give an address back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let o = ip.octets();
        if o[2] == self.y {
            self.used.remove(&o[3]);
        } else {
            self.overflow.remove(&(o[2], o[3]));
        }
    }
}

// ---------------------------------------------------------------------------
// Secrets

/// The kubelet's watch-fed copy of every Secret. While `canary-stale` is on
/// it serves a snapshot frozen when the fault was first noticed, so Pods see
/// the old value as a kubelet with a stale cache would.
#[derive(Debug, Default)]
struct SecretCache {
    fresh: Mutex<HashMap<(String, String), Secret>>,
    frozen: Mutex<Option<HashMap<(String, String), Secret>>>,
}

impl SecretCache {
    fn stale(&self, knobs: &crate::faults::Knobs) -> bool {
        let on = knobs.is_on(Fault::CanaryStale);
        if let (Ok(mut frozen), Ok(fresh)) = (self.frozen.lock(), self.fresh.lock()) {
            match (on, frozen.is_some()) {
                (true, false) => *frozen = Some(fresh.clone()),
                (false, true) => *frozen = None,
                _ => {}
            }
        }
        on
    }

    fn apply(&self, knobs: &crate::faults::Knobs, s: Secret) {
        self.stale(knobs); // freeze before the update lands
        let key = (s.namespace().unwrap_or_default(), s.name_any());
        if let Ok(mut m) = self.fresh.lock() {
            m.insert(key, s);
        }
    }

    fn remove(&self, knobs: &crate::faults::Knobs, namespace: &str, name: &str) {
        self.stale(knobs);
        if let Ok(mut m) = self.fresh.lock() {
            m.remove(&(namespace.to_string(), name.to_string()));
        }
    }

    fn view(&self, knobs: &crate::faults::Knobs, namespace: &str, name: &str) -> Option<Secret> {
        let key = (namespace.to_string(), name.to_string());
        if self.stale(knobs) {
            if let Ok(f) = self.frozen.lock() {
                if let Some(s) = f.as_ref().and_then(|m| m.get(&key)) {
                    return Some(s.clone());
                }
            }
        }
        self.fresh.lock().ok().and_then(|m| m.get(&key).cloned())
    }
}

async fn watch_secrets(kl: Arc<Kubelet>, cancel: CancellationToken) {
    let mut stream = watcher(
        Api::<Secret>::all(kl.ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = cancel.cancelled() => return,
        };
        let Some(ev) = ev else { return };
        let changed = match ev {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                kl.secrets.apply(&kl.ctx.knobs, s);
                Some(key)
            }
            Ok(watcher::Event::Delete(s)) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                kl.secrets.remove(&kl.ctx.knobs, &key.0, &key.1);
                Some(key)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet: Secret watch failed; retrying");
                None
            }
        };
        if let Some(key) = changed {
            let _ = kl.secret_changed.send(key);
        }
    }
}

/// A Secret's data as bytes (`stringData` too, in case a write left it).
fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    if let Some(sd) = &s.string_data {
        for (k, v) in sd {
            out.insert(k.clone(), v.clone().into_bytes());
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Env

/// `$(VAR)` expansion as Kubernetes does it: `$$` is a literal `$`, a
/// reference to an unknown variable (or an unterminated one) stays as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn set_env(env: &mut Vec<EnvValue>, v: EnvValue) {
    match env.iter_mut().find(|e| e.name == v.name) {
        Some(e) => *e = v,
        None => env.push(v),
    }
}

/// The value of a `fieldRef`, as the downward API gives it.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: Ipv4Addr) -> Option<String> {
    let bracket = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => Some(pod.namespace().unwrap_or_else(|| "default".into())),
        "metadata.uid" => Some(pod.uid().unwrap_or_default()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        "spec.nodeName" => Some(NODE_NAME.into()),
        "spec.serviceAccountName" => Some(service_account(pod)),
        _ => {
            if let Some(k) = bracket("metadata.labels") {
                return Some(pod.labels().get(&k).cloned().unwrap_or_default());
            }
            if let Some(k) = bracket("metadata.annotations") {
                return Some(pod.annotations().get(&k).cloned().unwrap_or_default());
            }
            None
        }
    }
}

/// The node's name in status and the downward API.
pub const NODE_NAME: &str = "lab-node";

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Rewrite mount paths (and the canary's listen address) in one string: the
/// lab rules in the module doc. `mounts` is sorted longest path first.
pub fn rewrite(s: &str, mounts: &[(String, PathBuf)], pod_ip: Ipv4Addr) -> String {
    let mut out = s.replace("0.0.0.0:", &format!("{pod_ip}:"));
    for (mount, host) in mounts {
        out = replace_path_prefix(&out, mount, &host.to_string_lossy());
    }
    out
}

/// Replace `prefix` where it stands as a whole path (followed by the end,
/// `/`, or a character that cannot continue a path component).
fn replace_path_prefix(s: &str, prefix: &str, with: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        let after = &rest[pos + prefix.len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| c == '/' || !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'));
        out.push_str(&rest[..pos]);
        out.push_str(if whole { with } else { prefix });
        rest = after;
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Atomic writer

/// Write `files` into `dir` the way the kubelet's atomic writer does: a
/// fresh timestamped directory, a `..data` symlink renamed onto it, and
/// user-visible symlinks `dir/<top>` → `..data/<top>`; the old directory is
/// removed afterwards. Readers see either the old or the new set, never a mix.
pub fn write_atomic(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: Option<u32>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in files.keys() {
        let path = Path::new(p);
        let ok = !p.is_empty()
            && path.is_relative()
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            && !p.starts_with("..");
        if !ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid volume file path {p:?}"),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let old = std::fs::read_link(&data_link).ok();
    let ts = format!(
        "..{}_{:08x}",
        Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"),
        rand::rng().random::<u32>()
    );
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir)?;
    for (p, bytes) in files {
        let target = ts_dir.join(p);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        if let Some(m) = mode {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m))?;
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    let tops: HashSet<String> = files
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if !name.starts_with("..") && is_link && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

/// What a Secret volume should hold now, or why it cannot be set up.
fn secret_volume_files(
    secret: Option<&Secret>,
    vol: &k8s_openapi::api::core::v1::SecretVolumeSource,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let name = vol.secret_name.clone().unwrap_or_default();
    let optional = vol.optional.unwrap_or(false);
    let Some(secret) = secret else {
        return if optional {
            Ok(BTreeMap::new())
        } else {
            Err(format!("secret \"{name}\" not found"))
        };
    };
    let data = secret_data(secret);
    match &vol.items {
        None => Ok(data),
        Some(items) => {
            let mut out = BTreeMap::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), v.clone());
                    }
                    None if optional => {}
                    None => return Err(format!("couldn't find key {} in Secret {}", it.key, name)),
                }
            }
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------------------
// Process signals

/// Signals to a container's process group. The lab crate does not depend on
/// `libc`; `kill(2)` is in the C library std already links.
mod signal {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    pub const SIGTERM: i32 = 15;
    pub const SIGKILL: i32 = 9;

    /// Send `sig` to the process group led by `pgid`.
    pub fn group(pgid: u32, sig: i32) -> bool {
        match i32::try_from(pgid) {
            // SAFETY: kill(2) takes plain integers and touches no memory of
            // ours; a negative pid addresses a process group. pgid > 1 keeps
            // us from signalling our own group (0) or every process (-1).
            Ok(p) if p > 1 => unsafe { kill(-p, sig) == 0 },
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Pod status

#[derive(Debug, Clone)]
enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
struct CStatus {
    name: String,
    image: String,
    ready: bool,
    started: bool,
    ever_started: bool,
    restart_count: i32,
    state: CState,
    last_state: Option<CState>,
    pid: Option<u32>,
}

#[derive(Debug)]
struct StatusModel {
    start_time: DateTime<Utc>,
    advertised_ip: Ipv4Addr,
    initialized: bool,
    containers: Vec<CStatus>,
    transitions: BTreeMap<&'static str, (bool, DateTime<Utc>)>,
    restart_policy: String,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl CState {
    fn to_json(&self, container_id: Option<&str>) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": ts(*started_at)}}),
            CState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => {
                let mut t = json!({
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": ts(*started_at),
                    "finishedAt": ts(*finished_at),
                });
                if let Some(id) = container_id {
                    t["containerID"] = json!(id);
                }
                json!({"terminated": t})
            }
        }
    }
}

impl StatusModel {
    fn all_ready(&self) -> bool {
        self.initialized && !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }

    fn phase(&self) -> &'static str {
        if !self.initialized || self.containers.iter().any(|c| !c.ever_started) {
            return "Pending";
        }
        let all_terminated = self
            .containers
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { .. }));
        if all_terminated && self.restart_policy != "Always" {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }));
            return if ok { "Succeeded" } else { "Failed" };
        }
        "Running"
    }

    /// Update the condition transition times; returns the conditions JSON.
    fn conditions(&mut self) -> Value {
        let now = Utc::now();
        let ready = self.all_ready();
        let wanted = [
            ("PodScheduled", true),
            ("Initialized", self.initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
        ];
        let mut out = Vec::new();
        for (ty, status) in wanted {
            let entry = self.transitions.entry(ty).or_insert((status, now));
            if entry.0 != status {
                *entry = (status, now);
            }
            out.push(json!({
                "type": ty,
                "status": if status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": ts(entry.1),
            }));
        }
        Value::Array(out)
    }

    fn render(&mut self) -> Value {
        let conditions = self.conditions();
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let id = c.pid.map(|p| format!("lab://{p}"));
                let mut v = json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "ready": c.ready,
                    "started": c.started,
                    "restartCount": c.restart_count,
                    "state": c.state.to_json(id.as_deref()),
                    "lastState": c.last_state.as_ref().map(|s| s.to_json(None)).unwrap_or_else(|| json!({})),
                });
                if let Some(id) = id {
                    v["containerID"] = json!(id);
                }
                v
            })
            .collect();
        json!({
            "phase": self.phase(),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.advertised_ip.to_string(),
            "podIPs": [{"ip": self.advertised_ip.to_string()}],
            "startTime": ts(self.start_time),
            "qosClass": "BestEffort",
            "conditions": conditions,
            "containerStatuses": containers,
        })
    }
}

// ---------------------------------------------------------------------------
// One Pod

struct PodRun {
    kl: Arc<Kubelet>,
    pod: Pod,
    spec: PodSpec,
    ns: String,
    name: String,
    dir: PathBuf,
    ip: Ipv4Addr,
    model: Mutex<StatusModel>,
    dirty: watch::Sender<()>,
}

impl PodRun {
    fn update(&self, f: impl FnOnce(&mut StatusModel)) {
        if let Ok(mut m) = self.model.lock() {
            f(&mut m);
        }
        self.dirty.send_replace(());
    }

    fn update_container(&self, idx: usize, f: impl FnOnce(&mut CStatus)) {
        self.update(|m| {
            if let Some(c) = m.containers.get_mut(idx) {
                f(c);
            }
        });
    }

    fn knobs(&self) -> &crate::faults::Knobs {
        &self.kl.ctx.knobs
    }

    fn volume_dir(&self, volume: &str) -> PathBuf {
        self.dir.join("volumes").join(volume)
    }
}

/// Sleep, unless cancelled first (then `false`).
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

fn container_ports(c: &Container) -> Vec<u16> {
    let mut ports: Vec<u16> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    if let Some(p) = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()) {
        if let IntOrString::Int(n) = p.port {
            if let Ok(n) = u16::try_from(n) {
                ports.push(n);
            }
        }
    }
    ports
}

async fn run_pod(kl: Arc<Kubelet>, pod: Pod, cancel: CancellationToken, lab: CancellationToken) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let Some(spec) = pod.spec.clone() else {
        tracing::warn!(%ns, %name, "kubelet: Pod without spec ignored");
        return;
    };
    let dir = pod_dir(&kl.ctx.dir, &ns, &name);
    for sub in ["volumes", "subpath", "serviceaccount"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(%ns, %name, error = %e, "kubelet: cannot create the Pod directory");
        return;
    }
    let mut ports: Vec<u16> = spec.containers.iter().flat_map(container_ports).collect();
    if ports.is_empty() {
        ports.push(CANARY_DEFAULT_PORT);
    }
    let ip = loop {
        let got = kl.ips.lock().ok().and_then(|mut p| p.allocate(&ports));
        match got {
            Some(ip) => break ip,
            None => {
                tracing::warn!(%ns, %name, "kubelet: no free Pod IP; retrying");
                if !sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                    return;
                }
            }
        }
    };
    let decoy = kl
        .ips
        .lock()
        .map(|p| p.decoy())
        .unwrap_or(Ipv4Addr::LOCALHOST);
    let advertised = |knobs: &crate::faults::Knobs| {
        if knobs.is_on(Fault::CanaryUnreachable) {
            decoy
        } else {
            ip
        }
    };
    let model = StatusModel {
        start_time: Utc::now(),
        advertised_ip: advertised(&kl.ctx.knobs),
        initialized: false,
        containers: spec
            .containers
            .iter()
            .map(|c| CStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ready: false,
                started: false,
                ever_started: false,
                restart_count: 0,
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                last_state: None,
                pid: None,
            })
            .collect(),
        transitions: BTreeMap::new(),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
    };
    let (dirty, dirty_rx) = watch::channel(());
    let run = Arc::new(PodRun {
        kl: kl.clone(),
        pod: pod.clone(),
        spec,
        ns: ns.clone(),
        name: name.clone(),
        dir,
        ip,
        model: Mutex::new(model),
        dirty,
    });
    tracing::info!(%ns, %name, %ip, "kubelet: Pod admitted");
    let writer = tokio::spawn(status_writer(run.clone(), dirty_rx, cancel.clone()));
    run.dirty.send_replace(());

    let mut tasks = tokio::task::JoinSet::new();
    if mount_volumes(&run, &cancel).await {
        run.update(|m| m.initialized = true);
        tasks.spawn(volume_sync(run.clone(), cancel.clone()));
        tasks.spawn(watch_reachability(run.clone(), decoy, cancel.clone()));
        for idx in 0..run.spec.containers.len() {
            tasks.spawn(supervise(run.clone(), idx, cancel.clone()));
        }
    }
    cancel.cancelled().await;
    while tasks.join_next().await.is_some() {}
    let _ = writer.await;
    if let Ok(mut p) = kl.ips.lock() {
        p.release(ip);
    }
    tracing::info!(%ns, %name, "kubelet: Pod stopped");
    // A Pod deleted gracefully (deletionTimestamp set) is removed for good
    // once its processes are gone, as the kubelet does.
    if !lab.is_cancelled() {
        let api: Api<Pod> = Api::namespaced(kl.ctx.client.clone(), &ns);
        let current = tokio::time::timeout(API_TIMEOUT, api.get_opt(&name)).await;
        if let Ok(Ok(Some(p))) = current {
            if p.uid() == pod.uid() && p.metadata.deletion_timestamp.is_some() {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = tokio::time::timeout(API_TIMEOUT, api.delete(&name, &dp)).await;
            }
        }
    }
}

/// Writes the status subresource whenever the model changes, in order and
/// coalesced; records `kubelet.pod_ready` when a write first says Ready.
async fn status_writer(
    run: Arc<PodRun>,
    mut dirty: watch::Receiver<()>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(run.kl.ctx.client.clone(), &run.ns);
    let mut written_ready = false;
    loop {
        tokio::select! {
            r = dirty.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
        loop {
            dirty.mark_unchanged();
            let (body, ready) = match run.model.lock() {
                Ok(mut m) => (m.render(), m.all_ready()),
                Err(_) => return,
            };
            let patch = Patch::Merge(json!({"status": body}));
            let r = tokio::time::timeout(
                API_TIMEOUT,
                api.patch_status(&run.name, &PatchParams::default(), &patch),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    if ready && !written_ready {
                        run.kl
                            .ctx
                            .truth
                            .record(step::POD_READY, &run.ns, &run.name, None);
                        tracing::info!(ns = %run.ns, name = %run.name, "kubelet: Pod ready");
                    }
                    written_ready = ready;
                    break;
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => return,
                Ok(Err(e)) => {
                    tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: status write failed; retrying")
                }
                Err(_) => {
                    tracing::warn!(ns = %run.ns, name = %run.name, "kubelet: status write timed out; retrying")
                }
            }
            if !sleep_or_cancel(Duration::from_millis(200), &cancel).await {
                return;
            }
        }
    }
}

/// Follows `canary-unreachable`: the advertised `status.podIP` moves to the
/// decoy while it is on, and back when it clears.
async fn watch_reachability(run: Arc<PodRun>, decoy: Ipv4Addr, cancel: CancellationToken) {
    loop {
        let want = if run.knobs().is_on(Fault::CanaryUnreachable) {
            decoy
        } else {
            run.ip
        };
        let differs = run
            .model
            .lock()
            .map(|m| m.advertised_ip != want)
            .unwrap_or(false);
        if differs {
            run.update(|m| m.advertised_ip = want);
        }
        // `changed()` only wakes current waiters: poll too, so a flip between
        // two waits is not missed.
        tokio::select! {
            _ = run.knobs().changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

// ---------------------------------------------------------------------------
// Volumes

/// Set up Secret volumes and the ServiceAccount token; waits (as
/// ContainerCreating) while a required Secret is missing. `false` if cancelled.
async fn mount_volumes(run: &Arc<PodRun>, cancel: &CancellationToken) -> bool {
    let mut changes = run.kl.secret_changed.subscribe();
    loop {
        match try_mount_volumes(run).await {
            Ok(()) => break,
            Err(msg) => {
                tracing::info!(ns = %run.ns, name = %run.name, %msg, "kubelet: volume not ready; retrying");
                for i in 0..run.spec.containers.len() {
                    let msg = msg.clone();
                    run.update_container(i, |c| {
                        c.state = CState::Waiting {
                            reason: "ContainerCreating".into(),
                            message: Some(format!("MountVolume.SetUp failed: {msg}")),
                        }
                    });
                }
                if !wait_config_retry(&run.ns, &mut changes, cancel).await {
                    return false;
                }
            }
        }
    }
    if run.spec.automount_service_account_token != Some(false) {
        let sa = service_account(&run.pod);
        match bankvaults::service_account_token(&run.kl.ctx.client, &run.ns, &sa).await {
            Ok(token) => {
                let files = BTreeMap::from([
                    ("token".to_string(), token.into_bytes()),
                    ("namespace".to_string(), run.ns.clone().into_bytes()),
                ]);
                if let Err(e) = write_atomic(&run.dir.join("serviceaccount"), &files, Some(0o600)) {
                    tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: could not write the token");
                }
            }
            Err(e) => {
                tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: no ServiceAccount token")
            }
        }
    }
    true
}

/// Wait for a Secret change in `ns` or [`CONFIG_RETRY`]; `false` if cancelled.
async fn wait_config_retry(
    ns: &str,
    changes: &mut broadcast::Receiver<(String, String)>,
    cancel: &CancellationToken,
) -> bool {
    let deadline = tokio::time::sleep(CONFIG_RETRY);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            _ = cancel.cancelled() => return false,
            ev = changes.recv() => match ev {
                Ok((n, _)) if n == ns => return true,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return sleep_or_cancel(CONFIG_RETRY, cancel).await,
            },
        }
    }
}

async fn try_mount_volumes(run: &Arc<PodRun>) -> Result<(), String> {
    for v in run.spec.volumes.iter().flatten() {
        let Some(sv) = &v.secret else { continue };
        let secret_name = sv.secret_name.clone().unwrap_or_default();
        let secret = run.kl.get_secret(&run.ns, &secret_name).await?;
        let files = secret_volume_files(secret.as_ref(), sv)?;
        let mode = sv.default_mode.and_then(|m| u32::try_from(m).ok());
        write_atomic(&run.volume_dir(&v.name), &files, mode)
            .map_err(|e| format!("writing volume {}: {e}", v.name))?;
        record_volume(run, &files, &BTreeMap::new());
    }
    Ok(())
}

fn record_volume(run: &PodRun, new: &BTreeMap<String, Vec<u8>>, old: &BTreeMap<String, Vec<u8>>) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let d = truth::digest(v);
            run.kl
                .ctx
                .truth
                .record(step::VOLUME_UPDATED, &run.ns, &run.name, Some(&d));
        }
    }
}

fn read_volume(dir: &Path, keys: impl Iterator<Item = String>) -> BTreeMap<String, Vec<u8>> {
    keys.filter_map(|k| std::fs::read(dir.join(&k)).ok().map(|v| (k, v)))
        .collect()
}

/// Refresh Secret volumes `volume-sync-latency` after their Secret changes
/// (and after `canary-stale` clears), from the watch-fed cache as the
/// kubelet's Secret manager does. Never while `canary-stale` is on.
async fn volume_sync(run: Arc<PodRun>, cancel: CancellationToken) {
    let vols: Vec<(String, k8s_openapi::api::core::v1::SecretVolumeSource)> = run
        .spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.clone().map(|s| (v.name.clone(), s)))
        .collect();
    if vols.is_empty() {
        return;
    }
    let names: HashSet<String> = vols
        .iter()
        .filter_map(|(_, s)| s.secret_name.clone())
        .collect();
    let mut changes = run.kl.secret_changed.subscribe();
    let mut was_stale = run.kl.secrets.stale(run.knobs());
    loop {
        let relevant = tokio::select! {
            ev = changes.recv() => match ev {
                Ok((ns, n)) => ns == run.ns && names.contains(&n),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // The kubelet's periodic sync; also notices `canary-stale` clearing.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let stale = run.kl.secrets.stale(run.knobs());
                let cleared = was_stale && !stale;
                was_stale = stale;
                cleared
            }
            _ = cancel.cancelled() => return,
        };
        if !relevant {
            continue;
        }
        if !sleep_or_cancel(run.knobs().sample(Knob::VolumeSyncLatency), &cancel).await {
            return;
        }
        if run.kl.secrets.stale(run.knobs()) {
            was_stale = true;
            continue;
        }
        for (vol_name, sv) in &vols {
            let name = sv.secret_name.clone().unwrap_or_default();
            let secret = run.kl.secrets.view(run.knobs(), &run.ns, &name);
            let Ok(files) = secret_volume_files(secret.as_ref(), sv) else {
                continue; // the real kubelet keeps the last content when the Secret goes away
            };
            let dir = run.volume_dir(vol_name);
            let current = read_volume(&dir, files.keys().cloned());
            let listed = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .filter(|e| !e.file_name().to_string_lossy().starts_with(".."))
                        .count()
                })
                .unwrap_or(0);
            let same_keys = files.keys().filter(|k| !k.contains('/')).count() == listed;
            if current == files && same_keys {
                continue;
            }
            let mode = sv.default_mode.and_then(|m| u32::try_from(m).ok());
            match write_atomic(&dir, &files, mode) {
                Ok(()) => {
                    tracing::info!(ns = %run.ns, pod = %run.name, volume = %vol_name, "kubelet: Secret volume updated");
                    record_volume(&run, &files, &current);
                }
                Err(e) => {
                    tracing::warn!(ns = %run.ns, pod = %run.name, volume = %vol_name, error = %e, "kubelet: volume update failed")
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Containers

/// A container ready to spawn.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<EnvValue>,
}

enum PrepError {
    /// CreateContainerConfigError: retried without back-off.
    Config(String),
    /// The container starts but its entrypoint fails at once (vault-env): exit 1.
    Entrypoint(String),
    /// RunContainerError: nothing to run.
    Run(String),
}

async fn build_env(run: &PodRun, c: &Container) -> Result<Vec<EnvValue>, String> {
    let mut env: Vec<EnvValue> = Vec::new();
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        if let Some(sr) = &src.secret_ref {
            let name = sr.name.clone();
            match run.kl.get_secret(&run.ns, &name).await? {
                Some(s) => {
                    for (k, v) in secret_data(&s) {
                        let var = format!("{prefix}{k}");
                        if valid_env_name(&var) {
                            set_env(
                                &mut env,
                                EnvValue {
                                    name: var,
                                    value: String::from_utf8_lossy(&v).into_owned(),
                                    secret: true,
                                },
                            );
                        }
                    }
                }
                None if sr.optional == Some(true) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        }
        if let Some(cr) = &src.config_map_ref {
            let name = cr.name.clone();
            match run.kl.get_config_map(&run.ns, &name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        let var = format!("{prefix}{k}");
                        if valid_env_name(&var) {
                            set_env(
                                &mut env,
                                EnvValue {
                                    name: var,
                                    value: v,
                                    secret: false,
                                },
                            );
                        }
                    }
                }
                None if cr.optional == Some(true) => {}
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(vf) = &var.value_from {
            if let Some(sk) = &vf.secret_key_ref {
                let optional = sk.optional == Some(true);
                let name = sk.name.clone();
                let value = match run.kl.get_secret(&run.ns, &name).await? {
                    Some(s) => match secret_data(&s).get(&sk.key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                sk.key, run.ns, name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("secret \"{name}\" not found")),
                };
                if let Some(value) = value {
                    set_env(
                        &mut env,
                        EnvValue {
                            name: var.name.clone(),
                            value,
                            secret: true,
                        },
                    );
                }
            } else if let Some(ck) = &vf.config_map_key_ref {
                let optional = ck.optional == Some(true);
                let name = ck.name.clone();
                let value = match run.kl.get_config_map(&run.ns, &name).await? {
                    Some(cm) => match cm.data.unwrap_or_default().remove(&ck.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                ck.key, run.ns, name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("configmap \"{name}\" not found")),
                };
                if let Some(value) = value {
                    set_env(
                        &mut env,
                        EnvValue {
                            name: var.name.clone(),
                            value,
                            secret: false,
                        },
                    );
                }
            } else if let Some(fr) = &vf.field_ref {
                let value = field_ref(&run.pod, &fr.field_path, run.ip)
                    .ok_or_else(|| format!("unsupported fieldRef {:?}", fr.field_path))?;
                set_env(
                    &mut env,
                    EnvValue {
                        name: var.name.clone(),
                        value,
                        secret: false,
                    },
                );
            } else {
                // resourceFieldRef: the lab sets no limits, so there is nothing to report.
                set_env(
                    &mut env,
                    EnvValue {
                        name: var.name.clone(),
                        value: String::new(),
                        secret: false,
                    },
                );
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            let value = expand(&raw, |n| {
                env.iter().find(|e| e.name == n).map(|e| e.value.clone())
            });
            set_env(
                &mut env,
                EnvValue {
                    name: var.name.clone(),
                    value,
                    secret: false,
                },
            );
        }
    }
    Ok(env)
}

fn is_canary_program(cmd0: &str) -> bool {
    Path::new(cmd0)
        .file_name()
        .is_some_and(|f| f == "secret-canary")
}

fn image_is_canary(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    let repo = last.split(['@', ':']).next().unwrap_or(last);
    repo == "secret-canary"
}

/// Mounts of one container, longest mount path first: `(mountPath, host path)`.
fn container_mounts(run: &PodRun, c: &Container) -> Result<Vec<(String, PathBuf)>, String> {
    let mut mounts = Vec::new();
    for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let vol = run.volume_dir(&vm.name);
        match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            // A subPath mount is the file as it was at container start; the
            // kubelet never updates it.
            Some(sub) => {
                let from = vol.join(sub);
                let to = run.dir.join("subpath").join(&c.name).join(i.to_string());
                let _ = std::fs::remove_dir_all(&to);
                let _ = std::fs::remove_file(&to);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                if from.is_dir() {
                    std::fs::create_dir_all(&to).map_err(|e| format!("subPath {sub}: {e}"))?;
                    for e in std::fs::read_dir(&from)
                        .map_err(|e| format!("subPath {sub}: {e}"))?
                        .flatten()
                    {
                        if e.path().is_file() {
                            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                        }
                    }
                } else {
                    std::fs::copy(&from, &to).map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                mounts.push((vm.mount_path.clone(), to));
            }
            None => mounts.push((vm.mount_path.clone(), vol)),
        }
    }
    if run.spec.automount_service_account_token != Some(false) {
        mounts.push((
            SERVICE_ACCOUNT_MOUNT.to_string(),
            run.dir.join("serviceaccount"),
        ));
    }
    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(mounts)
}

async fn prepare(run: &PodRun, c: &Container) -> Result<Launch, PrepError> {
    let mut env = build_env(run, c).await.map_err(PrepError::Config)?;
    if let Some(cfg) = VaultConfig::from_pod(&run.pod, &run.kl.ctx.vault_addr) {
        if bankvaults::has_references(&env) {
            bankvaults::resolve(&run.kl.ctx, &run.pod, &cfg, &mut env)
                .await
                .map_err(|e| PrepError::Entrypoint(format!("vault-env: {e}")))?;
        }
    }
    let mounts = container_mounts(run, c).map_err(PrepError::Run)?;
    for e in env.iter_mut().filter(|e| !e.secret) {
        e.value = rewrite(&e.value, &mounts, run.ip);
    }
    let lookup = |n: &str| env.iter().find(|e| e.name == n).map(|e| e.value.clone());
    let command: Vec<String> = c
        .command
        .iter()
        .flatten()
        .map(|s| rewrite(&expand(s, lookup), &mounts, run.ip))
        .collect();
    let args: Vec<String> = c
        .args
        .iter()
        .flatten()
        .map(|s| rewrite(&expand(s, lookup), &mounts, run.ip))
        .collect();
    let image = c.image.clone().unwrap_or_default();
    let (program, args, canary) = match command.split_first() {
        Some((cmd0, rest)) if is_canary_program(cmd0) => (
            run.kl.ctx.canary_bin.clone(),
            rest.iter().cloned().chain(args).collect::<Vec<_>>(),
            true,
        ),
        Some((cmd0, rest)) => (
            PathBuf::from(cmd0),
            rest.iter().cloned().chain(args).collect(),
            false,
        ),
        None if image_is_canary(&image) => (run.kl.ctx.canary_bin.clone(), args, true),
        None => {
            return Err(PrepError::Run(format!(
                "no command given and the lab does not know the entrypoint of image {image:?}"
            )))
        }
    };
    if canary
        && !args
            .iter()
            .any(|a| a == "--listen" || a.starts_with("--listen="))
        && !env.iter().any(|e| e.name == "SECRET_CANARY_LISTEN")
    {
        env.push(EnvValue {
            name: "SECRET_CANARY_LISTEN".into(),
            value: format!("{}:{CANARY_DEFAULT_PORT}", run.ip),
            secret: false,
        });
    }
    Ok(Launch { program, args, env })
}

fn open_log(run: &PodRun, c: &Container) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.dir.join(format!("{}.log", c.name)))
}

fn spawn(run: &PodRun, c: &Container, launch: &Launch) -> std::io::Result<tokio::process::Child> {
    let log = open_log(run, c)?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .envs(launch.env.iter().map(|e| (&e.name, &e.value)))
        .current_dir(&run.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        // Its own process group, so a stop reaches anything it forks.
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// SIGTERM the process group, SIGKILL it after the grace period.
async fn terminate(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    signal::group(pid, signal::SIGTERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal::group(pid, signal::SIGKILL);
            let _ = child.start_kill();
            tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .ok()
                .and_then(|s| s.ok())
        }
    };
    // Anything the process left behind in its group goes too.
    signal::group(pid, signal::SIGKILL);
    status
}

fn exit_code(status: Option<std::process::ExitStatus>) -> i32 {
    match status {
        Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
        None => 137,
    }
}

fn grace_period(spec: &PodSpec) -> Duration {
    let secs = spec.termination_grace_period_seconds.unwrap_or(30).max(0);
    Duration::from_secs(u64::try_from(secs).unwrap_or(30)).min(GRACE_CAP)
}

/// Runs one container for the Pod's lifetime: start, probe, restart with
/// back-off, stop on cancel.
async fn supervise(run: Arc<PodRun>, idx: usize, cancel: CancellationToken) {
    let c = run.spec.containers[idx].clone();
    let mut changes = run.kl.secret_changed.subscribe();
    let mut failures_in_row: u32 = 0;
    loop {
        let mut delay = run.knobs().sample(Knob::KubeletStartLatency);
        if run.knobs().is_on(Fault::SlowStart) {
            delay += run.knobs().sample(Knob::SlowStart);
        }
        if !sleep_or_cancel(delay, &cancel).await {
            return;
        }
        let started_at = Utc::now();
        let exit = match prepare(&run, &c).await {
            Err(PrepError::Config(msg)) => {
                tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: CreateContainerConfigError");
                run.update_container(idx, |s| {
                    s.state = CState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(msg),
                    }
                });
                if !wait_config_retry(&run.ns, &mut changes, &cancel).await {
                    return;
                }
                continue;
            }
            Err(PrepError::Run(msg)) => {
                tracing::warn!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: RunContainerError");
                run.update_container(idx, |s| {
                    s.state = CState::Waiting {
                        reason: "RunContainerError".into(),
                        message: Some(msg),
                    }
                });
                (128, started_at)
            }
            Err(PrepError::Entrypoint(msg)) => {
                // The container did start: vault-env is its entrypoint, and it
                // exits 1 before exec'ing the app.
                tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: container entrypoint failed");
                if let Ok(mut f) = open_log(&run, &c) {
                    use std::io::Write;
                    let _ = writeln!(f, "{msg}");
                }
                run.update_container(idx, |s| {
                    s.ever_started = true;
                    s.state = CState::Running { started_at };
                });
                (1, started_at)
            }
            Ok(launch) => match run_container(&run, idx, &c, &launch, &cancel).await {
                Some(r) => r,
                None => return, // stopped on cancel
            },
        };
        let (code, started_at) = exit;
        let finished_at = Utc::now();
        let restart = match run
            .model
            .lock()
            .map(|m| m.restart_policy.clone())
            .unwrap_or_default()
            .as_str()
        {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        let terminated = CState::Terminated {
            exit_code: code,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at,
            finished_at,
        };
        if !restart {
            run.update_container(idx, |s| {
                s.ready = false;
                s.started = false;
                s.state = terminated;
            });
            cancel.cancelled().await;
            return;
        }
        failures_in_row = failures_in_row.saturating_add(1);
        let base = run.knobs().sample(Knob::CrashBackoff);
        let backoff = base
            .saturating_mul(2u32.saturating_pow(failures_in_row.saturating_sub(1).min(16)))
            .min(base.saturating_mul(BACKOFF_CAP_FACTOR));
        tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, code, ?backoff, "kubelet: container exited; backing off");
        run.update_container(idx, |s| {
            s.ready = false;
            s.started = false;
            s.pid = None;
            s.restart_count += 1;
            s.last_state = Some(terminated);
            s.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {} restarting failed container={} pod={}_{}",
                    humantime::format_duration(Duration::from_secs(backoff.as_secs().max(1))),
                    c.name,
                    run.name,
                    run.ns
                )),
            };
        });
        if !sleep_or_cancel(backoff, &cancel).await {
            return;
        }
        // The real kubelet forgets the back-off after a container has run
        // fine for a while; here: after a run that lasted longer than the
        // current back-off cap.
        if (finished_at - started_at).to_std().unwrap_or_default()
            > base.saturating_mul(BACKOFF_CAP_FACTOR)
        {
            failures_in_row = 0;
        }
    }
}

/// Spawn, record, probe, wait. `None` when stopped by cancel, else the exit
/// code and when the run started.
async fn run_container(
    run: &Arc<PodRun>,
    idx: usize,
    c: &Container,
    launch: &Launch,
    cancel: &CancellationToken,
) -> Option<(i32, DateTime<Utc>)> {
    let started_at = Utc::now();
    let mut attempt = 0;
    let spawned = loop {
        match spawn(run, c, launch) {
            // Seen once under heavy load in CI: a start failing with ENOENT
            // although program and Pod directory exist. A transient one is
            // retried before it counts as a container start failure.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {
                attempt += 1;
                tracing::info!(ns = %run.ns, pod = %run.name, error = %e, attempt, "kubelet: retrying a container start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            let msg = format!(
                "starting {} in {}: {e} (program exists: {}, directory exists: {})",
                launch.program.display(),
                run.dir.display(),
                launch.program.exists(),
                run.dir.exists()
            );
            tracing::warn!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: RunContainerError");
            run.update_container(idx, |s| {
                s.state = CState::Waiting {
                    reason: "RunContainerError".into(),
                    message: Some(msg),
                }
            });
            return Some((128, started_at));
        }
    };
    let pid = child.id();
    let sourced: Vec<&EnvValue> = launch.env.iter().filter(|e| e.secret).collect();
    if sourced.is_empty() {
        run.kl
            .ctx
            .truth
            .record(step::POD_STARTED, &run.ns, &run.name, None);
    }
    for e in sourced {
        let d = truth::digest(e.value.as_bytes());
        run.kl
            .ctx
            .truth
            .record(step::POD_STARTED, &run.ns, &run.name, Some(&d));
    }
    tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, ?pid, "kubelet: container started");
    run.update_container(idx, |s| {
        s.ever_started = true;
        s.started = true;
        s.pid = pid;
        s.state = CState::Running { started_at };
    });
    if run.knobs().is_on(Fault::CanaryCrash) {
        // Killed right after start, reported as the app failing (exit 1).
        let _ = terminate(&mut child, Duration::ZERO).await;
        return Some((1, started_at));
    }
    // The probe loop lives exactly as long as this run of the process.
    let probe_cancel = cancel.child_token();
    let probe = tokio::spawn(readiness(run.clone(), idx, c.clone(), probe_cancel.clone()));
    let result = tokio::select! {
        status = child.wait() => {
            if let Some(pid) = pid {
                signal::group(pid, signal::SIGKILL);
            }
            Some((exit_code(status.ok()), started_at))
        }
        _ = cancel.cancelled() => {
            let status = terminate(&mut child, grace_period(&run.spec)).await;
            tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, code = exit_code(status), "kubelet: container stopped");
            None
        }
    };
    probe_cancel.cancel();
    let _ = probe.await;
    result
}

fn probe_port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The readiness loop: `httpGet` against the real Pod IP every
/// `readiness-period`; with no probe, ready once started. `rollout-stuck`
/// makes every probe fail.
async fn readiness(run: Arc<PodRun>, idx: usize, c: Container, cancel: CancellationToken) {
    let probe = c.readiness_probe.clone();
    let http_get = probe.as_ref().and_then(|p| p.http_get.clone());
    let threshold = probe
        .as_ref()
        .and_then(|p| p.failure_threshold)
        .unwrap_or(3)
        .max(1) as u32;
    let timeout = Duration::from_secs(
        probe
            .as_ref()
            .and_then(|p| p.timeout_seconds)
            .unwrap_or(1)
            .max(1) as u64,
    );
    let initial = Duration::from_secs(
        probe
            .as_ref()
            .and_then(|p| p.initial_delay_seconds)
            .unwrap_or(0)
            .max(0) as u64,
    );
    if !sleep_or_cancel(initial, &cancel).await {
        return;
    }
    let url = http_get.as_ref().and_then(|g| {
        let port = probe_port(&c, &g.port)?;
        let path = g.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Some(format!("http://{}:{port}{path}", run.ip))
    });
    let mut failures = 0u32;
    let mut ready = false;
    loop {
        let ok = if run.knobs().is_on(Fault::RolloutStuck) {
            false
        } else if let Some(url) = &url {
            let req = run.kl.http.get(url).timeout(timeout).send();
            matches!(tokio::time::timeout(timeout, req).await, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection())
        } else {
            http_get.is_none()
        };
        if ok {
            failures = 0;
            if !ready {
                ready = true;
                run.update_container(idx, |s| s.ready = true);
            }
        } else {
            failures += 1;
            if ready && failures >= threshold {
                ready = false;
                run.update_container(idx, |s| s.ready = false);
            }
        }
        if !sleep_or_cancel(run.knobs().sample(Knob::ReadinessPeriod), &cancel).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "POD_IP" => Some("127.9.9.2".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y", vars), "x1y");
        assert_eq!(expand("$(POD_IP):8080", vars), "127.9.9.2:8080");
        assert_eq!(expand("$(NOPE)", vars), "$(NOPE)");
        assert_eq!(expand("$$(A)", vars), "$(A)");
        assert_eq!(expand("a$$b", vars), "a$b");
        assert_eq!(expand("$(A", vars), "$(A");
        assert_eq!(expand("cost $5", vars), "cost $5");
        assert_eq!(expand("end$", vars), "end$");
    }

    #[test]
    fn mount_paths_are_rewritten_as_whole_paths() {
        let mounts = vec![
            ("/etc/secret-extra".to_string(), PathBuf::from("/lab/b")),
            ("/etc/secret".to_string(), PathBuf::from("/lab/a")),
        ];
        let ip = Ipv4Addr::new(127, 1, 2, 3);
        assert_eq!(rewrite("/etc/secret/value", &mounts, ip), "/lab/a/value");
        assert_eq!(
            rewrite("--from-file=/etc/secret/v", &mounts, ip),
            "--from-file=/lab/a/v"
        );
        assert_eq!(rewrite("/etc/secret-extra/v", &mounts, ip), "/lab/b/v");
        assert_eq!(rewrite("/etc/secrets/v", &mounts, ip), "/etc/secrets/v");
        assert_eq!(rewrite("0.0.0.0:8080", &mounts, ip), "127.1.2.3:8080");
    }

    #[test]
    fn field_refs() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".to_string(), "canary".to_string())]));
        let ip = Ipv4Addr::new(127, 5, 6, 7);
        assert_eq!(field_ref(&pod, "status.podIP", ip).unwrap(), "127.5.6.7");
        assert_eq!(field_ref(&pod, "metadata.name", ip).unwrap(), "p");
        assert_eq!(field_ref(&pod, "metadata.namespace", ip).unwrap(), "ns");
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']", ip).unwrap(),
            "canary"
        );
        assert_eq!(
            field_ref(&pod, "spec.serviceAccountName", ip).unwrap(),
            "default"
        );
        assert!(field_ref(&pod, "status.nope", ip).is_none());
    }

    #[test]
    fn atomic_writer_swaps_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("kubelet-aw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        write_atomic(&dir, &files, None).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        let files = BTreeMap::from([("a".to_string(), b"3".to_vec())]);
        write_atomic(&dir, &files, Some(0o644)).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"3");
        assert!(
            std::fs::symlink_metadata(dir.join("b")).is_err(),
            "removed key's link is gone"
        );
        assert!(!dir.join(first).exists(), "old generation removed");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            PathBuf::from("..data/a")
        );
        let bad = BTreeMap::from([("../x".to_string(), b"1".to_vec())]);
        assert!(write_atomic(&dir, &bad, None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ip_pool_allocates_distinct_addresses_and_skips_busy_ones() {
        let mut pool = IpPool::random();
        let a = pool.allocate(&[8080]).unwrap();
        // Occupy the next address's port: the pool must skip it.
        let mut probe = IpPool::new(a.octets()[1], a.octets()[2]);
        probe.next = a.octets()[3] + 1;
        let busy_ip = Ipv4Addr::new(127, a.octets()[1], a.octets()[2], a.octets()[3] + 1);
        let _hold = TcpListener::bind((busy_ip, 8080)).unwrap();
        let b = pool.allocate(&[8080]).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, busy_ip);
        assert_ne!(a, pool.decoy());
        pool.release(a);
        assert!(!pool.used.contains(&a.octets()[3]));
    }

    #[test]
    fn ip_pool_overflows_into_the_next_block_when_full() {
        let mut pool = IpPool::random();
        let ips: HashSet<Ipv4Addr> = (0..300).map(|_| pool.allocate(&[8080]).unwrap()).collect();
        assert_eq!(ips.len(), 300);
        assert!(ips.iter().filter(|ip| ip.octets()[2] == pool.y).count() >= 250);
        let later = *ips.iter().find(|ip| ip.octets()[2] != pool.y).unwrap();
        pool.release(later);
        assert!(!pool
            .overflow
            .contains(&(later.octets()[2], later.octets()[3])));
    }

    #[test]
    fn secret_volume_items_and_missing() {
        use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource};
        use k8s_openapi::ByteString;
        let s = Secret {
            data: Some(BTreeMap::from([(
                "k".to_string(),
                ByteString(b"v".to_vec()),
            )])),
            ..Default::default()
        };
        let all = SecretVolumeSource {
            secret_name: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(secret_volume_files(Some(&s), &all).unwrap()["k"], b"v");
        assert!(secret_volume_files(None, &all)
            .unwrap_err()
            .contains("not found"));
        let items = SecretVolumeSource {
            secret_name: Some("s".into()),
            items: Some(vec![KeyToPath {
                key: "k".into(),
                path: "dir/file".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            secret_volume_files(Some(&s), &items).unwrap()["dir/file"],
            b"v"
        );
        let missing = SecretVolumeSource {
            secret_name: Some("s".into()),
            items: Some(vec![KeyToPath {
                key: "nope".into(),
                path: "x".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(secret_volume_files(Some(&s), &missing).is_err());
    }

    #[test]
    fn canary_images() {
        assert!(image_is_canary("ghcr.io/x/secret-canary:0.1"));
        assert!(image_is_canary("secret-canary"));
        assert!(image_is_canary("secret-canary@sha256:abc"));
        assert!(!image_is_canary("nginx:1"));
        assert!(is_canary_program("/usr/local/bin/secret-canary"));
    }

    #[test]
    fn status_model_phase_and_conditions() {
        let mut m = StatusModel {
            start_time: Utc::now(),
            advertised_ip: Ipv4Addr::new(127, 1, 1, 2),
            initialized: false,
            containers: vec![CStatus {
                name: "c".into(),
                image: "i".into(),
                ready: false,
                started: false,
                ever_started: false,
                restart_count: 0,
                state: CState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: None,
                },
                last_state: None,
                pid: None,
            }],
            transitions: BTreeMap::new(),
            restart_policy: "Always".into(),
        };
        let v = m.render();
        assert_eq!(v["phase"], "Pending");
        assert_eq!(v["conditions"][3]["type"], "Ready");
        assert_eq!(v["conditions"][3]["status"], "False");
        m.initialized = true;
        m.containers[0].ever_started = true;
        m.containers[0].ready = true;
        m.containers[0].state = CState::Running {
            started_at: Utc::now(),
        };
        let v = m.render();
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["conditions"][3]["status"], "True");
        assert!(v["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
    }
}
