//! The exporter over HTTP with outcomes recorded into `Metrics`: content
//! types, the real `promtool check metrics`, a bounded series count after
//! 100 mixed outcomes, readiness, `/probes` and graceful shutdown.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prometheus_client::registry::Registry;
use secret_canary::config::{Config, ProbeConfig};
use secret_canary::http::{Exporter, ProbeBoard};
use secret_canary::metrics::{self, Metrics};
use secret_canary::probe::{Failure, Outcome, Reason, RunResult, Stage, StageTiming};
use support::fixtures::ThreeChains;
use tokio_util::sync::CancellationToken;

/// The three chains, on the standard cadences, with SLOs on eso-env.
fn config_yaml() -> String {
    ThreeChains {
        address: "http://127.0.0.1:8200",
        eso_auth: "{token: {env: VAULT_TOKEN}}",
        cadence: [
            "interval: 30s",
            "interval: 30s",
            r#"schedule: "0 */5 * * * *""#,
        ],
        env_slo: "{eso_sync: 1s, end_to_end: 60s}",
        volume_slo: None,
        bv_deployment: "canary-bv",
    }
    .yaml()
}

/// A deterministic mix: successes, failures at every stage with every
/// reason the stage can have, prober errors and aborted runs.
fn outcome(probe: &ProbeConfig, n: usize) -> Outcome {
    let t0 = Utc::now();
    let stages = probe.stages();
    let fail_at = (n % 3 != 0).then(|| stages[n % stages.len()]);
    let mut timings = Vec::new();
    let mut at = t0;
    for (i, &stage) in stages.iter().enumerate() {
        let done = fail_at != Some(stage);
        let d = Duration::from_millis(37 * (i as u64 + 1) * (n as u64 % 11 + 1));
        timings.push(StageTiming {
            stage,
            started_at: at,
            completed_at: done.then(|| at + chrono::Duration::from_std(d).unwrap()),
            duration: done.then_some(d),
        });
        at += chrono::Duration::from_std(d).unwrap();
        if !done {
            break;
        }
    }
    let failure = fail_at.map(|stage| {
        let reasons = metrics::reasons_for(probe, stage);
        Failure {
            stage,
            reason: reasons[n % reasons.len()],
        }
    });
    let result = match (n % 17, failure) {
        (16, _) => RunResult::Aborted,
        (_, Some(_)) => RunResult::Failure,
        (_, None) => RunResult::Success,
    };
    Outcome {
        probe: probe.name.clone(),
        run_id: format!("{}-run-{n}", probe.name),
        digest: Some(format!("{n:064x}")),
        started_at: t0,
        finished_at: at,
        stages: timings,
        failure,
        result,
        detail: failure.map(|f| format!("synthetic {} failure", f.reason)),
        sync_trigger: None,
        watch_gaps: Vec::new(),
    }
}

struct Running {
    base: String,
    client: reqwest::Client,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), secret_canary::http::Error>>,
    config: Config,
    ready: Arc<AtomicBool>,
    metrics: Metrics,
    /// Outcomes recorded per probe by `start`.
    outcomes: usize,
}

impl Running {
    /// The series `start` leaves: the pre-created ones, plus those created
    /// when they first occur: `skipped_runs_total{reason="run_in_progress"}`
    /// of eso-env (every round skips it once) and each probe's
    /// `runs_total{result="aborted"}` (outcome 16 aborts).
    fn expected_series(&self) -> usize {
        let skip = usize::from(self.outcomes > 0);
        let aborted = if self.outcomes > 16 {
            self.config.probes.len()
        } else {
            0
        };
        metrics::expected_series(&self.config) + skip + aborted
    }
}

async fn start(outcomes_per_probe: usize) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_yaml(&config_yaml(), "exporter.yaml").unwrap();
    let mut registry = Registry::default();
    let metrics = Metrics::for_config(&mut registry, &config);
    let ready = Arc::new(AtomicBool::new(false));
    let mut board = ProbeBoard::new();
    for p in &config.probes {
        let ready = ready.clone();
        board.add(p.clone(), move || ready.load(Ordering::SeqCst));
    }
    for n in 0..outcomes_per_probe {
        for p in &config.probes {
            let o = outcome(p, n);
            metrics.run_started(&p.name);
            metrics.record_outcome(p, &o);
            board.record(&o);
        }
        metrics.record_skipped("eso-env");
        metrics.observe_schedule_jitter(Duration::from_micros(700 * n as u64));
        metrics.record_missed_ticks("eso-volume", 1);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(
        Exporter::new(Arc::new(registry), Arc::new(board))
            .with_metrics(&metrics)
            .serve(listener, cancel.clone()),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    Running {
        base,
        client,
        cancel,
        server,
        config,
        ready,
        metrics,
        outcomes: outcomes_per_probe,
    }
}

fn promtool() -> &'static str {
    let path = "/usr/bin/promtool";
    assert!(
        std::path::Path::new(path).exists(),
        "promtool is missing: apt-get update && apt-get install -y prometheus"
    );
    path
}

