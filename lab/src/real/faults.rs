//! Faults on the real cluster, made by real means. The `up --cluster real`
//! process owns what they act on (component processes, the in-process
//! Reloader and Bank-Vaults webhook, OpenBao's admin token), so it serves
//! them on a loopback control endpoint (`control_url` in `lab.json`, bearer
//! `admin_token`); `secret-canary-lab fault --dir DIR NAME on|off` and the
//! tests call it through [`set`].
//!
//! | name | on | off |
//! |---|---|---|
//! | `eso-stop` | SIGSTOP to the ESO controller process | SIGCONT |
//! | `eso-token-revoke` | delete ESO's Kubernetes-auth role in OpenBao (its logins, hence its syncs, fail: `SecretSyncedError`) | put the role back |
//! | `secret-delete` | delete the Secret `canary/canary-env` (ESO recreates it on its next refresh) | nothing to undo |
//! | `reloader-stop` | stop the lab's Reloader task | start it again |
//! | `canary-crash` | Deployment `canary/canary-env`: env `SECRET_CANARY_FROM_FILE` added beside its `SECRET_CANARY_FROM_ENV`, which the canary rejects at start (exit 2), so its new Pods crash-loop (`CrashLoopBackOff`) | the variable removed |
//! | `image-unpullable` | Deployment `canary/canary-env`: image `registry.invalid/no-such-image:1` (the node agent answers `ErrImagePull`), `progressDeadlineSeconds: 5` | the image and deadline it had |
//! | `apiserver-down` | SIGTERM kube-apiserver (SIGKILL after 10 s) | start it with the same flags, wait for `/readyz` |
//! | `webhook-down` | stop the Bank-Vaults webhook server (its `failurePolicy` as configured; `Ignore` by default) | serve it again on the same address |
//! | `webhook-down-fail` | `failurePolicy: Fail`, then stop the server | serve it again, restore the configured policy |
//! | `prober-role-no-patch` | drop `patch` from the Role of the prober's least-privilege identity (`DIR/prober.kubeconfig`) | restore the Role |

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, Patch, PatchParams};
use rustix::process::{kill_process, Pid, Signal};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lab::RealLabInfo;
use super::process::ProcHandle;
use crate::openbao::BaoAdmin;
use crate::scenario::VaultRole;

/// The faults this cluster supports.
pub const SUPPORTED: &[&str] = &[
    "eso-stop",
    "eso-token-revoke",
    "secret-delete",
    "reloader-stop",
    "canary-crash",
    "image-unpullable",
    "apiserver-down",
    "webhook-down",
    "webhook-down-fail",
    "prober-role-no-patch",
];

/// The Role (and RoleBinding) of the prober's least-privilege identity in
/// the canary namespace (the chart's rules for the reference scenario).
pub const PROBER_ROLE: &str = "secret-canary-prober";

/// The image `image-unpullable` sets: not ours and not in the lab's
/// registry, so the node agent answers `ErrImagePull` (any tag of
/// `secret-canary` would run).
pub const UNPULLABLE_IMAGE: &str = "registry.invalid/no-such-image:1";

/// The variable `canary-crash` adds to the canary container: the canary
/// takes one value source, and refuses `--from-file` beside `--from-env`
/// (exit 2 at start, as a misconfigured release would).
pub const CRASH_ENV: &str = "SECRET_CANARY_FROM_FILE";

