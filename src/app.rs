//! The two drivers over the same parts: `run` (schedule every probe, export
//! metrics until a signal) and `once` (run the selected probes now, once,
//! for a report). Both start one `ProbeRunner` per probe and execute runs
//! through [`execute`], which records the outcome and logs it in a span.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cadence::Cadence;
use crate::config::{Config, KubernetesConfig, ProbeConfig};
use crate::http::{self, Exporter, ProbeBoard};
use crate::metrics::Metrics;
use crate::probe::cluster::Watches;
use crate::probe::{self, Outcome, ProbeRunner, RunProgress, RunResult};
use crate::progress::Display;
use crate::schedule::{self, Scheduler, SystemClock, Ticker};

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9850";
/// How long in-flight runs get to end after a shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long `once` waits for the watchers' first sync.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the exporter gets to finish in-flight scrapes at shutdown.
const EXPORTER_DRAIN: Duration = Duration::from_secs(2);

/// Why a driver could not do its job (run failures are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The file, or `inferred` for in-cluster / `$KUBECONFIG`.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    /// `--probe` named a probe the config does not have.
    #[error("unknown probe {name:?} (the config has: {known})")]
    UnknownProbe {
        /// The name given.
        name: String,
        /// The configured names.
        known: String,
    },
    /// A probe could not start its watchers.
    #[error(transparent)]
    ProbeStart(#[from] probe::Error),
    /// The config does not pass validation (it is normally loaded with
    /// [`Config::load`], which validates it).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The exporter failed.
    #[error(transparent)]
    Http(#[from] http::Error),
}

impl Error {
    /// The process exit code: 2 for usage and configuration errors, 1 else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Kubeconfig { .. } | Error::UnknownProbe { .. } | Error::Config(_) => 2,
            Error::Http(http::Error::Bind { .. }) => 2,
            _ => 1,
        }
    }
}

/// Options of `secret-canary run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Exporter address.
    pub listen: SocketAddr,
    /// How long in-flight runs get after the shutdown signal.
    pub grace: Duration,
    /// Bearer token required on `/metrics` and `/probes` (`None`: open).
    pub metrics_token: Option<String>,
    /// Run probes only while holding this Lease (`None`: always).
    pub leader_election: Option<crate::leader::LeaderElectionConfig>,
}

/// Options of `secret-canary once`.
#[derive(Debug, Clone, Default)]
pub struct OnceOptions {
    /// The probes to run (empty: all).
    pub probes: Vec<String>,
    /// How long to wait for the watchers' first sync before running anyway.
    pub ready_timeout: Option<Duration>,
    /// Force ESO's sync in every selected ESO probe (as `chain.force_sync`).
    pub force_sync: bool,
    /// Where to show the runs' progress (none: silent).
    pub progress: Option<Display>,
}

