//! Secret volumes and the ServiceAccount token: set up before the
//! containers start, refreshed while the Pod runs.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::atomic_writer::write_atomic;
use super::env::service_account;
use super::pod::{sleep_or_cancel, PodRun};
use super::secrets::secret_data;
use super::status::CState;
use super::CONFIG_RETRY;
use crate::controllers::bankvaults;
use crate::faults::Knob;
use crate::truth::{self, step};

/// What a Secret volume should hold now, or why it cannot be set up.
pub(super) fn secret_volume_files(
    secret: Option<&Secret>,
    vol: &k8s_openapi::api::core::v1::SecretVolumeSource,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let name = vol.secret_name.clone().unwrap_or_default();
    let optional = vol.optional.unwrap_or(false);
    let Some(secret) = secret else {
        return if optional {
            Ok(BTreeMap::new())
        } else {
            Err(format!("secret \"{name}\" not found"))
        };
    };
    let data = secret_data(secret);
    match &vol.items {
        None => Ok(data),
        Some(items) => {
            let mut out = BTreeMap::new();
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), v.clone());
                    }
                    None if optional => {}
                    None => return Err(format!("couldn't find key {} in Secret {}", it.key, name)),
                }
            }
            Ok(out)
        }
    }
}

/// Set up Secret volumes and the ServiceAccount token; waits (as
/// ContainerCreating) while a required Secret is missing. `false` if cancelled.
pub(super) async fn mount_volumes(run: &Arc<PodRun>, cancel: &CancellationToken) -> bool {
    let mut changes = run.kl.secret_changed.subscribe();
    loop {
        match try_mount_volumes(run).await {
            Ok(()) => break,
            Err(msg) => {
                tracing::info!(ns = %run.ns, name = %run.name, %msg, "kubelet: volume not ready; retrying");
                for i in 0..run.spec.containers.len() {
                    let msg = msg.clone();
                    run.update_container(i, |c| {
                        c.state = CState::waiting(
                            "ContainerCreating",
                            Some(format!("MountVolume.SetUp failed: {msg}")),
                        )
                    });
                }
                if !wait_config_retry(&run.ns, &mut changes, cancel).await {
                    return false;
                }
            }
        }
    }
    if run.kl.node.is_some() {
        // A real cluster's Pod: its projected volumes (the ServiceAccount
        // token among them) hold a token bound to the Pod.
        return super::node::mount_projected(run, cancel).await;
    }
    if run.spec.automount_service_account_token != Some(false) {
        let sa = service_account(&run.pod);
        match bankvaults::service_account_token(&run.kl.ctx.client, &run.ns, &sa).await {
            Ok(token) => {
                let files = BTreeMap::from([
                    ("token".to_string(), token.into_bytes()),
                    ("namespace".to_string(), run.ns.clone().into_bytes()),
                ]);
                if let Err(e) = write_atomic(&run.dir.join("serviceaccount"), &files, Some(0o600)) {
                    tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: could not write the token");
                }
            }
            Err(e) => {
                tracing::warn!(ns = %run.ns, name = %run.name, error = %e, "kubelet: no ServiceAccount token")
            }
        }
    }
    true
}

/// Wait for a Secret change in `ns` or [`CONFIG_RETRY`]; `false` if cancelled.
pub(super) async fn wait_config_retry(
    ns: &str,
    changes: &mut broadcast::Receiver<(String, String)>,
    cancel: &CancellationToken,
) -> bool {
    let deadline = tokio::time::sleep(CONFIG_RETRY);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            _ = cancel.cancelled() => return false,
            ev = changes.recv() => match ev {
                Ok((n, _)) if n == ns => return true,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return sleep_or_cancel(CONFIG_RETRY, cancel).await,
            },
        }
    }
}

pub(super) async fn try_mount_volumes(run: &Arc<PodRun>) -> Result<(), String> {
    for v in run.spec.volumes.iter().flatten() {
        let Some(sv) = &v.secret else { continue };
        let secret_name = sv.secret_name.clone().unwrap_or_default();
        let secret = run.kl.get_secret(&run.ns, &secret_name).await?;
        let files = secret_volume_files(secret.as_ref(), sv)?;
        let mode = sv.default_mode.and_then(|m| u32::try_from(m).ok());
        write_atomic(&run.volume_dir(&v.name), &files, mode)
            .map_err(|e| format!("writing volume {}: {e}", v.name))?;
        record_volume(run, &files, &BTreeMap::new());
    }
    Ok(())
}

pub(super) fn record_volume(
    run: &PodRun,
    new: &BTreeMap<String, Vec<u8>>,
    old: &BTreeMap<String, Vec<u8>>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let d = truth::digest(v);
            run.kl
                .ctx
                .truth
                .record(step::VOLUME_UPDATED, &run.ns, &run.name, Some(&d));
        }
    }
}

