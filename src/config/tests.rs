//! The config model and its validation, from YAML text.

use super::*;

/// The three chain variants of the design, all valid.
pub(crate) const GOOD: &str = r#"
kubernetes:
  request_timeout: 5s
probes:
  - name: eso-env
    interval: 30s
    deadline: 3m
    stage_deadlines: {eso_sync: 1m, rollout: 2m}
    slo: {eso_sync: 10s, end_to_end: 90s}
    store:
      address: http://127.0.0.1:8200
      path: canary/eso-env
      auth: {token: {env: VAULT_TOKEN}}
    chain:
      namespace: canary
      external_secret: canary-env
      secret: {name: canary-env}
      rollout: {deployment: canary-env, trigger: reloader}
      canary: {selector: "app=canary-env,tier in (canary, test),!legacy", source: env}
  - name: eso-volume
    schedule: "0 */5 * * * *"
    store:
      address: https://vault.example:8200
      path: canary/eso-volume
      auth: {kubernetes: {role: secret-canary}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {name: canary-volume}
      canary: {selector: app=canary-volume, source: file}
  - name: bank_vaults
    interval: 2m
    store:
      address: https://vault.example:8200
      path: canary/bankvaults
      auth: {approle: {role_id: abc, secret_id: {file: /etc/secret-id}}}
    chain:
      namespace: canary
      rollout: {deployment: canary-bv, trigger: restart}
      canary: {selector: app=canary-bv, source: env}
"#;

fn problems(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, "bad.yaml") {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(Problem::to_string).collect()
        }
        other => panic!("expected validation problems, got {other:?}"),
    }
}

fn has(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "no problem containing {needle:?} in:\n{}",
        problems.join("\n")
    );
}

#[test]
fn shared_objects_restart_on_eso_and_huge_deadlines_are_refused() {
    // A second eso-env probe on the same path, ExternalSecret and Deployment.
    let second = GOOD
        .split_once("  - name: eso-volume")
        .unwrap()
        .0
        .split_once("probes:\n")
        .unwrap()
        .1
        .replace("name: eso-env", "name: eso-env-2");
    let yaml = format!("{GOOD}{second}");
    let p = problems(&yaml);
    has(&p, "probes[3].store.path: also used by probes[0]");
    has(
        &p,
        "probes[3].chain.external_secret: also used by probes[0]",
    );
    has(
        &p,
        "probes[3].chain.rollout.deployment: also used by probes[0]",
    );
    let p = problems(&GOOD.replace("trigger: reloader", "trigger: restart"));
    has(
        &p,
        "probes[0].chain.rollout.trigger: `restart` on an ESO chain",
    );
    let p = problems(&GOOD.replace("deadline: 3m", "deadline: 2h"));
    has(&p, "probes[0].deadline: 2h exceeds the maximum of 1h");
}

#[test]
fn blocked_for_is_positive_and_below_the_deadline() {
    let with = |b: &str| {
        GOOD.replace(
            "deadline: 3m",
            &format!("deadline: 3m\n    blocked_for: {b}"),
        )
    };
    has(
        &problems(&with("3m")),
        "probes[0].blocked_for: 3m is not below the run deadline",
    );
    has(
        &problems(&with("0s")),
        "probes[0].blocked_for: must be greater than 0",
    );
    let c = Config::from_yaml(&with("5s"), "t.yaml").unwrap();
    assert_eq!(c.probes[0].blocked_for(), Duration::from_secs(5));
    assert_eq!(c.probes[1].blocked_for(), DEFAULT_BLOCKED_FOR);
}

