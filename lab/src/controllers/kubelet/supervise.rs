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
                    s.state = CState::waiting("CreateContainerConfigError", Some(msg))
                });
                if !wait_config_retry(&run.ns, &mut changes, &cancel).await {
                    return;
                }
                continue;
            }
            Err(PrepError::Image(msg)) => {
                if !super::node::image_pull_backoff(&run, idx, &msg, &cancel).await {
                    return;
                }
                continue;
            }
            Err(PrepError::Run(msg)) => {
                tracing::warn!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: RunContainerError");
                run.update_container(idx, |s| {
                    s.state = CState::waiting("RunContainerError", Some(msg))
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
        // The real kubelet's back-off (flowcontrol.Backoff): a container that
        // ran longer than twice the cap starts a fresh series.
        let cap = run
            .knobs()
            .sample(Knob::CrashBackoff)
            .saturating_mul(BACKOFF_CAP_FACTOR);
        if (finished_at - started_at).to_std().unwrap_or_default() > cap.saturating_mul(2) {
            failures_in_row = 0;
        }
        failures_in_row = failures_in_row.saturating_add(1);
        let backoff = crash_backoff(run.knobs().sample(Knob::CrashBackoff), failures_in_row);
        tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, code, ?backoff, "kubelet: container exited; backing off");
        let uid = run.pod.metadata.uid.clone().unwrap_or_default();
        run.update_container(idx, |s| {
            s.ready = false;
            s.started = false;
            s.pid = None;
            s.restart_count += 1;
            s.last_state = Some(terminated.clone());
            s.state = if backoff.is_zero() {
                // Restarted at once: until then the dead instance shows.
                terminated
            } else {
                CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {} restarting failed container={} pod={}_{}({uid})",
                        humantime::format_duration(Duration::from_secs(backoff.as_secs().max(1))),
                        c.name,
                        run.name,
                        run.ns
                    )),
                }
            };
        });
        if !sleep_or_cancel(backoff, &cancel).await {
            return;
        }
    }
}

/// The kubelet's crash back-off before restarting after the `failures`-th
/// consecutive failure: the first restart is immediate, then `base`
/// (10 s upstream) doubling per failure up to 30 × `base` (5 min).
pub(super) fn crash_backoff(base: Duration, failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    base.saturating_mul(2u32.saturating_pow((failures - 2).min(16)))
        .min(base.saturating_mul(BACKOFF_CAP_FACTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_10s_doubling_to_5min() {
        let base = Duration::from_secs(10);
        let secs: Vec<u64> = (1..=9).map(|n| crash_backoff(base, n).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(crash_backoff(base, u32::MAX).as_secs(), 300);
    }
}
