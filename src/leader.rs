//! Leader election for running several prober replicas: only the holder of
//! a `coordination.k8s.io/v1` Lease runs probes; the others keep their
//! watchers warm and take over when the holder stops renewing.
//!
//! The protocol is client-go's: acquire or renew with a `replace` carrying
//! the Lease's resourceVersion (optimistic concurrency), treat a Lease held
//! by another as valid until it has not changed for `leaseDurationSeconds`
//! of *our* monotonic clock (no trust in other clocks), and step down when
//! a renewal has not succeeded within `renew_deadline`, which is shorter
//! than the lease: the old leader stops probing before anyone may take over.

use std::time::{Duration, Instant};

use crate::metrics::FlagGauge;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Timeout of each Lease request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `secret-canary run` flags of leader election.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderElectArgs {
    /// Run probes only while holding a Lease, so several replicas never
    /// probe at the same time.
    #[arg(long, env = "SECRET_CANARY_LEADER_ELECT")]
    pub leader_elect: bool,
    /// The Lease's name.
    #[arg(
        long,
        default_value = "secret-canary",
        env = "SECRET_CANARY_LEASE_NAME"
    )]
    pub leader_elect_lease_name: String,
    /// The Lease's namespace (default: the kube client's namespace, i.e.
    /// the Pod's own in-cluster).
    #[arg(long, env = "SECRET_CANARY_LEASE_NAMESPACE")]
    pub leader_elect_lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: `$POD_NAME` or the
    /// host name, plus a random suffix).
    #[arg(long, env = "SECRET_CANARY_LEADER_IDENTITY")]
    pub leader_elect_identity: Option<String>,
    /// How long a Lease stays valid without renewal: the worst-case
    /// failover time after a leader dies.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// A leader that could not renew for this long stops probing (must be
    /// shorter than the lease duration).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often to renew, or to try to acquire.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub leader_elect_retry_period: Duration,
}

/// Why the leader election flags are unusable.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {message}")]
pub struct ArgsError {
    /// The flag at fault.
    pub flag: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A validated leader election setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// The Lease's name.
    pub lease_name: String,
    /// Its namespace; `None`: the kube client's default namespace.
    pub lease_namespace: Option<String>,
    /// Our holderIdentity.
    pub identity: String,
    /// leaseDurationSeconds.
    pub lease_duration: Duration,
    /// Step down when renewals failed for this long.
    pub renew_deadline: Duration,
    /// Renew / retry period.
    pub retry_period: Duration,
}

impl LeaderElectArgs {
    /// The election setup when `--leader-elect` is given, checked.
    pub fn config(&self) -> Result<Option<LeaderElectionConfig>, ArgsError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let err = |flag, message: String| Err(ArgsError { flag, message });
        if !is_dns_subdomain(&self.leader_elect_lease_name) {
            return err(
                "leader-elect-lease-name",
                format!(
                    "{:?} is not a valid Kubernetes name",
                    self.leader_elect_lease_name
                ),
            );
        }
        if let Some(ns) = &self.leader_elect_lease_namespace {
            if !is_dns_subdomain(ns) || ns.contains('.') {
                return err(
                    "leader-elect-lease-namespace",
                    format!("{ns:?} is not a valid namespace"),
                );
            }
        }
        let (lease, renew, retry) = (
            self.leader_elect_lease_duration,
            self.leader_elect_renew_deadline,
            self.leader_elect_retry_period,
        );
        if lease < Duration::from_secs(1) || lease.subsec_nanos() != 0 {
            return err(
                "leader-elect-lease-duration",
                "must be whole seconds, at least 1s (it is leaseDurationSeconds)".into(),
            );
        }
        if renew.is_zero() || renew >= lease {
            return err(
                "leader-elect-renew-deadline",
                "must be above 0 and below the lease duration".into(),
            );
        }
        if retry.is_zero() || retry >= renew {
            return err(
                "leader-elect-retry-period",
                "must be above 0 and below the renew deadline".into(),
            );
        }
        let identity = match &self.leader_elect_identity {
            Some(id) if id.trim().is_empty() => {
                return err("leader-elect-identity", "must not be empty".into())
            }
            Some(id) => id.clone(),
            None => default_identity(),
        };
        Ok(Some(LeaderElectionConfig {
            lease_name: self.leader_elect_lease_name.clone(),
            lease_namespace: self.leader_elect_lease_namespace.clone(),
            identity,
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
        }))
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !p.starts_with('-')
                && !p.ends_with('-')
        })
}