/// Build the Kubernetes client: `kubernetes.kubeconfig` if set, else what
/// kubectl would use (`$KUBECONFIG`, `~/.kube/config`, in-cluster).
///
/// `request_timeout` bounds connecting and sending; the response read is
/// left unbounded at this level because watch streams are long polls (the
/// watchers have their own idle timeout, and one-shot requests are wrapped
/// in timeouts by the probe engine).
pub async fn kube_client(cfg: &KubernetesConfig) -> Result<kube::Client, Error> {
    let mut kc = match &cfg.kubeconfig {
        Some(path) => {
            let err = |message: String| Error::Kubeconfig {
                path: path.display().to_string(),
                message,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kubeconfig {
            path: "inferred".into(),
            message: e.to_string(),
        })?,
    };
    let timeout = cfg.request_timeout();
    kc.connect_timeout = Some(timeout);
    kc.write_timeout = Some(timeout);
    kube::Client::try_from(kc).map_err(Error::KubeClient)
}

/// The parts every run needs.
#[derive(Clone)]
struct Probe {
    config: Arc<ProbeConfig>,
    runner: Arc<ProbeRunner>,
}

/// Start one runner per probe (their watchers stop when `cancel` fires).
async fn start_runners(
    probes: &[&ProbeConfig],
    client: &kube::Client,
    cancel: &CancellationToken,
) -> Result<Vec<Probe>, Error> {
    let mut started = Vec::with_capacity(probes.len());
    // One watch per watched thing for the whole process, shared by the
    // probes that follow it (the runners keep them alive).
    let watches = Watches::new(client.clone(), cancel.clone());
    for p in probes {
        let runner =
            ProbeRunner::start_shared((*p).clone(), &watches, cancel.child_token()).await?;
        started.push(Probe {
            config: Arc::new((*p).clone()),
            runner: Arc::new(runner),
        });
    }
    Ok(started)
}

fn board_for(probes: &[Probe]) -> ProbeBoard {
    let mut board = ProbeBoard::new();
    for p in probes {
        let runner = p.runner.clone();
        board.add((*p.config).clone(), move || runner.is_ready());
    }
    board
}

/// One run of one probe: a span carrying `probe` and `run_id`, the run
/// itself, then the outcome into the metrics and the board. `run` and
/// `once` both go through here.
async fn execute(
    probe: &Probe,
    metrics: &Metrics,
    board: &ProbeBoard,
    cancel: CancellationToken,
    progress: Option<&tokio::sync::watch::Sender<RunProgress>>,
) -> Outcome {
    let name = probe.config.name.as_str();
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("run", probe = name, run_id = %run_id);
    async {
        metrics.run_started(name);
        tracing::info!("run started");
        // The cluster's blocking signal goes to the metrics while the run goes.
        let mut blocked = probe.runner.blocked();
        let run = async {
            match progress {
                Some(tx) => probe.runner.run_observed(run_id.clone(), cancel, tx).await,
                None => probe.runner.run(run_id.clone(), cancel).await,
            }
        };
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                o = &mut run => break o,
                Ok(()) = blocked.changed() => {
                    let b = *blocked.borrow_and_update();
                    if let Some((stage, reason)) = b {
                        tracing::info!(stage = stage.as_str(), reason = reason.as_str(), "the cluster reports the run blocked");
                    }
                    metrics.set_blocked(name, b);
                }
            }
        };
        metrics.set_blocked(name, None);
        metrics.record_change_log_overflows(name, probe.runner.take_change_log_overflows());
        metrics.record_outcome(&probe.config, &outcome);
        board.record(&outcome);
        let e2e = crate::slo::end_to_end(&outcome).map(|d| d.as_secs_f64());
        match (outcome.result, outcome.failure) {
            (RunResult::Success, _) => tracing::info!(
                digest = outcome.digest.as_deref().unwrap_or(""),
                end_to_end_seconds = e2e,
                "run succeeded"
            ),
            (result, Some(f)) => tracing::warn!(
                result = result.as_str(),
                stage = f.stage.as_str(),
                reason = f.reason.as_str(),
                detail = outcome.detail.as_deref().unwrap_or(""),
                "run did not succeed"
            ),
            (result, None) => tracing::warn!(result = result.as_str(), "run did not succeed"),
        }
        outcome
    }
    .instrument(span)
    .await
}

/// Wait until every probe is ready, `timeout` passes or `cancel` fires.
/// Returns whether all became ready.
async fn wait_ready(probes: &[Probe], timeout: Duration, cancel: &CancellationToken) -> bool {
    let all_ready = || probes.iter().all(|p| p.runner.is_ready());
    let poll = async {
        while !all_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, poll) => r.is_ok(),
        _ = cancel.cancelled() => all_ready(),
    }
}