/// Run `promtool check metrics` on `exposition`; returns (exit code, output).
fn promtool_check(exposition: &str) -> (Option<i32>, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn openmetrics_by_default_with_exemplars_and_a_bounded_series_count() {
    let r = start(100).await;
    let resp = r
        .client
        .get(format!("{}/metrics", r.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = resp.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("# UNIT secret_canary_stage_duration_seconds seconds"));
    assert!(
        body.contains(r#"# {run_id="eso-env-run-"#),
        "no run_id exemplar:\n{body}"
    );
    // 100 outcomes per probe with failures everywhere: no new series.
    assert_eq!(
        metrics::count_samples(&body),
        r.expected_series(),
        "series count grew past expected_series"
    );
    for needle in [
        r#"secret_canary_runs_total{probe="eso-env",result="skipped"} 100"#,
        r#"secret_canary_schedule_missed_ticks_total{probe="eso-volume"} 100"#,
        r#"secret_canary_run_in_progress{probe="eso-env"} 0"#,
    ] {
        assert!(body.contains(needle), "missing {needle}");
    }
    // Prometheus's own scrape asks like this and must get OpenMetrics too.
    let resp = r
        .client
        .get(format!("{}/metrics", r.base))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    r.cancel.cancel();
}

#[tokio::test]
async fn a_scrape_between_changes_is_the_cached_exposition_and_a_change_shows() {
    let r = start(10).await;
    let scrape = |accept: &'static str| {
        let (client, url) = (r.client.clone(), format!("{}/metrics", r.base));
        async move {
            let resp = client.get(url).header("accept", accept).send().await;
            resp.unwrap().text().await.unwrap()
        }
    };
    let line = |body: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(r#"secret_canary_runs_total{probe="eso-env",result="skipped"}"#)
            })
            .map(str::to_string)
            .unwrap()
    };
    let mut skipped = 10;
    for accept in ["application/openmetrics-text", "text/plain"] {
        let first = scrape(accept).await;
        assert_eq!(first, scrape(accept).await, "{accept}");
        assert!(
            line(&first).ends_with(&format!(" {skipped}")),
            "{}",
            line(&first)
        );
        r.metrics.record_skipped("eso-env");
        skipped += 1;
        let after = scrape(accept).await;
        assert!(
            line(&after).ends_with(&format!(" {skipped}")),
            "{accept}: {}",
            line(&after)
        );
        r.metrics.leader_gauge().set(1);
        assert!(scrape(accept).await.contains("secret_canary_leader 1"));
        r.metrics.leader_gauge().set(0);
        assert!(scrape(accept).await.contains("secret_canary_leader 0"));
        let o = outcome(&r.config.probes[0], 3);
        r.metrics.record_outcome(&r.config.probes[0], &o);
        assert_ne!(after, scrape(accept).await);
    }
    r.cancel.cancel();
}

#[tokio::test]
async fn promtool_check_metrics_passes() {
    let r = start(100).await;
    // promtool 2.x lints only the classic text format; the exporter serves
    // it to clients that ask for text/plain alone. Same registry, same series.
    let resp = r
        .client
        .get(format!("{}/metrics", r.base))
        .header("accept", "text/plain; version=0.0.4")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let body = resp.text().await.unwrap();
    assert_eq!(metrics::count_samples(&body), r.expected_series());
    let (code, out) = promtool_check(&body);
    assert_eq!(code, Some(0), "promtool check metrics failed:\n{out}");
    assert!(out.trim().is_empty(), "promtool lint findings:\n{out}");

    // And the freshly started exporter (everything zero / NaN) passes too.
    let fresh = start(0).await;
    let body = fresh
        .client
        .get(format!("{}/metrics", fresh.base))
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metrics::count_samples(&body), fresh.expected_series());
    let (code, out) = promtool_check(&body);
    assert_eq!(code, Some(0), "promtool check metrics failed:\n{out}");
    r.cancel.cancel();
    fresh.cancel.cancel();
}

