//! End-to-end tests of the lab's simulated ESO, Reloader and
//! Deployment/ReplicaSet controllers against the lab API server (in process,
//! on 127.0.0.1:0) and a real OpenBao dev server.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use secret_canary_lab::apiserver::{kube_client, kubeconfig_yaml, ApiServer};
use secret_canary_lab::controllers::eso::{
    self, ExternalSecret, SecretStore, DATA_HASH_ANNOTATION, MANAGED_LABEL,
};
use secret_canary_lab::controllers::reloader::{self, ReloadStrategy, ReloaderOptions};
use secret_canary_lab::controllers::{deployment, replicaset, Context};
use secret_canary_lab::faults::{Fault, Knob, Knobs, Latency};
use secret_canary_lab::openbao::{BaoAdmin, OpenBao};
use secret_canary_lab::truth::{self, step, Truth};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const NS: &str = "default";

struct Env {
    server: ApiServer,
    ctx: Context,
    cancel: CancellationToken,
    api_url: String,
    dir: PathBuf,
    bao: Option<OpenBao>,
}

impl Env {
    async fn new(with_bao: bool) -> Env {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lab-controllers-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let knobs = Arc::new(Knobs::default());
        let cancel = CancellationToken::new();
        let server = ApiServer::new(knobs.clone());
        let addr = server.listen_local_insecure(cancel.clone()).await.unwrap();
        let api_url = format!("http://{addr}");
        let client = kube_client(&api_url, &server.admin_token()).await.unwrap();
        let bao = if with_bao {
            Some(OpenBao::start(&dir.join("bao.log")).await.unwrap())
        } else {
            None
        };
        let ctx = Context {
            client,
            knobs,
            truth: Arc::new(Truth::in_memory()),
            dir: dir.clone(),
            canary_bin: PathBuf::from("/bin/false"),
            vault_addr: bao.as_ref().map(|b| b.addr.clone()).unwrap_or_default(),
        };
        Env {
            server,
            ctx,
            cancel,
            api_url,
            dir,
            bao,
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.ctx.client.clone(), NS)
    }

    fn bao_admin(&self) -> BaoAdmin {
        let b = self.bao.as_ref().unwrap();
        BaoAdmin::new(&b.addr, &b.root_token).unwrap()
    }

    fn truth(&self) -> &Truth {
        &self.ctx.truth
    }

    async fn stop(self) {
        self.cancel.cancel();
        if let Some(b) = self.bao {
            b.stop().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::fs::remove_dir_all(&self.dir).ok();
    }

    /// A SecretStore `vault` with token auth (root token in Secret `vault-token`).
    async fn token_store(&self) {
        let b = self.bao.as_ref().unwrap();
        let secrets: Api<Secret> = self.api();
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "vault-token"},
            "stringData": {},
            "data": {"token": b64(&b.root_token)},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
        create_store(
            self,
            json!({"tokenSecretRef": {"name": "vault-token", "key": "token"}}),
        )
        .await;
    }

    fn kubeconfig(&self) -> PathBuf {
        let p = self.dir.join("kubeconfig");
        std::fs::write(
            &p,
            kubeconfig_yaml(&self.api_url, &self.server.admin_token()),
        )
        .unwrap();
        p
    }
}

fn b64(s: &str) -> String {
    use std::fmt::Write;
    // Small local encoder: the test crate has no base64 dependency of its own.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.write_char(T[((n >> (18 - 6 * i)) & 63) as usize] as char)
                    .unwrap();
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn create_store(env: &Env, auth: Value) {
    let b = env.bao.as_ref().unwrap();
    let stores: Api<SecretStore> = env.api();
    let s: SecretStore = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
        "metadata": {"name": "vault"},
        "spec": {"provider": {"vault": {"server": b.addr, "path": "secret", "version": "v2", "auth": auth}}}
    }))
    .unwrap();
    stores.create(&PostParams::default(), &s).await.unwrap();
}

async fn create_es(env: &Env, name: &str, interval: &str, key: &str) {
    let api: Api<ExternalSecret> = env.api();
    let es: ExternalSecret = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "refreshInterval": interval,
            "secretStoreRef": {"name": "vault", "kind": "SecretStore"},
            "target": {"name": format!("{name}-synced")},
            "data": [{"secretKey": "value", "remoteRef": {"key": key, "property": "value"}}]
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &es).await.unwrap();
}

/// Poll `f` every 50 ms until it returns `Some`, or panic after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn secret_value(env: &Env, name: &str, key: &str) -> Option<String> {
    let secrets: Api<Secret> = env.api();
    let s = secrets.get_opt(name).await.ok()??;
    s.data?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).to_string())
}

async fn es_ready(env: &Env, name: &str) -> Option<(String, String, Value)> {
    let api: Api<ExternalSecret> = env.api();
    let es = api.get(name).await.ok()?;
    let c = es
        .status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        es.status.clone(),
    ))
}

fn spawn<F, Fut, E>(env: &Env, run: F)
where
    F: FnOnce(Context, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let fut = run(env.ctx.clone(), env.cancel.clone());
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            panic!("controller failed: {e}");
        }
    });
}

