//! The assembled lab: a real OpenBao, the API server, every simulated
//! controller and a scenario, started together and stopped together. Used by
//! `secret-canary-lab up`, by the product's end-to-end tests and by benchmarks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::apiserver::ApiServer;
use crate::controllers::Context;
use crate::faults::Knobs;
use crate::openbao::{BaoAdmin, OpenBao, POLICIES};
use crate::scenario::Scenario;
use crate::truth::Truth;

/// The CA certificate OpenBao's Kubernetes auth is configured with. OpenBao
/// demands one even for a plain-HTTP API server; only the public certificate
/// is kept (its key was discarded).
pub const LAB_CA_PEM: &str = include_str!("lab-ca.pem");

/// Why the lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The working directory could not be prepared.
    #[error("lab directory {path}: {source}")]
    Dir {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// OpenBao could not be started.
    #[error(transparent)]
    OpenBao(#[from] crate::openbao::Error),
    /// OpenBao could not be set up.
    #[error("setting up OpenBao: {0}")]
    OpenBaoSetup(#[from] crate::openbao::ApiError),
    /// The scenario is invalid.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::Error),
    /// The API server could not bind.
    #[error("API server: {0}")]
    Bind(#[source] std::io::Error),
    /// The kube client could not be built.
    #[error("kube client for the lab: {0}")]
    Client(String),
    /// A scenario object was refused by the API server.
    #[error("creating scenario object {kind} {name}: {source}")]
    Create {
        /// Object kind.
        kind: String,
        /// Object name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// How to start a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Working directory: kubeconfig, vault.env, truth.jsonl, prober.yaml, Pod dirs, logs.
    pub dir: PathBuf,
    /// A scenario file; `None` for the reference scenario.
    pub scenario: Option<PathBuf>,
    /// The `secret-canary` binary the kubelet runs for canary containers.
    pub canary_bin: PathBuf,
    /// API server port on 127.0.0.1 (0 = any free port).
    pub api_port: u16,
    /// The lab ESO's reconcile workers, as ESO's `--concurrent` (default 1,
    /// as upstream's); never two on one ExternalSecret at once.
    pub eso_workers: usize,
}

impl LabOptions {
    /// Options for a lab in `dir` running `canary_bin`, reference scenario, any port.
    pub fn new(dir: impl Into<PathBuf>, canary_bin: impl Into<PathBuf>) -> Self {
        LabOptions {
            dir: dir.into(),
            scenario: None,
            canary_bin: canary_bin.into(),
            api_port: 0,
            eso_workers: crate::controllers::eso::DEFAULT_WORKERS,
        }
    }
}

/// What `DIR/lab.json` holds: how another process (the `fault` and `knob`
/// commands, scripts) reaches a running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabInfo {
    /// `http://127.0.0.1:PORT`.
    pub api_url: String,
    /// Bearer token of the admin endpoints.
    pub admin_token: String,
    /// OpenBao's address.
    pub vault_addr: String,
    /// The lab process id.
    pub pid: u32,
}

/// A running lab. Stop it with [`Lab::stop`]; dropping it also kills every
/// child process (OpenBao, canaries) but without waiting.
pub struct Lab {
    /// Working directory.
    pub dir: PathBuf,
    /// API server URL.
    pub api_url: String,
    /// `DIR/kubeconfig` (admin credentials).
    pub kubeconfig: PathBuf,
    /// `DIR/prober.yaml`, when the scenario has a prober config.
    pub prober_config: Option<PathBuf>,
    /// The real store.
    pub vault: OpenBao,
    /// Root-token access to the store.
    pub bao: BaoAdmin,
    /// Faults and knobs.
    pub knobs: Arc<Knobs>,
    /// Ground truth.
    pub truth: Arc<Truth>,
    /// The API server (request counts, tokens, watch resets).
    pub server: ApiServer,
    /// The loaded scenario.
    pub scenario: Scenario,
    client: kube::Client,
    cancel: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Lab {
    /// Start OpenBao, the API server, the scenario and every controller.
    pub async fn start(opts: LabOptions) -> Result<Lab, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = opts.dir.clone();
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|source| Error::Dir {
                path: p.display().to_string(),
                source,
            })
        };
        mkdir(&dir)?;
        let dir = dir.canonicalize().map_err(|source| Error::Dir {
            path: dir.display().to_string(),
            source,
        })?;
        mkdir(&dir.join("logs"))?;

        let cancel = CancellationToken::new();
        let knobs = Arc::new(Knobs::default());
        let truth =
            Arc::new(
                Truth::to_file(&dir.join("truth.jsonl")).map_err(|source| Error::Dir {
                    path: dir.join("truth.jsonl").display().to_string(),
                    source,
                })?,
            );

        let vault = OpenBao::start(&dir.join("logs/openbao.log")).await?;
        let bao = BaoAdmin::new(&vault.addr, &vault.root_token)?;

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", opts.api_port))
            .await
            .map_err(Error::Bind)?;
        let api_addr = listener.local_addr().map_err(Error::Bind)?;
        let api_url = format!("http://{api_addr}");
        let server = ApiServer::new(knobs.clone());
        // Like the old `--insecure-port`: kubectl never sends a bearer token
        // over plain HTTP, so token-less requests act as the admin here.
        // Tokens that are sent (kube-rs, OpenBao's TokenReview) are checked.
        let mut tasks = Vec::new();
        {
            let server = server.clone();
            let cancel = cancel.clone();
            tasks.push((
                "apiserver",
                tokio::spawn(async move {
                    if let Err(e) = server.serve_insecure(listener, cancel).await {
                        tracing::error!(error = %e, "lab API server stopped");
                    }
                }),
            ));
        }

        let kubeconfig = dir.join("kubeconfig");
        write_private(
            &kubeconfig,
            &kubeconfig_yaml(&api_url, &server.admin_token()),
        )?;
        let client = client_from_kubeconfig(&kubeconfig).await?;

        let vars = BTreeMap::from([
            ("VAULT_ADDR", vault.addr.clone()),
            ("DIR", dir.display().to_string()),
            ("API_URL", api_url.clone()),
        ]);
        let scenario = Scenario::load(opts.scenario.as_deref(), &vars)?;
        for (knob, latency) in &scenario.knobs {
            knobs.set_latency(*knob, *latency);
        }

        // The store first: policies, Kubernetes auth pointed at the lab, roles, values.
        for (name, hcl) in POLICIES {
            bao.put_policy(name, hcl).await?;
        }
        let reviewer = server.issue_token("kube-system", "openbao-token-reviewer");
        write_private(&dir.join("ca.pem"), LAB_CA_PEM)?;
        bao.enable_kubernetes_auth(&api_url, LAB_CA_PEM, &reviewer)
            .await?;
        for role in &scenario.vault_roles {
            bao.put_kubernetes_role(
                &role.name,
                &role.service_account,
                &role.namespace,
                &role.policy,
            )
            .await?;
        }
        for v in &scenario.store {
            bao.kv_put(&v.path, &serde_json::to_value(&v.data).unwrap_or_default())
                .await?;
        }
        let prober_token = bao.create_token(&["write-canary"], "768h").await?;
        write_private(&dir.join("prober.token"), &prober_token)?;
        write_private(
            &dir.join("vault.env"),
            &format!(
                "# OpenBao of the lab (dev server, root token: test equipment only)\nexport BAO_ADDR={a}\nexport VAULT_ADDR={a}\nexport BAO_TOKEN={t}\nexport VAULT_TOKEN={t}\n",
                a = vault.addr,
                t = vault.root_token
            ),
        )?;

        // Then the cluster's objects, then the controllers that act on them.
        for o in &scenario.objects {
            create_object(&client, o).await?;
        }
        let ctx = Context {
            client: client.clone(),
            knobs: knobs.clone(),
            truth: truth.clone(),
            dir: dir.clone(),
            canary_bin: opts.canary_bin.clone(),
            vault_addr: vault.addr.clone(),
        };
        tasks.extend(crate::controllers::spawn_all(
            ctx,
            opts.eso_workers,
            cancel.clone(),
        ));

        let prober_config = match &scenario.prober {
            Some(text) => {
                let p = dir.join("prober.yaml");
                write_private(&p, text)?;
                Some(p)
            }
            None => None,
        };
        let info = LabInfo {
            api_url: api_url.clone(),
            admin_token: server.admin_token(),
            vault_addr: vault.addr.clone(),
            pid: std::process::id(),
        };
        write_private(
            &dir.join("lab.json"),
            &serde_json::to_string_pretty(&info).unwrap_or_default(),
        )?;

        Ok(Lab {
            dir,
            api_url,
            kubeconfig,
            prober_config,
            vault,
            bao,
            knobs,
            truth,
            server,
            scenario,
            client,
            cancel,
            tasks,
        })
    }

    /// An admin kube client for the lab.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A token that cancels when the lab stops.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stop every controller (the kubelet kills its processes), the API
    /// server and OpenBao, waiting a bounded time for each.
    pub async fn stop(self) {
        self.cancel.cancel();
        for (name, task) in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!(task = name, "lab task did not stop within 10 s");
            }
        }
        self.vault.stop().await;
    }
}

/// A kubeconfig for a plain-HTTP API server with a bearer token.
pub fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab-admin\n    namespace: canary\ncurrent-context: lab\nusers:\n- name: lab-admin\n  user:\n    token: {token}\n"
    )
}

/// A kube client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, Error> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Client(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
}

/// Create one object of any kind through the API (namespaced or not).
pub async fn create_object(client: &kube::Client, o: &serde_json::Value) -> Result<(), Error> {
    let api_version = o
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let kind = o
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let name = o
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let ar = ApiResource::from_gvk(&gvk);
    let obj: DynamicObject = serde_json::from_value(o.clone()).map_err(|e| Error::Create {
        kind: kind.clone(),
        name: name.clone(),
        source: kube::Error::SerdeError(e),
    })?;
    let api: Api<DynamicObject> = match o.pointer("/metadata/namespace").and_then(|v| v.as_str()) {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj)
        .await
        .map_err(|source| Error::Create { kind, name, source })?;
    Ok(())
}

/// Write a file readable by the owner only (it may hold tokens).
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Dir {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}
