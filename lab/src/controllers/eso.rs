//! Simulated External Secrets Operator: reconciles `external-secrets.io/v1`
//! ExternalSecrets against a real OpenBao/Vault (KV v1 or v2, token or
//! Kubernetes auth), writes the target Secret and then the ES status, with
//! ESO's refresh rules (metadata hash, refreshTime + refreshInterval,
//! managed-Secret drift) and error back-off.
//!
//! Lab conveniences, documented so nobody mistakes them for ESO behaviour:
//! a fault or knob switch makes every ExternalSecret reconcile at once (so a
//! cleared `eso-error` recovers without waiting out the back-off), and
//! `target.template` is not implemented.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha224, Sha256};
use tokio_util::sync::CancellationToken;

use super::api::{kube_call, Backoffs, KubeError};
use super::Context;
use crate::faults::{Fault, Knob};
use crate::truth::{self, step};

/// Label ESO puts on every Secret it manages.
pub const MANAGED_LABEL: &str = "reconcile.external-secrets.io/managed";
/// Annotation holding a hash of the managed Secret's data, to notice edits.
pub const DATA_HASH_ANNOTATION: &str = "reconcile.external-secrets.io/data-hash";
/// The API group and version served for ExternalSecret and SecretStore.
pub const API_VERSION: &str = "external-secrets.io/v1";

/// Longest error back-off (ESO: 1 s·2ⁿ up to 7 min).
const MAX_BACKOFF: Duration = Duration::from_secs(7 * 60);
/// What ESO requeues with when `refreshInterval` is 0 (its `--requeue-interval`).
const DEFAULT_REQUEUE: Duration = Duration::from_secs(3600);
/// Every Vault call gets at most this long.
const VAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a reconcile or the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed or timed out.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The ExternalSecret's spec cannot be used.
    #[error("invalid ExternalSecret spec: {0}")]
    InvalidSpec(String),
    /// The referenced SecretStore is missing or unusable.
    #[error("invalid secret store {name}: {reason}")]
    Store {
        /// The store's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading from the provider failed.
    #[error("could not get secret data from provider: {0}")]
    Provider(#[from] ProviderError),
    /// `creationPolicy: Merge` but the target Secret does not exist.
    #[error("target Secret {0} does not exist and creationPolicy is Merge")]
    SecretMissing(String),
    /// Building the HTTP client failed.
    #[error("could not build the Vault HTTP client: {0}")]
    Http(#[source] reqwest::Error),
}

/// Why a read from Vault failed. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The `eso-error` fault is on.
    #[error("injected store error (lab fault eso-error)")]
    Injected,
    /// 404 or null data: the secret does not exist (or is deleted).
    #[error("secret {0:?} not found")]
    NotFound(String),
    /// The property is not in the secret.
    #[error("cannot find secret data for key: {0:?}")]
    NoProperty(String),
    /// Vault answered with an error status.
    #[error("Vault answered {status} for {path}: {errors}")]
    Status {
        /// HTTP status.
        status: u16,
        /// API path.
        path: String,
        /// Vault's `errors` array, joined.
        errors: String,
    },
    /// The HTTP request failed (connect, timeout, body).
    #[error("request to Vault failed for {path}: {source}")]
    Request {
        /// API path.
        path: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The answer was not the JSON shape Vault gives.
    #[error("unexpected answer from Vault for {0}")]
    Shape(String),
    /// Getting a credential to log in with failed.
    #[error("Vault auth failed: {0}")]
    Auth(String),
}

// ---------------------------------------------------------------------------
// Resource types. Spec and status are kept as JSON and parsed in the
// reconcile, so a malformed object is logged and skipped instead of
// breaking the watch stream.

/// An `external-secrets.io/v1` ExternalSecret as the watcher sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExternalSecret {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, parsed by [`EsSpec::parse`].
    #[serde(default)]
    pub spec: Value,
    /// The status, parsed by [`EsStatus::parse`].
    #[serde(default)]
    pub status: Value,
}

/// An `external-secrets.io/v1` SecretStore (namespaced).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SecretStore {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec (`provider.vault` is the one the lab understands).
    #[serde(default)]
    pub spec: Value,
}

/// An `external-secrets.io/v1` ClusterSecretStore (cluster-scoped).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterSecretStore {
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: Value,
}

macro_rules! es_resource {
    ($ty:ty, $kind:literal, $plural:literal, $scope:ty) => {
        impl Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;
            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                "external-secrets.io".into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                "v1".into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
es_resource!(
    ExternalSecret,
    "ExternalSecret",
    "externalsecrets",
    k8s_openapi::NamespaceResourceScope
);
es_resource!(
    SecretStore,
    "SecretStore",
    "secretstores",
    k8s_openapi::NamespaceResourceScope
);
es_resource!(
    ClusterSecretStore,
    "ClusterSecretStore",
    "clustersecretstores",
    k8s_openapi::ClusterResourceScope
);

/// `spec.refreshPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum RefreshPolicy {
    /// Refresh on the interval and on metadata change.
    #[default]
    Periodic,
    /// Sync once, never again unless the Secret is invalid.
    CreatedOnce,
    /// Sync when the ES metadata/generation changes.
    OnChange,
}

/// `spec.target.creationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum CreationPolicy {
    /// Create the Secret, owned by the ES (garbage-collected with it).
    #[default]
    Owner,
    /// Create the Secret without an owner reference.
    Orphan,
    /// Merge into an existing Secret; fail if it does not exist.
    Merge,
    /// Do not write a Secret at all.
    None,
    /// Merge, creating the Secret if missing.
    CreateOrMerge,
}

