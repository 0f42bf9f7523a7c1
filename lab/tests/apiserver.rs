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

/// A bound on one awaited step, generous because kubectl (a Go binary
/// started per command) can take many seconds on a loaded 2-core machine.
async fn timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
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

#[tokio::test]
async fn patch_flavours() {
    let lab = lab().await;
    let api: Api<Deployment> = Api::namespaced(lab.client.clone(), "default");
    api.create(&PostParams::default(), &deployment("p"))
        .await
        .unwrap();

    // Strategic merge: env merged by name into the container merged by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "STAKATER_DB_SECRET", "value": "0123abcd"}]}
    ]}}}});
    let d = api
        .patch("p", &PatchParams::default(), &Patch::Strategic(&smp))
        .await
        .unwrap();
    let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
    let env: Vec<&str> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, vec!["A", "STAKATER_DB_SECRET"]);
    assert_eq!(c.image.as_deref(), Some("canary"));
    assert_eq!(d.metadata.generation, Some(2));

    // JSON patch.
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"x": "1"}},
        {"op": "replace", "path": "/spec/replicas", "value": 2}
    ]))
    .unwrap();
    let d = api
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(d.spec.replicas, Some(2));
    assert_eq!(d.metadata.annotations.unwrap()["x"], "1");

    // Merge patch replaces lists.
    let mp =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "other", "image": "i"}]}}}});
    let d = api
        .patch("p", &PatchParams::default(), &Patch::Merge(&mp))
        .await
        .unwrap();
    assert_eq!(d.spec.template.spec.unwrap().containers.len(), 1);

    // A merge patch carrying a stale resourceVersion conflicts.
    let stale = json!({"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 5}});
    let err = api
        .patch("p", &PatchParams::default(), &Patch::Merge(&stale))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), 409);

    // Server-side apply is refused with a clear Status.
    let resp = lab
        .req(
            reqwest::Method::PATCH,
            "/apis/apps/v1/namespaces/default/deployments/p?fieldManager=x",
        )
        .header("content-type", "application/apply-patch+yaml")
        .body("spec: {}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let s: Value = resp.json().await.unwrap();
    assert_eq!(s["reason"], "UnsupportedMediaType");
    // Patching a missing object is 404.
    let err = api
        .patch("nope", &PatchParams::default(), &Patch::Merge(&mp))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), 404);
}

#[tokio::test]
async fn selectors_and_paging() {
    let lab = lab().await;
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(lab.client.clone());
    let mut ns = k8s_openapi::api::core::v1::Namespace::default();
    ns.metadata.name = Some("other".into());
    ns_api.create(&PostParams::default(), &ns).await.unwrap();
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    for i in 0..7 {
        let mut s = secret(&format!("s{i}"), "v");
        s.metadata.labels = Some(BTreeMap::from([
            (
                "tier".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            ),
            ("n".to_string(), i.to_string()),
        ]));
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let other: Api<Secret> = Api::namespaced(lab.client.clone(), "other");
    other
        .create(&PostParams::default(), &secret("elsewhere", "v"))
        .await
        .unwrap();

    let names = |l: kube::core::ObjectList<Secret>| -> Vec<String> {
        l.items
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect()
    };
    let l = |sel: &str| ListParams::default().labels(sel);
    assert_eq!(
        names(api.list(&l("tier=even")).await.unwrap()),
        vec!["s0", "s2", "s4", "s6"]
    );
    assert_eq!(
        names(api.list(&l("tier==odd,n!=1")).await.unwrap()),
        vec!["s3", "s5"]
    );
    assert_eq!(
        names(api.list(&l("n in (1,2)")).await.unwrap()),
        vec!["s1", "s2"]
    );
    assert_eq!(api.list(&l("n notin (1,2)")).await.unwrap().items.len(), 5);
    assert_eq!(api.list(&l("tier")).await.unwrap().items.len(), 7);
    assert_eq!(api.list(&l("!tier")).await.unwrap().items.len(), 0);
    let f = ListParams::default().fields("metadata.name=s3");
    assert_eq!(names(api.list(&f).await.unwrap()), vec!["s3"]);
    let all: Api<Secret> = Api::all(lab.client.clone());
    let f = ListParams::default().fields("metadata.namespace=other");
    assert_eq!(names(all.list(&f).await.unwrap()), vec!["elsewhere"]);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        8
    );
    let bad = all
        .list(&ListParams::default().fields("spec.nope=1"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&bad), 400);
    let bad = all
        .list(&ListParams::default().labels("a in b"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&bad), 400);

    // Paging: three pages, one resourceVersion.
    let mut lp = ListParams::default().limit(3);
    let mut seen = Vec::new();
    let mut rvs = Vec::new();
    loop {
        let page = api.list(&lp).await.unwrap();
        rvs.push(page.metadata.resource_version.clone().unwrap());
        let cont = page.metadata.continue_.clone();
        seen.extend(names(page));
        match cont.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => break,
        }
        // Writes between pages do not change the list's resourceVersion.
        api.create(
            &PostParams::default(),
            &secret(&format!("z{}", seen.len()), "v"),
        )
        .await
        .unwrap();
    }
    assert_eq!(rvs.len(), 3);
    assert!(rvs.iter().all(|r| *r == rvs[0]));
    assert_eq!(&seen[..7], &["s0", "s1", "s2", "s3", "s4", "s5", "s6"]);
    let garbage = api
        .list(&ListParams::default().continue_token("!!!"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&garbage), 400);

    // Deleting the namespace deletes what is in it.
    ns_api
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(status_code(&other.get("elsewhere").await.unwrap_err()), 404);
}

