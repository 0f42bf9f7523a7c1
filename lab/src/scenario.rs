//! A lab scenario: knobs, initial store values, the Kubernetes objects to
//! create and the OpenBao roles to set up, plus the prober config that goes
//! with it. The reference scenario ships in `lab/scenarios/reference.yaml`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::faults::{Knob, Latency};

/// The reference scenario's text.
pub const REFERENCE: &str = include_str!("../scenarios/reference.yaml");

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("could not read scenario {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is not a scenario.
    #[error("invalid scenario: {0}")]
    Parse(#[from] serde_norway::Error),
    /// An object lacks apiVersion, kind or metadata.name.
    #[error("invalid scenario: objects[{index}] needs apiVersion, kind and metadata.name")]
    Object {
        /// Index in `objects`.
        index: usize,
    },
}

/// A parsed scenario, placeholders already substituted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Latency knobs to set at start.
    #[serde(default)]
    pub knobs: BTreeMap<Knob, Latency>,
    /// KV v2 values to write before anything else.
    #[serde(default)]
    pub store: Vec<StoreValue>,
    /// Kubernetes objects to create, in order.
    #[serde(default)]
    pub objects: Vec<serde_json::Value>,
    /// OpenBao Kubernetes-auth roles.
    #[serde(default)]
    pub vault_roles: Vec<VaultRole>,
    /// The prober configuration for this scenario (YAML text).
    #[serde(default)]
    pub prober: Option<String>,
}

/// A KV v2 value under the `secret/` mount.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreValue {
    /// Path inside the mount.
    pub path: String,
    /// The key/value pairs.
    pub data: BTreeMap<String, String>,
}

/// A Kubernetes-auth role in OpenBao.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultRole {
    /// Role name.
    pub name: String,
    /// Bound ServiceAccount name.
    pub service_account: String,
    /// Bound namespace.
    pub namespace: String,
    /// `read-canary` (read `secret/data/canary/*`) or `write-canary` (also write it).
    pub policy: String,
}

impl Scenario {
    /// Parse scenario text, replacing `${KEY}` placeholders from `vars`.
    pub fn parse(text: &str, vars: &BTreeMap<&str, String>) -> Result<Scenario, Error> {
        let mut text = text.to_string();
        for (k, v) in vars {
            text = text.replace(&format!("${{{k}}}"), v);
        }
        let s: Scenario = serde_norway::from_str(&text)?;
        for (index, o) in s.objects.iter().enumerate() {
            let ok = o.get("apiVersion").and_then(|v| v.as_str()).is_some()
                && o.get("kind").and_then(|v| v.as_str()).is_some()
                && o.pointer("/metadata/name")
                    .and_then(|v| v.as_str())
                    .is_some();
            if !ok {
                return Err(Error::Object { index });
            }
        }
        Ok(s)
    }

    /// Load a scenario file, or the reference scenario when `path` is `None`.
    pub fn load(path: Option<&Path>, vars: &BTreeMap<&str, String>) -> Result<Scenario, Error> {
        match path {
            None => Scenario::parse(REFERENCE, vars),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                Scenario::parse(&text, vars)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_scenario_parses_with_substitutions() {
        let vars = BTreeMap::from([
            ("VAULT_ADDR", "http://127.0.0.1:1".to_string()),
            ("DIR", "/tmp/x".to_string()),
        ]);
        let s = Scenario::parse(REFERENCE, &vars).unwrap();
        assert_eq!(s.store.len(), 3);
        assert!(s.objects.len() >= 8);
        let prober = s.prober.unwrap();
        assert!(prober.contains("/tmp/x/kubeconfig"));
        assert!(!prober.contains("${"));
        let text = serde_json::to_string(&s.objects).unwrap();
        assert!(text.contains("http://127.0.0.1:1"));
    }

    #[test]
    fn objects_need_kind_and_name() {
        let err = Scenario::parse(
            "objects: [{apiVersion: v1, kind: Secret}]",
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("objects[0]"), "{err}");
    }
}
