//! Node mode: a container of a pulled image ([`super::image`]) run inside
//! its rootfs, as a container runtime runs it.
//!
//! Each container gets a copy of the image's rootfs (`<pod dir>/rootfs/<name>`,
//! hard links: the cache must be on the same file system, `DIR/images`)
//! and its own mount namespace (util-linux `unshare --mount`), in which a
//! small launch script bind-mounts the Pod's volumes at their `mountPath`
//! (read-only where the mount says so), `/dev` and a `/proc`, remounts the
//! root read-only for `readOnlyRootFilesystem`, and `chroot`s into it as the
//! user the securityContext or the image says, so the process sees every
//! file at the absolute path the spec gives (its ServiceAccount token at
//! `/var/run/secrets/kubernetes.io/serviceaccount`, its config) and nothing
//! of the host's file system. The network is the node's (the Pod's IP is a
//! loopback address of its own; `0.0.0.0:` in args and env is rewritten to
//! it, as the lab does for every container). Command and args follow the
//! Kubernetes rules against the image's Entrypoint and Cmd; env is the
//! image's, then the Service env of the API server, then the container's.
//!
//! Needs root (CAP_SYS_ADMIN for the mount namespace), as a kubelet does.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};

use super::container::{Launch, PrepError};
use super::env::{build_env, expand};
use super::image::{ImageRuntime, Pulled};
use super::mounts::container_mounts;
use super::pod::PodRun;
use crate::controllers::bankvaults::EnvValue;

/// A host tool the launch needs, by absolute path (the container's PATH
/// applies inside it, not to the launch).
fn host_tool(name: &str) -> Result<PathBuf, PrepError> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            PrepError::Run(format!(
                "the node agent needs {name} (util-linux / coreutils) to run containers of pulled images"
            ))
        })
}

/// Single-quoted for sh.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `uid[:gid]`, or a name from the rootfs' /etc/passwd.
fn image_user(user: &str, rootfs: &Path) -> (Option<i64>, Option<i64>) {
    if user.is_empty() {
        return (None, None);
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let uid = u.parse::<i64>().ok().or_else(|| {
        std::fs::read_to_string(rootfs.join("etc/passwd"))
            .ok()?
            .lines()
            .find(|l| l.split(':').next() == Some(u))
            .and_then(|l| l.split(':').nth(2)?.parse().ok())
    });
    (uid, g.and_then(|g| g.parse().ok()))
}

struct Identity {
    uid: i64,
    gid: i64,
    groups: Vec<i64>,
}

/// The process identity: container securityContext, then the Pod's, then
/// the image's user; `runAsNonRoot` refuses root as a kubelet does.
fn identity(
    run: &PodRun,
    c: &Container,
    pulled: &Pulled,
    rootfs: &Path,
) -> Result<Identity, PrepError> {
    let pod = run.spec.security_context.clone().unwrap_or_default();
    let ctr = c.security_context.clone().unwrap_or_default();
    let (img_uid, img_gid) = image_user(&pulled.user, rootfs);
    let uid = ctr.run_as_user.or(pod.run_as_user).or(img_uid).unwrap_or(0);
    let gid = ctr
        .run_as_group
        .or(pod.run_as_group)
        .or(img_gid)
        .unwrap_or(0);
    let non_root = ctr.run_as_non_root.or(pod.run_as_non_root).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(PrepError::Config(format!(
            "container has runAsNonRoot and image will run as root (pod: \"{}_{}\", container: {})",
            run.name, run.ns, c.name
        )));
    }
    Ok(Identity {
        uid,
        gid,
        groups: supplemental(&pod),
    })
}

fn supplemental(pod: &PodSecurityContext) -> Vec<i64> {
    pod.fs_group
        .into_iter()
        .chain(pod.supplemental_groups.iter().flatten().copied())
        .collect()
}

fn read_only_root(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s: &SecurityContext| s.read_only_root_filesystem)
        .unwrap_or(false)
}

