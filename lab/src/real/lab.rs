//! `secret-canary-lab up --cluster real`: the real control plane
//! ([`RealCluster`]) beside a real OpenBao, with the same DIR contract as the
//! simulated lab: `kubeconfig`, `vault.env`, `prober.yaml`, `truth.jsonl`,
//! `lab.json`.
//!
//! With a canary binary ([`RealOptions::canary_bin`]) it also runs, each with
//! its own identity: the node agent (the lab's kubelet in node mode, as
//! `system:node:lab-node`), the real ESO controller process, the lab's
//! Reloader, and applies the scenario. It is ready when every canary
//! Deployment has rolled out. The Bank-Vaults chain runs through the lab's
//! mutation served as a real admission webhook ([`super::webhook`]; the real
//! vault-secrets-webhook cannot be had from the module proxy); without it
//! ([`RealOptions::webhook_failure_policy`] `None`) its Deployments and
//! probes are left out. A loopback control endpoint (`control_url` and
//! `admin_token` in `lab.json`) switches the real faults
//! ([`super::faults`]), since the processes and tasks they act on belong
//! to this process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::faults::{self, Control, Restartable, Starter};
use super::setup::{self, ESO_NAMESPACE, ESO_SERVICE_ACCOUNT, RELOADER_NAMESPACE};
use super::{Binary, Error as ClusterError, Proc, RealCluster, RealOptions};
use crate::controllers::{bankvaults, kubelet, reloader, Context};
use crate::faults::Knobs;
use crate::openbao::{BaoAdmin, OpenBao, POLICIES};
use crate::scenario::Scenario;
use crate::truth::Truth;

