//! The measured process: `secret-canary run` started as a child, its
//! resident memory and CPU time read from `/proc`, its exporter scraped.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// Memory and CPU of a process, from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcStats {
    /// Resident set size now, bytes.
    pub rss: u64,
    /// Peak resident set size, bytes.
    pub hwm: u64,
    /// User plus system CPU time, seconds.
    pub cpu: f64,
    /// Threads.
    pub threads: u64,
}

/// Read a process's stats; `None` once it has exited.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some(ProcStats {
        rss: field("VmRSS:") * 1024,
        hwm: field("VmHWM:") * 1024,
        cpu: (ticks(11) + ticks(12)) as f64 / clock_ticks(),
        threads: field("Threads:"),
    })
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// A free loopback port (bound and released; good enough for a benchmark).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running `secret-canary run`.
pub struct Prober {
    child: Child,
    /// Its pid.
    pub pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
}

impl Prober {
    /// Start `bin run --config config` with its log in `log`.
    pub async fn start(bin: &Path, config: &Path, log: &Path) -> Result<Prober> {
        let port = free_port()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the prober exited at once")?;
        Ok(Prober {
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                // A thousand probes' exposition is megabytes on a busy machine.
                .timeout(Duration::from_secs(120))
                .build()?,
        })
    }

    /// Wait until `/readyz` answers 200 (every watcher synced).
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("the prober exited during start-up ({status}); see its log");
            }
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > limit {
                bail!("the prober was not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Memory and CPU now.
    pub fn stats(&self) -> ProcStats {
        proc_stats(self.pid).unwrap_or_default()
    }

    /// `GET path` as text.
    pub async fn get(&self, path: &str) -> Result<String> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .header("accept", "application/openmetrics-text; version=1.0.0")
            .send()
            .await?
            .error_for_status()?;
        Ok(r.text().await?)
    }

    /// `GET /metrics`, timed (request sent to body read).
    pub async fn scrape(&self) -> Result<(String, Duration)> {
        let start = Instant::now();
        let text = self.get("/metrics").await?;
        Ok((text, start.elapsed()))
    }

    /// `n` timed scrapes of `/metrics`, `gap` apart, by a client on a
    /// thread and runtime of its own: the benchmark's runtime also runs the
    /// lab (at scale, a thousand canaries and their controllers), and a
    /// scrape timed there measures how long the lab kept the client waiting
    /// as much as the prober. Each is timed from the request sent to the
    /// last byte of the body (not decoded). Returns the times and the last
    /// body.
    pub async fn scrapes_apart(&self, n: usize, gap: Duration) -> Result<(Vec<Duration>, String)> {
        let url = format!("{}/metrics", self.url);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = tx.send(scrape_thread(&url, n, gap));
        });
        rx.await.context("the scrape thread died")?
    }

    /// SIGTERM, then wait (killing it after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn scrape_thread(url: &str, n: usize, gap: Duration) -> Result<(Vec<Duration>, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let mut times = Vec::with_capacity(n);
        let mut last = Vec::new();
        for _ in 0..n {
            let start = Instant::now();
            let r = http
                .get(url)
                .header("accept", "application/openmetrics-text; version=1.0.0")
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if let Ok(r) = r {
                if let Ok(body) = r.bytes().await {
                    times.push(start.elapsed());
                    last = body.to_vec();
                }
            }
            tokio::time::sleep(gap).await;
        }
        Ok((times, String::from_utf8_lossy(&last).into_owned()))
    })
}