/// `spec.secretStoreRef`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreRef {
    /// Store name.
    pub name: String,
    /// `SecretStore` (default) or `ClusterSecretStore`.
    #[serde(default = "default_store_kind")]
    pub kind: String,
}

fn default_store_kind() -> String {
    "SecretStore".into()
}

/// `spec.data[].remoteRef` and `spec.dataFrom[].extract`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRef {
    /// Path of the secret under the store's mount.
    pub key: String,
    /// Top-level key (or dotted path) inside the secret.
    #[serde(default)]
    pub property: String,
    /// KV v2 version.
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawData {
    secret_key: String,
    remote_ref: RemoteRef,
}

#[derive(Debug, Clone, Deserialize)]
struct RawDataFrom {
    #[serde(default)]
    extract: Option<RemoteRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTarget {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    creation_policy: CreationPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    refresh_interval: Option<String>,
    #[serde(default)]
    refresh_policy: RefreshPolicy,
    secret_store_ref: StoreRef,
    #[serde(default)]
    target: RawTarget,
    #[serde(default)]
    data: Vec<RawData>,
    #[serde(default)]
    data_from: Vec<RawDataFrom>,
}

/// A validated ExternalSecret spec.
#[derive(Debug, Clone, PartialEq)]
pub struct EsSpec {
    /// `refreshInterval` (zero: sync once).
    pub refresh_interval: Duration,
    /// `refreshPolicy`.
    pub refresh_policy: RefreshPolicy,
    /// `secretStoreRef`.
    pub store_ref: StoreRef,
    /// `target.name`, defaulted to the ES name.
    pub target_name: String,
    /// `target.creationPolicy`.
    pub creation_policy: CreationPolicy,
    /// `data[]` as (secretKey, remoteRef).
    pub data: Vec<(String, RemoteRef)>,
    /// `dataFrom[].extract`.
    pub data_from: Vec<RemoteRef>,
}

impl EsSpec {
    /// Parse and default a spec; `es_name` is the target name's default.
    pub fn parse(spec: &Value, es_name: &str) -> Result<EsSpec, Error> {
        let raw: RawSpec =
            serde_json::from_value(spec.clone()).map_err(|e| Error::InvalidSpec(e.to_string()))?;
        let refresh_interval = match raw.refresh_interval.as_deref() {
            None | Some("") => Duration::from_secs(3600),
            Some(s) => parse_go_duration(s).map_err(Error::InvalidSpec)?,
        };
        let mut data_from = Vec::new();
        for item in raw.data_from {
            match item.extract {
                Some(r) => data_from.push(r),
                None => {
                    return Err(Error::InvalidSpec(
                        "dataFrom entries other than `extract` are not supported by the lab".into(),
                    ))
                }
            }
        }
        if raw.data.is_empty() && data_from.is_empty() {
            return Err(Error::InvalidSpec(
                "neither data nor dataFrom is set".into(),
            ));
        }
        Ok(EsSpec {
            refresh_interval,
            refresh_policy: raw.refresh_policy,
            target_name: raw
                .target
                .name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| es_name.to_string()),
            creation_policy: raw.target.creation_policy,
            store_ref: raw.secret_store_ref,
            data: raw
                .data
                .into_iter()
                .map(|d| (d.secret_key, d.remote_ref))
                .collect(),
            data_from,
        })
    }
}

/// The parts of the ES status the refresh rules read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EsStatus {
    /// `status.refreshTime`.
    pub refresh_time: Option<DateTime<Utc>>,
    /// `status.syncedResourceVersion`.
    pub synced_resource_version: String,
}

impl EsStatus {
    /// Read from the status JSON; anything unparsable counts as absent.
    pub fn parse(status: &Value) -> EsStatus {
        let refresh_time = status
            .get("refreshTime")
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            // Go's zero time serialises as null or 0001-01-01; both mean "never".
            .filter(|t| t.timestamp() > 0);
        EsStatus {
            refresh_time,
            synced_resource_version: status
                .get("syncedResourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }
    }
}

/// Parse a Go `time.Duration` string: `1h0m0s`, `15s`, `500ms`, `1.5h`, `0`.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("invalid duration {s:?} (expected a Go duration such as `1h0m0s`, `15s`, `500ms`)")
    };
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || t.starts_with('-') {
        return Err(bad());
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// ESO's `syncedResourceVersion`: `<generation>-<hash of labels and annotations>`.
pub fn synced_resource_version(meta: &ObjectMeta) -> String {
    let body = json!({
        "annotations": meta.annotations.clone().unwrap_or_default(),
        "labels": meta.labels.clone().unwrap_or_default(),
    });
    let hash = Sha256::digest(body.to_string().as_bytes());
    format!(
        "{}-{}",
        meta.generation.unwrap_or(0),
        &hex::encode(hash)[..32]
    )
}

/// The data-hash annotation value for a Secret's data.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha224::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_be_bytes());
        h.update(&v.0);
    }
    hex::encode(h.finalize())
}

