//! The prober's client of the canary Pods: ask a Pod which digest it sees,
//! or long-poll until it sees another one. Answers are parsed strictly; a
//! bad answer is a typed error with a reason, never a panic. Every probe
//! with the same canary timeout uses one HTTP client (one connection pool).
//!
//! A canary is reached by Pod IP (`canary.access: direct`), or through the
//! API server's Pod proxy (`proxy`: `GET pods/{name}:{port}/proxy/digest`
//! with the prober's Kubernetes credentials, for a prober outside the
//! cluster network), or direct first and the proxy once a Pod IP cannot be
//! connected to (`auto`, decided once per probe). The long-poll is the same
//! request either way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::BodyExt;

use super::Reason;
use crate::config::CanaryAccess;

/// What a direct-access error tells the operator to try.
const PROXY_HINT: &str = "a prober outside the cluster network cannot reach Pod IPs: set `canary.access: proxy` (or `auto`) to reach the canaries through the API server's Pod proxy";

/// Default timeout of a plain request (long-polls add their wait to it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest single long-poll; a wait past it is repeated.
pub const MAX_LONG_POLL: Duration = Duration::from_secs(60);

/// `auto`: the longest a direct connect may take before the Pod proxy is
/// tried (a reachable Pod IP connects in milliseconds).
pub const AUTO_DIRECT_CONNECT: Duration = Duration::from_secs(1);

/// Longest body accepted from a canary.
const MAX_BODY: usize = 16 * 1024;

/// A canary's answer to `GET /digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// SHA-256 (hex) of the value the canary sees; `None` if it has none.
    pub digest: Option<String>,
    /// `env` or `file`.
    pub source: String,
    /// When the canary first saw this digest.
    pub observed_at: DateTime<Utc>,
    /// When the canary process started.
    pub started_at: DateTime<Utc>,
    /// `missing` / `unreadable` when it has no value.
    pub error: Option<String>,
    /// Long-polls: whether the digest differs from `differs_from`.
    pub changed: Option<bool>,
    /// The canary's value is a literal `vault:` reference nothing resolved
    /// (absent in older canaries' answers: false).
    pub unresolved_reference: bool,
}

/// The JSON types of a field, for error messages.
fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Field `name` of the answer as a string; `None` when absent or null
/// and `nullable`. Errors name the field.
fn string_field<'a>(
    o: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
    nullable: bool,
) -> Result<Option<&'a str>, String> {
    match o.get(name) {
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        None | Some(serde_json::Value::Null) if nullable => Ok(None),
        None => Err(format!("field `{name}` is missing")),
        Some(other) => Err(format!(
            "field `{name}` must be a string{}, not {}",
            if nullable { " or null" } else { "" },
            json_type(other)
        )),
    }
}

/// Why a canary request failed.
#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    /// The HTTP client could not be built.
    #[error("could not build the canary HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The Pod's address is not an IP address.
    #[error("canary Pod address {0:?} is not an IP address")]
    BadAddress(String),
    /// The Pod IP could not be connected to (refused, no route, connect
    /// timeout): says so, and names the proxy option.
    #[error("canary {url}: could not connect to the Pod IP ({message}); {PROXY_HINT}")]
    Connect {
        /// The URL asked.
        url: String,
        /// The transport error.
        message: String,
    },
    /// Connection reset or closed after connecting, or the API server
    /// (Pod proxy) could not be reached.
    #[error("canary {url} unreachable: {message}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The transport error.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("canary {url} did not answer within {after:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// An HTTP error status.
    #[error("canary {url} answered HTTP {code}")]
    Status {
        /// The URL asked.
        url: String,
        /// The status.
        code: u16,
    },
    /// The API server refused the Pod proxy request (RBAC).
    #[error("canary {url}: the API server refused the Pod proxy request (HTTP 403: {message}); the prober's identity needs `get` on `pods/proxy` in the canary namespace")]
    ProxyForbidden {
        /// The URL asked.
        url: String,
        /// The API server's message.
        message: String,
    },
    /// The Pod proxy answered an error status (the API server could not
    /// reach the Pod, or the canary answered an error).
    #[error("canary {url} answered HTTP {code} through the API server's Pod proxy: {message}")]
    ProxyStatus {
        /// The URL asked.
        url: String,
        /// The status.
        code: u16,
        /// The API server's message (bounded).
        message: String,
    },
    /// `auto`: neither the Pod IP nor the Pod proxy answered.
    #[error("canary Pod {pod}: directly: {direct}; through the API server's Pod proxy: {proxy}")]
    Neither {
        /// The Pod.
        pod: String,
        /// The direct attempt's error.
        direct: Box<CanaryError>,
        /// The proxy attempt's error.
        proxy: Box<CanaryError>,
    },
    /// A body that is not a valid digest answer.
    #[error("canary {url} gave an invalid answer: {message}")]
    BadBody {
        /// The URL asked.
        url: String,
        /// What was wrong.
        message: String,
    },
}