/// `$POD_NAME` (or the host name) plus a random suffix, as client-go does:
/// a restarted replica is a new candidate, not the old holder.
fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "secret-canary".into());
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}_{}", &id[..8])
}

/// Whether this replica may run probes now, and the cancellation of its
/// current term (fired when leadership is lost or the prober stops).
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<Option<CancellationToken>>,
}

impl Leadership {
    /// The current term's token while leading; `None` as a follower.
    pub fn term(&self) -> Option<CancellationToken> {
        self.rx.borrow().clone().filter(|t| !t.is_cancelled())
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.term().is_some()
    }

    /// Wait until this replica leads (for tests and start-up logs).
    pub async fn wait_leader(&mut self) {
        while !self.is_leader() {
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A running election. [`Elector::stop`] ends it and hands the Lease over.
pub struct Elector {
    leadership: Leadership,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Elector {
    /// Start campaigning for the Lease. Terms are children of `shutdown`,
    /// so runs of a term also end on shutdown.
    pub fn start(
        client: kube::Client,
        config: LeaderElectionConfig,
        gauge: FlagGauge,
        shutdown: CancellationToken,
    ) -> Elector {
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let ns = config
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let api: Api<Lease> = Api::namespaced(client, &ns);
        tracing::info!(
            lease = %config.lease_name,
            namespace = %ns,
            identity = %config.identity,
            lease_duration_seconds = config.lease_duration.as_secs(),
            "leader election: campaigning"
        );
        let task = tokio::spawn(campaign(api, config, gauge, tx, shutdown, stop.clone()));
        Elector {
            leadership: Leadership { rx },
            stop,
            task,
        }
    }

    /// The handle the schedulers consult before each run.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Stop campaigning; a leader releases the Lease so a follower takes
    /// over at once. Call after in-flight runs have ended.
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(REQUEST_TIMEOUT * 2, self.task)
            .await
            .is_err()
        {
            tracing::warn!("leader election did not stop in time");
        }
    }
}

/// The Lease as last seen, and when (our clock) it last changed.
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>, Option<String>)>,
    at: Instant,
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Another replica holds a valid Lease, or won a race.
    Other,
}

async fn campaign(
    api: Api<Lease>,
    cfg: LeaderElectionConfig,
    gauge: FlagGauge,
    tx: watch::Sender<Option<CancellationToken>>,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    gauge.set(0);
    let mut observed = Observed {
        record: None,
        at: Instant::now(),
    };
    loop {
        // Follower: try to acquire every retry period (not once stopping).
        let attempt = if shutdown.is_cancelled() {
            Ok(Attempt::Other)
        } else {
            try_acquire_or_renew(&api, &cfg, &mut observed).await
        };
        match attempt {
            Ok(Attempt::Held) => {
                let term = shutdown.child_token();
                tx.send_replace(Some(term.clone()));
                gauge.set(1);
                tracing::info!(identity = %cfg.identity, "leader election: became the leader; running probes");
                let released = lead(&api, &cfg, &mut observed, &stop).await;
                term.cancel();
                tx.send_replace(None);
                gauge.set(0);
                if released {
                    return;
                }
                tracing::warn!(identity = %cfg.identity, "leader election: lost the lease; probing stopped");
            }
            Ok(Attempt::Other) => {}
            Err(e) => tracing::debug!(error = %e, "leader election: attempt failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
}

/// Renew until renewal fails for `renew_deadline` or another replica holds
/// the Lease (returns false), or until `stop` (releases it, returns true).
async fn lead(
    api: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    observed: &mut Observed,
    stop: &CancellationToken,
) -> bool {
    let mut last_renew = Instant::now();
    loop {
        // On shutdown the term is cancelled (it is a child of `shutdown`)
        // and the runs end; the Lease is held until stop() releases it
        // after they have, so no one probes while an aborted run finishes.
        tokio::select! {
            _ = stop.cancelled() => {
                release(api, cfg).await;
                return true;
            }
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
        let left = cfg
            .renew_deadline
            .saturating_sub(last_renew.elapsed())
            .min(REQUEST_TIMEOUT);
        match tokio::time::timeout(left, try_acquire_or_renew(api, cfg, observed)).await {
            Ok(Ok(Attempt::Held)) => last_renew = Instant::now(),
            Ok(Ok(Attempt::Other)) => return false,
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewal failed"),
            Err(_) => tracing::warn!("leader election: renewal timed out"),
        }
        if last_renew.elapsed() >= cfg.renew_deadline {
            return false;
        }
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaderElectionConfig,
    observed: &mut Observed,
) -> Result<Attempt, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let current = match tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(&cfg.lease_name)).await {
        Ok(r) => r?,
        Err(_) => return Err(timeout_error("get")),
    };
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.lease_name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(seconds(cfg.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match tokio::time::timeout(
            REQUEST_TIMEOUT,
            api.create(&PostParams::default(), &lease),
        )
        .await
        {
            Ok(Ok(l)) => {
                remember(observed, &l);
                Ok(Attempt::Held)
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => Ok(Attempt::Other),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout_error("create")),
        };
    };
    remember(observed, &lease);
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let ours = holder.as_deref() == Some(cfg.identity.as_str());
    if let (Some(_), false) = (&holder, ours) {
        let valid_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(cfg.lease_duration);
        if observed.at.elapsed() < valid_for {
            return Ok(Attempt::Other);
        }
    }
    let mut next = spec;
    if !ours {
        next.acquire_time = Some(now.clone());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    next.holder_identity = Some(cfg.identity.clone());
    next.lease_duration_seconds = Some(seconds(cfg.lease_duration));
    next.renew_time = Some(now);
    lease.spec = Some(next);
    // `replace` sends the resourceVersion we read: a concurrent writer
    // makes it fail with 409 instead of both believing they lead.
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        api.replace(&cfg.lease_name, &PostParams::default(), &lease),
    )
    .await
    {
        Ok(Ok(l)) => {
            if !ours {
                tracing::info!(previous = ?holder, "leader election: acquired the lease");
            }
            remember(observed, &l);
            Ok(Attempt::Held)
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Ok(Attempt::Other),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timeout_error("replace")),
    }
}

/// Note the Lease's record; its age restarts whenever it changes.
fn remember(observed: &mut Observed, lease: &Lease) {
    let spec = lease.spec.as_ref();
    let record = Some((
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.clone()),
        lease.metadata.resource_version.clone(),
    ));
    if observed.record != record {
        observed.record = record;
        observed.at = Instant::now();
    }
}

/// Hand the Lease over: clear the holder so a follower acquires at once.
async fn release(api: &Api<Lease>, cfg: &LeaderElectionConfig) {
    let r = async {
        let Some(mut lease) = api.get_opt(&cfg.lease_name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        api.replace(&cfg.lease_name, &PostParams::default(), &lease)
            .await
            .map(|_| true)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, r).await {
        Ok(Ok(true)) => tracing::info!("leader election: released the lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "leader election: could not release the lease; it expires on its own")
        }
        Err(_) => {
            tracing::warn!("leader election: releasing the lease timed out; it expires on its own")
        }
    }
}

fn timeout_error(what: &str) -> kube::Error {
    kube::Error::Service(
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("Lease {what} timed out after {REQUEST_TIMEOUT:?}"),
        )
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use secret_canary_lab::apiserver::ApiServer;
    use secret_canary_lab::faults::{Fault, Knob, Knobs, Latency};

    /// The lab's API server alone, and an admin client of it.
    async fn api_server() -> (
        kube::Client,
        Arc<Knobs>,
        CancellationToken,
        tempfile::TempDir,
    ) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let knobs = Arc::new(Knobs::default());
        let server = ApiServer::new(knobs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        {
            let (server, cancel) = (server.clone(), cancel.clone());
            tokio::spawn(async move { server.serve_insecure(listener, cancel).await });
        }
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(
            &kc,
            secret_canary_lab::lab::kubeconfig_yaml(&url, &server.admin_token()),
        )
        .unwrap();
        let client = secret_canary_lab::lab::client_from_kubeconfig(&kc)
            .await
            .unwrap();
        (client, knobs, cancel, dir)
    }

    fn fast(identity: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            lease_name: "race".into(),
            lease_namespace: Some("default".into()),
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(100),
        }
    }

    fn leaders(ls: &[Leadership]) -> usize {
        ls.iter().filter(|l| l.is_leader()).count()
    }

    /// Sample every 5 ms for `d`; panics on two leaders at once.
    async fn watch_at_most_one(ls: &[Leadership], d: Duration) {
        let start = Instant::now();
        while start.elapsed() < d {
            assert!(leaders(ls) <= 1, "two leaders at once");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_candidates_elect_one_and_hand_over_safely() {
        let (client, knobs, cancel, _dir) = api_server().await;
        let shutdown = CancellationToken::new();
        // Five candidates start at once: creates and replaces race, the
        // resourceVersion makes all but one lose.
        let mut electors: Vec<Option<Elector>> = (0..5)
            .map(|i| {
                Some(Elector::start(
                    client.clone(),
                    fast(&format!("c{i}")),
                    FlagGauge::default(),
                    shutdown.clone(),
                ))
            })
            .collect();
        let ls: Vec<Leadership> = electors.iter().flatten().map(|e| e.leadership()).collect();
        watch_at_most_one(&ls, Duration::from_secs(2)).await;
        assert_eq!(leaders(&ls), 1);
        let first = ls.iter().position(|l| l.is_leader()).unwrap();
        let term = ls[first].term().unwrap();

        // A graceful stop releases: another takes over within a few retries.
        electors[first].take().unwrap().stop().await;
        assert!(term.is_cancelled(), "the stopped leader's term ends");
        let t = Instant::now();
        while leaders(&ls) == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "no handover after release"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(leaders(&ls), 1);
        let second = ls.iter().position(|l| l.is_leader()).unwrap();

        // A crash (task gone, no release): nobody takes over before the
        // lease has run out on their own clocks, somebody right after.
        let e = electors[second].take().unwrap();
        e.task.abort();
        let crashed = Instant::now();
        let rest: Vec<Leadership> = ls
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != first && *i != second)
            .map(|(_, l)| l.clone())
            .collect();
        while leaders(&rest) == 0 {
            assert!(
                crashed.elapsed() < Duration::from_secs(4),
                "no takeover after a crash"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = crashed.elapsed();
        // The followers saw the last renewal up to one retry period before
        // the crash, so the lease ran out at least 2 s - 100 ms after it.
        assert!(
            took >= Duration::from_millis(1850),
            "took over too early: {took:?}"
        );
        watch_at_most_one(&rest, Duration::from_millis(500)).await;
        assert_eq!(leaders(&rest), 1);

        // A leader that cannot renew steps down within its renew deadline,
        // before its lease could expire for anyone else.
        let third = rest.iter().position(|l| l.is_leader()).unwrap();
        let term = rest[third].term().unwrap();
        knobs.set_latency(Knob::ApiLatency, Latency::Fixed(Duration::from_secs(10)));
        knobs.set_fault(Fault::ApiSlow, true);
        let slowed = Instant::now();
        tokio::time::timeout(Duration::from_secs(3), term.cancelled())
            .await
            .expect("the leader steps down when it cannot renew");
        let stepped = slowed.elapsed();
        assert!(
            stepped <= Duration::from_millis(1700),
            "stepped down after {stepped:?}"
        );
        assert_eq!(leaders(&rest), 0);
        knobs.set_fault(Fault::ApiSlow, false);
        watch_at_most_one(&rest, Duration::from_secs(3)).await;
        assert_eq!(
            leaders(&rest),
            1,
            "someone leads again once the API recovers"
        );
        eprintln!("leader election race: crash takeover {took:?}, step-down {stepped:?}");

        shutdown.cancel();
        for e in electors.into_iter().flatten() {
            e.stop().await;
        }
        cancel.cancel();
    }

    fn args() -> LeaderElectArgs {
        LeaderElectArgs {
            leader_elect: true,
            leader_elect_lease_name: "secret-canary".into(),
            leader_elect_lease_namespace: Some("canary".into()),
            leader_elect_identity: None,
            leader_elect_lease_duration: Duration::from_secs(15),
            leader_elect_renew_deadline: Duration::from_secs(10),
            leader_elect_retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn flags_are_checked_and_name_the_flag() {
        let c = args().config().unwrap().unwrap();
        assert!(c.identity.contains('_'), "{}", c.identity);
        let mut a = args();
        a.leader_elect = false;
        assert_eq!(a.config().unwrap(), None);
        let mut a = args();
        a.leader_elect_renew_deadline = Duration::from_secs(15);
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .starts_with("--leader-elect-renew-deadline"));
        let mut a = args();
        a.leader_elect_retry_period = Duration::from_secs(10);
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .starts_with("--leader-elect-retry-period"));
        let mut a = args();
        a.leader_elect_lease_duration = Duration::from_millis(1500);
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .starts_with("--leader-elect-lease-duration"));
        let mut a = args();
        a.leader_elect_lease_name = "Bad_Name".into();
        assert!(a
            .config()
            .unwrap_err()
            .to_string()
            .starts_with("--leader-elect-lease-name"));
    }
}
