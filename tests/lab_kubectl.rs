//! The lab through real `kubectl` and the real `bao` CLI, as a person would
//! use it: list the scenario, watch a Secret change after `bao kv put`, wait
//! for the Reloader-triggered rollout, and restart a Deployment.

mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

fn kubectl(lab: &support::TestLab) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(&lab.kubeconfig);
    c.kill_on_drop(true);
    c
}

async fn run(mut c: Command) -> String {
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .expect("command finishes")
        .expect("command runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{c:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_watches_and_rolls_the_lab() {
    let lab =
        support::start_rolled_out(&support::CANARY_DEPLOYMENTS, Duration::from_secs(60)).await;

    // The whole scenario in one listing.
    let mut c = kubectl(&lab);
    c.args(["get", "deploy,rs,pods,secrets,externalsecrets", "-A"]);
    let listing = run(c).await;
    for want in [
        "deployment.apps/canary-env",
        "deployment.apps/canary-volume",
        "deployment.apps/canary-bankvaults",
        "replicaset.apps/canary-env-",
        "pod/canary-env-",
        "secret/canary-env",
        "secret/canary-volume",
        "externalsecret.external-secrets.io/canary-env",
    ] {
        assert!(listing.contains(want), "missing {want} in:\n{listing}");
    }

    // `kubectl get secrets -w` streams the change made with `bao kv put`
    // (a list's watch resumes from the list, so no change is lost between
    // kubectl's GET and its watch, as one can be for `get secret NAME -w`).
    let mut c = kubectl(&lab);
    c.args([
        "-n",
        "canary",
        "get",
        "secrets",
        "--field-selector=metadata.name=canary-env",
        "-w",
        "-o",
        "jsonpath={.metadata.resourceVersion}{\"\\n\"}",
    ])
    .stdout(Stdio::piped());
    let mut watch = c.spawn().expect("kubectl -w starts");
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("initial line")
        .unwrap()
        .expect("a resourceVersion");
    let bao = secret_canary_lab::openbao::find_bao().expect("bao installed");
    let out = Command::new(bao)
        .args([
            "kv",
            "put",
            "-mount=secret",
            "canary/eso-env",
            "value=from-the-bao-cli",
        ])
        .env("BAO_ADDR", &lab.vault.addr)
        .env("BAO_TOKEN", &lab.vault.root_token)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "bao kv put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("kubectl -w printed the change within 15 s")
        .unwrap()
        .expect("a new resourceVersion");
    assert_ne!(first, next, "the watch reports a new version of the Secret");
    let _ = watch.kill().await;

    // The Reloader-triggered rollout completes, as kubectl sees it.
    let mut c = kubectl(&lab);
    c.args([
        "-n",
        "canary",
        "rollout",
        "status",
        "deploy/canary-env",
        "--timeout=60s",
    ]);
    let status = run(c).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let mut c = kubectl(&lab);
    c.args([
        "-n",
        "canary",
        "get",
        "deploy",
        "canary-env",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].env[*].name}",
    ]);
    let env = run(c).await;
    assert!(
        env.contains("STAKATER_CANARY_ENV_SECRET"),
        "Reloader's env var: {env}"
    );

    // `kubectl rollout restart` works and rolls out.
    let mut c = kubectl(&lab);
    c.args(["-n", "canary", "rollout", "restart", "deploy/canary-volume"]);
    let restarted = run(c).await;
    assert!(restarted.contains("restarted"), "{restarted}");
    let mut c = kubectl(&lab);
    c.args([
        "-n",
        "canary",
        "rollout",
        "status",
        "deploy/canary-volume",
        "--timeout=60s",
    ]);
    let status = run(c).await;
    assert!(status.contains("successfully rolled out"), "{status}");

    lab.stop().await;
}
