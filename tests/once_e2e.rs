//! `secret-canary once` as a person and a pipeline use it, through the
//! binary against the lab: live progress in a real pseudo-terminal (tmux),
//! `--force-sync` beating a one-hour refreshInterval, and `--compare`
//! failing when a lab knob slows a stage past the threshold.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use secret_canary::probe::cluster::external_secret_resource;
use secret_canary_lab::faults::{Knob, Latency};
use serde_json::{json, Value};

/// Run the product binary with `args`, bounded by `limit` (give the
/// probes a shorter deadline, so a stuck run still ends with a report).
async fn once(args: &[&str], limit: Duration) -> Output {
    let mut cmd = tokio::process::Command::new(support::canary_bin());
    cmd.arg("once")
        .args(args)
        .env("CI", "true")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("once {args:?} did not finish within {limit:?}"))
        .expect("the binary runs");
    eprintln!(
        "once {args:?} -> {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn stage_seconds(report: &Value, probe: &str, stage: &str) -> Option<f64> {
    report["probes"]
        .as_array()?
        .iter()
        .find(|p| p["probe"] == probe)?["stages"]
        .as_array()?
        .iter()
        .find(|s| s["stage"] == stage)?["duration_seconds"]
        .as_f64()
}

fn config_path(lab: &support::TestLab) -> PathBuf {
    lab.prober_config
        .clone()
        .expect("the lab writes prober.yaml")
}

/// The lab's prober config with every run deadline set to `deadline`.
fn with_deadline(lab: &support::TestLab, deadline: &str) -> PathBuf {
    let text = std::fs::read_to_string(config_path(lab)).unwrap();
    assert!(text.contains("deadline: 60s"), "{text}");
    let path = lab.dir.path().join(format!("prober-{deadline}.yaml"));
    std::fs::write(
        &path,
        text.replace("deadline: 60s", &format!("deadline: {deadline}")),
    )
    .unwrap();
    path
}