/// ESO's `shouldRefresh`: does this ES need a fetch from the provider?
pub fn should_refresh(
    spec: &EsSpec,
    status: &EsStatus,
    current_version: &str,
    now: DateTime<Utc>,
) -> bool {
    let never_synced = status.synced_resource_version.is_empty() || status.refresh_time.is_none();
    match spec.refresh_policy {
        RefreshPolicy::CreatedOnce => never_synced,
        RefreshPolicy::OnChange => {
            never_synced || status.synced_resource_version != current_version
        }
        RefreshPolicy::Periodic => {
            if spec.refresh_interval.is_zero() && !status.synced_resource_version.is_empty() {
                return false;
            }
            if status.synced_resource_version != current_version {
                return true;
            }
            match status.refresh_time {
                None => true,
                Some(t) => {
                    t + chrono::Duration::from_std(spec.refresh_interval)
                        .unwrap_or(chrono::Duration::MAX)
                        < now
                }
            }
        }
    }
}

/// ESO's requeue: `interval - (now - refreshTime)`, the whole interval when
/// that is not positive, the global requeue interval when `refreshInterval` is 0.
pub fn requeue_after(
    spec: &EsSpec,
    refresh_time: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    let interval = if spec.refresh_interval.is_zero() {
        DEFAULT_REQUEUE
    } else {
        spec.refresh_interval
    };
    if let Some(t) = refresh_time {
        if let Ok(since) = (now - t).to_std() {
            if since < interval {
                // 1 ms so the timer lands strictly after refreshTime + interval.
                return interval - since + Duration::from_millis(1);
            }
        } else {
            return interval; // refreshTime in the future: clock skew
        }
    }
    interval
}

/// Is the managed Secret as ESO left it (exists, labelled, data hash matches)?
pub fn secret_is_valid(secret: Option<&Secret>, policy: CreationPolicy) -> bool {
    if policy == CreationPolicy::None {
        return true;
    }
    let Some(s) = secret else { return false };
    let labels = s.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_LABEL).map(String::as_str) != Some("true") {
        return false;
    }
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    annotations.get(DATA_HASH_ANNOTATION) == Some(&data_hash(&s.data.clone().unwrap_or_default()))
}

/// ESO's mapping from store path and key to the Vault API path (`buildPath`):
/// `secret` + `foo` → `secret/data/foo` (KV v2); the mount (and `data/`) is
/// stripped from the key first when present.
pub fn build_path(store_path: Option<&str>, kv_version: &str, key: &str) -> String {
    let v2 = kv_version != "v1";
    match store_path {
        Some(mount) => {
            let mut out = key;
            let cut = format!("{mount}/");
            if let Some(rest) = key.strip_prefix(&cut) {
                out = rest;
                if v2 {
                    out = out.strip_prefix("data/").unwrap_or(out);
                }
            }
            if v2 {
                format!("{mount}/data/{out}")
            } else {
                format!("{mount}/{out}")
            }
        }
        None => {
            if v2 && !key.contains("/data/") {
                match key.split_once('/') {
                    Some((first, rest)) => format!("{first}/data/{rest}"),
                    None => format!("{key}/data"),
                }
            } else {
                key.to_string()
            }
        }
    }
}

/// ESO's `getSecretValue`: no property → the whole map as JSON; a top-level
/// key → its value (strings raw, others as JSON); else a dotted path.
pub fn secret_value(data: &Map<String, Value>, property: &str) -> Result<Vec<u8>, ProviderError> {
    if property.is_empty() {
        return Ok(Value::Object(data.clone()).to_string().into_bytes());
    }
    if let Some(v) = data.get(property) {
        return Ok(value_bytes(v));
    }
    // A subset of gjson: `a.b.c` through objects.
    let mut cur: Option<&Value> = None;
    for (i, part) in property.split('.').enumerate() {
        cur = if i == 0 {
            data.get(part)
        } else {
            cur.and_then(|c| c.get(part))
        };
    }
    match cur {
        Some(v) => Ok(value_bytes(v)),
        None => Err(ProviderError::NoProperty(property.to_string())),
    }
}

fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

