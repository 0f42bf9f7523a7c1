//! Startup validation through the real binary: `run`, `once` and
//! `check-config` refuse a bad config before touching the network, exit 2,
//! and name the field at fault (invalid cron, duplicate probe names, an
//! unknown stage, missing auth, a store path outside the canary prefix).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_secret-canary"))
}

/// A valid config: one probe per chain variant. Cases edit it by string
/// replacement so each carries exactly one problem.
const BASE: &str = r#"
kubernetes:
  kubeconfig: /nonexistent/kubeconfig
probes:
  - name: eso-env
    interval: 30s
    slo: {eso_sync: 10s, end_to_end: 90s}
    stage_deadlines: {eso_sync: 1m}
    store:
      address: http://127.0.0.1:1
      path: canary/eso-env
      auth: {token: {env: VAULT_TOKEN}}
    chain:
      namespace: canary
      external_secret: canary-env
      secret: {name: canary-env}
      rollout: {deployment: canary-env, trigger: reloader}
      canary: {selector: app=canary-env, source: env}
  - name: bank-vaults
    schedule: "0 */5 * * * *"
    store:
      address: http://127.0.0.1:1
      path: canary/bankvaults
      auth: {kubernetes: {role: canary}}
    chain:
      namespace: canary
      rollout: {deployment: canary-bv, trigger: restart}
      canary: {selector: app=canary-bv, source: env}
"#;

struct Case {
    what: &'static str,
    from: &'static str,
    to: &'static str,
    /// Every one of these must be in the error output.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        what: "invalid cron (minute 61)",
        from: r#"schedule: "0 */5 * * * *""#,
        to: r#"schedule: "0 61 * * * *""#,
        expect: &["probes[1].schedule: invalid cron expression \"0 61 * * * *\""],
    },
    Case {
        what: "cron with a 5-field crontab line",
        from: r#"schedule: "0 */5 * * * *""#,
        to: r#"schedule: "*/5 * * * *""#,
        expect: &["probes[1].schedule: invalid cron expression", "5 fields"],
    },
    Case {
        what: "duplicate probe names",
        from: "name: bank-vaults",
        to: "name: eso-env",
        expect: &["probes[1].name: duplicate probe name \"eso-env\" (also probes[0])"],
    },
    Case {
        what: "unknown stage in slo",
        from: "slo: {eso_sync: 10s,",
        to: "slo: {eso_sink: 10s,",
        expect: &["probes[0].slo", "unknown variant `eso_sink`"],
    },
    Case {
        what: "unknown stage in stage_deadlines",
        from: "stage_deadlines: {eso_sync: 1m}",
        to: "stage_deadlines: {reload: 1m}",
        expect: &["probes[0].stage_deadlines", "unknown variant `reload`"],
    },
    Case {
        what: "stage not in the probe's chain",
        from: "    schedule: \"0 */5 * * * *\"\n",
        to: "    schedule: \"0 */5 * * * *\"\n    slo: {eso_sync: 1s}\n",
        expect: &["probes[1].slo.eso_sync: stage eso_sync is not part of this probe's chain"],
    },
    Case {
        what: "missing auth",
        from: "      auth: {kubernetes: {role: canary}}\n",
        to: "",
        expect: &["probes[1].store: missing field `auth`"],
    },
    Case {
        what: "auth with no method",
        from: "auth: {kubernetes: {role: canary}}",
        to: "auth: {}",
        expect: &["probes[1].store.auth"],
    },
    Case {
        what: "store path outside the default canary prefix",
        from: "path: canary/bankvaults",
        to: "path: prod/db-password",
        expect: &[
            "probes[1].store.path: \"prod/db-password\" is outside the canary prefix \"canary/\"",
        ],
    },
    Case {
        what: "store path that only looks like the prefix",
        from: "path: canary/bankvaults",
        to: "path: canary-prod/x",
        expect: &["probes[1].store.path: \"canary-prod/x\" is outside the canary prefix"],
    },
    Case {
        what: "store path equal to the prefix itself",
        from: "path: canary/bankvaults",
        to: "path: canary",
        expect: &["probes[1].store.path: \"canary\" is outside the canary prefix"],
    },
    Case {
        what: "store path outside a configured prefix",
        from: "path: canary/eso-env",
        to: "path: canary/eso-env\n      path_prefix: team-a/canary/",
        expect: &[
            "probes[0].store.path: \"canary/eso-env\" is outside the canary prefix \"team-a/canary/\"",
        ],
    },
    Case {
        what: "store path escaping the prefix with ..",
        from: "path: canary/eso-env",
        to: "path: canary/../prod/db",
        expect: &["probes[0].store.path: \"canary/../prod/db\" must not contain `.` or `..`"],
    },
    Case {
        what: "max_versions 0",
        from: "path: canary/eso-env",
        to: "path: canary/eso-env\n      max_versions: 0",
        expect: &["probes[0].store.max_versions: 0 must be 1-1000"],
    },
];

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run the binary, killing it if it does not exit within 20 s (a bad
/// config must never get as far as running).
fn run(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("did not exit within 20 s: {}", output_text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn commands(path: &PathBuf) -> Vec<(&'static str, Command)> {
    let mut check = bin();
    check.arg("check-config").arg(path);
    let mut once = bin();
    once.arg("once").arg("--config").arg(path);
    let mut run = bin();
    run.args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(path);
    vec![("check-config", check), ("once", once), ("run", run)]
}

#[test]
fn the_base_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, BASE).unwrap();
    let mut c = bin();
    c.arg("check-config").arg(&path);
    let out = run(c);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

#[test]
fn every_bad_config_exits_2_naming_the_field_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        assert_eq!(
            BASE.matches(case.from).count(),
            1,
            "{}: pattern must occur once",
            case.what
        );
        let text = BASE.replacen(case.from, case.to, 1);
        let path = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&path, &text).unwrap();
        for (cmd_name, cmd) in commands(&path) {
            let out = run(cmd);
            let all = output_text(&out);
            if out.status.code() != Some(2) {
                failures.push(format!(
                    "{} / {cmd_name}: exit {:?}\n{all}",
                    case.what,
                    out.status.code()
                ));
                continue;
            }
            for needle in case.expect {
                if !all.contains(needle) {
                    failures.push(format!(
                        "{} / {cmd_name}: missing {needle:?} in:\n{all}",
                        case.what
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}
