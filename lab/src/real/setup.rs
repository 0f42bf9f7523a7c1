//! What runs beside the real control plane, with its own identity: ESO (the
//! real controller process, with a ServiceAccount bound to a ClusterRole like
//! the chart's), the lab's Reloader (a client of the real API server as its
//! own ServiceAccount) and OpenBao's token reviewer (`system:auth-delegator`).
//! Each gets a kubeconfig with a bearer token from the TokenRequest API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use super::{Error, RealCluster};

/// ESO's controller identity: namespace and ServiceAccount.
pub const ESO_NAMESPACE: &str = "external-secrets";
/// ESO's ServiceAccount.
pub const ESO_SERVICE_ACCOUNT: &str = "external-secrets";
/// Reloader's namespace and ServiceAccount.
pub const RELOADER_NAMESPACE: &str = "reloader";
/// Reloader's ServiceAccount.
pub const RELOADER_SERVICE_ACCOUNT: &str = "reloader";
/// OpenBao's TokenReview identity (in `kube-system`).
pub const REVIEWER_SERVICE_ACCOUNT: &str = "openbao-token-reviewer";

/// How long the components' tokens live (longer than any lab run).
const TOKEN_SECONDS: i64 = 48 * 3600;

fn client_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Client(format!("{what}: {e}"))
}

/// The RBAC objects, in creation order: namespaces, ServiceAccounts,
/// ClusterRoles (ESO's as in its chart; Reloader's as in its chart, for the
/// workloads the lab's Reloader patches), bindings.
pub fn rbac_objects() -> Vec<Value> {
    let sa = |ns: &str, name: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}});
    let ns =
        |name: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let binding = |name: &str, role: &str, ns: &str, sa: &str| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        })
    };
    let eso_kinds = [
        "secretstores",
        "clustersecretstores",
        "externalsecrets",
        "clusterexternalsecrets",
        "pushsecrets",
        "clusterpushsecrets",
    ];
    let eso_writes: Vec<String> = eso_kinds
        .iter()
        .flat_map(|k| {
            [
                k.to_string(),
                format!("{k}/status"),
                format!("{k}/finalizers"),
            ]
        })
        .collect();
    let eso_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "external-secrets-controller"},
        "rules": [
            {"apiGroups": ["external-secrets.io"], "resources": eso_kinds, "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["external-secrets.io"], "resources": eso_writes, "verbs": ["get", "update", "patch"]},
            {"apiGroups": ["generators.external-secrets.io"], "resources": ["generatorstates"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]},
            {"apiGroups": ["generators.external-secrets.io"],
             "resources": ["acraccesstokens", "clustergenerators", "ecrauthorizationtokens", "fakes",
                           "gcraccesstokens", "githubaccesstokens", "quayaccesstokens", "passwords",
                           "stssessiontokens", "uuids", "vaultdynamicsecrets", "webhooks", "grafanas"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["get", "list", "watch", "create", "update", "delete", "patch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": ["external-secrets.io"], "resources": ["externalsecrets", "pushsecrets"],
             "verbs": ["create", "update", "delete"]},
        ],
    });
    let reloader_role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "reloader"},
        "rules": [
            {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["list", "get", "watch"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "daemonsets", "statefulsets"],
             "verbs": ["list", "get", "update", "patch"]},
            {"apiGroups": ["batch"], "resources": ["cronjobs", "jobs"], "verbs": ["list", "get", "create", "update", "patch"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    });
    vec![
        ns(ESO_NAMESPACE),
        ns(RELOADER_NAMESPACE),
        sa(ESO_NAMESPACE, ESO_SERVICE_ACCOUNT),
        sa(RELOADER_NAMESPACE, RELOADER_SERVICE_ACCOUNT),
        sa("kube-system", REVIEWER_SERVICE_ACCOUNT),
        eso_role,
        reloader_role,
        binding(
            "external-secrets-controller",
            "external-secrets-controller",
            ESO_NAMESPACE,
            ESO_SERVICE_ACCOUNT,
        ),
        binding(
            "reloader",
            "reloader",
            RELOADER_NAMESPACE,
            RELOADER_SERVICE_ACCOUNT,
        ),
        binding(
            "openbao-token-reviewer",
            "system:auth-delegator",
            "kube-system",
            REVIEWER_SERVICE_ACCOUNT,
        ),
    ]
}