// ---------------------------------------------------------------------------
// Vault provider.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretKeySelector {
    name: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceAccountSelector {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubernetesAuth {
    #[serde(default)]
    mount_path: Option<String>,
    role: String,
    #[serde(default)]
    service_account_ref: Option<ServiceAccountSelector>,
    #[serde(default)]
    secret_ref: Option<SecretKeySelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultAuth {
    #[serde(default)]
    token_secret_ref: Option<SecretKeySelector>,
    #[serde(default)]
    kubernetes: Option<KubernetesAuth>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VaultProvider {
    server: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "default_kv_version")]
    version: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    auth: VaultAuth,
}

fn default_kv_version() -> String {
    "v2".into()
}

/// A logged-in Vault client for one reconcile.
struct VaultClient {
    http: reqwest::Client,
    provider: VaultProvider,
    token: String,
}

impl VaultClient {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/v1/{}", self.provider.server.trim_end_matches('/'), path);
        let mut r = self
            .http
            .request(method, url)
            .header("X-Vault-Request", "true");
        if !self.token.is_empty() {
            r = r.header("X-Vault-Token", &self.token);
        }
        if let Some(ns) = self.provider.namespace.as_deref().filter(|n| !n.is_empty()) {
            r = r.header("X-Vault-Namespace", ns);
        }
        r
    }

    /// Read one secret's data map (`readSecret`).
    async fn read(&self, key: &str, version: &str) -> Result<Map<String, Value>, ProviderError> {
        let path = build_path(self.provider.path.as_deref(), &self.provider.version, key);
        let query_path = if version.is_empty() {
            path.clone()
        } else if version.bytes().all(|b| b.is_ascii_digit()) {
            format!("{path}?version={version}")
        } else {
            return Err(ProviderError::Shape(format!(
                "{path} (version {version:?} is not a number)"
            )));
        };
        let body = send(
            self.request(reqwest::Method::GET, &query_path),
            &path,
            Some(key),
        )
        .await?;
        let data = body
            .get("data")
            .ok_or_else(|| ProviderError::Shape(path.clone()))?;
        let data = if self.provider.version == "v1" {
            data
        } else {
            match data.get("data") {
                None => return Err(ProviderError::Shape(path)),
                Some(d) => d,
            }
        };
        match data {
            Value::Null => Err(ProviderError::NotFound(key.to_string())),
            Value::Object(m) => Ok(m.clone()),
            _ => Err(ProviderError::Shape(path)),
        }
    }
}

/// Sends `req` (to the Vault API `path`) and returns the JSON body of a
/// successful answer. A 404 is `NotFound(key)` when `missing_key` is given:
/// for a read it means the secret does not exist, not a failed request.
async fn send(
    req: reqwest::RequestBuilder,
    path: &str,
    missing_key: Option<&str>,
) -> Result<Value, ProviderError> {
    let failed = |source| ProviderError::Request {
        path: path.to_string(),
        source,
    };
    let resp = req.send().await.map_err(failed)?;
    let status = resp.status();
    if let Some(key) = missing_key.filter(|_| status == reqwest::StatusCode::NOT_FOUND) {
        return Err(ProviderError::NotFound(key.to_string()));
    }
    let body: Value = resp.json().await.map_err(failed)?;
    if !status.is_success() {
        return Err(ProviderError::Status {
            status: status.as_u16(),
            path: path.to_string(),
            errors: vault_errors(&body),
        });
    }
    Ok(body)
}

fn vault_errors(body: &Value) -> String {
    body.get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The controller.

struct State {
    ctx: Context,
    http: reqwest::Client,
    /// Per-ExternalSecret error back-off ([`backoff_delay`]), keyed by the
    /// `syncedResourceVersion`-style version: a metadata change (e.g.
    /// `force-sync`) skips the back-off, as a new event does in ESO.
    backoff: Backoffs,
}

/// 1 s·2ⁿ⁻¹ for the n-th consecutive failure, at most 7 minutes.
pub fn backoff_delay(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

/// Run the ESO controller until `cancel` fires.
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .timeout(VAULT_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(Error::Http)?;
    let client = ctx.client.clone();
    let state = Arc::new(State {
        ctx,
        http,
        backoff: Backoffs::new(backoff_delay),
    });
    let controller = Controller::new(
        Api::<ExternalSecret>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let knob_state = state.clone();
    let knob_changes = futures::stream::unfold(knob_state, |st| async move {
        st.ctx.knobs.changed().await;
        st.backoff.clear();
        Some(((), st))
    });
    controller
        .watches(
            Api::<Secret>::all(client),
            watcher::Config::default().labels(&format!("{MANAGED_LABEL}=true")),
            move |s: Secret| secret_to_es(&store, &s),
        )
        .reconcile_all_on(knob_changes)
        .graceful_shutdown_on(cancel.cancelled_owned())
        .run(reconcile, error_policy, state)
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                Err(kube::runtime::controller::Error::ReconcilerFailed(e, obj)) => {
                    tracing::warn!(es = %obj, error = %e, "ExternalSecret reconcile failed")
                }
                Err(e) => tracing::debug!(error = %e, "ESO controller event"),
            }
        })
        .await;
    Ok(())
}

/// Which ExternalSecret a managed Secret belongs to: its controller owner,
/// else any ES in its namespace targeting that name.
fn secret_to_es(store: &Store<ExternalSecret>, s: &Secret) -> Vec<ObjectRef<ExternalSecret>> {
    let ns = s.metadata.namespace.clone().unwrap_or_default();
    let name = s.metadata.name.clone().unwrap_or_default();
    let mut out: Vec<ObjectRef<ExternalSecret>> = s
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "ExternalSecret" && o.api_version.starts_with("external-secrets.io/"))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect();
    if out.is_empty() {
        out = store
            .state()
            .iter()
            .filter(|es| es.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|es| {
                let es_name = es.name_any();
                let target = es
                    .spec
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&es_name);
                target == name
            })
            .map(|es| ObjectRef::new(&es.name_any()).within(&ns))
            .collect();
    }
    out
}

fn error_policy(es: Arc<ExternalSecret>, _err: &Error, st: Arc<State>) -> Action {
    let key = (es.namespace().unwrap_or_default(), es.name_any());
    Action::requeue(st.backoff.next(key, &synced_resource_version(&es.metadata)))
}

