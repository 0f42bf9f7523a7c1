//! The Bank-Vaults mutation as a real admission webhook: an HTTPS server
//! (rustls, a serving certificate from the lab's CA) that the real API server
//! calls on Pod CREATE through a MutatingWebhookConfiguration
//! (`failurePolicy: Ignore` by default, as the chart's `podsFailurePolicy`).
//!
//! The real vault-secrets-webhook cannot be built here (the Go module proxy
//! answers 403 for it), so this serves the lab's version of its mutation
//! (`controllers::bankvaults::mutate_pod`, the simulated API server's too):
//! every container with an env value starting `vault:` (unless the Pod says
//! `vault.security.banzaicloud.io/mutate: skip`) gets command
//! `/vault/vault-env` with its original command as args. The node agent runs
//! such a container as vault-env would: it logs in to OpenBao with the Pod's
//! bound ServiceAccount token, resolves the references, then starts the
//! original command. Simplified: no init container or `/vault/` volume (the
//! node agent needs no copied binary). A Pod created while the webhook is
//! down starts unmutated (Ignore): the literal `vault:` string is its value.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::controllers::bankvaults;

/// The program a mutated container starts with (vault-env's path).
pub use crate::controllers::bankvaults::VAULT_ENV;

/// The MutatingWebhookConfiguration's name.
pub const CONFIGURATION_NAME: &str = "secret-canary-lab-vault-secrets-webhook";

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The serving certificate or key.
    #[error("Bank-Vaults webhook: serving certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The listener.
    #[error("Bank-Vaults webhook: listening on 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
}

/// The JSONPatch that mutates `pod`, or `None` when nothing needs mutating:
/// the lab's mutation ([`bankvaults::mutate_pod`], the one the simulated API
/// server applies) expressed as `add` operations on the command and args of
/// each container it changed.
pub fn mutation(pod: &Value) -> Option<Vec<Value>> {
    let mut mutated = pod.clone();
    if !bankvaults::mutate_pod(&mut mutated) {
        return None;
    }
    let mut ops = Vec::new();
    for field in ["initContainers", "containers"] {
        let pointer = format!("/spec/{field}");
        let (Some(before), Some(after)) = (
            pod.pointer(&pointer).and_then(Value::as_array),
            mutated.pointer(&pointer).and_then(Value::as_array),
        ) else {
            continue;
        };
        for (i, (b, a)) in before.iter().zip(after).enumerate() {
            if b == a {
                continue;
            }
            for key in ["command", "args"] {
                ops.push(
                    json!({"op": "add", "path": format!("{pointer}/{i}/{key}"), "value": a[key]}),
                );
            }
        }
    }
    (!ops.is_empty()).then_some(ops)
}

/// The answer to one AdmissionReview.
pub fn review(request: &Value) -> Value {
    let uid = request
        .pointer("/request/uid")
        .cloned()
        .unwrap_or(json!(""));
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(ops) = request.pointer("/request/object").and_then(mutation) {
        let patch = serde_json::to_vec(&ops).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
        let namespace = request
            .pointer("/request/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        tracing::info!(namespace, "Bank-Vaults webhook mutated a Pod");
    }
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// A TLS listener for axum: the handshake happens in `accept` (bounded).
pub(crate) struct TlsListener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "lab HTTPS server (webhook, kubelet API): accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lab HTTPS server (webhook, kubelet API): TLS handshake failed")
                }
                Err(_) => tracing::warn!(
                    "lab HTTPS server (webhook, kubelet API): TLS handshake timed out"
                ),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |p: &Path, reason: String| Error::Cert {
        path: p.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(cert, e.to_string()))
}

/// A running webhook server.
pub struct Webhook {
    /// `https://127.0.0.1:PORT/pods`.
    pub url: String,
    /// The server task (stops when the token given to [`Webhook::start`] fires).
    pub task: JoinHandle<()>,
}

impl Webhook {
    /// Serve the mutation on a free loopback port with `cert`/`key`.
    pub async fn start(
        cert: &Path,
        key: &Path,
        cancel: CancellationToken,
    ) -> Result<Webhook, Error> {
        Webhook::start_on(cert, key, 0, cancel).await
    }

    /// [`Webhook::start`] on a given loopback port (0: any free one): the
    /// `webhook-down` fault serves it again where its configuration points.
    pub async fn start_on(
        cert: &Path,
        key: &Path,
        port: u16,
        cancel: CancellationToken,
    ) -> Result<Webhook, Error> {
        let config = server_config(cert, key)?;
        let tcp = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(Error::Bind)?;
        let addr = tcp.local_addr().map_err(Error::Bind)?;
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let app = Router::new().route(
            "/pods",
            post(|Json(r): Json<Value>| async move { Json(review(&r)) }),
        );
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Bank-Vaults webhook stopped");
            }
        });
        Ok(Webhook {
            url: format!("https://{addr}/pods"),
            task,
        })
    }
}

/// The MutatingWebhookConfiguration that sends Pod CREATEs to `url`.
pub fn configuration(url: &str, ca_pem: &str, failure_policy: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIGURATION_NAME},
        "webhooks": [{
            "name": "pods.vault-secrets-webhook.secret-canary-lab",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
            "clientConfig": {
                "url": url,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }],
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "kube-node-lease", "kube-public"],
            }]},
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutates_only_containers_with_references() {
        let pod = json!({
            "metadata": {"annotations": {}},
            "spec": {"containers": [
                {"name": "a", "image": "secret-canary:latest", "command": ["secret-canary", "canary"],
                 "env": [{"name": "V", "value": "vault:secret/data/x#value"}]},
                {"name": "b", "image": "secret-canary:latest", "env": [{"name": "V", "value": "plain"}]},
                {"name": "c", "image": "secret-canary", "args": ["canary"],
                 "env": [{"name": "V", "value": "vault:secret/data/x#value"}]},
            ]},
        });
        let ops = mutation(&pod).unwrap();
        assert_eq!(ops.len(), 4);
        assert_eq!(ops[0]["value"], json!([VAULT_ENV]));
        assert_eq!(ops[1]["value"], json!(["secret-canary", "canary"]));
        assert_eq!(ops[2]["path"], "/spec/containers/2/command");
        assert_eq!(ops[3]["value"], json!(["secret-canary", "canary"]));

        let mut skip = pod.clone();
        skip["metadata"]["annotations"]["vault.security.banzaicloud.io/mutate"] = json!("skip");
        assert!(mutation(&skip).is_none());

        let r = review(&json!({"request": {"uid": "u1", "object": pod}}));
        assert_eq!(r["response"]["uid"], "u1");
        assert_eq!(r["response"]["allowed"], true);
        assert_eq!(r["response"]["patchType"], "JSONPatch");
        let plain =
            review(&json!({"request": {"uid": "u2", "object": {"spec": {"containers": []}}}}));
        assert!(plain["response"].get("patch").is_none());
    }
}
