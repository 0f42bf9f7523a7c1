//! One real component as a child process: its stdout and stderr go to
//! `DIR/logs/<name>.log`; it runs in its own process group (a terminal's
//! Ctrl-C reaches the lab, which then stops the components in order); it is
//! killed when its [`Proc`] is dropped; stopping it is SIGTERM, a grace
//! period, then SIGKILL. (No `PR_SET_PDEATHSIG`: that needs unsafe code
//! between fork and exec, and the crate forbids unsafe code. A lab killed
//! with SIGKILL leaves its components running; `up` stops them on SIGTERM,
//! SIGINT and on every error.) Its exit is observable, so a component that dies is
//! reported by name with its log file.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tokio::process::Command;
use tokio::sync::watch;

/// A component could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its log file could not be created.
    #[error("{component}: creating its log file {log}: {source}")]
    Log {
        /// The component.
        component: String,
        /// The log file.
        log: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary could not be executed.
    #[error("{component}: could not execute {bin}: {source} (log: {log})")]
    Exec {
        /// The component.
        component: String,
        /// The binary.
        bin: String,
        /// Its log file.
        log: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running (or exited) component process.
#[derive(Debug)]
pub struct Proc {
    /// Component name (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    /// Its process id.
    pub pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proc {
    /// Start `bin args...` as component `name`, logging to `log` (appended).
    pub fn spawn(name: &str, bin: &Path, args: &[String], log: &Path) -> Result<Proc, SpawnError> {
        Proc::spawn_with_env(name, bin, args, &[], log)
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Proc, SpawnError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(|source| SpawnError::Log {
                    component: name.to_string(),
                    log: log.display().to_string(),
                    source,
                })
        };
        let out = open()?;
        let err = open()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the lab,
            // which then stops the components in order.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            component: name.to_string(),
            bin: bin.display().to_string(),
            log: log.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(async move {
            let status = child.wait().await;
            if let Ok(s) = status {
                let _ = tx.send(Some(s));
            } else {
                // Could not wait: treat it as gone.
                let _ = tx.send(Some(std::os::unix::process::ExitStatusExt::from_raw(0)));
            }
        });
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            pid,
            exit: rx,
            task,
        })
    }

    /// Its exit status, when it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Wait until it exits.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                return std::os::unix::process::ExitStatusExt::from_raw(0);
            }
        }
    }

    /// Send a signal (while it runs: the pid is our unreaped child, as the
    /// waiting task has not seen it exit).
    pub fn signal(&self, sig: Signal) {
        if self.exited().is_some() {
            return;
        }
        if let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait.
    pub async fn stop(self, grace: Duration) {
        self.signal(Signal::TERM);
        if tokio::time::timeout(grace, self.wait()).await.is_err() {
            tracing::warn!(component = %self.name, "did not stop within {grace:?} of SIGTERM; killing it");
            self.signal(Signal::KILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.wait()).await;
        }
        self.task.abort();
    }

    /// The last `n` lines of its log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl Drop for Proc {
    /// A dropped [`Proc`] kills its process: the waiting task owns the child
    /// (`kill_on_drop`), and aborting the task drops it.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
