//! The node agent (the lab's kubelet in node mode) on the real control
//! plane: it registers a Node as `system:node:lab-node` under the Node
//! authorizer, keeps its Lease, runs the Pods the real scheduler binds to it
//! as local `secret-canary` processes (env from a Secret, a Secret volume
//! refreshed on its sync period, readiness probes), reports ErrImagePull for
//! any other image, and deletes a Pod gracefully, honouring its
//! `terminationGracePeriodSeconds` (SIGTERM, the grace, SIGKILL, the final
//! delete) or the deletion's own grace period.
//!
//! Needs the real binaries (`scripts/build-real.sh`) and
//! `target/debug/secret-canary`; without them it says SKIP loudly and passes
//! (unless `SECRET_CANARY_REQUIRE_REAL` is set).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use secret_canary_lab::controllers::kubelet::node::{start_node, NodeConfig};
use secret_canary_lab::controllers::Context;
use secret_canary_lab::faults::Knobs;
use secret_canary_lab::real::bins::{self, Binaries};
use secret_canary_lab::real::lab::rolled_out;
use secret_canary_lab::real::{RealCluster, RealOptions, NODE_NAME};
use secret_canary_lab::truth::{digest, Truth};

fn prerequisites() -> Option<PathBuf> {
    let mut missing = Binaries::pinned().missing(&bins::CONTROL_PLANE[..4]);
    let canary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/secret-canary");
    if !canary.is_file() {
        missing.push(canary.display().to_string());
    }
    let hint = "scripts/build-real.sh; cargo build --bin secret-canary";
    bins::present_or_skip("real cluster node agent", &missing, hint).then_some(canary)
}

async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            eprintln!("{what}: after {:.1} s", start.elapsed().as_secs_f64());
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deployment(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{
                        "name": "canary",
                        "image": image,
                        "command": ["secret-canary", "canary"],
                        "env": [
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "SECRET_CANARY_LISTEN", "value": "$(POD_IP):8080"},
                            {"name": "SECRET_CANARY_FROM_FILE", "value": "/etc/canary/value"},
                            {"name": "FROM_ENV", "valueFrom": {"secretKeyRef": {"name": "node-canary", "key": "value"}}},
                        ],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "secret", "mountPath": "/etc/canary", "readOnly": true}],
                    }],
                    "volumes": [{"name": "secret", "secret": {"secretName": "node-canary"}}],
                },
            },
        },
    })
}

