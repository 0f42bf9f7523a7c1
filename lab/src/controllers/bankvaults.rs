//! Bank-Vaults: the mutating webhook ([`mutate_pod`], called by the lab API
//! server on Pod CREATE) and `vault:` resolution at container start, as
//! vault-env does it inside a mutated container: log in to OpenBao with
//! Kubernetes auth as the Pod's ServiceAccount, read each
//! `vault:<path>#<key>[#<version>]` reference and substitute it. Called by
//! the kubelet for containers the webhook mutated; failures make the
//! container exit 1, as vault-env does.
//!
//! The webhook mutates any container whose env has a `vault:` value
//! (annotations optional; `mutate: skip` opts out): its command becomes
//! `/vault/vault-env` with the original entrypoint as args. A container the
//! webhook did not mutate (skipped, or admitted while the webhook failed
//! open) starts with the literal `vault:...` string. Lab simplification: no
//! `copy-vault-env` init container and no `/vault/` volume are added; the
//! lab kubelet runs vault-env's logic itself.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use serde_json::Value;

use super::Context;
use crate::faults::Fault;
use crate::truth::{self, step};

/// Prefix of every Bank-Vaults Pod annotation.
pub const ANNOTATION_PREFIX: &str = "vault.security.banzaicloud.io/";

/// What marks an env value as a reference to resolve.
pub const REFERENCE_PREFIX: &str = "vault:";

/// The command the webhook gives a mutated container.
pub const VAULT_ENV: &str = "/vault/vault-env";

/// Does a container (JSON) have an env value the webhook resolves?
fn has_vault_env(c: &Value) -> bool {
    c.get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| {
            e.get("value")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with(REFERENCE_PREFIX))
        })
}

/// The webhook's mutation of a Pod being created (JSON, as admitted): every
/// container with a `vault:` env value gets command `/vault/vault-env` and
/// its original entrypoint (command, else the image's: the lab knows
/// `secret-canary`'s) followed by its args as args. `mutate: skip` opts the
/// Pod out. Returns whether anything changed.
pub fn mutate_pod(pod: &mut Value) -> bool {
    let skip = pod
        .pointer(&format!(
            "/metadata/annotations/{}",
            json_pointer_escape(&format!("{ANNOTATION_PREFIX}mutate"))
        ))
        .and_then(Value::as_str)
        == Some("skip");
    if skip {
        return false;
    }
    let mut changed = false;
    for field in ["initContainers", "containers"] {
        let Some(cs) = pod
            .pointer_mut(&format!("/spec/{field}"))
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for c in cs.iter_mut().filter(|c| has_vault_env(c)) {
            let strings = |v: Option<&Value>| -> Vec<String> {
                v.and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            let command = strings(c.get("command"));
            if command.first().map(String::as_str) == Some(VAULT_ENV) {
                continue;
            }
            let entrypoint = if !command.is_empty() {
                command
            } else {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                if !crate::controllers::kubelet::image_is_canary(image) {
                    // The real webhook asks the registry; the lab cannot.
                    tracing::warn!(
                        image,
                        "bank-vaults webhook: unknown image entrypoint; container left unmutated"
                    );
                    continue;
                }
                vec!["secret-canary".to_string()]
            };
            let args: Vec<String> = entrypoint
                .into_iter()
                .chain(strings(c.get("args")))
                .collect();
            if let Some(m) = c.as_object_mut() {
                m.insert("command".into(), serde_json::json!([VAULT_ENV]));
                m.insert("args".into(), serde_json::json!(args));
                changed = true;
            }
        }
    }
    changed
}

fn json_pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Why resolution failed. Messages name paths and keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `vault:` value that is not `vault:<path>#<key>[#<version>]`.
    #[error("env {var}: malformed vault reference (expected vault:<path>#<key>[#<version>])")]
    BadReference {
        /// The variable holding it.
        var: String,
    },
    /// The store could not be reached (or the `store-unreachable` fault is on).
    #[error("vault at {addr} unreachable: {reason}")]
    Unreachable {
        /// The address tried.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No ServiceAccount token could be had from the TokenRequest API.
    #[error("TokenRequest for serviceaccount {namespace}/{name} failed: {source}")]
    Token {
        /// Namespace.
        namespace: String,
        /// ServiceAccount name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The TokenRequest API did not answer in time.
    #[error("TokenRequest for serviceaccount {namespace}/{name} timed out")]
    TokenTimeout {
        /// Namespace.
        namespace: String,
        /// ServiceAccount name.
        name: String,
    },
    /// Kubernetes auth login was refused.
    #[error(
        "vault login at auth/{mount}/login with role {role:?} failed: HTTP {status}: {detail}"
    )]
    Login {
        /// Auth mount path.
        mount: String,
        /// Role.
        role: String,
        /// HTTP status.
        status: u16,
        /// The store's error text (it never contains secret values).
        detail: String,
    },
    /// The token may not read the path.
    #[error("vault read {path}: permission denied (403)")]
    Forbidden {
        /// API path.
        path: String,
    },
    /// Nothing at the path.
    #[error("vault read {path}: secret not found")]
    NotFound {
        /// API path.
        path: String,
    },
    /// The secret has no such key.
    #[error("vault read {path}: key {key:?} not found")]
    MissingKey {
        /// API path.
        path: String,
        /// Key.
        key: String,
    },
    /// The store answered with an error status.
    #[error("vault read {path}: HTTP {status}")]
    Server {
        /// API path.
        path: String,
        /// HTTP status.
        status: u16,
    },
    /// The answer was not the JSON expected.
    #[error("vault read {path}: undecodable response")]
    Decode {
        /// API path.
        path: String,
    },
}

