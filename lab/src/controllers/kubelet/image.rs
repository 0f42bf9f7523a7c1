//! Node mode: images pulled from the lab's OCI registry, as a container
//! runtime pulls them.
//!
//! An image whose reference names the lab's registry (`up --cluster real`
//! starts go-containerregistry's `registry` on loopback; `lab.json` says
//! where) is pulled over the OCI distribution API: the manifest (an index
//! resolves to its linux/amd64 manifest), the config and every layer, each
//! verified against its sha256 digest, and the layers unpacked in order into
//! a rootfs cached per manifest digest (`DIR/images/sha256-<hex>/`). A
//! reference the registry does not have is `ErrImagePull` with the message a
//! kubelet shows. [`super::runtime`] runs the entrypoint inside that rootfs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where images come from and go to, and what containers are told about the
/// API server (no kube-proxy here: the `kubernetes` Service's ClusterIP is
/// not routable, so `KUBERNETES_SERVICE_HOST`/`PORT` name the API server's
/// loopback address, whose certificate has it as a SAN).
#[derive(Debug)]
pub struct ImageRuntime {
    /// The registry, `127.0.0.1:PORT`.
    pub registry: String,
    /// The image cache (`DIR/images`).
    pub cache: PathBuf,
    /// `KUBERNETES_SERVICE_HOST` of containers.
    pub api_host: String,
    /// `KUBERNETES_SERVICE_PORT` of containers.
    pub api_port: u16,
    pulls: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl ImageRuntime {
    /// A runtime pulling from `registry` into `cache`.
    pub fn new(registry: &str, cache: &Path, api_host: &str, api_port: u16) -> Arc<ImageRuntime> {
        Arc::new(ImageRuntime {
            registry: registry.to_string(),
            cache: cache.to_path_buf(),
            api_host: api_host.to_string(),
            api_port,
            pulls: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
        })
    }
}

/// An image reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port).
    pub registry: String,
    /// Repository path in the registry.
    pub repository: String,
    /// The tag or `sha256:` digest to resolve (`latest` when neither).
    pub reference: String,
    /// Whether `reference` is a digest.
    pub by_digest: bool,
}

/// Parse `host[:port]/repo[:tag][@digest]`; `None` without a registry host
/// (a first component with a `.` or `:`, or `localhost`).
pub fn parse_reference(image: &str) -> Option<Reference> {
    let (host, rest) = image.split_once('/')?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return None;
    }
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (rest, None),
    };
    let (repository, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let (reference, by_digest) = match (digest, tag) {
        (Some(d), _) => (d.to_string(), true),
        (None, Some(t)) => (t.to_string(), false),
        (None, None) => ("latest".to_string(), false),
    };
    Some(Reference {
        registry: host.to_string(),
        repository: repository.to_string(),
        reference,
        by_digest,
    })
}

