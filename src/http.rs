//! The exporter's HTTP side (axum): `/metrics` (OpenMetrics, or Prometheus
//! text 0.0.4 when the client asks for `text/plain` only), `/healthz`,
//! `/readyz` (every probe's watchers synced) and `/probes` (each probe's last
//! outcome as JSON). With a bearer token set (`--metrics-token-file`),
//! `/metrics` and `/probes` answer 401 without it; the health endpoints stay
//! open for the kubelet.
//!
//! With the metrics' [`Generation`] given ([`Exporter::with_generation`]),
//! the exposition is encoded once per change of the metrics (a run ending,
//! a tick skipped, a gauge flipping) and per format; a scrape in between
//! gets the cached bytes. With the [`metrics::Metrics`] given
//! ([`Exporter::with_metrics`]), a change re-encodes only the probe it
//! concerns ([`metrics::chunks`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ProbeConfig;
use crate::metrics::chunks::{ChunkedExposition, Exposition, Format};
use crate::metrics::{self, Generation};
use crate::report::{self, ProbeReport};
use crate::vocab::Outcome;

/// Why the exporter could not serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("exporter failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The bearer token file is unreadable or empty.
    #[error("--metrics-token-file {path}: {message}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Read the exporter's bearer token (surrounding whitespace trimmed).
pub fn read_token_file(path: &std::path::Path) -> Result<String, Error> {
    let err = |message: String| Error::TokenFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("the token must be one line without spaces".into()));
    }
    Ok(token.to_string())
}

/// Equal without a timing difference on where the first mismatch is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type ReadyFn = Box<dyn Fn() -> bool + Send + Sync>;

struct Entry {
    config: ProbeConfig,
    ready: ReadyFn,
    last: RwLock<Option<Outcome>>,
}

/// What the exporter knows about each probe: readiness and its last outcome.
#[derive(Default)]
pub struct ProbeBoard {
    entries: Vec<Entry>,
}

/// One probe in `/probes`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    /// The probe's name.
    pub name: String,
    /// Its watchers are synced.
    pub ready: bool,
    /// The cron expression, if scheduled by cron.
    pub schedule: Option<String>,
    /// The interval in seconds, if scheduled by interval.
    pub interval_seconds: Option<f64>,
    /// The last completed run, if any.
    pub last_run: Option<ProbeReport>,
}

/// The `/probes` document.
#[derive(Debug, Clone, Serialize)]
pub struct ProbesView {
    /// Every probe, in config order.
    pub probes: Vec<ProbeView>,
}

impl ProbeBoard {
    /// An empty board.
    pub fn new() -> Self {
        ProbeBoard::default()
    }

    /// Add a probe; `ready` answers whether its watchers are synced.
    pub fn add(&mut self, config: ProbeConfig, ready: impl Fn() -> bool + Send + Sync + 'static) {
        self.entries.push(Entry {
            config,
            ready: Box::new(ready),
            last: RwLock::new(None),
        });
    }

    /// Remember `outcome` as its probe's last run.
    pub fn record(&self, outcome: &Outcome) {
        if let Some(e) = self.entries.iter().find(|e| e.config.name == outcome.probe) {
            // A poisoned lock only means a panic elsewhere mid-write; the
            // value is replaced whole, so carrying on is safe.
            let mut last = e.last.write().unwrap_or_else(|p| p.into_inner());
            *last = Some(outcome.clone());
        }
    }

    /// Names of probes whose watchers are not synced yet.
    pub fn not_ready(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| !(e.ready)())
            .map(|e| e.config.name.as_str())
            .collect()
    }

    /// Every probe's state for `/probes`.
    pub fn view(&self) -> ProbesView {
        ProbesView {
            probes: self
                .entries
                .iter()
                .map(|e| {
                    let last = e.last.read().unwrap_or_else(|p| p.into_inner());
                    ProbeView {
                        name: e.config.name.clone(),
                        ready: (e.ready)(),
                        schedule: e.config.schedule.as_deref().map(str::to_string),
                        interval_seconds: e.config.interval.map(|d| d.as_secs_f64()),
                        last_run: last.as_ref().map(|o| report::probe_report(&e.config, o)),
                    }
                })
                .collect(),
        }
    }
}

/// One encoded exposition and the metrics generation it shows.
struct Encoded {
    generation: u64,
    body: Bytes,
}

/// The last exposition of each format, valid while the generation holds.
struct ExpositionCache {
    generation: Generation,
    openmetrics: Mutex<Option<Encoded>>,
    prometheus_text: Mutex<Option<Encoded>>,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct Exporter {
    registry: Arc<Registry>,
    board: Arc<ProbeBoard>,
    /// When set, `/metrics` and `/probes` require `Authorization: Bearer <it>`.
    token: Option<Arc<str>>,
    /// When set, expositions are reused until the metrics change.
    cache: Option<Arc<ExpositionCache>>,
    /// When set, the exposition is kept per probe and re-encoded only
    /// where it changed ([`metrics::chunks`]): OpenMetrics, text 0.0.4.
    chunked: Option<Arc<[ChunkedExposition; 2]>>,
}

impl Exporter {
    /// An exporter over a finished registry and the probe board.
    pub fn new(registry: Arc<Registry>, board: Arc<ProbeBoard>) -> Self {
        Exporter {
            registry,
            board,
            token: None,
            cache: None,
            chunked: None,
        }
    }