/// Create `objects` in order through the admin client.
pub async fn create_all(client: &kube::Client, objects: &[Value]) -> Result<(), Error> {
    for o in objects {
        crate::lab::create_object(client, o)
            .await
            .map_err(|e| client_err("creating an object", e))?;
    }
    Ok(())
}

/// A token of ServiceAccount `ns/name` from the TokenRequest API.
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Result<String, Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let what = format!("token request for serviceaccount {ns}/{name}");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        api.create_token_request(name, &PostParams::default(), &req),
    )
    .await
    .map_err(|_| client_err(&what, "timed out"))?
    .map_err(|e| client_err(&what, e))?;
    Ok(r.status.and_then(|s| s.token).unwrap_or_default())
}

/// A kubeconfig `DIR/pki/<file>` for ServiceAccount `ns/name`.
pub async fn service_account_kubeconfig(
    cluster: &RealCluster,
    ns: &str,
    name: &str,
    file: &str,
) -> Result<PathBuf, Error> {
    let token = service_account_token(&cluster.client(), ns, name).await?;
    let path = cluster.dir.join("pki").join(file);
    super::write_token_kubeconfig(
        &path,
        &cluster.api_url,
        &cluster.ca_pem,
        &token,
        &format!("system:serviceaccount:{ns}:{name}"),
    )?;
    Ok(path)
}

/// Every YAML document of the CRD files in `dir`.
pub fn read_crds(dir: &Path) -> Result<Vec<Value>, Error> {
    let io = |source| Error::Dir {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| Error::Dir {
            path: f.display().to_string(),
            source,
        })?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| client_err(&format!("CRD file {}", f.display()), e))?;
            if v.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition") {
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Apply ESO's CRDs (all at once) and wait until each is Established.
pub async fn install_eso_crds(cluster: &RealCluster, limit: Duration) -> Result<(), Error> {
    let dir = cluster.binaries.eso_crds();
    let crds = read_crds(&dir)?;
    if crds.is_empty() {
        return Err(client_err(
            "ESO CRDs",
            format!(
                "none found in {} (run scripts/build-real.sh)",
                dir.display()
            ),
        ));
    }
    let client = cluster.client();
    let creates = crds.iter().map(|c| crate::lab::create_object(&client, c));
    for r in futures::future::join_all(creates).await {
        r.map_err(|e| client_err("creating an ESO CRD", e))?;
    }
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let api: Api<CustomResourceDefinition> = Api::all(client);
    super::wait_ready(&cluster.procs, "kube-apiserver", limit, || async {
        for n in &names {
            let established = match api.get_opt(n).await {
                Ok(Some(c)) => c.status.and_then(|s| s.conditions).is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                }),
                Ok(None) => false,
                Err(e) => return Err(format!("get CRD {n}: {e}")),
            };
            if !established {
                return Err(format!("CRD {n} not Established yet"));
            }
        }
        Ok(())
    })
    .await
}

/// The ESO controller's command line: `concurrent` reconcile workers (its
/// default is 1), metrics on a loopback port, no leader election (one
/// instance), RFC 3339 log times.
pub fn eso_args(metrics_port: u16, concurrent: usize) -> Vec<String> {
    vec![
        format!("--concurrent={}", concurrent.max(1)),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        "--enable-leader-election=false".into(),
        "--loglevel=info".into(),
        "--zap-time-encoding=rfc3339nano".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_objects_are_complete() {
        let objs = rbac_objects();
        for o in &objs {
            assert!(o["apiVersion"].is_string() && o["kind"].is_string());
            assert!(o.pointer("/metadata/name").is_some());
        }
        let text = serde_json::to_string(&objs).unwrap();
        assert!(text.contains("serviceaccounts/token"));
        assert!(text.contains("system:auth-delegator"));
        assert!(text.contains("externalsecrets/status"));
    }
}