impl CanaryError {
    /// The bounded failure reason. A canary that cannot give a usable
    /// answer counts as unreachable; a client we cannot build is our bug.
    pub fn reason(&self) -> Reason {
        match self {
            CanaryError::Client(_) | CanaryError::ProxyForbidden { .. } => Reason::ProberError,
            CanaryError::Neither { proxy, .. } => proxy.reason(),
            _ => Reason::CanaryUnreachable,
        }
    }
}

/// Parse and check a `/digest` body. Every error names the field at fault
/// (`digest`, `source`, ...) and never echoes more than a few characters of
/// what the canary sent.
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a digest answer (not JSON: {e})"))?;
    let serde_json::Value::Object(o) = &v else {
        return Err(format!(
            "not a digest answer: a JSON object is expected, not {}",
            json_type(&v)
        ));
    };
    let digest = string_field(o, "digest", true)?;
    if let Some(d) = digest {
        let ok = d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err("field `digest` is not 64 lower-case hex characters".into());
        }
    }
    let error = string_field(o, "error", true)?;
    if digest.is_none() && error.is_none() {
        return Err(
            "fields `digest` and `error` are both null: neither a digest nor an error".into(),
        );
    }
    let source = string_field(o, "source", false)?.unwrap_or_default();
    if source != "env" && source != "file" {
        return Err(format!(
            "field `source`: unknown source {:?}",
            source.chars().take(16).collect::<String>()
        ));
    }
    let time = |field: &str| -> Result<DateTime<Utc>, String> {
        let raw = string_field(o, field, false)?.unwrap_or_default();
        DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("field `{field}` is not RFC 3339: {e}"))
    };
    let changed = match o.get("changed") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(format!(
                "field `changed` must be a boolean or null, not {}",
                json_type(other)
            ))
        }
    };
    let unresolved_reference = match o.get("unresolved_reference") {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "field `unresolved_reference` must be a boolean, not {}",
                json_type(other)
            ))
        }
    };
    Ok(Answer {
        unresolved_reference,
        observed_at: time("observed_at")?,
        started_at: time("started_at")?,
        digest: digest.map(str::to_string),
        source: source.to_string(),
        error: error.map(str::to_string),
        changed,
    })
}

