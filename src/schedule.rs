//! When probe runs start: ticks from a cron expression or a fixed interval,
//! one scheduler per probe, never two runs of a probe at once (a tick that
//! finds the previous run still going is counted `skipped`), and ticks missed
//! while the process stalled are not replayed in a burst.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

    /// Wait for the next tick; `None` once the schedule has no more fire times.
    pub async fn tick(&mut self) -> Option<Tick> {
        match (&self.cadence, &self.next) {
            (Cadence::Interval(period), Next::Instant(due)) => {
                let (period, mut due) = (*period, *due);
                tokio::time::sleep_until(due).await;
                let fired = Instant::now();
                let mut missed = 0;
                // Fire once for the latest due time that has passed.
                if !period.is_zero() {
                    let behind = fired.saturating_duration_since(due);
                    missed = (behind.as_nanos() / period.as_nanos()) as u64;
                    due += period.saturating_mul(u32::try_from(missed).unwrap_or(u32::MAX));
                }
                self.next = Next::Instant(due + period.max(Duration::from_millis(1)));
                Some(Tick { due, fired, missed })
            }
            (Cadence::Cron(schedule), Next::Wall(due)) => {
                let mut due = *due;
                loop {
                    let now = self.clock.now();
                    if now >= due {
                        break;
                    }
                    let wait = (due - now).to_std().unwrap_or_default();
                    tokio::time::sleep(wait.min(MAX_CRON_SLEEP)).await;
                }
                let (fired, now_wall) = (Instant::now(), self.clock.now());
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
                Some(Tick {
                    due: due_instant,
                    fired,
                    missed,
                })
            }
            _ => None,
        }
    }
}

/// Tick `probe`'s schedule until `cancel` fires, calling `run` for each tick
/// unless the previous run is still going (then the tick counts as
/// `skipped`). Records schedule lateness and missed ticks into `metrics`.
/// After cancellation it waits for the in-flight run, which sees the same
/// cancellation and ends `aborted`.
pub async fn drive<F, Fut>(
    probe: String,
    mut ticker: Ticker,
    metrics: Metrics,
    cancel: CancellationToken,
    run: F,
) where
    F: Fn(Tick) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut in_flight: Option<JoinHandle<()>> = None;
    loop {
        let tick = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            tick = ticker.tick() => tick,
        };
        let Some(tick) = tick else {
            tracing::warn!(
                probe,
                "schedule has no further fire times; probe stops running"
            );
            break;
        };
        if tick.missed > 0 {
            tracing::warn!(
                probe,
                missed = tick.missed,
                "schedule fell behind; missed ticks are dropped"
            );
            metrics.record_missed_ticks(&probe, tick.missed);
        }
        if in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::info!(probe, "previous run still in progress; tick skipped");
            metrics.record_skipped(&probe);
            continue;
        }
        metrics.observe_schedule_jitter(&probe, tick.lateness());
        in_flight = Some(tokio::spawn(run(tick)));
    }
    if let Some(handle) = in_flight {
        if let Err(e) = handle.await {
            tracing::error!(probe, error = %e, "probe run task failed");
        }
    }
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
}