impl Error {
    /// A bounded name for logs and Pod status messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadReference { .. } => "bad_reference",
            Error::Unreachable { .. } => "unreachable",
            Error::Token { .. } | Error::TokenTimeout { .. } => "token_request",
            Error::Login { .. } => "login",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::MissingKey { .. } => "missing_key",
            Error::Server { .. } => "server_error",
            Error::Decode { .. } => "decode",
        }
    }
}

/// The webhook's settings for one Pod, from its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    /// `vault-addr` (default: the lab's OpenBao).
    pub addr: String,
    /// `vault-role` (default: the Pod's ServiceAccount name, as the webhook does).
    pub role: String,
    /// `vault-path`: the Kubernetes auth mount (default `kubernetes`).
    pub auth_path: String,
    /// `vault-ignore-missing-secrets` (default false).
    pub ignore_missing: bool,
    /// `vault-client-timeout` (default 10 s).
    pub timeout: Duration,
}

impl VaultConfig {
    /// The settings for a mutated `pod`, from its annotations (all optional).
    pub fn from_pod(pod: &Pod, default_addr: &str) -> VaultConfig {
        let ann = pod.annotations();
        let get = |k: &str| {
            ann.get(&format!("{ANNOTATION_PREFIX}{k}"))
                .map(|s| s.trim().to_string())
        };
        VaultConfig {
            addr: get("vault-addr")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| default_addr.to_string()),
            role: get("vault-role")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| service_account_of(pod)),
            auth_path: get("vault-path")
                .map(|s| s.trim_matches('/').to_string())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "kubernetes".to_string()),
            ignore_missing: get("vault-ignore-missing-secrets")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
            timeout: get("vault-client-timeout")
                .and_then(|s| humantime::parse_duration(&s).ok())
                .unwrap_or(Duration::from_secs(10)),
        }
    }
}

/// The Pod's ServiceAccount name (`default` when unset).
fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// One `vault:<path>#<key>[#<version>]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The raw API path (KV v2 needs `/data/`).
    pub path: String,
    /// The key inside the secret's data.
    pub key: String,
    /// A KV v2 version, if pinned.
    pub version: Option<u64>,
}

