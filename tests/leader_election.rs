//! High availability: two `secret-canary run` replicas with
//! `--leader-elect` against the lab's API server (coordination.k8s.io/v1
//! Leases). Only the Lease holder probes; killing it (SIGKILL, no release)
//! hands over within the lease duration; a SIGTERM hands over at once; the
//! two never lead nor run probes at the same time.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use support::prober::{sample, sum, Prober};

const LEASE_SECS: u64 = 4;

fn flags(identity: &str) -> Vec<String> {
    [
        "--leader-elect",
        "--leader-elect-lease-namespace",
        "canary",
        "--leader-elect-lease-name",
        "secret-canary-ha-test",
        "--leader-elect-lease-duration",
        "4s",
        "--leader-elect-renew-deadline",
        "3s",
        "--leader-elect-retry-period",
        "500ms",
        "--leader-elect-identity",
        identity,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(config: &std::path::Path, dir: &std::path::Path, identity: &str) -> Prober {
    Prober::command(config, &dir.join(format!("{identity}.log")))
        .args(&flags(identity))
        .spawn()
}

/// One scrape of a replica: (leader gauge, runs in progress, runs ended).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Scrape {
    up: bool,
    leader: f64,
    in_progress: f64,
    runs: f64,
}

async fn scrape(p: &Prober) -> Scrape {
    let (code, m) = p.get("/metrics", None).await;
    if code != 200 {
        return Scrape::default();
    }
    Scrape {
        up: true,
        leader: sample(&m, "secret_canary_leader", &[]).unwrap_or(-1.0),
        in_progress: sum(&m, "secret_canary_run_in_progress", &[]),
        runs: sum(&m, "secret_canary_runs_total", &[]),
    }
}

/// Samples of every replica taken together, every 100 ms.
type Timeline = Arc<Mutex<Vec<(Instant, Vec<(String, Scrape)>)>>>;

async fn wait_until<F>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> bool,
{
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn latest(t: &Timeline, who: &str) -> Scrape {
    t.lock()
        .unwrap()
        .last()
        .and_then(|(_, s)| s.iter().find(|(n, _)| n == who).map(|(_, s)| *s))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_probes_and_a_follower_takes_over() {
    let lab = support::start_lab(None).await;
    let dir = lab.dir.path().to_path_buf();
    let config = dir.join("ha.yaml");
    std::fs::write(
        &config,
        support::fixtures::prober_config(lab.prober_config.as_deref().unwrap(), "2s", None, ""),
    )
    .unwrap();

    let mut a = start(&config, &dir, "replica-a");
    a.wait_healthy(Duration::from_secs(30)).await;
    // A starts first so it leads (the Lease does not exist yet).
    let timeline: Timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler_stop = tokio_util::sync::CancellationToken::new();
    let addrs: Arc<Mutex<Vec<(String, std::net::SocketAddr)>>> =
        Arc::new(Mutex::new(vec![("replica-a".into(), a.addr)]));
    let sampler = {
        let (timeline, stop, addrs) = (timeline.clone(), sampler_stop.clone(), addrs.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_millis(500))
                .no_proxy()
                .build()
                .unwrap();
            while !stop.is_cancelled() {
                let targets = addrs.lock().unwrap().clone();
                let mut row = Vec::new();
                for (name, addr) in targets {
                    let s = match http.get(format!("http://{addr}/metrics")).send().await {
                        Ok(r) if r.status() == 200 => {
                            let m = r.text().await.unwrap_or_default();
                            Scrape {
                                up: true,
                                leader: sample(&m, "secret_canary_leader", &[]).unwrap_or(-1.0),
                                in_progress: sum(&m, "secret_canary_run_in_progress", &[]),
                                runs: sum(&m, "secret_canary_runs_total", &[]),
                            }
                        }
                        _ => Scrape::default(),
                    };
                    row.push((name, s));
                }
                timeline.lock().unwrap().push((Instant::now(), row));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    wait_until(Duration::from_secs(20), "replica-a leads", || {
        latest(&timeline, "replica-a").leader == 1.0
    })
    .await;
    let mut b = start(&config, &dir, "replica-b");
    b.wait_healthy(Duration::from_secs(30)).await;
    addrs.lock().unwrap().push(("replica-b".into(), b.addr));

    // A probes, B waits: a few of A's runs end while B has none.
    wait_until(Duration::from_secs(120), "replica-a ends 4 runs", || {
        latest(&timeline, "replica-a").runs >= 4.0
    })
    .await;
    let b_now = scrape(&b).await;
    assert_eq!(b_now.leader, 0.0, "replica-b must follow: {b_now:?}");
    assert_eq!(b_now.runs, 0.0, "a follower runs no probes: {b_now:?}");
    let api: Api<Lease> = Api::namespaced(lab.client(), "canary");
    let lease = api.get("secret-canary-ha-test").await.unwrap();
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
    assert_eq!(spec.lease_duration_seconds, Some(LEASE_SECS as i32));

    // Kill the leader mid-flight: no release, the Lease must expire.
    wait_until(Duration::from_secs(30), "replica-a is mid-run", || {
        latest(&timeline, "replica-a").in_progress > 0.0
    })
    .await;
    let a_runs = latest(&timeline, "replica-a").runs;
    let killed = Instant::now();
    a.kill();
    let failover = wait_until(
        Duration::from_secs(LEASE_SECS + 5),
        "replica-b takes over after the kill",
        || latest(&timeline, "replica-b").leader == 1.0,
    )
    .await;
    let failover_precise = killed.elapsed().min(failover + Duration::from_millis(100));
    wait_until(Duration::from_secs(90), "replica-b ends 2 runs", || {
        latest(&timeline, "replica-b").runs >= 2.0
    })
    .await;
    let b_first_run = {
        let t = timeline.lock().unwrap();
        t.iter()
            .find(|(_, row)| {
                row.iter()
                    .any(|(n, s)| n == "replica-b" && (s.in_progress > 0.0 || s.runs > 0.0))
            })
            .map(|(at, _)| *at)
            .unwrap()
    };
    assert!(
        b_first_run >= killed,
        "replica-b ran a probe before replica-a died"
    );
    let lease = api.get("secret-canary-ha-test").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert!(spec.lease_transitions.unwrap_or(0) >= 1);

    // A graceful stop hands over at once: start C, SIGTERM B.
    let mut c = start(&config, &dir, "replica-c");
    c.wait_healthy(Duration::from_secs(30)).await;
    addrs.lock().unwrap().push(("replica-c".into(), c.addr));
    wait_until(Duration::from_secs(10), "replica-c synced", || {
        latest(&timeline, "replica-c").up
    })
    .await;
    assert_eq!(scrape(&c).await.leader, 0.0);
    let termed = Instant::now();
    b.signal("TERM");
    let handover = wait_until(
        Duration::from_secs(LEASE_SECS + 15),
        "replica-c takes over after SIGTERM",
        || latest(&timeline, "replica-c").leader == 1.0,
    )
    .await;
    let b_status = b.wait_exit(Duration::from_secs(20)).await;
    assert!(b_status.is_some(), "replica-b did not exit");
    let handover_precise = termed.elapsed().min(handover + Duration::from_millis(100));
    wait_until(Duration::from_secs(90), "replica-c ends a run", || {
        latest(&timeline, "replica-c").runs >= 1.0
    })
    .await;

    sampler_stop.cancel();
    sampler.await.unwrap();
    // Never two leaders, never two replicas with runs in flight, in any sample.
    let (overlaps, samples) = {
        let t = timeline.lock().unwrap();
        let mut overlaps = Vec::new();
        for (at, row) in t.iter() {
            let leaders: Vec<&str> = row
                .iter()
                .filter(|(_, s)| s.leader == 1.0)
                .map(|(n, _)| n.as_str())
                .collect();
            let running: Vec<&str> = row
                .iter()
                .filter(|(_, s)| s.in_progress > 0.0)
                .map(|(n, _)| n.as_str())
                .collect();
            if leaders.len() > 1 || running.len() > 1 {
                overlaps.push(format!(
                    "{:?} after start: leaders {leaders:?}, running {running:?}",
                    at.duration_since(t[0].0)
                ));
            }
        }
        (overlaps, t.len())
    };
    assert!(overlaps.is_empty(), "{}", overlaps.join("\n"));
    let c_log = c.log_text();
    assert!(
        c_log.contains("became the leader"),
        "replica-c log: {c_log}"
    );
    eprintln!(
        "leader election: {samples} samples, no overlap; replica-a ran {a_runs} runs; \
         failover after SIGKILL {:.2} s (lease {LEASE_SECS} s); handover after SIGTERM {:.2} s",
        failover_precise.as_secs_f64(),
        handover_precise.as_secs_f64()
    );
    assert!(failover_precise <= Duration::from_secs(LEASE_SECS) + Duration::from_millis(1500));
    c.stop().await;
    lab.stop().await;
}
