//! Simulated Stakater Reloader: watches Secrets, notices a data change by
//! the SHA1 Reloader uses, and patches the pod template of every opted-in
//! Deployment in that namespace (env-vars or annotations strategy), which
//! makes the Deployment controller roll out new Pods.
//!
//! The strategy is Reloader-wide ([`ReloaderOptions`]); a lab-only
//! Deployment annotation `lab.secret-canary.io/reload-strategy:
//! annotations|env-vars` overrides it for that Deployment, so one lab can
//! show both strategies side by side.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio_util::sync::CancellationToken;

use super::api::{kube_call, KubeError};
use super::Context;
use crate::faults::{Fault, Knob};
use crate::truth::{self, step};

/// Opt in: reload on any change of a Secret (or ConfigMap) the workload references.
pub const AUTO_ANNOTATION: &str = "reloader.stakater.com/auto";
/// Opt in: reload on any change of a Secret the workload references.
pub const SECRET_AUTO_ANNOTATION: &str = "secret.reloader.stakater.com/auto";
/// Opt in: reload on these Secrets (comma-separated anchored regexes).
pub const SECRET_RELOAD_ANNOTATION: &str = "secret.reloader.stakater.com/reload";
/// On a Secret: never reload for it.
pub const IGNORE_ANNOTATION: &str = "reloader.stakater.com/ignore";
/// Pod-template annotation written by the annotations strategy.
pub const LAST_RELOADED_FROM: &str = "reloader.stakater.com/last-reloaded-from";
/// Lab-only per-Deployment strategy override (`annotations` or `env-vars`).
pub const STRATEGY_OVERRIDE_ANNOTATION: &str = "lab.secret-canary.io/reload-strategy";

/// Reloader's queue retries a failed reload this many times.
const MAX_ATTEMPTS: u32 = 5;

/// How a reload changes the pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReloadStrategy {
    /// Add/update env `STAKATER_<NAME>_SECRET` = SHA1 in the containers (Reloader's default).
    #[default]
    EnvVars,
    /// Set the pod-template annotation `reloader.stakater.com/last-reloaded-from`.
    Annotations,
}

impl ReloadStrategy {
    fn from_annotation(v: &str) -> Option<ReloadStrategy> {
        match v.trim() {
            "annotations" => Some(ReloadStrategy::Annotations),
            "env-vars" | "envvars" => Some(ReloadStrategy::EnvVars),
            _ => None,
        }
    }
}

/// Reloader-wide settings (its command-line flags).
#[derive(Debug, Clone, Default)]
pub struct ReloaderOptions {
    /// `--reload-strategy`.
    pub strategy: ReloadStrategy,
}

/// Why a reload failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed or timed out.
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Reloader's Secret hash: SHA1 (hex) of the sorted `key=value` entries joined with `;`.
pub fn secret_sha(data: &BTreeMap<String, ByteString>) -> String {
    let mut entries: Vec<Vec<u8>> = data
        .iter()
        .map(|(k, v)| {
            let mut e = k.as_bytes().to_vec();
            e.push(b'=');
            e.extend_from_slice(&v.0);
            e
        })
        .collect();
    entries.sort();
    hex::encode(Sha1::digest(entries.join(&b';')))
}

/// Reloader's env var name for a Secret: `STAKATER_<NAME>_SECRET`.
pub fn env_var_name(secret: &str) -> String {
    let mut out = String::from("STAKATER_");
    let mut last_valid = false;
    for ch in secret.to_uppercase().bytes() {
        if ch.is_ascii_uppercase() || ch.is_ascii_digit() {
            out.push(ch as char);
            last_valid = true;
        } else {
            if last_valid {
                out.push('_');
            }
            last_valid = false;
        }
    }
    out.push_str("_SECRET");
    out
}

/// Names of the pod-template volumes that hold the Secret (directly or
/// projected).
fn secret_volumes(spec: &k8s_openapi::api::core::v1::PodSpec, secret: &str) -> Vec<String> {
    spec.volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret)
                || v.projected
                    .as_ref()
                    .and_then(|p| p.sources.as_ref())
                    .is_some_and(|srcs| {
                        srcs.iter()
                            .any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
                    })
        })
        .map(|v| v.name.clone())
        .collect()
}

fn mounts(c: &k8s_openapi::api::core::v1::Container, volumes: &[String]) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| volumes.contains(&m.name))
}

fn env_references(c: &k8s_openapi::api::core::v1::Container, secret: &str) -> bool {
    let env = c.env.iter().flatten().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some_and(|r| r.name == secret)
    });
    let env_from = c
        .env_from
        .iter()
        .flatten()
        .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret));
    env || env_from
}