/// Why the real lab could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// OpenBao.
    #[error(transparent)]
    OpenBao(#[from] crate::openbao::Error),
    /// OpenBao's admin client.
    #[error("OpenBao: {0}")]
    OpenBaoSetup(#[from] crate::openbao::ApiError),
    /// The scenario.
    #[error(transparent)]
    Scenario(#[from] crate::scenario::Error),
    /// The Bank-Vaults webhook.
    #[error(transparent)]
    Webhook(#[from] super::webhook::Error),
    /// The node agent could not register.
    #[error(transparent)]
    Node(#[from] kubelet::node::Error),
    /// The node agent's kubelet API (container logs).
    #[error("the node agent's kubelet API: {0}")]
    KubeletApi(#[source] super::webhook::Error),
    /// A scenario object was refused.
    #[error("scenario: {0}")]
    Apply(String),
    /// A file in DIR.
    #[error("lab directory {path}: {source}")]
    Dir {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// One component in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// Name.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// Log file.
    pub log: String,
}

/// `DIR/lab.json` of a real-cluster lab. Its first fields are those of the
/// simulated lab's `LabInfo` (`admin_token` is empty: the real cluster has no
/// lab admin endpoints), so readers of either find what they need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RealLabInfo {
    /// `https://127.0.0.1:PORT`.
    pub api_url: String,
    /// Empty (no admin endpoints on a real cluster).
    pub admin_token: String,
    /// OpenBao's address.
    pub vault_addr: String,
    /// The lab process id.
    pub pid: u32,
    /// `"real"`.
    pub cluster: String,
    /// `DIR/kubeconfig`.
    pub kubeconfig: String,
    /// The API server's audit log.
    pub audit_log: String,
    /// The CA certificate of every TLS endpoint.
    pub ca_cert: String,
    /// Pinned versions: kubernetes, etcd, eso, helm.
    pub versions: std::collections::BTreeMap<String, String>,
    /// The running components.
    pub components: Vec<ComponentInfo>,
    /// Milliseconds from start until the control plane was ready.
    pub ready_ms: u64,
    /// Milliseconds from start until everything was ready (every canary
    /// Deployment rolled out, when a scenario runs).
    #[serde(default)]
    pub lab_ready_ms: u64,
    /// In-process components (node agent, Reloader), beside `components`.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Scenario Deployments left out on this cluster, and why.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// The OCI registry the node agent pulls from (`127.0.0.1:PORT`; empty:
    /// none, go-containerregistry is not built).
    #[serde(default)]
    pub registry: String,
    /// The lab's fault control endpoint (`http://127.0.0.1:PORT`, bearer
    /// `admin_token`; see [`super::faults`]).
    #[serde(default)]
    pub control_url: String,
    /// A kubeconfig of the prober's least-privilege identity
    /// (`canary/secret-canary` with the chart's Role), when a scenario runs.
    #[serde(default)]
    pub prober_kubeconfig: String,
}

/// A running real-cluster lab.
pub struct RealLab {
    /// Working directory.
    pub dir: PathBuf,
    /// The control plane.
    pub cluster: RealCluster,
    /// The real store.
    pub vault: OpenBao,
    /// Root-token access to the store.
    pub bao: BaoAdmin,
    /// `DIR/prober.yaml`, when a scenario runs.
    pub prober_config: Option<PathBuf>,
    /// Ground truth: the node agent's records and the audit log's
    /// ([`super::audit_truth`]).
    pub truth: Arc<Truth>,
    /// From start until everything was ready.
    pub ready_after: Duration,
    /// Scenario Deployments left out, with the reason.
    pub skipped: Vec<String>,
    /// The OCI registry the node agent pulls from (`127.0.0.1:PORT`).
    pub registry: Option<String>,
    /// What the real faults act on ([`super::faults`]).
    pub control: Arc<Control>,
    /// The control endpoint's URL and bearer token.
    control_url: String,
    admin_token: String,
    /// `DIR/pki/prober.kubeconfig`, when a scenario runs.
    pub prober_kubeconfig: Option<PathBuf>,
    cancel: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl RealLab {
    /// Start OpenBao and the control plane together; with a canary binary,
    /// also the node agent, ESO, Reloader and the scenario, until every canary
    /// Deployment has rolled out; then write the DIR files. On error (or when
    /// the returned future is dropped, e.g. on SIGTERM) everything started is
    /// stopped (dropping kills the processes).
    pub async fn start(opts: RealOptions) -> Result<RealLab, Error> {
        let started = Instant::now();
        let dir = opts.dir.clone();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| Error::Dir {
            path: logs.display().to_string(),
            source,
        })?;
        // lab.json appears when the lab is ready: not one of an earlier run.
        let _ = std::fs::remove_file(dir.join("lab.json"));
        let bao_log = logs.join("openbao.log");
        let truth =
            Arc::new(
                Truth::to_file(&dir.join("truth.jsonl")).map_err(|source| Error::Dir {
                    path: dir.join("truth.jsonl").display().to_string(),
                    source,
                })?,
            );
        let mut cluster_opts = opts.clone();
        cluster_opts.wait_controllers = opts.canary_bin.is_none();
        let (vault, cluster) =
            tokio::join!(OpenBao::start(&bao_log), RealCluster::start(cluster_opts));
        let (vault, cluster) = match (vault, cluster) {
            (Ok(v), Ok(c)) => (v, c),
            (Err(e), c) => {
                if let Ok(c) = c {
                    c.stop().await;
                }
                return Err(e.into());
            }
            (Ok(v), Err(e)) => {
                v.stop().await;
                return Err(e.into());
            }
        };
        let bao = match BaoAdmin::new(&vault.addr, &vault.root_token) {
            Ok(b) => b,
            Err(e) => {
                cluster.stop().await;
                vault.stop().await;
                return Err(e.into());
            }
        };
        let apiserver = match cluster.proc("kube-apiserver") {
            Some(p) => p.handle(),
            None => {
                cluster.stop().await;
                vault.stop().await;
                return Err(Error::Apply("no kube-apiserver process".into()));
            }
        };
        let control = Arc::new(Control::new(
            cluster.dir.join("lab.json"),
            cluster.client(),
            bao.clone(),
            apiserver,
        ));
        let cancel = CancellationToken::new();
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let (control_url, control_task) =
            match serve_control(control.clone(), admin_token.clone(), cancel.clone()).await {
                Ok(x) => x,
                Err(source) => {
                    cluster.stop().await;
                    vault.stop().await;
                    return Err(Error::Dir {
                        path: "control endpoint on 127.0.0.1".into(),
                        source,
                    });
                }
            };
        let mut lab = RealLab {
            dir: cluster.dir.clone(),
            cluster,
            vault,
            bao,
            prober_config: None,
            truth,
            ready_after: Duration::ZERO,
            skipped: Vec::new(),
            registry: None,
            control,
            control_url,
            admin_token,
            prober_kubeconfig: None,
            cancel,
            tasks: vec![("control", control_task)],
        };
        // Ground truth from the audit log, from the first event on.
        let (log, admin, t, cancel) = (
            lab.cluster.audit_log.clone(),
            lab.cluster.client(),
            lab.truth.clone(),
            lab.cancel.clone(),
        );
        lab.tasks.push((
            "audit-truth",
            tokio::spawn(super::audit_truth::run(
                log,
                admin,
                t,
                super::audit_truth::Users::lab(),
                cancel,
            )),
        ));
        if let Some(canary_bin) = opts.canary_bin.clone() {
            if let Err(e) = lab.run_scenario(&opts, canary_bin).await {
                lab.stop().await;
                return Err(e);
            }
        }
        lab.ready_after = started.elapsed();
        if let Err(e) = lab.write_files() {
            lab.stop().await;
            return Err(e);
        }
        Ok(lab)
    }

    /// Identities, OpenBao, node agent, ESO, Reloader, the scenario; then
    /// wait until the canary Deployments have rolled out.
    async fn run_scenario(&mut self, opts: &RealOptions, canary_bin: PathBuf) -> Result<(), Error> {
        let t0 = Instant::now();
        let admin = self.cluster.client();
        let eso_bin = self
            .cluster
            .binaries
            .require(Binary::ExternalSecrets)
            .map_err(ClusterError::from)?;
        // ESO's CRDs and every identity, in parallel.
        let rbac_objects = setup::rbac_objects();
        let (crds, rbac) = tokio::join!(
            setup::install_eso_crds(&self.cluster, opts.ready_timeout),
            setup::create_all(&admin, &rbac_objects)
        );
        crds?;
        rbac?;
        tracing::info!(after = ?t0.elapsed(), "real lab: CRDs and RBAC in place");

        // The Bank-Vaults webhook, registered and seen by the API server
        // before any Pod is created.
        let webhook_policy = opts.webhook_failure_policy.clone();
        if let Some(policy) = &webhook_policy {
            self.start_webhook(&admin, policy, opts.ready_timeout)
                .await?;
        }

        // The node agent first: the scheduler needs a Ready node.
        let node_client = crate::lab::client_from_kubeconfig(&self.cluster.node_kubeconfig)
            .await
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        let mut node_cfg = opts.node.clone();
        node_cfg.kubelet_version = self.cluster.binaries.versions.kubernetes.clone();
        node_cfg.unroutable = self.cluster.egress.as_ref().map(|e| e.pods.clone());
        // Its kubelet API (container logs for `kubectl logs`), on the port
        // the Node reports; the serving certificate is for 127.0.0.1.
        let cert = &self.cluster.webhook_cert;
        let kubelet_api = super::kubelet_api::KubeletApi::start(
            &self.dir,
            &cert.cert,
            &cert.key,
            self.cancel.clone(),
        )
        .await
        .map_err(Error::KubeletApi)?;
        node_cfg.kubelet_port = kubelet_api.addr.port();
        self.tasks.push(("kubelet-api", kubelet_api.task));
        // The OCI registry of images the node agent pulls.
        let logs = self.dir.join("logs");
        let registry =
            super::registry::start(&self.cluster.binaries, &logs, opts.ready_timeout).await?;
        if let Some((proc, addr)) = registry {
            self.cluster.procs.push(proc);
            node_cfg.images = Some(super::registry::node_images(
                &self.cluster,
                &addr,
                &self.dir,
            ));
            self.registry = Some(addr);
        }
        let (truth, dir, vault_addr) = (
            self.truth.clone(),
            self.dir.clone(),
            self.vault.addr.clone(),
        );
        let ctx = move |client: kube::Client| Context {
            client,
            knobs: Arc::new(Knobs::default()),
            truth: truth.clone(),
            dir: dir.clone(),
            canary_bin: canary_bin.clone(),
            vault_addr: vault_addr.clone(),
        };
        let node =
            kubelet::node::start_node(ctx(node_client), node_cfg, self.cancel.clone()).await?;
        self.tasks.push(("node-agent", node));

        // OpenBao: Kubernetes auth against the real API server's TokenReview.
        let reviewer =
            setup::service_account_token(&admin, "kube-system", setup::REVIEWER_SERVICE_ACCOUNT)
                .await?;
        for (name, hcl) in POLICIES {
            self.bao.put_policy(name, hcl).await?;
        }
        self.bao
            .enable_kubernetes_auth(&self.cluster.api_url, &self.cluster.ca_pem, &reviewer)
            .await?;
        let vars = BTreeMap::from([
            ("VAULT_ADDR", self.vault.addr.clone()),
            ("DIR", self.dir.display().to_string()),
            ("API_URL", self.cluster.api_url.clone()),
        ]);
        let scenario = Scenario::load(opts.scenario.as_deref(), &vars)?;
        for role in &scenario.vault_roles {
            self.bao
                .put_kubernetes_role(
                    &role.name,
                    &role.service_account,
                    &role.namespace,
                    &role.policy,
                )
                .await?;
        }
        for v in &scenario.store {
            self.bao
                .kv_put(&v.path, &serde_json::to_value(&v.data).unwrap_or_default())
                .await?;
        }
        let prober_token = self.bao.create_token(&["write-canary"], "768h").await?;
        self.write("prober.token", &prober_token)?;

        // ESO, the real controller, as its ServiceAccount.
        let eso_kc = setup::service_account_kubeconfig(
            &self.cluster,
            ESO_NAMESPACE,
            ESO_SERVICE_ACCOUNT,
            "eso.kubeconfig",
        )
        .await?;
        let metrics = super::free_port("external-secrets")?;
        let eso = Proc::spawn_with_env(
            "external-secrets",
            &eso_bin,
            &setup::eso_args(metrics, opts.eso_concurrent),
            &[("KUBECONFIG", &eso_kc.display().to_string())],
            &self.dir.join("logs/external-secrets.log"),
        )
        .map_err(ClusterError::from)?;
        let _ = self.control.eso.set(eso.handle());
        self.cluster.procs.push(eso);
        if let Some(role) = scenario
            .vault_roles
            .iter()
            .find(|r| r.name == ESO_OPENBAO_ROLE)
        {
            let _ = self.control.eso_role.set(role.clone());
        }

        // Reloader: the lab's, as its ServiceAccount.
        let reloader_kc = setup::service_account_kubeconfig(
            &self.cluster,
            RELOADER_NAMESPACE,
            setup::RELOADER_SERVICE_ACCOUNT,
            "reloader.kubeconfig",
        )
        .await?;
        let reloader_client = crate::lab::client_from_kubeconfig(&reloader_kc)
            .await
            .map_err(|e| ClusterError::Client(e.to_string()))?;
        // Reloader's patches are timed by the audit log, not its own clock.
        let mut rctx = ctx(reloader_client);
        rctx.truth = Arc::new(Truth::in_memory());
        // Stopped and started again by the `reloader-stop` fault.
        let start: Starter = Arc::new(move |token| {
            let rctx = rctx.clone();
            Box::pin(async move {
                Ok(tokio::spawn(async move {
                    if let Err(e) = reloader::run(rctx, token).await {
                        tracing::error!(error = %e, "Reloader stopped");
                    }
                }))
            })
        });
        let reloader = Restartable::start("reloader", start, self.cancel.clone())
            .await
            .map_err(Error::Apply)?;
        let _ = self.control.reloader.set(reloader);

        // The scenario, without what this cluster cannot run.
        let (objects, dropped) = match webhook_policy {
            Some(_) => (scenario.objects.clone(), Vec::new()),
            None => without_bank_vaults(&scenario.objects),
        };
        self.skipped = dropped
            .iter()
            .map(|d| format!("Deployment {d}: Bank-Vaults (the admission webhook is off)"))
            .collect();
        for o in &objects {
            crate::lab::create_object(&admin, o)
                .await
                .map_err(|e| Error::Apply(e.to_string()))?;
        }
        if objects.iter().any(|o| {
            o["kind"] == "ServiceAccount"
                && o.pointer("/metadata/namespace") == Some(&Value::from("canary"))
                && o.pointer("/metadata/name") == Some(&Value::from(PROBER_SERVICE_ACCOUNT))
        }) {
            self.prober_identity(&admin).await?;
        }
        if let Some(text) = &scenario.prober {
            let text = prober_without(text, &dropped);
            self.write("prober.yaml", &text)?;
            self.prober_config = Some(self.dir.join("prober.yaml"));
        }
        tracing::info!(after = ?t0.elapsed(), "real lab: scenario applied; waiting for the rollouts");

        let deployments: Vec<(String, String)> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment")
            .map(|o| {
                (
                    o.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or("default")
                        .to_string(),
                    o.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let procs = &self.cluster.procs;
        super::wait_ready(procs, "canary Deployments", opts.ready_timeout, || {
            let admin = admin.clone();
            let deployments = deployments.clone();
            async move {
                for (ns, name) in &deployments {
                    let api: Api<Deployment> = Api::namespaced(admin.clone(), ns);
                    match api.get_opt(name).await {
                        Ok(Some(d)) if rolled_out(&d) => {}
                        Ok(Some(_)) => {
                            return Err(format!("Deployment {ns}/{name} not rolled out yet"))
                        }
                        Ok(None) => return Err(format!("Deployment {ns}/{name} not found")),
                        Err(e) => return Err(format!("get Deployment {ns}/{name}: {e}")),
                    }
                }
                Ok(())
            }
        })
        .await?;
        tracing::info!(after = ?t0.elapsed(), "real lab: every canary Deployment rolled out");
        Ok(())
    }

    /// Serve the Bank-Vaults mutation, register it, and wait until a
    /// dry-run Pod comes back mutated (the API server loads webhook
    /// configurations asynchronously).
    async fn start_webhook(
        &mut self,
        admin: &kube::Client,
        policy: &str,
        limit: Duration,
    ) -> Result<(), Error> {
        use super::webhook::{configuration, Webhook, VAULT_ENV};
        use k8s_openapi::api::core::v1::Pod;
        let cert = &self.cluster.webhook_cert;
        let token = self.cancel.child_token();
        let wh = Webhook::start(&cert.cert, &cert.key, token.clone()).await?;
        // Served again on the same address after a `webhook-down` fault.
        let port = wh
            .url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split('/').next())
            .and_then(|p| p.parse::<u16>().ok())
            .unwrap_or(0);
        let (c, k) = (cert.cert.clone(), cert.key.clone());
        let start: Starter = Arc::new(move |token| {
            let (c, k) = (c.clone(), k.clone());
            Box::pin(async move {
                Webhook::start_on(&c, &k, port, token)
                    .await
                    .map(|w| w.task)
                    .map_err(|e| e.to_string())
            })
        });
        let restartable = Restartable::running(
            "bank-vaults-webhook",
            start,
            self.cancel.clone(),
            token,
            wh.task,
        );
        let _ = self.control.webhook.set((restartable, policy.to_string()));
        let config = configuration(&wh.url, &self.cluster.ca_pem, policy);
        crate::lab::create_object(admin, &config)
            .await
            .map_err(|e| Error::Apply(e.to_string()))?;
        let probe: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            // In a namespace whose ServiceAccount exists already (the
            // controller-manager may not have made `default` ones yet).
            "metadata": {"name": "webhook-check", "namespace": RELOADER_NAMESPACE},
            "spec": {"serviceAccountName": setup::RELOADER_SERVICE_ACCOUNT, "containers": [{
                "name": "c",
                "image": "secret-canary:latest",
                "command": ["secret-canary", "canary"],
                "env": [{"name": "V", "value": "vault:secret/data/x#y"}],
            }]},
        }))
        .map_err(|e| Error::Apply(e.to_string()))?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), RELOADER_NAMESPACE);
        let dry = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        super::wait_ready(
            &self.cluster.procs,
            "Bank-Vaults webhook",
            limit,
            || async {
                match pods.create(&dry, &probe).await {
                    Ok(p) => {
                        let mutated = p.spec.is_some_and(|s| {
                            s.containers[0]
                                .command
                                .as_ref()
                                .and_then(|c| c.first())
                                .is_some_and(|c| c == VAULT_ENV)
                        });
                        if mutated {
                            Ok(())
                        } else {
                            Err("a dry-run Pod is not mutated yet".into())
                        }
                    }
                    Err(e) => Err(format!("dry-run Pod create: {e}")),
                }
            },
        )
        .await?;
        tracing::info!(url = %wh.url, policy, "Bank-Vaults webhook registered");
        Ok(())
    }

    /// The prober's least-privilege identity: a Role with the chart's rules
    /// for the reference canaries, bound to `canary/secret-canary`, and a
    /// kubeconfig with its token (the `prober-role-no-patch` fault edits
    /// this Role).
    async fn prober_identity(&mut self, admin: &kube::Client) -> Result<(), Error> {
        let rules = faults::prober_role_rules();
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": faults::PROBER_ROLE, "namespace": "canary"},
            "rules": rules,
        });
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": faults::PROBER_ROLE, "namespace": "canary"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": faults::PROBER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": PROBER_SERVICE_ACCOUNT, "namespace": "canary"}],
        });
        for o in [&role, &binding] {
            crate::lab::create_object(admin, o)
                .await
                .map_err(|e| Error::Apply(e.to_string()))?;
        }
        let _ = self.control.prober_role.set(rules);
        let path = setup::service_account_kubeconfig(
            &self.cluster,
            "canary",
            PROBER_SERVICE_ACCOUNT,
            "prober.kubeconfig",
        )
        .await?;
        self.prober_kubeconfig = Some(path);
        Ok(())
    }

    fn write(&self, name: &str, text: &str) -> Result<(), Error> {
        super::pki::write_private(&self.dir.join(name), text).map_err(|e| Error::Dir {
            path: self.dir.join(name).display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })
    }

    fn write_files(&self) -> Result<(), Error> {
        let dir = &self.dir;
        let w = |name: &str, text: &str| {
            super::pki::write_private(&dir.join(name), text).map_err(|e| Error::Dir {
                path: dir.join(name).display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })
        };
        w(
            "vault.env",
            &format!(
                "# OpenBao of the lab (dev server, root token: test equipment only)\nexport BAO_ADDR={a}\nexport VAULT_ADDR={a}\nexport BAO_TOKEN={t}\nexport VAULT_TOKEN={t}\n",
                a = self.vault.addr,
                t = self.vault.root_token
            ),
        )?;
        // Ground truth from the audit log and the node agent comes with them;
        // the file exists from the start so readers can follow it.
        let truth = dir.join("truth.jsonl");
        if !truth.exists() {
            w("truth.jsonl", "")?;
        }
        let v = &self.cluster.binaries.versions;
        let info = RealLabInfo {
            api_url: self.cluster.api_url.clone(),
            admin_token: self.admin_token.clone(),
            vault_addr: self.vault.addr.clone(),
            pid: std::process::id(),
            cluster: "real".into(),
            kubeconfig: path(&self.cluster.kubeconfig),
            audit_log: path(&self.cluster.audit_log),
            ca_cert: path(&self.cluster.pki.ca_cert),
            versions: [
                ("kubernetes", &v.kubernetes),
                ("etcd", &v.etcd),
                ("eso", &v.eso),
                ("helm", &v.helm),
                ("ggcr", &v.ggcr),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
            components: self
                .cluster
                .procs
                .iter()
                .map(|p| ComponentInfo {
                    name: p.name.clone(),
                    pid: p.pid(),
                    log: path(&p.log),
                })
                .collect(),
            ready_ms: self.cluster.ready_after.as_millis() as u64,
            lab_ready_ms: self.ready_after.as_millis() as u64,
            tasks: self
                .tasks
                .iter()
                .map(|(n, _)| n.to_string())
                .chain(self.control.reloader.get().map(|_| "reloader".to_string()))
                .chain(
                    self.control
                        .webhook
                        .get()
                        .map(|_| "bank-vaults-webhook".to_string()),
                )
                .collect(),
            skipped: self.skipped.clone(),
            registry: self.registry.clone().unwrap_or_default(),
            control_url: self.control_url.clone(),
            prober_kubeconfig: self
                .prober_kubeconfig
                .as_deref()
                .map(path)
                .unwrap_or_default(),
        };
        // Written last: its presence means "ready".
        w(
            "lab.json",
            &serde_json::to_string_pretty(&info).unwrap_or_default(),
        )
    }

    /// Stop the in-process components (the node agent stops its Pods'
    /// processes), then the control plane and OpenBao.
    pub async fn stop(self) {
        self.control.shutdown().await;
        self.cancel.cancel();
        for (name, task) in self.tasks {
            if tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .is_err()
            {
                tracing::warn!(task = name, "real lab task did not stop within 15 s");
            }
        }
        self.cluster.stop().await;
        self.vault.stop().await;
    }

    /// Wait until a component process exits (the error names it and its log).
    pub async fn exited(&self) -> ClusterError {
        self.cluster.exited().await
    }
}

