//! A container's restarts: the restart policy and the crash back-off.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::container::{open_log, prepare, run_container, PrepError};
use super::pod::{sleep_or_cancel, PodRun};
use super::status::CState;
use super::volumes::wait_config_retry;
use super::BACKOFF_CAP_FACTOR;
use crate::faults::{Fault, Knob};

/// Runs one container for the Pod's lifetime: start, probe, restart with
/// back-off, stop on cancel.
pub(super) async fn supervise(run: Arc<PodRun>, idx: usize, cancel: CancellationToken) {
    let c = run.spec.containers[idx].clone();
    let mut changes = run.kl.secret_changed.subscribe();
    let mut failures_in_row: u32 = 0;
    loop {
        let mut delay = run.knobs().sample(Knob::KubeletStartLatency);
        if run.knobs().is_on(Fault::SlowStart) {
            delay += run.knobs().sample(Knob::SlowStart);
        }
        if !sleep_or_cancel(delay, &cancel).await {
            return;
        }
        let started_at = Utc::now();
        let exit = match prepare(&run, &c).await {
            Err(PrepError::Config(msg)) => {
                tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: CreateContainerConfigError");
                run.update_container(idx, |s| {
                    s.state = CState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(msg),
                    }
                });
                if !wait_config_retry(&run.ns, &mut changes, &cancel).await {
                    return;
                }
                continue;
            }
            Err(PrepError::Run(msg)) => {
                tracing::warn!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: RunContainerError");
                run.update_container(idx, |s| {
                    s.state = CState::Waiting {
                        reason: "RunContainerError".into(),
                        message: Some(msg),
                    }
                });
                (128, started_at)
            }
            Err(PrepError::Entrypoint(msg)) => {
                // The container did start: vault-env is its entrypoint, and it
                // exits 1 before exec'ing the app.
                tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: container entrypoint failed");
                if let Ok(mut f) = open_log(&run, &c) {
                    use std::io::Write;
                    let _ = writeln!(f, "{msg}");
                }
                run.update_container(idx, |s| {
                    s.ever_started = true;
                    s.state = CState::Running { started_at };
                });
                (1, started_at)
            }
            Ok(launch) => match run_container(&run, idx, &c, &launch, &cancel).await {
                Some(r) => r,
                None => return, // stopped on cancel
            },
        };
        let (code, started_at) = exit;
        let finished_at = Utc::now();
        let restart = match run
            .model
            .lock()
            .map(|m| m.restart_policy.clone())
            .unwrap_or_default()
            .as_str()
        {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        let terminated = CState::Terminated {
            exit_code: code,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at,
            finished_at,
        };
        if !restart {
            run.update_container(idx, |s| {
                s.ready = false;
                s.started = false;
                s.state = terminated;
            });
            cancel.cancelled().await;
            return;
        }
        failures_in_row = failures_in_row.saturating_add(1);
        let base = run.knobs().sample(Knob::CrashBackoff);
        let backoff = base
            .saturating_mul(2u32.saturating_pow(failures_in_row.saturating_sub(1).min(16)))
            .min(base.saturating_mul(BACKOFF_CAP_FACTOR));
        tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, code, ?backoff, "kubelet: container exited; backing off");
        run.update_container(idx, |s| {
            s.ready = false;
            s.started = false;
            s.pid = None;
            s.restart_count += 1;
            s.last_state = Some(terminated);
            s.state = CState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: Some(format!(
                    "back-off {} restarting failed container={} pod={}_{}",
                    humantime::format_duration(Duration::from_secs(backoff.as_secs().max(1))),
                    c.name,
                    run.name,
                    run.ns
                )),
            };
        });
        if !sleep_or_cancel(backoff, &cancel).await {
            return;
        }
        // The real kubelet forgets the back-off after a container has run
        // fine for a while; here: after a run that lasted longer than the
        // current back-off cap.
        if (finished_at - started_at).to_std().unwrap_or_default()
            > base.saturating_mul(BACKOFF_CAP_FACTOR)
        {
            failures_in_row = 0;
        }
    }
}
