//! How long the lab API server takes to deliver a watch event: from the
//! write's response reaching the client to the MODIFIED event reaching a
//! kube-rs watch and a raw HTTP watch. The lab's own delay must stay well
//! under the latencies the prober measures (p99 < 5 ms).
//!
//! `cargo bench -p secret-canary-lab --bench watch_delay [-- N]`

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use secret_canary_lab::apiserver::{kube_client, ApiServer};
use secret_canary_lab::faults::Knobs;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = ApiServer::new(Arc::new(Knobs::default()));
    let cancel = CancellationToken::new();
    let addr = server.listen_local(cancel.clone()).await.expect("bind");
    let url = format!("http://{addr}");
    let client = kube_client(&url, &server.admin_token())
        .await
        .expect("kube client");
    let api: Api<Secret> = Api::namespaced(client.clone(), "default");
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("bench".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "k".to_string(),
            ByteString(b"0".to_vec()),
        )])),
        ..Default::default()
    };
    let created = api
        .create(&PostParams::default(), &secret)
        .await
        .expect("create");
    let start_rv = created.metadata.resource_version.unwrap_or_default();

    // kube-rs watch.
    let kube_arrivals: Arrivals = Arc::default();
    let mut stream = api
        .watch(
            &WatchParams::default().fields("metadata.name=bench"),
            &start_rv,
        )
        .await
        .expect("kube-rs watch")
        .boxed();
    let arrivals = kube_arrivals.clone();
    let kube_task = tokio::spawn(async move {
        while let Some(Ok(ev)) = stream.next().await {
            let now = Instant::now();
            if let WatchEvent::Modified(s) = ev {
                if let Some(rv) = s.metadata.resource_version.and_then(|r| r.parse().ok()) {
                    arrivals.lock().expect("lock").insert(rv, now);
                }
            }
        }
    });

    // Raw HTTP watch.
    let raw_arrivals: Arrivals = Arc::default();
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "{url}/api/v1/namespaces/default/secrets?watch=true&resourceVersion={start_rv}"
        ))
        .bearer_auth(server.admin_token())
        .send()
        .await
        .expect("raw watch");
    let arrivals = raw_arrivals.clone();
    let raw_task = tokio::spawn(async move {
        let mut resp = resp;
        let mut buf: Vec<u8> = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    let rv = v
                        .pointer("/object/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .and_then(|r| r.parse().ok());
                    if let Some(rv) = rv {
                        arrivals.lock().expect("lock").insert(rv, now);
                    }
                }
            }
        }
    });

    // Let both watches settle before timing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut writes: Vec<(u64, Instant, Instant)> = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 1..=n {
        let p = json!({"data": {"k": base64_of(&i.to_string())}});
        let sent = Instant::now();
        let s = api
            .patch("bench", &PatchParams::default(), &Patch::Merge(&p))
            .await
            .expect("patch");
        let now = Instant::now();
        if let Some(rv) = s.metadata.resource_version.and_then(|r| r.parse().ok()) {
            writes.push((rv, sent, now));
        }
    }
    let write_time = started.elapsed();
    // Wait for the stragglers.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let done = |a: &Arrivals| a.lock().map(|m| m.len() >= writes.len()).unwrap_or(false);
        if done(&kube_arrivals) && done(&raw_arrivals) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    kube_task.abort();
    raw_task.abort();

    println!(
        "watch delivery delay over {} writes ({:.0} writes/s, sequential merge patches of one Secret)",
        writes.len(),
        writes.len() as f64 / write_time.as_secs_f64()
    );
    println!(
        "  request->event: the write request is sent -> its MODIFIED event is read by the watch"
    );
    println!("  reply->event:   the write's response is read -> the event is read (0 when the event came first)");
    println!(
        "{:<10} {:<15} {:>7} {:>8} {:>10} {:>10} {:>10}",
        "watch", "measure", "events", "missing", "p50", "p99", "max"
    );
    for (name, arrivals) in [("kube-rs", &kube_arrivals), ("raw HTTP", &raw_arrivals)] {
        let map = arrivals.lock().expect("lock").clone();
        let mut from_request = Vec::new();
        let mut from_reply = Vec::new();
        let mut missing = 0;
        for (rv, sent, replied) in &writes {
            match map.get(rv) {
                Some(got) => {
                    from_request.push(got.saturating_duration_since(*sent));
                    from_reply.push(got.saturating_duration_since(*replied));
                }
                None => missing += 1,
            }
        }
        for (measure, mut delays) in [
            ("request->event", from_request),
            ("reply->event", from_reply),
        ] {
            delays.sort();
            let fmt = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
            println!(
                "{:<10} {:<15} {:>7} {:>8} {:>10} {:>10} {:>10}",
                name,
                measure,
                delays.len(),
                missing,
                fmt(percentile(&delays, 0.5)),
                fmt(percentile(&delays, 0.99)),
                fmt(delays.last().copied().unwrap_or_default()),
            );
        }
    }
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
