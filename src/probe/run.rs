//! The driver of one probe run: write a fresh value, then follow it hop by
//! hop through the watchers' events to the canary Pods, and turn what was
//! seen into an [`Outcome`]. Every milestone's time is the arrival of the
//! event that showed it, never the moment this task got around to looking.
//!
//! ```text
//! execute ─> wait for the watchers' first list ─> subscribe, baseline
//!         ─> write (login, KV v2 write)          ─> store_write
//!         ─> nudge (force-sync, restart patch)   ─> typed failures
//!         ─> follow: events ─> tracker <─ canary answers (poll)
//!         ─> facts ─> attribution ─> Outcome
//! ```
//!
//! The stage table is in [`super::tracker`]; a run that fails names the
//! first stage that did not complete and a reason read from what the
//! cluster said ([`super::tracker::attribution`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::events::Subscriptions;
use super::plan::Plan;
use super::poll::Pollers;
use super::tracker::{Cause, End, Facts, Finding, Tracker};
use super::{Outcome, ProbeRunner, Reason, RunProgress, Stage, Stamp, SyncTrigger};
use crate::config::{ProbeConfig, Trigger};

/// How long a run waits, before writing, for watchers still doing their
/// first list (it needs their state as the baseline).
const READY_WAIT: Duration = Duration::from_secs(10);

/// Timeout of the prober's own API requests (the restart patch).
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// SHA-256 hex of a value.
pub fn digest(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// A fresh random test value: 32 random bytes, hex.
pub fn fresh_value() -> String {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// How a step bounded by the run's cancellation and a deadline ended.
#[derive(Debug)]
pub enum Bounded<T> {
    /// The step finished with this value.
    Done(T),
    /// The deadline passed first.
    Expired,
    /// The run was cancelled first.
    Cancelled,
}

/// Await `fut` unless the run is cancelled or `until` passes first.
pub async fn bounded<T>(
    fut: impl Future<Output = T>,
    cancel: &CancellationToken,
    until: Instant,
) -> Bounded<T> {
    tokio::select! {
        _ = cancel.cancelled() => Bounded::Cancelled,
        _ = tokio::time::sleep_until(until.into()) => Bounded::Expired,
        v = fut => Bounded::Done(v),
    }
}

/// The per-stage deadlines of a probe.
fn limits(config: &ProbeConfig) -> BTreeMap<Stage, Duration> {
    config
        .stage_deadlines
        .iter()
        .map(|(s, d)| (*s, d.0))
        .collect()
}

/// A token cancelled when either the run's token or the prober's own
/// shutdown fires.
fn either(run: &CancellationToken, prober: &CancellationToken) -> CancellationToken {
    let c = CancellationToken::new();
    let (a, b, c2) = (run.clone(), prober.clone(), c.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = a.cancelled() => c2.cancel(),
            _ = b.cancelled() => c2.cancel(),
            _ = c2.cancelled() => {}
        }
    });
    c
}

/// One run in flight: what it needs to produce its [`Outcome`].
struct Run<'a> {
    runner: &'a ProbeRunner,
    /// This run's shape (see [`Plan::for_run`]).
    plan: Plan,
    run_id: String,
    start: Stamp,
    deadline: Instant,
    new_digest: String,
    sync_trigger: Option<SyncTrigger>,
    tracker: Tracker,
    cancel: CancellationToken,
    progress: Option<&'a watch::Sender<RunProgress>>,
}