/// Parse an env value: `None` if it is not a `vault:` reference.
pub fn parse_reference(var: &str, value: &str) -> Option<Result<Reference, Error>> {
    let rest = value.strip_prefix(REFERENCE_PREFIX)?;
    let bad = || Error::BadReference {
        var: var.to_string(),
    };
    let mut parts = rest.split('#');
    let path = parts.next().unwrap_or_default().trim_start_matches('/');
    let key = parts.next().unwrap_or_default();
    let version = parts.next();
    if path.is_empty() || key.is_empty() || parts.next().is_some() {
        return Some(Err(bad()));
    }
    let version = match version {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return Some(Err(bad())),
        },
    };
    Some(Ok(Reference {
        path: path.to_string(),
        key: key.to_string(),
        version,
    }))
}

/// An env entry as the kubelet builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue {
    /// Variable name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Came from a Secret or the store (its digest is ground truth; never logged).
    pub secret: bool,
}

/// Does any value need resolving?
pub fn has_references(env: &[EnvValue]) -> bool {
    env.iter().any(|e| e.value.starts_with(REFERENCE_PREFIX))
}

/// Resolve every `vault:` value in `env` in place, as vault-env does before
/// exec'ing the app. Values it may ignore (missing secrets with
/// `vault-ignore-missing-secrets`) are removed. Records
/// [`step::VAULT_ENV_RESOLVED`] per resolved value.
pub async fn resolve(
    ctx: &Context,
    pod: &Pod,
    cfg: &VaultConfig,
    env: &mut Vec<EnvValue>,
) -> Result<(), Error> {
    let refs: Vec<(usize, Reference)> = env
        .iter()
        .enumerate()
        .filter_map(|(i, e)| parse_reference(&e.name, &e.value).map(|r| r.map(|r| (i, r))))
        .collect::<Result<_, _>>()?;
    if refs.is_empty() {
        return Ok(());
    }
    if ctx.knobs.is_on(Fault::StoreUnreachable) {
        return Err(Error::Unreachable {
            addr: cfg.addr.clone(),
            reason: "connection refused (store-unreachable fault)".into(),
        });
    }
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let sa = service_account_of(pod);
    let jwt = service_account_token(&ctx.client, &namespace, &sa).await?;
    resolve_with_jwt(ctx, pod, cfg, env, refs, &jwt).await
}

/// [`resolve`] with the ServiceAccount token given (vault-env reads the
/// Pod's projected token; the node agent passes one bound to the Pod).
pub async fn resolve_as(
    ctx: &Context,
    pod: &Pod,
    cfg: &VaultConfig,
    env: &mut Vec<EnvValue>,
    jwt: &str,
) -> Result<(), Error> {
    let refs: Vec<(usize, Reference)> = env
        .iter()
        .enumerate()
        .filter_map(|(i, e)| parse_reference(&e.name, &e.value).map(|r| r.map(|r| (i, r))))
        .collect::<Result<_, _>>()?;
    if refs.is_empty() {
        return Ok(());
    }
    if ctx.knobs.is_on(Fault::StoreUnreachable) {
        return Err(Error::Unreachable {
            addr: cfg.addr.clone(),
            reason: "connection refused (store-unreachable fault)".into(),
        });
    }
    resolve_with_jwt(ctx, pod, cfg, env, refs, jwt).await
}

async fn resolve_with_jwt(
    ctx: &Context,
    pod: &Pod,
    cfg: &VaultConfig,
    env: &mut Vec<EnvValue>,
    refs: Vec<(usize, Reference)>,
    jwt: &str,
) -> Result<(), Error> {
    let namespace = pod.namespace().unwrap_or_else(|| "default".into());
    let http = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .build()
        .map_err(|e| Error::Unreachable {
            addr: cfg.addr.clone(),
            reason: e.to_string(),
        })?;
    let token = login(&http, cfg, jwt).await?;

    let mut cache: HashMap<(String, Option<u64>), Option<SecretData>> = HashMap::new();
    let mut drop_idx = Vec::new();
    for (i, r) in refs {
        let cache_key = (r.path.clone(), r.version);
        let data = match cache.get(&cache_key) {
            Some(d) => d.clone(),
            None => {
                let d = read(&http, cfg, &token, &r).await?;
                cache.insert(cache_key, d.clone());
                d
            }
        };
        let Some(data) = data else {
            if cfg.ignore_missing {
                tracing::warn!(path = %r.path, var = %env[i].name, "vault secret missing; ignored as configured");
                drop_idx.push(i);
                continue;
            }
            return Err(Error::NotFound { path: r.path });
        };
        let value = match data.get(&r.key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => {
                return Err(Error::MissingKey {
                    path: r.path,
                    key: r.key,
                })
            }
            Some(other) => other.to_string(),
        };
        ctx.truth.record(
            step::VAULT_ENV_RESOLVED,
            &namespace,
            &pod.name_any(),
            Some(&truth::digest(value.as_bytes())),
        );
        env[i].value = value;
        env[i].secret = true;
    }
    for i in drop_idx.into_iter().rev() {
        env.remove(i);
    }
    Ok(())
}

