//! The real `secret-canary run` binary as a child process of a test, the one
//! wrapper every test starts it through: on a free port against a config,
//! its logs in a file. [`Prober::command`] sets the flags; `spawn` returns at
//! once (the test waits with [`Prober::wait_healthy`]), `start` waits until
//! `/healthz` answers and keeps checking it. With JSON logs the test reads
//! every run from the log (start, result, stage, reason); it can scrape
//! `/healthz`, `/probes` and `/metrics` (with a bearer token), sample the
//! process's resources and signal it. Parsers of the exposition text:
//! [`sample`], [`sum`].

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
            // A skipped tick (a watcher was failing) has no stage.
            (Some(r), None, None) => r.clone(),
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

/// A running `secret-canary run`, killed on drop.
pub struct Prober {
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

/// How to start a [`Prober`]: `secret-canary run --config CONFIG --listen
/// 127.0.0.1:PORT [--grace G] [--log-format json --log-level info] ARGS...`,
/// stdout and stderr appended to the log file.
pub struct ProberCommand {
    config: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl ProberCommand {
    /// Add flags.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// JSON logs at info, so [`Prober::runs`] can read every run.
    pub fn json_logs(self) -> Self {
        self.args(&["--log-format", "json", "--log-level", "info"])
    }

    /// `--grace`: how long a SIGTERM waits for runs in flight.
    pub fn grace(self, grace: Duration) -> Self {
        self.args(&["--grace", &format!("{}ms", grace.as_millis())])
    }

    /// Start the process and return at once.
    pub fn spawn(&self) -> Prober {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("prober log file");
        let err = out.try_clone().expect("prober log file");
        let child = Command::new(super::canary_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(addr.to_string())
            .args(&self.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn secret-canary run");
        Prober {
            child,
            addr,
            log: self.log.clone(),
            config: self.config.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .no_proxy()
                .build()
                .expect("http client"),
            state: Mutex::new(LogState::default()),
            unhealthy: Arc::new(AtomicU64::new(0)),
            health_checks: Arc::new(AtomicU64::new(0)),
            watch_stop: CancellationToken::new(),
        }
    }

    /// Start the process with a fresh log, wait until `/healthz` answers
    /// (another port if it exits first, three tries), then keep checking
    /// `/healthz` every 250 ms until it is stopped ([`Prober::health`]).
    pub async fn start(&self) -> Prober {
        for _attempt in 0..3 {
            std::fs::File::create(&self.log).expect("prober log file");
            let mut p = self.spawn();
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
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Prober {
    /// `secret-canary run --config CONFIG`, logging to `log`; see
    /// [`ProberCommand`] for the rest.
    pub fn command(config: &Path, log: &Path) -> ProberCommand {
        ProberCommand {
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            args: Vec::new(),
        }
    }

    /// The fault matrix's prober: JSON logs, `--grace`, started and watched.
    pub async fn start(config: &Path, log: &Path, grace: Duration) -> Prober {
        Prober::command(config, log)
            .grace(grace)
            .json_logs()
            .start()
            .await
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

    /// Wait until `/healthz` answers 200; panics (with the log) when the
    /// process exits or `limit` passes first.
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

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        self.watch_stop.cancel();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (kill after 20 s).
    pub async fn stop(mut self) -> Option<ExitStatus> {
        self.watch_stop.cancel();
        self.signal("TERM");
        let s = self.wait_exit(Duration::from_secs(20)).await;
        if s.is_none() {
            self.kill();
        }
        s
    }
}

impl Drop for Prober {
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
