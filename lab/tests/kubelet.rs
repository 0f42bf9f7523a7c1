//! The lab kubelet and Bank-Vaults resolution against the lab API server
//! (in process) and a real OpenBao, running the real `secret-canary` binary
//! as Pods on their own 127.x addresses.
//!
//! Needs `target/debug/secret-canary` (`cargo build -p secret-canary --bin
//! secret-canary`); each test says SKIP and passes when it is absent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use secret_canary_lab::apiserver::{kube_client, ApiServer};
use secret_canary_lab::controllers::{kubelet, Context};
use secret_canary_lab::faults::{Fault, Knob, Knobs, Latency};
use secret_canary_lab::openbao::OpenBao;
use secret_canary_lab::truth::{self, step, Truth};

const NS: &str = "default";

fn canary_bin() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/secret-canary");
    if p.is_file() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        // scripts/test.sh builds every binary first: in CI a missing one is a failure.
        panic!("{} is not built", p.display());
    } else {
        eprintln!(
            "SKIP: {} is not built; run `cargo build -p secret-canary --bin secret-canary` first",
            p.display()
        );
        None
    }
}

fn ms(n: u64) -> Latency {
    Latency::Fixed(Duration::from_millis(n))
}

fn value(tag: &str) -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("{tag}-{n:016x}")
}

struct TestLab {
    api: ApiServer,
    knobs: Arc<Knobs>,
    truth: Arc<Truth>,
    client: kube::Client,
    dir: PathBuf,
    cancel: CancellationToken,
    kubelet: tokio::task::JoinHandle<Result<(), kubelet::Error>>,
    bao: Option<OpenBao>,
}

impl TestLab {
    async fn start(tag: &str, with_bao: bool) -> Option<TestLab> {
        let canary_bin = canary_bin()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = std::env::temp_dir().join(format!("kubelet-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let knobs = Arc::new(Knobs::default());
        knobs.set_latency(Knob::KubeletStartLatency, ms(10));
        knobs.set_latency(Knob::ReadinessPeriod, ms(20));
        knobs.set_latency(Knob::VolumeSyncLatency, ms(300));
        knobs.set_latency(Knob::CrashBackoff, ms(200));
        let truth = Arc::new(Truth::in_memory());
        let cancel = CancellationToken::new();
        let api = ApiServer::new(knobs.clone());
        let addr = api.listen_local(cancel.clone()).await.unwrap();
        let server = format!("http://{addr}");
        let client = kube_client(&server, &api.admin_token()).await.unwrap();
        let bao = if with_bao {
            let bao = OpenBao::start(&dir.join("openbao.log")).await.unwrap();
            setup_kubernetes_auth(&bao, &server, &api.admin_token()).await;
            Some(bao)
        } else {
            None
        };
        let ctx = Context {
            client: client.clone(),
            knobs: knobs.clone(),
            truth: truth.clone(),
            dir: dir.clone(),
            canary_bin,
            vault_addr: bao
                .as_ref()
                .map(|b| b.addr.clone())
                .unwrap_or_else(|| "http://127.0.0.1:1".into()),
        };
        let kubelet = tokio::spawn(kubelet::run(ctx, cancel.clone()));
        Some(TestLab {
            api,
            knobs,
            truth,
            client,
            dir,
            cancel,
            kubelet,
            bao,
        })
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        match self.secrets().get_opt(name).await.unwrap() {
            Some(old) => {
                s.metadata.resource_version = old.metadata.resource_version;
                self.secrets()
                    .replace(name, &PostParams::default(), &s)
                    .await
                    .unwrap();
            }
            None => {
                self.secrets()
                    .create(&PostParams::default(), &s)
                    .await
                    .unwrap();
            }
        }
    }

    async fn create_pod(&self, pod: Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    /// Poll the Pod until `pred` holds (or panic after `limit`).
    async fn wait_pod(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < limit {
            if let Some(p) = self.pods().get_opt(name).await.unwrap() {
                last = serde_json::to_value(&p).unwrap();
                if pred(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "pod {name}: not {what} within {limit:?}; last status: {}",
            serde_json::to_string_pretty(&last["status"]).unwrap()
        );
    }

    async fn wait_ready(&self, name: &str) -> Value {
        self.wait_pod(name, Duration::from_secs(20), "Ready", is_ready)
            .await
    }

    async fn delete_pod(&self, name: &str) {
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// Stop the lab and check nothing it started is still running.
    async fn stop(self) {
        self.cancel.cancel();
        let r = tokio::time::timeout(Duration::from_secs(20), self.kubelet)
            .await
            .expect("the kubelet did not stop within 20 s");
        r.unwrap().unwrap();
        if let Some(b) = self.bao {
            b.stop().await;
        }
        let left = processes_under(&self.dir);
        assert!(left.is_empty(), "processes outlived the lab: {left:?}");
        let _ = self.api;
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn condition(pod: &Value, ty: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn is_ready(pod: &Value) -> bool {
    condition(pod, "Ready").as_deref() == Some("True")
}

fn container(pod: &Value, i: usize) -> &Value {
    &pod["status"]["containerStatuses"][i]
}

fn pid_of(pod: &Value, i: usize) -> u32 {
    container(pod, i)["containerID"]
        .as_str()
        .and_then(|s| s.strip_prefix("lab://"))
        .and_then(|s| s.parse().ok())
        .expect("containerID lab://PID")
}

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie has no cwd.
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok()
}

/// Processes whose working directory is inside `dir` (every container's is).
fn processes_under(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) {
                out.push(pid);
            }
        }
    }
    out
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn digest_at(ip: &str, port: u16, query: &str) -> Result<Value, reqwest::Error> {
    http()
        .get(format!("http://{ip}:{port}/digest{query}"))
        .send()
        .await?
        .json()
        .await
}

/// A canary Pod serving the env var `CANARY_VALUE` taken from Secret `secret`.
fn env_pod(name: &str, secret: &str) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"app": "canary"}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "canary",
                "image": "ghcr.io/example/secret-canary:dev",
                "command": ["secret-canary"],
                "args": ["canary", "--from-env", "CANARY_VALUE", "--listen", "$(POD_IP):8080"],
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "CANARY_VALUE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "value"}}}
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}}
            }]
        }
    })
}

