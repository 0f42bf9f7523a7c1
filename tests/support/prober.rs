//! The real `secret-canary run` binary as a child process of a test: started
//! on a free port against a lab's config, with JSON logs in a file. The test
//! reads every run from the log (start, result, stage, reason), scrapes
//! `/healthz`, `/probes` and `/metrics`, samples the process's resources and
//! sends it SIGTERM.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// One run of one probe, as the prober logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRun {
    pub probe: String,
    pub run_id: String,
    /// Wall clock of the "run started" line.
    pub started: DateTime<Utc>,
    /// Wall clock of the result line; `None` while the run is in flight.
    pub finished: Option<DateTime<Utc>>,
    /// `success`, `failure`, `aborted` once finished.
    pub result: Option<String>,
    pub stage: Option<String>,
    pub reason: Option<String>,
    pub detail: Option<String>,
    pub end_to_end_seconds: Option<f64>,
}

impl LoggedRun {
    /// `stage/reason`, or `success`.
    pub fn verdict(&self) -> String {
        match (&self.result, &self.stage, &self.reason) {
            (Some(r), _, _) if r == "success" => "success".into(),
            (Some(_), Some(s), Some(r)) => format!("{s}/{r}"),
            (r, _, _) => format!("{r:?}"),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.result.as_deref() == Some("success")
    }
}

/// Resident memory, threads and open fds of a process (from /proc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

/// Read /proc/PID/status and /proc/PID/fd.
pub fn resources(pid: u32) -> Option<Resources> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Resources {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
    })
}

#[derive(Default)]
struct LogState {
    offset: u64,
    partial: String,
    runs: BTreeMap<String, LoggedRun>,
    order: Vec<String>,
}

