//! When probe runs start: ticks from a cron expression or a fixed interval,
//! every probe's from one timer heap driven by one task ([`Scheduler`]),
//! each run spawned as its own task, never two runs of a probe at once (a
//! tick that finds the previous run still going is counted `skipped`), and
//! ticks missed while the process stalled are not replayed in a burst.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use crate::cadence::{parse_cron, Cadence, ScheduleError};

/// Where wall-clock time comes from (cron fire times are wall-clock times).
pub trait WallClock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A wall clock that advances with tokio's clock from a fixed anchor, so
/// tests under `tokio::time::pause()` can drive cron schedules.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: DateTime<Utc>,
    instant: Instant,
}

impl TokioClock {
    /// A clock that reads `wall` now.
    pub fn starting_at(wall: DateTime<Utc>) -> Self {
        TokioClock {
            wall,
            instant: Instant::now(),
        }
    }
}

impl WallClock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = chrono::Duration::from_std(self.instant.elapsed()).unwrap_or_default();
        self.wall + elapsed
    }
}

/// One tick: when it was due and when it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// When the tick was due (monotonic).
    pub due: Instant,
    /// When the scheduler woke up for it.
    pub fired: Instant,
    /// Earlier due times that passed without a tick (process stalled or the
    /// clock jumped); they are dropped, not replayed.
    pub missed: u64,
}

impl Tick {
    /// How late the tick fired.
    pub fn lateness(&self) -> Duration {
        self.fired.saturating_duration_since(self.due)
    }
}

/// Upper bound on one sleep for cron ticks, so a wall-clock step (NTP,
/// suspend) is noticed within this time.
const MAX_CRON_SLEEP: Duration = Duration::from_secs(30);
/// Upper bound on due times counted as missed after a stall.
const MAX_MISSED_SCAN: u64 = 100_000;

/// Produces the ticks of one cadence.
pub struct Ticker {
    cadence: Cadence,
    clock: Arc<dyn WallClock>,
    next: Next,
}

enum Next {
    Instant(Instant),
    Wall(DateTime<Utc>),
    Never,
}

/// What a ticker says when asked at its wake-up time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fire {
    /// A tick is due.
    Tick(Tick),
    /// Not yet (a cron tick whose wall-clock time has not come; ask again at
    /// [`Ticker::wake_at`]).
    NotYet,
    /// The schedule has no more fire times.
    Done,
}

impl Ticker {
    /// A ticker whose first tick is due now (interval) or at the cron
    /// expression's next fire time.
    pub fn new(cadence: Cadence, clock: Arc<dyn WallClock>) -> Self {
        let next = match &cadence {
            Cadence::Interval(_) => Next::Instant(Instant::now()),
            Cadence::Cron(s) => s.after(&clock.now()).next().map_or(Next::Never, Next::Wall),
        };
        Ticker {
            cadence,
            clock,
            next,
        }
    }

    /// When to ask [`Ticker::fire`] next (monotonic); `None` once the
    /// schedule has no more fire times. A cron tick's wall-clock time is
    /// turned into an instant now and looked at again at least every 30 s,
    /// so a wall-clock step (NTP, suspend) is noticed.
    pub fn wake_at(&self) -> Option<Instant> {
        match &self.next {
            Next::Instant(due) => Some(*due),
            Next::Wall(due) => {
                let wait = (*due - self.clock.now()).to_std().unwrap_or_default();
                Some(Instant::now() + wait.min(MAX_CRON_SLEEP))
            }
            Next::Never => None,
        }
    }

    /// The tick due now, if one is: for the latest due time that has
    /// passed (earlier ones count as missed), and the next due time set.
    pub fn fire(&mut self) -> Fire {
        match (&self.cadence, &self.next) {
            (Cadence::Interval(period), Next::Instant(due)) => {
                let (period, mut due) = (*period, *due);
                let fired = Instant::now();
                if fired < due {
                    return Fire::NotYet;
                }
                let mut missed = 0;
                // Fire once for the latest due time that has passed.
                if !period.is_zero() {
                    let behind = fired.saturating_duration_since(due);
                    missed = (behind.as_nanos() / period.as_nanos()) as u64;
                    due += period.saturating_mul(u32::try_from(missed).unwrap_or(u32::MAX));
                }
                self.next = Next::Instant(due + period.max(Duration::from_millis(1)));
                Fire::Tick(Tick { due, fired, missed })
            }
            (Cadence::Cron(schedule), Next::Wall(due)) => {
                let mut due = *due;
                let (fired, now_wall) = (Instant::now(), self.clock.now());
                if now_wall < due {
                    return Fire::NotYet;
                }
                let mut missed = 0;
                let mut later = schedule.after(&due);
                let mut upcoming = None;
                for t in later.by_ref() {
                    if t > now_wall || missed >= MAX_MISSED_SCAN {
                        upcoming = Some(t);
                        break;
                    }
                    missed += 1;
                    due = t;
                }
                if missed >= MAX_MISSED_SCAN {
                    upcoming = schedule.after(&now_wall).next();
                }
                self.next = upcoming.map_or(Next::Never, Next::Wall);
                let behind = (now_wall - due).to_std().unwrap_or_default();
                let due_instant = fired.checked_sub(behind).unwrap_or(fired);
                Fire::Tick(Tick {
                    due: due_instant,
                    fired,
                    missed,
                })
            }
            _ => Fire::Done,
        }
    }