async fn reconcile(es: Arc<ExternalSecret>, st: Arc<State>) -> Result<Action, Error> {
    let knobs = &st.ctx.knobs;
    if knobs.is_on(Fault::EsoStall) {
        // Resumed by the knob-change trigger when the fault is switched off.
        return Ok(Action::await_change());
    }
    let ns = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let key = (ns.clone(), name.clone());
    let version = synced_resource_version(&es.metadata);
    if let Some(wait) = st.backoff.remaining(&key, &version) {
        return Ok(Action::requeue(wait));
    }
    let start = Utc::now();
    let spec = match EsSpec::parse(&es.spec, &name) {
        Ok(s) => s,
        Err(e) => {
            // A real cluster rejects this at admission; here: log and skip.
            tracing::warn!(namespace = %ns, es = %name, error = %e, "skipping invalid ExternalSecret");
            return Ok(Action::await_change());
        }
    };
    let status = EsStatus::parse(&es.status);
    let secrets: Api<Secret> = Api::namespaced(st.ctx.client.clone(), &ns);
    let existing = kube_call("get target Secret", secrets.get_opt(&spec.target_name)).await?;
    if !should_refresh(&spec, &status, &version, start)
        && secret_is_valid(existing.as_ref(), spec.creation_policy)
    {
        return Ok(Action::requeue(requeue_after(
            &spec,
            status.refresh_time,
            start,
        )));
    }

    knobs.delay(Knob::EsoLatency).await;
    if knobs.is_on(Fault::EsoStall) {
        return Ok(Action::await_change());
    }
    let data = match fetch(&st, &spec, &ns).await {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(namespace = %ns, es = %name, error = %e, "ExternalSecret sync failed");
            write_error_status(&st, &es, "could not get secret data from provider").await?;
            return Err(e);
        }
    };
    for v in data.values() {
        st.ctx
            .truth
            .record(step::ESO_STORE_READ, &ns, &name, Some(&truth::digest(&v.0)));
    }

    // Re-read: the fetch took time, and an edit meanwhile must not be lost.
    let existing = kube_call("get target Secret", secrets.get_opt(&spec.target_name)).await?;
    match write_secret(&secrets, &es, &spec, existing, &data).await {
        Ok(true) => {
            for v in data.values() {
                st.ctx.truth.record(
                    step::ESO_SECRET_WRITTEN,
                    &ns,
                    &spec.target_name,
                    Some(&truth::digest(&v.0)),
                );
            }
        }
        Ok(false) => {}
        Err(e) => {
            let msg = match e {
                Error::SecretMissing(_) => "secret does not exist and creationPolicy is Merge",
                _ => "could not update Secret",
            };
            write_error_status(&st, &es, msg).await?;
            return Err(e);
        }
    }

    knobs.delay(Knob::EsoStatusLatency).await;
    let refresh_time = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let conditions = ready_conditions(&es.status, true, "SecretSynced", "secret synced", start);
    let patch = json!({
        "status": {
            "refreshTime": refresh_time,
            "syncedResourceVersion": version,
            "binding": {"name": spec.target_name},
            "conditions": conditions,
        }
    });
    let api: Api<ExternalSecret> = Api::namespaced(st.ctx.client.clone(), &ns);
    kube_call(
        "patch ExternalSecret status",
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    for v in data.values() {
        st.ctx.truth.record(
            step::ESO_STATUS_SYNCED,
            &ns,
            &name,
            Some(&truth::digest(&v.0)),
        );
    }
    st.backoff.reset(&key);
    let written = DateTime::parse_from_rfc3339(&refresh_time)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    Ok(Action::requeue(requeue_after(&spec, written, Utc::now())))
}

/// The status `conditions` with Ready set; lastTransitionTime moves only
/// when the condition's status flips.
fn ready_conditions(
    old_status: &Value,
    ok: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Vec<Value> {
    let status = if ok { "True" } else { "False" };
    let old: Vec<Value> = old_status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut transition = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut out: Vec<Value> = Vec::new();
    for c in old {
        if c.get("type").and_then(Value::as_str) == Some("Ready") {
            if c.get("status").and_then(Value::as_str) == Some(status) {
                if let Some(t) = c.get("lastTransitionTime").and_then(Value::as_str) {
                    transition = t.to_string();
                }
            }
        } else {
            out.push(c);
        }
    }
    out.push(json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }));
    out
}

