//! Live progress of `once` (and the demo) on stderr, so stdout stays a clean
//! report: per probe the stage(s) in flight with their time against their
//! deadline, the run's time against its deadline, and the finished stages
//! with their durations. Redrawn bars (indicatif) at a terminal; one line
//! per event where output is captured (not a terminal, or `CI` is set).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ProbeConfig;
use crate::report::{self, human};
use crate::vocab::{Outcome, RunProgress, Stage, StageTiming};

/// How often the bars redraw the running clocks.
const TICK: Duration = Duration::from_millis(100);
/// How often line mode says a long stage is still going.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// `bars` when stderr is a terminal and `CI` is not set, else `lines`.
    #[default]
    Auto,
    /// Redrawn bars, one per probe.
    Bars,
    /// One line per event (stage started, stage done, run done).
    Lines,
    /// Nothing.
    None,
}

impl Mode {
    /// `auto` decided for this process.
    pub fn resolve(self) -> Mode {
        match self {
            Mode::Auto => {
                let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
                let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
                if ci || dumb || !std::io::stderr().is_terminal() {
                    Mode::Lines
                } else {
                    Mode::Bars
                }
            }
            m => m,
        }
    }
}

/// The bars being drawn, for log lines to step around (see [`LogWriter`]).
static BARS: OnceLock<Mutex<Option<MultiProgress>>> = OnceLock::new();

fn active_bars() -> Option<MultiProgress> {
    BARS.get()
        .and_then(|m| m.lock().ok().and_then(|g| g.clone()))
}

/// stderr for log lines: while bars are drawn, a line is written with the
/// bars lifted, so logs and bars do not overwrite each other.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match active_bars() {
            Some(m) => m.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

/// Where line mode writes (stderr, or a buffer in tests).
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// The progress display of one `once` invocation; cheap to clone.
#[derive(Clone)]
pub struct Display {
    mode: Mode,
    bars: Option<MultiProgress>,
    sink: Sink,
    origin: Instant,
}

impl std::fmt::Debug for Display {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display").field("mode", &self.mode).finish()
    }
}

/// A run being followed; hand it back to [`Display::finish`].
pub struct Tracked {
    probe: Arc<ProbeConfig>,
    bar: Option<ProgressBar>,
    task: Option<JoinHandle<()>>,
}

impl Display {
    /// A display in `mode` (`auto` is resolved here) on stderr.
    pub fn new(mode: Mode) -> Display {
        Display::with_sink(mode.resolve(), Box::new(std::io::stderr()))
    }

    /// A display writing lines to `sink` (bars always go to stderr).
    pub fn with_sink(mode: Mode, sink: Box<dyn Write + Send>) -> Display {
        let bars = (mode == Mode::Bars).then(|| {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            if let Ok(mut g) = BARS.get_or_init(|| Mutex::new(None)).lock() {
                *g = Some(m.clone());
            }
            m
        });
        Display {
            mode,
            bars,
            sink: Arc::new(Mutex::new(sink)),
            origin: Instant::now(),
        }
    }