/// ConfigMap volumes, written at container start (the prober's config;
/// the chart rolls the prober when it changes).
async fn config_map_volumes(run: &PodRun) -> Result<(), PrepError> {
    for v in run.spec.volumes.iter().flatten() {
        let Some(cm) = &v.config_map else { continue };
        let m = match run
            .kl
            .get_config_map(&run.ns, &cm.name)
            .await
            .map_err(PrepError::Config)?
        {
            Some(m) => m,
            None if cm.optional == Some(true) => Default::default(),
            None => {
                return Err(PrepError::Config(format!(
                    "configmap \"{}\" not found",
                    cm.name
                )))
            }
        };
        let mut data: std::collections::BTreeMap<String, Vec<u8>> = m
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        data.extend(
            m.binary_data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0)),
        );
        let files = match &cm.items {
            None => data,
            Some(items) => {
                let mut f = std::collections::BTreeMap::new();
                for it in items {
                    match data.get(&it.key) {
                        Some(b) => {
                            f.insert(it.path.clone(), b.clone());
                        }
                        None if cm.optional == Some(true) => {}
                        None => {
                            return Err(PrepError::Config(format!(
                                "configmap references non-existent config key: {}",
                                it.key
                            )))
                        }
                    }
                }
                f
            }
        };
        let mode = cm.default_mode.and_then(|m| u32::try_from(m).ok());
        super::write_atomic(&run.volume_dir(&v.name), &files, mode)
            .map_err(|e| PrepError::Run(format!("writing volume {}: {e}", v.name)))?;
    }
    Ok(())
}

