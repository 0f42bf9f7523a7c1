//! Security: nothing the prober wrote leaks (logs at trace, /metrics,
//! /probes, Kubernetes Events, `once` output, the canary's endpoints); the
//! example Vault policy allows the canary path and nothing else on a real
//! OpenBao; KV v2 `max_versions` prunes old test values; the optional bearer
//! token guards `/metrics` and `/probes`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use secret_canary_lab::openbao::{BaoAdmin, OpenBao};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::prober::{sample, Prober};

const POLICY: &str = include_str!("../docs/vault-policy.hcl");
const PATHS: [&str; 3] = ["canary/eso-env", "canary/eso-volume", "canary/bankvaults"];
const PROBES: [&str; 3] = ["eso-reloader-env", "eso-volume", "bankvaults-restart"];

fn sha256(v: &str) -> String {
    hex::encode(Sha256::digest(v.as_bytes()))
}

fn base64(v: &str) -> String {
    // A Secret's `data` encoding, as the API serves it.
    serde_json::to_value(k8s_openapi::ByteString(v.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(0o600);
    std::io::Write::write_all(&mut o.open(path).unwrap(), text.as_bytes()).unwrap();
}

/// A token holding only the example policy (plus `default`).
async fn policy_token(bao: &BaoAdmin) -> String {
    bao.put_policy("secret-canary", POLICY).await.unwrap();
    bao.create_token(&["secret-canary"], "1h").await.unwrap()
}

/// KV v2 `current_version` of a path (0 when it does not exist).
async fn current_version(bao: &BaoAdmin, path: &str) -> u64 {
    match bao.kv_metadata(path).await {
        Ok(m) => m["data"]["current_version"].as_u64().unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every version of the canary paths, read back with the root token as
/// they appear (max_versions prunes old ones, so they are read early).
#[derive(Default)]
struct Written {
    /// path -> version -> value
    values: BTreeMap<String, BTreeMap<u64, String>>,
    /// Versions gone before they could be read.
    missed: Vec<(String, u64)>,
}

async fn collect(bao: &BaoAdmin, since: &BTreeMap<String, u64>, w: &Mutex<Written>) {
    for path in PATHS {
        let current = current_version(bao, path).await;
        let seen = {
            let w = w.lock().unwrap();
            w.values
                .get(path)
                .and_then(|m| m.keys().max().copied())
                .unwrap_or(since[path])
        };
        for v in (seen + 1)..=current {
            let got = bao
                .call(
                    reqwest::Method::GET,
                    &format!("secret/data/{path}?version={v}"),
                    None,
                )
                .await
                .ok()
                .and_then(|d| d["data"]["data"]["value"].as_str().map(str::to_string));
            let mut w = w.lock().unwrap();
            match got {
                Some(value) => {
                    w.values
                        .entry(path.to_string())
                        .or_default()
                        .insert(v, value);
                }
                None => w.missed.push((path.to_string(), v)),
            }
        }
    }
}

async fn success_runs(p: &Prober, probe: &str) -> f64 {
    let (_, m) = p.get("/metrics", None).await;
    sample(
        &m,
        "secret_canary_runs_total",
        &[("probe", probe), ("result", "success")],
    )
    .unwrap_or(0.0)
}

async fn list_events(client: &kube::Client) -> String {
    let mut text = String::new();
    for (group, version) in [("", "v1"), ("events.k8s.io", "v1")] {
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, "Event"));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let list = api.list(&ListParams::default()).await.unwrap();
        for e in list.items {
            text.push_str(&serde_json::to_string(&e).unwrap());
            text.push('\n');
        }
    }
    text
}

/// Everything every canary Pod answers, on every endpoint it has.
async fn canary_answers(client: &kube::Client) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "canary");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap();
    let mut text = String::new();
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let Some(ip) = p.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        for path in [
            "/digest",
            "/digest?differs_from=0000&wait=10ms",
            "/digest?wait=bogus",
            "/healthz",
            "/readyz",
            "/",
            "/value",
            "/env",
            "/metrics",
        ] {
            if let Ok(r) = http.get(format!("http://{ip}:8080{path}")).send().await {
                text.push_str(&format!("{path} {}\n", r.status()));
                for (k, v) in r.headers() {
                    text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("")));
                }
                text.push_str(&r.text().await.unwrap_or_default());
                text.push('\n');
            }
        }
    }
    text
}