#[test]
fn the_three_chain_variants_are_valid() {
    let c = Config::from_yaml(GOOD, "good.yaml").unwrap();
    assert_eq!(c.probes.len(), 3);
    assert_eq!(
        c.probes[0].stages(),
        Stage::CHAIN.to_vec(),
        "the ESO + Reloader chain has every hop"
    );
    assert_eq!(
        c.probes[1].stages(),
        [
            Stage::StoreWrite,
            Stage::EsoSync,
            Stage::SecretUpdate,
            Stage::CanaryObserve
        ]
    );
    assert_eq!(
        c.probes[2].stages(),
        [
            Stage::StoreWrite,
            Stage::ReloaderTrigger,
            Stage::Rollout,
            Stage::CanaryObserve
        ]
    );
    assert_eq!(
        c.probes[0].stage_deadline(Stage::EsoSync),
        Duration::from_secs(60)
    );
    assert_eq!(
        c.probes[0].stage_deadline(Stage::CanaryObserve),
        Duration::from_secs(180)
    );
    assert_eq!(c.probes[1].deadline(), DEFAULT_DEADLINE);
    assert_eq!(c.kubernetes.request_timeout(), Duration::from_secs(5));
    assert_eq!(
        c.probes[0].store.auth,
        StoreAuth::Token(TokenSource::Env("VAULT_TOKEN".into()))
    );
}

#[test]
fn every_problem_is_reported_with_its_field_path() {
    let yaml = r#"
probes:
  - name: Bad Name
    schedule: "*/5 * * * *"
    interval: 500ms
    deadline: 1m
    stage_deadlines: {eso_sync: 2m, rollout: 0s}
    slo: {reloader_trigger: 1s}
    store:
      address: ftp://vault
      mount: /secret
      path: ../escape
      auth: {token: {env: ""}}
    chain:
      namespace: Canary
      external_secret: es
      rollout: {deployment: d, trigger: none}
      canary: {selector: "app in canary", source: env, port: 0}
  - name: ok
    schedule: "0 61 * * * *"
    store: {address: "http://v:8200", path: "", auth: {kubernetes: {role: ""}}}
    chain:
      namespace: canary
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: "", source: file}
  - name: ok
    store: {address: "not a url", path: a/b, auth: {approle: {role_id: "", secret_id: {file: ""}}}}
    chain:
      namespace: canary
      canary: {selector: app=x, source: file}
"#;
    let p = problems(yaml);
    has(&p, "probes[0].name: \"Bad Name\" must match");
    has(
        &p,
        "probes[0].schedule: set exactly one of `schedule` and `interval`, not both",
    );
    has(
        &p,
        "probes[0].stage_deadlines.eso_sync: 2m exceeds the run deadline of 1m",
    );
    has(
        &p,
        "probes[0].stage_deadlines.rollout: stage rollout is not part of this probe's chain",
    );
    has(
        &p,
        "probes[0].slo.reloader_trigger: stage reloader_trigger is not part of this probe's chain",
    );
    has(
        &p,
        "probes[0].store.address: \"ftp://vault\" must be an http:// or https:// URL",
    );
    has(
        &p,
        "probes[0].store.mount: \"/secret\" must not start with `/`",
    );
    has(&p, "probes[0].store.path: \"../escape\" must not contain");
    has(&p, "probes[0].store.auth.token.env: must not be empty");
    has(
        &p,
        "probes[0].chain.namespace: \"Canary\" is not a valid Kubernetes name",
    );
    has(
        &p,
        "probes[0].chain.secret: required when `external_secret` is set",
    );
    has(
        &p,
        "probes[0].chain.rollout.trigger: `none` only works with `canary.source: file`",
    );
    has(&p, "probes[0].chain.canary.selector: \"app in canary\"");
    has(&p, "probes[0].chain.canary.port: must be 1-65535");
    has(
        &p,
        "probes[1].schedule: invalid cron expression \"0 61 * * * *\"",
    );
    has(&p, "probes[1].store.path: must not be empty");
    has(
        &p,
        "probes[1].store.auth.kubernetes.role: must not be empty",
    );
    has(
        &p,
        "probes[1].chain.rollout.trigger: `reloader` reacts to a Secret change",
    );
    has(&p, "probes[1].chain.canary.selector: must not be empty");
    has(
        &p,
        "probes[2].name: duplicate probe name \"ok\" (also probes[1])",
    );
    has(
        &p,
        "probes[2].schedule: set exactly one of `schedule` (cron) and `interval`",
    );
    has(&p, "probes[2].store.address: \"not a url\" is not a URL");
    has(
        &p,
        "probes[2].store.auth.approle.role_id: must not be empty",
    );
    has(
        &p,
        "probes[2].store.auth.approle.secret_id.file: must not be empty",
    );
    has(
        &p,
        "probes[2].chain.rollout: a chain without ESO is the webhook-injection",
    );
}