/// Names of the containers (init containers included) that use the Secret:
/// mount a volume holding it (a volume no container mounts does not count),
/// or reference it from env/envFrom.
pub fn referencing_containers(template: &PodTemplateSpec, secret: &str) -> Vec<String> {
    let Some(spec) = &template.spec else {
        return Vec::new();
    };
    let volumes = secret_volumes(spec, secret);
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| mounts(c, &volumes) || env_references(c, secret))
        .map(|c| c.name.clone())
        .collect()
}

/// The one container the env-vars strategy puts `STAKATER_<NAME>_SECRET`
/// on, as Reloader's `getContainerUsingResource`: the first container that
/// mounts the Secret, else the first that references it in env, else
/// (also when only an init container uses it) `containers[0]`.
pub fn target_container(template: &PodTemplateSpec, secret: &str) -> Option<String> {
    let spec = template.spec.as_ref()?;
    let volumes = secret_volumes(spec, secret);
    spec.containers
        .iter()
        .find(|c| mounts(c, &volumes))
        .or_else(|| spec.containers.iter().find(|c| env_references(c, secret)))
        .or_else(|| spec.containers.first())
        .map(|c| c.name.clone())
}

/// Does this Deployment want a reload when `secret` changes?
pub fn opted_in(d: &Deployment, secret: &str) -> bool {
    let empty = BTreeMap::new();
    let outer = d.metadata.annotations.as_ref().unwrap_or(&empty);
    let inner = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .unwrap_or(&empty);
    let get = |k: &str| {
        outer
            .get(k)
            .or_else(|| inner.get(k))
            .map(|v| v.trim().to_string())
    };
    if let Some(list) = get(SECRET_RELOAD_ANNOTATION) {
        if list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .any(|p| anchored_match(p, secret))
        {
            return true;
        }
    }
    let auto = get(AUTO_ANNOTATION).as_deref() == Some("true")
        || get(SECRET_AUTO_ANNOTATION).as_deref() == Some("true");
    auto && !referencing_containers(&d.spec.template, secret).is_empty()
}

/// Match `name` against a Go-style regex anchored at both ends. Supports
/// the subset Reloader annotations use: literals, `.`, `[...]` classes
/// (ranges, `^` negation), `\` escapes, and the `*`, `+`, `?` quantifiers.
pub fn anchored_match(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_prefix('^').unwrap_or(pattern);
    let pattern = pattern.strip_suffix('$').unwrap_or(pattern);
    match compile(pattern) {
        Some(atoms) => match_here(&atoms, &name.chars().collect::<Vec<_>>()),
        None => pattern == name,
    }
}