#[tokio::test]
async fn health_readiness_probes_and_graceful_shutdown() {
    let r = start(5).await;
    let get = |path: &str| r.client.get(format!("{}{path}", r.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    let resp = get("/readyz").await.unwrap();
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains("eso-env, eso-volume, bank-vaults"), "{text}");
    r.ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let probes: serde_json::Value = get("/probes").await.unwrap().json().await.unwrap();
    let list = probes["probes"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let eso = &list[0];
    assert_eq!(eso["name"], "eso-env");
    assert_eq!(eso["ready"], true);
    assert_eq!(eso["interval_seconds"], 30.0);
    let last = &eso["last_run"];
    assert_eq!(last["run_id"], "eso-env-run-4");
    // Run 4 of a six-stage chain fails at its fifth stage.
    assert_eq!(last["failure"]["stage"], "rollout");
    let first = &last["stages"][0];
    assert_eq!(first["stage"], "store_write");
    // RFC 3339 with nanoseconds.
    let started = first["started_at"].as_str().unwrap();
    assert_eq!(started.split('.').nth(1).unwrap().len(), 10, "{started}");
    assert!(first["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(last["stages"][1]["status"], "completed");
    assert_eq!(last["stages"][1]["slo"], "met");
    assert_eq!(last["stages"][4]["status"], "failed");
    assert_eq!(last["stages"][4]["slo"], "no_slo");
    assert_eq!(last["stages"][5]["status"], "not_started");
    let e2e = last["stages"].as_array().unwrap().last().unwrap();
    assert_eq!(e2e["stage"], "end_to_end");
    assert_eq!(e2e["slo_seconds"], 60.0);
    assert_eq!(list[2]["schedule"], "0 */5 * * * *");

    r.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), r.server)
        .await
        .expect("exporter did not shut down")
        .unwrap()
        .unwrap();
}

#[test]
fn stage_and_reason_label_values_are_the_enums() {
    // Guard the contract the dashboards rely on.
    assert_eq!(Stage::EndToEnd.as_str(), "end_to_end");
    assert_eq!(Reason::ProberError.as_str(), "prober_error");
    assert!(metrics::reasons(Stage::EndToEnd).is_empty());
    for stage in Stage::CHAIN {
        assert!(metrics::reasons(stage).contains(&Reason::Timeout));
        assert!(!metrics::reasons(stage).contains(&Reason::Aborted));
    }
}

/// A real Prometheus scrapes the exporter (it negotiates OpenMetrics):
/// every sample is ingested and the run-id exemplars are stored.
#[tokio::test]
async fn a_real_prometheus_scrapes_openmetrics_and_stores_exemplars() {
    let prometheus = "/usr/bin/prometheus";
    assert!(
        std::path::Path::new(prometheus).exists(),
        "prometheus is missing: apt-get update && apt-get install -y prometheus"
    );
    let r = start(20).await;
    let dir = tempfile::tempdir().unwrap();
    let target = r.base.trim_start_matches("http://");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n  - job_name: canary\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let query = |q: String| {
        let client = r.client.clone();
        let api = api.clone();
        async move {
            let url =
                reqwest::Url::parse_with_params(&format!("{api}/query"), &[("query", q)]).ok()?;
            let resp = client.get(url).send().await.ok()?;
            let v: serde_json::Value = resp.json().await.ok()?;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
        }
    };
    let expected = r.expected_series() as f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let scraped = loop {
        let up = query(r#"up{job="canary"}"#.into()).await;
        let samples = query(r#"scrape_samples_scraped{job="canary"}"#.into()).await;
        if up == Some(1.0) {
            if let Some(n) = samples {
                break n;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "prometheus never scraped the exporter (up={up:?}); log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(scraped, expected, "samples ingested by Prometheus");
    let exemplars: serde_json::Value = r
        .client
        .get(
            reqwest::Url::parse_with_params(
                &format!("{api}/query_exemplars"),
                &[
                    ("query", "secret_canary_stage_duration_seconds_bucket"),
                    ("start", &(Utc::now().timestamp() - 3600).to_string()),
                    ("end", &(Utc::now().timestamp() + 60).to_string()),
                ],
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = exemplars.to_string();
    assert!(text.contains("run_id"), "no exemplars stored: {text}");
    let _ = child.kill().await;
    r.cancel.cancel();
}
