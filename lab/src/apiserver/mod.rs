//! The lab's API server: one object store and one watch hub for every
//! resource type, with per-kind code only where the real API has special
//! behaviour (status subresource, generation, discovery, TokenReview).
//!
//! ```text
//! request ─> auth (JWT) ─> faults ─> route ─┬─ discovery        resources.rs
//!                                           ├─ get/list/watch   store.rs, selectors.rs, watch.rs
//!                                           ├─ create/update/patch/delete
//!                                           │                   objects.rs (admission), patch.rs
//!                                           ├─ TokenRequest / TokenReview   auth.rs
//!                                           └─ /lab/ admin API  admin.rs
//! ```
//!
//! `routes.rs` parses the path, picks the verb and serves each kind of
//! request; this file holds the server, its shared state and start-up.

mod admin;
mod auth;
mod deletion;
mod objects;
mod patch;
mod resources;
mod routes;
mod selectors;
mod status;
mod store;
mod watch;
mod webhooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::faults::{Fault, Knobs};
use resources::{NAMESPACES, SERVICE_ACCOUNTS};
use routes::{handle, read_body, value_response};
use status::ApiResult;

/// Tunables of one API server.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Events kept for watches that resume from a resourceVersion; older
    /// ones get 410 Expired.
    pub history_len: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK
    /// (about once a minute upstream, the default; one more comes 2 s
    /// before the watch's timeout).
    pub bookmark_interval: Duration,
    /// Request bodies above this get 413.
    pub max_body_bytes: usize,
    /// Watch length when the client sets no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            history_len: 4096,
            bookmark_interval: Duration::from_secs(60),
            max_body_bytes: 3 * 1024 * 1024,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// Requests served, per verb and resource (`secrets`, `pods/status`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// verb → resource → count.
    pub counts: BTreeMap<String, BTreeMap<String, u64>>,
}

impl RequestCounts {
    /// Requests with this verb on this resource.
    pub fn get(&self, verb: &str, resource: &str) -> u64 {
        self.counts
            .get(verb)
            .and_then(|m| m.get(resource))
            .copied()
            .unwrap_or(0)
    }

    /// Requests with this verb on any resource.
    pub fn verb(&self, verb: &str) -> u64 {
        self.counts.get(verb).map(|m| m.values().sum()).unwrap_or(0)
    }

    /// All counted requests.
    pub fn total(&self) -> u64 {
        self.counts.values().flat_map(|m| m.values()).sum()
    }

    /// What happened since `earlier` (for per-run costs).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let mut out = RequestCounts::default();
        for (verb, m) in &self.counts {
            for (res, n) in m {
                let d = n.saturating_sub(earlier.get(verb, res));
                if d > 0 {
                    out.counts
                        .entry(verb.clone())
                        .or_default()
                        .insert(res.clone(), d);
                }
            }
        }
        out
    }
}

/// State shared by every request of one server.
pub(crate) struct Shared {
    store: store::Store,
    tokens: auth::Tokens,
    knobs: Arc<Knobs>,
    options: ApiServerOptions,
    reset_tx: tokio::sync::watch::Sender<u64>,
    counts: parking_lot::Mutex<RequestCounts>,
    /// The same, per authenticated user.
    counts_by_user: parking_lot::Mutex<BTreeMap<String, RequestCounts>>,
}

/// The lab's Kubernetes API server. Cheap to clone.
#[derive(Clone)]
pub struct ApiServer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct ServeState {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    /// Token-less requests act as the admin (the old `--insecure-port`).
    anonymous_admin: bool,
}

/// Could not build a kube client for the lab.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The generated kubeconfig was refused.
    #[error("the lab kubeconfig was not accepted: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The client could not be built.
    #[error("could not build a kube client: {0}")]
    Client(#[from] kube::Error),
}

/// A kubeconfig for `server` (`http://127.0.0.1:PORT`) with a bearer token,
/// for kubectl or kube-rs.
pub fn kubeconfig_yaml(server: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: default\ncurrent-context: lab\nusers:\n- name: lab\n  user:\n    token: {token}\n"
    )
}

/// A kube-rs client for the lab at `server` with `token`.
pub async fn kube_client(server: &str, token: &str) -> Result<kube::Client, ClientError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig_yaml(server, token))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

impl ApiServer {
    /// A server with default options.
    pub fn new(knobs: Arc<Knobs>) -> Self {
        Self::with_options(knobs, ApiServerOptions::default())
    }

    /// A server with these options. It starts with the namespaces a fresh
    /// cluster has (`default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`), each with its `default` ServiceAccount.
    pub fn with_options(knobs: Arc<Knobs>, options: ApiServerOptions) -> Self {
        let (reset_tx, _) = tokio::sync::watch::channel(0);
        let server = ApiServer {
            shared: Arc::new(Shared {
                store: store::Store::new(options.history_len),
                tokens: auth::Tokens::new(),
                knobs,
                options,
                reset_tx,
                counts: parking_lot::Mutex::new(RequestCounts::default()),
                counts_by_user: parking_lot::Mutex::new(BTreeMap::new()),
            }),
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = create_namespace(&server.shared, ns);
        }
        server
    }