/// The OpenBao role ESO's SecretStore logs in with (the scenario's).
const ESO_OPENBAO_ROLE: &str = "external-secrets";
/// The prober's ServiceAccount in the canary namespace (the scenario's).
const PROBER_SERVICE_ACCOUNT: &str = "secret-canary";

/// Serve the fault control endpoint on a free loopback port until `cancel`.
async fn serve_control(
    control: Arc<Control>,
    token: String,
    cancel: CancellationToken,
) -> std::io::Result<(String, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = faults::router(control, token);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "fault control endpoint stopped");
        }
    });
    Ok((url, task))
}

/// `kubectl rollout status`'s success condition.
pub fn rolled_out(d: &Deployment) -> bool {
    let Some(st) = &d.status else {
        return false;
    };
    let want = d.spec.replicas.unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    st.observed_generation.unwrap_or(0) >= generation
        && st.updated_replicas.unwrap_or(0) >= want
        && st.replicas.unwrap_or(0) <= st.updated_replicas.unwrap_or(0)
        && st.available_replicas.unwrap_or(0) >= st.updated_replicas.unwrap_or(0)
}

/// The scenario's objects without Deployments that rely on Bank-Vaults
/// (`vault.security.banzaicloud.io/` annotations on their Pods); also returns
/// `namespace/name` of each dropped one.
pub fn without_bank_vaults(objects: &[Value]) -> (Vec<Value>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for o in objects {
        let bank_vaults = o
            .pointer("/spec/template/metadata/annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| {
                a.keys()
                    .any(|k| k.starts_with(bankvaults::ANNOTATION_PREFIX))
            });
        if bank_vaults {
            dropped.push(format!(
                "{}/{}",
                o.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default"),
                o.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ));
        } else {
            kept.push(o.clone());
        }
    }
    (kept, dropped)
}