/// Read watch lines from a raw HTTP watch until `pred` matches one.
async fn read_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    timeout(async {
        loop {
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                let v: Value = serde_json::from_str(line.trim()).unwrap();
                if pred(&v) {
                    return v;
                }
            }
            let chunk = resp.chunk().await.unwrap().expect("watch ended");
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
}

#[tokio::test]
async fn bookmarks_timeouts_and_selector_transitions() {
    let lab = lab_with(ApiServerOptions {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    api.create(&PostParams::default(), &secret("b", "1"))
        .await
        .unwrap();
    let mut resp = lab
        .req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/secrets?watch=true&allowWatchBookmarks=true&labelSelector=app%3Ddemo",
        )
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let added = read_until(&mut resp, &mut buf, |v| v["type"] == "ADDED").await;
    assert_eq!(added["object"]["metadata"]["name"], "b");
    let bm = read_until(&mut resp, &mut buf, |v| v["type"] == "BOOKMARK").await;
    assert_eq!(bm["object"]["kind"], "Secret");
    assert_eq!(bm["object"]["apiVersion"], "v1");
    let meta = bm["object"]["metadata"].as_object().unwrap();
    assert_eq!(meta.len(), 1, "{meta:?}");
    assert!(meta["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    // Dropping the label makes the object leave the selection: DELETED.
    let p = json!({"metadata": {"labels": {"app": null}}});
    api.patch("b", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let gone = read_until(&mut resp, &mut buf, |v| v["type"] != "BOOKMARK").await;
    assert_eq!(gone["type"], "DELETED");
    // And coming back is ADDED.
    let p = json!({"metadata": {"labels": {"app": "demo"}}});
    api.patch("b", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    let back = read_until(&mut resp, &mut buf, |v| v["type"] != "BOOKMARK").await;
    assert_eq!(back["type"], "ADDED");

    // timeoutSeconds ends the stream cleanly.
    let started = Instant::now();
    let resp = lab
        .req(
            reqwest::Method::GET,
            "/api/v1/secrets?watch=true&timeoutSeconds=1",
        )
        .send()
        .await
        .unwrap();
    let body = timeout(resp.text()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(body.contains("ADDED"));
}

#[tokio::test]
async fn expired_resource_version_gives_410_and_watcher_relists() {
    let lab = lab_with(ApiServerOptions {
        history_len: 5,
        bookmark_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    let first = api
        .create(&PostParams::default(), &secret("old", "1"))
        .await
        .unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(lab.client.clone(), "default");
    let churn = || async {
        for i in 0..10 {
            let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
            cm.metadata.generate_name = Some(format!("churn{i}-"));
            cms.create(&PostParams::default(), &cm).await.unwrap();
        }
    };
    churn().await;
    // Raw: the in-stream ERROR event, exactly as the real server sends it.
    let rv = first.metadata.resource_version.unwrap();
    let mut resp = lab
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/namespaces/default/secrets?watch=true&resourceVersion={rv}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut buf = String::new();
    let err = read_until(&mut resp, &mut buf, |_| true).await;
    assert_eq!(err["type"], "ERROR");
    let o = &err["object"];
    assert_eq!(
        (o["kind"].as_str(), o["apiVersion"].as_str()),
        (Some("Status"), Some("v1"))
    );
    assert_eq!(o["status"], "Failure");
    assert_eq!(o["reason"], "Expired");
    assert_eq!(o["code"], 410);
    assert_eq!(o["metadata"], json!({}));
    assert!(o["message"]
        .as_str()
        .unwrap()
        .starts_with(&format!("too old resource version: {rv} (")));

    // kube-rs: the watcher's resume point expires while its watch is cut;
    // it gets the 410, relists, and carries on.
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    while !matches!(
        timeout(events.try_next()).await.unwrap(),
        Some(watcher::Event::InitDone)
    ) {}
    churn().await;
    lab.server.reset_watches();
    let mut saw_410 = false;
    // Ends at the InitDone of the relist that follows the 410.
    loop {
        match timeout(events.next()).await.unwrap() {
            Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_410 = true,
            Err(_) => {}
            Ok(watcher::Event::InitDone) if saw_410 => break,
            Ok(_) => {}
        }
    }
    api.create(&PostParams::default(), &secret("new", "1"))
        .await
        .unwrap();
    loop {
        if let Ok(watcher::Event::Apply(s)) = timeout(events.next()).await.unwrap() {
            assert_eq!(s.metadata.name.as_deref(), Some("new"));
            break;
        }
    }
}

#[tokio::test]
async fn streaming_list_ends_with_initial_events_bookmark() {
    let lab = lab().await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    api.create(&PostParams::default(), &secret("a", "1"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &secret("b", "1"))
        .await
        .unwrap();
    let mut resp = lab
        .req(
            reqwest::Method::GET,
            "/api/v1/namespaces/default/secrets?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0",
        )
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let bm = read_until(&mut resp, &mut buf, |v| v["type"] == "BOOKMARK").await;
    assert_eq!(
        bm["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    let mut events = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match timeout(events.try_next()).await.unwrap().unwrap() {
            watcher::Event::InitApply(s) => initial.push(s.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["a", "b"]);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    loop {
        if let watcher::Event::Delete(s) = timeout(events.try_next()).await.unwrap().unwrap() {
            assert_eq!(s.metadata.name.as_deref(), Some("a"));
            break;
        }
    }
}

async fn status_of(resp: reqwest::Response) -> (u16, Value) {
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (code, body)
}

#[tokio::test]
async fn errors_are_status_objects() {
    let lab = lab().await;
    let post = |path: &str, body: &str| {
        lab.req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let (code, s) = status_of(
        post("/api/v1/namespaces/default/secrets", "{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(
        (
            s["kind"].as_str(),
            s["apiVersion"].as_str(),
            s["status"].as_str()
        ),
        (Some("Status"), Some("v1"), Some("Failure"))
    );
    assert_eq!(s["code"], 400);

    let (code, s) = status_of(
        lab.req(reqwest::Method::GET, "/api/v1/namespaces/default/widgets")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = status_of(
        lab.req(reqwest::Method::GET, "/apis/nope.io/v1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, 404);

    for bad in ["Bad_Name", "-x", "a..b", &"x".repeat(300)] {
        let body =
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": bad}}).to_string();
        let (code, s) = status_of(
            post("/api/v1/namespaces/default/secrets", &body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (code, s["reason"].as_str()),
            (422, Some("Invalid")),
            "{bad}: {s}"
        );
    }
    let (code, s) = status_of(
        post("/api/v1/namespaces/default/secrets", r#"{"metadata":{}}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")));
    // Body disagreeing with the URL.
    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a", "namespace": "kube-system"}}).to_string();
    assert_eq!(
        status_of(
            post("/api/v1/namespaces/default/secrets", &body)
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        400
    );
    let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}).to_string();
    assert_eq!(
        status_of(
            post("/api/v1/namespaces/default/secrets", &body)
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        400
    );
    post(
        "/api/v1/namespaces/default/secrets",
        r#"{"metadata":{"name":"a"}}"#,
    )
    .send()
    .await
    .unwrap();
    let resp = lab
        .req(reqwest::Method::PUT, "/api/v1/namespaces/default/secrets/a")
        .body(r#"{"metadata":{"name":"b"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Verbs a resource does not have.
    let (code, s) = status_of(
        lab.req(reqwest::Method::PUT, "/api/v1/namespaces/default/secrets")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (405, Some("MethodNotAllowed"))
    );
    // No or a foreign token.
    let resp = lab
        .http
        .get(format!("{}/api/v1/secrets", lab.url))
        .send()
        .await
        .unwrap();
    assert_eq!(status_of(resp).await.1["reason"], "Unauthorized");
    let foreign = ApiServer::new(Arc::new(Knobs::default())).admin_token();
    let resp = lab
        .http
        .get(format!("{}/api/v1/secrets", lab.url))
        .bearer_auth(foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The insecure port takes token-less requests, but not bad tokens.
    let insecure = lab
        .server
        .listen_local_insecure(lab.cancel.clone())
        .await
        .unwrap();
    let resp = lab
        .http
        .get(format!("http://{insecure}/api/v1/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = lab
        .http
        .get(format!("http://{insecure}/api/v1/secrets"))
        .bearer_auth("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // Health needs no token.
    assert_eq!(
        lab.http
            .get(format!("{}/readyz", lab.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Bodies over the cap.
    let big = format!(
        r#"{{"metadata":{{"name":"big"}},"data":{{"k":"{}"}}}}"#,
        "A".repeat(4 * 1024 * 1024)
    );
    let (code, s) = status_of(
        post("/api/v1/namespaces/default/secrets", &big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (code, s["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );
}

#[tokio::test]
async fn garbage_never_breaks_the_server() {
    use rand::{Rng, SeedableRng};
    let lab = lab().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let paths = [
        "/api/v1/namespaces/default/secrets",
        "/api/v1/namespaces/default/secrets/x",
        "/api/v1/namespaces/default/pods/x/status",
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        "/apis/apps/v1/namespaces/default/deployments/d",
        "/apis/apps/v1/deployments",
        "/apis/external-secrets.io/v1/namespaces/default/externalsecrets/e/status",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "/api/v1/namespaces",
        "/api/v1/namespaces/x",
        "/apis",
        "/version",
    ];
    let queries = [
        "",
        "limit=abc",
        "limit=2&continue=%ff%fe",
        "labelSelector=a%20in%20(",
        "labelSelector=!!!",
        "fieldSelector=metadata.name",
        "fieldSelector=x%3Dy",
        "resourceVersion=-1",
        "dryRun=All",
        "propagationPolicy=Orphan",
        "limit=99999999999999999999999",
    ];
    let types = [
        "application/json",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/strategic-merge-patch+json",
        "text/plain",
        "",
    ];
    let methods = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ];
    let seeds = [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "dg=="}}),
        json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}}),
        json!([{"op": "replace", "path": "/spec", "value": 1}]),
        json!({"spec": {"token": "a.b.c"}}),
    ];
    for i in 0..3000 {
        let mut path = paths[rng.random_range(0..paths.len())].to_string();
        if rng.random_bool(0.2) {
            let junk: String = (0..rng.random_range(1..12))
                .map(|_| match rng.random_range(0..4) {
                    0 => '/'.to_string(),
                    1 => format!("%{:02x}", rng.random::<u8>()),
                    _ => (rng.random_range(b'a'..=b'z') as char).to_string(),
                })
                .collect();
            path.push_str(&junk);
        }
        let q = queries[rng.random_range(0..queries.len())];
        let body: Vec<u8> = match rng.random_range(0..4) {
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            1 => Vec::new(),
            2 => {
                let mut b = serde_json::to_vec(&seeds[rng.random_range(0..seeds.len())]).unwrap();
                // Flip a few bytes.
                for _ in 0..rng.random_range(0..4) {
                    if !b.is_empty() {
                        let at = rng.random_range(0..b.len());
                        b[at] = rng.random();
                    }
                }
                b
            }
            _ => serde_json::to_vec(&seeds[rng.random_range(0..seeds.len())]).unwrap(),
        };
        let method = methods[rng.random_range(0..methods.len())].clone();
        let url = format!("{}{}?{}", lab.url, path, q);
        let resp = lab
            .http
            .request(method.clone(), &url)
            .bearer_auth(lab.server.admin_token())
            .header("content-type", types[rng.random_range(0..types.len())])
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} {method} {url} failed: {e}"));
        let code = resp.status().as_u16();
        assert!(
            code < 500,
            "request {i} {method} {url} got {code}: {:?}",
            resp.text().await
        );
        if code >= 400 {
            let s: Value = resp.json().await.unwrap();
            assert_eq!(s["kind"], "Status", "{i} {method} {url}");
        }
    }
    assert_eq!(
        lab.http
            .get(format!("{}/healthz", lab.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "kube-system");
    api.list(&ListParams::default()).await.unwrap();
}

fn pod(name: &str, annotations: Value, env_value: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "canary", "env": [{"name": "X", "value": env_value}]}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn fault_switches_change_behaviour() {
    let lab = lab_with(ApiServerOptions {
        bookmark_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    let s = api
        .create(&PostParams::default(), &secret("f", "1"))
        .await
        .unwrap();

    // api-errors: 500 everywhere but the admin API, health and TokenReview.
    lab.knobs.set_fault(Fault::ApiErrors, true);
    let err = api.get("f").await.unwrap_err();
    assert_eq!(status_code(&err), 500);
    if let kube::Error::Api(s) = &err {
        assert_eq!(s.reason, "InternalError");
    }
    assert_eq!(
        lab.req(reqwest::Method::GET, "/lab/knobs")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        lab.http
            .get(format!("{}/healthz", lab.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let review = lab
        .req(
            reqwest::Method::POST,
            "/apis/authentication.k8s.io/v1/tokenreviews",
        )
        .json(&json!({"spec": {"token": lab.server.issue_token("default", "x")}}))
        .send()
        .await
        .unwrap();
    assert_eq!(review.status(), 201);
    lab.knobs.set_fault(Fault::ApiErrors, false);
    api.get("f").await.unwrap();

    // api-forbidden: 403 to ServiceAccount tokens; the admin, the admin API
    // and TokenReview are unaffected.
    let sa_token = lab.server.issue_token("default", "prober");
    let as_sa = || {
        lab.http
            .get(format!("{}/api/v1/namespaces/default/secrets/f", lab.url))
            .bearer_auth(&sa_token)
            .send()
    };
    assert_eq!(as_sa().await.unwrap().status(), 200);
    lab.knobs.set_fault(Fault::ApiForbidden, true);
    let refused = as_sa().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "Forbidden");
    api.get("f").await.unwrap();
    let review = lab
        .http
        .post(format!(
            "{}/apis/authentication.k8s.io/v1/tokenreviews",
            lab.url
        ))
        .bearer_auth(&sa_token)
        .json(&json!({"spec": {"token": sa_token}}))
        .send()
        .await
        .unwrap();
    assert_eq!(review.status(), 201);
    lab.knobs.set_fault(Fault::ApiForbidden, false);
    assert_eq!(as_sa().await.unwrap().status(), 200);

    // api-slow: every response waits for the api-latency knob.
    lab.knobs
        .set_latency(Knob::ApiLatency, Latency::Fixed(Duration::from_millis(300)));
    lab.knobs.set_fault(Fault::ApiSlow, true);
    let t = Instant::now();
    api.get("f").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    lab.knobs.set_fault(Fault::ApiSlow, false);
    let t = Instant::now();
    api.get("f").await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));

    // watch-expire: a watch from a resourceVersion gets the 410.
    let rv = s.metadata.resource_version.clone().unwrap();
    lab.knobs.set_fault(Fault::WatchExpire, true);
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match timeout(stream.try_next()).await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410, got {other:?}"),
    }
    lab.knobs.set_fault(Fault::WatchExpire, false);

    // watch-drop: an open watch is cut when the fault goes on; new ones are
    // cut soon after opening.
    let mut open = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let t = Instant::now();
    lab.knobs.set_fault(Fault::WatchDrop, true);
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match open.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "the open watch was not cut");
    let mut fresh = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    let cut = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match fresh.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(cut.is_ok(), "a new watch was not cut");
    assert!(t.elapsed() < Duration::from_secs(3));
    lab.knobs.set_fault(Fault::WatchDrop, false);
    let mut calm = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), calm.next())
            .await
            .is_err(),
        "a watch was cut with the fault off"
    );

    // webhook-down: Bank-Vaults Pods are refused, plain Pods admitted.
    lab.knobs.set_fault(Fault::WebhookDown, true);
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    let annotated = pod(
        "v1",
        json!({"vault.security.banzaicloud.io/vault-addr": "http://x"}),
        "plain",
    );
    let err = pods
        .create(&PostParams::default(), &annotated)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), 500);
    if let kube::Error::Api(s) = &err {
        assert_eq!(
            s.message,
            "Internal error occurred: failed calling webhook \"pods.vault-secrets-webhook.admission.banzaicloud.com\": failed to call webhook: connection refused"
        );
    }
    let env_ref = pod("v2", json!({}), "vault:secret/data/x#k");
    assert_eq!(
        status_code(
            &pods
                .create(&PostParams::default(), &env_ref)
                .await
                .unwrap_err()
        ),
        500
    );
    let skipped = pod(
        "v3",
        json!({"vault.security.banzaicloud.io/mutate": "skip"}),
        "plain",
    );
    pods.create(&PostParams::default(), &skipped).await.unwrap();
    let plain = pods
        .create(&PostParams::default(), &pod("plain", json!({}), "x"))
        .await
        .unwrap();
    assert_eq!(
        plain.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    lab.knobs.set_fault(Fault::WebhookDown, false);
    pods.create(&PostParams::default(), &annotated)
        .await
        .unwrap();

    // The webhook up: a Pod with a `vault:` value (no annotation needed) is
    // mutated to start through vault-env; a plain one is left alone.
    let vault_cmd = |p: &Pod| {
        let c = &p.spec.as_ref().unwrap().containers[0];
        (c.command.clone(), c.args.clone())
    };
    let mut with_cmd = pod("v4", json!({}), "vault:secret/data/x#k");
    with_cmd.spec.as_mut().unwrap().containers[0].command = Some(vec!["/app".into()]);
    let mutated = pods
        .create(&PostParams::default(), &with_cmd)
        .await
        .unwrap();
    assert_eq!(
        vault_cmd(&mutated),
        (
            Some(vec!["/vault/vault-env".to_string()]),
            Some(vec!["/app".to_string()])
        )
    );
    assert_eq!(vault_cmd(&plain), (None, None));
    // webhook-fail-open (failurePolicy Ignore): admitted unmutated.
    lab.knobs.set_fault(Fault::WebhookFailOpen, true);
    let mut open = with_cmd.clone();
    open.metadata.name = Some("v5".into());
    let unmutated = pods.create(&PostParams::default(), &open).await.unwrap();
    assert_eq!(
        vault_cmd(&unmutated),
        (Some(vec!["/app".to_string()]), None)
    );
    assert_eq!(
        unmutated.spec.unwrap().containers[0].env.as_ref().unwrap()[0]
            .value
            .as_deref(),
        Some("vault:secret/data/x#k")
    );
    lab.knobs.set_fault(Fault::WebhookFailOpen, false);
}

#[tokio::test]
async fn admin_api() {
    let lab = lab().await;
    let put = |path: &str, body: &str| lab.req(reqwest::Method::PUT, path).body(body.to_string());
    assert_eq!(
        put("/lab/faults/api-errors", "on")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(lab.knobs.is_on(Fault::ApiErrors));
    assert_eq!(
        put("/lab/faults/api-errors", "off")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(!lab.knobs.is_on(Fault::ApiErrors));
    assert_eq!(
        put("/lab/knobs/api-latency", "100ms..2s")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        lab.knobs.latency(Knob::ApiLatency),
        Latency::Uniform {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2)
        }
    );
    let snap: secret_canary_lab::faults::KnobsSnapshot = lab
        .req(reqwest::Method::GET, "/lab/knobs")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(snap, lab.knobs.snapshot());
    let (code, s) = status_of(put("/lab/faults/nope", "on").send().await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(s["message"].as_str().unwrap().contains("eso-stall"), "{s}");
    let (code, s) = status_of(put("/lab/knobs/nope", "1s").send().await.unwrap()).await;
    assert_eq!(code, 400);
    assert!(
        s["message"].as_str().unwrap().contains("api-latency"),
        "{s}"
    );
    assert_eq!(
        put("/lab/knobs/api-latency", "fast")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        put("/lab/faults/api-errors", "maybe")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // Request counts.
    let api: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    api.create(&PostParams::default(), &secret("c", "1"))
        .await
        .unwrap();
    api.get("c").await.unwrap();
    api.get("c").await.unwrap();
    api.list(&ListParams::default()).await.unwrap();
    let counts = lab.server.request_counts();
    assert_eq!(
        (
            counts.get("create", "secrets"),
            counts.get("get", "secrets"),
            counts.get("list", "secrets")
        ),
        (1, 2, 1)
    );
    let over_http: secret_canary_lab::apiserver::RequestCounts = lab
        .req(reqwest::Method::GET, "/lab/requests")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(over_http, counts);

    // Tokens: an SA token works on the API but not on the admin API.
    let t: Value = lab
        .req(reqwest::Method::POST, "/lab/tokens")
        .json(&json!({"namespace": "default", "serviceAccount": "eso"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["token"].as_str().unwrap();
    let resp = lab
        .http
        .get(format!("{}/api/v1/namespaces/default/secrets", lab.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = lab
        .http
        .get(format!("{}/lab/knobs", lab.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn token_request_and_token_review() {
    let lab = lab().await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(lab.client.clone(), "default");
    let mut sa = k8s_openapi::api::core::v1::ServiceAccount::default();
    sa.metadata.name = Some("app".into());
    let sa = sa_create(&sas, sa).await;
    let uid = sa.metadata.uid.unwrap();
    let tr = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
            audiences: Some(vec!["vault".into()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = sas
        .create_token_request("app", &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = out.status.unwrap().token.unwrap();
    let claims = jwt_claims(&token);
    assert_eq!(claims["sub"], "system:serviceaccount:default:app");
    assert_eq!(claims["aud"], json!(["vault"]));
    assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], json!(uid));
    assert_eq!(
        claims["kubernetes.io/serviceaccount/service-account.name"],
        "app"
    );
    assert_eq!(claims["kubernetes.io/serviceaccount/namespace"], "default");
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() == 600);
    // Missing ServiceAccount: 404.
    let err = sas
        .create_token_request("ghost", &PostParams::default(), &tr)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), 404);

    let review = |token: String| {
        let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", lab.url);
        let req = lab
            .http
            .post(url)
            .bearer_auth(lab.server.admin_token())
            .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}));
        async move { status_of(req.send().await.unwrap()).await }
    };
    let (code, r) = review(token).await;
    assert_eq!(code, 201);
    assert_eq!(r["status"]["authenticated"], true);
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:default:app"
    );
    assert_eq!(r["status"]["user"]["uid"], json!(uid));
    assert!(r["status"]["user"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("system:serviceaccounts:default")));
    let (_, r) = review(lab.server.issue_token("ns", "other")).await;
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:ns:other"
    );
    let (code, r) = review("bogus".into()).await;
    assert_eq!(code, 201);
    assert_eq!(r["status"]["authenticated"], false);
}

async fn sa_create(
    api: &Api<k8s_openapi::api::core::v1::ServiceAccount>,
    sa: k8s_openapi::api::core::v1::ServiceAccount,
) -> k8s_openapi::api::core::v1::ServiceAccount {
    api.create(&PostParams::default(), &sa).await.unwrap()
}

/// A fresh scratch directory under the system temp dir.
fn scratch(tag: &str) -> std::path::PathBuf {
    use rand::Rng;
    let dir = std::env::temp_dir().join(format!(
        "lab-apiserver-{tag}-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn openbao_kubernetes_login_through_token_review() {
    let lab = lab().await;
    let dir = scratch("openbao");
    let bao = secret_canary_lab::openbao::OpenBao::start(&dir.join("bao.log"))
        .await
        .unwrap();
    let ca = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=lab",
        ])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        ca.status.success(),
        "{}",
        String::from_utf8_lossy(&ca.stderr)
    );
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).unwrap();

    let vault = |method: reqwest::Method, path: &str| {
        lab.http
            .request(method, format!("{}/v1/{}", bao.addr, path))
            .header("X-Vault-Token", &bao.root_token)
    };
    let ok = |r: reqwest::Response| async move {
        let code = r.status();
        let text = r.text().await.unwrap();
        assert!(code.is_success(), "{code}: {text}");
        text
    };
    ok(vault(reqwest::Method::POST, "sys/auth/kubernetes")
        .json(&json!({"type": "kubernetes"}))
        .send()
        .await
        .unwrap())
    .await;
    ok(vault(reqwest::Method::POST, "auth/kubernetes/config")
        .json(&json!({
            "kubernetes_host": lab.url,
            "kubernetes_ca_cert": ca_pem,
            "token_reviewer_jwt": lab.server.admin_token(),
        }))
        .send()
        .await
        .unwrap())
    .await;
    ok(vault(reqwest::Method::POST, "auth/kubernetes/role/canary")
        .json(&json!({
            "bound_service_account_names": ["app"],
            "bound_service_account_namespaces": ["default"],
            "token_policies": ["default"],
            "ttl": "1h",
        }))
        .send()
        .await
        .unwrap())
    .await;

    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(lab.client.clone(), "default");
    let mut sa = k8s_openapi::api::core::v1::ServiceAccount::default();
    sa.metadata.name = Some("app".into());
    sa_create(&sas, sa).await;
    let login = |jwt: String| {
        lab.http
            .post(format!("{}/v1/auth/kubernetes/login", bao.addr))
            .json(&json!({"role": "canary", "jwt": jwt}))
            .send()
    };
    let resp = login(lab.server.issue_token("default", "app"))
        .await
        .unwrap();
    let code = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert!(code.is_success(), "{code}: {body}");
    assert!(
        body["auth"]["client_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert_eq!(body["auth"]["metadata"]["service_account_name"], "app");
    assert!(lab.server.request_counts().get("create", "tokenreviews") >= 1);

    // A token for another ServiceAccount is not bound to the role.
    let resp = login(lab.server.issue_token("default", "intruder"))
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    // A well-formed JWT this server did not sign fails the TokenReview.
    let foreign = ApiServer::new(Arc::new(Knobs::default())).issue_token("default", "app");
    let resp = login(foreign).await.unwrap();
    assert!(!resp.status().is_success(), "{}", resp.status());
    let resp = login("bogus".into()).await.unwrap();
    assert!(!resp.status().is_success());
    bao.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

struct Kubectl {
    kubeconfig: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl Kubectl {
    /// kubectl sends no token over plain HTTP, so it talks to the insecure port.
    async fn new(lab: &Lab) -> Self {
        let dir = scratch("kubectl");
        let kubeconfig = dir.join("kubeconfig");
        let addr = lab
            .server
            .listen_local_insecure(lab.cancel.clone())
            .await
            .unwrap();
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&format!("http://{addr}"), &lab.server.admin_token()),
        )
        .unwrap();
        Kubectl { kubeconfig, dir }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .args(std::env::var("LAB_KUBECTL_V").map(|v| format!("-v={v}")))
            .env("HOME", &self.dir)
            .env_remove("KUBECONFIG")
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> String {
        eprintln!("kubectl {args:?}");
        let out = timeout(self.command(args).output()).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn kubectl_works_unchanged() {
    let lab = lab().await;
    let k = Kubectl::new(&lab).await;
    let c = lab.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d = deployments
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    let rs: Api<DynamicObject> = Api::namespaced_with(
        c.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apps", "v1", "ReplicaSet"),
            "replicasets",
        ),
    );
    let rs_obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-abc", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": d.metadata.uid, "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}}
    }))
    .unwrap();
    rs.create(&PostParams::default(), &rs_obj).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("web-abc-xyz", json!({}), "x"))
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret("db", "1"))
        .await
        .unwrap();
    let es: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &es_resource());
    let mut e = DynamicObject::new("db-es", &es_resource());
    e.data = json!({"spec": {"secretStoreRef": {"name": "vault"}}});
    es.create(&PostParams::default(), &e).await.unwrap();

    let out = k
        .run(&["get", "deploy,rs,pods,secrets,externalsecrets", "-A"])
        .await;
    for name in [
        "deployment.apps/web",
        "replicaset.apps/web-abc",
        "pod/web-abc-xyz",
        "secret/db",
        "externalsecret.external-secrets.io/db-es",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let out = k.run(&["get", "es", "-n", "default", "-o", "name"]).await;
    assert_eq!(out.trim(), "externalsecret.external-secrets.io/db-es");

    // get -w prints the change (the lab serves no Tables, so print a field).
    // A list, not `secret db`: kubectl watches a single object from
    // resourceVersion 0 and drops the first event, so a change landing
    // between its GET and its watch would never be printed (upstream too);
    // a list's watch resumes from the list's resourceVersion and loses none.
    let mut child = k
        .command(&[
            "get",
            "secrets",
            "--field-selector=metadata.name=db",
            "-w",
            "--request-timeout=0",
            "-o",
            "jsonpath={.data.k}{\"\\n\"}",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = timeout(lines.next_line())
        .await
        .unwrap()
        .expect("kubectl -w ended");
    assert_eq!(first, "MQ==");
    let p = json!({"data": {"k": "Mg=="}});
    secrets
        .patch("db", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    loop {
        let line = timeout(lines.next_line())
            .await
            .unwrap()
            .expect("kubectl -w ended");
        if line != first {
            assert_eq!(line, "Mg==");
            break;
        }
    }
    child.kill().await.unwrap();

    // Typed generators send protobuf, which the lab refuses clearly.
    let out = timeout(
        k.command(&["create", "secret", "generic", "x", "--from-literal=a=b"])
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("JSON bodies only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = k.dir.join("ns.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"from-file"}}"#,
    )
    .unwrap();
    k.run(&[
        "create",
        "--validate=false",
        "-f",
        manifest.to_str().unwrap(),
    ])
    .await;
    assert!(k
        .run(&["get", "ns", "-o", "name"])
        .await
        .contains("namespace/from-file"));

    k.run(&["annotate", "secret", "db", "team=sre"]).await;
    assert_eq!(
        secrets
            .get("db")
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap()["team"],
        "sre"
    );
    k.run(&["annotate", "es", "db-es", "force-sync=1", "--overwrite"])
        .await;
    assert_eq!(
        es.get("db-es").await.unwrap().metadata.annotations.unwrap()["force-sync"],
        "1"
    );

    let before = deployments.get("web").await.unwrap();
    k.run(&["rollout", "restart", "deploy/web"]).await;
    let after = deployments.get("web").await.unwrap();
    let ann = after
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap_or_default();
    assert!(
        ann.contains_key("kubectl.kubernetes.io/restartedAt"),
        "{ann:?}"
    );
    assert_eq!(
        after.metadata.generation,
        Some(before.metadata.generation.unwrap() + 1)
    );

    // rollout status succeeds once the status says "complete".
    let g = after.metadata.generation.unwrap();
    let st = json!({"status": {"observedGeneration": g, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}, {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}]}});
    deployments
        .patch_status("web", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    let out = k
        .run(&["rollout", "status", "deploy/web", "--timeout=5s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");

    k.run(&["delete", "deploy", "web"]).await;
    assert_eq!(
        status_code(&rs.get("web-abc").await.unwrap_err()),
        404,
        "the ReplicaSet should be garbage-collected"
    );
}

#[tokio::test]
async fn graceful_deletion_waits_for_finalizers_and_the_kubelet() {
    let lab = lab().await;
    // Any kind: finalizers hold the object with a deletionTimestamp.
    let secrets: Api<Secret> = Api::namespaced(lab.client.clone(), "default");
    let mut s = secret("held", "1");
    s.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let r = secrets
        .delete("held", &DeleteParams::default())
        .await
        .unwrap();
    assert!(r.is_left(), "kept, not gone");
    let held = secrets.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.deletion_grace_period_seconds, Some(0));
    // An update keeps the deletionTimestamp; removing the last finalizer deletes.
    let patch = json!({"metadata": {"labels": {"x": "y"}}});
    let still = secrets
        .patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        still.metadata.deletion_timestamp,
        held.metadata.deletion_timestamp
    );
    let patch = json!({"metadata": {"finalizers": null}});
    secrets
        .patch("held", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(secrets.get_opt("held").await.unwrap().is_none());

    // A Pod a kubelet runs (status.hostIP) stays Terminating until the
    // kubelet confirms with grace 0; one on no node goes at once.
    let pods: Api<Pod> = Api::namespaced(lab.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("running", json!({}), "x"))
        .await
        .unwrap();
    let st = json!({"status": {"hostIP": "127.0.0.1", "phase": "Running"}});
    pods.patch_status("running", &PatchParams::default(), &Patch::Merge(&st))
        .await
        .unwrap();
    pods.delete("running", &DeleteParams::default())
        .await
        .unwrap();
    let p = pods.get("running").await.unwrap();
    assert_eq!(p.metadata.deletion_grace_period_seconds, Some(30));
    let ts = p.metadata.deletion_timestamp.clone().unwrap().0;
    let left = ts.as_second() - chrono::Utc::now().timestamp();
    assert!((28..=31).contains(&left), "deletionTimestamp {left}s ahead");
    let dp0 = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    pods.delete("running", &dp0).await.unwrap();
    assert!(pods.get_opt("running").await.unwrap().is_none());
    pods.create(&PostParams::default(), &pod("unscheduled", json!({}), "x"))
        .await
        .unwrap();
    pods.delete("unscheduled", &DeleteParams::default())
        .await
        .unwrap();
    assert!(pods.get_opt("unscheduled").await.unwrap().is_none());
}

#[tokio::test]
async fn bookmarks_come_once_a_minute_and_before_the_timeout() {
    assert_eq!(
        ApiServerOptions::default().bookmark_interval,
        Duration::from_secs(60)
    );
    let lab = lab().await;
    let started = Instant::now();
    let resp = lab
        .req(
            reqwest::Method::GET,
            "/api/v1/secrets?watch=true&allowWatchBookmarks=true&timeoutSeconds=7",
        )
        .send()
        .await
        .unwrap();
    let body = timeout(resp.text()).await.unwrap();
    let bookmarks = body.lines().filter(|l| l.contains("\"BOOKMARK\"")).count();
    // A 7 s watch: no heartbeat within it, one bookmark 2 s before the end.
    assert_eq!(bookmarks, 1, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(6900));
}
