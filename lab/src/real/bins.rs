//! Where the real components' binaries are: the cache `scripts/build-real.sh`
//! fills, keyed by the versions pinned in `lab/real/versions.env` (compiled in
//! here, so the lab and the build script cannot disagree).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `lab/real/versions.env`, the one place the versions are pinned.
pub const VERSIONS_ENV: &str = include_str!("../../real/versions.env");

/// The pinned versions (`KEY=value` lines of [`VERSIONS_ENV`]).
#[derive(Debug, Clone)]
pub struct Versions {
    /// Kubernetes (`kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, `kubectl`).
    pub kubernetes: String,
    /// etcd.
    pub etcd: String,
    /// External Secrets Operator.
    pub eso: String,
    /// Helm.
    pub helm: String,
    /// go-containerregistry (`crane`, `registry`).
    pub ggcr: String,
}

impl Versions {
    /// The versions this lab was built with.
    pub fn pinned() -> Versions {
        let map: BTreeMap<&str, &str> = VERSIONS_ENV
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| map.get(k).copied().unwrap_or_default().to_string();
        Versions {
            kubernetes: get("KUBERNETES"),
            etcd: get("ETCD"),
            eso: get("ESO"),
            helm: get("HELM"),
            ggcr: get("GGCR"),
        }
    }
}

/// One built binary the real cluster needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// etcd.
    Etcd,
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// kubectl.
    Kubectl,
    /// The ESO controller.
    ExternalSecrets,
    /// Helm.
    Helm,
    /// go-containerregistry's loopback OCI registry.
    Registry,
    /// go-containerregistry's `crane` (scripts/build-image.sh).
    Crane,
}

impl Binary {
    /// The component directory (`<component>-<version>`) and file name.
    fn location(self, v: &Versions) -> (String, &'static str) {
        match self {
            Binary::Etcd => (format!("etcd-{}", v.etcd), "etcd"),
            Binary::KubeApiserver => (format!("kubernetes-{}", v.kubernetes), "kube-apiserver"),
            Binary::KubeControllerManager => (
                format!("kubernetes-{}", v.kubernetes),
                "kube-controller-manager",
            ),
            Binary::KubeScheduler => (format!("kubernetes-{}", v.kubernetes), "kube-scheduler"),
            Binary::Kubectl => (format!("kubernetes-{}", v.kubernetes), "kubectl"),
            Binary::ExternalSecrets => (format!("eso-{}", v.eso), "external-secrets"),
            Binary::Helm => (format!("helm-{}", v.helm), "helm"),
            Binary::Registry => (format!("ggcr-{}", v.ggcr), "registry"),
            Binary::Crane => (format!("ggcr-{}", v.ggcr), "crane"),
        }
    }
}

/// The binaries are not built (yet).
#[derive(Debug, thiserror::Error)]
#[error("the real cluster's {missing} is not built (looked for {path}); run scripts/build-real.sh (it builds the pinned versions from their Go modules into {cache}; the first build takes a while, later runs are cached)")]
pub struct NotBuilt {
    /// Which binary.
    pub missing: String,
    /// Where it was looked for.
    pub path: String,
    /// The cache directory.
    pub cache: String,
}

/// The cache `scripts/build-real.sh` builds into:
/// `${SECRET_CANARY_CACHE:-$HOME/.cache/secret-canary}/real`.
pub fn cache_dir() -> PathBuf {
    let base = match std::env::var_os("SECRET_CANARY_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            Path::new(&home).join(".cache/secret-canary")
        }
    };
    base.join("real")
}

/// Resolved paths of the real cluster's binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The cache directory they were found in.
    pub cache: PathBuf,
    /// The versions.
    pub versions: Versions,
}

impl Binaries {
    /// The pinned versions in the default cache.
    pub fn pinned() -> Binaries {
        Binaries {
            cache: cache_dir(),
            versions: Versions::pinned(),
        }
    }

    /// Where `b` is (whether or not it exists).
    pub fn path(&self, b: Binary) -> PathBuf {
        let (dir, file) = b.location(&self.versions);
        self.cache.join(dir).join(file)
    }

    /// The path of `b`, or an error telling to run the build script.
    pub fn require(&self, b: Binary) -> Result<PathBuf, NotBuilt> {
        let p = self.path(b);
        if p.is_file() {
            Ok(p)
        } else {
            let (_, file) = b.location(&self.versions);
            Err(NotBuilt {
                missing: file.to_string(),
                path: p.display().to_string(),
                cache: self.cache.display().to_string(),
            })
        }
    }

    /// The paths of those of `needed` that are not built (empty: all are).
    pub fn missing(&self, needed: &[Binary]) -> Vec<String> {
        needed
            .iter()
            .filter_map(|x| self.require(*x).err().map(|e| e.path))
            .collect()
    }

    /// The ESO CRDs of the pinned ESO version (`eso-<v>/crds`).
    pub fn eso_crds(&self) -> PathBuf {
        self.cache
            .join(format!("eso-{}", self.versions.eso))
            .join("crds")
    }
}

/// The control plane every real-tier test needs.
pub const CONTROL_PLANE: [Binary; 5] = [
    Binary::Etcd,
    Binary::KubeApiserver,
    Binary::KubeControllerManager,
    Binary::KubeScheduler,
    Binary::ExternalSecrets,
];

/// For the tests and the benchmark: go on when `missing` is empty; else a
/// loud SKIP naming `what` and the missing paths, or a panic when
/// `SECRET_CANARY_REQUIRE_REAL` is set (`scripts/test.sh` sets it where Go
/// is present, so CI never skips the real tier silently).
pub fn present_or_skip(what: &str, missing: &[String], hint: &str) -> bool {
    if missing.is_empty() {
        return true;
    }
    let msg = format!("not built: {} ({hint})", missing.join(", "));
    if std::env::var_os("SECRET_CANARY_REQUIRE_REAL").is_some() {
        panic!("{msg} (SECRET_CANARY_REQUIRE_REAL is set)");
    }
    eprintln!("\n********************************************************************");
    eprintln!("SKIP ({what}): {msg}");
    eprintln!("********************************************************************\n");
    false
}

/// The pinned binaries when `needed` (beside [`CONTROL_PLANE`]) are built,
/// else `None` after [`present_or_skip`].
pub fn pinned_or_skip(what: &str, needed: &[Binary]) -> Option<Binaries> {
    let b = Binaries::pinned();
    let all: Vec<Binary> = CONTROL_PLANE.iter().chain(needed).copied().collect();
    present_or_skip(what, &b.missing(&all), "run scripts/build-real.sh").then_some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned() {
        let v = Versions::pinned();
        for x in [&v.kubernetes, &v.etcd, &v.eso, &v.helm, &v.ggcr] {
            assert!(x.starts_with('v'), "{v:?}");
        }
    }
}