/// Why a fault could not be set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not one of [`SUPPORTED`].
    #[error("the real cluster (--cluster real) has no fault `{0}`: its faults are made by real means; supported: {list}", list = SUPPORTED.join(", "))]
    Unknown(String),
    /// What the fault acts on is not running in this lab.
    #[error("fault {fault}: {what} is not running in this lab (is the lab up with its scenario?)")]
    NotRunning {
        /// The fault.
        fault: String,
        /// What is missing.
        what: String,
    },
    /// A signal could not be sent.
    #[error("signal {sig} to {component} (pid {pid}): {source}")]
    Signal {
        /// The signal.
        sig: &'static str,
        /// The component.
        component: String,
        /// Its pid.
        pid: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or did not answer.
    #[error("{0}")]
    Api(String),
    /// OpenBao refused.
    #[error("OpenBao: {0}")]
    OpenBao(#[from] crate::openbao::ApiError),
    /// A component could not be taken down or started again.
    #[error(transparent)]
    Control(#[from] super::process::ControlError),
    /// The lab's control endpoint (`lab.json`'s `control_url`).
    #[error("the lab's control endpoint {url}: {message}")]
    Endpoint {
        /// Its URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Starts an in-process component (Reloader, the webhook server) under the
/// given token; the returned task ends when the token fires.
pub type Starter = Arc<
    dyn Fn(CancellationToken) -> BoxFuture<'static, Result<JoinHandle<()>, String>> + Send + Sync,
>;

/// An in-process component the faults stop and start again.
pub struct Restartable {
    name: &'static str,
    start: Starter,
    parent: CancellationToken,
    running: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl Restartable {
    /// Start it now (a child token of `parent`).
    pub async fn start(
        name: &'static str,
        start: Starter,
        parent: CancellationToken,
    ) -> Result<Restartable, String> {
        let r = Restartable {
            name,
            start,
            parent,
            running: Mutex::new(None),
        };
        r.up().await?;
        Ok(r)
    }

    /// One already running under `token` (a child of `parent`).
    pub fn running(
        name: &'static str,
        start: Starter,
        parent: CancellationToken,
        token: CancellationToken,
        task: JoinHandle<()>,
    ) -> Restartable {
        Restartable {
            name,
            start,
            parent,
            running: Mutex::new(Some((token, task))),
        }
    }

    async fn up(&self) -> Result<(), String> {
        let mut running = self.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let token = self.parent.child_token();
        let task = (self.start)(token.clone()).await?;
        *running = Some((token, task));
        tracing::info!(component = self.name, "started");
        Ok(())
    }

    async fn down(&self) {
        let taken = self.running.lock().await.take();
        if let Some((token, task)) = taken {
            token.cancel();
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!(
                    component = self.name,
                    "did not stop within 15 s of its cancellation"
                );
            }
            tracing::info!(component = self.name, "stopped");
        }
    }
}

/// What the faults act on, filled in as the lab starts its components.
pub struct Control {
    /// `DIR/lab.json`, whose component pids follow a restart.
    lab_json: std::path::PathBuf,
    admin: kube::Client,
    bao: BaoAdmin,
    apiserver: ProcHandle,
    /// ESO's controller process.
    pub eso: OnceLock<ProcHandle>,
    /// The scenario's OpenBao role ESO logs in with.
    pub eso_role: OnceLock<VaultRole>,
    /// The lab's Reloader.
    pub reloader: OnceLock<Restartable>,
    /// The Bank-Vaults webhook server and its configured `failurePolicy`.
    pub webhook: OnceLock<(Restartable, String)>,
    /// The prober Role's rules as created (restored by `prober-role-no-patch off`).
    pub prober_role: OnceLock<serde_json::Value>,
    /// The image and progress deadline `image-unpullable` replaced.
    saved_image: Mutex<Option<(String, i32)>>,
    on: std::sync::Mutex<BTreeMap<String, bool>>,
}

impl Control {
    /// A controller over the admin client, OpenBao and the API server process.
    pub fn new(
        lab_json: std::path::PathBuf,
        admin: kube::Client,
        bao: BaoAdmin,
        apiserver: ProcHandle,
    ) -> Control {
        Control {
            lab_json,
            admin,
            bao,
            apiserver,
            eso: OnceLock::new(),
            eso_role: OnceLock::new(),
            reloader: OnceLock::new(),
            webhook: OnceLock::new(),
            prober_role: OnceLock::new(),
            saved_image: Mutex::new(None),
            on: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Each supported fault and whether it is on.
    pub fn status(&self) -> Vec<(&'static str, bool)> {
        let on = self.on.lock().unwrap_or_else(|e| e.into_inner());
        SUPPORTED
            .iter()
            .map(|n| (*n, on.get(*n).copied().unwrap_or(false)))
            .collect()
    }

    /// Stop the in-process components (the lab stops).
    pub async fn shutdown(&self) {
        if let Some(r) = self.reloader.get() {
            r.down().await;
        }
        if let Some((w, _)) = self.webhook.get() {
            w.down().await;
        }
    }

    fn missing(name: &str, what: &str) -> Error {
        Error::NotRunning {
            fault: name.into(),
            what: what.into(),
        }
    }

    /// Turn fault `name` on or off.
    pub async fn set(&self, name: &str, on: bool) -> Result<(), Error> {
        if !SUPPORTED.contains(&name) {
            return Err(Error::Unknown(name.into()));
        }
        let miss = |what: &str| Control::missing(name, what);
        match (name, on) {
            ("eso-stop", _) => {
                let eso = self.eso.get().ok_or_else(|| miss("external-secrets"))?;
                let (sig, label) = if on {
                    (Signal::STOP, "SIGSTOP")
                } else {
                    (Signal::CONT, "SIGCONT")
                };
                signal(eso, sig, label)?;
            }
            ("eso-token-revoke", true) => {
                let role = self
                    .eso_role
                    .get()
                    .ok_or_else(|| miss("ESO's OpenBao role"))?;
                self.bao
                    .call(
                        reqwest::Method::DELETE,
                        &format!("auth/kubernetes/role/{}", role.name),
                        None,
                    )
                    .await?;
            }
            ("eso-token-revoke", false) => {
                let role = self
                    .eso_role
                    .get()
                    .ok_or_else(|| miss("ESO's OpenBao role"))?;
                self.bao
                    .put_kubernetes_role(
                        &role.name,
                        &role.service_account,
                        &role.namespace,
                        &role.policy,
                    )
                    .await?;
            }
            ("secret-delete", true) => {
                let api: Api<Secret> = Api::namespaced(self.admin.clone(), "canary");
                bounded("delete Secret canary/canary-env", async {
                    api.delete("canary-env", &Default::default())
                        .await
                        .map(|_| ())
                })
                .await?;
            }
            ("secret-delete", false) => {}
            ("reloader-stop", _) => {
                let r = self.reloader.get().ok_or_else(|| miss("Reloader"))?;
                if on {
                    r.down().await;
                } else {
                    r.up().await.map_err(Error::Api)?;
                }
            }
            ("canary-crash", _) => {
                // A strategic merge patch: containers and env merge by name,
                // `$patch: delete` removes the one entry the fault added.
                let var = if on {
                    serde_json::json!({"name": CRASH_ENV, "value": "/etc/canary/value"})
                } else {
                    serde_json::json!({"name": CRASH_ENV, "$patch": "delete"})
                };
                let patch = serde_json::json!({"spec": {"template": {"spec": {
                    "containers": [{"name": "canary", "env": [var]}],
                }}}});
                self.patch_deployment("canary-env", &patch).await?;
            }
            ("image-unpullable", true) => self.image_unpullable().await?,
            ("image-unpullable", false) => {
                let saved = self.saved_image.lock().await.take();
                if let Some((image, deadline)) = saved {
                    self.patch_canary_env(&image, deadline).await?;
                }
            }
            ("apiserver-down", true) => self.apiserver.down(Duration::from_secs(10)).await?,
            ("apiserver-down", false) => {
                let pid = self.apiserver.up().await?;
                self.record_pid(&self.apiserver.name, pid);
                self.wait_api_ready(Duration::from_secs(120)).await?;
            }
            ("webhook-down", _) | ("webhook-down-fail", _) => {
                let (w, policy) = self
                    .webhook
                    .get()
                    .ok_or_else(|| miss("Bank-Vaults webhook"))?;
                let fail = name == "webhook-down-fail";
                if on {
                    if fail {
                        self.webhook_policy("Fail").await?;
                    }
                    w.down().await;
                } else {
                    w.up().await.map_err(Error::Api)?;
                    if fail {
                        self.webhook_policy(policy).await?;
                    }
                }
            }
            ("prober-role-no-patch", _) => {
                let rules = self
                    .prober_role
                    .get()
                    .ok_or_else(|| miss("the prober's Role"))?;
                let rules = if on {
                    without_verb(rules, "patch")
                } else {
                    rules.clone()
                };
                let api: Api<Role> = Api::namespaced(self.admin.clone(), "canary");
                let patch = serde_json::json!({"rules": rules});
                bounded(&format!("patch Role canary/{PROBER_ROLE}"), async {
                    api.patch(PROBER_ROLE, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                })
                .await?;
            }
            _ => return Err(Error::Unknown(name.into())),
        }
        self.on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), on);
        tracing::info!(fault = name, on, "real fault set");
        Ok(())
    }

    /// A restarted component's new pid in `lab.json` (for `status` and for
    /// whoever stops what the lab started). Best effort: `lab.json` is
    /// written once the lab is ready.
    fn record_pid(&self, component: &str, pid: u32) {
        let Ok(text) = std::fs::read_to_string(&self.lab_json) else {
            return;
        };
        let Ok(mut info) = serde_json::from_str::<RealLabInfo>(&text) else {
            return;
        };
        for c in info.components.iter_mut().filter(|c| c.name == component) {
            c.pid = pid;
        }
        // Written aside and renamed: a reader never sees half a file.
        let tmp = self.lab_json.with_extension("json.tmp");
        let written = serde_json::to_string_pretty(&info)
            .map_err(|e| e.to_string())
            .and_then(|text| super::pki::write_private(&tmp, &text).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::rename(&tmp, &self.lab_json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record {component}'s new pid in lab.json");
        }
    }

    async fn image_unpullable(&self) -> Result<(), Error> {
        let api: Api<Deployment> = Api::namespaced(self.admin.clone(), "canary");
        let d = bounded("get Deployment canary/canary-env", api.get("canary-env")).await?;
        let spec = d.spec;
        let image = spec
            .template
            .spec
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default();
        let mut saved = self.saved_image.lock().await;
        if saved.is_none() {
            *saved = Some((image, spec.progress_deadline_seconds.unwrap_or(600)));
        }
        drop(saved);
        self.patch_canary_env(UNPULLABLE_IMAGE, 5).await
    }

    async fn patch_canary_env(&self, image: &str, deadline: i32) -> Result<(), Error> {
        // A strategic merge patch: containers merge by name.
        let patch = serde_json::json!({"spec": {
            "progressDeadlineSeconds": deadline,
            "template": {"spec": {"containers": [{"name": "canary", "image": image}]}},
        }});
        self.patch_deployment("canary-env", &patch).await
    }

    /// A strategic merge patch of Deployment `canary/{name}`.
    async fn patch_deployment(&self, name: &str, patch: &serde_json::Value) -> Result<(), Error> {
        let api: Api<Deployment> = Api::namespaced(self.admin.clone(), "canary");
        bounded(&format!("patch Deployment canary/{name}"), async {
            api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map(|_| ())
        })
        .await
    }

    async fn webhook_policy(&self, policy: &str) -> Result<(), Error> {
        use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration as Mwc;
        let api: Api<Mwc> = Api::all(self.admin.clone());
        let name = super::webhook::CONFIGURATION_NAME;
        let mut c = bounded("get MutatingWebhookConfiguration", api.get(name)).await?;
        for w in c.webhooks.iter_mut().flatten() {
            w.failure_policy = Some(policy.to_string());
        }
        c.metadata.managed_fields = None;
        bounded(
            "replace MutatingWebhookConfiguration",
            api.replace(name, &Default::default(), &c),
        )
        .await?;
        Ok(())
    }

    /// Until the restarted API server says it is ready (`/readyz`: every
    /// post-start hook done, not merely answering).
    async fn wait_api_ready(&self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let req = axum::http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Api(e.to_string()))?;
            let answer = self.admin.request_text(req);
            let last = match tokio::time::timeout(Duration::from_secs(5), answer).await {
                Ok(Ok(t)) if t.trim() == "ok" => return Ok(()),
                Ok(Ok(t)) => t,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 5 s".to_string(),
            };
            if start.elapsed() > limit {
                return Err(Error::Api(format!(
                    "kube-apiserver not answering {limit:?} after its restart: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A kube call bounded at 30 s.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(Duration::from_secs(30), call).await {
        Ok(r) => r.map_err(|e| Error::Api(format!("{what}: {e}"))),
        Err(_) => Err(Error::Api(format!("{what}: no answer within 30 s"))),
    }
}

fn signal(p: &ProcHandle, sig: Signal, label: &'static str) -> Result<(), Error> {
    let pid = p.pid();
    let raw = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| Error::NotRunning {
            fault: "eso-stop".into(),
            what: p.name.clone(),
        })?;
    kill_process(raw, sig).map_err(|e| Error::Signal {
        sig: label,
        component: p.name.clone(),
        pid,
        source: e.into(),
    })
}

/// `rules` without `verb` (a rule left with no verb is dropped).
pub fn without_verb(rules: &serde_json::Value, verb: &str) -> serde_json::Value {
    let kept: Vec<serde_json::Value> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let mut r = r.clone();
            let verbs: Vec<serde_json::Value> = r["verbs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v.as_str() != Some(verb))
                .cloned()
                .collect();
            if verbs.is_empty() {
                return None;
            }
            r["verbs"] = serde_json::Value::Array(verbs);
            Some(r)
        })
        .collect();
    serde_json::Value::Array(kept)
}

/// The prober's least-privilege Role for the reference scenario (as the
/// chart's `rbac.yaml` renders it for these canaries).
pub fn prober_role_rules() -> serde_json::Value {
    serde_json::json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["secrets"],
         "resourceNames": ["canary-env", "canary-volume"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["external-secrets.io"], "resources": ["externalsecrets"],
         "resourceNames": ["canary-env", "canary-volume"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "resourceNames": ["canary-env", "canary-bankvaults"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"],
         "resourceNames": ["canary-bankvaults"], "verbs": ["patch"]},
    ])
}

/// Turn fault `name` on or off in the lab described by `info` (through its
/// control endpoint: what `secret-canary-lab fault` runs).
pub async fn set(info: &RealLabInfo, name: &str, on: bool) -> Result<(), Error> {
    if !SUPPORTED.contains(&name) {
        return Err(Error::Unknown(name.into()));
    }
    let state = if on { "on" } else { "off" };
    request(
        info,
        reqwest::Method::PUT,
        &format!("faults/{name}"),
        Some(state),
    )
    .await?;
    Ok(())
}

/// The faults and whether each is on, as the lab reports them.
pub async fn status(info: &RealLabInfo) -> Result<String, Error> {
    request(info, reqwest::Method::GET, "faults", None).await
}

async fn request(
    info: &RealLabInfo,
    method: reqwest::Method,
    path: &str,
    body: Option<&str>,
) -> Result<String, Error> {
    let url = info.control_url.clone();
    let err = |message: String| Error::Endpoint {
        url: url.clone(),
        message,
    };
    if url.is_empty() {
        return Err(err(
            "lab.json has no control_url (a lab of an older version?)".into(),
        ));
    }
    // An API-server restart waits until it answers again: minutes at most.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(180))
        .build()
        .map_err(|e| err(e.to_string()))?;
    let mut req = http
        .request(method, format!("{url}/{path}"))
        .bearer_auth(&info.admin_token);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| err(format!("not answering: {e}")))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| err(e.to_string()))?;
    if !status.is_success() {
        return Err(err(format!("{status}: {text}")));
    }
    Ok(text)
}

/// The control endpoint's router: `PUT /faults/{name}` (body `on`/`off`),
/// `GET /faults`; every request needs `Authorization: Bearer <token>`.
pub fn router(control: Arc<Control>, token: String) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};
    type St = (Arc<Control>, Arc<String>);
    fn authorized(h: &HeaderMap, token: &str) -> bool {
        h.get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| t == token)
    }
    async fn put_fault(
        State((c, token)): State<St>,
        Path(name): Path<String>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        if !authorized(&headers, &token) {
            return (
                StatusCode::UNAUTHORIZED,
                "bad or missing bearer token".into(),
            );
        }
        let on = match body.trim() {
            "on" => true,
            "off" => false,
            other => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("fault state must be on or off, not {other:?}"),
                )
            }
        };
        match c.set(&name, on).await {
            Ok(()) => (StatusCode::OK, String::new()),
            Err(e @ Error::Unknown(_)) => (StatusCode::NOT_FOUND, e.to_string()),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    async fn get_faults(State((c, token)): State<St>, headers: HeaderMap) -> (StatusCode, String) {
        if !authorized(&headers, &token) {
            return (
                StatusCode::UNAUTHORIZED,
                "bad or missing bearer token".into(),
            );
        }
        let lines: Vec<String> = c
            .status()
            .into_iter()
            .map(|(n, on)| format!("  fault {n:<22} {}", if on { "on" } else { "off" }))
            .collect();
        (StatusCode::OK, lines.join("\n"))
    }
    axum::Router::new()
        .route("/faults", get(get_faults))
        .route("/faults/{name}", put(put_fault))
        .with_state((control, Arc::new(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_verb_keeps_the_other_rules() {
        let rules = prober_role_rules();
        let no_patch = without_verb(&rules, "patch");
        assert_eq!(no_patch.as_array().unwrap().len(), 4);
        assert!(!no_patch.to_string().contains("patch"));
        let no_watch = without_verb(&rules, "watch");
        assert_eq!(no_watch.as_array().unwrap().len(), 5);
        assert!(!no_watch.to_string().contains("watch"));
    }

    #[test]
    fn unknown_fault_lists_the_supported_ones() {
        let e = Error::Unknown("eso-stall".into()).to_string();
        for n in SUPPORTED {
            assert!(e.contains(n), "{e}");
        }
    }
}
