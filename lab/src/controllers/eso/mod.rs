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

//!
//! ```text
//! mod.rs        the controller: watches ExternalSecrets and managed Secrets
//! reconcile.rs  one reconcile: refresh check -> fetch -> Secret -> status
//! resources.rs  ExternalSecret, SecretStore, ClusterSecretStore; spec and status parsed
//! refresh.rs    ESO's refresh rules, requeue and error back-off
//! provider.rs   the Vault provider: login, KV paths, properties
//! secret.rs     the target Secret, per creationPolicy
//! status.rs     the Ready condition and the error status
//! ```

mod provider;
mod reconcile;
mod refresh;
mod resources;
mod secret;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use provider::{build_path, secret_value, ProviderError};
pub use refresh::{
    backoff_delay, requeue_after, secret_is_valid, should_refresh, synced_resource_version,
};
pub use resources::{
    parse_go_duration, ClusterSecretStore, CreationPolicy, EsSpec, EsStatus, ExternalSecret,
    RefreshPolicy, RemoteRef, SecretStore, StoreRef,
};
pub use secret::data_hash;

use super::api::{Backoffs, KubeError};
use super::Context;
use reconcile::reconcile;

/// Label ESO puts on every Secret it manages.
pub const MANAGED_LABEL: &str = "reconcile.external-secrets.io/managed";
/// Annotation holding a hash of the managed Secret's data, to notice edits.
pub const DATA_HASH_ANNOTATION: &str = "reconcile.external-secrets.io/data-hash";
/// The finalizer ESO puts on every ExternalSecret.
pub const FINALIZER: &str = "externalsecrets.external-secrets.io/externalsecret-cleanup";
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

/// Reconcile workers of ESO's default `--concurrent=1`: ExternalSecrets
/// sync one after another.
pub const DEFAULT_WORKERS: usize = 1;

/// Run the ESO controller until `cancel` fires, with one reconcile worker
/// ([`DEFAULT_WORKERS`], as ESO's default).
pub async fn run(ctx: Context, cancel: CancellationToken) -> Result<(), Error> {
    run_with_workers(ctx, DEFAULT_WORKERS, cancel).await
}

/// The controller's configuration for `workers` concurrent reconciles
/// (ESO's `--concurrent`; 0 is taken as 1). As with controller-runtime,
/// kube-rs's scheduler never hands one ExternalSecret to two workers at
/// once: an object triggered while it is being reconciled waits until that
/// reconcile ends (tested in `tests::one_worker_per_object`).
fn controller_config(workers: usize) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(u16::try_from(workers.max(1)).unwrap_or(u16::MAX))
}

/// Run the ESO controller until `cancel` fires with `workers` concurrent
/// reconciles (ESO's `--concurrent`), never two on the same ExternalSecret.
pub async fn run_with_workers(
    ctx: Context,
    workers: usize,
    cancel: CancellationToken,
) -> Result<(), Error> {
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
        .with_config(controller_config(workers))
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

impl State {
    /// Now by ESO's clock: the true clock plus the `eso-clock-skew` knob.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.ctx.knobs.offset(crate::faults::Knob::EsoClockSkew)
    }
}

fn error_policy(es: Arc<ExternalSecret>, _err: &Error, st: Arc<State>) -> Action {
    let key = (es.namespace().unwrap_or_default(), es.name_any());
    Action::requeue(st.backoff.next(key, &synced_resource_version(&es.metadata)))
}

#[cfg(test)]
mod tests;