async fn write_error_status(st: &State, es: &ExternalSecret, message: &str) -> Result<(), Error> {
    let ns = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let conditions = ready_conditions(&es.status, false, "SecretSyncedError", message, Utc::now());
    let patch = json!({"status": {"conditions": conditions}});
    let api: Api<ExternalSecret> = Api::namespaced(st.ctx.client.clone(), &ns);
    kube_call(
        "patch ExternalSecret status",
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    st.ctx
        .truth
        .record(step::ESO_STATUS_ERROR, &ns, &name, None);
    Ok(())
}

/// Create or update the target Secret; `Ok(true)` when something was written.
async fn write_secret(
    secrets: &Api<Secret>,
    es: &ExternalSecret,
    spec: &EsSpec,
    existing: Option<Secret>,
    data: &BTreeMap<String, ByteString>,
) -> Result<bool, Error> {
    if spec.creation_policy == CreationPolicy::None {
        return Ok(false);
    }
    let merge = matches!(
        spec.creation_policy,
        CreationPolicy::Merge | CreationPolicy::CreateOrMerge
    );
    let owner = match spec.creation_policy {
        CreationPolicy::Owner => Some(OwnerReference {
            api_version: API_VERSION.into(),
            kind: "ExternalSecret".into(),
            name: es.name_any(),
            uid: es.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }),
        _ => None,
    };
    match existing {
        None => {
            if spec.creation_policy == CreationPolicy::Merge {
                return Err(Error::SecretMissing(spec.target_name.clone()));
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(spec.target_name.clone()),
                    namespace: es.namespace(),
                    labels: Some(BTreeMap::from([(
                        MANAGED_LABEL.to_string(),
                        "true".to_string(),
                    )])),
                    annotations: Some(BTreeMap::from([(
                        DATA_HASH_ANNOTATION.to_string(),
                        data_hash(data),
                    )])),
                    owner_references: owner.map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data.clone()),
                ..Default::default()
            };
            kube_call(
                "create target Secret",
                secrets.create(&PostParams::default(), &secret),
            )
            .await?;
            Ok(true)
        }
        Some(old) => {
            let mut new = old.clone();
            let mut new_data = if merge {
                old.data.clone().unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            new_data.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
            new.data = Some(new_data.clone());
            new.string_data = None;
            new.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(MANAGED_LABEL.into(), "true".into());
            new.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DATA_HASH_ANNOTATION.into(), data_hash(&new_data));
            if let Some(o) = owner {
                let refs = new.metadata.owner_references.get_or_insert_with(Vec::new);
                if !refs.iter().any(|r| r.uid == o.uid) {
                    refs.push(o);
                }
            }
            if new == old {
                return Ok(false);
            }
            kube_call(
                "update target Secret",
                secrets.replace(&spec.target_name, &PostParams::default(), &new),
            )
            .await?;
            Ok(true)
        }
    }
}

/// Log in with the store's auth and read every `data[]` and `dataFrom[]` entry.
async fn fetch(st: &State, spec: &EsSpec, ns: &str) -> Result<BTreeMap<String, ByteString>, Error> {
    if st.ctx.knobs.is_on(Fault::EsoError) {
        return Err(ProviderError::Injected.into());
    }
    let store_spec = load_store(st, &spec.store_ref, ns).await?;
    let provider: VaultProvider = store_spec
        .get("provider")
        .and_then(|p| p.get("vault"))
        .cloned()
        .ok_or_else(|| Error::Store {
            name: spec.store_ref.name.clone(),
            reason: "only spec.provider.vault is supported by the lab".into(),
        })
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| Error::Store {
                name: spec.store_ref.name.clone(),
                reason: e.to_string(),
            })
        })?;
    let cluster = spec.store_ref.kind == "ClusterSecretStore";
    let token = login(st, &provider, ns, cluster).await?;
    let client = VaultClient {
        http: st.http.clone(),
        provider,
        token,
    };
    let mut out = BTreeMap::new();
    for r in &spec.data_from {
        let map = client.read(&r.key, &r.version).await?;
        let map = if r.property.is_empty() {
            map
        } else {
            let v = secret_value(&map, &r.property)?;
            serde_json::from_slice::<Map<String, Value>>(&v)
                .map_err(|_| ProviderError::Shape(r.key.clone()))?
        };
        for (k, v) in map {
            out.insert(k, ByteString(value_bytes(&v)));
        }
    }
    for (secret_key, r) in &spec.data {
        let map = client.read(&r.key, &r.version).await?;
        out.insert(
            secret_key.clone(),
            ByteString(secret_value(&map, &r.property)?),
        );
    }
    Ok(out)
}

async fn load_store(st: &State, store_ref: &StoreRef, ns: &str) -> Result<Value, Error> {
    let missing = |what: &str| Error::Store {
        name: store_ref.name.clone(),
        reason: format!("{what} not found"),
    };
    if store_ref.kind == "ClusterSecretStore" {
        let api: Api<ClusterSecretStore> = Api::all(st.ctx.client.clone());
        let s = kube_call("get ClusterSecretStore", api.get_opt(&store_ref.name))
            .await?
            .ok_or_else(|| missing("ClusterSecretStore"))?;
        Ok(s.spec)
    } else {
        let api: Api<SecretStore> = Api::namespaced(st.ctx.client.clone(), ns);
        let s = kube_call("get SecretStore", api.get_opt(&store_ref.name))
            .await?
            .ok_or_else(|| missing("SecretStore"))?;
        Ok(s.spec)
    }
}

async fn secret_key(
    st: &State,
    sel: &SecretKeySelector,
    ns: &str,
    cluster: bool,
    default_key: &str,
) -> Result<String, Error> {
    let ns = if cluster {
        sel.namespace.as_deref().unwrap_or(ns)
    } else {
        ns
    };
    let api: Api<Secret> = Api::namespaced(st.ctx.client.clone(), ns);
    let s = kube_call("get auth Secret", api.get_opt(&sel.name))
        .await?
        .ok_or_else(|| ProviderError::Auth(format!("Secret {ns}/{} not found", sel.name)))?;
    let key = if sel.key.is_empty() {
        default_key
    } else {
        &sel.key
    };
    let v = s.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
        ProviderError::Auth(format!("Secret {ns}/{} has no key {key:?}", sel.name))
    })?;
    Ok(String::from_utf8_lossy(&v.0).trim().to_string())
}

