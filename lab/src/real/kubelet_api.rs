//! The node agent's kubelet API, the part the API server calls for
//! `kubectl logs` and `helm test --logs`: `GET
//! /containerLogs/{namespace}/{pod}/{container}` over HTTPS (a serving
//! certificate for 127.0.0.1 from the lab's CA, which kube-apiserver checks
//! with `--kubelet-certificate-authority`), on the port the Node reports in
//! `status.daemonEndpoints.kubeletEndpoint`. The API server reaches it at the
//! Node's InternalIP (through the egress proxy with `--unroutable-pods`).
//!
//! Lab simplifications: the API server's client certificate is not asked
//! for (loopback only); `tailLines` and `limitBytes` are honoured, `follow`
//! answers what the log holds now and ends, `timestamps` is ignored (the
//! lab's container logs are plain process output).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::webhook::{server_config, Error, TlsListener};
use crate::controllers::kubelet::pod_dir;

/// The running kubelet API.
pub struct KubeletApi {
    /// Its address (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// The server task (ends when the cancel token fires).
    pub task: JoinHandle<()>,
}

/// Query parameters of `containerLogs` the lab honours.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogQuery {
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
}

/// The last `tail` lines of `text` (all of it when `None`), then at most
/// `limit` bytes of that (from the start, as the kubelet cuts).
fn select(text: &[u8], tail: Option<usize>, limit: Option<usize>) -> &[u8] {
    let mut out = text;
    if let Some(n) = tail {
        let body = out.strip_suffix(b"\n").unwrap_or(out);
        let mut start = 0;
        if n == 0 {
            start = out.len();
        } else {
            let mut seen = 0;
            for (i, b) in body.iter().enumerate().rev() {
                if *b == b'\n' {
                    seen += 1;
                    if seen == n {
                        start = i + 1;
                        break;
                    }
                }
            }
        }
        out = &out[start..];
    }
    if let Some(l) = limit {
        out = &out[..l.min(out.len())];
    }
    out
}

async fn container_logs(
    State(dir): State<Arc<PathBuf>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let safe = |s: &str| !s.is_empty() && !s.contains(['/', '\\']) && s != "." && s != "..";
    if !(safe(&namespace) && safe(&pod) && safe(&container)) {
        return (StatusCode::BAD_REQUEST, "bad path\n").into_response();
    }
    let path = pod_dir(&dir, &namespace, &pod).join(format!("{container}.log"));
    match tokio::fs::read(&path).await {
        Ok(text) => {
            let body = select(&text, q.tail_lines, q.limit_bytes).to_vec();
            (
                StatusCode::OK,
                [("content-type", "text/plain; charset=utf-8")],
                body,
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            StatusCode::NOT_FOUND,
            format!("no log of container {container} in Pod {namespace}/{pod} on this node\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the log: {e}\n"),
        )
            .into_response(),
    }
}

impl KubeletApi {
    /// Serve the container logs under `lab_dir` (the node agent's Pod
    /// directories) on 127.0.0.1, any free port, with `cert`/`key`.
    pub async fn start(
        lab_dir: &Path,
        cert: &Path,
        key: &Path,
        cancel: CancellationToken,
    ) -> Result<KubeletApi, Error> {
        let config = server_config(cert, key)?;
        let tcp = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::Bind)?;
        let addr = tcp.local_addr().map_err(Error::Bind)?;
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let app = Router::new()
            .route(
                "/containerLogs/{namespace}/{pod}/{container}",
                get(container_logs),
            )
            .with_state(Arc::new(lab_dir.to_path_buf()));
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "kubelet API stopped");
            }
        });
        Ok(KubeletApi { addr, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_and_limit_bytes() {
        let t = b"a\nbb\nccc\n";
        assert_eq!(select(t, None, None), t);
        assert_eq!(select(t, Some(1), None), b"ccc\n");
        assert_eq!(select(t, Some(2), None), b"bb\nccc\n");
        assert_eq!(select(t, Some(9), None), t);
        assert_eq!(select(t, Some(0), None), b"");
        assert_eq!(select(t, None, Some(3)), b"a\nb");
        assert_eq!(select(b"x\ny", Some(1), None), b"y");
    }
}
