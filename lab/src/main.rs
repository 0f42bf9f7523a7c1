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
    },
    /// Switch a fault on or off in a running lab.
    Fault {
        /// The running lab's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Fault name (eso-stall, eso-error, reloader-absent, rollout-stuck, canary-crash, ...).
        name: Fault,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Set a latency knob in a running lab (`250ms` or a range `100ms..2s`).
    Knob {
        /// The running lab's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Knob name (eso-latency, reloader-latency, volume-sync-latency, ...).
        name: Knob,
        /// The latency.
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
        } => up(dir, scenario, api_port, canary_bin).await,
        Command::Fault { dir, name, state } => {
            admin(
                &dir,
                reqwest::Method::PUT,
                &format!("faults/{name}"),
                Some(state),
            )
            .await
        }
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
) -> anyhow::Result<()> {
    let canary_bin = match canary_bin {
        Some(p) => p,
        None => default_canary_bin()?,
    };
    let mut opts = LabOptions::new(&dir, canary_bin);
    opts.scenario = scenario;
    opts.api_port = api_port;
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
