//! The Vault provider: log in with the store's auth, read KV v1/v2 paths
//! the way ESO maps them, pick properties out of the answer.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::resources::{ClusterSecretStore, EsSpec, SecretStore, StoreRef};
use super::{Error, State};
use crate::controllers::api::kube_call;
use crate::faults::Fault;

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

/// Log in with the store's auth and read every `data[]` and `dataFrom[]` entry.
pub(super) async fn fetch(
    st: &State,
    spec: &EsSpec,
    ns: &str,
) -> Result<BTreeMap<String, ByteString>, Error> {
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
}