/// The HTTP clients of the canaries, by connect timeout: every probe with
/// the same canary timeout (normally all of them) shares one client and its
/// connection pool. A client ends with the last probe using it.
static SHARED: LazyLock<Mutex<HashMap<Duration, Weak<reqwest::Client>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn shared_http(connect_timeout: Duration) -> Result<Arc<reqwest::Client>, CanaryError> {
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = shared.get(&connect_timeout).and_then(Weak::upgrade) {
        return Ok(c);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = Arc::new(
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // Pod IPs are reached directly, never through a proxy from the env.
            .no_proxy()
            // No idle connections: a canary is asked once or twice per
            // run, minutes apart, and most runs roll out new Pods, so a
            // pooled connection is seldom reused; each one costs ~20 KiB
            // here (buffers, dispatch channel) and a socket in the canary.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(CanaryError::Client)?,
    );
    shared.retain(|_, c| c.strong_count() > 0);
    shared.insert(connect_timeout, Arc::downgrade(&http));
    Ok(http)
}

/// The API server's Pod proxy of one namespace.
#[derive(Clone)]
struct PodProxy {
    kube: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for PodProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodProxy")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A client of every canary Pod of one probe (the HTTP client underneath is
/// shared by every probe with the same canary timeout).
#[derive(Debug, Clone)]
pub struct CanaryClient {
    http: Arc<reqwest::Client>,
    port: u16,
    timeout: Duration,
    access: CanaryAccess,
    /// Set for `proxy` and `auto`.
    proxy: Option<PodProxy>,
    /// `auto`'s decision, shared by the probe's pollers: once a Pod IP
    /// could not be connected to and the proxy answered, the proxy.
    via_proxy: Arc<AtomicBool>,
}

impl CanaryClient {
    /// Canaries listen on `port`, reached by Pod IP; plain requests time
    /// out after `timeout`.
    pub fn new(port: u16, timeout: Option<Duration>) -> Result<CanaryClient, CanaryError> {
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        Ok(CanaryClient {
            http: shared_http(timeout)?,
            port,
            timeout,
            access: CanaryAccess::Direct,
            proxy: None,
            via_proxy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Reach the canaries as `access` says; `proxy` and `auto` go through
    /// the API server of `kube`, to Pods of `namespace`.
    pub fn with_access(
        mut self,
        access: CanaryAccess,
        kube: kube::Client,
        namespace: &str,
    ) -> CanaryClient {
        if access == CanaryAccess::Auto && self.timeout > AUTO_DIRECT_CONNECT {
            // Fail over fast: a run pays the direct attempt once.
            if let Ok(http) = shared_http(AUTO_DIRECT_CONNECT) {
                self.http = http;
            }
        }
        self.access = access;
        self.proxy = (access != CanaryAccess::Direct).then(|| PodProxy {
            kube,
            namespace: namespace.to_string(),
        });
        self
    }

    /// Whether requests go through the Pod proxy now (`proxy`, or `auto`
    /// after a Pod IP could not be connected to).
    pub fn via_proxy(&self) -> bool {
        match self.access {
            CanaryAccess::Direct => false,
            CanaryAccess::Proxy => true,
            CanaryAccess::Auto => self.via_proxy.load(Ordering::Relaxed),
        }
    }

    fn url(&self, ip: &str) -> Result<String, CanaryError> {
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| CanaryError::BadAddress(ip.to_string()))?;
        Ok(match addr {
            IpAddr::V4(a) => format!("http://{a}:{}/digest", self.port),
            IpAddr::V6(a) => format!("http://[{a}]:{}/digest", self.port),
        })
    }

    /// What the canary Pod `pod` at `ip` sees now.
    pub async fn digest(&self, pod: &str, ip: &str) -> Result<Answer, CanaryError> {
        self.ask(pod, ip, &[], self.timeout).await
    }

    /// Wait up to `wait` (capped at [`MAX_LONG_POLL`]) for the canary Pod
    /// `pod` at `ip` to see a digest other than `differs_from`.
    pub async fn wait_change(
        &self,
        pod: &str,
        ip: &str,
        differs_from: &str,
        wait: Duration,
    ) -> Result<Answer, CanaryError> {
        let wait = wait.min(MAX_LONG_POLL);
        let wait_s = format!("{}ms", wait.as_millis());
        self.ask(
            pod,
            ip,
            &[("differs_from", differs_from), ("wait", &wait_s)],
            wait + self.timeout,
        )
        .await
    }

    async fn ask(
        &self,
        pod: &str,
        ip: &str,
        query: &[(&str, &str)],
        limit: Duration,
    ) -> Result<Answer, CanaryError> {
        if let (true, Some(proxy)) = (self.via_proxy(), &self.proxy) {
            return self.get_proxied(proxy, pod, query, limit).await;
        }
        let url = self.url(ip)?;
        let direct = self.get(&url, query, limit).await;
        match (&direct, self.access, &self.proxy) {
            (Err(e @ CanaryError::Connect { .. }), CanaryAccess::Auto, Some(proxy)) => {
                match self.get_proxied(proxy, pod, query, limit).await {
                    Ok(a) => {
                        if !self.via_proxy.swap(true, Ordering::Relaxed) {
                            tracing::info!(pod, error = %e, "canary Pod IP not reachable; using the API server's Pod proxy (canary.access: auto)");
                        }
                        Ok(a)
                    }
                    Err(p) => Err(CanaryError::Neither {
                        pod: pod.to_string(),
                        direct: Box::new(direct.unwrap_err()),
                        proxy: Box::new(p),
                    }),
                }
            }
            _ => direct,
        }
    }

    /// `GET /api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/digest?..`
    /// with the prober's Kubernetes credentials, bounded by `limit`.
    async fn get_proxied(
        &self,
        proxy: &PodProxy,
        pod: &str,
        query: &[(&str, &str)],
        limit: Duration,
    ) -> Result<Answer, CanaryError> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}:{}/proxy/digest",
            proxy.namespace, pod, self.port
        );
        let shown = format!("{path} (Pod proxy)");
        let mut target = reqwest::Url::parse("http://api/").expect("a fixed URL parses");
        target.set_path(&path);
        if !query.is_empty() {
            target.query_pairs_mut().extend_pairs(query);
        }
        let uri = match target.query() {
            Some(q) => format!("{}?{q}", target.path()),
            None => target.path().to_string(),
        };
        let fut = async {
            let req = axum::http::Request::get(uri)
                .body(kube::client::Body::empty())
                .map_err(|_| CanaryError::BadAddress(shown.clone()))?;
            let resp = proxy
                .kube
                .send(req)
                .await
                .map_err(|e| CanaryError::Unreachable {
                    url: shown.clone(),
                    message: format!("the API server: {e}"),
                })?;
            let code = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        CanaryError::BadBody {
                            url: shown.clone(),
                            message: format!("body longer than {MAX_BODY} bytes"),
                        }
                    } else {
                        CanaryError::Unreachable {
                            url: shown.clone(),
                            message: format!("reading the answer: {e}"),
                        }
                    }
                })?
                .to_bytes();
            if !(200..300).contains(&code) {
                let message = status_message(&body);
                return Err(if code == 403 {
                    CanaryError::ProxyForbidden {
                        url: shown.clone(),
                        message,
                    }
                } else {
                    CanaryError::ProxyStatus {
                        url: shown.clone(),
                        code,
                        message,
                    }
                });
            }
            parse_answer(&body).map_err(|message| CanaryError::BadBody {
                url: shown.clone(),
                message,
            })
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(CanaryError::Timeout {
                url: shown.clone(),
                after: limit,
            }),
        }
    }

    async fn get(
        &self,
        url: &str,
        query: &[(&str, &str)],
        limit: Duration,
    ) -> Result<Answer, CanaryError> {
        let fut = async {
            let mut target =
                reqwest::Url::parse(url).map_err(|_| CanaryError::BadAddress(url.to_string()))?;
            if !query.is_empty() {
                target.query_pairs_mut().extend_pairs(query);
            }
            let resp = self
                .http
                .get(target)
                .timeout(limit)
                .send()
                .await
                .map_err(|e| transport(url, limit, e))?;
            let code = resp.status();
            if !code.is_success() {
                return Err(CanaryError::Status {
                    url: url.to_string(),
                    code: code.as_u16(),
                });
            }
            let body = read_limited(resp, url, limit).await?;
            parse_answer(&body).map_err(|message| CanaryError::BadBody {
                url: url.to_string(),
                message,
            })
        };
        // reqwest's own timeout covers the body too; this one also bounds DNS-free edge cases.
        match tokio::time::timeout(limit + Duration::from_millis(500), fut).await {
            Ok(r) => r,
            Err(_) => Err(CanaryError::Timeout {
                url: url.to_string(),
                after: limit,
            }),
        }
    }
}