#[derive(Debug, Clone)]
enum Class {
    Any,
    Lit(char),
    Set {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Class {
    fn matches(&self, c: char) -> bool {
        match self {
            Class::Any => true,
            Class::Lit(l) => *l == c,
            Class::Set { negated, items } => {
                items.iter().any(|(a, b)| *a <= c && c <= *b) != *negated
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Atom {
    class: Class,
    min: usize,
    max: Option<usize>,
}

fn compile(p: &str) -> Option<Vec<Atom>> {
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut atoms = Vec::new();
    while i < chars.len() {
        let class = match chars[i] {
            '.' => Class::Any,
            '\\' => {
                i += 1;
                Class::Lit(*chars.get(i)?)
            }
            '[' => {
                i += 1;
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut items = Vec::new();
                while *chars.get(i)? != ']' {
                    let a = chars[i];
                    if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|c| *c != ']')
                    {
                        items.push((a, chars[i + 2]));
                        i += 3;
                    } else {
                        items.push((a, a));
                        i += 1;
                    }
                }
                Class::Set { negated, items }
            }
            // Alternation, groups, counted repetition: not supported.
            '(' | ')' | '|' | '{' | '}' | '*' | '+' | '?' => return None,
            c => Class::Lit(c),
        };
        i += 1;
        let (min, max) = match chars.get(i) {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            _ => (1, Some(1)),
        };
        if min != 1 || max != Some(1) {
            i += 1;
        }
        atoms.push(Atom { class, min, max });
    }
    Some(atoms)
}

fn match_here(atoms: &[Atom], s: &[char]) -> bool {
    let Some((a, rest)) = atoms.split_first() else {
        return s.is_empty();
    };
    let mut n = 0;
    while n < a.min {
        if n >= s.len() || !a.class.matches(s[n]) {
            return false;
        }
        n += 1;
    }
    loop {
        if match_here(rest, &s[n..]) {
            return true;
        }
        if a.max.is_some_and(|m| n >= m) || n >= s.len() || !a.class.matches(s[n]) {
            return false;
        }
        n += 1;
    }
}

/// The patch a reload applies to `d`, or `None` when the value is already there.
pub fn reload_patch(
    d: &Deployment,
    strategy: ReloadStrategy,
    secret_ns: &str,
    secret: &str,
    sha: &str,
) -> Option<Value> {
    let spec = &d.spec;
    let strategy = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(STRATEGY_OVERRIDE_ANNOTATION))
        .and_then(|v| ReloadStrategy::from_annotation(v))
        .unwrap_or(strategy);
    match strategy {
        ReloadStrategy::EnvVars => {
            let name = env_var_name(secret);
            let target = target_container(&spec.template, secret)?;
            let present = spec
                .template
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .filter(|c| c.name == target)
                .flat_map(|c| c.env.iter().flatten())
                .any(|e| e.name == name && e.value.as_deref() == Some(sha));
            if present {
                return None;
            }
            let containers = vec![json!({"name": target, "env": [{"name": name, "value": sha}]})];
            Some(json!({"spec": {"template": {"spec": {"containers": containers}}}}))
        }
        ReloadStrategy::Annotations => {
            let current = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(LAST_RELOADED_FROM))
                .and_then(|v| serde_json::from_str::<Value>(v).ok());
            if let Some(cur) = current {
                if cur.get("hash").and_then(Value::as_str) == Some(sha)
                    && cur.get("name").and_then(Value::as_str) == Some(secret)
                    && cur.get("namespace").and_then(Value::as_str) == Some(secret_ns)
                {
                    return None;
                }
            }
            let value = json!({
                "type": "SECRET",
                "name": secret,
                "namespace": secret_ns,
                "hash": sha,
                "containerRefs": referencing_containers(&spec.template, secret),
                "observedAt": Utc::now().timestamp(),
            });
            Some(
                json!({"spec": {"template": {"metadata": {"annotations": {LAST_RELOADED_FROM: value.to_string()}}}}}),
            )
        }
    }
}

/// One Secret change to act on.
#[derive(Debug, Clone)]
struct Change {
    namespace: String,
    name: String,
    sha: String,
    digests: Vec<String>,
}

/// Run Reloader with the default options (env-vars strategy) until `cancel` fires.
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    run_with(ctx, ReloaderOptions::default(), cancel).await
}

/// Run Reloader with explicit options until `cancel` fires.
pub async fn run_with(
    ctx: Context,
    opts: ReloaderOptions,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::all(ctx.client.clone());
    let mut stream = watcher(secrets, watcher::Config::default())
        .default_backoff()
        .boxed();
    // The informer cache: the last hash seen per Secret. Survives watch
    // restarts (a relist compares against it), not a Reloader restart.
    let mut seen: HashMap<(String, String), String> = HashMap::new();
    // The newest change per Secret, so a slow older reload never undoes a newer one.
    let latest: Arc<Mutex<HashMap<(String, String), String>>> = Arc::default();
    // One worker, as Reloader's: changes queue behind each other.
    let (queue, mut work) = tokio::sync::mpsc::unbounded_channel::<Change>();
    let worker = {
        let (ctx, opts, latest, cancel) =
            (ctx.clone(), opts.clone(), latest.clone(), cancel.clone());
        tokio::spawn(async move {
            while let Some(change) = work.recv().await {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = reload(&ctx, &opts, &latest, &change) => {}
                }
            }
        })
    };
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = stream.next() => ev,
        };
        let secret = match ev {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "Reloader Secret watch error (retrying with back-off)");
                continue;
            }
            Some(Ok(watcher::Event::Apply(s))) | Some(Ok(watcher::Event::InitApply(s))) => s,
            Some(Ok(watcher::Event::Delete(s))) => {
                seen.remove(&(s.namespace().unwrap_or_default(), s.name_any()));
                continue;
            }
            Some(Ok(_)) => continue,
        };
        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
        let data = secret.data.clone().unwrap_or_default();
        let sha = secret_sha(&data);
        let previous = seen.insert(key.clone(), sha.clone());
        let changed = previous.is_some_and(|p| p != sha);
        if !changed || ctx.knobs.is_on(Fault::ReloaderAbsent) {
            continue;
        }
        if secret
            .annotations()
            .get(IGNORE_ANNOTATION)
            .map(String::as_str)
            == Some("true")
        {
            continue;
        }
        if let Ok(mut l) = latest.lock() {
            l.insert(key.clone(), sha.clone());
        }
        let change = Change {
            namespace: key.0,
            name: key.1,
            sha,
            digests: data.values().map(|v| truth::digest(&v.0)).collect(),
        };
        tracing::info!(namespace = %change.namespace, secret = %change.name, "Reloader saw a Secret data change");
        let _ = queue.send(change);
    }
    drop(queue);
    worker.abort();
    let _ = worker.await;
    Ok(())
}

