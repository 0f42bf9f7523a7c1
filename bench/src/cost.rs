//! Cost and scale: `secret-canary run` with N probes, each on its own
//! ESO + Secret volume chain (force-sync after the write, so ESO's
//! `refreshInterval` can be an hour and idle chains cost nothing). Measures
//! the prober's resident memory and CPU time, its API requests by verb
//! (through the counting proxy), `/metrics` scrape latency, and from its own
//! metrics the schedule jitter, missed ticks and skipped runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::prober::{Prober, ProcStats};
use crate::proxy::{self, Counts, Proxy};
use crate::scenario::{self, EsoAuth, Kind, ProberSpec};
use crate::stats::{self, summarize, Histogram, Summary};
use crate::{start_lab, Tools};

/// How a cost or scale measurement runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Probes (and chains).
    pub probes: usize,
    /// The probes' interval.
    pub interval: Duration,
    /// Stop after this many runs in total (cost), or
    pub runs: Option<usize>,
    /// after this long (scale).
    pub duration: Option<Duration>,
    /// Timed `/metrics` scrapes after the runs (while the probes keep running).
    pub scrapes: usize,
    /// Put the counting proxy between the prober and the API server. The
    /// scale phase goes direct: a thousand probes' watches through the
    /// proxy would double the connections the lab process holds.
    pub count_requests: bool,
    /// The lab kubelet's readiness-probe period.
    pub readiness_period: &'static str,
    /// Spread runs over the interval (cron schedules) instead of bursts.
    pub stagger: bool,
    /// Probes per chain (1: every probe has its own chain). More than one
    /// needs `stagger`: the probes of a chain take turns.
    pub shares: usize,
    /// The lab ESO's reconcile workers (ESO's `--concurrent`).
    pub eso_workers: usize,
}

/// One measurement.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Measurement {
    /// Probes.
    pub probes: usize,
    /// Interval, seconds.
    pub interval_s: f64,
    /// Runs were spread over the interval by cron schedules.
    pub staggered: bool,
    /// Chains (each with one canary Pod) the probes ran on.
    pub chains: usize,
    /// The lab ESO's reconcile workers (ESO's `--concurrent`).
    pub eso_workers: usize,
    /// From process start to `/readyz` (every watcher synced), seconds.
    pub ready_s: f64,
    /// At ready.
    pub at_ready: ProcStats,
    /// At the end of the run window.
    pub at_end: ProcStats,
    /// Run window, seconds.
    pub window_s: f64,
    /// Runs ended in the window (success + failure + aborted).
    pub runs: f64,
    /// Of which successes.
    pub success: f64,
    /// Failures.
    pub failure: f64,
    /// Ticks skipped because the previous run was still going.
    pub skipped: f64,
    /// Ticks missed because the process stalled.
    pub missed: f64,
    /// Schedule jitter p50, seconds (histogram, interpolated).
    pub jitter_p50: f64,
    /// Schedule jitter p99, seconds.
    pub jitter_p99: f64,
    /// Jitter observations.
    pub jitter_n: f64,
    /// Requests from process start to ready.
    pub startup_requests: Counts,
    /// Requests in the run window.
    pub window_requests: Counts,
    /// `/metrics` scrape latency, ms.
    pub scrape_ms: Summary,
    /// Exposition size, bytes.
    pub scrape_bytes: usize,
    /// Samples (series) in the exposition.
    pub series: usize,
    /// End-to-end durations of the window's runs, p50 seconds (histogram).
    pub e2e_p50: f64,
}

impl Measurement {
    /// CPU seconds per run in the window.
    pub fn cpu_per_run(&self) -> f64 {
        (self.at_end.cpu - self.at_ready.cpu) / self.runs.max(1.0)
    }

    /// Requests of `verb` per run in the window.
    pub fn per_run(&self, verb: &str) -> f64 {
        proxy::verb_total(&self.window_requests, verb) as f64 / self.runs.max(1.0)
    }
}

/// Start a lab with `opts.probes` volume chains and measure the prober on it.
pub async fn measure(tools: &Tools, opts: &Options, dir: &Path) -> Result<Measurement> {
    let chains = scenario::chains(&[Kind::Volume], opts.probes.div_ceil(opts.shares.max(1)));
    // Readiness probes every 2 s instead of 50 ms: a thousand canaries would
    // otherwise keep the lab busy with 20,000 probes a second.
    let knobs = vec![("readiness-period", opts.readiness_period.to_string())];
    let lab = start_lab(
        tools,
        dir,
        &chains,
        &knobs,
        "1h",
        EsoAuth::Token,
        opts.eso_workers,
    )
    .await?;
    let cancel = CancellationToken::new();
    let result = async {
        let proxy = if opts.count_requests {
            Some(Proxy::start(&lab.api_url, cancel.clone()).await?)
        } else {
            None
        };
        let kubeconfig = match &proxy {
            Some(p) => {
                let k = lab.dir.join("kubeconfig-proxy");
                let token = lab.server.admin_token();
                std::fs::write(&k, secret_canary_lab::lab::kubeconfig_yaml(&p.url, &token))?;
                k
            }
            None => lab.kubeconfig.clone(),
        };
        let config = lab.dir.join("bench-prober.yaml");
        let token_file = lab.dir.join("prober.token");
        let spec = ProberSpec {
            kubeconfig: &kubeconfig,
            vault_addr: &lab.vault.addr,
            token_file: &token_file,
            interval: opts.interval,
            deadline: Duration::from_secs(60),
            force_sync: true,
            stagger: opts.stagger,
        };
        let text = if opts.shares > 1 {
            scenario::shared_prober_yaml(&chains, opts.probes, &spec)
        } else {
            scenario::prober_yaml(&chains, &spec)
        };
        std::fs::write(&config, text)?;
        run_prober(tools, opts, &config, &lab.dir, proxy.as_ref()).await
    }
    .await;
    cancel.cancel();
    lab.stop().await;
    result
}