/// The `message` of an API server `Status` body (or the body's start),
/// at most 300 characters: the proxy's errors say why it could not reach
/// the Pod ("dial tcp ...: connect: connection refused").
fn status_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    text.trim().chars().take(300).collect()
}

async fn read_limited(
    mut resp: reqwest::Response,
    url: &str,
    limit: Duration,
) -> Result<Vec<u8>, CanaryError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(url, limit, e))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY {
            return Err(CanaryError::BadBody {
                url: url.to_string(),
                message: format!("body longer than {MAX_BODY} bytes"),
            });
        }
    }
    Ok(body)
}

fn transport(url: &str, limit: Duration, e: reqwest::Error) -> CanaryError {
    // Connect errors first: a connect timeout is also a timeout.
    if e.is_connect() {
        return CanaryError::Connect {
            url: url.to_string(),
            message: chain(&e),
        };
    }
    if e.is_timeout() {
        return CanaryError::Timeout {
            url: url.to_string(),
            after: limit,
        };
    }
    CanaryError::Unreachable {
        url: url.to_string(),
        message: chain(&e),
    }
}

/// An error and its causes, `: `-joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_good_answers() {
        let a = parse_answer(&body(json!({
            "digest": D, "source": "env", "observed_at": "2025-01-01T00:00:00.123456789Z",
            "started_at": "2025-01-01T00:00:00Z", "error": null, "changed": true
        })))
        .unwrap();
        assert_eq!(a.digest.as_deref(), Some(D));
        assert_eq!(a.changed, Some(true));
        assert_eq!(a.observed_at.timestamp_subsec_nanos(), 123_456_789);
        let a = parse_answer(&body(json!({
            "digest": null, "source": "file", "observed_at": "2025-01-01T00:00:00Z",
            "started_at": "2025-01-01T00:00:00Z", "error": "missing"
        })))
        .unwrap();
        assert_eq!(a.digest, None);
        assert_eq!(a.changed, None);
        assert!(!a.unresolved_reference);
        let a = parse_answer(&body(json!({
            "digest": D, "source": "env", "observed_at": "2025-01-01T00:00:00Z",
            "started_at": "2025-01-01T00:00:00Z", "error": null, "unresolved_reference": true
        })))
        .unwrap();
        assert!(a.unresolved_reference);
    }

    #[test]
    fn rejects_bad_answers() {
        let ok = json!({"digest": D, "source": "env", "observed_at": "2025-01-01T00:00:00Z",
            "started_at": "2025-01-01T00:00:00Z", "error": null});
        for (field, value) in [
            ("digest", json!("ABC")),
            ("digest", json!(D.to_uppercase())),
            ("digest", json!(12)),
            ("source", json!("vault")),
            ("observed_at", json!("yesterday")),
            ("changed", json!("yes")),
            ("unresolved_reference", json!("vault:x")),
        ] {
            let mut b = ok.clone();
            b[field] = value;
            assert!(parse_answer(&body(b)).is_err(), "{field}");
        }
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove("started_at");
        assert!(parse_answer(&body(b)).is_err());
        let mut b = ok.clone();
        b["digest"] = json!(null);
        assert!(parse_answer(&body(b)).is_err(), "no digest and no error");
        assert!(parse_answer(b"<html>").is_err());
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn probes_share_one_http_client() {
        let a = CanaryClient::new(8080, None).unwrap();
        let b = CanaryClient::new(9090, Some(DEFAULT_TIMEOUT)).unwrap();
        let c = CanaryClient::new(8080, Some(Duration::from_millis(1234))).unwrap();
        assert!(Arc::ptr_eq(&a.http, &b.http));
        assert!(!Arc::ptr_eq(&a.http, &c.http));
    }

    #[tokio::test]
    async fn unreachable_canary_maps_to_canary_unreachable() {
        let port = secret_canary_lab::openbao::free_port().unwrap();
        let c = CanaryClient::new(port, Some(Duration::from_secs(1))).unwrap();
        let e = c.digest("p", "127.0.0.1").await.unwrap_err();
        assert_eq!(e.reason(), Reason::CanaryUnreachable, "{e}");
        assert!(matches!(e, CanaryError::Connect { .. }), "{e}");
        let said = e.to_string();
        assert!(said.contains("could not connect to the Pod IP"), "{said}");
        assert!(said.contains("`canary.access: proxy`"), "{said}");
        let e = c.digest("p", "not-an-ip").await.unwrap_err();
        assert!(matches!(e, CanaryError::BadAddress(_)));
    }

    #[tokio::test]
    async fn long_poll_against_a_stub_canary() {
        // A minimal HTTP server: answers after 200 ms with a changed digest,
        // or with garbage on the second connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for n in 0.. {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let len = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..len]).to_string();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let body = if n == 0 {
                    assert!(req.contains("differs_from=old"), "{req}");
                    assert!(req.contains("wait=2000ms"), "{req}");
                    serde_json::to_string(&json!({"digest": D, "source": "env",
                        "observed_at": "2025-01-01T00:00:00Z", "started_at": "2025-01-01T00:00:00Z",
                        "error": null, "changed": true}))
                    .unwrap()
                } else {
                    "{\"digest\": 1}".to_string()
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let c = CanaryClient::new(port, Some(Duration::from_secs(1))).unwrap();
        let a = c
            .wait_change("p", "127.0.0.1", "old", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(a.digest.as_deref(), Some(D));
        let e = c.digest("p", "127.0.0.1").await.unwrap_err();
        assert!(matches!(e, CanaryError::BadBody { .. }), "{e}");
        assert_eq!(e.reason(), Reason::CanaryUnreachable);
    }
}
