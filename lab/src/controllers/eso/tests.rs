//! The controller's worker rule: with several workers (ESO's `--concurrent`),
//! different ExternalSecrets reconcile at once but one ExternalSecret never
//! does on two workers at once, however often it is triggered meanwhile.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::api::ObjectMeta;
use kube::runtime::controller::{applier, Action};
use kube::runtime::reflector::{store::Writer, ObjectRef};
use kube::runtime::watcher;

use super::{controller_config, ExternalSecret, DEFAULT_WORKERS};

#[derive(Default)]
struct Seen {
    /// ExternalSecrets being reconciled right now.
    running: HashSet<String>,
    /// The most reconciles seen running at once.
    most_at_once: usize,
    /// A reconcile started while the same ExternalSecret's was running.
    overlaps: Vec<String>,
    /// Reconciles finished, per ExternalSecret.
    done: BTreeMap<String, usize>,
}

fn es(name: &str) -> ExternalSecret {
    ExternalSecret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            ..ObjectMeta::default()
        },
        ..ExternalSecret::default()
    }
}

/// Drive the applier with `config` over `names`, triggering every object
/// every millisecond for `rounds` rounds while each reconcile takes 5 ms.
async fn drive(workers: usize, names: &[&str], rounds: usize) -> Seen {
    let mut writer = Writer::<ExternalSecret>::default();
    let store = writer.as_reader();
    writer.apply_watcher_event(&watcher::Event::Init);
    for n in names {
        writer.apply_watcher_event(&watcher::Event::InitApply(es(n)));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let refs: Vec<ObjectRef<ExternalSecret>> = names
        .iter()
        .map(|n| ObjectRef::new(n).within("ns"))
        .collect();
    let queue = futures::stream::iter(0..rounds)
        .then(move |_| {
            let refs = refs.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                futures::stream::iter(refs.into_iter().map(Ok::<_, std::io::Error>))
            }
        })
        .flatten();
    let reconcile = |obj: Arc<ExternalSecret>, seen: Arc<Mutex<Seen>>| {
        async move {
            let name = obj.metadata.name.clone().unwrap_or_default();
            {
                let mut s = seen.lock().unwrap();
                if !s.running.insert(name.clone()) {
                    s.overlaps.push(name.clone());
                }
                s.most_at_once = s.most_at_once.max(s.running.len());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut s = seen.lock().unwrap();
            s.running.remove(&name);
            *s.done.entry(name).or_default() += 1;
            Ok::<_, std::io::Error>(Action::await_change())
        }
        .boxed()
    };
    let run = applier(
        reconcile,
        |_, _: &std::io::Error, _| Action::await_change(),
        seen.clone(),
        store,
        queue,
        controller_config(workers),
    )
    .for_each(|_| async {});
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the applier ends when its queue does");
    drop(writer);
    Arc::try_unwrap(seen)
        .ok()
        .expect("no reconcile left running")
        .into_inner()
        .unwrap()
}

#[tokio::test]
async fn one_worker_per_object() {
    let names = ["a", "b", "c", "d"];
    let seen = drive(4, &names, 60).await;
    assert!(seen.overlaps.is_empty(), "overlapping: {:?}", seen.overlaps);
    // The workers were used: different ExternalSecrets reconciled at once.
    assert!(
        seen.most_at_once > 1,
        "at most {} at once",
        seen.most_at_once
    );
    // Triggers that came while an object was being reconciled were not lost:
    // each object was reconciled again after its first pass.
    for n in names {
        assert!(
            seen.done.get(n).copied().unwrap_or(0) > 1,
            "{n}: {:?}",
            seen.done
        );
    }
}

#[tokio::test]
async fn default_is_one_worker() {
    assert_eq!(DEFAULT_WORKERS, 1);
    let seen = drive(DEFAULT_WORKERS, &["a", "b", "c"], 20).await;
    assert!(seen.overlaps.is_empty(), "overlapping: {:?}", seen.overlaps);
    assert_eq!(seen.most_at_once, 1);
}

#[tokio::test]
async fn zero_workers_is_one() {
    let seen = drive(0, &["a", "b"], 10).await;
    assert_eq!(seen.most_at_once, 1);
}