/// A token for the ServiceAccount, as the projected token file holds.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pp = PostParams::default();
    let fut = api.create_token_request(name, &pp, &req);
    let resp = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| Error::TokenTimeout {
            namespace: namespace.into(),
            name: name.into(),
        })?
        .map_err(|source| Error::Token {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    Ok(resp.status.and_then(|s| s.token).unwrap_or_default())
}

fn unreachable(cfg: &VaultConfig, e: reqwest::Error) -> Error {
    Error::Unreachable {
        addr: cfg.addr.clone(),
        reason: if e.is_timeout() {
            "timed out".into()
        } else {
            "connection failed".into()
        },
    }
}

async fn login(http: &reqwest::Client, cfg: &VaultConfig, jwt: &str) -> Result<String, Error> {
    let url = format!(
        "{}/v1/auth/{}/login",
        cfg.addr.trim_end_matches('/'),
        cfg.auth_path
    );
    let body = serde_json::json!({"role": cfg.role, "jwt": jwt});
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(cfg, e))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let detail = body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let fail = |detail: String| Error::Login {
        mount: cfg.auth_path.clone(),
        role: cfg.role.clone(),
        status: status.as_u16(),
        detail: detail.chars().take(300).collect(),
    };
    if !status.is_success() {
        return Err(fail(detail));
    }
    body.pointer("/auth/client_token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| fail("no client_token in the answer".into()))
}

/// A secret's key/value map.
type SecretData = BTreeMap<String, Value>;

/// Read one path: `Ok(None)` when there is no secret there.
async fn read(
    http: &reqwest::Client,
    cfg: &VaultConfig,
    token: &str,
    r: &Reference,
) -> Result<Option<SecretData>, Error> {
    let mut url = format!("{}/v1/{}", cfg.addr.trim_end_matches('/'), r.path);
    if let Some(v) = r.version {
        url.push_str(&format!("?version={v}"));
    }
    let resp = http
        .get(url)
        .header("X-Vault-Token", token)
        .send()
        .await
        .map_err(|e| unreachable(cfg, e))?;
    let status = resp.status().as_u16();
    match status {
        404 => return Ok(None),
        403 => {
            return Err(Error::Forbidden {
                path: r.path.clone(),
            })
        }
        s if !(200..300).contains(&s) => {
            return Err(Error::Server {
                path: r.path.clone(),
                status,
            })
        }
        _ => {}
    }
    let v: Value = resp.json().await.map_err(|_| Error::Decode {
        path: r.path.clone(),
    })?;
    Ok(secret_data(&v))
}

/// The key/value map of a read: KV v2 nests it under `data.data` next to
/// `data.metadata`; KV v1 (and other engines) answer `data` itself. A
/// deleted KV v2 version has `data.data: null`: missing.
pub fn secret_data(v: &Value) -> Option<BTreeMap<String, Value>> {
    let data = v.get("data")?.as_object()?;
    let inner = if data.contains_key("metadata") && data.contains_key("data") {
        data.get("data")?.as_object()?
    } else {
        data
    };
    Some(inner.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ann: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.annotations = Some(
            ann.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        p
    }

    #[test]
    fn config_from_annotations() {
        // No annotation: defaults, the role is the ServiceAccount's name.
        let mut p = pod(&[("other", "x")]);
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("app".into()),
            ..Default::default()
        });
        let c = VaultConfig::from_pod(&p, "http://b");
        assert_eq!((c.addr.as_str(), c.role.as_str()), ("http://b", "app"));
        assert_eq!(VaultConfig::from_pod(&pod(&[]), "http://b").role, "default");
        let role = format!("{ANNOTATION_PREFIX}vault-role");
        let ign = format!("{ANNOTATION_PREFIX}vault-ignore-missing-secrets");
        let path = format!("{ANNOTATION_PREFIX}vault-path");
        let c = VaultConfig::from_pod(
            &pod(&[(&role, "canary"), (&ign, "true"), (&path, "/k8s/")]),
            "http://b",
        );
        assert_eq!(c.addr, "http://b");
        assert_eq!(c.role, "canary");
        assert_eq!(c.auth_path, "k8s");
        assert!(c.ignore_missing);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = VaultConfig::from_pod(&pod(&[(&role, "r")]), "http://b");
        assert_eq!(c.auth_path, "kubernetes");
        assert!(!c.ignore_missing);
    }

    #[test]
    fn webhook_mutates_containers_with_vault_values() {
        let mut p = serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "plain", "image": "nginx", "env": [{"name": "A", "value": "x"}]},
                {"name": "app", "image": "app", "command": ["/app"], "args": ["--x"],
                 "env": [{"name": "S", "value": "vault:secret/data/a#k"}]},
                {"name": "canary", "image": "ghcr.io/x/secret-canary:1", "args": ["canary"],
                 "env": [{"name": "S", "value": "vault:secret/data/a#k"}]}
            ]}
        });
        let orig = p.clone();
        assert!(mutate_pod(&mut p));
        let cs = &p["spec"]["containers"];
        assert_eq!(cs[0], orig["spec"]["containers"][0]);
        assert_eq!(cs[1]["command"], serde_json::json!([VAULT_ENV]));
        assert_eq!(cs[1]["args"], serde_json::json!(["/app", "--x"]));
        assert_eq!(cs[2]["command"], serde_json::json!([VAULT_ENV]));
        assert_eq!(
            cs[2]["args"],
            serde_json::json!(["secret-canary", "canary"])
        );
        // Idempotent; `mutate: skip` opts out.
        let again = p.clone();
        assert!(!mutate_pod(&mut p));
        assert_eq!(p, again);
        let mut skipped = orig.clone();
        skipped["metadata"]["annotations"] =
            serde_json::json!({"vault.security.banzaicloud.io/mutate": "skip"});
        let before = skipped.clone();
        assert!(!mutate_pod(&mut skipped));
        assert_eq!(skipped, before);
    }

    #[test]
    fn references_parse() {
        assert!(parse_reference("V", "plain").is_none());
        let r = parse_reference("V", "vault:secret/data/foo#value")
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            Reference {
                path: "secret/data/foo".into(),
                key: "value".into(),
                version: None
            }
        );
        let r = parse_reference("V", "vault:secret/data/foo#value#3")
            .unwrap()
            .unwrap();
        assert_eq!(r.version, Some(3));
        for bad in [
            "vault:secret/data/foo",
            "vault:#k",
            "vault:p#k#x",
            "vault:p#k#1#2",
        ] {
            let e = parse_reference("V", bad).unwrap().unwrap_err();
            assert_eq!(e.kind(), "bad_reference");
            assert!(e.to_string().contains("env V"));
        }
    }

    #[test]
    fn kv_v1_and_v2_shapes() {
        let v2 = serde_json::json!({"data": {"data": {"value": "x"}, "metadata": {"version": 1}}});
        assert_eq!(secret_data(&v2).unwrap()["value"], "x");
        let v1 = serde_json::json!({"data": {"value": "y"}});
        assert_eq!(secret_data(&v1).unwrap()["value"], "y");
        let deleted = serde_json::json!({"data": {"data": null, "metadata": {"version": 2}}});
        assert!(secret_data(&deleted).is_none());
    }
}
