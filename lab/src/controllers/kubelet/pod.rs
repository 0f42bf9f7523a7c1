//! One Pod's lifetime on the node: admit (address, status model), mount,
//! start its containers, stop them, release the address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams};
use kube::ResourceExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::{status_writer, watch_reachability, CStatus, StatusModel};
use super::supervise::supervise;
use super::volumes::{mount_volumes, volume_sync};
use super::{pod_dir, Kubelet, API_TIMEOUT, CANARY_DEFAULT_PORT};
use crate::faults::Fault;

pub(super) struct PodRun {
    pub(super) kl: Arc<Kubelet>,
    pub(super) pod: Pod,
    pub(super) spec: PodSpec,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) ip: Ipv4Addr,
    pub(super) model: Mutex<StatusModel>,
    pub(super) dirty: watch::Sender<()>,
    /// The deletion's grace (`deletionGracePeriodSeconds`), set before the
    /// Pod's token is cancelled for a graceful deletion.
    pub(super) deletion_grace: Arc<Mutex<Option<i64>>>,
}

impl PodRun {
    pub(super) fn update(&self, f: impl FnOnce(&mut StatusModel)) {
        if let Ok(mut m) = self.model.lock() {
            f(&mut m);
        }
        self.dirty.send_replace(());
    }

    pub(super) fn update_container(&self, idx: usize, f: impl FnOnce(&mut CStatus)) {
        self.update(|m| {
            if let Some(c) = m.containers.get_mut(idx) {
                f(c);
            }
        });
    }

    pub(super) fn knobs(&self) -> &crate::faults::Knobs {
        &self.kl.ctx.knobs
    }

    pub(super) fn volume_dir(&self, volume: &str) -> PathBuf {
        self.dir.join("volumes").join(volume)
    }
}

/// Sleep, unless cancelled first (then `false`).
pub(super) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return !cancel.is_cancelled();
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

pub(super) fn container_ports(c: &Container) -> Vec<u16> {
    let mut ports: Vec<u16> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    if let Some(p) = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()) {
        if let IntOrString::Int(n) = p.port {
            if let Ok(n) = u16::try_from(n) {
                ports.push(n);
            }
        }
    }
    ports
}

pub(super) async fn run_pod(
    kl: Arc<Kubelet>,
    pod: Pod,
    cancel: CancellationToken,
    lab: CancellationToken,
    deletion_grace: Arc<Mutex<Option<i64>>>,
) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let Some(spec) = pod.spec.clone() else {
        tracing::warn!(%ns, %name, "kubelet: Pod without spec ignored");
        return;
    };
    let dir = pod_dir(&kl.ctx.dir, &ns, &name);
    for sub in ["volumes", "subpath", "serviceaccount"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(%ns, %name, error = %e, "kubelet: cannot create the Pod directory");
        return;
    }
    let mut ports: Vec<u16> = spec.containers.iter().flat_map(container_ports).collect();
    if ports.is_empty() {
        ports.push(CANARY_DEFAULT_PORT);
    }
    let ip = loop {
        let got = kl.ips.lock().ok().and_then(|mut p| p.allocate(&ports));
        match got {
            Some(ip) => break ip,
            None => {
                tracing::warn!(%ns, %name, "kubelet: no free Pod IP; retrying");
                if !sleep_or_cancel(Duration::from_secs(1), &cancel).await {
                    return;
                }
            }
        }
    };
    let decoy = kl
        .ips
        .lock()
        .map(|p| p.decoy())
        .unwrap_or(Ipv4Addr::LOCALHOST);
    // The address `status.podIP` shows: the loopback one, or its
    // unroutable stand-in (real tier, `--unroutable-pods`).
    let own = kl
        .node
        .as_ref()
        .and_then(|n| n.unroutable.as_ref())
        .map_or(ip.into(), |u| u.advertise(ip));
    let advertised = |knobs: &crate::faults::Knobs| -> std::net::IpAddr {
        if knobs.is_on(Fault::CanaryUnreachable) {
            decoy.into()
        } else {
            own
        }
    };
    let model = StatusModel {
        start_time: Utc::now(),
        advertised_ip: advertised(&kl.ctx.knobs),
        initialized: false,
        containers: spec
            .containers
            .iter()
            .map(|c| CStatus::creating(&c.name, c.image.as_deref().unwrap_or_default()))
            .collect(),
        transitions: BTreeMap::new(),
        restart_policy: spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into()),
    };
    let (dirty, dirty_rx) = watch::channel(());
    let run = Arc::new(PodRun {
        kl: kl.clone(),
        pod: pod.clone(),
        spec,
        ns: ns.clone(),
        name: name.clone(),
        dir,
        ip,
        model: Mutex::new(model),
        dirty,
        deletion_grace,
    });
    tracing::info!(%ns, %name, %ip, "kubelet: Pod admitted");
    let writer = tokio::spawn(status_writer(run.clone(), dirty_rx, cancel.clone()));
    run.dirty.send_replace(());

    let mut tasks = tokio::task::JoinSet::new();
    if mount_volumes(&run, &cancel).await {
        run.update(|m| m.initialized = true);
        tasks.spawn(volume_sync(run.clone(), cancel.clone()));
        tasks.spawn(watch_reachability(run.clone(), own, decoy, cancel.clone()));
        for idx in 0..run.spec.containers.len() {
            tasks.spawn(supervise(run.clone(), idx, cancel.clone()));
        }
    }
    cancel.cancelled().await;
    while tasks.join_next().await.is_some() {}
    let _ = writer.await;
    if let Ok(mut p) = kl.ips.lock() {
        p.release(ip);
    }
    tracing::info!(%ns, %name, "kubelet: Pod stopped");
    // A Pod deleted gracefully (deletionTimestamp set) is removed for good
    // once its processes are gone, as the kubelet does.
    if !lab.is_cancelled() {
        confirm_deletion(kl, pod).await;
    }
}

/// The kubelet's last word on a Pod being deleted: its processes are gone,
/// so DELETE it with grace 0 (the API server then removes it once its
/// finalizers are gone too).
pub(super) async fn confirm_deletion(kl: Arc<Kubelet>, pod: Pod) {
    let ns = pod.namespace().unwrap_or_else(|| "default".into());
    let name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(kl.ctx.client.clone(), &ns);
    let current = tokio::time::timeout(API_TIMEOUT, api.get_opt(&name)).await;
    if let Ok(Ok(Some(p))) = current {
        if p.uid() == pod.uid() && p.metadata.deletion_timestamp.is_some() {
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(kube::api::Preconditions {
                    uid: pod.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let _ = tokio::time::timeout(API_TIMEOUT, api.delete(&name, &dp)).await;
        }
    }
}