/// `secret-canary run`: schedule every probe and serve the exporter until
/// `shutdown` fires; then in-flight runs end `aborted` (they see the same
/// cancellation) and are recorded, within `opts.grace`.
pub async fn run(
    config: Config,
    opts: RunOptions,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Bind first: a taken port is a usage error worth failing on before any API call.
    let listener = http::bind(opts.listen).await?;
    let client = kube_client(&config.kubernetes).await?;
    let mut registry = Registry::default();
    let metrics = Metrics::for_config(&mut registry, &config);
    let leader_gauge = metrics.leader_gauge();
    let elector = match opts.leader_election.clone() {
        Some(le) => Some(crate::leader::Elector::start(
            client.clone(),
            le,
            leader_gauge,
            shutdown.clone(),
        )),
        None => {
            leader_gauge.set(1);
            None
        }
    };
    let leadership = elector.as_ref().map(|e| e.leadership());
    // A valid config gives every probe a cadence (its cron parsed once, on load).
    config.validate()?;
    let cadences: Vec<Cadence> = config.probes.iter().filter_map(|p| p.cadence()).collect();
    let all: Vec<&ProbeConfig> = config.probes.iter().collect();
    let probes = start_runners(&all, &client, &shutdown).await?;
    let board = Arc::new(board_for(&probes));

    let exporter_stop = CancellationToken::new();
    let mut exporter = tokio::spawn(
        Exporter::new(Arc::new(registry), board.clone())
            .with_metrics(&metrics)
            .with_bearer_token(opts.metrics_token.clone())
            .serve(listener, exporter_stop.clone()),
    );

    let mut scheduler = Scheduler::new(metrics.clone());
    for (probe, cadence) in probes.into_iter().zip(cadences) {
        let name = probe.config.name.clone();
        let (metrics_for_runs, board, cancel) = (metrics.clone(), board.clone(), shutdown.clone());
        let leadership = leadership.clone();
        let run_one = move |_tick: schedule::Tick| {
            let (probe, metrics, board, cancel) = (
                probe.clone(),
                metrics_for_runs.clone(),
                board.clone(),
                cancel.clone(),
            );
            // With leader election a run belongs to the current term: it is
            // aborted when leadership is lost, and followers do not run.
            let term = leadership.as_ref().map(|l| l.term());
            async move {
                let cancel = match term {
                    None => cancel,
                    Some(Some(term)) => term,
                    Some(None) => {
                        tracing::trace!(probe = %probe.config.name, "not the leader; tick not run");
                        return;
                    }
                };
                execute(&probe, &metrics, &board, cancel, None).await;
            }
        };
        scheduler.add(name, Ticker::new(cadence, Arc::new(SystemClock)), run_one);
    }
    let scheduled = scheduler.len();
    let mut drivers = spawn_scheduler(scheduler, shutdown.clone());
    tracing::info!(probes = scheduled, listen = %opts.listen, "prober running");

    // The exporter only stops early on an error; then the prober stops too,
    // since unexported probes are no use.
    let early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut exporter => Some(r),
    };
    if let Some(r) = early {
        shutdown.cancel();
        drain(&mut drivers, opts.grace).await;
        return match r {
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(())) => Err(Error::Http(http::Error::Serve(std::io::Error::other(
                "exporter stopped unexpectedly",
            )))),
            Err(e) => Err(Error::Http(http::Error::Serve(std::io::Error::other(
                e.to_string(),
            )))),
        };
    }

    tracing::info!(
        grace_seconds = opts.grace.as_secs_f64(),
        "shutting down: aborting in-flight runs"
    );
    drain(&mut drivers, opts.grace).await;
    // Only now that no run is in flight may a follower take over.
    if let Some(e) = elector {
        e.stop().await;
    }
    // The exporter outlives the runs so a last scrape can see the aborted ones.
    exporter_stop.cancel();
    match tokio::time::timeout(EXPORTER_DRAIN, exporter).await {
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => tracing::error!(error = %e, "exporter task failed"),
        Err(_) => tracing::warn!("exporter did not stop in time"),
        Ok(Ok(Ok(()))) => {}
    }
    tracing::info!("stopped");
    Ok(())
}

/// Run the scheduler on a thread of its own (a current-thread runtime
/// that only keeps the timer heap), spawning the runs on this runtime: ticks
/// are not delayed behind the runs' work on a busy runtime. The receiver
/// resolves when the scheduler has stopped and its in-flight runs ended.
fn spawn_scheduler(
    scheduler: Scheduler,
    shutdown: CancellationToken,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done, finished) = tokio::sync::oneshot::channel();
    let scheduler = scheduler.spawn_runs_on(tokio::runtime::Handle::current());
    let timer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (handoff, receive) = std::sync::mpsc::channel::<(Scheduler, CancellationToken)>();
    let thread = timer.map_err(|e| e.to_string()).and_then(|timer| {
        let done = done;
        std::thread::Builder::new()
            .name("secret-canary-scheduler".into())
            .spawn(move || {
                if let Ok((scheduler, shutdown)) = receive.recv() {
                    timer.block_on(scheduler.run(shutdown));
                }
                let _ = done.send(());
            })
            .map_err(|e| e.to_string())
    });
    match thread {
        Ok(_) => {
            // The thread is waiting on the hand-off; it cannot have gone.
            let _ = handoff.send((scheduler, shutdown));
            finished
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the scheduler thread; scheduling on the main runtime");
            let (done, finished) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                scheduler.run(shutdown).await;
                let _ = done.send(());
            });
            finished
        }
    }
}

