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
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

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

/// What the supervising task is asked to do.
enum Ctl {
    /// SIGTERM, wait up to the grace, SIGKILL; stay down until [`Ctl::Start`].
    Down(Duration, oneshot::Sender<()>),
    /// Start it again with the same command line (nothing if it runs).
    Up(oneshot::Sender<Result<u32, SpawnError>>),
}

/// How to (re)start a component: the same binary, flags and environment
/// every time.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Spec {
    fn spawn(&self) -> Result<Child, SpawnError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|source| SpawnError::Log {
                    component: self.name.clone(),
                    log: self.log.display().to_string(),
                    source,
                })
        };
        let out = open()?;
        let err = open()?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            // Its own process group: a terminal's Ctrl-C reaches the lab,
            // which then stops the components in order.
            .process_group(0);
        cmd.spawn().map_err(|source| SpawnError::Exec {
            component: self.name.clone(),
            bin: self.bin.display().to_string(),
            log: self.log.display().to_string(),
            source,
        })
    }
}

fn send_signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, sig);
    }
}

/// A running (or exited) component process, supervised by a task that owns
/// the child: it reports an exit, and on request takes the component down
/// and starts it again with the same command line (the real faults'
/// API-server restart), which is not an exit.
#[derive(Debug)]
pub struct Proc {
    /// Component name (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// Its log file.
    pub log: PathBuf,
    pid: Arc<AtomicU32>,
    exit: watch::Receiver<Option<ExitStatus>>,
    ctl: mpsc::Sender<Ctl>,
    task: tokio::task::JoinHandle<()>,
}

/// A handle that takes a [`Proc`] down and brings it up again (cloneable,
/// for the fault controller; the [`Proc`] stays with the cluster).
#[derive(Debug, Clone)]
pub struct ProcHandle {
    /// Component name.
    pub name: String,
    pid: Arc<AtomicU32>,
    ctl: mpsc::Sender<Ctl>,
}

/// A component could not be taken down or brought up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Its supervising task is gone (the component exited, or the lab stops).
    #[error("{0} is not supervised any more (it exited, or the lab is stopping)")]
    Gone(String),
    /// It could not be started again.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

impl ProcHandle {
    /// Its current process id (0 while it is down).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// SIGTERM, up to `grace`, then SIGKILL; it stays down (not an exit)
    /// until [`ProcHandle::up`].
    pub async fn down(&self, grace: Duration) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Down(grace, tx))
            .await
            .map_err(|_| ControlError::Gone(self.name.clone()))?;
        rx.await.map_err(|_| ControlError::Gone(self.name.clone()))
    }

    /// Start it again with the same binary, flags and environment; returns
    /// its new pid.
    pub async fn up(&self) -> Result<u32, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Up(tx))
            .await
            .map_err(|_| ControlError::Gone(self.name.clone()))?;
        Ok(rx
            .await
            .map_err(|_| ControlError::Gone(self.name.clone()))??)
    }
}

/// The supervising task: owns the child (dropping it kills the process).
async fn supervise(
    spec: Spec,
    first: Child,
    pid: Arc<AtomicU32>,
    exit: watch::Sender<Option<ExitStatus>>,
    mut ctl: mpsc::Receiver<Ctl>,
) {
    let mut child = Some(first);
    loop {
        match child.as_mut() {
            Some(c) => {
                tokio::select! {
                    status = c.wait() => {
                        // Could not wait: treat it as gone.
                        let s = status.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0));
                        let _ = exit.send(Some(s));
                        return;
                    }
                    cmd = ctl.recv() => match cmd {
                        Some(Ctl::Down(grace, done)) => {
                            let p = pid.swap(0, Ordering::SeqCst);
                            send_signal(p, Signal::TERM);
                            if tokio::time::timeout(grace, c.wait()).await.is_err() {
                                tracing::warn!(component = %spec.name, "did not stop within {grace:?} of SIGTERM; killing it");
                                let _ = c.start_kill();
                                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
                            }
                            child = None;
                            let _ = done.send(());
                        }
                        Some(Ctl::Up(done)) => {
                            let _ = done.send(Ok(pid.load(Ordering::SeqCst)));
                        }
                        // The Proc was dropped: dropping the child kills it.
                        None => return,
                    },
                }
            }
            None => match ctl.recv().await {
                Some(Ctl::Up(done)) => match spec.spawn() {
                    Ok(c) => {
                        let p = c.id().unwrap_or_default();
                        pid.store(p, Ordering::SeqCst);
                        tracing::info!(component = %spec.name, pid = p, "started again");
                        child = Some(c);
                        let _ = done.send(Ok(p));
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                },
                Some(Ctl::Down(_, done)) => {
                    let _ = done.send(());
                }
                None => return,
            },
        }
    }
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
        let spec = Spec {
            name: name.to_string(),
            bin: bin.to_path_buf(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: log.to_path_buf(),
        };
        let child = spec.spawn()?;
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or_default()));
        let (tx, rx) = watch::channel(None);
        let (ctl_tx, ctl_rx) = mpsc::channel(4);
        let task = tokio::spawn(supervise(spec, child, pid.clone(), tx, ctl_rx));
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            pid,
            exit: rx,
            ctl: ctl_tx,
            task,
        })
    }

    /// Its current process id (0 while a fault keeps it down).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// A handle to take it down and bring it up again.
    pub fn handle(&self) -> ProcHandle {
        ProcHandle {
            name: self.name.clone(),
            pid: self.pid.clone(),
            ctl: self.ctl.clone(),
        }
    }

    /// Its exit status, when it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Wait until it exits (a component taken down by a fault has not).
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
    /// supervising task has not seen it exit).
    pub fn signal(&self, sig: Signal) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.pid();
        if pid != 0 {
            send_signal(pid, sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait.
    pub async fn stop(self, grace: Duration) {
        if self.exited().is_none() {
            let h = self.handle();
            let _ = tokio::time::timeout(grace + Duration::from_secs(6), h.down(grace)).await;
        }
        self.task.abort();
    }

    /// The last `n` lines of its log (for error messages).
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl Drop for Proc {
    /// A dropped [`Proc`] kills its process: the supervising task owns the
    /// child (`kill_on_drop`), and aborting the task drops it.
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