    /// The resolved mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn line(&self, text: &str) {
        if self.mode != Mode::Lines {
            return;
        }
        let t = self.origin.elapsed().as_secs_f64();
        if let Ok(mut out) = self.sink.lock() {
            // A closed stderr must not stop the run.
            let _ = writeln!(out, "[{t:>8.3}s] {text}");
            let _ = out.flush();
        }
    }

    /// Say something that is not a stage event (e.g. waiting for watchers).
    pub fn note(&self, text: &str) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => self.line(text),
        }
    }

    /// Follow a run of `probe` through `rx` until its sender is dropped.
    pub fn track(&self, probe: &ProbeConfig, rx: watch::Receiver<RunProgress>) -> Tracked {
        let probe = Arc::new(probe.clone());
        let started = Instant::now();
        match self.mode {
            Mode::Bars => {
                let bar = ProgressBar::new_spinner();
                let bar = match &self.bars {
                    Some(m) => m.add(bar),
                    None => bar,
                };
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_prefix(probe.name.clone());
                bar.enable_steady_tick(TICK);
                let task = tokio::spawn(follow_bar(bar.clone(), probe.clone(), rx, started));
                Tracked {
                    probe,
                    bar: Some(bar),
                    task: Some(task),
                }
            }
            Mode::Lines => {
                self.line(&format!(
                    "{}: run started (deadline {})",
                    probe.name,
                    human(probe.deadline())
                ));
                let task = tokio::spawn(follow_lines(self.clone(), probe.clone(), rx, started));
                Tracked {
                    probe,
                    bar: None,
                    task: Some(task),
                }
            }
            Mode::Auto | Mode::None => Tracked {
                probe,
                bar: None,
                task: None,
            },
        }
    }

    /// The run is over (its progress sender dropped): show how it ended.
    pub async fn finish(&self, tracked: Tracked, outcome: &Outcome) {
        if let Some(task) = tracked.task {
            // The follower ends when the sender is dropped; do not hang
            // the report on a display task if it ever does not.
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        let p = report::probe_report(&tracked.probe, outcome);
        let verdict = report::verdict_text(&p);
        let took = report::end_to_end_seconds(&p)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map(|d| format!(" in {}", human(d)))
            .unwrap_or_default();
        let stages = done_list(&outcome.stages);
        if let Some(bar) = tracked.bar {
            let mark = if p.passed { "✓" } else { "✗" };
            bar.set_style(
                ProgressStyle::with_template("{prefix:.bold} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("{mark} {}", tracked.probe.name));
            bar.finish_with_message(format!("{verdict}{took}  {stages}"));
        } else {
            self.line(&format!("{}: {verdict}{took}", tracked.probe.name));
        }
    }

    /// Stop drawing (the finished bars stay on screen as they are).
    pub fn close(&self) {
        if self.bars.is_some() {
            if let Some(cell) = BARS.get() {
                if let Ok(mut g) = cell.lock() {
                    *g = None;
                }
            }
        }
    }
}

/// `✓ store_write 12.0ms · ✓ eso_sync 812.0ms`.
fn done_list(stages: &[StageTiming]) -> String {
    stages
        .iter()
        .filter(|s| s.stage != Stage::EndToEnd)
        .filter_map(|s| s.duration.map(|d| format!("✓ {} {}", s.stage, human(d))))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The stages in flight with their time against their deadline.
fn in_flight(probe: &ProbeConfig, p: &RunProgress) -> Vec<String> {
    let now = Utc::now();
    p.stages
        .iter()
        .filter(|s| s.completed_at.is_none())
        .map(|s| {
            let elapsed = (now - s.started_at).to_std().unwrap_or_default();
            format!(
                "{} {}/{}",
                s.stage,
                human(elapsed),
                human(probe.stage_deadline(s.stage))
            )
        })
        .collect()
}

/// The one-line state of a run in flight.
pub fn status_line(probe: &ProbeConfig, p: &RunProgress, run_elapsed: Duration) -> String {
    let running = in_flight(probe, p);
    let now = if p.stages.is_empty() {
        "logging in to the store".to_string()
    } else if running.is_empty() {
        "finishing".to_string()
    } else {
        format!("▸ {}", running.join(", "))
    };
    let trigger = p
        .sync_trigger
        .map(|t| format!("  sync {}", t.as_str()))
        .unwrap_or_default();
    let done = done_list(&p.stages);
    let done = if done.is_empty() {
        String::new()
    } else {
        format!("  {done}")
    };
    format!(
        "{now}  [run {} of {}]{trigger}{done}",
        human(run_elapsed),
        human(probe.deadline())
    )
}

async fn follow_bar(
    bar: ProgressBar,
    probe: Arc<ProbeConfig>,
    mut rx: watch::Receiver<RunProgress>,
    started: Instant,
) {
    loop {
        let p = rx.borrow_and_update().clone();
        bar.set_message(status_line(&probe, &p, started.elapsed()));
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn follow_lines(
    display: Display,
    probe: Arc<ProbeConfig>,
    mut rx: watch::Receiver<RunProgress>,
    started: Instant,
) {
    let name = probe.name.as_str();
    let mut seen = RunProgress::default();
    let mut last_line = Instant::now();
    loop {
        let p = rx.borrow_and_update().clone();
        for s in &p.stages {
            let before = seen.stages.iter().find(|o| o.stage == s.stage);
            if before.is_none() {
                let trigger = match (s.stage, p.sync_trigger) {
                    (Stage::EsoSync, Some(t)) => format!(" (sync {})", t.as_str()),
                    _ => String::new(),
                };
                display.line(&format!("{name}: {} started{trigger}", s.stage));
                last_line = Instant::now();
            }
            if let (Some(d), true) = (s.duration, before.is_none_or(|b| b.duration.is_none())) {
                display.line(&format!("{name}: {} done in {}", s.stage, human(d)));
                last_line = Instant::now();
            }
        }
        seen = p;
        if last_line.elapsed() >= HEARTBEAT {
            let running = in_flight(&probe, &seen);
            if !running.is_empty() {
                display.line(&format!(
                    "{name}: still waiting: {} [run {} of {}]",
                    running.join(", "),
                    human(started.elapsed()),
                    human(probe.deadline())
                ));
            }
            last_line = Instant::now();
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const CONFIG: &str = r#"
probes:
  - name: eso-volume
    interval: 1m
    deadline: 2m
    stage_deadlines: {eso_sync: 30s}
    store: {address: "https://vault.example:8200", path: canary/v, auth: {kubernetes: {role: canary}}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {name: canary-volume}
      canary: {selector: app=canary-volume, source: file}
"#;

    /// A shared buffer standing in for stderr.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn timing(stage: Stage, ago_ms: i64, took_ms: Option<i64>) -> StageTiming {
        let start = Utc::now() - chrono::Duration::milliseconds(ago_ms);
        StageTiming {
            stage,
            started_at: start,
            completed_at: took_ms.map(|t| start + chrono::Duration::milliseconds(t)),
            duration: took_ms.map(|t| Duration::from_millis(t as u64)),
        }
    }

    #[test]
    fn the_status_line_names_the_stage_in_flight_against_its_deadline() {
        let config = Config::from_yaml(CONFIG, "t.yaml").unwrap();
        let probe = &config.probes[0];
        let p = RunProgress {
            stages: vec![
                timing(Stage::StoreWrite, 1500, Some(12)),
                timing(Stage::EsoSync, 1488, None),
            ],
            sync_trigger: Some(crate::vocab::SyncTrigger::Forced),
        };
        let line = status_line(probe, &p, Duration::from_millis(1600));
        assert!(line.starts_with("▸ eso_sync 1."), "{line}");
        assert!(line.contains("/30.000s"), "{line}");
        assert!(line.contains("[run 1.600s of 2m00.0s]"), "{line}");
        assert!(line.contains("sync forced"), "{line}");
        assert!(line.contains("✓ store_write 12.0ms"), "{line}");
    }

    #[tokio::test]
    async fn line_mode_prints_one_line_per_stage_event() {
        let config = Config::from_yaml(CONFIG, "t.yaml").unwrap();
        let probe = &config.probes[0];
        let buf = Buf::default();
        let display = Display::with_sink(Mode::Lines, Box::new(buf.clone()));
        let (tx, rx) = watch::channel(RunProgress::default());
        let tracked = display.track(probe, rx);
        tx.send_modify(|p| p.stages = vec![timing(Stage::StoreWrite, 0, None)]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        tx.send_modify(|p| {
            p.stages = vec![
                timing(Stage::StoreWrite, 20, Some(12)),
                timing(Stage::EsoSync, 8, None),
                timing(Stage::SecretUpdate, 8, None),
            ];
            p.sync_trigger = Some(crate::vocab::SyncTrigger::Natural);
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(tx);
        let outcome = Outcome {
            probe: probe.name.clone(),
            run_id: "r".into(),
            digest: None,
            started_at: Utc::now(),
            finished_at: Utc::now(),
            stages: vec![timing(Stage::StoreWrite, 20, Some(12))],
            failure: Some(crate::vocab::Failure {
                stage: Stage::EsoSync,
                reason: crate::vocab::Reason::Aborted,
            }),
            result: crate::vocab::RunResult::Aborted,
            detail: None,
            sync_trigger: None,
        };
        display.finish(tracked, &outcome).await;
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let events: Vec<&str> = text
            .lines()
            .map(|l| l.split_once("] ").unwrap().1)
            .collect();
        assert_eq!(
            events,
            [
                "eso-volume: run started (deadline 2m00.0s)",
                "eso-volume: store_write started",
                "eso-volume: store_write done in 12.0ms",
                "eso-volume: eso_sync started (sync natural)",
                "eso-volume: secret_update started",
                "eso-volume: ABORTED at eso_sync",
            ],
            "{text}"
        );
    }
}