pub(super) fn read_volume(
    dir: &Path,
    keys: impl Iterator<Item = String>,
) -> BTreeMap<String, Vec<u8>> {
    keys.filter_map(|k| std::fs::read(dir.join(&k)).ok().map(|v| (k, v)))
        .collect()
}

/// Refresh Secret volumes `volume-sync-latency` after their Secret changes
/// (and after `canary-stale` clears), from the watch-fed cache as the
/// kubelet's Secret manager does. Never while `canary-stale` is on.
pub(super) async fn volume_sync(run: Arc<PodRun>, cancel: CancellationToken) {
    if let Some(node) = run.kl.node.clone() {
        return super::node::volume_resync(run, &node, cancel).await;
    }
    let vols = secret_volumes(&run);
    if vols.is_empty() {
        return;
    }
    let names: HashSet<String> = vols
        .iter()
        .filter_map(|(_, s)| s.secret_name.clone())
        .collect();
    let mut changes = run.kl.secret_changed.subscribe();
    let mut was_stale = run.kl.secrets.stale(run.knobs());
    loop {
        let relevant = tokio::select! {
            ev = changes.recv() => match ev {
                Ok((ns, n)) => ns == run.ns && names.contains(&n),
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // The kubelet's periodic sync; also notices `canary-stale` clearing.
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let stale = run.kl.secrets.stale(run.knobs());
                let cleared = was_stale && !stale;
                was_stale = stale;
                cleared
            }
            _ = cancel.cancelled() => return,
        };
        if !relevant {
            continue;
        }
        if !sleep_or_cancel(run.knobs().sample(Knob::VolumeSyncLatency), &cancel).await {
            return;
        }
        if run.kl.secrets.stale(run.knobs()) {
            was_stale = true;
            continue;
        }
        for (vol_name, sv) in &vols {
            let name = sv.secret_name.clone().unwrap_or_default();
            let secret = run.kl.secrets.view(run.knobs(), &run.ns, &name);
            refresh_volume(&run, vol_name, sv, secret.as_ref(), "kubelet");
        }
    }
}

/// The Pod's Secret volumes: (volume name, source).
pub(super) fn secret_volumes(
    run: &PodRun,
) -> Vec<(String, k8s_openapi::api::core::v1::SecretVolumeSource)> {
    run.spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.clone().map(|s| (v.name.clone(), s)))
        .collect()
}

/// One refresh of Secret volume `vol_name` from `secret` (the kubelet's
/// and the node agent's resync alike): rewritten with the atomic `..data`
/// swap only when its content or its set of keys differs; a Secret gone
/// keeps the last content, as the real kubelet does. `who` names the agent
/// in the logs.
pub(super) fn refresh_volume(
    run: &PodRun,
    vol_name: &str,
    sv: &k8s_openapi::api::core::v1::SecretVolumeSource,
    secret: Option<&Secret>,
    who: &str,
) {
    let Ok(files) = secret_volume_files(secret, sv) else {
        return;
    };
    let dir = run.volume_dir(vol_name);
    let current = read_volume(&dir, files.keys().cloned());
    let listed = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with(".."))
                .count()
        })
        .unwrap_or(0);
    let same_keys = files.keys().filter(|k| !k.contains('/')).count() == listed;
    if current == files && same_keys {
        return;
    }
    let mode = sv.default_mode.and_then(|m| u32::try_from(m).ok());
    match write_atomic(&dir, &files, mode) {
        Ok(()) => {
            tracing::info!(ns = %run.ns, pod = %run.name, volume = %vol_name, "{who}: Secret volume updated");
            record_volume(run, &files, &current);
        }
        Err(e) => {
            tracing::warn!(ns = %run.ns, pod = %run.name, volume = %vol_name, error = %e, "{who}: volume update failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_volume_items_and_missing() {
        use k8s_openapi::api::core::v1::{KeyToPath, SecretVolumeSource};
        use k8s_openapi::ByteString;
        let s = Secret {
            data: Some(BTreeMap::from([(
                "k".to_string(),
                ByteString(b"v".to_vec()),
            )])),
            ..Default::default()
        };
        let all = SecretVolumeSource {
            secret_name: Some("s".into()),
            ..Default::default()
        };
        assert_eq!(secret_volume_files(Some(&s), &all).unwrap()["k"], b"v");
        assert!(secret_volume_files(None, &all)
            .unwrap_err()
            .contains("not found"));
        let items = |key: &str, path: &str| SecretVolumeSource {
            secret_name: Some("s".into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: path.into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            secret_volume_files(Some(&s), &items("k", "dir/file")).unwrap()["dir/file"],
            b"v"
        );
        assert!(secret_volume_files(Some(&s), &items("nope", "x")).is_err());
    }
}