/// The prober config without the probes whose chain rolls out or watches a
/// dropped Deployment (`namespace/name`).
pub fn prober_without(text: &str, dropped: &[String]) -> String {
    if dropped.is_empty() {
        return text.to_string();
    }
    let Ok(mut v) = serde_norway::from_str::<serde_norway::Value>(text) else {
        return text.to_string();
    };
    if let Some(probes) = v.get_mut("probes").and_then(|p| p.as_sequence_mut()) {
        probes.retain(|p| {
            let chain = &p["chain"];
            let ns = chain["namespace"].as_str().unwrap_or("default");
            let deployment = chain["rollout"]["deployment"].as_str();
            let selector = chain["canary"]["selector"].as_str().unwrap_or_default();
            !dropped.iter().any(|d| {
                let (dns, dname) = d.split_once('/').unwrap_or(("default", d));
                dns == ns && (deployment == Some(dname) || selector == format!("app={dname}"))
            })
        });
    }
    let body = serde_norway::to_string(&v).unwrap_or_else(|_| text.to_string());
    format!(
        "# Written by secret-canary-lab (real cluster); left out: {}\n{body}",
        dropped.join(", ")
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_scenario_without_bank_vaults() {
        let vars = BTreeMap::from([
            ("VAULT_ADDR", "http://127.0.0.1:1".to_string()),
            ("DIR", "/tmp/x".to_string()),
        ]);
        let s = Scenario::parse(crate::scenario::REFERENCE, &vars).unwrap();
        let (kept, dropped) = without_bank_vaults(&s.objects);
        assert_eq!(dropped, ["canary/canary-bankvaults"]);
        assert_eq!(kept.len() + 1, s.objects.len());
        let prober = prober_without(s.prober.as_deref().unwrap(), &dropped);
        assert!(prober.contains("eso-reloader-env") && prober.contains("eso-volume"));
        assert!(!prober.contains("bankvaults-restart"), "{prober}");
    }
}