/// A pulled image: its rootfs and the config's process fields.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// `sha256:...` of the manifest.
    pub digest: String,
    /// The unpacked layers.
    pub rootfs: PathBuf,
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env` (`NAME=value`).
    pub env: Vec<(String, String)>,
    /// `config.User` (`uid[:gid]` or a name).
    pub user: String,
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The message a kubelet shows for a failed pull.
fn pull_error(image: &str, why: &str) -> String {
    format!("Failed to pull image \"{image}\": {why}")
}

impl ImageRuntime {
    /// Whether `image` names this runtime's registry.
    pub fn serves(&self, image: &str) -> Option<Reference> {
        parse_reference(image).filter(|r| r.registry == self.registry)
    }

    async fn get(
        &self,
        r: &Reference,
        kind: &str,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let url = format!("http://{}/v2/{}/{kind}/{what}", r.registry, r.repository);
        let resp = self
            .http
            .get(&url)
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let header = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err("not found".into());
        }
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
        let body = resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        Ok((body.to_vec(), header))
    }

    /// A verified blob.
    async fn blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, String> {
        let (body, _) = self
            .get(r, "blobs", digest)
            .await
            .map_err(|e| format!("blob {digest}: {e}"))?;
        let got = sha256(&body);
        if got != digest {
            return Err(format!("blob {digest}: digest mismatch (got {got})"));
        }
        Ok(body)
    }

    /// Pull `image` (cached by manifest digest); the error is the kubelet's
    /// `ErrImagePull` message.
    pub async fn pull(&self, image: &str) -> Result<Pulled, String> {
        let r = self
            .serves(image)
            .ok_or_else(|| pull_error(image, "not in the lab's registry"))?;
        let resolve_failed = |why: String| {
            pull_error(
                image,
                &format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {why}"),
            )
        };
        let (mut body, mut header) = self
            .get(&r, "manifests", &r.reference)
            .await
            .map_err(|e| resolve_failed(format!("{image}: {e}")))?;
        let mut manifest: Value = serde_json::from_slice(&body)
            .map_err(|e| pull_error(image, &format!("manifest: {e}")))?;
        if r.by_digest && sha256(&body) != r.reference {
            return Err(pull_error(
                image,
                &format!("manifest digest mismatch (got {})", sha256(&body)),
            ));
        }
        // An index: its linux/amd64 manifest.
        if manifest.get("manifests").is_some() {
            let entry = manifest["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| {
                    m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64"
                })
                .and_then(|m| m["digest"].as_str().map(str::to_string))
                .ok_or_else(|| {
                    pull_error(
                        image,
                        "no matching manifest for linux/amd64 in the manifest list entries",
                    )
                })?;
            let (b, h) = self
                .get(&r, "manifests", &entry)
                .await
                .map_err(|e| resolve_failed(format!("{entry}: {e}")))?;
            if sha256(&b) != entry {
                return Err(pull_error(
                    image,
                    &format!("manifest {entry}: digest mismatch"),
                ));
            }
            (body, header) = (b, h);
            manifest = serde_json::from_slice(&body)
                .map_err(|e| pull_error(image, &format!("manifest: {e}")))?;
        }
        let digest = sha256(&body);
        if let Some(h) = header.filter(|h| *h != digest) {
            return Err(pull_error(
                image,
                &format!("manifest digest {digest} differs from the registry's {h}"),
            ));
        }
        let dir = self.cache.join(digest.replace(':', "-"));
        let _guard = self.pulls.lock().await;
        if !dir.join("complete").exists() {
            self.unpack(&r, &manifest, &dir)
                .await
                .map_err(|e| pull_error(image, &e))?;
            tracing::info!(%image, %digest, "node agent: image pulled and unpacked");
        }
        let config: Value = serde_json::from_slice(
            &std::fs::read(dir.join("config.json"))
                .map_err(|e| pull_error(image, &e.to_string()))?,
        )
        .map_err(|e| pull_error(image, &format!("config: {e}")))?;
        let c = &config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        Ok(Pulled {
            digest,
            rootfs: dir.join("rootfs"),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"])
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// Config and layers, verified, unpacked into a temporary directory
    /// renamed onto `dir` when complete.
    async fn unpack(&self, r: &Reference, manifest: &Value, dir: &Path) -> Result<(), String> {
        let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let rootfs = tmp.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or("manifest without config")?;
        let config = self.blob(r, config_digest).await?;
        std::fs::write(tmp.join("config.json"), &config).map_err(|e| e.to_string())?;
        for (i, layer) in manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let d = layer["digest"].as_str().ok_or("layer without digest")?;
            let media = layer["mediaType"].as_str().unwrap_or_default();
            let bytes = self.blob(r, d).await?;
            let file = tmp.join(format!("layer{i}"));
            std::fs::write(&file, &bytes).map_err(|e| e.to_string())?;
            let z = if media.ends_with("gzip") {
                "-xzf"
            } else {
                "-xf"
            };
            let out = tokio::process::Command::new("tar")
                .args([
                    z,
                    &file.to_string_lossy(),
                    "-C",
                    &rootfs.to_string_lossy(),
                    "--numeric-owner",
                ])
                .output()
                .await
                .map_err(|e| format!("tar: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "unpacking layer {d}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let _ = std::fs::remove_file(&file);
            apply_whiteouts(&rootfs);
        }
        std::fs::write(tmp.join("complete"), b"").map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| format!("{}: {e}", dir.display()))
    }
}

/// OCI whiteouts of the layer just unpacked: `.wh.<name>` removes `<name>`
/// (of a lower layer), `.wh..wh..opq` empties its directory's lower content
/// (approximated: the marker is dropped).
fn apply_whiteouts(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if let Some(target) = name.strip_prefix(".wh.") {
            if target != ".wh..opq" {
                let t = dir.join(target);
                let _ = std::fs::remove_dir_all(&t);
                let _ = std::fs::remove_file(&t);
            }
            let _ = std::fs::remove_file(&path);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            apply_whiteouts(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/secret-canary:0.1.0").unwrap();
        assert_eq!(
            (
                r.registry.as_str(),
                r.repository.as_str(),
                r.reference.as_str(),
                r.by_digest
            ),
            ("127.0.0.1:5000", "secret-canary", "0.1.0", false)
        );
        let r = parse_reference("127.0.0.1:5000/a/b@sha256:abc").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.reference.as_str(), r.by_digest),
            ("a/b", "sha256:abc", true)
        );
        let r = parse_reference("ghcr.io/x/secret-canary").unwrap();
        assert_eq!(r.reference, "latest");
        assert!(parse_reference("secret-canary:latest").is_none());
        assert!(parse_reference("library/nginx:1").is_none());
    }
}