    /// Serve on `listener` until `cancel`; open watches end when it fires.
    /// Every request needs a bearer token this server issued.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        self.serve_mode(listener, cancel, false).await
    }

    /// Serve like the real API server's old `--insecure-port`: requests
    /// without an `Authorization` header act as the admin. This is the port
    /// for kubectl, which never sends a bearer token over plain HTTP
    /// (client-go sets credentials only for TLS connections).
    pub async fn serve_insecure(
        &self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        self.serve_mode(listener, cancel, true).await
    }

    async fn serve_mode(
        &self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
        anonymous_admin: bool,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let state = ServeState {
            shared: self.shared.clone(),
            cancel: cancel.clone(),
            anonymous_admin,
        };
        let app = Router::new().fallback(handle).with_state(state);
        // Watch events are small writes: Nagle would hold them back.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let faults = tokio::spawn(watch_drop_fault(self.clone(), cancel.clone()));
        let server =
            axum::serve(listener, app).with_graceful_shutdown(cancel.clone().cancelled_owned());
        let result = tokio::select! {
            r = std::future::IntoFuture::into_future(server) => r,
            // Connections that do not finish on their own do not hold shutdown up.
            _ = async { cancel.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => Ok(()),
        };
        faults.abort();
        result
    }

    /// Bind `127.0.0.1:0`, serve in a background task until `cancel`, and
    /// return the address.
    pub async fn listen_local(&self, cancel: CancellationToken) -> std::io::Result<SocketAddr> {
        self.listen_local_mode(cancel, false).await
    }

    /// Like [`ApiServer::listen_local`], with [`ApiServer::serve_insecure`]
    /// semantics (for kubectl).
    pub async fn listen_local_insecure(
        &self,
        cancel: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        self.listen_local_mode(cancel, true).await
    }

    async fn listen_local_mode(
        &self,
        cancel: CancellationToken,
        anonymous_admin: bool,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.serve_mode(listener, cancel, anonymous_admin).await {
                tracing::error!(error = %e, "lab API server stopped");
            }
        });
        Ok(addr)
    }

    /// The administrator's bearer token.
    pub fn admin_token(&self) -> String {
        self.shared.tokens.admin().to_string()
    }

    /// A ServiceAccount token (JWT, valid 24 h) for `namespace/service_account`.
    /// The ServiceAccount need not exist; its uid is used when it does.
    pub fn issue_token(&self, namespace: &str, service_account: &str) -> String {
        issue_token(&self.shared, namespace, service_account)
    }

    /// Requests served so far.
    pub fn request_counts(&self) -> RequestCounts {
        self.shared.counts.lock().clone()
    }

    /// Requests served so far to one user (`system:serviceaccount:NS:NAME`
    /// for a token of [`ApiServer::issue_token`]): what one client cost,
    /// without the lab's controllers.
    pub fn request_counts_of(&self, username: &str) -> RequestCounts {
        self.shared
            .counts_by_user
            .lock()
            .get(username)
            .cloned()
            .unwrap_or_default()
    }

    /// Cut every open watch, as an API server restart does.
    pub fn reset_watches(&self) {
        self.shared.reset_tx.send_modify(|n| *n += 1);
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }
}

fn issue_token(shared: &Shared, namespace: &str, service_account: &str) -> String {
    let key = (
        SERVICE_ACCOUNTS,
        namespace.to_string(),
        service_account.to_string(),
    );
    let uid = shared
        .store
        .get(&key)
        .and_then(|sa| {
            sa.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| {
            let d =
                <sha2::Sha256 as sha2::Digest>::digest(format!("{namespace}/{service_account}"));
            let h = hex::encode(d);
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        });
    shared
        .tokens
        .service_account(namespace, service_account, &uid, &[], 24 * 3600, None)
        .0
}

fn create_namespace(shared: &Shared, name: &str) -> ApiResult<()> {
    let def = resources::def(NAMESPACES);
    let obj = objects::prepare_create(def, None, json!({"metadata": {"name": name}}))?;
    shared.store.create(NAMESPACES, "", obj)?;
    ensure_default_sa(shared, name);
    Ok(())
}

/// The ServiceAccount controller's job: every namespace has `default`.
fn ensure_default_sa(shared: &Shared, ns: &str) {
    let def = resources::def(SERVICE_ACCOUNTS);
    if let Ok(sa) = objects::prepare_create(def, Some(ns), json!({"metadata": {"name": "default"}}))
    {
        let _ = shared.store.create(SERVICE_ACCOUNTS, ns, sa);
    }
}

/// While `watch-drop` is on, cut open watches the moment it is switched on
/// (new ones are cut by the watch itself).
async fn watch_drop_fault(server: ApiServer, cancel: CancellationToken) {
    let knobs = server.shared.knobs.clone();
    let mut was_on = false;
    loop {
        let changed = knobs.changed();
        let on = knobs.is_on(Fault::WatchDrop);
        if on && !was_on {
            server.reset_watches();
        }
        was_on = on;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = changed => {}
            // Belt and braces: Notify only wakes current waiters.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
