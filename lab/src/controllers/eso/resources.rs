//! The resource types ESO serves, and their specs and statuses parsed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Error;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let s = EsSpec::parse(
            &json!({"secretStoreRef": {"name": "v"}, "target": {"name": "t", "creationPolicy": "Orphan"},
            "refreshPolicy": "OnChange", "dataFrom": [{"extract": {"key": "foo"}}]}),
            "es",
        )
        .unwrap();
        assert_eq!(
            (s.target_name.as_str(), s.creation_policy, s.refresh_policy),
            ("t", CreationPolicy::Orphan, RefreshPolicy::OnChange)
        );
        assert_eq!(s.data_from[0].key, "foo");
    }
}
