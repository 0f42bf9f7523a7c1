//! The real binary's command line: `check-config` on good and bad files,
//! and the usage exit code (2) of `once` and `run` on bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secret-canary"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config.yaml")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BAD: &str = r#"
probes:
  - name: eso-env
    schedule: "*/5 * * * *"
    store: {address: "ftp://vault", path: /abs, auth: {token: {env: ""}}}
    chain:
      namespace: canary
      external_secret: canary-env
      rollout: {deployment: canary-env, trigger: reloader}
      canary: {selector: "app in canary", source: env}
  - name: eso-env
    interval: 10s
    slo: {rollout: 1s}
    store: {address: "http://v:8200", path: a, auth: {kubernetes: {role: r}}}
    chain:
      namespace: canary
      external_secret: e
      secret: {name: s}
      canary: {selector: app=x, source: file}
"#;

#[test]
fn check_config_accepts_the_example() {
    let out = bin().arg("check-config").arg(example()).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "ok: 3 probes");
}

#[test]
fn check_config_lists_every_problem_by_field_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.yaml", BAD);
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    for needle in [
        "probes[0].schedule: invalid cron expression \"*/5 * * * *\"",
        "probes[0].store.address:",
        "probes[0].store.path: \"/abs\" must not start with `/`",
        "probes[0].store.auth.token.env: must not be empty",
        "probes[0].chain.secret: required when `external_secret` is set",
        "probes[0].chain.rollout.trigger:",
        "probes[0].chain.canary.selector:",
        "probes[1].name: duplicate probe name \"eso-env\"",
        "probes[1].slo.rollout: stage rollout is not part of this probe's chain",
    ] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    // Every line names the file.
    assert!(stderr.lines().all(|l| l.contains("bad.yaml")), "{stderr}");
}

#[test]
fn check_config_reports_syntax_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "typo.yaml",
        "probes:\n  - name: a\n    intervall: 10s\n",
    );
    let out = bin().arg("check-config").arg(&path).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `intervall`"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[test]
fn check_config_on_a_missing_file_exits_2() {
    let out = bin()
        .args(["check-config", "/nonexistent/secret-canary.yaml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("/nonexistent/secret-canary.yaml"),
        "{stderr}"
    );
}

#[test]
fn once_and_run_exit_2_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bad.yaml", BAD);
    for sub in ["once", "run"] {
        let out = bin().arg(sub).arg("--config").arg(&path).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{sub}: {stdout}{stderr}");
        assert!(stderr.contains("probes[0].schedule"), "{sub}: {stderr}");
        assert!(stdout.is_empty(), "{sub} printed a report: {stdout}");
    }
}

#[test]
fn once_with_an_unknown_probe_exits_2() {
    let out = bin()
        .arg("once")
        .arg("--config")
        .arg(example())
        .args(["--probe", "nope"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown probe \"nope\""), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let out = bin().args(["once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(example())
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn run_exits_2_when_the_listen_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .arg("run")
        .arg("--config")
        .arg(example())
        .args(["--listen", &addr])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Serve `body` as the answer to every HTTP request on a loopback port
/// (a prober's `/probes`, as `check` reads it).
fn serve_probes(body: String) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/probes")
}

#[test]
fn check_asks_the_prober_and_names_the_failing_probe_and_stage() {
    let now = chrono::Utc::now();
    let run = |passed: bool, age: i64| {
        let finished = (now - chrono::Duration::seconds(age)).to_rfc3339();
        if passed {
            serde_json::json!({"passed": true, "result": "success", "finished_at": finished})
        } else {
            serde_json::json!({"passed": false, "result": "failure", "finished_at": finished,
                "failure": {"stage": "eso_sync", "reason": "timeout"}, "detail": "ESO did not sync"})
        }
    };
    let doc = |a: serde_json::Value, b: serde_json::Value| {
        serde_json::json!({"probes": [
            {"name": "eso-env", "ready": true, "last_run": a},
            {"name": "eso-volume", "ready": true, "last_run": b},
        ]})
        .to_string()
    };
    let check = |url: &str, extra: &[&str]| {
        bin()
            .args(["check", "--url", url, "--timeout", "3s"])
            .args(extra)
            .output()
            .unwrap()
    };
    // Both passed recently.
    let out = check(&serve_probes(doc(run(true, 5), run(true, 30))), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("eso-env     passed"), "{stdout}");
    // One failed: exit 1 after the timeout, naming it, the stage and the reason.
    let url = serve_probes(doc(run(true, 5), run(false, 5)));
    let out = check(&url, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "eso-volume  FAILED    last run failure at stage eso_sync (timeout): ESO did not sync"
        ),
        "{stdout}"
    );
    // ...unless only the passing one is asked for.
    let out = check(&url, &["--probe", "eso-env"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    // A success older than --within does not count.
    let out = check(
        &serve_probes(doc(run(true, 600), run(true, 5))),
        &["--within", "5m"],
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("eso-env     FAILED    the last successful run finished 10m"),
        "{stdout}"
    );
    // Nobody there: exit 1, saying so.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/probes", dead.local_addr().unwrap());
    drop(dead);
    let out = check(&url, &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("could not be reached"), "{stdout}");
    // Usage errors: no target, a bad URL, a bad selector.
    for args in [
        vec!["check"],
        vec!["check", "--url", "ftp://x/probes"],
        vec!["check", "--pods", "app;rm"],
    ] {
        let out = bin().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {:?}", text(&out));
    }
}