/// Run one probe run to its outcome.
///
/// `progress`, when given, is told the stages as they start and end.
pub async fn execute(
    runner: &ProbeRunner,
    run_id: String,
    cancel: CancellationToken,
    progress: Option<&watch::Sender<RunProgress>>,
) -> Outcome {
    let config = runner.config();
    let start = Stamp::now();
    let deadline = start.at + config.deadline();
    let cancel = either(&cancel, &runner.stop);
    let _stop_relay = cancel.clone().drop_guard();

    // Watchers still on their first list: wait briefly, they give the baseline.
    let ready_by = (start.at + READY_WAIT).min(deadline);
    let _ = bounded(runner.cluster.wait_ready(), &cancel, ready_by).await;

    let mut subs = Subscriptions::new(&runner.cluster);
    // A watcher failing now would make the run measure the outage: give it
    // the rest of the ready wait to recover, else skip the tick.
    while subs.transient_fault().is_some() && Instant::now() < ready_by {
        if !matches!(
            bounded(subs.changed(), &cancel, ready_by).await,
            Bounded::Done(())
        ) {
            break;
        }
    }
    if let Some(f) = subs.transient_fault() {
        tracing::info!(probe = %config.name, error = %f.message, "a watcher is failing; run skipped");
        return Outcome {
            probe: config.name.clone(),
            run_id,
            digest: None,
            started_at: start.wall,
            finished_at: Utc::now(),
            stages: Vec::new(),
            failure: None,
            result: super::RunResult::Skipped,
            detail: Some(format!(
                "skipped: a watcher is failing ({}): {}",
                f.reason, f.message
            )),
            sync_trigger: None,
            watch_gaps: Vec::new(),
        };
    }
    let last = runner.last_digest.lock().ok().and_then(|d| d.clone());
    let base = subs.baseline(last);
    let value = fresh_value();
    let new_digest = digest(&value);
    let plan = runner.plan.for_run(base.secret_absent, base.ready_canaries);
    if plan != runner.plan {
        tracing::info!(
            probe = %config.name,
            "the Secret does not exist yet and no canary is ready: a first delivery, no rollout to wait for"
        );
    }
    let mut tracker = Tracker::new(plan, new_digest.clone(), base, deadline, limits(config));
    tracker.set_blocked_for(config.blocked_for());
    let forced = config.chain.force_sync;
    let mut run = Run {
        runner,
        plan,
        run_id,
        start,
        deadline,
        new_digest,
        sync_trigger: plan.eso.then_some(if forced {
            SyncTrigger::Forced
        } else {
            SyncTrigger::Natural
        }),
        tracker,
        cancel,
        progress,
    };

    if let Some(end) = run.write(&value).await {
        return run.outcome(end, &Facts::default());
    }
    if let Some(end) = run.nudge().await {
        return run.outcome(end, &Facts::default());
    }
    let end = run.follow(&mut subs).await;
    let overflows = subs.overflows();
    if overflows > 0 {
        runner
            .change_log_overflows
            .fetch_add(overflows, std::sync::atomic::Ordering::Relaxed);
    }
    let out = run.outcome(end, &subs.facts());
    if !out.watch_gaps.is_empty() {
        tracing::info!(probe = %config.name, run_id = %out.run_id, stages = ?out.watch_gaps, "durations measured across a watch gap; kept out of the histograms");
    }
    if let (Some(f), Some(d)) = (&out.failure, &out.detail) {
        tracing::info!(probe = %config.name, run_id = %out.run_id, stage = %f.stage, reason = %f.reason, detail = %d, "probe run failed");
    }
    out
}

