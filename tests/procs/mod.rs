//! The real `secret-canary` binary as a child process for the security and
//! high-availability tests: any flags, stderr to a file, HTTP helpers
//! (optionally with a bearer token) and a parser for exposition samples.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_secret-canary"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `secret-canary run`, killed on drop.
pub struct Prober {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    http: reqwest::Client,
}

impl Prober {
    /// `secret-canary run --config CONFIG --listen 127.0.0.1:PORT EXTRA...`,
    /// stdout and stderr appended to `log`.
    pub fn start(config: &Path, log: &Path, extra: &[&str]) -> Prober {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn secret-canary run");
        Prober {
            child,
            addr,
            log: log.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET `path` with an optional bearer token: (status, body); status 0
    /// when there was no answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut r = self.http.get(format!("http://{}{path}", self.addr));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        match r.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                (code, resp.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Wait until `/healthz` answers 200.
    pub async fn wait_healthy(&mut self, limit: Duration) {
        let start = Instant::now();
        loop {
            if self.get("/healthz", None).await.0 == 200 {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("prober exited with {st}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < limit,
                "prober not healthy within {limit:?}: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGTERM, wait up to 20 s, then SIGKILL.
    pub async fn stop(mut self) -> Option<ExitStatus> {
        self.signal("TERM");
        let st = self.wait_exit(Duration::from_secs(20)).await;
        if st.is_none() {
            self.kill();
        }
        st
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the first sample of `name` whose labels contain every
/// `k="v"` of `labels`.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let rest = l.strip_prefix(name)?;
        let (labelset, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let (ls, v) = r.split_once('}')?;
                (ls, v)
            }
            None if rest.starts_with(' ') => ("", rest),
            None => return None,
        };
        if !labels
            .iter()
            .all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\"")))
        {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Sum of every sample of `name` whose labels contain `labels`.
pub fn sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let r = rest.strip_prefix('{')?;
            let (ls, v) = r.split_once('}')?;
            labels
                .iter()
                .all(|(k, val)| ls.contains(&format!("{k}=\"{val}\"")))
                .then(|| v.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// The lab's prober config with every probe's interval set to `interval`,
/// its token file replaced by `token_file` (if given), and `extra_store`
/// lines added to each store block.
pub fn prober_config(
    lab_config: &Path,
    interval: &str,
    token_file: Option<&Path>,
    extra_store: &str,
) -> String {
    let mut text = std::fs::read_to_string(lab_config).expect("lab prober.yaml");
    text = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("interval:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}interval: {interval}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(t) = token_file {
        let old = text
            .lines()
            .find(|l| l.trim_start().starts_with("file:") && l.contains("prober.token"))
            .map(|l| {
                l.trim_start()
                    .trim_start_matches("file:")
                    .trim()
                    .to_string()
            });
        if let Some(old) = old {
            text = text.replace(&old, &t.display().to_string());
        }
    }
    if !extra_store.is_empty() {
        text = text
            .lines()
            .flat_map(|l| {
                let mut out = vec![l.to_string()];
                if l.trim_start().starts_with("path: canary/") {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    for e in extra_store.lines() {
                        out.push(format!("{indent}{e}"));
                    }
                }
                out
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text.push('\n');
    text
}