/// Set an ExternalSecret's refreshInterval through the API, and wait until
/// ESO has reconciled that spec change (so its next natural sync is an
/// interval away).
async fn set_refresh_interval(lab: &support::TestLab, name: &str, interval: &str) {
    let api: Api<DynamicObject> =
        Api::namespaced_with(lab.client(), "canary", &external_secret_resource());
    let patched = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"refreshInterval": interval}})),
        )
        .await
        .expect("patch the ExternalSecret");
    let generation = patched.metadata.generation.unwrap_or(0);
    support::wait_for(
        Duration::from_secs(20),
        "ESO to reconcile the refreshInterval change",
        || {
            let api = api.clone();
            async move {
                let Ok(es) = api.get(name).await else {
                    return false;
                };
                es.data["status"]["syncedResourceVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(&format!("{generation}-")))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_sync_makes_eso_sync_finish_long_before_the_refresh_interval() {
    let lab = support::start_rolled_out(&["canary-volume"], Duration::from_secs(60)).await;
    set_refresh_interval(&lab, "canary-volume", "1h").await;
    // Short deadlines, so the natural run shows the wait rather than lasting an hour.
    let config = with_deadline(&lab, "6s");
    let config = config.to_str().unwrap();

    // Natural: ESO will not look at the store again for an hour.
    let natural = once(
        &["-c", config, "-p", "eso-volume", "-o", "json"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(natural.status.code(), Some(1));
    let r = json_of(&natural);
    assert_eq!(r["probes"][0]["failure"]["stage"], "eso_sync", "{r:#}");
    assert_eq!(r["probes"][0]["failure"]["reason"], "timeout", "{r:#}");
    assert_eq!(r["probes"][0]["sync_trigger"], "natural", "{r:#}");

    // Forced: the annotation right after the write makes ESO sync at once.
    let started = Instant::now();
    let forced = once(
        &[
            "-c",
            config,
            "-p",
            "eso-volume",
            "-o",
            "json",
            "--force-sync",
        ],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        forced.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&forced.stdout)
    );
    let r = json_of(&forced);
    assert_eq!(r["probes"][0]["sync_trigger"], "forced", "{r:#}");
    let eso = stage_seconds(&r, "eso-volume", "eso_sync").expect("eso_sync completed");
    assert!(eso < 2.0, "forced eso_sync took {eso}s");
    assert!(started.elapsed() < Duration::from_secs(30));

    // The annotation is ESO's documented one, a unix time.
    let api: Api<DynamicObject> =
        Api::namespaced_with(lab.client(), "canary", &external_secret_resource());
    let es = api.get("canary-volume").await.unwrap();
    let value = es.metadata.annotations.unwrap_or_default()["force-sync"].clone();
    let secs: i64 = value.split('.').next().unwrap().parse().expect("unix time");
    assert!(
        (chrono::Utc::now().timestamp() - secs).abs() < 60,
        "{value}"
    );
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_fails_when_a_knob_slows_a_stage_past_the_threshold() {
    let lab = support::start_rolled_out(&["canary-volume"], Duration::from_secs(60)).await;
    // No natural syncs: every run's eso_sync is the forced one.
    set_refresh_interval(&lab, "canary-volume", "1h").await;
    // A stuck run ends (and reports where) well before the test gives up.
    let config = with_deadline(&lab, "20s");
    let config = config.to_str().unwrap();
    let dir = lab.dir.path().to_path_buf();
    let before = dir.join("before.json");
    let before_s = before.to_str().unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec!["-c", config, "-p", "eso-volume", "--force-sync"];
        a.extend_from_slice(extra);
        a
    };

    // The baseline, saved as the report file while stdout shows the table.
    let first = once(
        &[args(&[]), vec!["--report", before_s]].concat(),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(first.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&first.stdout).contains("TIMELINE"));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&before).unwrap()).unwrap();
    assert!(stage_seconds(&saved, "eso-volume", "eso_sync").is_some());

    // ESO takes 2 s longer to read the store: eso_sync regresses.
    lab.knobs
        .set_latency(Knob::EsoLatency, "2s".parse::<Latency>().unwrap());
    let slow = once(
        &[args(&["--compare"]), vec![before_s]].concat(),
        Duration::from_secs(90),
    )
    .await;
    let table = String::from_utf8_lossy(&slow.stdout);
    assert_eq!(slow.status.code(), Some(1), "{table}");
    assert!(table.contains("REGRESSION"), "{table}");
    let eso_line = table
        .lines()
        .find(|l| l.trim_start().starts_with("eso-volume") && l.contains(" eso_sync "))
        .unwrap_or_else(|| panic!("no eso_sync comparison row:\n{table}"));
    assert!(eso_line.ends_with("SLOWER"), "{eso_line}");

    // The same slowdown under a looser absolute threshold is no regression.
    let loose = once(
        &[
            args(&["--slower-by", "10s", "-o", "json", "--compare"]),
            vec![before_s],
        ]
        .concat(),
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(loose.status.code(), Some(0));
    assert_eq!(json_of(&loose)["comparison"]["regressed"], false);

    // Knob back to its default: no regression.
    lab.knobs
        .set_latency(Knob::EsoLatency, Knob::EsoLatency.default_latency());
    // Let a reconcile still sleeping on the old latency finish first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fine = once(
        &[args(&["--compare"]), vec![before_s]].concat(),
        Duration::from_secs(90),
    )
    .await;
    let table = String::from_utf8_lossy(&fine.stdout);
    assert_eq!(fine.status.code(), Some(0), "{table}");
    assert!(table.contains("no regression"), "{table}");

    // A baseline that is not a report is a usage error, before any run.
    std::fs::write(dir.join("junk.json"), "{}").unwrap();
    let junk = dir.join("junk.json");
    let bad = once(
        &["-c", config, "--compare", junk.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    lab.stop().await;
}

/// tmux on a private socket, killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (apt-get install tmux)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.cmd(&["capture-pane", "-p", "-t", "once"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_redraws_in_a_real_terminal_while_a_run_is_in_flight() {
    let lab = support::start_rolled_out(&["canary-volume"], Duration::from_secs(60)).await;
    // Keep the run in flight for a few seconds.
    lab.knobs
        .set_latency(Knob::EsoLatency, "3s".parse::<Latency>().unwrap());
    let dir = lab.dir.path();
    let report = dir.join("report.md");
    let tmux = Tmux {
        socket: dir.join("tmux.sock"),
    };
    let command = format!(
        "env -u CI -u RUST_LOG {} once -c {} -p eso-volume --force-sync --report {}; echo EXIT=$?; sleep 60",
        shell_quote(&support::canary_bin()),
        shell_quote(&config_path(&lab)),
        shell_quote(&report),
    );
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "once",
        "-x",
        "160",
        "-y",
        "30",
        &command,
    ]);

    // Sample the screen while the run is in flight: the bar must name the
    // stage in flight and its clock must move.
    let mut in_flight: Vec<String> = Vec::new();
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let screen = tmux.screen();
        if screen.contains("EXIT=") {
            last = screen;
            break;
        }
        if let Some(line) = screen.lines().find(|l| l.contains("▸ eso_sync")) {
            if in_flight.last().map(String::as_str) != Some(line) {
                in_flight.push(line.to_string());
            }
        }
        last = screen;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    eprintln!("in-flight lines:\n{}", in_flight.join("\n"));
    eprintln!("last screen:\n{last}");
    assert!(last.contains("EXIT=0"), "the run did not pass:\n{last}");
    assert!(
        in_flight.len() >= 3,
        "the progress line did not change while eso_sync was in flight: {in_flight:#?}"
    );
    assert!(in_flight
        .iter()
        .all(|l| l.contains("eso-volume") && l.contains("[run ")));
    assert!(
        in_flight.iter().any(|l| l.contains("✓ store_write")),
        "{in_flight:#?}"
    );
    // The finished bar stays, with every stage's duration, above the report.
    assert!(last.contains("✓ eso-volume PASS in"), "{last}");
    assert!(last.contains("TIMELINE"), "{last}");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.starts_with("## secret-canary: ✅"), "{md}");
    drop(tmux);
    lab.stop().await;
}

/// `canary.access: proxy` on the simulated cluster: the canary answers come
/// through the API server's Pod proxy (`GET pods/NAME:PORT/proxy/digest`,
/// the same long-poll), and the run passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_reaches_the_canary_through_the_pod_proxy() {
    let lab = support::start_rolled_out(&["canary-volume"], Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(config_path(&lab)).unwrap();
    let line = "canary: {selector: app=canary-volume, port: 8080, source: file}";
    assert!(text.contains(line), "{text}");
    let path = lab.dir.path().join("prober-proxy.yaml");
    std::fs::write(
        &path,
        text.replace(
            line,
            "canary: {selector: app=canary-volume, port: 8080, source: file, access: proxy}",
        ),
    )
    .unwrap();
    let before = lab.server.request_counts().get("get", "pods/proxy");
    let out = once(
        &[
            "-c",
            path.to_str().unwrap(),
            "-p",
            "eso-volume",
            "-o",
            "json",
        ],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json_of(&out);
    assert!(
        stage_seconds(&r, "eso-volume", "canary_observe").is_some(),
        "{r:#}"
    );
    let proxied = lab.server.request_counts().get("get", "pods/proxy") - before;
    assert!(proxied >= 1, "no request went through the Pod proxy");
    lab.stop().await;
}
