//! `secret-canary-bench`: the benchmarks of issue 6, run against the lab
//! (in this process) and a real OpenBao, measuring the release-built
//! `secret-canary run` as a child process. Writes `bench/results.md`.
//!
//! ```text
//! accuracy  prober runs vs the lab's ground truth, and bench/baseline.py
//!           (kubectl get every second) on the same chains
//! cost      RSS, CPU, API requests by verb, /metrics latency at 1/10/100 probes
//! scale     1,000 probes on a few-second schedule: jitter, missed/skipped ticks
//! real      the real cluster tier: 10 probes scored against the audit log,
//!           the prober's API requests by verb, time to detect real faults
//! ```
//!
//! `scripts/bench.sh` builds and runs it; `--quick` is a smoke run.

mod accuracy;
mod cost;
mod prober;
mod proxy;
mod real;
mod report;
mod scenario;
mod stats;
mod svg;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use secret_canary_lab::lab::{Lab, LabOptions};

use crate::scenario::{Chain, EsoAuth};

/// Command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "secret-canary-bench",
    about = "Benchmarks of secret-canary against the lab"
)]
pub struct Args {
    /// Workspace root (binaries under target/release, bench/baseline.py).
    #[arg(long, default_value = ".")]
    pub root: PathBuf,
    /// Where the markdown results go.
    #[arg(long, default_value = "bench/results.md")]
    pub out: PathBuf,
    /// Scratch directory for the labs (kept for post-mortems).
    #[arg(long, default_value = "target/bench")]
    pub work: PathBuf,
    /// Phases to run (`real` needs the Go components of
    /// `scripts/build-real.sh`; it is skipped with a message without them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "accuracy,cost,scale,real"
    )]
    pub phases: Vec<String>,
    /// Small sizes: a smoke run of every phase in a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Prober runs scored for accuracy.
    #[arg(long, default_value_t = 210)]
    pub accuracy_runs: usize,
    /// Copies of each chain variant in the accuracy lab.
    #[arg(long, default_value_t = 2)]
    pub accuracy_copies: usize,
    /// Interval of the accuracy probes.
    #[arg(long, default_value = "7300ms", value_parser = humantime::parse_duration)]
    pub accuracy_interval: Duration,
    /// Baseline runs (kubectl polling), on the same chains.
    #[arg(long, default_value_t = 60)]
    pub baseline_runs: usize,
    /// Probe counts of the cost phase.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub cost_probes: Vec<usize>,
    /// Runs per probe in each cost measurement.
    #[arg(long, default_value_t = 10)]
    pub cost_runs_per_probe: usize,
    /// Interval of the cost probes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub cost_interval: Duration,
    /// Timed /metrics scrapes per cost measurement.
    #[arg(long, default_value_t = 300)]
    pub scrapes: usize,
    /// Probes in the scale phase.
    #[arg(long, default_value_t = 1000)]
    pub scale_probes: usize,
    /// Interval of the scale probes.
    /// Interval of the scale probes; whole seconds dividing a minute are
    /// staggered with cron schedules (probe i at second i mod interval).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub scale_interval: Duration,
    /// Probes per chain in the scale phase (they take turns on it): the lab's
    /// thousand canary processes, not the prober, limit a 2-core machine.
    #[arg(long, default_value_t = 10)]
    pub scale_shares: usize,
    /// How long the scale phase runs its probes.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub scale_duration: Duration,
    /// Reconcile workers of the lab's ESO (its `--concurrent`) in the cost
    /// and scale phases. Upstream's default, 1, completes about 16 syncs a
    /// second here: fewer than the scale phase's 33 runs a second (and the
    /// 100-probe cost run's 20) ask, so with 1 the lab, not the prober,
    /// would be measured. The accuracy phase keeps ESO's default.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub eso_workers: u16,
    /// How long the real tier's probes run.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub real_duration: Duration,
    /// Interval of the real tier's probes.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub real_interval: Duration,
    /// The real tier's node agent sync period (Secret volume refresh; the
    /// kubelet's default is 1 min).
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub node_sync_period: Duration,
    /// Leave out the real tier's time-to-detect faults.
    #[arg(long)]
    pub skip_detect: bool,
    /// Build profile of the measured `secret-canary` (target/<profile>).
    #[arg(long, default_value = "release")]
    pub profile: String,
    /// kubectl for the baseline.
    #[arg(long, default_value = "kubectl")]
    pub kubectl: PathBuf,
    /// Python for the baseline.
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// Paths of the programs the benchmark runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `target/release/secret-canary` (measured, and the canary workload).
    pub prober_bin: PathBuf,
    /// `bench/baseline.py`.
    pub baseline_script: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
    /// python3.
    pub python: String,
    /// OpenBao's CLI.
    pub bao: PathBuf,
}

