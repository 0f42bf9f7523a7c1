//! `--cluster real`: the real upstream control plane on loopback, built from
//! the Go modules pinned in `lab/real/versions.env` (`scripts/build-real.sh`).
//!
//! ```text
//! pki       a CA of ours (rcgen), serving and client certificates, the SA key
//! bins      where the cached binaries are, per pinned version
//! process   one component as a supervised child process, logging to DIR/logs
//! audit     the API server's audit policy (Secrets at Metadata level only)
//! audit_truth the audit log (and a digest-only Secret watch) as truth.jsonl
//! setup     ServiceAccounts, RBAC and credentials of ESO, Reloader and OpenBao;
//!           ESO's CRDs and process
//! lab       `up --cluster real`: all of it, the node agent and the scenario
//! faults    faults by real means, served on the lab's control endpoint
//! ```
//!
//! [`RealCluster::start`] brings up etcd, kube-apiserver (TLS, ServiceAccount
//! issuer and keys, Node+RBAC authorization, default admission, audit log),
//! kube-controller-manager and kube-scheduler, writes an admin kubeconfig,
//! and waits until each is healthy and the controllers act (the `default`
//! ServiceAccount exists). The node agent, ESO, Reloader, the Bank-Vaults
//! webhook and the scenario are added beside these processes: each is one
//! more [`Proc`] (or task) in [`RealCluster`], started after the API server.

pub mod audit;
pub mod audit_truth;
pub mod bins;
pub mod egress;
pub mod faults;
pub mod kubelet_api;
pub mod lab;
pub mod pki;
pub mod process;
pub mod registry;
pub mod setup;
pub mod webhook;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;

pub use bins::{Binaries, Binary, NotBuilt, Versions};
pub use process::Proc;

/// The Service IP range and the API server's in-cluster address.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// The `kubernetes.default` Service IP (first of [`SERVICE_CIDR`]).
pub const API_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The ServiceAccount token issuer.
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The node agent's Node name (its certificate says `system:node:<this>`).
pub const NODE_NAME: &str = "lab-node";

