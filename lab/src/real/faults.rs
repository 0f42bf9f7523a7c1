//! Faults on the real cluster, made by real means, for
//! `secret-canary-lab fault --dir DIR NAME on|off` (a separate process from
//! `up`: it acts from `lab.json` alone).
//!
//! | name | on | off |
//! |---|---|---|
//! | `eso-stop` | SIGSTOP to the ESO controller process | SIGCONT |
//! | `secret-delete` | delete the Secret `canary/canary-env` (ESO recreates it on its next refresh) | nothing to undo |

use rustix::process::{kill_process, Pid, Signal};

use super::lab::RealLabInfo;

/// The faults this cluster supports.
pub const SUPPORTED: &[&str] = &["eso-stop", "secret-delete"];

/// Why a fault could not be set.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not one of [`SUPPORTED`].
    #[error("the real cluster (--cluster real) has no fault `{0}`: its faults are made by real means; supported: {list}, and `status`", list = SUPPORTED.join(", "))]
    Unknown(String),
    /// The component is not running.
    #[error("{0} is not in lab.json's components (is the lab up?)")]
    NoComponent(String),
    /// A signal could not be sent.
    #[error("signal {sig} to {component} (pid {pid}): {source}")]
    Signal {
        /// The signal.
        sig: &'static str,
        /// The component.
        component: String,
        /// Its pid.
        pid: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused.
    #[error("{0}")]
    Api(String),
}

fn signal(
    info: &RealLabInfo,
    component: &str,
    sig: Signal,
    name: &'static str,
) -> Result<(), Error> {
    let c = info
        .components
        .iter()
        .find(|c| c.name == component)
        .ok_or_else(|| Error::NoComponent(component.into()))?;
    let pid = i32::try_from(c.pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| Error::NoComponent(component.into()))?;
    kill_process(pid, sig).map_err(|e| Error::Signal {
        sig: name,
        component: component.into(),
        pid: c.pid,
        source: e.into(),
    })
}

/// Turn fault `name` on or off.
pub async fn set(info: &RealLabInfo, name: &str, on: bool) -> Result<(), Error> {
    match (name, on) {
        ("eso-stop", true) => signal(info, "external-secrets", Signal::STOP, "SIGSTOP"),
        ("eso-stop", false) => signal(info, "external-secrets", Signal::CONT, "SIGCONT"),
        ("secret-delete", true) => {
            use k8s_openapi::api::core::v1::Secret;
            let client = crate::lab::client_from_kubeconfig(std::path::Path::new(&info.kubeconfig))
                .await
                .map_err(|e| Error::Api(e.to_string()))?;
            let api: kube::Api<Secret> = kube::Api::namespaced(client, "canary");
            api.delete("canary-env", &Default::default())
                .await
                .map(|_| ())
                .map_err(|e| Error::Api(format!("delete Secret canary/canary-env: {e}")))
        }
        ("secret-delete", false) => Ok(()),
        _ => Err(Error::Unknown(name.into())),
    }
}