/// Wait for the scheduler (and its in-flight runs) up to `grace`.
async fn drain(drivers: &mut tokio::sync::oneshot::Receiver<()>, grace: Duration) {
    if tokio::time::timeout(grace, drivers).await.is_err() {
        tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "runs did not end within the grace period; abandoning them"
        );
    }
}

/// `secret-canary once`: start the selected probes' runners, wait for their
/// watchers, run each once now (concurrently) and return the outcomes in
/// config order. The report and exit code are the caller's.
pub async fn once(
    config: &Config,
    opts: &OnceOptions,
    cancel: CancellationToken,
) -> Result<Vec<Outcome>, Error> {
    let config = &effective(config, opts);
    let selected = select(config, &opts.probes)?;
    let client = kube_client(&config.kubernetes).await?;
    let mut registry = Registry::default();
    let metrics = Metrics::for_config(&mut registry, config);
    let watchers = cancel.child_token();
    let probes = start_runners(&selected, &client, &watchers).await?;
    let board = board_for(&probes);
    let display = opts.progress.as_ref();

    let timeout = opts.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT);
    if let Some(d) = display {
        d.note(&format!(
            "waiting for the watchers of {} probe(s) to sync",
            probes.len()
        ));
    }
    if !wait_ready(&probes, timeout, &cancel).await {
        tracing::warn!(
            not_ready = board.not_ready().join(", "),
            timeout_seconds = timeout.as_secs_f64(),
            "watchers not synced in time; running anyway"
        );
    }
    let outcomes = futures::future::join_all(probes.iter().map(|p| {
        let (metrics, board, cancel) = (&metrics, &board, cancel.clone());
        async move {
            let Some(display) = display else {
                return execute(p, metrics, board, cancel, None).await;
            };
            let (tx, rx) = tokio::sync::watch::channel(RunProgress::default());
            let tracked = display.track(&p.config, rx);
            let outcome = execute(p, metrics, board, cancel, Some(&tx)).await;
            // Dropping the sender tells the display the run is over.
            drop(tx);
            display.finish(tracked, &outcome).await;
            outcome
        }
    }))
    .await;
    if let Some(d) = display {
        d.close();
    }
    watchers.cancel();
    Ok(outcomes)
}

/// The config `once` runs: `--force-sync` turns on `chain.force_sync` for
/// every probe with an ExternalSecret (the others have nothing to force).
fn effective(config: &Config, opts: &OnceOptions) -> Config {
    let mut config = config.clone();
    if opts.force_sync {
        for p in &mut config.probes {
            if p.chain.external_secret.is_some() {
                p.chain.force_sync = true;
            }
        }
    }
    config
}

/// The probes `names` selects (all when empty), in config order.
fn select<'c>(config: &'c Config, names: &[String]) -> Result<Vec<&'c ProbeConfig>, Error> {
    for name in names {
        if config.probe(name).is_none() {
            return Err(Error::UnknownProbe {
                name: name.clone(),
                known: config
                    .probes
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(config
        .probes
        .iter()
        .filter(|p| names.is_empty() || names.contains(&p.name))
        .collect())
}

/// Cancel `cancel` on the first SIGTERM or SIGINT; exit the process at once
/// (status 130) on the second.
pub fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("signal received; shutting down (a second signal exits at once)");
        cancel.cancel();
        wait_signal().await;
        tracing::warn!("second signal; exiting now");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the prober");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selecting_an_unknown_probe_is_a_usage_error() {
        let config = Config::from_yaml(crate::metrics::tests::TWO_PROBES, "t.yaml").unwrap();
        let e = select(&config, &["nope".into()]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("eso-env, bank-vaults"), "{e}");
        let names: Vec<_> = select(&config, &["bank-vaults".into()])
            .unwrap()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["bank-vaults"]);
        assert_eq!(select(&config, &[]).unwrap().len(), 2);
    }
}
