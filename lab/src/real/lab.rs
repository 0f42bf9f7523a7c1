//! `secret-canary-lab up --cluster real`: the real control plane
//! ([`RealCluster`]) beside a real OpenBao, with the same DIR contract as the
//! simulated lab: `kubeconfig`, `vault.env`, `truth.jsonl`, `lab.json` (and
//! `prober.yaml` once a scenario is applied; not yet on this cluster).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error as ClusterError, RealCluster, RealOptions};
use crate::openbao::{BaoAdmin, OpenBao};

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
}

impl RealLab {
    /// Start OpenBao and the control plane together, then write the DIR files.
    pub async fn start(opts: RealOptions) -> Result<RealLab, Error> {
        let dir = opts.dir.clone();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|source| Error::Dir {
            path: logs.display().to_string(),
            source,
        })?;
        // lab.json appears when the lab is ready: not one of an earlier run.
        let _ = std::fs::remove_file(dir.join("lab.json"));
        let bao_log = logs.join("openbao.log");
        let (vault, cluster) = tokio::join!(OpenBao::start(&bao_log), RealCluster::start(opts));
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
        let lab = RealLab {
            dir: cluster.dir.clone(),
            cluster,
            vault,
            bao,
        };
        if let Err(e) = lab.write_files() {
            lab.stop().await;
            return Err(e);
        }
        Ok(lab)
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
            admin_token: String::new(),
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
                    pid: p.pid,
                    log: path(&p.log),
                })
                .collect(),
            ready_ms: self.cluster.ready_after.as_millis() as u64,
        };
        // Written last: its presence means "ready".
        w(
            "lab.json",
            &serde_json::to_string_pretty(&info).unwrap_or_default(),
        )
    }

    /// Stop the control plane and OpenBao.
    pub async fn stop(self) {
        self.cluster.stop().await;
        self.vault.stop().await;
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