#[tokio::test]
async fn env_from_secret_runs_the_canary_on_its_own_ip_and_stops_on_delete() {
    let Some(lab) = TestLab::start("env", false).await else {
        return;
    };
    let v = value("env");
    lab.put_secret("env-secret", &[("value", &v)]).await;
    lab.create_pod(env_pod("env-pod", "env-secret")).await;
    let pod = lab.wait_ready("env-pod").await;

    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("127.") && ip != "127.0.0.1", "pod IP {ip}");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["podIPs"][0]["ip"], ip.as_str());
    assert!(pod["status"]["startTime"].is_string());
    for ty in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, ty).as_deref(), Some("True"), "{ty}");
    }
    let c = container(&pod, 0);
    assert_eq!(c["ready"], true);
    assert_eq!(c["started"], true);
    assert_eq!(c["restartCount"], 0);
    assert!(c["state"]["running"]["startedAt"].is_string());

    let d = digest_at(&ip, 8080, "").await.unwrap();
    assert_eq!(d["digest"], truth::digest(v.as_bytes()));
    assert_eq!(d["source"], "env");

    let want = truth::digest(v.as_bytes());
    let started = lab.truth.find(step::POD_STARTED, NS, "env-pod");
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].digest.as_deref(), Some(want.as_str()));
    assert_eq!(lab.truth.find(step::POD_READY, NS, "env-pod").len(), 1);

    // The container's log has its output but never the value.
    let log = std::fs::read_to_string(kubelet::pod_dir(&lab.dir, NS, "env-pod").join("canary.log"))
        .unwrap_or_default();
    assert!(!log.contains(&v));

    let pid = pid_of(&pod, 0);
    assert!(alive(pid));
    let t = Instant::now();
    lab.delete_pod("env-pod").await;
    while alive(pid) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!alive(pid), "the canary outlived its Pod");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "SIGTERM should stop the canary at once: {:?}",
        t.elapsed()
    );
    assert!(digest_at(&ip, 8080, "").await.is_err());
    lab.stop().await;
}

