//! Where a container's mount paths live on the host, and the rewriting of
//! those paths (and of `0.0.0.0:`) in its command, args and env.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Container;

use super::pod::PodRun;
use super::SERVICE_ACCOUNT_MOUNT;

/// Rewrite mount paths (and the canary's listen address) in one string: the
/// lab rules in the module doc. `mounts` is sorted longest path first.
pub fn rewrite(s: &str, mounts: &[(String, PathBuf)], pod_ip: Ipv4Addr) -> String {
    let mut out = s.replace("0.0.0.0:", &format!("{pod_ip}:"));
    for (mount, host) in mounts {
        out = replace_path_prefix(&out, mount, &host.to_string_lossy());
    }
    out
}

/// Replace `prefix` where it stands as a whole path (followed by the end,
/// `/`, or a character that cannot continue a path component).
pub(super) fn replace_path_prefix(s: &str, prefix: &str, with: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        let after = &rest[pos + prefix.len()..];
        let whole = after
            .chars()
            .next()
            .is_none_or(|c| c == '/' || !(c.is_alphanumeric() || c == '-' || c == '_' || c == '.'));
        out.push_str(&rest[..pos]);
        out.push_str(if whole { with } else { prefix });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Mounts of one container, longest mount path first: `(mountPath, host path)`.
pub(super) fn container_mounts(
    run: &PodRun,
    c: &Container,
) -> Result<Vec<(String, PathBuf)>, String> {
    let mut mounts = Vec::new();
    for (i, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let vol = run.volume_dir(&vm.name);
        match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            // A subPath mount is the file as it was at container start; the
            // kubelet never updates it.
            Some(sub) => {
                let from = vol.join(sub);
                let to = run.dir.join("subpath").join(&c.name).join(i.to_string());
                let _ = std::fs::remove_dir_all(&to);
                let _ = std::fs::remove_file(&to);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                if from.is_dir() {
                    std::fs::create_dir_all(&to).map_err(|e| format!("subPath {sub}: {e}"))?;
                    for e in std::fs::read_dir(&from)
                        .map_err(|e| format!("subPath {sub}: {e}"))?
                        .flatten()
                    {
                        if e.path().is_file() {
                            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                        }
                    }
                } else {
                    std::fs::copy(&from, &to).map_err(|e| format!("subPath {sub}: {e}"))?;
                }
                mounts.push((vm.mount_path.clone(), to));
            }
            None => mounts.push((vm.mount_path.clone(), vol)),
        }
    }
    if run.spec.automount_service_account_token != Some(false) {
        mounts.push((
            SERVICE_ACCOUNT_MOUNT.to_string(),
            run.dir.join("serviceaccount"),
        ));
    }
    mounts.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    Ok(mounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_rewritten_as_whole_paths() {
        let mounts = vec![
            ("/etc/secret-extra".to_string(), PathBuf::from("/lab/b")),
            ("/etc/secret".to_string(), PathBuf::from("/lab/a")),
        ];
        let ip = Ipv4Addr::new(127, 1, 2, 3);
        assert_eq!(rewrite("/etc/secret/value", &mounts, ip), "/lab/a/value");
        assert_eq!(
            rewrite("--from-file=/etc/secret/v", &mounts, ip),
            "--from-file=/lab/a/v"
        );
        assert_eq!(rewrite("/etc/secret-extra/v", &mounts, ip), "/lab/b/v");
        assert_eq!(rewrite("/etc/secrets/v", &mounts, ip), "/etc/secrets/v");
        assert_eq!(rewrite("0.0.0.0:8080", &mounts, ip), "127.1.2.3:8080");
    }
}
