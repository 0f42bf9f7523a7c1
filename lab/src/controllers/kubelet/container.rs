//! Starting and stopping one container as a local process group: the
//! launch (program, args, env) prepared from the spec, the spawn, the
//! ground truth of its start, termination with a grace period.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use rustix::process::{kill_process_group, Pid, Signal};
use tokio_util::sync::CancellationToken;

use super::env::{build_env, expand};
use super::mounts::{container_mounts, rewrite};
use super::pod::PodRun;
use super::readiness::readiness;
use super::status::CState;
use super::{CANARY_DEFAULT_PORT, GRACE_CAP};
use crate::controllers::bankvaults::{self, EnvValue, VaultConfig};
use crate::faults::Fault;
use crate::truth::{self, step};

/// A container ready to spawn.
pub(super) struct Launch {
    pub(super) program: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<EnvValue>,
}

pub(super) enum PrepError {
    /// CreateContainerConfigError: retried without back-off.
    Config(String),
    /// The container starts but its entrypoint fails at once (vault-env): exit 1.
    Entrypoint(String),
    /// RunContainerError: nothing to run.
    Run(String),
    /// ErrImagePull (node mode): an image the node cannot run.
    Image(String),
}

pub(super) fn is_canary_program(cmd0: &str) -> bool {
    Path::new(cmd0)
        .file_name()
        .is_some_and(|f| f == "secret-canary")
}

pub(crate) fn image_is_canary(image: &str) -> bool {
    let last = image.rsplit('/').next().unwrap_or(image);
    let repo = last.split(['@', ':']).next().unwrap_or(last);
    repo == "secret-canary"
}

pub(super) async fn prepare(run: &PodRun, c: &Container) -> Result<Launch, PrepError> {
    // An image of the lab's registry: pulled and run inside its rootfs.
    if let Some(rt) = run.kl.node.as_ref().and_then(|n| n.images.clone()) {
        if rt.serves(c.image.as_deref().unwrap_or_default()).is_some() {
            return super::runtime::prepare(run, c, &rt).await;
        }
    }
    if run.kl.node.is_some() {
        super::node::pull_image(c).map_err(PrepError::Image)?;
    }
    let mut env = build_env(run, c).await.map_err(PrepError::Config)?;
    // A container the Bank-Vaults webhook mutated at admission (the lab's
    // own or, on a real cluster, the registered webhook) runs vault-env
    // first, which resolves the `vault:` values and execs the original
    // entrypoint (its args). Unmutated containers see `vault:` values as
    // literal strings, as with a webhook failing open.
    let mutated = c
        .command
        .as_ref()
        .and_then(|c| c.first())
        .map(String::as_str)
        == Some(bankvaults::VAULT_ENV);
    let mut c = c.clone();
    if mutated {
        let cfg = VaultConfig::from_pod(&run.pod, &run.kl.ctx.vault_addr);
        if bankvaults::has_references(&env) {
            let resolved = if run.kl.node.is_some() {
                // On a real cluster vault-env logs in with the Pod's bound token.
                super::node::resolve_vault_env(run, &cfg, &mut env).await
            } else {
                bankvaults::resolve(&run.kl.ctx, &run.pod, &cfg, &mut env)
                    .await
                    .map_err(|e| e.to_string())
            };
            resolved.map_err(|e| PrepError::Entrypoint(format!("vault-env: {e}")))?;
        }
        c.command = c.args.take();
    }
    let c = &c;
    let mounts = container_mounts(run, c).map_err(PrepError::Run)?;
    for e in env.iter_mut().filter(|e| !e.secret) {
        e.value = rewrite(&e.value, &mounts, run.ip);
    }
    let lookup = |n: &str| env.iter().find(|e| e.name == n).map(|e| e.value.clone());
    let expand_all = |words: &Option<Vec<String>>| -> Vec<String> {
        words
            .iter()
            .flatten()
            .map(|s| rewrite(&expand(s, lookup), &mounts, run.ip))
            .collect()
    };
    let command = expand_all(&c.command);
    let args = expand_all(&c.args);
    let image = c.image.clone().unwrap_or_default();
    let (program, args, canary) = match command.split_first() {
        Some((cmd0, rest)) if is_canary_program(cmd0) => (
            run.kl.ctx.canary_bin.clone(),
            rest.iter().cloned().chain(args).collect::<Vec<_>>(),
            true,
        ),
        Some((cmd0, rest)) => (
            PathBuf::from(cmd0),
            rest.iter().cloned().chain(args).collect(),
            false,
        ),
        None if image_is_canary(&image) => (run.kl.ctx.canary_bin.clone(), args, true),
        None => {
            return Err(PrepError::Run(format!(
                "no command given and the lab does not know the entrypoint of image {image:?}"
            )))
        }
    };
    if canary
        && !args
            .iter()
            .any(|a| a == "--listen" || a.starts_with("--listen="))
        && !env.iter().any(|e| e.name == "SECRET_CANARY_LISTEN")
    {
        env.push(EnvValue {
            name: "SECRET_CANARY_LISTEN".into(),
            value: format!("{}:{CANARY_DEFAULT_PORT}", run.ip),
            secret: false,
        });
    }
    Ok(Launch { program, args, env })
}