/// Why the real cluster could not start (every variant names the component
/// and, where there is one, its log file).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary is not built.
    #[error(transparent)]
    NotBuilt(#[from] NotBuilt),
    /// The working directory could not be prepared.
    #[error("lab directory {path}: {source}")]
    Dir {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificates.
    #[error(transparent)]
    Pki(#[from] pki::Error),
    /// A process could not be started.
    #[error(transparent)]
    Spawn(#[from] process::SpawnError),
    /// The port a component should listen on is taken.
    #[error("{component}: port 127.0.0.1:{port} is in use ({source})")]
    PortInUse {
        /// The component.
        component: String,
        /// The port.
        port: u16,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A component exited.
    #[error("{component} exited ({status}); its log is {log}; last lines:\n{tail}")]
    Exited {
        /// The component.
        component: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// A component did not become ready in time.
    #[error("{component} not ready after {waited:?} (last check: {last}); its log is {log}")]
    NotReady {
        /// The component.
        component: String,
        /// How long we waited.
        waited: Duration,
        /// The last check's answer.
        last: String,
        /// Its log file.
        log: String,
    },
    /// A client for the cluster could not be built.
    #[error("client for the real cluster: {0}")]
    Client(String),
}

/// How to start the real control plane.
#[derive(Debug, Clone)]
pub struct RealOptions {
    /// Working directory (kubeconfig, pki/, etcd/, logs/, audit.log).
    pub dir: PathBuf,
    /// kube-apiserver's port on 127.0.0.1 (0 = any free port).
    pub api_port: u16,
    /// Where the binaries are.
    pub binaries: Binaries,
    /// How long each component may take to become ready.
    pub ready_timeout: Duration,
    /// The `secret-canary` binary the node agent runs for canary containers.
    /// `None`: the control plane only (no node agent, ESO, Reloader or scenario).
    pub canary_bin: Option<PathBuf>,
    /// A scenario file; `None` for the reference scenario.
    pub scenario: Option<PathBuf>,
    /// The node agent's behaviour (the lab's short volume sync by default).
    pub node: crate::controllers::kubelet::NodeConfig,
    /// The Bank-Vaults admission webhook's `failurePolicy` (`Ignore`, the
    /// chart's default, or `Fail`); `None`: no webhook, and the scenario's
    /// Bank-Vaults Deployments and probes are left out.
    pub webhook_failure_policy: Option<String>,
    /// Wait until the controllers act (the ServiceAccount controller made
    /// `default/default`) before [`RealCluster::start`] returns. The real lab
    /// turns it off when it runs a scenario: its set-up overlaps the
    /// controller-manager's warm-up, and the rollouts it waits for show the
    /// controllers act.
    pub wait_controllers: bool,
    /// Advertise Pods at addresses the host cannot reach (`100::/64`, see
    /// [`crate::controllers::kubelet::unroutable`]):
    /// a client dialling Pod IPs fails, as one outside a cluster's network
    /// does, while the API server reaches Pods (`pods/proxy`, logs) through
    /// the lab's egress proxy ([`egress`]). Off by default.
    pub unroutable_pods: bool,
    /// ESO's `--concurrent`: reconcile workers (upstream's default, 1).
    pub eso_concurrent: usize,
}

impl RealOptions {
    /// Options for `dir`, any port, the pinned binaries in the default cache.
    pub fn new(dir: impl Into<PathBuf>) -> RealOptions {
        RealOptions {
            dir: dir.into(),
            api_port: 0,
            binaries: Binaries::pinned(),
            ready_timeout: Duration::from_secs(90),
            canary_bin: None,
            scenario: None,
            node: crate::controllers::kubelet::NodeConfig::lab(NODE_NAME),
            webhook_failure_policy: Some("Ignore".into()),
            wait_controllers: true,
            unroutable_pods: false,
            eso_concurrent: crate::controllers::eso::DEFAULT_WORKERS,
        }
    }
}

/// Files of the cluster's credentials, in `DIR/pki`.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM): trust anchor of every TLS endpoint here.
    pub ca_cert: PathBuf,
    /// The CA key (the controller-manager signs CSRs with it).
    pub ca_key: PathBuf,
    /// The ServiceAccount token signing key.
    pub sa_key: PathBuf,
}

/// The running control plane. Stop it with [`RealCluster::stop`]; dropping
/// it kills the processes without waiting.
pub struct RealCluster {
    /// Working directory.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub api_url: String,
    /// `DIR/kubeconfig`: admin (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `DIR/pki/node.kubeconfig`: the node agent, `system:node:<NODE_NAME>`
    /// in `system:nodes` (the Node authorizer applies).
    pub node_kubeconfig: PathBuf,
    /// The CA certificate (PEM text).
    pub ca_pem: String,
    /// The Bank-Vaults admission webhook's serving certificate (127.0.0.1).
    pub webhook_cert: pki::CertFiles,
    /// `DIR/audit.log` (JSON lines, the API server's audit log).
    pub audit_log: PathBuf,
    /// Credentials.
    pub pki: Pki,
    /// The binaries used.
    pub binaries: Binaries,
    /// How long the start took, until everything was ready.
    pub ready_after: Duration,
    /// Every component process, in start order.
    pub procs: Vec<Proc>,
    /// The API server's egress proxy (`unroutable_pods`), with the Pods'
    /// advertised addresses the node agent fills.
    pub egress: Option<egress::EgressProxy>,
    client: kube::Client,
}

struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    apiserver: u16,
    controller_manager: u16,
    scheduler: u16,
}

fn free_port(component: &str) -> Result<u16, Error> {
    take_port(component, 0)
}

/// Check that `port` can be bound (0: pick a free one) and return it.
fn take_port(component: &str, port: u16) -> Result<u16, Error> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::PortInUse {
            component: component.into(),
            port,
            source,
        })
}

impl RealCluster {
    /// Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler
    /// in `opts.dir` and wait until they are ready. On error, everything
    /// started so far is stopped.
    pub async fn start(opts: RealOptions) -> Result<RealCluster, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let started = Instant::now();
        let b = &opts.binaries;
        let etcd_bin = b.require(Binary::Etcd)?;
        let apiserver_bin = b.require(Binary::KubeApiserver)?;
        let kcm_bin = b.require(Binary::KubeControllerManager)?;
        let scheduler_bin = b.require(Binary::KubeScheduler)?;

        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|source| Error::Dir {
                path: p.display().to_string(),
                source,
            })
        };
        mkdir(&opts.dir)?;
        let dir = opts.dir.canonicalize().map_err(|source| Error::Dir {
            path: opts.dir.display().to_string(),
            source,
        })?;
        let logs = dir.join("logs");
        let pki_dir = dir.join("pki");
        mkdir(&logs)?;
        mkdir(&pki_dir)?;
        // A fresh cluster each time: no etcd data or audit log of an earlier run.
        for stale in ["etcd", "audit.log"] {
            let p = dir.join(stale);
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(source) = r {
                if source.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::Dir {
                        path: p.display().to_string(),
                        source,
                    });
                }
            }
        }

        let ports = Ports {
            apiserver: take_port("kube-apiserver", opts.api_port)?,
            etcd_client: free_port("etcd")?,
            etcd_peer: free_port("etcd")?,
            controller_manager: free_port("kube-controller-manager")?,
            scheduler: free_port("kube-scheduler")?,
        };
        let api_url = format!("https://127.0.0.1:{}", ports.apiserver);

        // Credentials.
        let ca = pki::Ca::create(&pki_dir)?;
        let (sa_key, sa_pub) = pki::service_account_key(&pki_dir)?;
        let api_sans = pki::apiserver_sans(API_SERVICE_IP);
        let api_sans: Vec<&str> = api_sans.iter().map(String::as_str).collect();
        let loopback = ["127.0.0.1", "localhost"];
        let serving = |name, cn| pki::Leaf {
            name,
            common_name: cn,
            organizations: &[],
            sans: &loopback,
            server: true,
            client: false,
        };
        let client_leaf = |name, cn, orgs| pki::Leaf {
            name,
            common_name: cn,
            organizations: orgs,
            sans: &[],
            server: false,
            client: true,
        };
        let api_serving = ca.issue(&pki::Leaf {
            sans: &api_sans,
            ..serving("apiserver", "kube-apiserver")
        })?;
        let kubelet_client = ca.issue(&client_leaf(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
        ))?;
        let admin = ca.issue(&client_leaf(
            "admin",
            "secret-canary-lab-admin",
            &["system:masters"],
        ))?;
        let kcm_client = ca.issue(&client_leaf(
            "controller-manager-client",
            "system:kube-controller-manager",
            &[],
        ))?;
        let kcm_serving = ca.issue(&serving("controller-manager", "kube-controller-manager"))?;
        let sched_client = ca.issue(&client_leaf(
            "scheduler-client",
            "system:kube-scheduler",
            &[],
        ))?;
        let sched_serving = ca.issue(&serving("scheduler", "kube-scheduler"))?;
        let webhook_cert = ca.issue(&serving("webhook", "secret-canary-lab-webhook"))?;
        let node_user = format!("system:node:{NODE_NAME}");
        let node_client = ca.issue(&pki::Leaf {
            name: "node-client",
            common_name: &node_user,
            organizations: &["system:nodes"],
            sans: &[],
            server: false,
            client: true,
        })?;

        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &api_url, &ca.cert_pem, &admin, "lab-admin")?;
        let node_kubeconfig = pki_dir.join("node.kubeconfig");
        write_kubeconfig(
            &node_kubeconfig,
            &api_url,
            &ca.cert_pem,
            &node_client,
            &node_user,
        )?;
        let kcm_kubeconfig = pki_dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &api_url,
            &ca.cert_pem,
            &kcm_client,
            "system:kube-controller-manager",
        )?;
        let sched_kubeconfig = pki_dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &sched_kubeconfig,
            &api_url,
            &ca.cert_pem,
            &sched_client,
            "system:kube-scheduler",
        )?;
        let audit_policy = dir.join("audit-policy.yaml");
        pki::write_private(&audit_policy, audit::POLICY)?;
        let audit_log = dir.join("audit.log");
        let pki = Pki {
            ca_cert: ca.files.cert.clone(),
            ca_key: ca.files.key.clone(),
            sa_key: sa_key.clone(),
        };

        let p = |x: &Path| x.display().to_string();
        let egress_config = dir.join("egress-selector.yaml");
        let egress = if opts.unroutable_pods {
            Some(
                egress::start(&dir.join("egress.sock"))
                    .map_err(|e| Error::Client(format!("egress proxy: {e}")))?,
            )
        } else {
            None
        };
        let mut procs: Vec<Proc> = Vec::new();
        let result = async {
            // etcd: plain HTTP on loopback only, data in DIR/etcd.
            let etcd_data = dir.join("etcd");
            let etcd_args = vec![
                "--name=lab".to_string(),
                format!("--data-dir={}", p(&etcd_data)),
                format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    ports.etcd_client
                ),
                format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    ports.etcd_client
                ),
                format!("--listen-peer-urls=http://127.0.0.1:{}", ports.etcd_peer),
                format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    ports.etcd_peer
                ),
                format!("--initial-cluster=lab=http://127.0.0.1:{}", ports.etcd_peer),
                "--initial-cluster-state=new".into(),
                // Test data: durability is not worth the fsync latency here.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ];
            procs.push(Proc::spawn(
                "etcd",
                &etcd_bin,
                &etcd_args,
                &logs.join("etcd.log"),
            )?);
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .map_err(|e| Error::Client(e.to_string()))?;
            let etcd_health = format!("http://127.0.0.1:{}/health", ports.etcd_client);
            wait_ready(&procs, "etcd", opts.ready_timeout, || async {
                match http.get(&etcd_health).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("GET /health: {}", r.status())),
                    Err(e) => Err(format!("GET /health: {e}")),
                }
            })
            .await?;

            let apiserver_args = vec![
                format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // A loopback advertise address is refused by the endpoint
                // reconciler (nothing in the lab reaches the API server
                // through the `kubernetes` Service's endpoints anyway).
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={}", ports.apiserver),
                format!("--tls-cert-file={}", p(&api_serving.cert)),
                format!("--tls-private-key-file={}", p(&api_serving.key)),
                format!("--client-ca-file={}", p(&ca.files.cert)),
                format!("--cert-dir={}", p(&pki_dir)),
                format!("--service-account-issuer={SA_ISSUER}"),
                format!("--service-account-key-file={}", p(&sa_pub)),
                format!("--service-account-signing-key-file={}", p(&sa_key)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--authorization-mode=Node,RBAC".into(),
                // Admission: the upstream default plugin set (no flag).
                format!("--kubelet-client-certificate={}", p(&kubelet_client.cert)),
                format!("--kubelet-client-key={}", p(&kubelet_client.key)),
                // The node agent's kubelet API (container logs) serves a
                // certificate from the lab's CA for 127.0.0.1, its InternalIP
                // (its Hostname address does not resolve).
                format!("--kubelet-certificate-authority={}", p(&ca.files.cert)),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--audit-policy-file={}", p(&audit_policy)),
                format!("--audit-log-path={}", p(&audit_log)),
                "--audit-log-format=json".into(),
                // Blocking: an audit event is written before the response goes out,
                // so the log's order is the API's order (the truth depends on it).
                "--audit-log-mode=blocking".into(),
                "--audit-log-maxbackup=0".into(),
                "--profiling=false".into(),
            ];
            let mut apiserver_args = apiserver_args;
            if let Some(e) = &egress {
                apiserver_args.push(format!(
                    "--egress-selector-config-file={}",
                    p(&egress_config)
                ));
                pki::write_private(&egress_config, &egress::selector_config(&e.socket))?;
            }
            procs.push(Proc::spawn(
                "kube-apiserver",
                &apiserver_bin,
                &apiserver_args,
                &logs.join("kube-apiserver.log"),
            )?);
            // Ready checks over TLS, trusting only our CA.
            let ca_cert = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes())
                .map_err(|e| Error::Client(e.to_string()))?;
            let admin_pem = format!("{}{}", read(&admin.cert)?, read(&admin.key)?);
            let identity = reqwest::Identity::from_pem(admin_pem.as_bytes())
                .map_err(|e| Error::Client(e.to_string()))?;
            let https = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .tls_certs_only([ca_cert])
                .identity(identity)
                .build()
                .map_err(|e| Error::Client(e.to_string()))?;
            let api_readyz = format!("{api_url}/readyz");
            wait_ready(&procs, "kube-apiserver", opts.ready_timeout, || async {
                match https.get(&api_readyz).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("GET {api_readyz}: {}", r.status())),
                    Err(e) => Err(format!("GET {api_readyz}: {e}")),
                }
            })
            .await?;
            // The controller-manager and the scheduler give up when the API
            // server does not answer at once: start them once it is ready.
            let kcm_args = vec![
                format!("--kubeconfig={}", p(&kcm_kubeconfig)),
                format!("--authentication-kubeconfig={}", p(&kcm_kubeconfig)),
                format!("--authorization-kubeconfig={}", p(&kcm_kubeconfig)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.controller_manager),
                format!("--tls-cert-file={}", p(&kcm_serving.cert)),
                format!("--tls-private-key-file={}", p(&kcm_serving.key)),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", p(&sa_key)),
                format!("--root-ca-file={}", p(&ca.files.cert)),
                format!("--cluster-signing-cert-file={}", p(&ca.files.cert)),
                format!("--cluster-signing-key-file={}", p(&ca.files.key)),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--cluster-name=secret-canary-lab".into(),
                // One instance: no lease to win before the controllers start.
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ];
            procs.push(Proc::spawn(
                "kube-controller-manager",
                &kcm_bin,
                &kcm_args,
                &logs.join("kube-controller-manager.log"),
            )?);
            let sched_args = vec![
                format!("--kubeconfig={}", p(&sched_kubeconfig)),
                format!("--authentication-kubeconfig={}", p(&sched_kubeconfig)),
                format!("--authorization-kubeconfig={}", p(&sched_kubeconfig)),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", ports.scheduler),
                format!("--tls-cert-file={}", p(&sched_serving.cert)),
                format!("--tls-private-key-file={}", p(&sched_serving.key)),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ];
            procs.push(Proc::spawn(
                "kube-scheduler",
                &scheduler_bin,
                &sched_args,
                &logs.join("kube-scheduler.log"),
            )?);

            for (component, url) in [
                (
                    "kube-controller-manager",
                    format!("https://127.0.0.1:{}/healthz", ports.controller_manager),
                ),
                (
                    "kube-scheduler",
                    format!("https://127.0.0.1:{}/healthz", ports.scheduler),
                ),
            ] {
                wait_ready(&procs, component, opts.ready_timeout, || async {
                    match https.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("GET {url}: {}", r.status())),
                        Err(e) => Err(format!("GET {url}: {e}")),
                    }
                })
                .await?;
            }

            let client = crate::lab::client_from_kubeconfig(&kubeconfig)
                .await
                .map_err(|e| Error::Client(e.to_string()))?;
            // The controllers act: the ServiceAccount controller made `default`.
            let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
            if !opts.wait_controllers {
                return Ok::<_, Error>(client);
            }
            wait_ready(
                &procs,
                "kube-controller-manager",
                opts.ready_timeout,
                || async {
                    match sas.get_opt("default").await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("no ServiceAccount default/default yet".to_string()),
                        Err(e) => Err(format!("get ServiceAccount default/default: {e}")),
                    }
                },
            )
            .await?;
            Ok::<_, Error>(client)
        }
        .await;

        match result {
            Ok(client) => Ok(RealCluster {
                dir,
                api_url,
                kubeconfig,
                node_kubeconfig,
                ca_pem: ca.cert_pem.clone(),
                webhook_cert,
                audit_log,
                pki,
                binaries: opts.binaries.clone(),
                ready_after: started.elapsed(),
                procs,
                egress,
                client,
            }),
            Err(e) => {
                stop_all(procs).await;
                Err(e)
            }
        }
    }

    /// An admin kube client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The component process named `name`.
    pub fn proc(&self, name: &str) -> Option<&Proc> {
        self.procs.iter().find(|p| p.name == name)
    }

    /// Wait until any component exits; returns the error naming it.
    pub async fn exited(&self) -> Error {
        let waits = self
            .procs
            .iter()
            .map(|p| Box::pin(async move { (p, p.wait().await) }));
        if self.procs.is_empty() {
            return std::future::pending().await;
        }
        let ((p, status), _, _) = futures::future::select_all(waits).await;
        exited_error(p, status)
    }

    /// Stop every component, the last started first (SIGTERM, then SIGKILL).
    pub async fn stop(self) {
        stop_all(self.procs).await;
    }
}

