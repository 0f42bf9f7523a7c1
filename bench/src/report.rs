//! `bench/results.md`: the machine, date and commit, then each phase's
//! numbers as tables, and the targets with what was measured.

use std::fmt::Write as _;
use std::path::Path;

use crate::accuracy::{AccuracyResult, Row, KNOBS, REFRESH_INTERVAL};
use crate::cost::{self, Measurement};
use crate::proxy;
use crate::Args;

/// Everything one benchmark run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Results {
    /// UTC date and time of the start.
    pub date: String,
    /// `git rev-parse HEAD`, with `-dirty` when the tree has changes.
    pub commit: String,
    /// `nproc`.
    pub cpus: String,
    /// CPU model.
    pub cpu_model: String,
    /// Total memory.
    pub memory: String,
    /// `/proc/loadavg` at the start (the machine may be shared).
    pub load_at_start: String,
    /// The command line's sizes.
    pub settings: String,
    /// Accuracy phase.
    pub accuracy: Option<AccuracyResult>,
    /// Cost phase, one per probe count.
    pub cost: Vec<Measurement>,
    /// Scale phase.
    pub scale: Option<Measurement>,
    /// The real cluster tier.
    pub real: Option<crate::real::RealResult>,
    /// Why the real tier was skipped.
    pub real_skipped: Option<String>,
    /// Wall time of the whole benchmark, seconds.
    pub seconds: f64,
}

