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