fn exited_error(p: &Proc, status: std::process::ExitStatus) -> Error {
    Error::Exited {
        component: p.name.clone(),
        status: status.to_string(),
        log: p.log.display().to_string(),
        tail: p.log_tail(15),
    }
}

async fn stop_all(mut procs: Vec<Proc>) {
    while let Some(p) = procs.pop() {
        p.stop(Duration::from_secs(10)).await;
    }
}

/// Poll `check` every 100 ms until it passes, failing early when any
/// started component exits.
pub(crate) async fn wait_ready<F, Fut>(
    procs: &[Proc],
    component: &str,
    limit: Duration,
    mut check: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        for p in procs {
            if let Some(status) = p.exited() {
                return Err(exited_error(p, status));
            }
        }
        let last = match check().await {
            Ok(()) => {
                tracing::info!(component, after = ?start.elapsed(), "ready");
                return Ok(());
            }
            Err(e) => e,
        };
        if start.elapsed() > limit {
            let log = procs
                .iter()
                .find(|p| p.name == component)
                .map(|p| p.log.display().to_string())
                .unwrap_or_default();
            return Err(Error::NotReady {
                component: component.into(),
                waited: start.elapsed(),
                last,
                log,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Dir {
        path: path.display().to_string(),
        source,
    })
}

/// A kubeconfig with the CA and a ServiceAccount's bearer token.
pub(crate) fn write_token_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    token: &str,
    user: &str,
) -> Result<(), Error> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\n    namespace: default\ncurrent-context: lab\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
        ca = b64(ca_pem),
    );
    pki::write_private(path, &text)?;
    Ok(())
}

/// A kubeconfig with the CA and a client certificate embedded.
fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    client: &pki::CertFiles,
    user: &str,
) -> Result<(), Error> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cert = read(&client.cert)?;
    let key = read(&client.key)?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: {user}\n    namespace: default\ncurrent-context: lab\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(&cert),
        key = b64(&key),
    );
    pki::write_private(path, &text)?;
    Ok(())
}
