//! End-to-end tests of `secret-canary canary`: the real binary, env and file
//! sources, the long-poll's wake-up latency after a kubelet-style atomic swap,
//! and that the value itself never leaves the process.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

fn sha(v: &[u8]) -> String {
    hex::encode(Sha256::digest(v))
}

fn secret_value() -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("canary-secret-{n:032x}")
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("canary-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A running canary whose output goes to files we check afterwards.
struct Canary {
    child: Child,
    base: String,
    out: PathBuf,
    err: PathBuf,
}

impl Canary {
    async fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Canary {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let listen = format!("127.0.0.1:{port}");
            let out = dir.join("stdout");
            let err = dir.join("stderr");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_secret-canary"));
            cmd.arg("canary")
                .args(["--listen", &listen])
                .args(args)
                .env_clear()
                .env("RUST_LOG", "debug")
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .kill_on_drop(true);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().unwrap();
            let base = format!("http://{listen}");
            let c = client();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if child.try_wait().unwrap().is_some() {
                    break; // port taken in between: try another
                }
                if c.get(format!("{base}/healthz")).send().await.is_ok() {
                    return Canary {
                        child,
                        base,
                        out,
                        err,
                    };
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = child.kill().await;
        }
        panic!("the canary did not start; see {}", dir.display());
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn digest(&self, query: &str) -> serde_json::Value {
        let (status, body) = self.get(&format!("/digest{query}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// SIGTERM, as the kubelet stops a container; returns how long it took.
    async fn terminate(mut self) -> (Duration, String) {
        let pid = self.child.id().unwrap();
        let t = Instant::now();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .expect("the canary did not exit within 5 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "exit status {status:?}");
        let output = std::fs::read_to_string(&self.out).unwrap()
            + &std::fs::read_to_string(&self.err).unwrap();
        (t.elapsed(), output)
    }
}

#[tokio::test]
async fn env_source_serves_the_digest_and_never_the_value() {
    let dir = tempdir("env");
    let value = secret_value();
    let canary = Canary::start(
        &dir,
        &["--from-env", "CANARY_VALUE"],
        &[("CANARY_VALUE", &value)],
    )
    .await;
    let mut bodies = Vec::new();

    let (status, body) = canary.get("/readyz").await;
    assert_eq!(status, 200);
    bodies.push(body);
    let (status, body) = canary.get("/healthz").await;
    assert_eq!(status, 200);
    bodies.push(body);

    let d = canary.digest("").await;
    assert_eq!(d["digest"], sha(value.as_bytes()));
    assert_eq!(d["source"], "env");
    assert_eq!(d["error"], serde_json::Value::Null);
    assert!(d.get("changed").is_none());
    for field in ["observed_at", "started_at"] {
        let t = d[field].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(t).unwrap();
    }
    bodies.push(d.to_string());

    // Unchanged: the long-poll answers after `wait`, with changed=false.
    let t = Instant::now();
    let lp = canary
        .digest(&format!(
            "?differs_from={}&wait=300ms",
            sha(value.as_bytes())
        ))
        .await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(lp["changed"], false);
    bodies.push(lp.to_string());
    // Different from what the caller knows: answers at once.
    let t = Instant::now();
    let lp = canary
        .digest(&format!("?differs_from={}&wait=30s", sha(b"old")))
        .await;
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(lp["changed"], true);
    bodies.push(lp.to_string());
    // A bad wait is a client error, not a hang.
    let (status, body) = canary.get("/digest?differs_from=ab&wait=soon").await;
    assert_eq!(status, 400);
    bodies.push(body);

    let (took, output) = canary.terminate().await;
    assert!(took < Duration::from_secs(3), "took {took:?} to stop");
    for b in bodies.iter().chain([&output]) {
        assert!(!b.contains(&value), "the value leaked: {b}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn missing_env_is_not_ready() {
    let dir = tempdir("env-missing");
    let canary = Canary::start(&dir, &["--from-env", "NOT_SET"], &[]).await;
    let (status, _) = canary.get("/readyz").await;
    assert_eq!(status, 503);
    let d = canary.digest("").await;
    assert_eq!(d["digest"], serde_json::Value::Null);
    assert_eq!(d["error"], "missing");
    canary.terminate().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// Publish `value` the way the kubelet's atomic writer does: a fresh
/// timestamped directory, then a rename of the `..data` symlink onto it.
fn kubelet_publish(vol: &Path, generation: u32, key: &str, value: &str) {
    let ts = vol.join(format!("..gen_{generation}"));
    std::fs::create_dir(&ts).unwrap();
    std::fs::write(ts.join(key), value).unwrap();
    let tmp = vol.join("..data_tmp");
    std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
    let link = vol.join(key);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
    }
}

#[tokio::test]
async fn file_source_long_poll_wakes_within_milliseconds_of_an_atomic_swap() {
    let dir = tempdir("file");
    let vol = dir.join("vol");
    std::fs::create_dir(&vol).unwrap();
    let file = vol.join("value");
    let file_arg = file.to_str().unwrap().to_string();
    // Not there yet: served as missing, not ready.
    let canary = Canary::start(&dir, &[], &[("SECRET_CANARY_FROM_FILE", &file_arg)]).await;
    let mut bodies = Vec::new();
    let (status, _) = canary.get("/readyz").await;
    assert_eq!(status, 503);
    let d = canary.digest("").await;
    assert_eq!(d["error"], "missing");
    assert_eq!(d["source"], "file");

    let values: Vec<String> = (0..4).map(|_| secret_value()).collect();
    kubelet_publish(&vol, 0, "value", &values[0]);
    let (status, _) = canary.get("/readyz").await;
    assert_eq!(status, 200);
    let d = canary.digest("").await;
    assert_eq!(d["digest"], sha(values[0].as_bytes()));
    bodies.push(d.to_string());

    let mut worst = Duration::ZERO;
    for g in 1..values.len() {
        let before = sha(values[g - 1].as_bytes());
        let url = format!("{}/digest?differs_from={before}&wait=20s", canary.base);
        let poll = tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let body = r.text().await.unwrap();
            (Instant::now(), body)
        });
        // Let the long-poll arrive and start waiting.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !poll.is_finished(),
            "the long-poll answered before any change"
        );
        kubelet_publish(&vol, g as u32, "value", &values[g]);
        let swapped = Instant::now();
        let (answered, body) = poll.await.unwrap();
        let lag = answered.saturating_duration_since(swapped);
        worst = worst.max(lag);
        let d: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(d["changed"], true);
        assert_eq!(d["digest"], sha(values[g].as_bytes()));
        bodies.push(body);
    }
    // An inotify watch wakes it (else the 5 ms poll); allow for a loaded
    // 2-core machine.
    assert!(
        worst < Duration::from_millis(100),
        "long-poll woke {worst:?} after the swap"
    );
    eprintln!("worst long-poll wake-up after an atomic swap: {worst:?}");

    let (_, output) = canary.terminate().await;
    for b in bodies.iter().chain([&output]) {
        for v in &values {
            assert!(!b.contains(v.as_str()), "the value leaked: {b}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn log_format_json_gives_json_lines_without_the_value() {
    let dir = tempdir("json-logs");
    let value = secret_value();
    let canary = Canary::start(
        &dir,
        &["--from-env", "CANARY_VALUE", "--log-format", "json"],
        &[("CANARY_VALUE", &value)],
    )
    .await;
    let (status, _) = canary.get("/readyz").await;
    assert_eq!(status, 200);
    let (_, output) = canary.terminate().await;
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the canary logged nothing");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v.get("level").is_some(), "no level: {l}");
    }
    assert!(!output.contains(&value), "the value leaked: {output}");
    std::fs::remove_dir_all(&dir).ok();
}
