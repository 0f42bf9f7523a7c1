//! The cluster side of a probe: long-lived kube-rs watchers on the chain's
//! ExternalSecret, Secret, Deployment and canary Pods, each reduced to the
//! few fields a run needs and stamped with the arrival time of its event.
//! Watchers are shared by every probe of the process that follows the same
//! objects ([`Watches`]).
//!
//! A run never lists: it subscribes to a [`View`] (latest state plus a short
//! log of recent [`Change`]s, in arrival order across all of a probe's
//! watchers) and reads each milestone's time from the change that showed it.

mod error;
mod follow;
mod marks;
mod shared;
mod state;
mod view;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::{refusing_webhook, ClusterError};
pub use follow::code_reason;
pub use marks::{reloader_env_var, reloader_hash, Marks, LAST_RELOADED_FROM, RESTARTED_AT};
pub use shared::Watches;
pub use state::{Condition, DeploymentState, EsState, PodState, RolloutStatus, SecretState};
pub use view::{next_backoff, Change, Fault, Gap, View, WATCH_BACKOFF_MAX};

use crate::config::ChainConfig;
use shared::{Held, WatchKey};

/// ExternalSecret annotation whose change makes ESO sync at once (upstream
/// documents `kubectl annotate es NAME force-sync=$(date +%s) --overwrite`).
pub const FORCE_SYNC: &str = "force-sync";

/// The API resource of `external-secrets.io/v1` ExternalSecrets.
pub fn external_secret_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    )
}

/// The prober's restart patch, as the API server took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The `restartedAt` value sent.
    pub restarted_at: String,
    /// The Deployment's generation after the patch.
    pub generation: i64,
}

/// The watchers of one probe's chain.
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    deployment: Option<String>,
    external_secret_name: Option<String>,
    /// The ExternalSecret, if the chain has one.
    pub external_secret: Option<watch::Receiver<View<EsState>>>,
    /// The Secret, if the chain has one.
    pub secret: Option<watch::Receiver<View<SecretState>>>,
    /// The Deployment, if the chain rolls one.
    pub deployments: Option<watch::Receiver<View<DeploymentState>>>,
    /// The canary Pods.
    pub pods: watch::Receiver<View<PodState>>,
    /// The leases that keep these watches running.
    _held: Vec<Held>,
}

impl Cluster {
    /// Start the chain's watchers on a registry of its own; they run until
    /// `cancel` fires or the `Cluster` is dropped.
    pub fn start(chain: &ChainConfig, client: kube::Client, cancel: &CancellationToken) -> Cluster {
        Cluster::lease(chain, &Watches::new(client, cancel.clone()))
    }