#[tokio::test]
async fn secret_volume_refreshes_after_the_knob_delay_but_sub_path_does_not() {
    let Some(lab) = TestLab::start("vol", false).await else {
        return;
    };
    let (a, b) = (value("vol-a"), value("vol-b"));
    lab.put_secret("vol-secret", &[("value", &a)]).await;
    lab.create_pod(json!({
        "metadata": {"name": "vol-pod"},
        "spec": {
            "volumes": [{"name": "canary-secret", "secret": {"secretName": "vol-secret"}}],
            "containers": [
                {
                    // No listen address: the kubelet supplies <podIP>:8080.
                    "name": "canary",
                    "image": "secret-canary",
                    "args": ["canary", "--from-file", "/etc/canary/value"],
                    "volumeMounts": [{"name": "canary-secret", "mountPath": "/etc/canary", "readOnly": true}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}}
                },
                {
                    "name": "subpath",
                    "image": "secret-canary",
                    "args": ["canary", "--listen", "0.0.0.0:8081"],
                    "env": [{"name": "SECRET_CANARY_FROM_FILE", "value": "/etc/sub/value"}],
                    "volumeMounts": [{"name": "canary-secret", "mountPath": "/etc/sub/value", "subPath": "value"}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8081}}
                }
            ]
        }
    }))
    .await;
    let pod = lab.wait_ready("vol-pod").await;
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let (da, db) = (truth::digest(a.as_bytes()), truth::digest(b.as_bytes()));
    assert_eq!(digest_at(&ip, 8080, "").await.unwrap()["digest"], da);
    assert_eq!(digest_at(&ip, 8081, "").await.unwrap()["digest"], da);
    assert!(lab
        .truth
        .first_with_digest(step::VOLUME_UPDATED, &da)
        .is_some());

    // The real kubelet's layout: a ..data symlink to a timestamped directory.
    let vol = kubelet::pod_dir(&lab.dir, NS, "vol-pod").join("volumes/canary-secret");
    assert!(std::fs::read_link(vol.join("..data")).is_ok());

    let poll = tokio::spawn({
        let ip = ip.clone();
        let da = da.clone();
        async move {
            digest_at(&ip, 8080, &format!("?differs_from={da}&wait=15s"))
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    lab.put_secret("vol-secret", &[("value", &b)]).await;
    let seen = poll.await.unwrap();
    let took = t.elapsed();
    assert_eq!(seen["changed"], true);
    assert_eq!(seen["digest"], db);
    assert!(
        took >= Duration::from_millis(250),
        "refreshed before the knob delay: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "refresh took {took:?}");
    let rec = lab
        .truth
        .first_with_digest(step::VOLUME_UPDATED, &db)
        .expect("volume_updated recorded");
    assert_eq!(rec.name, "vol-pod");

    // The subPath mount still holds the old value.
    assert_eq!(digest_at(&ip, 8081, "").await.unwrap()["digest"], da);
    lab.stop().await;
}

#[tokio::test]
async fn crash_fault_restarts_into_crash_loop_back_off_and_recovers() {
    let Some(lab) = TestLab::start("crash", false).await else {
        return;
    };
    lab.put_secret("crash-secret", &[("value", &value("crash"))])
        .await;
    lab.knobs.set_fault(Fault::CanaryCrash, true);
    lab.create_pod(env_pod("crash-pod", "crash-secret")).await;
    let pod = lab
        .wait_pod(
            "crash-pod",
            Duration::from_secs(20),
            "in CrashLoopBackOff after 2 restarts",
            |p| {
                let c = container(p, 0);
                c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                    && c["restartCount"].as_i64().unwrap_or(0) >= 2
            },
        )
        .await;
    let c = container(&pod, 0);
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(c["ready"], false);
    assert!(!is_ready(&pod));
    lab.knobs.set_fault(Fault::CanaryCrash, false);
    // Back-off: 200 ms doubling; the next start after the fault clears succeeds.
    let pod = lab.wait_ready("crash-pod").await;
    assert!(container(&pod, 0)["restartCount"].as_i64().unwrap() >= 2);
    lab.stop().await;
}

#[tokio::test]
async fn crash_back_off_has_upstream_timings() {
    let Some(lab) = TestLab::start("crash-upstream", false).await else {
        return;
    };
    // The default, as the kubelet: restart at once, then 10 s, 20 s, ... 5 min.
    lab.knobs
        .set_latency(Knob::CrashBackoff, Knob::CrashBackoff.default_latency());
    assert_eq!(
        Knob::CrashBackoff.default_latency(),
        Latency::Fixed(Duration::from_secs(10))
    );
    lab.put_secret("crashu-secret", &[("value", &value("crashu"))])
        .await;
    lab.knobs.set_fault(Fault::CanaryCrash, true);
    let t0 = Instant::now();
    lab.create_pod(env_pod("crashu-pod", "crashu-secret")).await;
    let pod = lab
        .wait_pod(
            "crashu-pod",
            Duration::from_secs(5),
            "CrashLoopBackOff after the immediate first restart",
            |p| {
                let c = container(p, 0);
                c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
                    && c["restartCount"].as_i64() == Some(2)
            },
        )
        .await;
    let c = container(&pod, 0);
    let msg = c["state"]["waiting"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("back-off 10s restarting failed container=canary pod=crashu-pod_default("),
        "{msg}"
    );
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
    // Still backing off a few seconds later: no third start before 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = lab
        .wait_pod("crashu-pod", Duration::from_secs(1), "pod", |_| true)
        .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(container(&pod, 0)["restartCount"], 2);
    lab.knobs.set_fault(Fault::CanaryCrash, false);
    lab.stop().await;
}

#[tokio::test]
async fn deleted_pod_stays_terminating_ready_and_serving_for_its_pre_stop() {
    let Some(lab) = TestLab::start("graceful", false).await else {
        return;
    };
    let v = value("graceful");
    lab.put_secret("graceful-secret", &[("value", &v)]).await;
    let mut p = env_pod("graceful-pod", "graceful-secret");
    p["spec"]["terminationGracePeriodSeconds"] = json!(3);
    p["spec"]["containers"][0]["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 2}}});
    lab.create_pod(p).await;
    let pod = lab.wait_ready("graceful-pod").await;
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let t0 = Instant::now();
    lab.delete_pod("graceful-pod").await;
    // Terminating: still there, still Ready, still serving the value.
    let p = lab.pods().get("graceful-pod").await.unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(3));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let p = lab.pods().get("graceful-pod").await.unwrap();
    let pv = serde_json::to_value(&p).unwrap();
    assert!(is_ready(&pv), "Ready while terminating");
    assert_eq!(
        digest_at(&ip, 8080, "").await.unwrap()["digest"],
        truth::digest(v.as_bytes())
    );
    // Gone once the kubelet stopped it (pre-stop 2 s, then SIGTERM).
    loop {
        if lab.pods().get_opt("graceful-pod").await.unwrap().is_none() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
    lab.stop().await;
}

#[tokio::test]
async fn stale_fault_serves_the_old_value_until_it_clears() {
    let Some(lab) = TestLab::start("stale", false).await else {
        return;
    };
    let (a, b) = (value("stale-a"), value("stale-b"));
    let (da, db) = (truth::digest(a.as_bytes()), truth::digest(b.as_bytes()));
    lab.put_secret("stale-secret", &[("value", &a)]).await;
    lab.create_pod(json!({
        "metadata": {"name": "stale-vol"},
        "spec": {
            "volumes": [{"name": "s", "secret": {"secretName": "stale-secret"}}],
            "containers": [{
                "name": "canary",
                "image": "secret-canary",
                "args": ["canary", "--from-file", "/etc/s/value"],
                "volumeMounts": [{"name": "s", "mountPath": "/etc/s"}]
            }]
        }
    }))
    .await;
    let pod = lab.wait_ready("stale-vol").await;
    let vol_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    // Let the kubelet's watch see the first version before freezing.
    tokio::time::sleep(Duration::from_millis(200)).await;

    lab.knobs.set_fault(Fault::CanaryStale, true);
    lab.put_secret("stale-secret", &[("value", &b)]).await;
    // Env of a new Pod comes from the stale cache.
    lab.create_pod(env_pod("stale-env", "stale-secret")).await;
    let pod = lab.wait_ready("stale-env").await;
    let env_ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(digest_at(&env_ip, 8080, "").await.unwrap()["digest"], da);
    // The volume is not refreshed, well past the sync delay.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(digest_at(&vol_ip, 8080, "").await.unwrap()["digest"], da);
    assert!(lab
        .truth
        .first_with_digest(step::VOLUME_UPDATED, &db)
        .is_none());

    lab.knobs.set_fault(Fault::CanaryStale, false);
    let seen = digest_at(&vol_ip, 8080, &format!("?differs_from={da}&wait=10s"))
        .await
        .unwrap();
    assert_eq!(
        seen["digest"], db,
        "the volume catches up once the fault clears"
    );
    lab.create_pod(env_pod("fresh-env", "stale-secret")).await;
    let pod = lab.wait_ready("fresh-env").await;
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(digest_at(&ip, 8080, "").await.unwrap()["digest"], db);
    lab.stop().await;
}

#[tokio::test]
async fn unreachable_fault_advertises_a_dead_address_while_the_pod_stays_ready() {
    let Some(lab) = TestLab::start("unreach", false).await else {
        return;
    };
    let v = value("unreach");
    lab.put_secret("u-secret", &[("value", &v)]).await;
    lab.knobs.set_fault(Fault::CanaryUnreachable, true);
    lab.create_pod(env_pod("u-pod", "u-secret")).await;
    let pod = lab.wait_ready("u-pod").await;
    let advertised = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(advertised.starts_with("127."));
    assert!(
        digest_at(&advertised, 8080, "").await.is_err(),
        "nothing may answer at the advertised IP"
    );

    lab.knobs.set_fault(Fault::CanaryUnreachable, false);
    let pod = lab
        .wait_pod(
            "u-pod",
            Duration::from_secs(5),
            "advertising its real IP",
            |p| {
                p["status"]["podIP"]
                    .as_str()
                    .is_some_and(|ip| ip != advertised)
            },
        )
        .await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        digest_at(ip, 8080, "").await.unwrap()["digest"],
        truth::digest(v.as_bytes())
    );
    lab.stop().await;
}

#[tokio::test]
async fn rollout_stuck_never_readies_and_slow_start_delays() {
    let Some(lab) = TestLab::start("stuck", false).await else {
        return;
    };
    lab.put_secret("st-secret", &[("value", &value("stuck"))])
        .await;
    lab.knobs.set_fault(Fault::RolloutStuck, true);
    lab.create_pod(env_pod("stuck-pod", "st-secret")).await;
    lab.wait_pod("stuck-pod", Duration::from_secs(20), "started", |p| {
        container(p, 0)["started"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pod = serde_json::to_value(lab.pods().get("stuck-pod").await.unwrap()).unwrap();
    assert!(!is_ready(&pod), "ready despite rollout-stuck");
    assert_eq!(pod["status"]["phase"], "Running");
    lab.knobs.set_fault(Fault::RolloutStuck, false);
    lab.wait_ready("stuck-pod").await;

    lab.knobs.set_latency(Knob::SlowStart, ms(1500));
    lab.knobs.set_fault(Fault::SlowStart, true);
    let t = Instant::now();
    lab.create_pod(env_pod("slow-pod", "st-secret")).await;
    let pod = lab
        .wait_pod(
            "slow-pod",
            Duration::from_secs(20),
            "ContainerCreating",
            |p| container(p, 0)["state"]["waiting"]["reason"] == "ContainerCreating",
        )
        .await;
    assert!(!is_ready(&pod));
    lab.wait_ready("slow-pod").await;
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "slow start took only {:?}",
        t.elapsed()
    );
    lab.stop().await;
}

#[tokio::test]
async fn missing_secret_is_a_config_error_until_it_appears() {
    let Some(lab) = TestLab::start("missing", false).await else {
        return;
    };
    lab.create_pod(env_pod("m-pod", "not-yet")).await;
    lab.wait_pod(
        "m-pod",
        Duration::from_secs(20),
        "CreateContainerConfigError",
        |p| container(p, 0)["state"]["waiting"]["reason"] == "CreateContainerConfigError",
    )
    .await;
    let v = value("late");
    lab.put_secret("not-yet", &[("value", &v)]).await;
    let pod = lab.wait_ready("m-pod").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        digest_at(ip, 8080, "").await.unwrap()["digest"],
        truth::digest(v.as_bytes())
    );
    lab.stop().await;
}

// --- Bank-Vaults ------------------------------------------------------------

/// A CA certificate for OpenBao's Kubernetes auth config (it demands one
/// even for plain HTTP; any parseable certificate does).
fn ca_pem(dir: &Path) -> String {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lab-ca.pem");
    if let Ok(pem) = std::fs::read_to_string(shipped) {
        return pem;
    }
    let (key, crt) = (dir.join("ca.key"), dir.join("ca.crt"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=lab-ca",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read_to_string(crt).unwrap()
}

async fn bao_call(bao: &OpenBao, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = http()
        .request(method, format!("{}/v1/{path}", bao.addr))
        .header("X-Vault-Token", &bao.root_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "bao {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn setup_kubernetes_auth(bao: &OpenBao, api_server: &str, reviewer: &str) {
    let dir = std::env::temp_dir().join(format!("kubelet-test-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca_pem(&dir);
    use reqwest::Method;
    bao_call(
        bao,
        Method::POST,
        "sys/auth/kubernetes",
        json!({"type": "kubernetes"}),
    )
    .await;
    bao_call(
        bao,
        Method::POST,
        "auth/kubernetes/config",
        json!({"kubernetes_host": api_server, "kubernetes_ca_cert": ca, "token_reviewer_jwt": reviewer}),
    )
    .await;
    bao_call(
        bao,
        Method::PUT,
        "sys/policies/acl/canary-read",
        json!({"policy": "path \"secret/data/canary/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao_call(
        bao,
        Method::POST,
        "auth/kubernetes/role/canary",
        json!({
            "bound_service_account_names": ["default", "canary"],
            "bound_service_account_namespaces": [NS],
            "token_policies": ["canary-read"],
            "ttl": "1h"
        }),
    )
    .await;
    std::fs::remove_dir_all(&dir).ok();
}

fn vault_pod(name: &str, reference: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "annotations": {
                "vault.security.banzaicloud.io/vault-role": "canary",
                "vault.security.banzaicloud.io/vault-path": "kubernetes"
            }
        },
        "spec": {
            "containers": [{
                "name": "canary",
                "image": "secret-canary",
                "args": ["canary", "--from-env", "CANARY_VALUE"],
                "env": [{"name": "CANARY_VALUE", "value": reference}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}}
            }]
        }
    })
}

#[tokio::test]
async fn bank_vaults_resolves_vault_references_from_openbao() {
    let Some(lab) = TestLab::start("bv", true).await else {
        return;
    };
    let bao = lab.bao.as_ref().unwrap();
    let v = value("bv");
    bao_call(
        bao,
        reqwest::Method::POST,
        "secret/data/canary/app",
        json!({"data": {"value": v}}),
    )
    .await;
    let want = truth::digest(v.as_bytes());

    lab.create_pod(vault_pod("bv-pod", "vault:secret/data/canary/app#value"))
        .await;
    let pod = lab.wait_ready("bv-pod").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(digest_at(ip, 8080, "").await.unwrap()["digest"], want);
    let resolved = lab.truth.find(step::VAULT_ENV_RESOLVED, NS, "bv-pod");
    assert_eq!(resolved.len(), 1);
    assert_eq!(resolved[0].digest.as_deref(), Some(want.as_str()));
    assert_eq!(
        lab.truth.find(step::POD_STARTED, NS, "bv-pod")[0]
            .digest
            .as_deref(),
        Some(want.as_str())
    );
    // The Pod also got its ServiceAccount token file.
    let token = kubelet::pod_dir(&lab.dir, NS, "bv-pod").join("serviceaccount/token");
    assert!(std::fs::metadata(token)
        .map(|m| m.len() > 0)
        .unwrap_or(false));

    // A missing key makes vault-env exit 1: CrashLoopBackOff.
    lab.create_pod(vault_pod("bv-nokey", "vault:secret/data/canary/app#nope"))
        .await;
    let pod = lab
        .wait_pod("bv-nokey", Duration::from_secs(20), "crash looping", |p| {
            container(p, 0)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    assert_eq!(container(&pod, 0)["lastState"]["terminated"]["exitCode"], 1);

    // Store unreachable: the container fails at start, and recovers after.
    lab.knobs.set_fault(Fault::StoreUnreachable, true);
    lab.create_pod(vault_pod("bv-down", "vault:secret/data/canary/app#value"))
        .await;
    let pod = lab
        .wait_pod("bv-down", Duration::from_secs(20), "crash looping", |p| {
            container(p, 0)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await;
    assert_eq!(container(&pod, 0)["lastState"]["terminated"]["exitCode"], 1);
    let log = std::fs::read_to_string(kubelet::pod_dir(&lab.dir, NS, "bv-down").join("canary.log"))
        .unwrap();
    assert!(log.contains("vault-env"), "{log}");
    assert!(!log.contains(&v));
    lab.knobs.set_fault(Fault::StoreUnreachable, false);
    lab.wait_ready("bv-down").await;

    // `mutate: skip` leaves the reference as a literal value.
    let mut skip = vault_pod("bv-skip", "vault:secret/data/canary/app#value");
    skip["metadata"]["annotations"]["vault.security.banzaicloud.io/mutate"] = json!("skip");
    lab.create_pod(skip).await;
    let pod = lab.wait_ready("bv-skip").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        digest_at(ip, 8080, "").await.unwrap()["digest"],
        truth::digest(b"vault:secret/data/canary/app#value")
    );

    // No annotation at all: the webhook still mutates a Pod with a `vault:`
    // value, and the role defaults to the ServiceAccount's name.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(lab.client.clone(), NS);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "canary"}})).unwrap(),
    )
    .await
    .unwrap();
    let mut bare = vault_pod("bv-bare", "vault:secret/data/canary/app#value");
    bare["metadata"]["annotations"] = json!({});
    bare["spec"]["serviceAccountName"] = json!("canary");
    lab.create_pod(bare).await;
    let pod = lab.wait_ready("bv-bare").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(digest_at(ip, 8080, "").await.unwrap()["digest"], want);

    // The webhook failing open (failurePolicy Ignore): the Pod starts
    // unmutated and serves the literal reference.
    lab.knobs.set_fault(Fault::WebhookFailOpen, true);
    lab.create_pod(vault_pod("bv-open", "vault:secret/data/canary/app#value"))
        .await;
    lab.knobs.set_fault(Fault::WebhookFailOpen, false);
    let pod = lab.wait_ready("bv-open").await;
    let ip = pod["status"]["podIP"].as_str().unwrap();
    assert_eq!(
        digest_at(ip, 8080, "").await.unwrap()["digest"],
        truth::digest(b"vault:secret/data/canary/app#value")
    );
    assert!(lab
        .truth
        .find(step::VAULT_ENV_RESOLVED, NS, "bv-open")
        .is_empty());
    lab.stop().await;
}