pub(super) fn open_log(run: &PodRun, c: &Container) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.dir.join(format!("{}.log", c.name)))
}

pub(super) fn spawn(
    run: &PodRun,
    c: &Container,
    launch: &Launch,
) -> std::io::Result<tokio::process::Child> {
    let log = open_log(run, c)?;
    let log2 = log.try_clone()?;
    let mut cmd = tokio::process::Command::new(&launch.program);
    cmd.args(&launch.args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .envs(launch.env.iter().map(|e| (&e.name, &e.value)))
        .current_dir(&run.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        // Its own process group, so a stop reaches anything it forks.
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// Send `sig` to the process group led by `pgid` (a container runs in its
/// own group, so a stop reaches anything it forked). `pgid > 1` keeps us from
/// signalling our own group (0) or init's (1).
fn signal_group(pgid: u32, sig: Signal) -> bool {
    match i32::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(Pid::from_raw)
    {
        Some(pid) => kill_process_group(pid, sig).is_ok(),
        None => false,
    }
}

/// SIGTERM the process group, SIGKILL it after the grace period.
pub(super) async fn terminate(
    child: &mut tokio::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok();
    };
    signal_group(pid, Signal::TERM);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal_group(pid, Signal::KILL);
            let _ = child.start_kill();
            tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .ok()
                .and_then(|s| s.ok())
        }
    };
    // Anything the process left behind in its group goes too.
    signal_group(pid, Signal::KILL);
    status
}

pub(super) fn exit_code(status: Option<std::process::ExitStatus>) -> i32 {
    match status {
        Some(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
        None => 137,
    }
}

/// The `lifecycle.preStop.sleep.seconds` hook of a container, if any.
pub(super) fn pre_stop_sleep(c: &Container) -> Duration {
    c.lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| Duration::from_secs(u64::try_from(s.seconds).unwrap_or(0)))
        .unwrap_or_default()
}

/// How long a stopping container gets between SIGTERM (or its preStop
/// hook) and SIGKILL: the deletion's grace period when one was given, else
/// the spec's `terminationGracePeriodSeconds` (30 s by default). Node mode
/// honours it as a kubelet does, at least 2 s (the kubelet's
/// `minimumGracePeriodInSeconds`: a force deletion still gets SIGTERM
/// first); the simulated cluster caps it at [`GRACE_CAP`].
/// The kubelet's `minimumGracePeriodInSeconds`.
const MIN_NODE_GRACE: Duration = Duration::from_secs(2);

