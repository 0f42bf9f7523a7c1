//! The Pod status the kubelet reports: a model of each container's state,
//! rendered into the status subresource whenever it changes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::pod::{sleep_or_cancel, PodRun};
use super::API_TIMEOUT;
use crate::faults::Fault;
use crate::truth::step;

#[derive(Debug, Clone)]
pub(super) enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct CStatus {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) ready: bool,
    pub(super) started: bool,
    pub(super) ever_started: bool,
    pub(super) restart_count: i32,
    pub(super) state: CState,
    pub(super) last_state: Option<CState>,
    pub(super) pid: Option<u32>,
}

#[derive(Debug)]
pub(super) struct StatusModel {
    pub(super) start_time: DateTime<Utc>,
    pub(super) advertised_ip: std::net::IpAddr,
    pub(super) initialized: bool,
    pub(super) containers: Vec<CStatus>,
    pub(super) transitions: BTreeMap<&'static str, (bool, DateTime<Utc>)>,
    pub(super) restart_policy: String,
}

pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl CState {
    /// A waiting state with a reason (and why).
    pub(super) fn waiting(reason: &str, message: Option<String>) -> CState {
        CState::Waiting {
            reason: reason.into(),
            message,
        }
    }

    pub(super) fn to_json(&self, container_id: Option<&str>) -> Value {
        match self {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": ts(*started_at)}}),
            CState::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => {
                let mut t = json!({
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": ts(*started_at),
                    "finishedAt": ts(*finished_at),
                });
                if let Some(id) = container_id {
                    t["containerID"] = json!(id);
                }
                json!({"terminated": t})
            }
        }
    }
}

impl CStatus {
    /// A container not started yet: `ContainerCreating`.
    pub(super) fn creating(name: &str, image: &str) -> CStatus {
        CStatus {
            name: name.into(),
            image: image.into(),
            ready: false,
            started: false,
            ever_started: false,
            restart_count: 0,
            state: CState::waiting("ContainerCreating", None),
            last_state: None,
            pid: None,
        }
    }
}

impl StatusModel {
    pub(super) fn all_ready(&self) -> bool {
        self.initialized && !self.containers.is_empty() && self.containers.iter().all(|c| c.ready)
    }

    pub(super) fn phase(&self) -> &'static str {
        if !self.initialized || self.containers.iter().any(|c| !c.ever_started) {
            return "Pending";
        }
        let all_terminated = self
            .containers
            .iter()
            .all(|c| matches!(c.state, CState::Terminated { .. }));
        if all_terminated && self.restart_policy != "Always" {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, CState::Terminated { exit_code: 0, .. }));
            return if ok { "Succeeded" } else { "Failed" };
        }
        "Running"
    }

    /// Update the condition transition times; returns the conditions JSON.
    pub(super) fn conditions(&mut self) -> Value {
        let now = Utc::now();
        let ready = self.all_ready();
        let wanted = [
            ("PodScheduled", true),
            ("Initialized", self.initialized),
            ("ContainersReady", ready),
            ("Ready", ready),
        ];
        let mut out = Vec::new();
        for (ty, status) in wanted {
            let entry = self.transitions.entry(ty).or_insert((status, now));
            if entry.0 != status {
                *entry = (status, now);
            }
            out.push(json!({
                "type": ty,
                "status": if status { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": ts(entry.1),
            }));
        }
        Value::Array(out)
    }

    pub(super) fn render(&mut self) -> Value {
        let conditions = self.conditions();
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let id = c.pid.map(|p| format!("lab://{p}"));
                let mut v = json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": "",
                    "ready": c.ready,
                    "started": c.started,
                    "restartCount": c.restart_count,
                    "state": c.state.to_json(id.as_deref()),
                    "lastState": c.last_state.as_ref().map(|s| s.to_json(None)).unwrap_or_else(|| json!({})),
                });
                if let Some(id) = id {
                    v["containerID"] = json!(id);
                }
                v
            })
            .collect();
        json!({
            "phase": self.phase(),
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.advertised_ip.to_string(),
            "podIPs": [{"ip": self.advertised_ip.to_string()}],
            "startTime": ts(self.start_time),
            "qosClass": "BestEffort",
            "conditions": conditions,
            "containerStatuses": containers,
        })
    }
}

/// Writes the status subresource whenever the model changes, in order and
/// coalesced; records `kubelet.pod_ready` when a write first says Ready.
pub(super) async fn status_writer(
    run: Arc<PodRun>,
    mut dirty: watch::Receiver<()>,
    cancel: CancellationToken,
) {
    let api: Api<Pod> = Api::namespaced(run.kl.ctx.client.clone(), &run.ns);
    let mut written_ready = false;
    loop {
        tokio::select! {
            r = dirty.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
        loop {
            dirty.mark_unchanged();
            let (mut body, ready) = match run.model.lock() {
                Ok(mut m) => (m.render(), m.all_ready()),
                Err(_) => return,
            };
            if run.kl.node.is_some() {
                super::node::adjust_status(&mut body);
            }
            let patch = Patch::Merge(json!({"status": body}));
            let r = tokio::time::timeout(
                API_TIMEOUT,
                api.patch_status(&run.name, &PatchParams::default(), &patch),
            )
            .await;
            match r {
                Ok(Ok(_)) => {
                    if ready && !written_ready {
                        run.kl
                            .ctx
                            .truth
                            .record(step::POD_READY, &run.ns, &run.name, None);
                        tracing::info!(ns = %run.ns, name = %run.name, "kubelet: Pod ready");
                    }
                    written_ready = ready;
                    break;
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => return,
                Ok(Err(e)) => {
                    tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: status write failed; retrying")
                }
                Err(_) => {
                    tracing::warn!(ns = %run.ns, name = %run.name, "kubelet: status write timed out; retrying")
                }
            }
            if !sleep_or_cancel(Duration::from_millis(200), &cancel).await {
                return;
            }
        }
    }
}

/// Follows `canary-unreachable`: the advertised `status.podIP` moves to the
/// decoy while it is on, and back to `own` when it clears.
pub(super) async fn watch_reachability(
    run: Arc<PodRun>,
    own: std::net::IpAddr,
    decoy: Ipv4Addr,
    cancel: CancellationToken,
) {
    loop {
        let want = if run.knobs().is_on(Fault::CanaryUnreachable) {
            decoy.into()
        } else {
            own
        };
        let differs = run
            .model
            .lock()
            .map(|m| m.advertised_ip != want)
            .unwrap_or(false);
        if differs {
            run.update(|m| m.advertised_ip = want);
        }
        // `changed()` only wakes current waiters: poll too, so a flip between
        // two waits is not missed.
        tokio::select! {
            _ = run.knobs().changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_model_phase_and_conditions() {
        let mut m = StatusModel {
            start_time: Utc::now(),
            advertised_ip: Ipv4Addr::new(127, 1, 1, 2).into(),
            initialized: false,
            containers: vec![CStatus::creating("c", "i")],
            transitions: BTreeMap::new(),
            restart_policy: "Always".into(),
        };
        let v = m.render();
        assert_eq!(v["phase"], "Pending");
        assert_eq!(v["conditions"][3]["type"], "Ready");
        assert_eq!(v["conditions"][3]["status"], "False");
        m.initialized = true;
        m.containers[0].ever_started = true;
        m.containers[0].ready = true;
        m.containers[0].state = CState::Running {
            started_at: Utc::now(),
        };
        let v = m.render();
        assert_eq!(v["phase"], "Running");
        assert_eq!(v["conditions"][3]["status"], "True");
        assert!(v["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
    }
}