/// A running `secret-canary run`.
pub struct ProberProcess {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub config: PathBuf,
    http: reqwest::Client,
    state: Mutex<LogState>,
    /// `/healthz` answers that were not 200 (or no answer) while watched.
    unhealthy: Arc<AtomicU64>,
    /// `/healthz` checks made while watched.
    health_checks: Arc<AtomicU64>,
    watch_stop: CancellationToken,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl ProberProcess {
    /// Start `secret-canary run --config CONFIG` on a free port with JSON
    /// logs (info) in `log`; waits until `/healthz` answers, then keeps
    /// checking it every 250 ms until the process is stopped.
    pub async fn start(config: &Path, log: &Path, grace: Duration) -> ProberProcess {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        for _attempt in 0..3 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let file = std::fs::File::create(log).expect("prober log file");
            let child = Command::new(env!("CARGO_BIN_EXE_secret-canary"))
                .arg("run")
                .arg("--config")
                .arg(config)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--grace")
                .arg(format!("{}ms", grace.as_millis()))
                .args(["--log-format", "json", "--log-level", "info"])
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(file))
                .spawn()
                .expect("spawn secret-canary run");
            let mut p = ProberProcess {
                child,
                addr,
                log: log.to_path_buf(),
                config: config.to_path_buf(),
                http: http.clone(),
                state: Mutex::new(LogState::default()),
                unhealthy: Arc::new(AtomicU64::new(0)),
                health_checks: Arc::new(AtomicU64::new(0)),
                watch_stop: CancellationToken::new(),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if p.child.try_wait().ok().flatten().is_some() {
                    break; // port taken meanwhile: try another
                }
                if p.healthz().await {
                    p.watch_health();
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        panic!(
            "secret-canary run did not come up; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn watch_health(&self) {
        let (http, url) = (self.http.clone(), format!("http://{}/healthz", self.addr));
        let (bad, checks, stop) = (
            self.unhealthy.clone(),
            self.health_checks.clone(),
            self.watch_stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let ok = matches!(
                    http.get(&url).timeout(Duration::from_secs(2)).send().await,
                    Ok(r) if r.status().is_success()
                );
                if stop.is_cancelled() {
                    break;
                }
                checks.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// (failed, total) `/healthz` checks since start.
    pub fn health(&self) -> (u64, u64) {
        (
            self.unhealthy.load(Ordering::Relaxed),
            self.health_checks.load(Ordering::Relaxed),
        )
    }

    pub async fn healthz(&self) -> bool {
        matches!(
            self.http.get(format!("http://{}/healthz", self.addr)).send().await,
            Ok(r) if r.status().is_success()
        )
    }

    /// `/probes` as JSON.
    pub async fn probes(&self) -> serde_json::Value {
        self.http
            .get(format!("http://{}/probes", self.addr))
            .send()
            .await
            .expect("GET /probes")
            .json()
            .await
            .expect("/probes JSON")
    }

    /// The `/metrics` exposition text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics text")
    }

    /// Every run logged so far, in start order.
    pub fn runs(&self) -> Vec<LoggedRun> {
        let mut st = self.state.lock().unwrap();
        self.read_log(&mut st);
        st.order.iter().map(|id| st.runs[id].clone()).collect()
    }

    fn read_log(&self, st: &mut LogState) {
        let Ok(mut f) = std::fs::File::open(&self.log) else {
            return;
        };
        if f.seek(SeekFrom::Start(st.offset)).is_err() {
            return;
        }
        let mut reader = BufReader::new(f);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                break;
            }
            st.offset += n as u64;
            if !line.ends_with('\n') {
                st.partial.push_str(&line);
                continue;
            }
            let full = std::mem::take(&mut st.partial) + &line;
            apply_line(st, &full);
        }
    }

    /// The first run of `probe` that started at or after `after` and has
    /// finished; panics after `limit`.
    pub async fn wait_run(&self, probe: &str, after: DateTime<Utc>, limit: Duration) -> LoggedRun {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .runs()
                .into_iter()
                .find(|r| r.probe == probe && r.started >= after)
            {
                if r.finished.is_some() {
                    return r;
                }
            }
            if start.elapsed() > limit {
                panic!(
                    "no finished run of {probe} started after {after} within {limit:?}; runs: {:#?}",
                    self.runs()
                        .into_iter()
                        .filter(|r| r.probe == probe)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until a run of `probe` is in flight (started after `after`, not
    /// finished) and return its id.
    pub async fn wait_in_flight(
        &self,
        probe: &str,
        after: DateTime<Utc>,
        limit: Duration,
    ) -> LoggedRun {
        let start = Instant::now();
        loop {
            if let Some(r) = self
                .runs()
                .into_iter()
                .find(|r| r.probe == probe && r.started >= after && r.finished.is_none())
            {
                return r;
            }
            assert!(
                start.elapsed() < limit,
                "no run of {probe} in flight within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send a signal (`TERM`, `STOP`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Wait for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.watch_stop.cancel();
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// SIGTERM and wait (kill after 15 s).
    pub async fn stop(mut self) -> Option<ExitStatus> {
        self.watch_stop.cancel();
        self.signal("TERM");
        let s = self.wait_exit(Duration::from_secs(15)).await;
        if s.is_none() {
            let _ = self.child.kill();
        }
        s
    }
}

impl Drop for ProberProcess {
    fn drop(&mut self) {
        self.watch_stop.cancel();
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn apply_line(st: &mut LogState, line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_string);
    let (Some(probe), Some(run_id), Some(msg), Some(ts)) = (
        s("/span/probe"),
        s("/span/run_id"),
        s("/fields/message"),
        s("/timestamp"),
    ) else {
        return;
    };
    let Ok(ts) = DateTime::parse_from_rfc3339(&ts).map(|t| t.with_timezone(&Utc)) else {
        return;
    };
    match msg.as_str() {
        "run started" if !st.runs.contains_key(&run_id) => {
            st.order.push(run_id.clone());
            st.runs.insert(
                run_id.clone(),
                LoggedRun {
                    probe,
                    run_id,
                    started: ts,
                    finished: None,
                    result: None,
                    stage: None,
                    reason: None,
                    detail: None,
                    end_to_end_seconds: None,
                },
            );
        }
        "run succeeded" | "run did not succeed" => {
            if let Some(r) = st.runs.get_mut(&run_id) {
                r.finished = Some(ts);
                r.result = if msg == "run succeeded" {
                    Some("success".into())
                } else {
                    s("/fields/result")
                };
                r.stage = s("/fields/stage");
                r.reason = s("/fields/reason");
                r.detail = s("/fields/detail");
                r.end_to_end_seconds = v
                    .pointer("/fields/end_to_end_seconds")
                    .and_then(|x| x.as_f64());
            }
        }
        _ => {}
    }
}
