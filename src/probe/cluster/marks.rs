//! Marks: what a pod template (or a Pod made from it) carries about the
//! change that made it (`restartedAt`, Reloader's hashes of the Secret).

use std::collections::BTreeMap;

/// Pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Pod-template annotation Reloader's `annotations` strategy writes: JSON
/// with the Secret's `name` and `hash`.
pub const LAST_RELOADED_FROM: &str = "reloader.stakater.com/last-reloaded-from";

/// What a pod template (or a Pod made from one) says about the change that
/// made it: the `restartedAt` annotation and the Reloader hashes it carries.
/// A Pod and its template have the same marks, so the Pods of the template
/// that carries a run's value are the Pods whose marks are that template's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Marks {
    /// `kubectl.kubernetes.io/restartedAt`.
    pub restarted_at: Option<String>,
    /// Reloader hashes for the chain's Secret: the value of the
    /// `STAKATER_<NAME>_SECRET` env var (env-vars strategy) in any
    /// container, and the `hash` of `reloader.stakater.com/last-reloaded-from`
    /// (annotations strategy). Hashes of the Secret's data, never values.
    pub reloader: std::collections::BTreeSet<String>,
}

impl Marks {
    /// The marks of a template (or Pod): its annotations and containers.
    /// `secret`: the chain's Secret (its env var and annotation name it);
    /// without one, every `STAKATER_*_SECRET` variable counts.
    pub fn of(
        annotations: Option<&BTreeMap<String, String>>,
        spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
        secret: Option<&str>,
    ) -> Marks {
        let restarted_at = annotations.and_then(|a| a.get(RESTARTED_AT)).cloned();
        let var = secret.map(reloader_env_var);
        let mut reloader = std::collections::BTreeSet::new();
        let containers = spec.into_iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        });
        for c in containers {
            for e in c.env.iter().flatten() {
                let ours = match &var {
                    Some(v) => e.name == *v,
                    None => e.name.starts_with("STAKATER_") && e.name.ends_with("_SECRET"),
                };
                if let (true, Some(v)) = (ours, &e.value) {
                    reloader.insert(v.clone());
                }
            }
        }
        if let Some(v) = annotations
            .and_then(|a| a.get(LAST_RELOADED_FROM))
            .and_then(|v| serde_json::from_str::<serde_json::Value>(v).ok())
        {
            let name = v.get("name").and_then(|n| n.as_str());
            let kind_ok = v
                .get("type")
                .and_then(|t| t.as_str())
                .is_none_or(|t| t.eq_ignore_ascii_case("secret"));
            let name_ok = secret.is_none_or(|s| name == Some(s));
            if let (true, true, Some(h)) =
                (kind_ok, name_ok, v.get("hash").and_then(|h| h.as_str()))
            {
                reloader.insert(h.to_string());
            }
        }
        Marks {
            restarted_at,
            reloader,
        }
    }
}

/// Reloader's env var for a Secret: `STAKATER_<NAME>_SECRET`, the name
/// upper-cased with every run of other characters made one `_`.
pub fn reloader_env_var(secret: &str) -> String {
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

/// Reloader's hash of a Secret: SHA-1 (hex) of its sorted `key=value`
/// entries joined with `;`. A digest of the data, never logged.
pub fn reloader_hash(data: &BTreeMap<String, k8s_openapi::ByteString>) -> String {
    use sha1::Digest as _;
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
    hex::encode(sha1::Sha1::digest(entries.join(&b';')))
}