    /// Wait for the next tick; `None` once the schedule has no more fire times.
    pub async fn tick(&mut self) -> Option<Tick> {
        loop {
            tokio::time::sleep_until(self.wake_at()?).await;
            match self.fire() {
                Fire::Tick(t) => return Some(t),
                Fire::NotYet => continue,
                Fire::Done => return None,
            }
        }
    }
}

type RunFn = Box<dyn Fn(Tick) -> BoxFuture<'static, ()> + Send + Sync>;

struct Entry {
    probe: String,
    ticker: Ticker,
    run: RunFn,
    in_flight: Option<JoinHandle<()>>,
}

/// Every probe's ticks from one timer: a heap of next wake-up instants
/// driven by one task, which spawns each due run as its own task (runs
/// never wait behind each other or behind the scheduler), never two runs of
/// a probe at once (a tick that finds the previous run still going is
/// counted `skipped`), and ticks missed while the process stalled are
/// counted, not replayed.
pub struct Scheduler {
    metrics: Metrics,
    entries: Vec<Entry>,
    runtime: tokio::runtime::Handle,
}

impl Scheduler {
    /// A scheduler with no probes, spawning runs on the current runtime.
    pub fn new(metrics: Metrics) -> Scheduler {
        Scheduler {
            metrics,
            entries: Vec::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Spawn runs on `runtime` (the scheduler itself may run elsewhere,
    /// e.g. on a thread of its own so a busy runtime does not delay ticks).
    pub fn spawn_runs_on(mut self, runtime: tokio::runtime::Handle) -> Scheduler {
        self.runtime = runtime;
        self
    }

    /// Add a probe: `run` is called for each tick it does not skip.
    pub fn add<F, Fut>(&mut self, probe: String, ticker: Ticker, run: F)
    where
        F: Fn(Tick) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.entries.push(Entry {
            probe,
            ticker,
            run: Box::new(move |t| Box::pin(run(t))),
            in_flight: None,
        });
    }

    /// How many probes are scheduled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no probe is scheduled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tick every probe until `cancel` fires, recording lateness and missed
    /// and skipped ticks into the metrics. After cancellation it waits for
    /// the runs in flight, which see the same cancellation and end `aborted`.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.ticker.wake_at().map(|at| Reverse((at, i))))
            .collect();
        while let Some(&Reverse((at, _))) = heap.peek() {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
            let now = Instant::now();
            while let Some(&Reverse((at, i))) = heap.peek() {
                if at > now {
                    break;
                }
                heap.pop();
                if let Some(next) = self.fire(i) {
                    heap.push(Reverse((next, i)));
                }
            }
        }
        for e in &mut self.entries {
            if let Some(handle) = e.in_flight.take() {
                if let Err(err) = handle.await {
                    tracing::error!(probe = e.probe, error = %err, "probe run task failed");
                }
            }
        }
    }

    /// Handle entry `i`'s wake-up; its next wake-up time, if any.
    fn fire(&mut self, i: usize) -> Option<Instant> {
        let e = &mut self.entries[i];
        let tick = match e.ticker.fire() {
            Fire::Tick(t) => t,
            Fire::NotYet => return e.ticker.wake_at(),
            Fire::Done => {
                tracing::warn!(
                    probe = e.probe,
                    "schedule has no further fire times; probe stops running"
                );
                return None;
            }
        };
        if tick.missed > 0 {
            tracing::warn!(
                probe = e.probe,
                missed = tick.missed,
                "schedule fell behind; missed ticks are dropped"
            );
            self.metrics.record_missed_ticks(&e.probe, tick.missed);
        }
        if e.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::info!(
                probe = e.probe,
                "previous run still in progress; tick skipped"
            );
            self.metrics.record_skipped(&e.probe);
        } else {
            self.metrics.observe_schedule_jitter(tick.lateness());
            e.in_flight = Some(self.runtime.spawn((e.run)(tick)));
        }
        e.ticker.wake_at()
    }
}

