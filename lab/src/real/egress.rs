//! The API server's egress to the cluster, for `--unroutable-pods`: an
//! HTTP CONNECT proxy on a unix socket, the mode konnectivity's server
//! offers (`EgressSelectorConfiguration`, egress `cluster`, `HTTPConnect`
//! over `uds`). kube-apiserver then dials every Pod, Service and kubelet
//! connection of the `cluster` egress (Pod/Service proxy, logs, webhooks)
//! through it: one unix connection per dial, `CONNECT host:port`, then raw
//! bytes. The proxy maps the Pods' advertised (unroutable) addresses to
//! their loopback listen addresses and dials anything else as asked.

#[cfg(test)]
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::controllers::kubelet::unroutable::UnroutablePods;

/// Longest CONNECT request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Bound of reading the head and of dialling the target.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The running proxy; dropping it stops accepting (tunnels in flight end
/// with their connections).
pub struct EgressProxy {
    /// The unix socket.
    pub socket: PathBuf,
    /// The Pods' advertised addresses, shared with the node agent.
    pub pods: Arc<UnroutablePods>,
    cancel: CancellationToken,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The `--egress-selector-config-file` text: egress `cluster` through the
/// proxy at `socket`.
pub fn selector_config(socket: &Path) -> String {
    format!(
        "apiVersion: apiserver.k8s.io/v1beta1\n\
         kind: EgressSelectorConfiguration\n\
         egressSelections:\n\
         - name: cluster\n\
         \x20 connection:\n\
         \x20   proxyProtocol: HTTPConnect\n\
         \x20   transport:\n\
         \x20     uds:\n\
         \x20       udsName: {}\n",
        socket.display()
    )
}

/// Listen on `socket` (replacing a stale one).
pub fn start(socket: &Path) -> std::io::Result<EgressProxy> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let pods = Arc::new(UnroutablePods::default());
    let cancel = CancellationToken::new();
    tokio::spawn(serve(listener, pods.clone(), cancel.clone()));
    Ok(EgressProxy {
        socket: socket.to_path_buf(),
        pods,
        cancel,
    })
}

async fn serve(listener: UnixListener, pods: Arc<UnroutablePods>, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = cancel.cancelled() => return,
        };
        match conn {
            Ok((stream, _)) => {
                let pods = pods.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        r = tunnel(stream, &pods) => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "egress proxy: tunnel ended");
                            }
                        }
                        _ = cancel.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a CONNECT could not be served.
#[derive(Debug, thiserror::Error)]
enum TunnelError {
    #[error("reading the CONNECT request: {0}")]
    Head(String),
    #[error("dialling {0}: {1}")]
    Dial(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Read the request head byte by byte up to its blank line (the client
/// sends nothing more until it has the answer).
async fn read_head(stream: &mut UnixStream) -> Result<String, TunnelError> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(TunnelError::Head("head too long".into()));
        }
        if stream.read(&mut byte).await? == 0 {
            return Err(TunnelError::Head("closed before the head ended".into()));
        }
        head.push(byte[0]);
    }
    String::from_utf8(head).map_err(|_| TunnelError::Head("not UTF-8".into()))
}

/// The address to dial for a CONNECT authority `host:port`.
fn target(authority: &str, pods: &UnroutablePods) -> Result<SocketAddr, String> {
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| format!("{authority:?} is not IP:port"))?;
    Ok(match pods.resolve(addr.ip()) {
        Some(real) => SocketAddr::from((real, addr.port())),
        None => addr,
    })
}

async fn tunnel(mut client: UnixStream, pods: &UnroutablePods) -> Result<(), TunnelError> {
    let head = tokio::time::timeout(STEP_TIMEOUT, read_head(&mut client))
        .await
        .map_err(|_| TunnelError::Head("timed out".into()))??;
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    let (Some("CONNECT"), Some(authority)) = (words.next(), words.next()) else {
        client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            .await?;
        return Err(TunnelError::Head(format!("not a CONNECT: {line:?}")));
    };
    let to = match target(authority, pods) {
        Ok(t) => t,
        Err(e) => {
            client
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await?;
            return Err(TunnelError::Head(e));
        }
    };
    let upstream = match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                .await?;
            return Err(TunnelError::Dial(authority.into(), e.to_string()));
        }
        Err(_) => {
            client
                .write_all(b"HTTP/1.1 504 Gateway Timeout\r\n\r\n")
                .await?;
            return Err(TunnelError::Dial(authority.into(), "timed out".into()));
        }
    };
    let _ = upstream.set_nodelay(true);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let mut upstream = upstream;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_maps_advertised_pod_addresses_to_loopback() {
        let sock = std::env::temp_dir().join(format!(
            "secret-canary-egress-{}-{}.sock",
            std::process::id(),
            rand::random::<u32>()
        ));
        let proxy = start(&sock).unwrap();
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(&b).await.unwrap();
        });
        let shown = proxy.pods.advertise(Ipv4Addr::new(127, 0, 0, 1));
        let mut c = UnixStream::connect(&proxy.socket).await.unwrap();
        let authority = SocketAddr::new(shown, port);
        c.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = vec![0u8; 39];
        c.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 Connection established\r\n\r\n");
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        assert!(selector_config(&proxy.socket).contains("udsName: "));
        let _ = std::fs::remove_file(&sock);
    }
}