impl Run<'_> {
    /// The outcome of the run ending as `end`.
    fn outcome(&self, end: End, facts: &Facts) -> Outcome {
        let (failure, result, detail) = self.tracker.conclude(&end, facts);
        Outcome {
            probe: self.runner.config().name.clone(),
            run_id: self.run_id.clone(),
            digest: Some(self.new_digest.clone()),
            started_at: self.start.wall,
            finished_at: Utc::now(),
            stages: self.tracker.timings(),
            failure,
            result,
            detail,
            sync_trigger: self.sync_trigger,
            watch_gaps: self.tracker.gap_stages(&facts.gaps),
        }
    }

    /// When a store step must be done: the `store_write` deadline from
    /// `from`, within the run's.
    fn store_until(&self, from: Instant) -> Instant {
        let limit = self.runner.config().stage_deadlines.get(&Stage::StoreWrite);
        limit.map_or(self.deadline, |l| (from + l.0).min(self.deadline))
    }

    /// Log in to the store (not part of `store_write`), then write the
    /// value; `Some` when the run ends here.
    async fn write(&mut self, value: &str) -> Option<End> {
        let store = &self.runner.store;
        let until = self.store_until(Instant::now());
        match bounded(store.prepare(), &self.cancel, until).await {
            Bounded::Cancelled => {
                self.tracker.store_starting(Stamp::now());
                return Some(End::Aborted);
            }
            Bounded::Expired => {
                let f = Finding::deadline("logging in to the store");
                self.tracker.store_failed(Stamp::now(), f.clone());
                return Some(End::Failed(Stage::StoreWrite, f));
            }
            Bounded::Done(Err(e)) => {
                let f = Finding::store(e);
                self.tracker.store_failed(Stamp::now(), f.clone());
                return Some(End::Failed(Stage::StoreWrite, f));
            }
            Bounded::Done(Ok(())) => {}
        }
        let before_write = Stamp::now();
        self.tracker.store_starting(before_write);
        self.publish();
        let until = self.store_until(before_write.at);
        match bounded(store.write(value), &self.cancel, until).await {
            Bounded::Cancelled => Some(End::Aborted),
            Bounded::Expired => {
                let f = Finding::deadline("writing to the store");
                Some(End::Failed(Stage::StoreWrite, f))
            }
            Bounded::Done(Err(e)) => {
                let config = self.runner.config();
                tracing::info!(probe = %config.name, run_id = %self.run_id, error = %e, "store write failed");
                Some(End::Failed(Stage::StoreWrite, Finding::store(e)))
            }
            Bounded::Done(Ok(w)) => {
                self.tracker.store_written(&w);
                if let Ok(mut last) = self.runner.last_digest.lock() {
                    *last = Some(self.new_digest.clone());
                }
                None
            }
        }
    }

    /// The prober's own requests right after the write: the force-sync
    /// annotation (so ESO reads the new value now rather than at its next
    /// refreshInterval) and the restart patch. A refusal fails the stage it
    /// starts; `Some` when the run was cancelled.
    async fn nudge(&mut self) -> Option<End> {
        let cluster = &self.runner.cluster;
        if self.sync_trigger == Some(SyncTrigger::Forced) && !self.tracker.refuse_force_sync() {
            let patch = cluster.force_sync(Utc::now(), API_TIMEOUT);
            match bounded(patch, &self.cancel, self.deadline).await {
                Bounded::Cancelled => return Some(End::Aborted),
                Bounded::Done(Err(e)) => self.tracker.fail(Stage::EsoSync, Finding::cluster(e)),
                Bounded::Expired | Bounded::Done(Ok(())) => {}
            }
        }
        if self.plan.trigger == Some(Trigger::Restart) {
            let patch = cluster.restart(Utc::now(), API_TIMEOUT);
            match bounded(patch, &self.cancel, self.deadline).await {
                Bounded::Cancelled => return Some(End::Aborted),
                Bounded::Done(Err(e)) => self
                    .tracker
                    .fail(Stage::ReloaderTrigger, Finding::cluster(e)),
                Bounded::Done(Ok(Some(r))) => self.tracker.restart_sent(r),
                Bounded::Expired | Bounded::Done(Ok(None)) => {}
            }
        }
        None
    }

    /// Follow the value through the watchers' events and the canaries'
    /// answers until the tracker gives a verdict or the run is cancelled.
    async fn follow(&mut self, subs: &mut Subscriptions) -> End {
        let plan = self.plan;
        // A Pod of a new ReplicaSet with an env canary has its value fixed at
        // start: ask it plainly first, so an old value shows at once as a
        // mismatch instead of a long-poll waiting for a change that never comes.
        let known = if plan.env_canary && plan.trigger.is_some() {
            None
        } else {
            self.tracker.old_digest().map(str::to_string)
        };
        let client = self.runner.canary.as_ref().ok().cloned();
        let mut pollers = Pollers::new(client, known, self.new_digest.clone());
        let end = loop {
            subs.deliver(&mut self.tracker);
            while let Some(r) = pollers.try_next() {
                self.tracker.on_canary(&r.pod, r.stamp, r.answer);
            }
            let now = Instant::now();
            self.tracker.tick(now);
            if self.tracker.observing() {
                self.retarget(&mut pollers);
            }
            let blocked = self.tracker.observe_blocking(Stamp::now(), &subs.facts());
            self.runner.blocked.send_if_modified(|b| {
                let changed = *b != blocked;
                *b = blocked;
                changed
            });
            self.publish();
            if let Some(end) = self.tracker.verdict(now) {
                break end;
            }
            let wake = self.tracker.next_wakeup();
            tokio::select! {
                _ = self.cancel.cancelled() => break End::Aborted,
                _ = subs.changed() => {}
                r = pollers.next() => self.tracker.on_canary(&r.pod, r.stamp, r.answer),
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        };
        pollers.stop();
        end
    }

    /// Point the pollers at the canary Pods to ask now.
    fn retarget(&mut self, pollers: &mut Pollers) {
        let cluster = &self.runner.cluster;
        let (targets, expected) = {
            let pv = cluster.pods.borrow();
            let dv = cluster.deployments.as_ref().map(|d| d.borrow());
            let dep = dv.as_ref().and_then(|v| v.objects.values().next().cloned());
            self.tracker.targets(&pv, dep.as_deref())
        };
        match &self.runner.canary {
            Ok(_) => pollers.follow(&targets, self.tracker.canary_deadline()),
            Err(e) => {
                let f = Finding::new(Reason::ProberError, Cause::Canary(Arc::clone(e)));
                self.tracker.fail(Stage::CanaryObserve, f);
            }
        }
        self.tracker.set_targets(targets, expected);
    }

    /// Tell a progress display where the run is (only when something changed).
    fn publish(&self) {
        let Some(tx) = self.progress else { return };
        let mut stages = self.tracker.timings();
        stages.retain(|t| t.stage != Stage::EndToEnd);
        let sync_trigger = self.sync_trigger;
        tx.send_if_modified(|p| {
            if p.stages == stages && p.sync_trigger == sync_trigger {
                return false;
            }
            p.stages = stages;
            p.sync_trigger = sync_trigger;
            true
        });
    }
}
