//! Readiness probes: `httpGet` against the Pod's real address.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio_util::sync::CancellationToken;

use super::pod::{sleep_or_cancel, PodRun};
use crate::faults::{Fault, Knob};

pub(super) fn probe_port(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The readiness loop: `httpGet` against the real Pod IP every
/// `readiness-period`; with no probe, ready once started. `rollout-stuck`
/// makes every probe fail.
pub(super) async fn readiness(
    run: Arc<PodRun>,
    idx: usize,
    c: Container,
    cancel: CancellationToken,
) {
    let probe = c.readiness_probe.clone();
    let http_get = probe.as_ref().and_then(|p| p.http_get.clone());
    let threshold = probe
        .as_ref()
        .and_then(|p| p.failure_threshold)
        .unwrap_or(3)
        .max(1) as u32;
    let timeout = Duration::from_secs(
        probe
            .as_ref()
            .and_then(|p| p.timeout_seconds)
            .unwrap_or(1)
            .max(1) as u64,
    );
    let initial = Duration::from_secs(
        probe
            .as_ref()
            .and_then(|p| p.initial_delay_seconds)
            .unwrap_or(0)
            .max(0) as u64,
    );
    if !sleep_or_cancel(initial, &cancel).await {
        return;
    }
    let url = http_get.as_ref().and_then(|g| {
        let port = probe_port(&c, &g.port)?;
        let path = g.path.clone().unwrap_or_else(|| "/".into());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Some(format!("http://{}:{port}{path}", run.ip))
    });
    let mut failures = 0u32;
    let mut ready = false;
    loop {
        let ok = if run.knobs().is_on(Fault::RolloutStuck) {
            false
        } else if let Some(url) = &url {
            let req = run.kl.http.get(url).timeout(timeout).send();
            matches!(tokio::time::timeout(timeout, req).await, Ok(Ok(r)) if r.status().is_success() || r.status().is_redirection())
        } else {
            http_get.is_none()
        };
        if ok {
            failures = 0;
            if !ready {
                ready = true;
                run.update_container(idx, |s| s.ready = true);
            }
        } else {
            failures += 1;
            if ready && failures >= threshold {
                ready = false;
                run.update_container(idx, |s| s.ready = false);
            }
        }
        if !sleep_or_cancel(run.knobs().sample(Knob::ReadinessPeriod), &cancel).await {
            return;
        }
    }
}