fn sh(cmd: &str, args: &[&str], dir: &Path) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Results {
    /// Describe the machine and the checkout.
    pub async fn new(root: &Path, args: &Args) -> Results {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let mut commit = sh("git", &["rev-parse", "--short=12", "HEAD"], root);
        if !sh(
            "git",
            &["status", "--porcelain", "--untracked-files=no"],
            root,
        )
        .is_empty()
        {
            commit.push_str("-dirty");
        }
        let settings = if args.quick {
            "--quick (smoke sizes)".to_string()
        } else {
            format!(
                "accuracy {} runs ({} copies of each chain, interval {}), baseline {} runs; cost {:?} probes × {} runs, interval {}; scale {} probes, interval {}, {}",
                args.accuracy_runs,
                args.accuracy_copies,
                humantime::format_duration(args.accuracy_interval),
                args.baseline_runs,
                args.cost_probes,
                args.cost_runs_per_probe,
                humantime::format_duration(args.cost_interval),
                args.scale_probes,
                humantime::format_duration(args.scale_interval),
                humantime::format_duration(args.scale_duration),
            )
        };
        Results {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit,
            cpus: sh("nproc", &[], root),
            cpu_model,
            memory: format!("{:.1} GiB", mem_kb / 1048576.0),
            load_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            settings,
            ..Default::default()
        }
    }

    /// The markdown document.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# secret-canary benchmark results\n");
        let _ = writeln!(
            s,
            "Written by `scripts/bench.sh` (`secret-canary-bench`, see `bench/README.md`). Do not edit by hand.\n"
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| date | {} |", self.date);
        let _ = writeln!(s, "| commit | `{}` |", self.commit);
        let _ = writeln!(
            s,
            "| machine | {} CPUs ({}), {} RAM |",
            self.cpus, self.cpu_model, self.memory
        );
        let _ = writeln!(s, "| load average at start | {} |", self.load_at_start);
        let _ = writeln!(s, "| sizes | {} |", self.settings);
        let _ = writeln!(
            s,
            "| total time | {:.0} s ({:.1} min) |\n",
            self.seconds,
            self.seconds / 60.0
        );
        let _ = writeln!(
            s,
            "Everything runs on one machine: the lab (API server, controllers, canary processes) in the benchmark process, OpenBao (`bao server -dev`), and the measured release build of `secret-canary run` as its own process. Numbers from a shared or busy machine are upper bounds.\n"
        );
        self.targets(&mut s);
        if let Some(a) = &self.accuracy {
            accuracy_md(&mut s, a);
        }
        if !self.cost.is_empty() {
            cost_md(&mut s, &self.cost);
        }
        if let Some(m) = &self.scale {
            scale_md(&mut s, m, &self.cost);
        }
        s.push_str(&self.real_section(None));
        s
    }

    /// The real tier's section, between markers so a run of the real tier
    /// alone replaces it in place. `previous` is the current results.md,
    /// whose simulated accuracy table is shown beside the real one when this
    /// run did not measure it.
    pub fn real_section(&self, previous: Option<&str>) -> String {
        let mut s = String::new();
        s.push_str(REAL_BEGIN);
        s.push('\n');
        let sim: Vec<SimRow> = match &self.accuracy {
            Some(a) => a
                .overall
                .iter()
                .map(|r| SimRow {
                    stage: r.stage.to_string(),
                    cells: format!(
                        "{} | {} | {} | {}",
                        r.prober_ms.n,
                        ms(r.prober_ms.p50),
                        ms(r.prober_ms.p99),
                        ms(r.prober_ms.max)
                    ),
                })
                .collect(),
            None => previous.map(sim_rows_from_md).unwrap_or_default(),
        };
        let sim_from = match (&self.accuracy, previous) {
            (Some(_), _) => "this run's accuracy phase".to_string(),
            (None, Some(p)) => format!("the accuracy phase above (run of {})", md_date(p)),
            (None, None) => "not measured".to_string(),
        };
        real_md(
            &mut s,
            self.real.as_ref(),
            self.real_skipped.as_deref(),
            &sim,
            &sim_from,
            &self.date,
            &self.commit,
        );
        s.push_str(REAL_END);
        s.push('\n');
        s
    }

    /// `previous` (results.md) with its real-tier section replaced by this
    /// run's (appended when it has none).
    pub fn splice_real(&self, previous: &str) -> String {
        let section = self.real_section(Some(previous));
        match (previous.find(REAL_BEGIN), previous.find(REAL_END)) {
            (Some(a), Some(b)) if b > a => {
                let end = b + REAL_END.len();
                let rest = previous[end..]
                    .strip_prefix('\n')
                    .unwrap_or(&previous[end..]);
                format!("{}{section}{rest}", &previous[..a])
            }
            _ => format!("{}\n{section}", previous.trim_end()),
        }
    }

    fn targets(&self, s: &mut String) {
        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(s, "| target | measured | met |\n|---|---|---|");
        let yes = |ok: bool| if ok { "yes" } else { "**no**" };
        if let Some(a) = &self.accuracy {
            let worst = a
                .overall
                .iter()
                .filter(|r| r.prober_ms.n > 0)
                .map(|r| (r.prober_ms.p99, r.stage))
                .fold((0.0f64, ""), |acc, x| if x.0 > acc.0 { x } else { acc });
            let base_mean = mean_of(a.overall.iter().map(|r| &r.baseline_ms.mean));
            let _ = writeln!(
                s,
                "| stage timing error p99 ≤ 5 ms (polling baseline ~500 ms mean) | worst stage p99 {:.1} ms (`{}`); baseline mean error {:.0} ms | {} |",
                worst.0,
                worst.1,
                base_mean,
                yes(worst.0 <= 5.0)
            );
        }
        let find = |n: usize| self.cost.iter().find(|m| m.probes == n);
        if let Some(m10) = find(10) {
            let rss = m10.at_end.rss as f64 / 1048576.0;
            let _ = writeln!(
                s,
                "| RSS ≤ 20 MiB with 10 probes | {rss:.1} MiB (peak {:.1} MiB) | {} |",
                m10.at_end.hwm as f64 / 1048576.0,
                yes(rss <= 20.0)
            );
        }
        let per_probe = self.per_probe_kib();
        if let Some((kib, from, to)) = per_probe {
            let _ = writeln!(
                s,
                "| ≤ 50 KiB per additional probe | {kib:.0} KiB ({from} → {to} probes) | {} |",
                yes(kib <= 50.0)
            );
        }
        if let Some(m) = self
            .cost
            .iter()
            .filter(|m| m.scrape_ms.n > 0)
            .max_by_key(|m| m.probes)
        {
            let _ = writeln!(
                s,
                "| `/metrics` scrape p99 ≤ 5 ms at 100 probes | {:.2} ms at {} probes | {} |",
                m.scrape_ms.p99,
                m.probes,
                yes(m.scrape_ms.p99 <= 5.0)
            );
        }
        if let Some(m) = self
            .cost
            .iter()
            .filter(|m| m.series > 0)
            .max_by_key(|m| m.probes)
        {
            let (series, kib) = (
                m.series as f64 / m.probes as f64,
                m.scrape_bytes as f64 / 1024.0 / m.probes as f64,
            );
            let _ = writeln!(
                s,
                "| ≤ 100 series and ≤ 10 KiB of exposition per probe | {series:.0} series, {kib:.1} KiB per probe ({} probes: {} series, {:.0} KiB) | {} |",
                m.probes,
                m.series,
                m.scrape_bytes as f64 / 1024.0,
                yes(series <= 100.0 && kib <= 10.0)
            );
        }
        if let Some(m) = self.scale.as_ref().filter(|m| m.scrape_ms.n > 0) {
            let _ = writeln!(
                s,
                "| `/metrics` scrape p99 ≤ 50 ms at 1,000 probes | {:.2} ms at {} probes ({:.0} KiB) | {} |",
                m.scrape_ms.p99,
                m.probes,
                m.scrape_bytes as f64 / 1024.0,
                yes(m.scrape_ms.p99 <= 50.0)
            );
        }
        if let Some(m) = &self.scale {
            let _ = writeln!(
                s,
                "| schedule jitter p99 ≤ 10 ms at 1,000 probes; no missed ticks | p99 {:.1} ms at {} probes; {} missed, {} skipped | {} |",
                m.jitter_p99 * 1000.0,
                m.probes,
                m.missed,
                m.skipped,
                yes(m.jitter_p99 <= 0.010 && m.missed == 0.0)
            );
        }
        let all: Vec<&Measurement> = self.cost.iter().collect();
        if !all.is_empty() {
            let lists: u64 = all
                .iter()
                .map(|m| proxy::verb_total(&m.window_requests, "list"))
                .sum();
            let _ = writeln!(
                s,
                "| zero periodic LIST calls | {lists} LIST requests after start-up over {} measurements | {} |",
                all.len(),
                yes(lists == 0)
            );
        }
        let _ = writeln!(s);
    }

    /// (KiB per additional probe, from, to) between the two largest cost runs.
    fn per_probe_kib(&self) -> Option<(f64, usize, usize)> {
        let mut ms: Vec<&Measurement> = self.cost.iter().chain(self.scale.as_ref()).collect();
        ms.sort_by_key(|m| m.probes);
        ms.dedup_by_key(|m| m.probes);
        let n = ms.len();
        if n < 2 {
            return None;
        }
        // Prefer 10 -> 100 (the wording) when both exist.
        let (a, b) = match (
            ms.iter().find(|m| m.probes == 10),
            ms.iter().find(|m| m.probes == 100),
        ) {
            (Some(a), Some(b)) => (*a, *b),
            _ => (ms[n - 2], ms[n - 1]),
        };
        let kib = (b.at_end.rss as f64 - a.at_end.rss as f64)
            / 1024.0
            / (b.probes - a.probes).max(1) as f64;
        Some((kib, a.probes, b.probes))
    }
}