    /// Serve the exposition of `metrics` (which must be all the registry
    /// holds) from encoded chunks per probe: a change re-encodes only the
    /// probe that changed (and the process-wide series), and a scrape
    /// between changes gets the cached bytes.
    pub fn with_metrics(mut self, metrics: &metrics::Metrics) -> Self {
        self.chunked = Some(Arc::new([
            ChunkedExposition::new(metrics, Format::OpenMetrics),
            ChunkedExposition::new(metrics, Format::PrometheusText),
        ]));
        self
    }

    /// Encode the exposition only when `generation` (bumped by every change
    /// to the registry's metrics, [`metrics::Metrics::generation`]) moved
    /// since the last scrape; serve the cached bytes otherwise. Every writer
    /// of the registry must bump it, or scrapes show stale values.
    pub fn with_generation(mut self, generation: Generation) -> Self {
        self.cache = Some(Arc::new(ExpositionCache {
            generation,
            openmetrics: Mutex::new(None),
            prometheus_text: Mutex::new(None),
        }));
        self
    }

    /// The exposition in one format, from the cache when it is current.
    fn exposition(&self, prometheus_text: bool) -> Result<Exposition, std::fmt::Error> {
        if let Some(chunked) = &self.chunked {
            return chunked[usize::from(prometheus_text)].encode();
        }
        self.exposition_whole(prometheus_text).map(Exposition::from)
    }

    /// The exposition in one format, encoded whole (without [`Self::with_metrics`]).
    fn exposition_whole(&self, prometheus_text: bool) -> Result<Bytes, std::fmt::Error> {
        let encode = |capacity: usize| {
            let mut out = String::with_capacity(capacity);
            if prometheus_text {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
            } else {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
            }
            Ok::<_, std::fmt::Error>(Bytes::from(out))
        };
        let Some(cache) = &self.cache else {
            return encode(0);
        };
        let slot = if prometheus_text {
            &cache.prometheus_text
        } else {
            &cache.openmetrics
        };
        // Read the generation before encoding: a change during the encoding
        // bumps it again, so the next scrape encodes anew.
        let generation = cache.generation.get();
        // Encoding is synchronous: holding the lock makes concurrent scrapes
        // of a stale cache wait for one encoding instead of each doing one.
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = slot.as_ref().filter(|e| e.generation == generation) {
            return Ok(e.body.clone());
        }
        let body = encode(slot.as_ref().map_or(0, |e| e.body.len() + 1024))?;
        *slot = Some(Encoded {
            generation,
            body: body.clone(),
        });
        Ok(body)
    }

    /// Require `Authorization: Bearer <token>` on `/metrics` and `/probes`.
    pub fn with_bearer_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let protected = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/probes", get(probes))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_token,
            ));
        Router::new()
            .merge(protected)
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }

    /// Serve on `listener` until `cancel` fires, then finish in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "exporter listening");
        }
        // The exposition goes in several writes; with Nagle's algorithm the
        // last one waits for the client's delayed ACK (40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY on an exporter connection");
            }
        });
        axum::serve(listener, self.router())
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await
            .map_err(Error::Serve)
    }
}

/// Bind the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// OpenMetrics unless the client asks for `text/plain` and not OpenMetrics
/// (Prometheus itself asks for OpenMetrics first; curl's `*/*` gets it too).
fn wants_prometheus_text(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    accept.contains("text/plain") && !accept.contains("application/openmetrics-text")
}

async fn metrics_handler(State(ex): State<Exporter>, headers: HeaderMap) -> Response {
    let text = wants_prometheus_text(&headers);
    let content_type = if text {
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    } else {
        metrics::OPENMETRICS_CONTENT_TYPE
    };
    let body = ex.exposition(text);
    match body {
        Ok(body) => {
            // Streamed as the client reads: no joined copy of the text.
            let len = body.len();
            let frames =
                futures::stream::iter(body.frames().map(Ok::<_, std::convert::Infallible>));
            (
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (header::CONTENT_LENGTH, len.to_string()),
                ],
                axum::body::Body::from_stream(frames),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

/// 401 unless the request carries the configured bearer token (when one is).
async fn require_token(
    State(ex): State<Exporter>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &ex.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"secret-canary\"")],
            "a bearer token is required\n",
        )
            .into_response(),
    }
}

async fn readyz(State(ex): State<Exporter>) -> Response {
    let waiting = ex.board.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("waiting for watchers of: {}\n", waiting.join(", ")),
        )
            .into_response()
    }
}

async fn probes(State(ex): State<Exporter>) -> Json<ProbesView> {
    Json(ex.board.view())
}