#[test]
fn five_field_cron_and_short_intervals_are_refused() {
    let yaml = GOOD
        .replace("schedule: \"0 */5 * * * *\"", "schedule: \"*/5 * * * *\"")
        .replace("interval: 30s", "interval: 0s");
    let p = problems(&yaml);
    has(
        &p,
        "probes[1].schedule: invalid cron expression \"*/5 * * * *\": 5 fields",
    );
    has(&p, "probes[0].interval: 0s is below the minimum of 1s");
}

#[test]
fn env_canary_without_rollout_is_refused() {
    let yaml = GOOD.replace(
        "      rollout: {deployment: canary-env, trigger: reloader}\n",
        "",
    );
    let p = problems(&yaml);
    has(
        &p,
        "probes[0].chain.rollout: required with `canary.source: env`",
    );
    has(
        &p,
        "probes[0].stage_deadlines.rollout: stage rollout is not part of this probe's chain",
    );
}

#[test]
fn yaml_syntax_errors_carry_line_and_column() {
    let e = Config::from_yaml("probes:\n  - name: [unclosed\n", "x.yaml").unwrap_err();
    match e {
        ConfigError::Syntax { line, column, .. } => {
            assert!(line.is_some() && column.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_fields_and_stage_names_are_named() {
    let e = Config::from_yaml(&GOOD.replace("deadline: 3m", "deadlin: 3m"), "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("probes[0]: unknown field `deadlin`"), "{e}");
    assert!(e.contains("line 7"), "{e}");
    let e = Config::from_yaml(&GOOD.replace("{eso_sync: 10s", "{esosync: 10s"), "x.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `esosync`"), "{e}");
    assert!(e.contains("probes[0].slo"), "{e}");
}

#[test]
fn label_selectors() {
    for ok in [
        "app=x",
        "app==x",
        "app!=x",
        "a.b/c=d",
        "app in (a, b)",
        "app notin (a)",
        "app",
        "!app",
        "app=x,tier",
    ] {
        check_label_selector(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "",
        "app=",
        "=x",
        "app in a",
        "app in ()",
        "app=x,",
        "app=(x",
        "-app=x",
        "app=x y",
    ] {
        if bad == "app=" {
            // An empty value is valid in the API's syntax.
            continue;
        }
        assert!(
            check_label_selector(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn canary_access_defaults_to_direct_and_names_bad_values() {
    let c = Config::from_yaml(GOOD, "x.yaml").unwrap();
    assert!(c
        .probes
        .iter()
        .all(|p| p.chain.canary.access == CanaryAccess::Direct));
    for (word, want) in [
        ("proxy", CanaryAccess::Proxy),
        ("auto", CanaryAccess::Auto),
        ("direct", CanaryAccess::Direct),
    ] {
        let y = GOOD.replace(
            "{selector: app=canary-volume, source: file}",
            &format!("{{selector: app=canary-volume, source: file, access: {word}}}"),
        );
        let c = Config::from_yaml(&y, "x.yaml").unwrap();
        assert_eq!(c.probes[1].chain.canary.access, want);
    }
    let y = GOOD.replace(
        "{selector: app=canary-volume, source: file}",
        "{selector: app=canary-volume, source: file, access: tunnel}",
    );
    let e = Config::from_yaml(&y, "x.yaml").unwrap_err().to_string();
    assert!(e.contains("unknown variant `tunnel`"), "{e}");
    assert!(e.contains("probes[1].chain.canary"), "{e}");
}
