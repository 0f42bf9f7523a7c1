//! The real lab's OCI registry: go-containerregistry's `registry` (built by
//! `scripts/build-real.sh`, pinned as `GGCR`), in memory, on a free
//! loopback port. `scripts/build-image.sh` pushes the prober image to it;
//! the node agent pulls from it ([`crate::controllers::kubelet::image`]).

use std::path::Path;
use std::time::Duration;

use super::{free_port, wait_ready, Binaries, Binary, Error, Proc};

/// Start the registry (logging to `logs/registry.log`), wait until it
/// answers `GET /v2/`; returns the process and `127.0.0.1:PORT`. `Ok(None)`
/// when it is not built (the lab then runs without one, and says so).
pub async fn start(
    binaries: &Binaries,
    logs: &Path,
    limit: Duration,
) -> Result<Option<(Proc, String)>, Error> {
    let bin = match binaries.require(Binary::Registry) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "real lab: no OCI registry; images of it cannot be pulled");
            return Ok(None);
        }
    };
    let port = free_port("registry")?;
    let proc = Proc::spawn(
        "registry",
        &bin,
        &["-port".to_string(), port.to_string()],
        &logs.join("registry.log"),
    )?;
    let addr = format!("127.0.0.1:{port}");
    let url = format!("http://{addr}/v2/");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::Client(e.to_string()))?;
    let procs = [proc];
    wait_ready(&procs, "registry", limit, || async {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("GET {url}: {}", r.status())),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    })
    .await?;
    let [proc] = procs;
    Ok(Some((proc, addr)))
}

/// The node agent's image runtime for `registry`: images cached in
/// `DIR/images`, containers told the API server's loopback address.
pub fn node_images(
    cluster: &super::RealCluster,
    registry: &str,
    dir: &Path,
) -> std::sync::Arc<crate::controllers::kubelet::image::ImageRuntime> {
    let port = cluster
        .api_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(443);
    crate::controllers::kubelet::image::ImageRuntime::new(
        registry,
        &dir.join("images"),
        "127.0.0.1",
        port,
    )
}
