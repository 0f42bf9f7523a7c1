//! Why a request of the prober to the API server (the restart and
//! `force-sync` patches) failed, naming an admission webhook that refused it.

use std::time::Duration;

use super::follow::code_reason;
use crate::probe::Reason;

/// Why a request of the prober to the API server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The restart patch was refused or failed.
    #[error(
        "patching {restarted_at} into Deployment {namespace}/{name}{}: {source}",
        webhook_note(source)
    )]
    RestartPatch {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// The annotation value sent.
        restarted_at: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The restart patch got no answer in time.
    #[error("patching Deployment {namespace}/{name} timed out after {after:?}")]
    RestartTimeout {
        /// Namespace.
        namespace: String,
        /// Deployment.
        name: String,
        /// The timeout.
        after: Duration,
    },
    /// The `force-sync` annotation patch was refused or failed (RBAC: the
    /// prober needs `patch` on `externalsecrets`).
    #[error(
        "annotating ExternalSecret {namespace}/{name} with force-sync={value}{}: {source}",
        webhook_note(source)
    )]
    ForceSyncPatch {
        /// Namespace.
        namespace: String,
        /// ExternalSecret.
        name: String,
        /// The annotation value sent.
        value: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The `force-sync` patch got no answer in time.
    #[error("annotating ExternalSecret {namespace}/{name} timed out after {after:?}")]
    ForceSyncTimeout {
        /// Namespace.
        namespace: String,
        /// ExternalSecret.
        name: String,
        /// The timeout.
        after: Duration,
    },
}

/// The admission webhook named in an API error, if one refused (or failed
/// on) the request: `admission webhook "NAME" denied the request` or
/// `failed calling webhook "NAME"`.
pub fn refusing_webhook(e: &kube::Error) -> Option<String> {
    let kube::Error::Api(s) = e else { return None };
    ["admission webhook \"", "failed calling webhook \""]
        .iter()
        .find_map(|p| {
            let rest = &s.message[s.message.find(p)? + p.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
}

/// ` (refused by admission webhook NAME)` when one did.
fn webhook_note(e: &kube::Error) -> String {
    refusing_webhook(e)
        .map(|w| format!(" (refused by admission webhook {w})"))
        .unwrap_or_default()
}

impl ClusterError {
    /// The bounded failure reason.
    pub fn reason(&self) -> Reason {
        match self {
            ClusterError::RestartPatch {
                source: kube::Error::Api(s),
                ..
            }
            | ClusterError::ForceSyncPatch {
                source: kube::Error::Api(s),
                ..
            } => code_reason(s.code),
            ClusterError::RestartPatch { .. }
            | ClusterError::RestartTimeout { .. }
            | ClusterError::ForceSyncPatch { .. }
            | ClusterError::ForceSyncTimeout { .. } => Reason::ApiError,
        }
    }
}