async fn served_digest(http: &reqwest::Client, ip: &str) -> Option<String> {
    let r = http
        .get(format!("http://{ip}:8080/digest"))
        .send()
        .await
        .ok()?;
    let v: Value = r.json().await.ok()?;
    v["digest"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_agent_runs_what_the_real_scheduler_binds() {
    let Some(canary_bin) = prerequisites() else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,secret_canary_lab=info")
        .with_test_writer()
        .try_init();
    let n: u64 = rand::random();
    let dir = std::env::temp_dir().join(format!("secret-canary-real-node-{n:016x}"));
    let cluster = RealCluster::start(RealOptions::new(&dir))
        .await
        .expect("the control plane starts");
    let admin = cluster.client();
    let node_client = secret_canary_lab::lab::client_from_kubeconfig(&cluster.node_kubeconfig)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let ctx = Context {
        client: node_client.clone(),
        knobs: Arc::new(Knobs::default()),
        truth: Arc::new(Truth::in_memory()),
        dir: cluster.dir.clone(),
        canary_bin,
        vault_addr: "http://127.0.0.1:1".into(),
    };
    let node = start_node(ctx, NodeConfig::lab(NODE_NAME), cancel.clone())
        .await
        .expect("the node registers");

    // The Node authorizer applies: the node may not read a Secret no Pod of
    // its own uses.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "default");
    let first = "first-value";
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "node-canary", "namespace": "default"},
        "stringData": {"value": first},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let as_node: Api<Secret> = Api::namespaced(node_client.clone(), "default");
    let denied = as_node.get("node-canary").await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(e) if e.code == 403),
        "{denied}"
    );

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), "default");
    for (name, image) in [
        ("node-canary", "secret-canary:latest"),
        ("unpullable", "nginx:1.27"),
    ] {
        let d: Deployment = serde_json::from_value(deployment(name, image)).unwrap();
        deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }
    wait_for(Duration::from_secs(90), "node-canary rolled out", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("node-canary").await.ok()?;
            rolled_out(&d).then_some(())
        }
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = pods
        .list(&ListParams::default().labels("app=node-canary"))
        .await
        .unwrap()
        .items
        .remove(0);
    let spec = pod.spec.clone().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(NODE_NAME));
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
    assert!(ip.starts_with("127."), "{ip}");
    // The admission plugin gave it a projected token volume; the node wrote it.
    let projected = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.projected.is_some())
        .expect("a projected token volume");
    let pod_dir = cluster
        .dir
        .join("pods/default")
        .join(pod.metadata.name.clone().unwrap());
    let token =
        std::fs::read_to_string(pod_dir.join("volumes").join(&projected.name).join("token"))
            .expect("the projected token");
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(
        served_digest(&http, &ip).await.as_deref(),
        Some(digest(first.as_bytes()).as_str())
    );

    // The Secret volume follows on the node's sync period (1 s + jitter).
    let second = "second-value";
    secrets
        .patch(
            "node-canary",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"value": second}})),
        )
        .await
        .unwrap();
    let want = digest(second.as_bytes());
    wait_for(Duration::from_secs(10), "the volume refreshed", || {
        let (http, ip, want) = (http.clone(), ip.clone(), want.clone());
        async move { (served_digest(&http, &ip).await? == want).then_some(()) }
    })
    .await;

    // Any other image: ErrImagePull / ImagePullBackOff, as a kubelet says.
    wait_for(
        Duration::from_secs(30),
        "unpullable reports ErrImagePull",
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=unpullable"))
                    .await
                    .ok()?;
                let reason = list
                    .items
                    .first()?
                    .status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?[0]
                    .state
                    .as_ref()?
                    .waiting
                    .as_ref()?
                    .reason
                    .clone()?;
                (reason == "ErrImagePull" || reason == "ImagePullBackOff").then_some(())
            }
        },
    )
    .await;

    // The Node is Ready and its Lease renewed.
    let nodes: Api<Node> = Api::all(admin.clone());
    let ready = nodes
        .get(NODE_NAME)
        .await
        .unwrap()
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
    let lease = leases.get(NODE_NAME).await.unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(NODE_NAME)
    );

    // Graceful deletion: the node stops the process and makes the final delete.
    let name = pod.metadata.name.clone().unwrap();
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_for(Duration::from_secs(30), "the deleted Pod is gone", || {
        let (pods, name) = (pods.clone(), name.clone());
        async move { pods.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
    wait_for(Duration::from_secs(60), "a replacement rolled out", || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("node-canary").await.ok()?;
            rolled_out(&d).then_some(())
        }
    })
    .await;

    // The Pod's terminationGracePeriodSeconds is honoured (not the sim's 3 s
    // cap): a process that ignores SIGTERM keeps running for the whole
    // grace, then gets SIGKILL and the node makes the final delete. A
    // deletion's own grace (`--grace-period=1`) overrides the spec's.
    for (name, delete_grace, min, max) in [
        ("grace-spec", None, 5.5, 20.0),
        // 1 s asked, the kubelet's 2 s minimum given.
        ("grace-delete", Some(1), 1.5, 5.5),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "terminationGracePeriodSeconds": 6,
                "containers": [{
                    "name": "stubborn",
                    "image": "secret-canary:latest",
                    "command": ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"],
                }],
            },
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        wait_for(Duration::from_secs(60), &format!("{name} running"), || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.ok()?;
                let st = p.status?.container_statuses?;
                st.first()?.state.as_ref()?.running.as_ref().map(|_| ())
            }
        })
        .await;
        let deleted = Instant::now();
        let params = DeleteParams {
            grace_period_seconds: delete_grace,
            ..DeleteParams::default()
        };
        pods.delete(name, &params).await.unwrap();
        // Still there (Terminating) while the grace runs.
        if delete_grace.is_none() {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(
                pods.get_opt(name).await.unwrap().is_some(),
                "{name}: gone before its grace period ended"
            );
        }
        wait_for(Duration::from_secs(30), &format!("{name} gone"), || {
            let pods = pods.clone();
            async move { pods.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
        let took = deleted.elapsed().as_secs_f64();
        eprintln!("{name}: deleted (grace {delete_grace:?}, spec 6 s) and gone after {took:.1} s");
        assert!(
            (min..max).contains(&took),
            "{name}: gone after {took:.1} s, want {min}..{max} s"
        );
    }

    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), node).await;
    cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