async fn reload(
    ctx: &Context,
    opts: &ReloaderOptions,
    latest: &Mutex<HashMap<(String, String), String>>,
    change: &Change,
) {
    ctx.knobs.delay(Knob::ReloaderLatency).await;
    let key = (change.namespace.clone(), change.name.clone());
    let superseded = latest
        .lock()
        .map(|l| l.get(&key) != Some(&change.sha))
        .unwrap_or(false);
    if superseded || ctx.knobs.is_on(Fault::ReloaderAbsent) {
        return;
    }
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=MAX_ATTEMPTS {
        match reload_once(ctx, opts, change).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(namespace = %change.namespace, secret = %change.name, attempt, error = %e, "Reloader reload failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

async fn reload_once(ctx: &Context, opts: &ReloaderOptions, change: &Change) -> Result<(), Error> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &change.namespace);
    // Reloader lists workloads straight from the API on each change.
    let list = kube_call("list Deployments", api.list(&ListParams::default())).await?;
    for d in list.items.iter().filter(|d| opted_in(d, &change.name)) {
        let Some(patch) = reload_patch(
            d,
            opts.strategy,
            &change.namespace,
            &change.name,
            &change.sha,
        ) else {
            continue;
        };
        let name = d.name_any();
        kube_call(
            "patch Deployment",
            api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch)),
        )
        .await?;
        tracing::info!(namespace = %change.namespace, deployment = %name, secret = %change.name, "Reloader patched a Deployment");
        for d in &change.digests {
            ctx.truth
                .record(step::RELOADER_PATCHED, &change.namespace, &name, Some(d));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{
        Container, EnvFromSource, EnvVar, EnvVarSource, PodSpec, SecretEnvSource,
        SecretKeySelector, SecretVolumeSource, Volume,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(
        annotations: &[(&str, &str)],
        containers: Vec<Container>,
        volumes: Vec<Volume>,
    ) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("d".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: DeploymentSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers,
                        volumes: Some(volumes),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn env_ref(container: &str, secret: &str) -> Container {
        Container {
            name: container.into(),
            env: Some(vec![EnvVar {
                name: "X".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: "k".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn sha_matches_reloader() {
        // printf 'a=1;b=2' | sha1sum
        let data = BTreeMap::from([
            ("b".to_string(), ByteString(b"2".to_vec())),
            ("a".to_string(), ByteString(b"1".to_vec())),
        ]);
        assert_eq!(secret_sha(&data), hex::encode(Sha1::digest(b"a=1;b=2")));
        assert_eq!(secret_sha(&data).len(), 40);
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_name("my-secret"), "STAKATER_MY_SECRET_SECRET");
        assert_eq!(env_var_name("a..b"), "STAKATER_A_B_SECRET");
        assert_eq!(env_var_name("canary.v2"), "STAKATER_CANARY_V2_SECRET");
        assert_eq!(env_var_name("-x"), "STAKATER_X_SECRET");
    }

    #[test]
    fn regex_subset() {
        assert!(anchored_match("canary", "canary"));
        assert!(!anchored_match("canary", "canary-2"));
        assert!(!anchored_match("canary", "my-canary"));
        assert!(anchored_match("canary-.*", "canary-2"));
        assert!(anchored_match("^canary-[0-9]+$", "canary-42"));
        assert!(!anchored_match("canary-[0-9]+", "canary-"));
        assert!(anchored_match("a.c", "abc"));
        assert!(anchored_match("a\\.c", "a.c"));
        assert!(!anchored_match("a\\.c", "abc"));
        assert!(anchored_match("colou?r", "color"));
        assert!(anchored_match("[^x]+", "abc"));
    }

    #[test]
    fn opt_in_rules() {
        let auto = [(AUTO_ANNOTATION, "true")];
        assert!(opted_in(
            &deployment(&auto, vec![env_ref("c", "s")], vec![]),
            "s"
        ));
        assert!(!opted_in(
            &deployment(&auto, vec![env_ref("c", "s")], vec![]),
            "other"
        ));
        assert!(!opted_in(
            &deployment(&[], vec![env_ref("c", "s")], vec![]),
            "s"
        ));
        let named = [(SECRET_RELOAD_ANNOTATION, "a, s-.*")];
        assert!(
            opted_in(&deployment(&named, vec![], vec![]), "s-1"),
            "named Secrets need no reference"
        );
        assert!(!opted_in(&deployment(&named, vec![], vec![]), "s"));
        let env_from = Container {
            name: "c".into(),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "s".into(),
                    optional: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert!(opted_in(&deployment(&auto, vec![env_from], vec![]), "s"));
        let vol = Volume {
            name: "v".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some("s".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        // A volume counts only for the containers that mount it.
        let unmounted = deployment(
            &auto,
            vec![Container {
                name: "a".into(),
                ..Default::default()
            }],
            vec![vol.clone()],
        );
        assert!(!opted_in(&unmounted, "s"));
        assert!(referencing_containers(&unmounted.spec.template, "s").is_empty());
        let mount = |name: &str, vol: &str| Container {
            name: name.into(),
            volume_mounts: Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                name: vol.into(),
                mount_path: "/s".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let d = deployment(
            &auto,
            vec![
                Container {
                    name: "a".into(),
                    ..Default::default()
                },
                mount("b", "v"),
            ],
            vec![vol],
        );
        assert!(opted_in(&d, "s"));
        assert_eq!(
            referencing_containers(&d.spec.template, "s"),
            vec!["b".to_string()]
        );
        assert_eq!(
            target_container(&d.spec.template, "s").as_deref(),
            Some("b")
        );
    }

    #[test]
    fn env_var_goes_to_exactly_one_container() {
        // The one that references the Secret, not every container.
        let d = deployment(
            &[(AUTO_ANNOTATION, "true")],
            vec![
                Container {
                    name: "sidecar".into(),
                    ..Default::default()
                },
                env_ref("app", "s"),
                env_ref("other", "s"),
            ],
            vec![],
        );
        let p = reload_patch(&d, ReloadStrategy::EnvVars, "ns", "s", "abc").unwrap();
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "env": [{"name": "STAKATER_S_SECRET", "value": "abc"}]}])
        );
        // Named in `secret.reloader.stakater.com/reload` but not used: containers[0].
        let named = deployment(
            &[(SECRET_RELOAD_ANNOTATION, "s")],
            vec![
                Container {
                    name: "first".into(),
                    ..Default::default()
                },
                Container {
                    name: "second".into(),
                    ..Default::default()
                },
            ],
            vec![],
        );
        let p = reload_patch(&named, ReloadStrategy::EnvVars, "ns", "s", "abc").unwrap();
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"][0]["name"],
            "first"
        );
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn env_patch_skips_when_present() {
        let mut d = deployment(
            &[(AUTO_ANNOTATION, "true")],
            vec![env_ref("c", "s")],
            vec![],
        );
        let p = reload_patch(&d, ReloadStrategy::EnvVars, "ns", "s", "abc").unwrap();
        assert_eq!(
            p,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "STAKATER_S_SECRET", "value": "abc"}]}]}}}})
        );
        let c = &mut d.spec.template.spec.as_mut().unwrap().containers[0];
        c.env.as_mut().unwrap().push(EnvVar {
            name: "STAKATER_S_SECRET".into(),
            value: Some("abc".into()),
            ..Default::default()
        });
        assert!(reload_patch(&d, ReloadStrategy::EnvVars, "ns", "s", "abc").is_none());
        assert!(reload_patch(&d, ReloadStrategy::EnvVars, "ns", "s", "def").is_some());
    }

    #[test]
    fn annotation_patch_and_override() {
        let d = deployment(
            &[(AUTO_ANNOTATION, "true")],
            vec![env_ref("c", "s")],
            vec![],
        );
        let p = reload_patch(&d, ReloadStrategy::Annotations, "ns", "s", "abc").unwrap();
        let v: Value = serde_json::from_str(
            p["spec"]["template"]["metadata"]["annotations"][LAST_RELOADED_FROM]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["type"], "SECRET");
        assert_eq!(v["name"], "s");
        assert_eq!(v["namespace"], "ns");
        assert_eq!(v["hash"], "abc");
        assert_eq!(v["containerRefs"], json!(["c"]));
        assert!(v["observedAt"].as_i64().unwrap() > 1_600_000_000);
        let over = deployment(
            &[
                (AUTO_ANNOTATION, "true"),
                (STRATEGY_OVERRIDE_ANNOTATION, "annotations"),
            ],
            vec![env_ref("c", "s")],
            vec![],
        );
        let p = reload_patch(&over, ReloadStrategy::EnvVars, "ns", "s", "abc").unwrap();
        assert!(p["spec"]["template"]["metadata"].is_object());
    }
}