// ---------------------------------------------------------------------------
// ESO

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_writes_secret_then_status_and_repairs_drift() {
    let env = Env::new(true).await;
    env.bao_admin()
        .kv_put("app", &json!({"value": "v1"}))
        .await
        .unwrap();
    env.token_store().await;
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;

    let v = wait_for("synced Secret", Duration::from_secs(10), || {
        secret_value(&env, "es-synced", "value")
    })
    .await;
    assert_eq!(v, "v1");
    let (status, reason, st) = wait_for("Ready condition", Duration::from_secs(10), || {
        es_ready(&env, "es")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SecretSynced"));
    assert_eq!(st["binding"]["name"], "es-synced");
    assert!(
        st["syncedResourceVersion"]
            .as_str()
            .unwrap()
            .starts_with("1-"),
        "{st}"
    );
    let refresh: DateTime<Utc> = st["refreshTime"].as_str().unwrap().parse().unwrap();
    assert_eq!(refresh.timestamp_subsec_nanos(), 0, "whole seconds");

    // Ground truth: read, then Secret, then status; the same digest throughout.
    let d = truth::digest(b"v1");
    let read = env
        .truth()
        .first_with_digest(step::ESO_STORE_READ, &d)
        .unwrap();
    let written = env
        .truth()
        .first_with_digest(step::ESO_SECRET_WRITTEN, &d)
        .unwrap();
    let synced = env
        .truth()
        .first_with_digest(step::ESO_STATUS_SYNCED, &d)
        .unwrap();
    assert!(
        read.ts <= written.ts && written.ts <= synced.ts,
        "{read:?} {written:?} {synced:?}"
    );
    assert_eq!(written.name, "es-synced");
    assert_eq!(synced.name, "es");
    // refreshTime is when the reconcile started: not after the Secret write.
    assert!(refresh <= written.ts);
    // And the Secret's own timestamp agrees (whole seconds, so compare loosely).
    let secrets: Api<Secret> = env.api();
    let s = secrets.get("es-synced").await.unwrap();
    let created = s.metadata.creation_timestamp.clone().unwrap().0.as_second();
    assert!(created >= refresh.timestamp() && created <= synced.ts.timestamp() + 1);
    assert_eq!(
        s.labels().get(MANAGED_LABEL).map(String::as_str),
        Some("true")
    );
    assert!(s.annotations().contains_key(DATA_HASH_ANNOTATION));
    let owner = &s.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ExternalSecret", "es", Some(true))
    );
    assert_eq!(s.type_.as_deref(), Some("Opaque"));

    // A second reconcile without changes writes nothing.
    let writes = env
        .truth()
        .find(step::ESO_SECRET_WRITTEN, NS, "es-synced")
        .len();

    // Edited data is put back; a deleted Secret is recreated.
    let patch = json!({"data": {"value": b64("tampered")}});
    secrets
        .patch("es-synced", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("drift repaired", Duration::from_secs(10), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v1")).then_some(())
    })
    .await;
    secrets
        .delete("es-synced", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Secret recreated", Duration::from_secs(10), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v1")).then_some(())
    })
    .await;
    assert_eq!(
        env.truth()
            .find(step::ESO_SECRET_WRITTEN, NS, "es-synced")
            .len(),
        writes + 2
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_force_sync_annotation_syncs_at_once() {
    let env = Env::new(true).await;
    let bao = env.bao_admin();
    bao.kv_put("app", &json!({"value": "v1"})).await.unwrap();
    env.token_store().await;
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    wait_for("first sync", Duration::from_secs(10), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v1")).then_some(())
    })
    .await;
    wait_for("Ready", Duration::from_secs(10), || es_ready(&env, "es")).await;
    // A first attempt that failed (store not ready yet) leaves an error
    // back-off retry queued; let it pass so only the 1h interval remains.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    bao.kv_put("app", &json!({"value": "v2"})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        secret_value(&env, "es-synced", "value").await.as_deref(),
        Some("v1"),
        "1h interval: no refresh yet"
    );

    let api: Api<ExternalSecret> = env.api();
    let t0 = Utc::now();
    let patch = json!({"metadata": {"annotations": {"force-sync": t0.timestamp().to_string()}}});
    api.patch("es", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("forced sync", Duration::from_secs(5), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let written = env
        .truth()
        .first_with_digest(step::ESO_SECRET_WRITTEN, &truth::digest(b"v2"))
        .unwrap();
    assert!(
        written.ts - t0 < chrono::Duration::seconds(3),
        "force-sync took {:?}",
        written.ts - t0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_clock_skew_moves_refresh_time_and_refresh_decisions_not_truth() {
    let env = Env::new(true).await;
    let bao = env.bao_admin();
    bao.kv_put("app", &json!({"value": "v1"})).await.unwrap();
    env.token_store().await;
    // ESO's clock 10 minutes behind.
    env.ctx
        .knobs
        .set_latency(Knob::EsoClockSkew, "-10m".parse::<Latency>().unwrap());
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    let (_, _, st) = wait_for("Ready", Duration::from_secs(10), || async {
        es_ready(&env, "es").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    let refresh: DateTime<Utc> = st["refreshTime"].as_str().unwrap().parse().unwrap();
    let behind = Utc::now() - refresh;
    assert!(
        behind > chrono::Duration::seconds(595) && behind < chrono::Duration::seconds(605),
        "refreshTime {refresh} is {behind:?} behind the true clock"
    );
    // Ground truth stays on the true clock.
    let synced = env
        .truth()
        .first_with_digest(step::ESO_STATUS_SYNCED, &truth::digest(b"v1"))
        .unwrap();
    assert!(
        (Utc::now() - synced.ts).num_seconds().abs() < 5,
        "{synced:?}"
    );

    // ESO's clock jumps 2 h ahead: with a 1 h interval its refreshTime is
    // now stale by its own clock, so it refreshes (the knob switch makes it
    // reconcile at once) and writes a refreshTime 2 h ahead.
    bao.kv_put("app", &json!({"value": "v2"})).await.unwrap();
    env.ctx
        .knobs
        .set_latency(Knob::EsoClockSkew, "2h".parse::<Latency>().unwrap());
    wait_for(
        "refresh by the skewed clock",
        Duration::from_secs(10),
        || async {
            (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v2")).then_some(())
        },
    )
    .await;
    let (_, _, st) = wait_for(
        "status after the refresh",
        Duration::from_secs(10),
        || async {
            es_ready(&env, "es").await.filter(|(_, _, st)| {
                st["refreshTime"].as_str()
                    != Some(
                        refresh
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            .as_str(),
                    )
            })
        },
    )
    .await;
    let refresh2: DateTime<Utc> = st["refreshTime"].as_str().unwrap().parse().unwrap();
    let ahead = refresh2 - Utc::now();
    assert!(
        ahead > chrono::Duration::seconds(7190) && ahead < chrono::Duration::seconds(7205),
        "refreshTime {refresh2} is {ahead:?} ahead"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_finalizer_merge_without_secret_and_one_worker() {
    let env = Env::new(true).await;
    let bao = env.bao_admin();
    bao.kv_put("app", &json!({"value": "v1"})).await.unwrap();
    env.token_store().await;
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    wait_for("Ready", Duration::from_secs(10), || async {
        es_ready(&env, "es").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    // The finalizer ESO adds to every ExternalSecret; deleting waits for
    // ESO to remove it.
    let api: Api<ExternalSecret> = env.api();
    let es = api.get("es").await.unwrap();
    assert_eq!(
        es.metadata.finalizers.as_deref(),
        Some(&[eso::FINALIZER.to_string()][..])
    );
    api.delete("es", &DeleteParams::default()).await.unwrap();
    wait_for("ExternalSecret gone", Duration::from_secs(10), || async {
        api.get_opt("es").await.unwrap().is_none().then_some(())
    })
    .await;

    // creationPolicy Merge without a Secret: Ready=True/SecretMissing with a
    // refreshTime, and no Secret created.
    let merge: ExternalSecret = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "merge"},
        "spec": {
            "refreshInterval": "1h",
            "secretStoreRef": {"name": "vault", "kind": "SecretStore"},
            "target": {"name": "merge-target", "creationPolicy": "Merge"},
            "data": [{"secretKey": "value", "remoteRef": {"key": "app", "property": "value"}}]
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &merge).await.unwrap();
    let (status, reason, st) = wait_for("SecretMissing", Duration::from_secs(10), || {
        es_ready(&env, "merge")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "SecretMissing")
    );
    assert!(st["refreshTime"].is_string(), "{st}");
    assert!(secret_value(&env, "merge-target", "value").await.is_none());

    // One reconcile worker: two ExternalSecrets sync one after another.
    env.ctx
        .knobs
        .set_latency(Knob::EsoLatency, Latency::Fixed(Duration::from_millis(800)));
    bao.kv_put("one", &json!({"value": "o1"})).await.unwrap();
    bao.kv_put("two", &json!({"value": "t1"})).await.unwrap();
    create_es(&env, "one", "1h", "one").await;
    create_es(&env, "two", "1h", "two").await;
    for n in ["one-synced", "two-synced"] {
        wait_for(n, Duration::from_secs(10), || {
            secret_value(&env, n, "value")
        })
        .await;
    }
    let a = env.truth().find(step::ESO_STORE_READ, NS, "one")[0].ts;
    let b = env.truth().find(step::ESO_STORE_READ, NS, "two")[0].ts;
    assert!(
        (a - b).num_milliseconds().abs() >= 700,
        "the two syncs overlapped: reads {a} and {b}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_status_update_conflict_requeues_without_writing() {
    let env = Env::new(true).await;
    env.bao_admin()
        .kv_put("app", &json!({"value": "v1"}))
        .await
        .unwrap();
    env.token_store().await;
    // Time between the Secret write and the status write to change the ES in.
    env.ctx.knobs.set_latency(
        Knob::EsoStatusLatency,
        Latency::Fixed(Duration::from_millis(1500)),
    );
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    wait_for("Secret written", Duration::from_secs(10), || {
        secret_value(&env, "es-synced", "value")
    })
    .await;
    // A change that leaves ESO's metadata hash alone (a finalizer) but moves
    // the resourceVersion the status update carries.
    let api: Api<ExternalSecret> = env.api();
    let mut es = api.get("es").await.unwrap();
    assert!(
        es.status.get("refreshTime").is_none(),
        "status written too early"
    );
    es.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push("example.com/hold".into());
    api.replace("es", &PostParams::default(), &es)
        .await
        .unwrap();
    env.ctx.knobs.set_latency(
        Knob::EsoStatusLatency,
        Latency::Fixed(Duration::from_millis(5)),
    );
    wait_for("Ready", Duration::from_secs(10), || async {
        es_ready(&env, "es").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    // The conflicting update wrote nothing; the requeued pass synced again.
    let synced = env.truth().find(step::ESO_STATUS_SYNCED, NS, "es").len();
    let reads = env.truth().find(step::ESO_STORE_READ, NS, "es").len();
    assert_eq!(synced, 1);
    assert!(reads >= 2, "{reads} reads");
    assert_eq!(env.server.request_counts().verb("patch"), 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_stall_stops_syncs_and_resumes() {
    let env = Env::new(true).await;
    let bao = env.bao_admin();
    bao.kv_put("app", &json!({"value": "v1"})).await.unwrap();
    env.token_store().await;
    spawn(&env, eso::run);
    create_es(&env, "es", "1s", "app").await;
    wait_for("first sync", Duration::from_secs(10), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v1")).then_some(())
    })
    .await;

    env.ctx.knobs.set_fault(Fault::EsoStall, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads_before = env.truth().find(step::ESO_STORE_READ, NS, "es").len();
    bao.kv_put("app", &json!({"value": "v2"})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        secret_value(&env, "es-synced", "value").await.as_deref(),
        Some("v1"),
        "stalled ESO synced"
    );
    assert_eq!(
        env.truth().find(step::ESO_STORE_READ, NS, "es").len(),
        reads_before,
        "stalled ESO read the store"
    );

    let off = Utc::now();
    env.ctx.knobs.set_fault(Fault::EsoStall, false);
    wait_for("sync after stall", Duration::from_secs(5), || async {
        (secret_value(&env, "es-synced", "value").await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    let w = env
        .truth()
        .first_with_digest(step::ESO_SECRET_WRITTEN, &truth::digest(b"v2"))
        .unwrap();
    assert!(w.ts >= off);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_error_reports_synced_error_and_recovers() {
    let env = Env::new(true).await;
    env.bao_admin()
        .kv_put("app", &json!({"value": "v1"}))
        .await
        .unwrap();
    env.token_store().await;
    env.ctx.knobs.set_fault(Fault::EsoError, true);
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    let (status, reason, st) = wait_for("error condition", Duration::from_secs(10), || {
        es_ready(&env, "es")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretSyncedError")
    );
    let msg = st["conditions"][0]["message"].as_str().unwrap();
    assert_eq!(msg, "could not get secret data from provider");
    assert!(
        st.get("refreshTime").is_none(),
        "refreshTime must stay unset on error: {st}"
    );
    // Recorded right after the write returns: the condition may show first.
    wait_for("error status truth", Duration::from_secs(2), || async {
        (!env
            .truth()
            .find(step::ESO_STATUS_ERROR, NS, "es")
            .is_empty())
        .then_some(())
    })
    .await;
    assert!(secret_value(&env, "es-synced", "value").await.is_none());

    env.ctx.knobs.set_fault(Fault::EsoError, false);
    let (status, reason, _) = wait_for("recovery", Duration::from_secs(5), || async {
        es_ready(&env, "es").await.filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "SecretSynced"));
    assert_eq!(
        secret_value(&env, "es-synced", "value").await.as_deref(),
        Some("v1")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eso_logs_in_with_kubernetes_auth() {
    let env = Env::new(true).await;
    let bao = env.bao_admin();
    bao.kv_put("app", &json!({"value": "k8s"})).await.unwrap();
    bao.put_policy(
        "read-all",
        "path \"secret/data/*\" {\n  capabilities = [\"read\"]\n}\n",
    )
    .await
    .unwrap();
    let reviewer = env
        .server
        .issue_token("kube-system", "openbao-token-reviewer");
    bao.enable_kubernetes_auth(&env.api_url, secret_canary_lab::lab::LAB_CA_PEM, &reviewer)
        .await
        .unwrap();
    bao.put_kubernetes_role("eso", "eso-reader", NS, "read-all")
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = env.api();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "eso-reader"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    create_store(
        &env,
        json!({"kubernetes": {"mountPath": "kubernetes", "role": "eso", "serviceAccountRef": {"name": "eso-reader"}}}),
    )
    .await;
    spawn(&env, eso::run);
    create_es(&env, "es", "1h", "app").await;
    wait_for(
        "sync with Kubernetes auth",
        Duration::from_secs(10),
        || async {
            (secret_value(&env, "es-synced", "value").await.as_deref() == Some("k8s")).then_some(())
        },
    )
    .await;
    env.stop().await;
}

// ---------------------------------------------------------------------------
// Reloader

fn deployment(name: &str, annotations: Value, secret_ref: Option<&str>) -> Deployment {
    let env = match secret_ref {
        Some(s) => {
            json!([{"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": s, "key": "k"}}}])
        }
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": "canary", "env": env}]}
            }
        }
    }))
    .unwrap()
}

async fn create_secret(env: &Env, name: &str, value: &str) {
    let secrets: Api<Secret> = env.api();
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": b64(value)}}))
            .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
}

async fn set_secret(env: &Env, name: &str, value: &str) {
    let secrets: Api<Secret> = env.api();
    let patch = json!({"data": {"k": b64(value)}});
    secrets
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn env_value(env: &Env, deploy: &str, var: &str) -> Option<String> {
    let api: Api<Deployment> = env.api();
    let d = api.get(deploy).await.ok()?;
    let c = &d.spec.template.spec?.containers[0];
    c.env.clone()?.into_iter().find(|e| e.name == var)?.value
}

async fn template_annotation(env: &Env, deploy: &str, key: &str) -> Option<String> {
    let api: Api<Deployment> = env.api();
    let d = api.get(deploy).await.ok()?;
    d.spec.template.metadata?.annotations?.get(key).cloned()
}

fn reloader_sha(value: &str) -> String {
    use sha1::{Digest, Sha1};
    hex::encode(Sha1::digest(format!("k={value}").as_bytes()))
}

const VAR: &str = "STAKATER_APP_SECRET_SECRET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloader_env_vars_patches_only_opted_in_and_ignores_labels() {
    let env = Env::new(false).await;
    create_secret(&env, "app-secret", "v1").await;
    let api: Api<Deployment> = env.api();
    let pp = PostParams::default();
    api.create(
        &pp,
        &deployment(
            "auto",
            json!({"reloader.stakater.com/auto": "true"}),
            Some("app-secret"),
        ),
    )
    .await
    .unwrap();
    api.create(
        &pp,
        &deployment(
            "named",
            json!({"secret.reloader.stakater.com/reload": "other, app-.*"}),
            None,
        ),
    )
    .await
    .unwrap();
    api.create(&pp, &deployment("plain", json!({}), Some("app-secret")))
        .await
        .unwrap();
    api.create(
        &pp,
        &deployment(
            "auto-other",
            json!({"reloader.stakater.com/auto": "true"}),
            Some("other"),
        ),
    )
    .await
    .unwrap();
    spawn(&env, reloader::run);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Label-only change: nothing.
    let secrets: Api<Secret> = env.api();
    let patch = json!({"metadata": {"labels": {"touched": "yes"}}});
    secrets
        .patch("app-secret", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env_value(&env, "auto", VAR).await.is_none());
    assert!(env
        .truth()
        .records()
        .iter()
        .all(|r| r.step != step::RELOADER_PATCHED));

    set_secret(&env, "app-secret", "v2").await;
    let sha = reloader_sha("v2");
    for d in ["auto", "named"] {
        let v = wait_for("env var patch", Duration::from_secs(5), || {
            env_value(&env, d, VAR)
        })
        .await;
        assert_eq!(v, sha, "{d}");
        let rec = env.truth().find(step::RELOADER_PATCHED, NS, d);
        assert_eq!(rec.len(), 1, "{d}");
        assert_eq!(
            rec[0].digest.as_deref(),
            Some(truth::digest(b"v2").as_str())
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        env_value(&env, "plain", VAR).await.is_none(),
        "not opted in"
    );
    assert!(
        env_value(&env, "auto-other", VAR).await.is_none(),
        "does not reference the Secret"
    );
    // The Deployment's generation moved: a new pod template.
    assert_eq!(api.get("auto").await.unwrap().metadata.generation, Some(2));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloader_annotations_strategy_and_per_deployment_override() {
    let env = Env::new(false).await;
    create_secret(&env, "app-secret", "v1").await;
    let api: Api<Deployment> = env.api();
    let pp = PostParams::default();
    api.create(
        &pp,
        &deployment(
            "annotated",
            json!({"reloader.stakater.com/auto": "true"}),
            Some("app-secret"),
        ),
    )
    .await
    .unwrap();
    let opts = ReloaderOptions {
        strategy: ReloadStrategy::Annotations,
    };
    let (ctx, cancel) = (env.ctx.clone(), env.cancel.clone());
    tokio::spawn(async move { reloader::run_with(ctx, opts, cancel).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = Utc::now().timestamp();
    set_secret(&env, "app-secret", "v2").await;
    let raw = wait_for("annotation patch", Duration::from_secs(5), || {
        template_annotation(&env, "annotated", reloader::LAST_RELOADED_FROM)
    })
    .await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["type"], "SECRET");
    assert_eq!(v["name"], "app-secret");
    assert_eq!(v["namespace"], NS);
    assert_eq!(v["hash"], reloader_sha("v2"));
    assert_eq!(v["containerRefs"], json!(["main"]));
    assert!(v["observedAt"].as_i64().unwrap() >= before);
    assert!(env_value(&env, "annotated", VAR).await.is_none());

    // Lab override on a Deployment: env-vars under an annotations-wide Reloader.
    api.create(
        &pp,
        &deployment(
            "env-override",
            json!({"reloader.stakater.com/auto": "true", "lab.secret-canary.io/reload-strategy": "env-vars"}),
            Some("app-secret"),
        ),
    )
    .await
    .unwrap();
    set_secret(&env, "app-secret", "v3").await;
    let v = wait_for("override patch", Duration::from_secs(5), || {
        env_value(&env, "env-override", VAR)
    })
    .await;
    assert_eq!(v, reloader_sha("v3"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloader_has_one_worker_changes_queue() {
    let env = Env::new(false).await;
    create_secret(&env, "s-one", "v1").await;
    create_secret(&env, "s-two", "v1").await;
    let api: Api<Deployment> = env.api();
    for (d, s) in [("d-one", "s-one"), ("d-two", "s-two")] {
        api.create(
            &PostParams::default(),
            &deployment(d, json!({"reloader.stakater.com/auto": "true"}), Some(s)),
        )
        .await
        .unwrap();
    }
    env.ctx.knobs.set_latency(
        Knob::ReloaderLatency,
        Latency::Fixed(Duration::from_millis(800)),
    );
    spawn(&env, reloader::run);
    tokio::time::sleep(Duration::from_millis(400)).await;
    set_secret(&env, "s-one", "v2").await;
    set_secret(&env, "s-two", "v2").await;
    let var = |s: &str| format!("STAKATER_{}_SECRET", s.to_uppercase().replace('-', "_"));
    for (d, s) in [("d-one", "s-one"), ("d-two", "s-two")] {
        let v = var(s);
        wait_for(d, Duration::from_secs(10), || env_value(&env, d, &v)).await;
    }
    // Reloader records its patch after the API server answered it, so the
    // record may trail the patched env var a little: wait for it.
    let patched = |d: &'static str| {
        let env = &env;
        async move {
            let t = env.truth().find(step::RELOADER_PATCHED, NS, d);
            t.first().map(|r| r.ts)
        }
    };
    let a = wait_for("Reloader's record of d-one", Duration::from_secs(5), || {
        patched("d-one")
    })
    .await;
    let b = wait_for("Reloader's record of d-two", Duration::from_secs(5), || {
        patched("d-two")
    })
    .await;
    assert!(
        (b - a).num_milliseconds() >= 700,
        "the second change did not wait for the first: {a} {b}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloader_absent_suppresses_and_does_not_replay() {
    let env = Env::new(false).await;
    create_secret(&env, "app-secret", "v1").await;
    let api: Api<Deployment> = env.api();
    api.create(
        &PostParams::default(),
        &deployment(
            "auto",
            json!({"reloader.stakater.com/auto": "true"}),
            Some("app-secret"),
        ),
    )
    .await
    .unwrap();
    env.ctx.knobs.set_fault(Fault::ReloaderAbsent, true);
    spawn(&env, reloader::run);
    tokio::time::sleep(Duration::from_millis(400)).await;
    set_secret(&env, "app-secret", "v2").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        env_value(&env, "auto", VAR).await.is_none(),
        "absent Reloader patched"
    );
    env.ctx.knobs.set_fault(Fault::ReloaderAbsent, false);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        env_value(&env, "auto", VAR).await.is_none(),
        "change made while absent was replayed"
    );
    set_secret(&env, "app-secret", "v3").await;
    let v = wait_for("patch after return", Duration::from_secs(5), || {
        env_value(&env, "auto", VAR)
    })
    .await;
    assert_eq!(v, reloader_sha("v3"));
    env.stop().await;
}

// ---------------------------------------------------------------------------
// Deployment and ReplicaSet controllers

fn web(replicas: i32, strategy: Value, deadline: Option<i32>) -> Deployment {
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "web"}},
        "strategy": strategy,
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "main", "image": "canary"}]}
        }
    });
    if let Some(d) = deadline {
        spec["progressDeadlineSeconds"] = json!(d);
    }
    serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
}

/// Stand-in for the kubelet: marks Pods Ready once they are `after` old.
fn fake_kubelet(env: &Env, after: Duration) {
    let pods: Api<Pod> = env.api();
    let cancel = env.cancel.clone();
    tokio::spawn(async move {
        let mut first_seen: std::collections::HashMap<String, Instant> = Default::default();
        while !cancel.is_cancelled() {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    let name = p.name_any();
                    let seen = *first_seen.entry(name.clone()).or_insert_with(Instant::now);
                    let ready = p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    if !ready && seen.elapsed() >= after {
                        let now = Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
                        let patch = json!({"status": {"phase": "Running", "conditions": [
                            {"type": "Ready", "status": "True", "lastTransitionTime": now}]}});
                        let _ = pods
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    });
}

async fn pod_counts(env: &Env) -> (usize, usize) {
    let pods: Api<Pod> = env.api();
    let list = pods.list(&ListParams::default()).await.unwrap();
    let live: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready = live
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    (live.len(), ready)
}

async fn rollout_done(env: &Env, replicas: i32) -> Option<Deployment> {
    let api: Api<Deployment> = env.api();
    let d = api.get("web").await.ok()?;
    let st = d.status.clone()?;
    let done = st.observed_generation >= d.metadata.generation
        && st.updated_replicas == Some(replicas)
        && st.replicas == Some(replicas)
        && st.available_replicas == Some(replicas);
    done.then_some(d)
}

fn kubectl_rollout_status(env: &Env, timeout: &str) -> std::process::Output {
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .arg("--cache-dir")
        .arg(env.dir.join("kube-cache"))
        .args([
            "-n",
            NS,
            "rollout",
            "status",
            "deployment/web",
            &format!("--timeout={timeout}"),
        ])
        .env("HOME", &env.dir)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_respects_surge_and_unavailable_and_completes() {
    let env = Env::new(false).await;
    spawn(&env, deployment::run);
    spawn(&env, replicaset::run);
    fake_kubelet(&env, Duration::from_millis(200));
    let api: Api<Deployment> = env.api();
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    api.create(&PostParams::default(), &web(3, strategy, None))
        .await
        .unwrap();
    wait_for("first rollout", Duration::from_secs(15), || {
        rollout_done(&env, 3)
    })
    .await;
    assert_eq!(env.truth().find(step::ROLLOUT_COMPLETE, NS, "web").len(), 1);

    // A template change, as `kubectl rollout restart` makes it.
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": Utc::now().to_rfc3339()}}}}});
    api.patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    let (mut max_live, mut min_ready) = (0, usize::MAX);
    let start = Instant::now();
    loop {
        let (live, ready) = pod_counts(&env).await;
        max_live = max_live.max(live);
        min_ready = min_ready.min(ready);
        if let Some(d) = rollout_done(&env, 3).await {
            let rs: Api<ReplicaSet> = env.api();
            let sets = rs.list(&ListParams::default()).await.unwrap().items;
            if sets.len() == 2 && d.status.as_ref().and_then(|s| s.updated_replicas) == Some(3) {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "rollout did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(max_live <= 4, "maxSurge 1 exceeded: {max_live} Pods");
    assert!(
        min_ready >= 3,
        "maxUnavailable 0 violated: {min_ready} ready"
    );

    let rs: Api<ReplicaSet> = env.api();
    let sets = rs.list(&ListParams::default()).await.unwrap().items;
    let mut revisions: Vec<(String, i32)> = sets
        .iter()
        .map(|r| {
            (
                r.annotations()
                    .get("deployment.kubernetes.io/revision")
                    .cloned()
                    .unwrap_or_default(),
                r.spec.replicas.unwrap_or(-1),
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(revisions, vec![("1".to_string(), 0), ("2".to_string(), 3)]);
    for r in &sets {
        assert!(r.name_any().starts_with("web-"));
        assert!(r.labels().contains_key("pod-template-hash"));
        assert_eq!(
            r.metadata.owner_references.as_ref().unwrap()[0].controller,
            Some(true)
        );
    }
    let d = api.get("web").await.unwrap();
    let st = d.status.unwrap();
    let conds = st.conditions.unwrap();
    let progressing = conds
        .iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .unwrap();
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );
    let available = conds
        .iter()
        .find(|c| c.type_.as_deref() == Some("Available"))
        .unwrap();
    assert_eq!(available.status.as_deref(), Some("True"));

    let changed = env
        .truth()
        .find(step::DEPLOYMENT_TEMPLATE_CHANGED, NS, "web");
    let created = env.truth().find(step::REPLICASET_CREATED, NS, "web");
    let complete = wait_for(
        "second completion record",
        Duration::from_secs(5),
        || async {
            let c = env.truth().find(step::ROLLOUT_COMPLETE, NS, "web");
            (c.len() == 2).then_some(c)
        },
    )
    .await;
    assert_eq!((changed.len(), created.len()), (2, 2));
    assert!(changed[1].ts <= created[1].ts && created[1].ts <= complete[1].ts);
    assert!(
        env.truth()
            .records()
            .iter()
            .filter(|r| r.step == step::POD_CREATED)
            .count()
            >= 6
    );

    let out = kubectl_rollout_status(&env, "20s");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("successfully rolled out"), "{text}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_strategy_replaces_all_pods() {
    let env = Env::new(false).await;
    spawn(&env, deployment::run);
    spawn(&env, replicaset::run);
    fake_kubelet(&env, Duration::from_millis(100));
    let api: Api<Deployment> = env.api();
    api.create(
        &PostParams::default(),
        &web(2, json!({"type": "Recreate"}), None),
    )
    .await
    .unwrap();
    wait_for("first rollout", Duration::from_secs(15), || {
        rollout_done(&env, 2)
    })
    .await;
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"restart": "1"}}}}});
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_for("recreate rollout", Duration::from_secs(15), || async {
        let d = rollout_done(&env, 2).await?;
        (env.truth().find(step::ROLLOUT_COMPLETE, NS, "web").len() == 2).then_some(d)
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_never_ready_exceed_the_progress_deadline() {
    let env = Env::new(false).await;
    spawn(&env, deployment::run);
    spawn(&env, replicaset::run);
    let api: Api<Deployment> = env.api();
    api.create(
        &PostParams::default(),
        &web(2, json!({"type": "RollingUpdate"}), Some(2)),
    )
    .await
    .unwrap();
    let d = wait_for(
        "ProgressDeadlineExceeded",
        Duration::from_secs(15),
        || async {
            let d = api.get("web").await.ok()?;
            let c = d
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_.as_deref() == Some("Progressing"))?
                .clone();
            (c.reason.as_deref() == Some("ProgressDeadlineExceeded")).then_some((d, c))
        },
    )
    .await;
    assert_eq!(d.1.status.as_deref(), Some("False"));
    let st = d.0.status.unwrap();
    assert_eq!(st.available_replicas, Some(0));
    assert_eq!(st.unavailable_replicas, Some(2));
    assert_eq!(st.updated_replicas, Some(2));
    assert!(env
        .truth()
        .find(step::ROLLOUT_COMPLETE, NS, "web")
        .is_empty());

    let out = kubectl_rollout_status(&env, "10s");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeded its progress deadline"), "{err}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_pod_creates_surface_as_replica_failure() {
    let env = Env::new(false).await;
    env.ctx.knobs.set_fault(Fault::WebhookDown, true);
    spawn(&env, deployment::run);
    spawn(&env, replicaset::run);
    fake_kubelet(&env, Duration::from_millis(50));
    let api: Api<Deployment> = env.api();
    let mut d = web(1, json!({"type": "RollingUpdate"}), None);
    d.spec.template.metadata.as_mut().unwrap().annotations = Some(
        [(
            "vault.security.banzaicloud.io/vault-addr".to_string(),
            "http://127.0.0.1:1".to_string(),
        )]
        .into(),
    );
    d.spec.template.spec.as_mut().unwrap().containers[0].env = Some(vec![serde_json::from_value(
        json!({"name": "V", "value": "vault:secret/data/app#value"}),
    )
    .unwrap()]);
    api.create(&PostParams::default(), &d).await.unwrap();
    wait_for(
        "ReplicaFailure on the Deployment",
        Duration::from_secs(10),
        || async {
            let d = api.get("web").await.ok()?;
            let c = d
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))?;
            (c.reason.as_deref() == Some("FailedCreate")).then_some(())
        },
    )
    .await;
    env.ctx.knobs.set_fault(Fault::WebhookDown, false);
    let d = wait_for("recovery", Duration::from_secs(10), || {
        rollout_done(&env, 1)
    })
    .await;
    let conds = d.status.unwrap().conditions.unwrap();
    assert!(conds
        .iter()
        .all(|c| c.type_.as_deref() != Some("ReplicaFailure")));
    env.stop().await;
}

/// Live (not terminating) and Ready Pods, followed event by event from a
/// watch, so a transient state between two polls cannot slip through.
#[derive(Default)]
struct PodBounds {
    max_live: AtomicUsize,
    min_ready: AtomicUsize,
}

fn watch_pod_bounds(env: &Env) -> Arc<PodBounds> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let bounds = Arc::new(PodBounds {
        max_live: AtomicUsize::new(0),
        min_ready: AtomicUsize::new(usize::MAX),
    });
    let pods: Api<Pod> = env.api();
    let (b, cancel) = (bounds.clone(), env.cancel.clone());
    tokio::spawn(async move {
        // name → Ready, for live Pods; a relist is applied only once complete.
        let mut live: std::collections::HashMap<String, bool> = Default::default();
        let mut relist: Option<std::collections::HashMap<String, bool>> = None;
        let mut synced = false;
        let mut events = watcher::watcher(pods, watcher::Config::default()).boxed();
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.next() => match ev { Some(Ok(ev)) => ev, Some(Err(_)) => continue, None => return },
            };
            let state = |p: &Pod| {
                let ready = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                (p.name_any(), p.metadata.deletion_timestamp.is_none(), ready)
            };
            match ev {
                Event::Apply(p) => {
                    let (name, alive, ready) = state(&p);
                    if alive {
                        live.insert(name, ready);
                    } else {
                        live.remove(&name);
                    }
                }
                Event::Delete(p) => {
                    live.remove(&p.name_any());
                }
                Event::Init => relist = Some(Default::default()),
                Event::InitApply(p) => {
                    let (name, alive, ready) = state(&p);
                    if let (Some(r), true) = (relist.as_mut(), alive) {
                        r.insert(name, ready);
                    }
                }
                Event::InitDone => {
                    live = relist.take().unwrap_or_default();
                    synced = true;
                }
            }
            if synced && relist.is_none() {
                let ready = live.values().filter(|r| **r).count();
                b.max_live.fetch_max(live.len(), Ordering::SeqCst);
                b.min_ready.fetch_min(ready, Ordering::SeqCst);
            }
        }
    });
    bounds
}

/// Secret rotations through Reloader: each one makes exactly one template
/// change, one ReplicaSet and one completed rollout in the ground truth,
/// creates exactly `replicas` Pods (no over-creation from a stale cache) and
/// stays within `replicas + maxSurge` live and `replicas - maxUnavailable`
/// ready Pods throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_roll_out_once_without_over_creation() {
    use secret_canary_lab::faults::{Knob, Latency};
    const REPLICAS: usize = 2;
    const ROTATIONS: usize = 3;
    let env = Env::new(false).await;
    // Varying controller latency reorders concurrent reconciles.
    env.ctx.knobs.set_latency(
        Knob::DeploymentLatency,
        Latency::Uniform {
            min: Duration::ZERO,
            max: Duration::from_millis(20),
        },
    );
    create_secret(&env, "app-secret", "v0").await;
    let mut d = web(
        REPLICAS as i32,
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
        None,
    );
    d.metadata.annotations = Some([("reloader.stakater.com/auto".into(), "true".into())].into());
    d.spec.template.spec.as_mut().unwrap().containers[0].env = Some(vec![serde_json::from_value(
        json!({"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": "app-secret", "key": "k"}}}),
    )
    .unwrap()]);
    let api: Api<Deployment> = env.api();
    api.create(&PostParams::default(), &d).await.unwrap();
    spawn(&env, deployment::run);
    spawn(&env, replicaset::run);
    spawn(&env, reloader::run);
    fake_kubelet(&env, Duration::from_millis(150));

    let count = |step: &str| env.truth().find(step, NS, "web").len();
    let completed = |n: usize| {
        let env = &env;
        move || async move {
            let d = rollout_done(env, REPLICAS as i32).await?;
            (env.truth().find(step::ROLLOUT_COMPLETE, NS, "web").len() == n).then_some(d)
        }
    };
    let start = env.server.request_counts();
    wait_for("first rollout", Duration::from_secs(15), completed(1)).await;
    // Let late duplicates, if any, happen before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = env.server.request_counts().since(&start);
    assert_eq!(
        (c.get("create", "pods"), c.get("delete", "pods")),
        (REPLICAS as u64, 0),
        "start-up Pod creates/deletes: {c:?}"
    );
    assert_eq!(c.get("create", "replicasets"), 1, "{c:?}");
    for s in [
        step::DEPLOYMENT_TEMPLATE_CHANGED,
        step::REPLICASET_CREATED,
        step::ROLLOUT_COMPLETE,
    ] {
        assert_eq!(count(s), 1, "start-up: {s}");
    }

    let bounds = watch_pod_bounds(&env);
    for i in 1..=ROTATIONS {
        let before = env.server.request_counts();
        set_secret(&env, "app-secret", &format!("v{i}")).await;
        wait_for(
            "rotation rollout",
            Duration::from_secs(15),
            completed(i + 1),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let c = env.server.request_counts().since(&before);
        assert_eq!(
            (c.get("create", "pods"), c.get("delete", "pods")),
            (REPLICAS as u64, REPLICAS as u64),
            "rotation {i}: Pod creates/deletes: {c:?}"
        );
        assert_eq!(c.get("create", "replicasets"), 1, "rotation {i}: {c:?}");
        for s in [
            step::RELOADER_PATCHED,
            step::DEPLOYMENT_TEMPLATE_CHANGED,
            step::REPLICASET_CREATED,
            step::ROLLOUT_COMPLETE,
        ] {
            let expected = if s == step::RELOADER_PATCHED {
                i
            } else {
                i + 1
            };
            assert_eq!(count(s), expected, "rotation {i}: {s}");
        }
        let at = |s: &str| env.truth().find(s, NS, "web")[i].ts;
        assert!(
            at(step::DEPLOYMENT_TEMPLATE_CHANGED) <= at(step::REPLICASET_CREATED)
                && at(step::REPLICASET_CREATED) <= at(step::ROLLOUT_COMPLETE),
            "rotation {i}: steps out of order"
        );
    }
    let pods_created = env
        .truth()
        .records()
        .iter()
        .filter(|r| r.step == step::POD_CREATED)
        .count();
    assert_eq!(pods_created, REPLICAS * (ROTATIONS + 1));
    let (max_live, min_ready) = (
        bounds.max_live.load(Ordering::SeqCst),
        bounds.min_ready.load(Ordering::SeqCst),
    );
    assert!(
        max_live <= REPLICAS + 1,
        "maxSurge 1 exceeded: {max_live} live Pods"
    );
    assert!(
        min_ready >= REPLICAS,
        "maxUnavailable 0 violated: {min_ready} ready Pods"
    );
    env.stop().await;
}