    /// Lease the chain's watchers from the process's registry: watches
    /// another probe already follows are shared, the others start now.
    /// They run until the registry's token fires or no `Cluster` holds them.
    pub fn lease(chain: &ChainConfig, watches: &Watches) -> Cluster {
        let ns = chain.namespace.as_str();
        let mut held: Vec<Held> = Vec::new();
        let mut keep = |lease: Held| held.push(lease);
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let key = |kind: &'static str, selector: String, reduction: String| WatchKey {
            kind,
            namespace: ns.to_string(),
            selector,
            reduction,
        };
        let external_secret = chain.external_secret.as_ref().map(|name| {
            let lease = watches.lease(
                key(
                    "externalsecrets",
                    format!("metadata.name={name}"),
                    String::new(),
                ),
                |c| Api::<DynamicObject>::namespaced_with(c, ns, &external_secret_resource()),
                by_name(name),
                EsState::from_object,
            );
            let rx = lease.receiver();
            keep(lease);
            rx
        });
        let secret = chain.secret.as_ref().map(|s| {
            let k = s.key.clone();
            let lease = watches.lease(
                key(
                    "secrets",
                    format!("metadata.name={}", s.name),
                    format!("key={k}"),
                ),
                |c| Api::<Secret>::namespaced(c, ns),
                by_name(&s.name),
                move |o: &Secret| SecretState::from_secret(o, &k),
            );
            let rx = lease.receiver();
            keep(lease);
            rx
        });
        let secret_name = chain.secret.as_ref().map(|s| s.name.clone());
        let marks_of = format!("secret={}", secret_name.as_deref().unwrap_or(""));
        let deployment = chain.rollout.as_ref().map(|r| r.deployment.clone());
        let deployments = deployment.as_ref().map(|name| {
            let secret = secret_name.clone();
            let lease = watches.lease(
                key(
                    "deployments",
                    format!("metadata.name={name}"),
                    marks_of.clone(),
                ),
                |c| Api::<Deployment>::namespaced(c, ns),
                by_name(name),
                move |d: &Deployment| DeploymentState::from_deployment_for(d, secret.as_deref()),
            );
            let rx = lease.receiver();
            keep(lease);
            rx
        });
        let pods = {
            let lease = watches.lease(
                key("pods", chain.canary.selector.clone(), marks_of),
                |c| Api::<Pod>::namespaced(c, ns),
                watcher::Config::default().labels(&chain.canary.selector),
                move |p: &Pod| PodState::from_pod_for(p, secret_name.as_deref()),
            );
            let rx = lease.receiver();
            keep(lease);
            rx
        };
        Cluster {
            client: watches.client().clone(),
            namespace: chain.namespace.clone(),
            deployment,
            external_secret_name: chain.external_secret.clone(),
            external_secret,
            secret,
            deployments,
            pods,
            _held: held,
        }
    }

    /// Every watcher completed its initial list.
    pub fn is_ready(&self) -> bool {
        self.external_secret
            .as_ref()
            .is_none_or(|r| r.borrow().synced)
            && self.secret.as_ref().is_none_or(|r| r.borrow().synced)
            && self.deployments.as_ref().is_none_or(|r| r.borrow().synced)
            && self.pods.borrow().synced
    }

    /// Until every watcher completed its initial list (returns at once if
    /// they have; a stopped watcher never completes it).
    pub async fn wait_ready(&self) {
        async fn synced<T>(rx: Option<&watch::Receiver<View<T>>>) {
            let Some(rx) = rx else { return };
            if rx.clone().wait_for(|v| v.synced).await.is_err() {
                std::future::pending::<()>().await
            }
        }
        synced(self.external_secret.as_ref()).await;
        synced(self.secret.as_ref()).await;
        synced(self.deployments.as_ref()).await;
        synced(Some(&self.pods)).await;
    }

    /// Restart the Deployment as `kubectl rollout restart` does: a strategic
    /// merge patch of the pod template's `restartedAt` annotation. Returns
    /// the value sent and the generation the patch made (`None` when the
    /// chain names no Deployment).
    pub async fn restart(
        &self,
        now: DateTime<Utc>,
        timeout: Duration,
    ) -> Result<Option<Restarted>, ClusterError> {
        let Some(name) = &self.deployment else {
            return Ok(None);
        };
        let current = self.deployments.as_ref().and_then(|r| {
            r.borrow()
                .objects
                .get(name)
                .and_then(|d| d.restarted_at.clone())
        });
        let mut value = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        // Two restarts in one second would make an empty patch.
        if current.as_deref() == Some(value.as_str()) {
            value = now.to_rfc3339_opts(SecondsFormat::Nanos, true);
        }
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}
        });
        let api = Api::<Deployment>::namespaced(self.client.clone(), &self.namespace);
        let params = PatchParams {
            field_manager: Some("secret-canary".into()),
            ..PatchParams::default()
        };
        match tokio::time::timeout(timeout, api.patch(name, &params, &Patch::Strategic(patch)))
            .await
        {
            Ok(Ok(d)) => Ok(Some(Restarted {
                generation: d.metadata.generation.unwrap_or(0),
                restarted_at: value,
            })),
            Ok(Err(source)) => Err(ClusterError::RestartPatch {
                namespace: self.namespace.clone(),
                name: name.clone(),
                restarted_at: value,
                source,
            }),
            Err(_) => Err(ClusterError::RestartTimeout {
                namespace: self.namespace.clone(),
                name: name.clone(),
                after: timeout,
            }),
        }
    }

    /// Make ESO sync now: a merge patch of the ExternalSecret's `force-sync`
    /// annotation to the unix time. Any metadata change triggers a
    /// reconcile; the time carries nanoseconds because an unchanged value
    /// (two runs in one second, from two processes) would trigger nothing.
    pub async fn force_sync(
        &self,
        now: DateTime<Utc>,
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let Some(name) = &self.external_secret_name else {
            return Ok(());
        };
        let value = format!("{}.{:09}", now.timestamp(), now.timestamp_subsec_nanos());
        let patch = serde_json::json!({"metadata": {"annotations": {FORCE_SYNC: value}}});
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &external_secret_resource(),
        );
        let params = PatchParams {
            field_manager: Some("secret-canary".into()),
            ..PatchParams::default()
        };
        match tokio::time::timeout(timeout, api.patch(name, &params, &Patch::Merge(patch))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(ClusterError::ForceSyncPatch {
                namespace: self.namespace.clone(),
                name: name.clone(),
                value,
                source,
            }),
            Err(_) => Err(ClusterError::ForceSyncTimeout {
                namespace: self.namespace.clone(),
                name: name.clone(),
                after: timeout,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
