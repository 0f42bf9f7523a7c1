//! A counting reverse proxy in front of the lab's API server. The lab counts
//! every client's requests together (its controllers too); the prober's
//! kubeconfig points here instead, so its own requests are counted by verb
//! (`watch`, `list`, `get`, `patch`, ...) and resource, then passed on
//! unchanged (watch responses are streamed through). In front of OpenBao it
//! times the store's answers on the wire (time to detect a store 403).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

/// verb → resource → requests.
pub type Counts = BTreeMap<String, BTreeMap<String, u64>>;

/// One answer that passed through: when its head arrived from upstream,
/// the request's method and path, the status.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When the upstream's response head arrived.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Response status.
    pub status: u16,
}

struct Shared {
    upstream: String,
    client: Client<HttpConnector, Body>,
    counts: Mutex<Counts>,
    answers: Mutex<Vec<Answer>>,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `upstream`
    /// (`http://host:port`) until `cancel` fires.
    pub async fn start(upstream: &str, cancel: CancellationToken) -> std::io::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            counts: Mutex::new(Counts::new()),
            answers: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "counting proxy stopped");
            }
        });
        Ok(Proxy {
            shared,
            url: format!("http://{addr}"),
        })
    }

    /// Every answer so far (the store's 403, timed on the wire).
    pub fn answers(&self) -> Vec<Answer> {
        self.shared
            .answers
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// A copy of the counts so far.
    pub fn counts(&self) -> Counts {
        self.shared
            .counts
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }
}

/// `later - earlier`, per verb and resource (zeros dropped).
pub fn since(later: &Counts, earlier: &Counts) -> Counts {
    let mut out = Counts::new();
    for (verb, m) in later {
        for (res, n) in m {
            let before = earlier
                .get(verb)
                .and_then(|e| e.get(res))
                .copied()
                .unwrap_or(0);
            if *n > before {
                out.entry(verb.clone())
                    .or_default()
                    .insert(res.clone(), n - before);
            }
        }
    }
    out
}

/// Requests of one verb, any resource.
pub fn verb_total(c: &Counts, verb: &str) -> u64 {
    c.get(verb).map(|m| m.values().sum()).unwrap_or(0)
}

/// The Kubernetes verb and resource of a request, as the API server's audit
/// log would name them; discovery and other paths are `discovery`.
pub fn classify(method: &Method, uri: &Uri) -> (String, String) {
    let path = uri.path();
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match segs.as_slice() {
        ["api", _v, rest @ ..] => rest,
        ["apis", _g, _v, rest @ ..] => rest,
        _ => return ("discovery".into(), path.to_string()),
    };
    let (resource, named, sub) = match rest {
        [] => return ("discovery".into(), path.to_string()),
        ["namespaces", _ns, res, name, sub @ ..] => (*res, Some(*name), sub.first().copied()),
        ["namespaces", _ns, res] => (*res, None, None),
        [res, name, sub @ ..] => (*res, Some(*name), sub.first().copied()),
        [res] => (*res, None, None),
    };
    let verb = match (method.as_str(), named.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (m, _) => m,
    };
    let resource = match sub {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    };
    (verb.to_string(), resource)
}

async fn forward(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (verb, resource) = classify(req.method(), req.uri());
    if let Ok(mut c) = shared.counts.lock() {
        *c.entry(verb).or_default().entry(resource).or_default() += 1;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri: Uri = match format!("{}{pq}", shared.upstream).parse() {
        Ok(u) => u,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_string());
    parts.uri = uri;
    parts.headers.remove(header::HOST);
    match shared
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(resp) => {
            let answer = Answer {
                at: chrono::Utc::now(),
                method,
                path,
                status: resp.status().as_u16(),
            };
            if let Ok(mut a) = shared.answers.lock() {
                // Bounded: the cost phase's proxies see many requests.
                if a.len() < 10_000 {
                    a.push(answer);
                }
            }
            resp.map(Body::new)
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("lab API server: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, u: &str) -> (String, String) {
        let (v, r) = classify(&m.parse().unwrap(), &u.parse().unwrap());
        (v, r)
    }

    #[test]
    fn requests_are_classified_like_the_api_server_does() {
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/canary/secrets?fieldSelector=metadata.name%3Dx&watch=true&resourceVersion=5"
            ),
            ("watch".into(), "secrets".into())
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/canary/pods?labelSelector=app%3Dx"
            ),
            ("list".into(), "pods".into())
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/external-secrets.io/v1/namespaces/canary/externalsecrets/x"
            ),
            ("patch".into(), "externalsecrets".into())
        );
        assert_eq!(
            c(
                "GET",
                "/apis/apps/v1/namespaces/canary/deployments/x/status"
            ),
            ("get".into(), "deployments/status".into())
        );
        assert_eq!(c("GET", "/apis").0, "discovery");
        assert_eq!(c("GET", "/version").0, "discovery");
    }
}