fn mean_of<'a>(xs: impl Iterator<Item = &'a f64>) -> f64 {
    let v: Vec<f64> = xs.copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn ms(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn err_cells(r: &Row) -> String {
    let e = |x: &crate::stats::Summary| {
        if x.n == 0 {
            "– | – | – | –".to_string()
        } else {
            format!("{} | {} | {} | {}", x.n, ms(x.p50), ms(x.p99), ms(x.max))
        }
    };
    format!("{} | {}", e(&r.prober_ms), e(&r.baseline_ms))
}

fn accuracy_md(s: &mut String, a: &AccuracyResult) {
    let _ = writeln!(
        s,
        "## Accuracy: measured stage durations against the lab's ground truth\n"
    );
    let _ = writeln!(
        s,
        "![Stage timing error per stage, secret-canary against kubectl polling (log scale)](accuracy.svg)\n"
    );
    let knobs = KNOBS
        .iter()
        .map(|(k, v)| format!("`{k} {v}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "{} probes (each chain variant {} times) ran concurrently with randomized controller delays ({knobs}; ESO `refreshInterval: {REFRESH_INTERVAL}`). \
         The prober's runs are read from `/probes`; the baseline is `bench/baseline.py`, which writes with `bao kv put` and runs `kubectl get -o json` once a second on the same chains afterwards. \
         Error = |measured duration − true duration| in ms; the truth is the lab's `truth.jsonl` and OpenBao's `created_time` (see `bench/src/accuracy.rs` for which step ends which stage).\n",
        a.probes,
        a.probes / 3,
    );
    let failures = if a.prober_failures.is_empty() {
        String::new()
    } else {
        format!(
            " (failures: {})",
            a.prober_failures
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let _ = writeln!(
        s,
        "Prober: {} runs, {} succeeded{failures}, {} not matched to the truth. Baseline: {} runs, {} saw every milestone, {} not matched. Phase time {:.0} s.\n",
        a.prober_runs,
        a.prober_success,
        a.prober_unscored,
        a.baseline_runs,
        a.baseline_complete,
        a.baseline_unscored,
        a.seconds
    );
    let head = "| n | p50 | p99 | max | n | p50 | p99 | max |";
    let _ = writeln!(
        s,
        "All chain variants together (ms):\n\n| stage | true p50 {head}\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(s, "| | | **prober** | | | | **kubectl baseline** | | | |");
    for r in &a.overall {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} |",
            r.stage,
            ms(r.truth_ms.p50),
            err_cells(r)
        );
    }
    let _ = writeln!(
        s,
        "\nPer chain variant (ms; prober columns first, then the baseline's):\n\n| chain | stage | true p50 {head}\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &a.rows {
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} |",
            r.kind.as_str(),
            r.stage,
            ms(r.truth_ms.p50),
            err_cells(r)
        );
    }
    let _ = writeln!(s);
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

fn verbs(c: &std::collections::BTreeMap<String, f64>) -> String {
    if c.is_empty() {
        return "–".into();
    }
    c.iter()
        .map(|(v, n)| format!("{v} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn counts(c: &proxy::Counts) -> String {
    if c.is_empty() {
        return "–".into();
    }
    c.keys()
        .map(|v| format!("{v} {}", proxy::verb_total(c, v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn cost_md(s: &mut String, ms_: &[Measurement]) {
    let _ = writeln!(
        s,
        "## Cost: memory, CPU and API load of `secret-canary run`\n"
    );
    let _ = writeln!(
        s,
        "![Resident memory and /metrics scrape time against the number of probes](footprint.svg)\n"
    );
    let _ = writeln!(
        s,
        "Each probe has its own ESO + Secret volume chain (ExternalSecret with `refreshInterval: 1h` and `force_sync: true`, its Secret, a one-Pod canary Deployment reading the mounted file), so N probes are N independent chains with N canary processes. \
         The prober talks to the lab's API server through a counting proxy, so only its own requests are counted. \
         The window starts when `/readyz` turns 200 and ends after the fixed number of runs; `/metrics` is scraped every 2 s during it. \
         Scrape latency is then measured with scrapes 20 ms apart while the probes keep running, by a client on a thread and runtime of its own (the benchmark's runtime also runs the lab), from the request sent to the body's last byte.\n"
    );
    if let Some(w) = ms_.iter().map(|m| m.eso_workers).max() {
        let rate = ms_
            .iter()
            .map(|m| m.probes as f64 / m.interval_s.max(1e-9))
            .fold(0.0, f64::max);
        let _ = writeln!(s, "{}\n", eso_workers_note(w, rate));
    }
    let _ = writeln!(
        s,
        "| probes | runs (ok) | ready | RSS at ready | RSS at end | peak RSS | CPU per run | CPU share | requests per run | start-up requests | LIST after start-up | scrape p50 / p99 | exposition |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for m in ms_ {
        let cpu = m.at_end.cpu - m.at_ready.cpu;
        let _ = writeln!(
            s,
            "| {} | {:.0} ({:.0}) | {:.1} s | {} MiB | {} MiB | {} MiB | {:.2} ms | {:.1} % | {} | {} | {} | {:.2} / {:.2} ms | {:.0} KiB |",
            m.probes,
            m.runs,
            m.success,
            m.ready_s,
            mib(m.at_ready.rss),
            mib(m.at_end.rss),
            mib(m.at_end.hwm),
            m.cpu_per_run() * 1000.0,
            cpu / m.window_s.max(1e-9) * 100.0,
            verbs(&cost::per_run_by_verb(m)),
            counts(&m.startup_requests),
            proxy::verb_total(&m.window_requests, "list"),
            m.scrape_ms.p50,
            m.scrape_ms.p99,
            m.scrape_bytes as f64 / 1024.0,
        );
    }
    let _ = writeln!(
        s,
        "\nCPU share is CPU time over the window's wall time (100 % = one core). Requests per run are the window's requests over its runs: the `patch` is the force-sync annotation; `watch` requests are re-opened watches (kube-rs re-watches from the last resourceVersion when a watch times out), not LISTs.\n"
    );
}

fn scale_md(s: &mut String, m: &Measurement, cost: &[Measurement]) {
    let _ = writeln!(s, "## Scale: {} probes in one process\n", m.probes);
    let every = humantime::format_duration(std::time::Duration::from_secs_f64(m.interval_s));
    let shares = m.probes.div_ceil(m.chains.max(1));
    let cadence = if m.staggered && shares > 1 {
        format!(
            "each of the {shares} probes of a chain runs every {every}, the k-th at second k·{}/{shares} of each period (cron `S/{} * * * * *`), so {} runs start together every {:.0} s",
            m.interval_s, m.interval_s, m.chains, m.interval_s / shares as f64
        )
    } else if m.staggered {
        format!(
            "every probe runs every {every}, staggered by cron schedules (probe i at second i mod {}), so about {:.0} runs start each second",
            m.interval_s, m.probes as f64 / m.interval_s
        )
    } else {
        format!("every probe on a {every} interval, all starting together (every tick is a burst of {} runs)", m.probes)
    };
    let _ = writeln!(
        s,
        "{} probes on {} ESO + Secret volume chains as in the cost phase; {cadence}; measured for {:.0} s after `/readyz`. \
         Jitter is `secret_canary_schedule_jitter_seconds` (tick due → run started; one histogram for the process, since one scheduler starts every probe's runs), interpolated within its buckets (1, 2.5, 5, 10, 25 ms, ...).\n",
        m.probes,
        m.chains,
        m.window_s
    );
    let base = cost
        .iter()
        .filter(|c| c.probes < m.probes)
        .max_by_key(|c| c.probes);
    let per_probe = |b: &Measurement| {
        (m.at_end.rss as f64 - b.at_end.rss as f64) / 1024.0 / (m.probes - b.probes).max(1) as f64
    };
    let _ = writeln!(
        s,
        "| probes | ready | runs (ok / failed) | skipped ticks | missed ticks | jitter p50 | jitter p99 | end-to-end p50 | RSS | memory per probe | CPU share | scrape p50 / p99 | exposition |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let cpu = m.at_end.cpu - m.at_ready.cpu;
    let _ = writeln!(
        s,
        "| {} | {:.1} s | {:.0} ({:.0} / {:.0}) | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} s | {} MiB | {} | {:.1} % | {:.1} / {:.1} ms | {:.0} KiB |",
        m.probes,
        m.ready_s,
        m.runs,
        m.success,
        m.failure,
        m.skipped,
        m.missed,
        m.jitter_p50 * 1000.0,
        m.jitter_p99 * 1000.0,
        m.e2e_p50,
        mib(m.at_end.rss),
        base.map(|b| format!("{:.0} KiB (vs {} probes)", per_probe(b), b.probes))
            .unwrap_or_else(|| format!("{:.0} KiB (RSS / probes)", m.at_end.rss as f64 / 1024.0 / m.probes as f64)),
        cpu / m.window_s.max(1e-9) * 100.0,
        m.scrape_ms.p50,
        m.scrape_ms.p99,
        m.scrape_bytes as f64 / 1024.0,
    );
    let _ = writeln!(
        s,
        "\nThe scale run talks to the lab's API server directly (no counting proxy) and the lab's readiness probes run every 10 s. {}\n",
        eso_workers_note(m.eso_workers, m.probes as f64 / m.interval_s.max(1e-9))
    );
}

/// What the lab's ESO worker count means for a phase asking `rate` syncs a
/// second: upstream's one worker completes about 16 a second in this lab.
fn eso_workers_note(workers: usize, rate: f64) -> String {
    let what = if workers <= 1 {
        "as upstream's default `--concurrent=1`, which completes about 16 syncs a second in this lab".to_string()
    } else {
        format!("ESO's `--concurrent={workers}`; upstream's default of 1 completes only about 16 syncs a second in this lab, so the lab, not the prober, would be the bottleneck")
    };
    format!(
        "The lab's ESO ran with {workers} reconcile worker{} ({what}); the phase asks up to {rate:.0} syncs a second.",
        if workers == 1 { "" } else { "s" }
    )
}

const REAL_BEGIN: &str =
    "<!-- real-tier:begin (written by `secret-canary-bench --phases real`) -->";
const REAL_END: &str = "<!-- real-tier:end -->";

/// One simulated-lab accuracy row: the stage and its `n | p50 | p99 | max`.
#[derive(Debug, Clone, PartialEq)]
pub struct SimRow {
    /// Stage.
    pub stage: String,
    /// `n | p50 | p99 | max` (prober).
    pub cells: String,
}

/// The prober's columns of the "All chain variants together" table of an
/// earlier results.md.
pub fn sim_rows_from_md(text: &str) -> Vec<SimRow> {
    let Some(start) = text.find("All chain variants together") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text[start..].lines().skip(1) {
        if line.starts_with("Per chain variant") || line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", stage, true p50, n, p50, p99, max, n, p50, p99, max, ""
        if cells.len() >= 7 && cells[1].starts_with('`') {
            out.push(SimRow {
                stage: cells[1].trim_matches('`').to_string(),
                cells: cells[3..7].join(" | "),
            });
        }
    }
    out
}

fn md_date(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("| date | "))
        .map(|l| l.trim_end_matches(" |").to_string())
        .unwrap_or_else(|| "unknown date".into())
}

fn real_md(
    s: &mut String,
    r: Option<&crate::real::RealResult>,
    skipped: Option<&str>,
    sim: &[SimRow],
    sim_from: &str,
    date: &str,
    commit: &str,
) {
    let _ = writeln!(
        s,
        "## Real cluster tier: accuracy, API load and time to detect\n"
    );
    let Some(r) = r else {
        if let Some(why) = skipped {
            let _ = writeln!(s, "Not measured in this run: {why}.\n");
        } else {
            let _ = writeln!(s, "Not measured in this run (`--phases real`).\n");
        }
        return;
    };
    let versions = r
        .versions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        s,
        "Run {date}, commit `{commit}`. `secret-canary-lab up --cluster real` ({versions}): real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and External Secrets Operator; the lab's node agent, Reloader and Bank-Vaults webhook against the real API server with their own credentials. \
{} probes on their own chains (4 ESO + Reloader + env, 3 ESO + Secret volume, 3 Bank-Vaults restart; ESO `refreshInterval: 2s`, Kubernetes auth) ran concurrently every {} for {:.0} s; the node agent refreshes Secret volumes on the **upstream kubelet profile: sync period {} plus up to 50 % jitter**. \
The prober (**{} build**) runs as its own ServiceAccount (`{}`, a Role like the chart's). Every stage is scored against `truth.jsonl` (the API server's audit log `stageTimestamp`s and the node agent's records) with the same code as the simulated phase. \
**Load average** when the probes started: {}; when they stopped: {} (2 cores shared with other jobs). Lab ready in {:.1} s; phase time {:.0} s.\n",
        r.probes,
        r.interval,
        r.window_s,
        r.sync_period,
        r.profile,
        r.user,
        r.load.0,
        r.load.1,
        r.lab_ready_s,
        r.seconds
    );
    real_targets(s, r);
    let _ = writeln!(
        s,
        "![Stage timing error per stage on the real cluster (log scale)](accuracy-real.svg)\n"
    );
    let failures = if r.failures.is_empty() {
        "none".to_string()
    } else {
        r.failures
            .iter()
            .map(|(k, v)| format!("`{k}` × {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "Runs: {} ({} succeeded; failed: {failures}); {} successful runs could not be matched to the truth.\n",
        r.runs, r.success, r.unscored
    );
    let _ = writeln!(
        s,
        "|stage|sim n|sim p50|sim p99|sim max|real true p50|real n|real p50|real p99|real max|\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| | **simulated lab** (ms, {sim_from}) | | | | **real cluster** (ms) | | | | |"
    );
    for row in &r.overall {
        let simc = sim
            .iter()
            .find(|x| x.stage == row.stage)
            .map(|x| x.cells.clone())
            .unwrap_or_else(|| "– | – | – | –".into());
        let p = &row.prober_ms;
        let _ = writeln!(
            s,
            "| `{}` | {simc} | {} | {} | {} | {} | {} |",
            row.stage,
            ms(row.truth_ms.p50),
            p.n,
            ms(p.p50),
            ms(p.p99),
            ms(p.max)
        );
    }
    truth_windows_md(s, r);
    if !r.beyond.is_empty() {
        let _ = writeln!(
            s,
            "\nError beyond that window: each milestone from the audit log happened between its write's `requestReceivedTimestamp` and `stageTimestamp`, so a stage's true duration is only known to lie between the earliest and the latest its two ends allow; this is how far the prober's duration lies outside that range (0 inside; the same as the error above where both ends are known to the instant: OpenBao's `created_time`, the prober's own start). All chains, ms:\n"
        );
        let _ = writeln!(s, "| stage | n | p50 | p99 | max |\n|---|---|---|---|---|");
        for (stage, x) in &r.beyond {
            let _ = writeln!(
                s,
                "| `{stage}` | {} | {} | {} | {} |",
                x.n,
                ms(x.p50),
                ms(x.p99),
                ms(x.max)
            );
        }
    }
    let _ = writeln!(
        s,
        "\nReal cluster per chain variant (|prober − audit-log truth|, ms):\n"
    );
    let _ = writeln!(
        s,
        "| chain | stage | true p50 | n | p50 | p99 | max |\n|---|---|---|---|---|---|---|"
    );
    for row in &r.rows {
        let p = &row.prober_ms;
        let _ = writeln!(
            s,
            "| {} | `{}` | {} | {} | {} | {} | {} |",
            row.kind.as_str(),
            row.stage,
            ms(row.truth_ms.p50),
            p.n,
            ms(p.p50),
            ms(p.p99),
            ms(p.max)
        );
    }
    let after_runs = r.runs.max(1) as f64;
    let lists_after: usize = r
        .verbs
        .iter()
        .filter(|v| v.verb == "list")
        .map(|v| v.after)
        .sum();
    let total_after: usize = r.verbs.iter().map(|v| v.after).sum();
    let _ = writeln!(
        s,
        "\nThe prober's own API requests, from the API server's audit log (user `{}`; one per audit ID, so a watch counts once), split at the moment `/readyz` turned 200. **LIST after start-up: {lists_after}** ({total_after} requests in {:.0} s after start-up, {:.2} per run):\n",
        r.user,
        r.window_s,
        total_after as f64 / after_runs
    );
    let _ = writeln!(s, "| verb | resource | start-up | after start-up | per run after start-up |\n|---|---|---|---|---|");
    for v in &r.verbs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} |",
            v.verb,
            v.resource,
            v.startup,
            v.after,
            v.after as f64 / after_runs
        );
    }
    let _ = writeln!(s);
    if let Some(d) = &r.detect {
        detect_md(s, d);
    }
}

/// The truth's own resolution: the audit window of the writes it is made of.
fn truth_windows_md(s: &mut String, r: &crate::real::RealResult) {
    if r.truth_windows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nThe truth's own resolution: an audit event is stamped when the response completes (`stageTimestamp`), after the write was committed; the commit lies between `requestReceivedTimestamp` and `stageTimestamp`. That window, for the writes the truth is made of (ms):\n"
    );
    let _ = writeln!(
        s,
        "| writer | resource | n | p50 | p99 | max |\n|---|---|---|---|---|---|"
    );
    for w in &r.truth_windows {
        let x = &w.window_ms;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            w.writer,
            w.resource,
            x.n,
            ms(x.p50),
            ms(x.p99),
            ms(x.max)
        );
    }
}

/// The targets that concern the real tier.
fn real_targets(s: &mut String, r: &crate::real::RealResult) {
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(
        s,
        "| target (real cluster) | measured | met |\n|---|---|---|"
    );
    if let Some(worst) = r
        .overall
        .iter()
        .filter(|x| x.prober_ms.n > 0)
        .max_by(|a, b| a.prober_ms.p99.total_cmp(&b.prober_ms.p99))
    {
        let _ = writeln!(
            s,
            "| stage timing error p99 ≤ 5 ms | worst stage p99 {} ms (`{}`); p50 ≤ {} ms on every stage | {} |",
            ms(worst.prober_ms.p99),
            worst.stage,
            ms(r.overall.iter().map(|x| x.prober_ms.p50).fold(0.0, f64::max)),
            yes(worst.prober_ms.p99 <= 5.0)
        );
    }
    if let Some((stage, worst)) = r
        .beyond
        .iter()
        .filter(|(_, x)| x.n > 0)
        .max_by(|a, b| a.1.p99.total_cmp(&b.1.p99))
    {
        let _ = writeln!(
            s,
            "| the same, counting only error beyond the truth's own window (below) | worst stage p99 {} ms (`{stage}`) | {} |",
            ms(worst.p99),
            yes(worst.p99 <= 5.0)
        );
    }
    let lists: usize = r
        .verbs
        .iter()
        .filter(|v| v.verb == "list")
        .map(|v| v.after)
        .sum();
    let _ = writeln!(
        s,
        "| zero periodic LIST calls | {lists} LIST after start-up in {:.0} s (audit log) | {} |",
        r.window_s,
        yes(lists == 0)
    );
    if let Some(d) = &r.detect {
        let exports: Vec<f64> = d.rows.iter().filter_map(|x| x.to_export_ms()).collect();
        if !exports.is_empty() {
            let worst = exports.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                s,
                "| detection ≤ 1 s (cluster signal → exported) | worst {} ms over {} of {} faults | {} |",
                ms(worst),
                exports.len(),
                d.rows.len(),
                yes(worst <= 1000.0 && exports.len() == d.rows.len())
            );
        }
    }
    let _ = writeln!(s);
}

fn opt_ms(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
}

fn detect_md(s: &mut String, d: &crate::real::detect::DetectResult) {
    let _ = writeln!(s, "### Time to detect (real cluster)\n");
    let _ = writeln!(
        s,
        "Each fault made by real means on the real tier (see `bench/src/real/detect.rs`), one probe on a chain of its own, a fresh prober whose first run starts at once. \
Signal = the cluster's own report, timed by the API server's audit log (`stageTimestamp`) or OpenBao's audit log; export = the first `/metrics` scrape (every 20 ms, so up to 20 ms late) showing `secret_canary_stage_blocked{{…}} 1` for the run or the failed run counted; verdict = the run's end as `/probes` reports it. \
A condition the prober reads as a cause (ExternalSecret `Ready=False`, a Pod in `ErrImagePull` or restarting) is exported as `stage_blocked` at once and ends the run after `blocked_for` (10 s default); `ProgressDeadlineExceeded`, `CrashLoopBackOff` and a store error end it at once. Load average at the start: {}.\n",
        d.load
    );
    let _ = writeln!(s, "| fault | the cluster's signal | signal → export (ms) | exported as | signal → verdict (ms) | verdict | run-ending signal → failure exported (ms) |\n|---|---|---|---|---|---|---|");
    for r in &d.rows {
        let exported = match &r.blocked {
            Some((_, st, re)) => format!("`stage_blocked{{stage=\"{st}\",reason=\"{re}\"}}`"),
            None if r.failure_exported.is_some() => "failed run (`runs_total`)".into(),
            None => "–".into(),
        };
        let fin = match &r.final_signal {
            Some((what, _)) => format!("{} ({what})", opt_ms(r.final_to_export_ms())),
            None => "–".into(),
        };
        let mut verdict = format!("`{}`", r.verdict);
        if !r.note.is_empty() {
            verdict.push_str(&format!(
                " ({})",
                r.note.replace('|', "/").replace('\n', " ")
            ));
        }
        let _ = writeln!(
            s,
            "| {} | {} | {} | {exported} | {} | {verdict} | {fin} |",
            r.fault,
            r.signal,
            opt_ms(r.to_export_ms()),
            opt_ms(r.to_verdict_ms()),
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod real_tests {
    use super::*;

    #[test]
    fn real_section_is_spliced_in_place_and_sim_rows_are_read_back() {
        let prev = "# r\n\n| date | 2026-11-29 14:28 UTC |\n\nAll chain variants together (ms):\n\n| stage | true p50 | n | p50 | p99 | max | n | p50 | p99 | max |\n|---|---|---|---|---|---|---|---|---|---|\n| | | **prober** | | | | **kubectl baseline** | | | |\n| `store_write` | 3.79 | 210 | 0.66 | 11 | 18 | 60 | 6.14 | 28 | 28 |\n\nPer chain variant (ms)\n\n## Cost\n";
        let rows = sim_rows_from_md(prev);
        assert_eq!(
            rows,
            vec![SimRow {
                stage: "store_write".into(),
                cells: "210 | 0.66 | 11 | 18".into()
            }]
        );
        let r = Results {
            real_skipped: Some("not built".into()),
            ..Default::default()
        };
        let once = r.splice_real(prev);
        assert!(once.starts_with(prev.trim_end()) && once.contains("not built"));
        let real = crate::real::RealResult {
            truth_windows: vec![crate::real::TruthWindow {
                writer: "ESO".into(),
                resource: "secrets".into(),
                window_ms: crate::stats::summarize(&[4.0, 6.0]),
            }],
            ..Default::default()
        };
        let with_real = Results {
            real: Some(real),
            ..Default::default()
        };
        let section = with_real.real_section(Some(prev));
        assert!(section.contains("| ESO | secrets | 2 |"), "{section}");
        assert!(section.contains("**LIST after start-up: 0**"));
        let twice = r.splice_real(&once);
        assert_eq!(once, twice);
        assert_eq!(twice.matches(REAL_BEGIN).count(), 1);
    }
}