/// Pull, then prepare the launch of `c` inside the image's rootfs.
pub(super) async fn prepare(
    run: &PodRun,
    c: &Container,
    rt: &ImageRuntime,
) -> Result<Launch, PrepError> {
    let image = c.image.clone().unwrap_or_default();
    let pulled = rt.pull(&image).await.map_err(PrepError::Image)?;
    let env = build_env(run, c).await.map_err(PrepError::Config)?;

    // Command and args: the Kubernetes rules against Entrypoint and Cmd.
    let lookup = |n: &str| env.iter().find(|e| e.name == n).map(|e| e.value.clone());
    let ip = format!("{}:", run.ip);
    let fix = |s: &String| expand(s, lookup).replace("0.0.0.0:", &ip);
    let (command, args): (Vec<String>, Vec<String>) = match (&c.command, &c.args) {
        (Some(cmd), a) => (cmd.clone(), a.clone().unwrap_or_default()),
        (None, Some(a)) => (pulled.entrypoint.clone(), a.clone()),
        (None, None) => (pulled.entrypoint.clone(), pulled.cmd.clone()),
    };
    let argv: Vec<String> = command.iter().chain(&args).map(fix).collect();
    if argv.is_empty() {
        return Err(PrepError::Run(format!(
            "no command specified: image {image:?} has no entrypoint or cmd"
        )));
    }

    // Env: the image's, the API server's Service env, the container's.
    let mut all: Vec<EnvValue> = pulled
        .env
        .iter()
        .map(|(k, v)| EnvValue {
            name: k.clone(),
            value: v.clone(),
            secret: false,
        })
        .collect();
    for (k, v) in [
        ("KUBERNETES_SERVICE_HOST", rt.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT", rt.api_port.to_string()),
        ("HOSTNAME", run.name.clone()),
    ] {
        all.push(EnvValue {
            name: k.into(),
            value: v,
            secret: false,
        });
    }
    for mut e in env {
        if !e.secret {
            e.value = e.value.replace("0.0.0.0:", &ip);
        }
        all.retain(|x| x.name != e.name);
        all.push(e);
    }

    // The container's rootfs: a fresh copy of the image's, of hard links
    // (the chart's containers have a read-only root; a writable one that
    // rewrites an image file in place would change the cached image).
    let root = run.dir.join("rootfs").join(&c.name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(run.dir.join("rootfs"))
        .map_err(|e| PrepError::Run(format!("rootfs: {e}")))?;
    let cp = tokio::process::Command::new("cp")
        .arg("-al")
        .arg(&pulled.rootfs)
        .arg(&root)
        .output()
        .await
        .map_err(|e| PrepError::Run(format!("copying the rootfs: {e}")))?;
    if !cp.status.success() {
        return Err(PrepError::Run(format!(
            "copying the rootfs: {}",
            String::from_utf8_lossy(&cp.stderr).trim()
        )));
    }
    let who = identity(run, c, &pulled, &root)?;
    let hosts = format!("127.0.0.1\tlocalhost\n{}\t{}\n", run.ip, run.name);
    let _ = std::fs::create_dir_all(root.join("etc"));
    // A new file, not one linked to the cached image.
    let _ = std::fs::remove_file(root.join("etc/hosts"));
    let _ = std::fs::write(root.join("etc/hosts"), hosts);

    config_map_volumes(run).await?;
    // emptyDir volumes: world-writable directories, as the kubelet makes them.
    for v in run.spec.volumes.iter().flatten() {
        if v.empty_dir.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let d = run.volume_dir(&v.name);
            let _ = std::fs::create_dir_all(&d);
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777));
        }
    }
    // Mounts, parents first; one per mountPath (the Pod's projected token
    // volume wins over the lab's own token directory at the same path).
    let mut mounts = container_mounts(run, c).map_err(PrepError::Run)?;
    let mut seen = std::collections::HashSet::new();
    mounts.retain(|(m, _)| seen.insert(m.trim_end_matches('/').to_string()));
    mounts.sort_by_key(|(m, _)| m.len());
    let read_only = |m: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|vm| vm.mount_path == m && vm.read_only == Some(true))
    };

    let mount = host_tool("mount")?;
    let chroot = host_tool("chroot")?;
    let unshare = host_tool("unshare")?;
    let m = q(&mount.to_string_lossy());
    let mut script = String::from(
        "# Written by the lab's node agent: the container's mounts, then chroot.\nset -e\n",
    );
    script += &format!("R={}\n", q(&root.to_string_lossy()));
    let ro_root = read_only_root(c);
    if ro_root {
        script += &format!("{m} --bind \"$R\" \"$R\"\n");
    }
    for d in ["dev", "proc"] {
        let _ = std::fs::create_dir_all(root.join(d));
    }
    script += &format!("{m} --rbind /dev \"$R/dev\"\n{m} -t proc proc \"$R/proc\"\n");
    for (path, host) in &mounts {
        let rel = path.trim_start_matches('/');
        let target = root.join(rel);
        if host.is_dir() {
            let _ = std::fs::create_dir_all(&target);
        } else {
            if let Some(p) = target.parent() {
                let _ = std::fs::create_dir_all(p);
            }
            if !target.exists() {
                let _ = std::fs::write(&target, b"");
            }
        }
        script += &format!(
            "{m} --bind {} \"$R\"/{}\n",
            q(&host.to_string_lossy()),
            q(rel)
        );
        if read_only(path) {
            script += &format!("{m} -o remount,bind,ro \"$R\"/{}\n", q(rel));
        }
    }
    if ro_root {
        script += &format!("{m} -o remount,bind,ro \"$R\"\n");
    }
    let groups = match who.groups.is_empty() {
        true => String::new(),
        false => format!(
            " --groups={}",
            who.groups
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    };
    script += &format!(
        "exec {} --userspec={}:{}{groups} \"$R\" \"$@\"\n",
        q(&chroot.to_string_lossy()),
        who.uid,
        who.gid
    );
    let script_path = run.dir.join("rootfs").join(format!("{}.sh", c.name));
    std::fs::write(&script_path, script)
        .map_err(|e| PrepError::Run(format!("{}: {e}", script_path.display())))?;
    tracing::info!(ns = %run.ns, pod = %run.name, container = %c.name, image = %image, digest = %pulled.digest, uid = who.uid, "node agent: container of a pulled image");

    let mut launch_args = vec![
        "--mount".to_string(),
        "--propagation".into(),
        "private".into(),
        "--".into(),
        "/bin/sh".into(),
        script_path.to_string_lossy().to_string(),
    ];
    launch_args.extend(argv);
    Ok(Launch {
        program: unshare,
        args: launch_args,
        env: all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_users() {
        assert_eq!(q("a'b"), "'a'\\''b'");
        let d = std::env::temp_dir().join(format!("runtime-users-{}", std::process::id()));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(
            d.join("etc/passwd"),
            "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n",
        )
        .unwrap();
        assert_eq!(image_user("65532:65532", &d), (Some(65532), Some(65532)));
        assert_eq!(image_user("nonroot", &d), (Some(65532), None));
        assert_eq!(image_user("", &d), (None, None));
        let _ = std::fs::remove_dir_all(&d);
    }
}