pub(super) fn grace_period(
    spec: &PodSpec,
    deletion_grace: Option<i64>,
    node_mode: bool,
) -> Duration {
    let secs = deletion_grace
        .or(spec.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    let grace = Duration::from_secs(u64::try_from(secs).unwrap_or(30));
    if node_mode {
        grace.max(MIN_NODE_GRACE)
    } else {
        grace.min(GRACE_CAP)
    }
}

/// Spawn, record, probe, wait. `None` when stopped by cancel, else the exit
/// code and when the run started.
pub(super) async fn run_container(
    run: &Arc<PodRun>,
    idx: usize,
    c: &Container,
    launch: &Launch,
    cancel: &CancellationToken,
) -> Option<(i32, DateTime<Utc>)> {
    let started_at = Utc::now();
    let mut attempt = 0;
    let spawned = loop {
        match spawn(run, c, launch) {
            // Seen once under heavy load in CI: a start failing with ENOENT
            // although program and Pod directory exist. A transient one is
            // retried before it counts as a container start failure.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {
                attempt += 1;
                tracing::info!(ns = %run.ns, pod = %run.name, error = %e, attempt, "kubelet: retrying a container start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other,
        }
    };
    let mut child = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            let msg = format!(
                "starting {} in {}: {e} (program exists: {}, directory exists: {})",
                launch.program.display(),
                run.dir.display(),
                launch.program.exists(),
                run.dir.exists()
            );
            tracing::warn!(ns = %run.ns, pod = %run.name, container = %c.name, %msg, "kubelet: RunContainerError");
            run.update_container(idx, |s| {
                s.state = CState::waiting("RunContainerError", Some(msg))
            });
            return Some((128, started_at));
        }
    };
    let pid = child.id();
    let sourced: Vec<&EnvValue> = launch.env.iter().filter(|e| e.secret).collect();
    if sourced.is_empty() {
        run.kl
            .ctx
            .truth
            .record(step::POD_STARTED, &run.ns, &run.name, None);
    }
    for e in sourced {
        let d = truth::digest(e.value.as_bytes());
        run.kl
            .ctx
            .truth
            .record(step::POD_STARTED, &run.ns, &run.name, Some(&d));
    }
    tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, ?pid, "kubelet: container started");
    run.update_container(idx, |s| {
        s.ever_started = true;
        s.started = true;
        s.pid = pid;
        s.state = CState::Running { started_at };
    });
    if run.knobs().is_on(Fault::CanaryCrash) {
        // Killed right after start, reported as the app failing (exit 1).
        let _ = terminate(&mut child, Duration::ZERO).await;
        return Some((1, started_at));
    }
    // The probe loop lives exactly as long as this run of the process.
    let probe_cancel = cancel.child_token();
    let probe = tokio::spawn(readiness(run.clone(), idx, c.clone(), probe_cancel.clone()));
    let result = tokio::select! {
        status = child.wait() => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::KILL);
            }
            Some((exit_code(status.ok()), started_at))
        }
        _ = cancel.cancelled() => {
            // A `preStop: sleep` hook keeps the process serving (and Ready)
            // for part of the grace period before SIGTERM, as the kubelet.
            let deletion_grace = run.deletion_grace.lock().ok().and_then(|g| *g);
            let grace = grace_period(&run.spec, deletion_grace, run.kl.node.is_some());
            let pre_stop = pre_stop_sleep(c).min(grace);
            let exited = if pre_stop.is_zero() {
                None
            } else {
                tokio::time::timeout(pre_stop, child.wait()).await.ok()
            };
            let status = match exited {
                Some(s) => s.ok(),
                None => terminate(&mut child, grace - pre_stop).await,
            };
            tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, code = exit_code(status), "kubelet: container stopped");
            None
        }
    };
    probe_cancel.cancel();
    let _ = probe.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_period_is_the_deletions_then_the_specs() {
        let spec = PodSpec {
            termination_grace_period_seconds: Some(45),
            ..PodSpec::default()
        };
        assert_eq!(grace_period(&spec, None, true), Duration::from_secs(45));
        assert_eq!(grace_period(&spec, Some(5), true), Duration::from_secs(5));
        assert_eq!(grace_period(&spec, None, false), GRACE_CAP);
        assert_eq!(
            grace_period(&PodSpec::default(), None, true),
            Duration::from_secs(30)
        );
        assert_eq!(grace_period(&spec, Some(0), true), MIN_NODE_GRACE);
        assert_eq!(grace_period(&spec, Some(-1), false), Duration::ZERO);
    }

    #[test]
    fn canary_images() {
        assert!(image_is_canary("ghcr.io/x/secret-canary:0.1"));
        assert!(image_is_canary("secret-canary"));
        assert!(image_is_canary("secret-canary@sha256:abc"));
        assert!(!image_is_canary("nginx:1"));
        assert!(is_canary_program("/usr/local/bin/secret-canary"));
    }
}
