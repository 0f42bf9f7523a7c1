//! `secret-canary-lab`: start the lab, or flip its faults and knobs from
//! another shell. Parses the command line and hands over to the library.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use secret_canary_lab::faults::{Fault, Knob, Latency};
use secret_canary_lab::lab::{Lab, LabInfo, LabOptions};

#[derive(Parser)]
#[command(
    name = "secret-canary-lab",
    version,
    about = "A loopback Kubernetes lab with ESO, Reloader, rollout, kubelet and Bank-Vaults behaviours, on a real OpenBao"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ClusterKind {
    /// The simulated cluster.
    Sim,
    /// The real upstream control plane.
    Real,
}

#[derive(Subcommand)]
enum Command {
    /// Start OpenBao, the API server and the controllers; run until SIGTERM/SIGINT.
    Up {
        /// Working directory (kubeconfig, vault.env, truth.jsonl, prober.yaml, logs).
        #[arg(long)]
        dir: PathBuf,
        /// A scenario file (default: the reference scenario).
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// API server port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 0)]
        api_port: u16,
        /// The `secret-canary` binary for canary Pods (default: next to this binary).
        #[arg(long)]
        canary_bin: Option<PathBuf>,
        /// `sim`: the lab's own API server and simulated controllers (Rust only,
        /// starts in about 2 s). `real`: etcd, kube-apiserver,
        /// kube-controller-manager and kube-scheduler built from their Go
        /// modules by scripts/build-real.sh (RBAC, audit log, TLS).
        #[arg(long, value_enum, default_value_t = ClusterKind::Sim)]
        cluster: ClusterKind,
        /// With `--cluster real`: start the control plane and OpenBao only (no
        /// node agent, ESO, Reloader, Bank-Vaults webhook or scenario).
        #[arg(long)]
        control_plane_only: bool,
        /// With `--cluster real`: the Bank-Vaults webhook's failurePolicy
        /// (`Ignore`, the chart's default, or `Fail`), or `off` (its chain is
        /// then left out of the scenario).
        #[arg(long, default_value = "Ignore", value_parser = ["Ignore", "Fail", "off"])]
        webhook_failure_policy: String,
        /// With `--cluster real`: the node agent's sync period, after which
        /// (plus up to 50 % jitter) Secret volumes are refreshed. The lab's
        /// default is short for tests; the upstream kubelet's is `1m` (use it
        /// for benchmarks).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        node_sync_period: Duration,
        /// With `--cluster real`: advertise Pods at addresses this host
        /// cannot reach (IPv6 discard prefix 100::/64), as a prober outside a cluster's
        /// network sees them; the API server reaches them (Pod proxy, logs)
        /// through the lab's egress proxy (EgressSelectorConfiguration).
        #[arg(long)]
        unroutable_pods: bool,
        /// ESO's `--concurrent`: how many ExternalSecrets its controller
        /// reconciles at once (never one on two workers at once). Upstream's
        /// default, 1, syncs them one after another: about 16 syncs a second
        /// in the sim lab on 2 cores.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        eso_concurrent: u16,
    },
    /// Switch a fault on or off in a running lab.
    Fault {
        /// The running lab's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Fault name (simulated cluster: eso-stall, eso-error, reloader-absent,
        /// rollout-stuck, canary-crash, ...; real cluster: eso-stop, eso-token-revoke,
        /// secret-delete, reloader-stop, canary-crash, image-unpullable, apiserver-down,
        /// webhook-down, webhook-down-fail, prober-role-no-patch).
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Set a latency knob in a running lab (`250ms` or a range `100ms..2s`;
    /// `eso-clock-skew` takes a signed offset such as `-1500ms` or `2s`).
    Knob {
        /// The running lab's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Knob name (eso-latency, reloader-latency, volume-sync-latency, ...).
        name: Knob,
        /// The latency (or offset).
        #[arg(allow_hyphen_values = true)]
        value: Latency,
    },
    /// Print a running lab's faults and knobs.
    Status {
        /// The running lab's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            dir,
            scenario,
            api_port,
            canary_bin,
            cluster: ClusterKind::Sim,
            eso_concurrent,
            ..
        } => up(dir, scenario, api_port, canary_bin, eso_concurrent.into()).await,
        Command::Up {
            dir,
            scenario,
            api_port,
            canary_bin,
            cluster: ClusterKind::Real,
            control_plane_only,
            webhook_failure_policy,
            node_sync_period,
            unroutable_pods,
            eso_concurrent,
        } => {
            let canary_bin = if control_plane_only {
                None
            } else {
                match canary_bin.or_else(|| default_canary_bin().ok()) {
                    Some(p) => Some(p),
                    None => {
                        eprintln!("secret-canary-lab: no `secret-canary` binary next to this one (nor --canary-bin): starting the control plane only (no node agent, ESO, Reloader or scenario)");
                        None
                    }
                }
            };
            let mut opts = secret_canary_lab::real::RealOptions::new(&dir);
            opts.api_port = api_port;
            opts.canary_bin = canary_bin;
            opts.webhook_failure_policy =
                (webhook_failure_policy != "off").then_some(webhook_failure_policy);
            opts.node.volume_sync_period = node_sync_period;
            opts.unroutable_pods = unroutable_pods;
            opts.scenario = scenario;
            opts.eso_concurrent = eso_concurrent.into();
            up_real(opts).await
        }
        Command::Fault { dir, name, state } if is_real(&dir) => {
            real_fault(&dir, &name, &state).await
        }
        Command::Fault { dir, name, state } => match name.parse::<Fault>() {
            Err(e) => Err(anyhow::anyhow!("{e}")),
            Ok(name) => {
                admin(
                    &dir,
                    reqwest::Method::PUT,
                    &format!("faults/{name}"),
                    Some(state),
                )
                .await
            }
        },
        Command::Knob { dir, name, value } => {
            admin(
                &dir,
                reqwest::Method::PUT,
                &format!("knobs/{name}"),
                Some(value.to_string()),
            )
            .await
        }
        Command::Status { dir } => admin(&dir, reqwest::Method::GET, "knobs", None).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("secret-canary-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn up(
    dir: PathBuf,
    scenario: Option<PathBuf>,
    api_port: u16,
    canary_bin: Option<PathBuf>,
    eso_workers: usize,
) -> anyhow::Result<()> {
    let canary_bin = match canary_bin {
        Some(p) => p,
        None => default_canary_bin()?,
    };
    let mut opts = LabOptions::new(&dir, canary_bin);
    opts.scenario = scenario;
    opts.api_port = api_port;
    opts.eso_workers = eso_workers;
    let lab = Lab::start(opts).await?;
    println!("lab is up");
    println!("  kubeconfig   {}", lab.kubeconfig.display());
    println!("  API server   {}", lab.api_url);
    println!(
        "  OpenBao      {}   (source {}/vault.env for address and token)",
        lab.vault.addr,
        lab.dir.display()
    );
    println!("  ground truth {}/truth.jsonl", lab.dir.display());
    if let Some(p) = &lab.prober_config {
        println!("  prober       secret-canary run --config {}", p.display());
    }
    println!(
        "  faults       secret-canary-lab fault --dir {} eso-stall on|off",
        lab.dir.display()
    );
    println!("stop with Ctrl-C or SIGTERM");
    wait_for_signal().await;
    println!("stopping the lab");
    lab.stop().await;
    Ok(())
}

async fn up_real(opts: secret_canary_lab::real::RealOptions) -> anyhow::Result<()> {
    use secret_canary_lab::real::lab::RealLab;
    // Stop what was started on SIGTERM/SIGINT during the start too (dropping
    // the start kills every process it started).
    let lab = tokio::select! {
        lab = RealLab::start(opts) => lab?,
        _ = wait_for_signal() => anyhow::bail!("interrupted while starting (everything started was stopped)"),
    };
    println!(
        "lab is up (real cluster: control plane ready in {:.1} s, everything in {:.1} s)",
        lab.cluster.ready_after.as_secs_f64(),
        lab.ready_after.as_secs_f64()
    );
    println!("  kubeconfig   {}", lab.cluster.kubeconfig.display());
    println!("  API server   {}", lab.cluster.api_url);
    println!(
        "  OpenBao      {}   (source {}/vault.env for address and token)",
        lab.vault.addr,
        lab.dir.display()
    );
    println!("  audit log    {}", lab.cluster.audit_log.display());
    if let Some(p) = &lab.prober_config {
        println!("  prober       secret-canary run --config {}", p.display());
    }
    for s in &lab.skipped {
        println!("  left out     {s}");
    }
    for p in &lab.cluster.procs {
        println!(
            "  {:<24} pid {:<8} log {}",
            p.name,
            p.pid(),
            p.log.display()
        );
    }
    println!("stop with Ctrl-C or SIGTERM");
    let result = tokio::select! {
        _ = wait_for_signal() => Ok(()),
        e = lab.exited() => Err(anyhow::Error::from(e)),
    };
    println!("stopping the lab");
    lab.stop().await;
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn default_canary_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    if let Some(dir) = me.parent() {
        let p = dir.join("secret-canary");
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!("no `secret-canary` binary next to {}; build it (`cargo build --bin secret-canary`) or pass --canary-bin", me.display())
}

async fn admin(
    dir: &Path,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
) -> anyhow::Result<()> {
    let info_path = dir.join("lab.json");
    let text = std::fs::read_to_string(&info_path)
        .map_err(|e| anyhow::anyhow!("no running lab in {}: {e}", dir.display()))?;
    if let Ok(real) = serde_json::from_str::<secret_canary_lab::real::lab::RealLabInfo>(&text) {
        if real.cluster == "real" {
            return real_admin(&real, path).await;
        }
    }
    let info: LabInfo =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", info_path.display()))?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut req = client
        .request(method, format!("{}/lab/{path}", info.api_url))
        .bearer_auth(&info.admin_token);
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("lab at {} is not answering: {e}", info.api_url))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        anyhow::bail!("{status}: {text}");
    }
    if !text.trim().is_empty() {
        println!("{text}");
    }
    Ok(())
}

/// `fault`, `knob` and `status` against a real-cluster lab: faults are
/// made by real means by the `up` process (its control endpoint); there are
/// no latency knobs.
fn real_info(dir: &Path) -> Option<secret_canary_lab::real::lab::RealLabInfo> {
    let text = std::fs::read_to_string(dir.join("lab.json")).ok()?;
    serde_json::from_str::<secret_canary_lab::real::lab::RealLabInfo>(&text)
        .ok()
        .filter(|i| i.cluster == "real")
}

fn is_real(dir: &Path) -> bool {
    real_info(dir).is_some()
}

async fn real_fault(dir: &Path, name: &str, state: &str) -> anyhow::Result<()> {
    let info = real_info(dir)
        .ok_or_else(|| anyhow::anyhow!("no running real lab in {}", dir.display()))?;
    let on = match state {
        "on" => true,
        "off" => false,
        other => anyhow::bail!("fault state must be on or off, not {other}"),
    };
    secret_canary_lab::real::faults::set(&info, name, on).await?;
    println!("fault {name} {state}");
    Ok(())
}

async fn real_admin(
    info: &secret_canary_lab::real::lab::RealLabInfo,
    path: &str,
) -> anyhow::Result<()> {
    if path != "knobs" {
        anyhow::bail!(
            "the real cluster (--cluster real) has no latency knobs: its faults are made by real means (stop a process, revoke a token, delete an object, edit a Role); `fault` supports: {}; and `status`", secret_canary_lab::real::faults::SUPPORTED.join(", ")
        );
    }
    println!(
        "cluster real   API server {}   kubeconfig {}",
        info.api_url, info.kubeconfig
    );
    for c in &info.components {
        // Signal 0 only checks that the process exists.
        let alive = i32::try_from(c.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        println!(
            "  {:<24} pid {:<8} {:<8} log {}",
            c.name,
            c.pid,
            if alive { "running" } else { "gone" },
            c.log
        );
    }
    match secret_canary_lab::real::faults::status(info).await {
        Ok(text) => println!("{text}"),
        Err(e) => println!("  faults: {e}"),
    }
    Ok(())
}
