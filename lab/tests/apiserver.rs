//! End-to-end tests of the lab API server through kube-rs, raw HTTP, kubectl
//! and a real OpenBao. Every test starts its own server on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use secret_canary_lab::apiserver::{kube_client, kubeconfig_yaml, ApiServer, ApiServerOptions};
use secret_canary_lab::faults::{Fault, Knob, Knobs, Latency};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct Lab {
    server: ApiServer,
    url: String,
    client: kube::Client,
    knobs: Arc<Knobs>,
    cancel: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn lab() -> Lab {
    lab_with(ApiServerOptions::default()).await
}

async fn lab_with(options: ApiServerOptions) -> Lab {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let knobs = Arc::new(Knobs::default());
    let server = ApiServer::with_options(knobs.clone(), options);
    let cancel = CancellationToken::new();
    let addr = server.listen_local(cancel.clone()).await.unwrap();
    let url = format!("http://{addr}");
    let client = kube_client(&url, &server.admin_token()).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Lab {
        server,
        url,
        client,
        knobs,
        cancel,
        http,
    }
}

impl Lab {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(self.server.admin_token())
    }
}

fn secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".to_string(), "demo".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "k".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "canary", "env": [{"name": "A", "value": "1"}]}]}
            }
        }
    }))
    .unwrap()
}

fn es_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    )
}