fn once_output(config: &Path, format: &str) -> String {
    let out = std::process::Command::new(support::canary_bin())
        .args(["once", "--log-level", "trace", "-o", format, "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_prober_wrote_leaks_and_old_versions_are_pruned() {
    let lab = support::start_lab(None).await;
    let dir = lab.dir.path().to_path_buf();
    let token_file = dir.join("policy.token");
    write_private(&token_file, &policy_token(&lab.bao).await);
    let mut since = BTreeMap::new();
    for path in PATHS {
        since.insert(path.to_string(), current_version(&lab.bao, path).await);
    }
    let config = dir.join("leak.yaml");
    std::fs::write(
        &config,
        support::fixtures::prober_config(
            lab.prober_config.as_deref().unwrap(),
            "2s",
            Some(&token_file),
            "max_versions: 3",
        ),
    )
    .unwrap();

    // Read back every version as it appears, for the whole test.
    let written = Arc::new(Mutex::new(Written::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let collector = {
        let (bao, since, written, stop) = (
            lab.bao.clone(),
            since.clone(),
            written.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                collect(&bao, &since, &written).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            collect(&bao, &since, &written).await;
        })
    };

    let log = dir.join("prober-trace.log");
    let mut prober = Prober::command(&config, &log)
        .args(&["--log-level", "trace"])
        .spawn();
    prober.wait_healthy(Duration::from_secs(30)).await;
    let mut exported = String::new();
    let start = Instant::now();
    loop {
        exported.push_str(&prober.get("/metrics", None).await.1);
        exported.push_str(&prober.get("/probes", None).await.1);
        let mut done = true;
        for probe in PROBES {
            done &= success_runs(&prober, probe).await >= 6.0;
        }
        if done {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "not every probe had 6 successful runs in 300 s:\n{}",
            prober.get("/probes", None).await.1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run_secs = start.elapsed().as_secs_f64();
    let canary = canary_answers(&lab.client()).await;
    prober.stop().await;
    let trace_log = std::fs::read_to_string(&log).unwrap();

    let once_table = once_output(&config, "table");
    let once_json = once_output(&config, "json");
    let events = list_events(&lab.client()).await;
    stop.cancel();
    collector.await.unwrap();

    let (all, missed) = {
        let w = written.lock().unwrap();
        (w.values.clone(), w.missed.clone())
    };
    assert!(
        missed.is_empty(),
        "versions pruned before they were read: {missed:?}"
    );
    let values: BTreeSet<&String> = all.values().flat_map(|m| m.values()).collect();
    for path in PATHS {
        let versions: Vec<u64> = all
            .get(path)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        // Every version since the prober started was read: none escaped the check.
        let want: Vec<u64> = ((since[path] + 1)..=current_version(&lab.bao, path).await).collect();
        assert_eq!(versions, want, "{path}: versions read back");
        assert!(
            versions.len() >= 5,
            "{path}: only {} versions",
            versions.len()
        );
    }

    // Positive controls: the haystacks are the real ones.
    assert!(trace_log.contains("TRACE"), "the log is not at trace level");
    assert!(
        values.iter().any(|v| trace_log.contains(&sha256(v))),
        "no written value's digest in the prober's log: wrong log?"
    );
    assert!(once_json.contains("\"probe\""), "{once_json}");
    assert!(
        values.iter().any(|v| canary.contains(&sha256(v))),
        "the canaries serve no written digest:\n{canary}"
    );

    let haystacks: [(&str, &str); 6] = [
        ("prober log (trace)", &trace_log),
        ("/metrics and /probes", &exported),
        ("Kubernetes Events", &events),
        ("once -o table", &once_table),
        ("once -o json", &once_json),
        ("canary endpoints", &canary),
    ];
    let mut leaks = Vec::new();
    for v in &values {
        let needles = [
            v.to_string(),
            base64(v),
            v[..16].to_string(),
            v[v.len() - 16..].to_string(),
        ];
        for (name, hay) in haystacks {
            for n in &needles {
                if hay.contains(n.as_str()) {
                    leaks.push(format!("{name} contains {n:?} (from a written value)"));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    eprintln!(
        "leak check: {} values (one per run, `run` and `once`), prober ran {run_secs:.0} s; {} bytes of trace log, {} of exports, {} of events, {} of canary answers, {}+{} of once output: no value found",
        values.len(),
        trace_log.len(),
        exported.len(),
        events.len(),
        canary.len(),
        once_table.len(),
        once_json.len()
    );

    // max_versions: set by the engine, and old versions really are gone.
    for path in PATHS {
        let meta = lab.bao.kv_metadata(path).await.unwrap();
        assert_eq!(meta["data"]["max_versions"], json!(3), "{path}: {meta}");
        let current = meta["data"]["current_version"].as_u64().unwrap();
        let kept = meta["data"]["versions"].as_object().unwrap().len();
        assert!(kept <= 3, "{path}: {kept} versions kept: {meta}");
        assert!(
            meta["data"]["oldest_version"].as_u64().unwrap() > since[path],
            "{meta}"
        );
        let old = lab
            .bao
            .call(
                reqwest::Method::GET,
                &format!("secret/data/{path}?version={}", current - 3),
                None,
            )
            .await;
        let old_value = old
            .ok()
            .and_then(|d| d["data"]["data"]["value"].as_str().map(str::to_string));
        assert_eq!(
            old_value,
            None,
            "{path}: version {} should be pruned",
            current - 3
        );
        eprintln!("{path}: max_versions 3, current {current}, kept {kept}");
    }
    lab.stop().await;
}

/// One request with a token: the HTTP status.
async fn status(
    http: &reqwest::Client,
    bao: &OpenBao,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = http
        .request(method, format!("{}/v1/{path}", bao.addr))
        .header("X-Vault-Token", token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_example_policy_allows_the_canary_path_and_nothing_else() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(&dir.path().join("bao.log")).await.unwrap();
    let admin = BaoAdmin::new(&bao.addr, &bao.root_token).unwrap();
    admin
        .kv_put("other/db", &json!({"password": "hunter2"}))
        .await
        .unwrap();
    admin
        .kv_put("canary/existing", &json!({"value": "x"}))
        .await
        .unwrap();
    let token = policy_token(&admin).await;
    let http = reqwest::Client::new();
    let data = Some(json!({"data": {"value": "v"}}));
    let meta = Some(json!({"max_versions": 3}));

    let allowed = [
        ("POST", "secret/data/canary/new", data.clone()),
        ("POST", "secret/data/canary/existing", data.clone()),
        ("POST", "secret/data/canary/deep/er/path", data.clone()),
        ("POST", "secret/metadata/canary/new", meta.clone()),
        ("POST", "secret/metadata/canary/fresh-path", meta.clone()),
        ("GET", "auth/token/lookup-self", None),
    ];
    let denied = [
        ("POST", "secret/data/other/db", data.clone()),
        ("POST", "secret/data/other/new", data.clone()),
        ("POST", "secret/data/canary", data.clone()),
        ("POST", "secret/data/canary-prod/x", data.clone()),
        ("POST", "secret/data/prod/canary/x", data.clone()),
        ("GET", "secret/data/other/db", None),
        ("GET", "secret/data/canary/existing", None),
        ("GET", "secret/metadata/canary/existing", None),
        ("LIST", "secret/metadata/canary", None),
        ("LIST", "secret/metadata/", None),
        ("DELETE", "secret/data/canary/existing", None),
        (
            "POST",
            "secret/delete/canary/existing",
            Some(json!({"versions": [1]})),
        ),
        (
            "POST",
            "secret/destroy/canary/existing",
            Some(json!({"versions": [1]})),
        ),
        ("DELETE", "secret/metadata/canary/existing", None),
        ("POST", "secret/metadata/other/db", meta.clone()),
        (
            "PUT",
            "sys/policies/acl/mine",
            Some(json!({"policy": "path \"*\" {capabilities=[\"sudo\"]}"})),
        ),
        ("POST", "auth/token/create", Some(json!({}))),
        ("POST", "sys/mounts/kv2", Some(json!({"type": "kv"}))),
    ];
    let mut wrong = Vec::new();
    for (m, p, b) in allowed {
        let s = status(&http, &bao, &token, m, p, b).await;
        if !(200..300).contains(&s) {
            wrong.push(format!("{m} {p}: {s}, expected 2xx"));
        }
    }
    for (m, p, b) in denied {
        let s = status(&http, &bao, &token, m, p, b).await;
        if s != 403 {
            wrong.push(format!("{m} {p}: {s}, expected 403"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let other = admin
        .call(reqwest::Method::GET, "secret/data/other/db", None)
        .await
        .unwrap();
    assert_eq!(
        other["data"]["data"]["password"], "hunter2",
        "the other secret is untouched"
    );

    // The prober's own store client works with exactly this policy.
    let token_file = dir.path().join("token");
    write_private(&token_file, &token);
    let store = secret_canary::probe::store::Store::new(secret_canary::config::StoreConfig {
        address: bao.addr.clone(),
        mount: "secret".into(),
        path: "canary/prober".into(),
        path_prefix: "canary/".into(),
        max_versions: Some(4),
        key: "value".into(),
        namespace: None,
        ca_bundle: None,
        timeout: Some(Duration::from_secs(5)),
        auth: secret_canary::config::StoreAuth::Token(secret_canary::config::TokenSource::File(
            token_file,
        )),
    });
    store.prepare().await.unwrap();
    let w = store.write("a-test-value").await.unwrap();
    assert_eq!(w.version, 1);
    let m = admin.kv_metadata("canary/prober").await.unwrap();
    assert_eq!(m["data"]["max_versions"], json!(4), "{m}");
    bao.stop().await;
}

/// A config whose cluster and store are unreachable: the exporter still
/// serves (runs fail), which is all the token test needs.
fn offline_config(dir: &Path) -> PathBuf {
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        secret_canary_lab::lab::kubeconfig_yaml("http://127.0.0.1:1", "t"),
    )
    .unwrap();
    let cfg = dir.join("offline.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
kubernetes: {{kubeconfig: {}}}
probes:
  - name: p
    interval: 1h
    store: {{address: "http://127.0.0.1:1", path: canary/p, auth: {{token: {{env: NO_SUCH_TOKEN}}}}}}
    chain:
      namespace: canary
      external_secret: es
      secret: {{name: s}}
      canary: {{selector: app=c, source: file}}
"#,
            kc.display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test]
async fn a_bearer_token_guards_metrics_and_probes_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = offline_config(dir.path());
    let token_file = dir.path().join("metrics.token");
    write_private(&token_file, "s3cr3t-scrape-token\n");

    let mut p = Prober::command(&cfg, &dir.path().join("a.log"))
        .args(&["--metrics-token-file", token_file.to_str().unwrap()])
        .spawn();
    p.wait_healthy(Duration::from_secs(20)).await;
    for path in ["/metrics", "/probes"] {
        assert_eq!(p.get(path, None).await.0, 401, "{path} without a token");
        assert_eq!(
            p.get(path, Some("wrong")).await.0,
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            p.get(path, Some("s3cr3t-scrape-token-and-more")).await.0,
            401
        );
        let (code, body) = p.get(path, Some("s3cr3t-scrape-token")).await;
        assert_eq!(code, 200, "{path} with the token: {body}");
    }
    let (_, m) = p.get("/metrics", Some("s3cr3t-scrape-token")).await;
    assert_eq!(sample(&m, "secret_canary_leader", &[]), Some(1.0), "{m}");
    assert_eq!(p.get("/healthz", None).await.0, 200);
    assert_ne!(p.get("/readyz", None).await.0, 401);
    // A raw request shows the challenge.
    let r = reqwest::Client::new()
        .get(format!("http://{}/metrics", p.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers().get("www-authenticate").unwrap(),
        "Bearer realm=\"secret-canary\""
    );
    assert!(!p.log_text().contains("s3cr3t"), "the token was logged");
    p.stop().await;

    // Off by default.
    let mut p = Prober::command(&cfg, &dir.path().join("b.log")).spawn();
    p.wait_healthy(Duration::from_secs(20)).await;
    assert_eq!(p.get("/metrics", None).await.0, 200);
    assert_eq!(p.get("/probes", None).await.0, 200);
    p.stop().await;

    // An empty or missing token file is a usage error.
    write_private(&token_file, "  \n");
    for file in [token_file.clone(), dir.path().join("missing")] {
        let out = std::process::Command::new(support::canary_bin())
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&cfg)
            .arg("--metrics-token-file")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--metrics-token-file"), "{err}");
    }
}