async fn run_prober(
    tools: &Tools,
    opts: &Options,
    config: &Path,
    dir: &Path,
    proxy: Option<&Proxy>,
) -> Result<Measurement> {
    let mut m = Measurement {
        probes: opts.probes,
        interval_s: opts.interval.as_secs_f64(),
        staggered: opts.stagger && scenario::staggered_cron(0, opts.interval).is_some(),
        chains: opts.probes.div_ceil(opts.shares.max(1)),
        eso_workers: opts.eso_workers,
        ..Default::default()
    };
    let mut prober = Prober::start(&tools.prober_bin, config, &dir.join("prober.log")).await?;
    let ready_limit = Duration::from_secs(60) + Duration::from_millis(100) * opts.probes as u32;
    m.ready_s = prober.wait_ready(ready_limit).await?.as_secs_f64();
    // The first runs start at once (interval cadence): the window starts here.
    m.at_ready = prober.stats();
    let counts_ready = proxy.map(Proxy::counts).unwrap_or_default();
    m.startup_requests = counts_ready.clone();
    let (text0, _) = prober.scrape().await?;
    let t0 = Instant::now();
    let runs_of = |t: &str| {
        ["success", "failure", "aborted"]
            .iter()
            .map(|r| stats::sum_family(t, "secret_canary_runs_total", &format!("result=\"{r}\"")))
            .sum::<f64>()
    };
    let base_runs = runs_of(&text0);
    eprintln!(
        "  {} probes ready after {:.1} s; rss {:.1} MiB",
        opts.probes,
        m.ready_s,
        m.at_ready.rss as f64 / 1048576.0
    );
    let mut last_text = text0.clone();
    loop {
        // A Prometheus-like scrape every 2 s (its cost is part of the prober's).
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Ok((t, _)) = prober.scrape().await {
            last_text = t;
        }
        let done = runs_of(&last_text) - base_runs;
        let enough = opts.runs.is_some_and(|r| done >= r as f64);
        let timed_out = opts.duration.is_some_and(|d| t0.elapsed() >= d)
            || t0.elapsed() > Duration::from_secs(1800);
        if enough || timed_out {
            break;
        }
    }
    m.window_s = t0.elapsed().as_secs_f64();
    m.at_end = prober.stats();
    if let Some(p) = proxy {
        m.window_requests = proxy::since(&p.counts(), &counts_ready);
    }
    let sum = |t: &str, fam: &str, f: &str| stats::sum_family(t, fam, f);
    m.runs = runs_of(&last_text) - base_runs;
    m.success = sum(&last_text, "secret_canary_runs_total", "result=\"success\"")
        - sum(&text0, "secret_canary_runs_total", "result=\"success\"");
    m.failure = sum(&last_text, "secret_canary_runs_total", "result=\"failure\"")
        - sum(&text0, "secret_canary_runs_total", "result=\"failure\"");
    m.skipped = sum(&last_text, "secret_canary_runs_total", "result=\"skipped\"");
    m.missed = sum(&last_text, "secret_canary_schedule_missed_ticks_total", "");
    let jitter = Histogram::from_exposition(&last_text, "secret_canary_schedule_jitter_seconds");
    m.jitter_p50 = jitter.quantile(0.5);
    m.jitter_p99 = jitter.quantile(0.99);
    m.jitter_n = jitter.count();
    // Forced runs (force_sync) have their own end-to-end family.
    let e2e = [
        "secret_canary_forced_end_to_end_duration_seconds",
        "secret_canary_end_to_end_duration_seconds",
    ]
    .iter()
    .map(|f| {
        Histogram::from_exposition(&last_text, f).since(&Histogram::from_exposition(&text0, f))
    })
    .find(|h| h.count() > 0.0)
    .unwrap_or_default();
    m.e2e_p50 = e2e.quantile(0.5);

    let (times, body) = prober
        .scrapes_apart(opts.scrapes, Duration::from_millis(20))
        .await?;
    m.scrape_bytes = body.len();
    m.series = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let lat: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    m.scrape_ms = summarize(&lat);
    prober.stop(Duration::from_secs(20)).await;
    eprintln!(
        "  {} probes: {:.0} runs in {:.0} s ({} ok), rss {:.1} MiB, cpu {:.1} ms/run, jitter p99 {:.1} ms, scrape p99 {:.1} ms",
        opts.probes,
        m.runs,
        m.window_s,
        m.success,
        m.at_end.rss as f64 / 1048576.0,
        m.cpu_per_run() * 1000.0,
        m.jitter_p99 * 1000.0,
        m.scrape_ms.p99
    );
    Ok(m)
}

/// Requests per run by verb, for the table.
pub fn per_run_by_verb(m: &Measurement) -> BTreeMap<String, f64> {
    m.window_requests
        .keys()
        .map(|v| (v.clone(), m.per_run(v)))
        .collect()
}