fn status_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn secrets_crud_and_conflicts() {
    let lab = lab().await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &secret("s1", "v1"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some()
    );
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    let dup = api
        .create(&PostParams::default(), &secret("s1", "v1"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&dup), 409);

    let got = api.get("s1").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["k"].0, b"v1");

    let mut next = got.clone();
    next.data = Some(BTreeMap::from([(
        "k".to_string(),
        ByteString(b"v2".to_vec()),
    )]));
    let updated = api
        .replace("s1", &PostParams::default(), &next)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        got.metadata.resource_version
    );
    // `next` still carries the old resourceVersion.
    let stale = api
        .replace("s1", &PostParams::default(), &next)
        .await
        .unwrap_err();
    assert_eq!(status_code(&stale), 409);
    // No resourceVersion: unconditional.
    let mut blind = secret("s1", "v3");
    blind.metadata.resource_version = None;
    api.replace("s1", &PostParams::default(), &blind)
        .await
        .unwrap();

    // generateName
    let mut g = secret("", "x");
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let gen = api.create(&PostParams::default(), &g).await.unwrap();
    assert!(gen.metadata.name.unwrap().starts_with("gen-"));

    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    api.delete("s1", &DeleteParams::default()).await.unwrap();
    assert_eq!(status_code(&api.get("s1").await.unwrap_err()), 404);
    assert_eq!(
        status_code(
            &api.delete("s1", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        404
    );

    // Objects in a namespace that does not exist are refused, as in a cluster.
    let nowhere: Api<Secret> = Api::namespaced(lab.client.clone(), "nowhere");
    assert_eq!(
        status_code(
            &nowhere
                .create(&PostParams::default(), &secret("a", "b"))
                .await
                .unwrap_err()
        ),
        404
    );
}

#[tokio::test]
async fn deployment_generation_and_status_subresource() {
    let lab = lab().await;
    let api: Api<Deployment> = Api::namespaced(lab.client.clone(), "default");
    let d = api
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    assert_eq!(d.spec.revision_history_limit, Some(10));

    // A label change keeps the generation.
    let p = json!({"metadata": {"labels": {"x": "y"}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    // A spec change bumps it.
    let p = json!({"spec": {"replicas": 3}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));

    // Status writes change only status; main writes keep status.
    let s = json!({"spec": {"replicas": 9}, "status": {"observedGeneration": 2, "replicas": 3}});
    let d = api
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&s))
        .await
        .unwrap();
    assert_eq!(d.spec.replicas, Some(3));
    assert_eq!(d.status.as_ref().unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(2));
    let p = json!({"status": {"replicas": 0}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(d.status.as_ref().unwrap().replicas, Some(3));
    let mut full = d.clone();
    full.status.as_mut().unwrap().replicas = Some(1);
    let d = api
        .replace_status("web", &PostParams::default(), &full)
        .await
        .unwrap();
    assert_eq!(d.status.as_ref().unwrap().replicas, Some(1));

    // A no-op write keeps the resourceVersion.
    let before = d.metadata.resource_version.clone();
    let same = api
        .replace("web", &PostParams::default(), &d)
        .await
        .unwrap();
    assert_eq!(same.metadata.resource_version, before);
}

#[tokio::test]
async fn external_secret_as_dynamic_object() {
    let lab = lab().await;
    let ar = es_resource();
    let api: Api<DynamicObject> = Api::namespaced_with(lab.client.clone(), "default", &ar);
    let mut es = DynamicObject::new("db", &ar);
    es.data = json!({"spec": {"refreshInterval": "1h", "secretStoreRef": {"name": "vault", "kind": "SecretStore"},
        "data": [{"secretKey": "password", "remoteRef": {"key": "db", "property": "password"}}]}});
    let created = api.create(&PostParams::default(), &es).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let st = json!({"status": {"refreshTime": "2025-01-01T00:00:00Z", "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced"}]}});
    let after = api
        .patch_status("db", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    assert_eq!(
        after.data["status"]["conditions"][0]["reason"],
        "SecretSynced"
    );
    assert_eq!(after.metadata.generation, Some(1));
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    // Strategic merge patch is refused for custom resources, as in a cluster.
    let smp = json!({"metadata": {"annotations": {"a": "b"}}});
    let err = api
        .patch("db", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), 415);
    // Cluster-scoped store.
    let css_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", "ClusterSecretStore"),
        "clustersecretstores",
    );
    let css: Api<DynamicObject> = Api::all_with(lab.client.clone(), &css_ar);
    let mut store = DynamicObject::new("vault", &css_ar);
    store.data = json!({"spec": {"provider": {"vault": {"server": "http://x"}}}});
    let created = css.create(&PostParams::default(), &store).await.unwrap();
    assert!(created.metadata.namespace.is_none());
    api.delete("db", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let lab = lab().await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    api.create(&PostParams::default(), &secret("before", "0"))
        .await
        .unwrap();
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut seen_initial = false;
    while let Some(e) = timeout(events.try_next()).await.unwrap() {
        match e {
            watcher::Event::InitApply(s) => {
                seen_initial |= s.metadata.name.as_deref() == Some("before")
            }
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert!(seen_initial);
    api.create(&PostParams::default(), &secret("w", "1"))
        .await
        .unwrap();
    let p = json!({"data": {"k": "Mg=="}});
    api.patch("w", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        match timeout(events.try_next()).await.unwrap().unwrap() {
            watcher::Event::Apply(s) => got.push(format!(
                "apply:{}",
                String::from_utf8_lossy(&s.data.unwrap()["k"].0)
            )),
            watcher::Event::Delete(s) => got.push(format!("delete:{}", s.metadata.name.unwrap())),
            _ => {}
        }
    }
    assert_eq!(got, vec!["apply:1", "apply:2", "delete:w"]);
}

#[tokio::test]
async fn raw_watch_stream_format() {
    let lab = lab().await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    let s = api
        .create(&PostParams::default(), &secret("raw", "1"))
        .await
        .unwrap();
    let rv = s.metadata.resource_version.unwrap();
    let mut resp = lab
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/namespaces/default/secrets?watch=1&resourceVersion={rv}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    api.delete("raw", &DeleteParams::default()).await.unwrap();
    let chunk = timeout(resp.chunk()).await.unwrap().unwrap();
    let line = std::str::from_utf8(&chunk).unwrap();
    assert!(line.ends_with('\n'));
    let ev: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["metadata"]["name"], "raw");
    assert_ne!(ev["object"]["metadata"]["resourceVersion"], json!(rv));
}