/// A Vault token from the store's auth section.
async fn login(st: &State, p: &VaultProvider, ns: &str, cluster: bool) -> Result<String, Error> {
    if let Some(sel) = &p.auth.token_secret_ref {
        return secret_key(st, sel, ns, cluster, "token").await;
    }
    let Some(k8s) = &p.auth.kubernetes else {
        return Err(ProviderError::Auth(
            "no supported auth method (tokenSecretRef or kubernetes) in the store".into(),
        )
        .into());
    };
    let jwt = if let Some(sa) = &k8s.service_account_ref {
        let sa_ns = if cluster {
            sa.namespace.as_deref().unwrap_or(ns)
        } else {
            ns
        };
        let api: Api<ServiceAccount> = Api::namespaced(st.ctx.client.clone(), sa_ns);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(sa.audiences.clone()),
                expiration_seconds: Some(600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let tr = kube_call(
            "create ServiceAccount token",
            api.create_token_request(&sa.name, &PostParams::default(), &req),
        )
        .await?;
        tr.status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ProviderError::Auth(format!(
                    "TokenRequest for {sa_ns}/{} returned no token",
                    sa.name
                ))
            })?
    } else if let Some(sel) = &k8s.secret_ref {
        secret_key(st, sel, ns, cluster, "token").await?
    } else {
        return Err(ProviderError::Auth(
            "kubernetes auth needs serviceAccountRef or secretRef in the lab".into(),
        )
        .into());
    };
    let mount = k8s
        .mount_path
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or("kubernetes");
    let client = VaultClient {
        http: st.http.clone(),
        provider: p.clone(),
        token: String::new(),
    };
    let path = format!("auth/{mount}/login");
    let body = send(
        client
            .request(reqwest::Method::POST, &path)
            .json(&json!({"role": k8s.role, "jwt": jwt})),
        &path,
        None,
    )
    .await?;
    body.pointer("/auth/client_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ProviderError::Shape(path).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> EsSpec {
        EsSpec::parse(&v, "es").unwrap()
    }

    fn basic() -> Value {
        json!({
            "refreshInterval": "1m",
            "secretStoreRef": {"name": "vault"},
            "data": [{"secretKey": "k", "remoteRef": {"key": "foo", "property": "p"}}]
        })
    }

    #[test]
    fn go_durations() {
        assert_eq!(
            parse_go_duration("1h0m0s").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(parse_go_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(
            parse_go_duration("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5h").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_go_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "1", "1x", "h", "-1s", "1h 2m"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_defaults() {
        let s = EsSpec::parse(
            &json!({"secretStoreRef": {"name": "v"}, "data": [{"secretKey": "a", "remoteRef": {"key": "x"}}]}),
            "my-es",
        )
        .unwrap();
        assert_eq!(s.refresh_interval, Duration::from_secs(3600));
        assert_eq!(s.refresh_policy, RefreshPolicy::Periodic);
        assert_eq!(s.target_name, "my-es");
        assert_eq!(s.creation_policy, CreationPolicy::Owner);
        assert_eq!(s.store_ref.kind, "SecretStore");
        assert!(EsSpec::parse(&json!({"secretStoreRef": {"name": "v"}}), "x").is_err());
        assert!(EsSpec::parse(&json!({"data": []}), "x").is_err());
        let s = spec(
            json!({"secretStoreRef": {"name": "v"}, "target": {"name": "t", "creationPolicy": "Orphan"},
            "refreshPolicy": "OnChange", "dataFrom": [{"extract": {"key": "foo"}}]}),
        );
        assert_eq!(
            (s.target_name.as_str(), s.creation_policy, s.refresh_policy),
            ("t", CreationPolicy::Orphan, RefreshPolicy::OnChange)
        );
        assert_eq!(s.data_from[0].key, "foo");
    }

    #[test]
    fn refresh_rules() {
        let now = Utc::now();
        let s = spec(basic());
        let never = EsStatus::default();
        assert!(should_refresh(&s, &never, "1-a", now));
        let fresh = EsStatus {
            refresh_time: Some(now - chrono::Duration::seconds(10)),
            synced_resource_version: "1-a".into(),
        };
        assert!(!should_refresh(&s, &fresh, "1-a", now));
        // A label/annotation change (force-sync) changes the version.
        assert!(should_refresh(&s, &fresh, "1-b", now));
        let stale = EsStatus {
            refresh_time: Some(now - chrono::Duration::seconds(61)),
            ..fresh.clone()
        };
        assert!(should_refresh(&s, &stale, "1-a", now));
        let mut once = basic();
        once["refreshPolicy"] = json!("CreatedOnce");
        let once = spec(once);
        assert!(!should_refresh(&once, &stale, "2-b", now));
        assert!(should_refresh(&once, &never, "1-a", now));
        let mut onchange = basic();
        onchange["refreshPolicy"] = json!("OnChange");
        let onchange = spec(onchange);
        assert!(!should_refresh(&onchange, &stale, "1-a", now));
        assert!(should_refresh(&onchange, &stale, "1-b", now));
        let mut zero = basic();
        zero["refreshInterval"] = json!("0");
        let zero = spec(zero);
        assert!(!should_refresh(&zero, &stale, "1-b", now));
        assert!(should_refresh(&zero, &never, "1-a", now));
    }

    #[test]
    fn requeue_is_remaining_interval() {
        let now = Utc::now();
        let s = spec(basic());
        let d = requeue_after(&s, Some(now - chrono::Duration::seconds(20)), now);
        assert!(
            d > Duration::from_secs(39) && d <= Duration::from_millis(40_001),
            "{d:?}"
        );
        assert_eq!(
            requeue_after(&s, Some(now - chrono::Duration::seconds(90)), now),
            Duration::from_secs(60)
        );
        assert_eq!(requeue_after(&s, None, now), Duration::from_secs(60));
        let mut zero = basic();
        zero["refreshInterval"] = json!("0s");
        assert_eq!(requeue_after(&spec(zero), None, now), DEFAULT_REQUEUE);
    }

    #[test]
    fn backoff_doubles_to_seven_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(9), Duration::from_secs(256));
        assert_eq!(backoff_delay(10), MAX_BACKOFF);
        assert_eq!(backoff_delay(1000), MAX_BACKOFF);
    }

    #[test]
    fn vault_paths_follow_eso() {
        assert_eq!(build_path(Some("secret"), "v2", "foo"), "secret/data/foo");
        assert_eq!(
            build_path(Some("secret"), "v2", "secret/foo"),
            "secret/data/foo"
        );
        assert_eq!(
            build_path(Some("secret"), "v2", "secret/data/foo"),
            "secret/data/foo"
        );
        assert_eq!(build_path(Some("secret"), "v2", "/foo"), "secret/data//foo");
        assert_eq!(build_path(Some("secret"), "v2", "a/b"), "secret/data/a/b");
        assert_eq!(build_path(Some("secret"), "v1", "foo"), "secret/foo");
        assert_eq!(
            build_path(Some("secret/path"), "v2", "foo"),
            "secret/path/data/foo"
        );
        assert_eq!(
            build_path(None, "v2", "secret/path/foo"),
            "secret/data/path/foo"
        );
        assert_eq!(
            build_path(None, "v2", "secret/path/data/foo"),
            "secret/path/data/foo"
        );
        assert_eq!(build_path(None, "v1", "secret/path/foo"), "secret/path/foo");
    }

    #[test]
    fn property_selection() {
        let m: Map<String, Value> =
            serde_json::from_value(json!({"a": "x", "n": 3, "o": {"b": "y"}, "o.b": "top"}))
                .unwrap();
        assert_eq!(secret_value(&m, "a").unwrap(), b"x");
        assert_eq!(secret_value(&m, "n").unwrap(), b"3");
        assert_eq!(
            secret_value(&m, "o.b").unwrap(),
            b"top",
            "top-level keys win over paths"
        );
        let m2: Map<String, Value> = serde_json::from_value(json!({"o": {"b": "y"}})).unwrap();
        assert_eq!(secret_value(&m2, "o.b").unwrap(), b"y");
        assert!(matches!(
            secret_value(&m2, "zz"),
            Err(ProviderError::NoProperty(_))
        ));
        let whole: Value = serde_json::from_slice(&secret_value(&m2, "").unwrap()).unwrap();
        assert_eq!(whole, json!({"o": {"b": "y"}}));
    }

    #[test]
    fn metadata_version_tracks_labels_and_annotations() {
        let mut m = ObjectMeta {
            generation: Some(3),
            ..Default::default()
        };
        let a = synced_resource_version(&m);
        assert!(a.starts_with("3-"));
        m.annotations = Some(BTreeMap::from([("force-sync".into(), "1".into())]));
        let b = synced_resource_version(&m);
        assert_ne!(a, b);
        assert_eq!(b, synced_resource_version(&m));
    }

    #[test]
    fn secret_validity_uses_label_and_data_hash() {
        let data = BTreeMap::from([("k".to_string(), ByteString(b"v".to_vec()))]);
        let mut s = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(MANAGED_LABEL.into(), "true".into())])),
                annotations: Some(BTreeMap::from([(
                    DATA_HASH_ANNOTATION.into(),
                    data_hash(&data),
                )])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        assert!(secret_is_valid(Some(&s), CreationPolicy::Owner));
        assert!(!secret_is_valid(None, CreationPolicy::Owner));
        assert!(secret_is_valid(None, CreationPolicy::None));
        s.data = Some(BTreeMap::from([(
            "k".to_string(),
            ByteString(b"edited".to_vec()),
        )]));
        assert!(!secret_is_valid(Some(&s), CreationPolicy::Owner));
    }

    #[test]
    fn ready_condition_keeps_transition_time() {
        let old = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
                                         {"type": "Other", "status": "True"}]});
        let c = ready_conditions(&old, true, "SecretSynced", "secret synced", Utc::now());
        assert_eq!(c.len(), 2);
        assert_eq!(c[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let c = ready_conditions(&old, false, "SecretSyncedError", "x", Utc::now());
        assert_ne!(c[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(c[1]["reason"], "SecretSyncedError");
    }
}