/// Start a lab with a generated scenario in `dir` (emptied first) and wait
/// until every canary Deployment is rolled out.
pub async fn start_lab(
    tools: &Tools,
    dir: &Path,
    chains: &[Chain],
    knobs: &[(&str, String)],
    refresh_interval: &str,
    auth: EsoAuth,
    eso_workers: usize,
) -> Result<Lab> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let file = dir.join("scenario.yaml");
    std::fs::write(
        &file,
        scenario::scenario_yaml(chains, knobs, refresh_interval, auth),
    )?;
    let mut opts = LabOptions::new(dir.join("lab"), &tools.prober_bin);
    opts.scenario = Some(file);
    opts.eso_workers = eso_workers;
    let started = Instant::now();
    let lab = Lab::start(opts).await.context("starting the lab")?;
    if auth == EsoAuth::Token {
        let body = serde_json::json!({
            "id": scenario::ESO_TOKEN, "policies": ["read-canary"], "ttl": "768h", "no_parent": true,
        });
        if let Err(e) = lab
            .bao
            .call(reqwest::Method::POST, "auth/token/create", Some(body))
            .await
        {
            lab.stop().await;
            bail!("creating ESO's OpenBao token: {e}");
        }
        // ESO's first syncs (before the token existed) failed and back off;
        // any knob change makes the lab's ESO reconcile everything at once.
        let knob = secret_canary_lab::faults::Knob::EsoLatency;
        lab.knobs.set_latency(knob, lab.knobs.latency(knob));
    }
    let limit = Duration::from_secs(90) + Duration::from_millis(400) * chains.len() as u32;
    let api: Api<Deployment> = Api::namespaced(lab.client(), scenario::NAMESPACE);
    loop {
        let done = match api.list(&ListParams::default()).await {
            Ok(list) => list.items.iter().filter(|d| rolled_out(d)).count(),
            Err(_) => 0,
        };
        if done >= chains.len() {
            break;
        }
        if started.elapsed() > limit {
            lab.stop().await;
            bail!(
                "only {done} of {} canary Deployments rolled out within {limit:?}",
                chains.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "lab with {} chains up in {:.1} s ({})",
        chains.len(),
        started.elapsed().as_secs_f64(),
        lab.dir.display()
    );
    Ok(lab)
}

/// `kubectl rollout status`'s success condition.
fn rolled_out(d: &Deployment) -> bool {
    let Some(st) = &d.status else {
        return false;
    };
    let want = d.spec.replicas.unwrap_or(1);
    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On SIGINT/SIGTERM the run is dropped: each Lab kills its OpenBao and
    // canary processes on drop, and the prober child is killed on drop.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            _ = stop_signal() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(mut args: Args) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.quick {
        args.accuracy_runs = args.accuracy_runs.min(24);
        args.accuracy_copies = 1;
        args.baseline_runs = args.baseline_runs.min(6);
        args.cost_probes = vec![1, 10];
        args.cost_runs_per_probe = args.cost_runs_per_probe.min(3);
        args.scrapes = args.scrapes.min(50);
        args.scale_probes = args.scale_probes.min(50);
        args.scale_duration = args.scale_duration.min(Duration::from_secs(30));
        args.real_duration = args.real_duration.min(Duration::from_secs(120));
    }
    let root = args.root.canonicalize().context("workspace root")?;
    let tools = Tools {
        prober_bin: root
            .join("target")
            .join(&args.profile)
            .join("secret-canary"),
        baseline_script: root.join("bench/baseline.py"),
        kubectl: args.kubectl.clone(),
        python: args.python.clone(),
        bao: secret_canary_lab::openbao::find_bao().context("finding OpenBao's bao")?,
    };
    if !tools.prober_bin.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` (scripts/bench.sh does; `--profile debug`: `cargo build --bins`)",
            tools.prober_bin.display()
        );
    }
    let work = root.join(&args.work);
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let mut results = report::Results::new(&root, &args).await;

    if args.phases.iter().any(|p| p == "accuracy") {
        eprintln!("== accuracy");
        let opts = accuracy::Options {
            runs: args.accuracy_runs,
            copies: args.accuracy_copies,
            interval: args.accuracy_interval,
            baseline_runs: args.baseline_runs,
        };
        results.accuracy = Some(accuracy::run(&tools, &opts, &accuracy::dir(&work)).await?);
        write_results(&root, &args, &work, &mut results, started)?;
    }
    if args.phases.iter().any(|p| p == "cost") {
        eprintln!("== cost");
        for n in &args.cost_probes {
            let opts = cost::Options {
                probes: *n,
                interval: args.cost_interval,
                runs: Some(n * args.cost_runs_per_probe),
                duration: None,
                scrapes: args.scrapes,
                count_requests: true,
                readiness_period: "2s",
                stagger: false,
                shares: 1,
                eso_workers: args.eso_workers.into(),
            };
            let m = cost::measure(&tools, &opts, &work.join(format!("cost-{n}"))).await?;
            results.cost.push(m);
            write_results(&root, &args, &work, &mut results, started)?;
        }
    }
    if args.phases.iter().any(|p| p == "scale") {
        eprintln!("== scale");
        let opts = cost::Options {
            probes: args.scale_probes,
            interval: args.scale_interval,
            runs: None,
            duration: Some(args.scale_duration),
            // A thousand probes' exposition is megabytes; 100 scrapes still
            // give a p99 that is not just the slowest one.
            scrapes: args.scrapes.min(100),
            count_requests: false,
            // A thousand canaries probed every 10 s is still 100 probes a second.
            readiness_period: "10s",
            stagger: true,
            shares: args.scale_shares,
            eso_workers: args.eso_workers.into(),
        };
        results.scale = Some(cost::measure(&tools, &opts, &work.join("scale")).await?);
    }
    if args.phases.iter().any(|p| p == "real") {
        eprintln!("== real");
        match real::missing() {
            Some(why) => {
                eprintln!("SKIP (real cluster tier): {why}");
                results.real_skipped = Some(why);
            }
            None => {
                let opts = real::Options {
                    duration: args.real_duration,
                    interval: args.real_interval,
                    sync_period: args.node_sync_period,
                    detect: !args.skip_detect,
                    profile: args.profile.clone(),
                };
                results.real = Some(real::run(&tools, &opts, &real::dir(&work)).await?);
            }
        }
    }
    write_results(&root, &args, &work, &mut results, started)?;
    eprintln!(
        "wrote {} in {:.0} s",
        root.join(&args.out).display(),
        results.seconds
    );
    Ok(())
}

/// Write what is known so far (after every phase, so an interrupted run
/// keeps its finished phases).
fn write_results(
    root: &Path,
    args: &Args,
    work: &Path,
    results: &mut report::Results,
    started: Instant,
) -> Result<()> {
    results.seconds = started.elapsed().as_secs_f64();
    let out = root.join(&args.out);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let sim_ran = ["accuracy", "cost", "scale"]
        .iter()
        .any(|p| args.phases.iter().any(|x| x == p));
    let existing = std::fs::read_to_string(&out).ok();
    match existing.filter(|_| !sim_ran) {
        // A run of the real tier alone: replace its section, keep the rest.
        Some(text) => std::fs::write(&out, results.splice_real(&text))?,
        None => std::fs::write(&out, results.markdown())?,
    }
    // The pictures go next to the results (bench/accuracy.svg, bench/footprint.svg).
    let dir = out.parent().unwrap_or(root);
    if let Some(a) = &results.accuracy {
        std::fs::write(
            dir.join("accuracy.svg"),
            svg::accuracy(Some(a), results.real.as_ref()),
        )?;
    }
    if let Some(r) = &results.real {
        std::fs::write(dir.join("accuracy-real.svg"), svg::accuracy(None, Some(r)))?;
    }
    if !results.cost.is_empty() || results.scale.is_some() {
        std::fs::write(
            dir.join("footprint.svg"),
            svg::footprint(&results.cost, results.scale.as_ref()),
        )?;
    }
    std::fs::write(
        work.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    Ok(())
}