/// Tick one probe's schedule until `cancel` fires (a [`Scheduler`] of one).
pub async fn drive<F, Fut>(
    probe: String,
    ticker: Ticker,
    metrics: Metrics,
    cancel: CancellationToken,
    run: F,
) where
    F: Fn(Tick) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut scheduler = Scheduler::new(metrics);
    scheduler.add(probe, ticker, run);
    scheduler.run(cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use prometheus_client::registry::Registry;

    fn interval_ticker(secs: u64) -> Ticker {
        Ticker::new(
            Cadence::Interval(Duration::from_secs(secs)),
            Arc::new(SystemClock),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn interval_ticks_first_at_start_then_every_period() {
        let start = Instant::now();
        let mut t = interval_ticker(10);
        for n in 0..3 {
            let tick = t.tick().await.unwrap();
            assert_eq!(tick.due, start + Duration::from_secs(10 * n));
            assert_eq!(tick.lateness(), Duration::ZERO);
            assert_eq!(tick.missed, 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_not_replayed_in_a_burst() {
        let start = Instant::now();
        let mut t = interval_ticker(10);
        t.tick().await.unwrap();
        // The process stalls for 35 s: due times 10, 20 and 30 pass.
        tokio::time::advance(Duration::from_secs(35)).await;
        let tick = t.tick().await.unwrap();
        assert_eq!(tick.missed, 2);
        assert_eq!(tick.due, start + Duration::from_secs(30));
        assert_eq!(tick.lateness(), Duration::from_secs(5));
        // Back on the grid at 40, not a burst of 10/20.
        let tick = t.tick().await.unwrap();
        assert_eq!(tick.due, start + Duration::from_secs(40));
        assert_eq!(tick.missed, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cron_ticks_follow_wall_clock_fire_times() {
        let wall0 = DateTime::parse_from_rfc3339("2030-01-01T00:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Arc::new(TokioClock::starting_at(wall0));
        let mut t = Ticker::new(
            Cadence::Cron(Box::new(parse_cron("*/10 * * * * *").unwrap())),
            clock.clone(),
        );
        let tick = t.tick().await.unwrap();
        assert_eq!(clock.now().to_rfc3339(), "2030-01-01T00:00:10+00:00");
        assert_eq!(tick.missed, 0);
        t.tick().await.unwrap();
        assert_eq!(clock.now().to_rfc3339(), "2030-01-01T00:00:20+00:00");
        // Stall across three fire times: one tick for the latest.
        tokio::time::advance(Duration::from_secs(33)).await;
        let tick = t.tick().await.unwrap();
        assert_eq!(tick.missed, 2);
        assert_eq!(tick.lateness(), Duration::from_secs(3));
        t.tick().await.unwrap();
        assert_eq!(clock.now().to_rfc3339(), "2030-01-01T00:01:00+00:00");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_during_a_run_is_skipped_never_overlapped() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let cancel = CancellationToken::new();
        let (started, running, max_running) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let run = {
            let (started, running, max_running) =
                (started.clone(), running.clone(), max_running.clone());
            move |_tick: Tick| {
                let (started, running, max_running) =
                    (started.clone(), running.clone(), max_running.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_running.fetch_max(now, Ordering::SeqCst);
                    // Each run takes 25 s with a 10 s interval.
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                }
            }
        };
        let driver = tokio::spawn(drive(
            "p".into(),
            interval_ticker(10),
            metrics.clone(),
            cancel.clone(),
            run,
        ));
        // Ticks at 0 (run), 10, 20 (skipped), 30 (run), 40, 50 (skipped), 60 (run).
        tokio::time::sleep(Duration::from_secs(65)).await;
        cancel.cancel();
        driver.await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert_eq!(max_running.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.skipped("p"), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn one_scheduler_ticks_every_probe_and_a_slow_run_delays_no_other() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let starts: Arc<std::sync::Mutex<Vec<(usize, Duration)>>> = Arc::default();
        let mut scheduler = Scheduler::new(metrics.clone());
        for (i, period) in [(0usize, 10u64), (1, 10), (2, 15)] {
            let starts = starts.clone();
            scheduler.add(format!("p{i}"), interval_ticker(period), move |_t: Tick| {
                let starts = starts.clone();
                async move {
                    starts.lock().unwrap().push((i, start.elapsed()));
                    // Probe 0's runs never end within the test.
                    if i == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
        assert_eq!(scheduler.len(), 3);
        let driver = tokio::spawn(scheduler.run(cancel.clone()));
        tokio::time::sleep(Duration::from_secs(31)).await;
        cancel.cancel();
        // Probe 0's run is still going: the scheduler waits for it, so stop it.
        tokio::time::advance(Duration::from_secs(3600)).await;
        driver.await.unwrap();
        let starts = starts.lock().unwrap().clone();
        let of = |p: usize| -> Vec<u64> {
            starts
                .iter()
                .filter(|(i, _)| *i == p)
                .map(|(_, d)| d.as_secs())
                .collect()
        };
        assert_eq!(of(0), [0]);
        assert_eq!(of(1), [0, 10, 20, 30]);
        assert_eq!(of(2), [0, 15, 30]);
        assert_eq!(metrics.skipped("p0"), 3);
        assert_eq!(metrics.skipped("p1"), 0);
    }
}
