//! The watch hub: one newline-delimited JSON event stream per watch request,
//! read from the store's event history, with the real server's semantics
//! (initial ADDED events, resume from a resourceVersion, 410 Expired in the
//! stream, bookmarks, streaming-list end marker, selector transitions).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::Stream;
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::resources::{self, ResourceDef};
use super::selectors::Selectors;
use super::status::ApiError;
use super::store::{Event, EventType};
use super::Shared;
use crate::faults::Fault;

/// What one watch asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// Resource index.
    pub resource: usize,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// Filters.
    pub selectors: Selectors,
    /// Resume after this RV; `None` for "" or "0" (start with current state).
    pub rv: Option<u64>,
    /// `sendInitialEvents=true`: current state, then the end bookmark.
    pub send_initial: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Duration,
}

fn line(kind: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object);
    b.put_slice(b"}\n");
    b.freeze()
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta});
    line("BOOKMARK", obj.to_string().as_bytes())
}

/// The in-stream ERROR event for an error.
pub fn error_line(e: &ApiError) -> Bytes {
    line("ERROR", e.to_status().to_string().as_bytes())
}

/// The line this watch sends for a stored event, if any.
fn render(req: &WatchRequest, e: &Event) -> Option<Bytes> {
    if e.resource != req.resource || req.namespace.as_deref().is_some_and(|ns| ns != e.namespace) {
        return None;
    }
    let kind = if req.selectors.labels.is_empty() && req.selectors.fields.is_empty() {
        Some(e.kind.as_str())
    } else {
        let now = req.selectors.matches(&e.object);
        let before = e.prev.as_deref().is_some_and(|p| req.selectors.matches(p));
        match e.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => (before || now).then_some("DELETED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }?;
    Some(line(kind, &e.json))
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

enum Wake {
    Stop,
    Cut,
    Changed,
    Bookmark,
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "watch stream cut by the lab",
    )
}

/// The body of a watch response.
pub fn stream(
    shared: Arc<Shared>,
    req: WatchRequest,
    cancel: CancellationToken,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    async_stream::stream! {
        let def = resources::def(req.resource);
        let store = &shared.store;
        let mut rv_rx = store.subscribe();
        let mut reset_rx = shared.reset_tx.subscribe();
        if let Some(rv) = req.rv {
            if shared.knobs.is_on(Fault::WatchExpire) {
                yield Ok(error_line(&ApiError::expired(rv, store.current_rv())));
                return;
            }
        }
        let mut last = match req.rv {
            Some(rv) if !req.send_initial => rv,
            _ => {
                let page = store.list(req.resource, req.namespace.as_deref(), None, &req.selectors, None);
                for obj in &page.items {
                    let json = serde_json::to_vec(&**obj).unwrap_or_default();
                    yield Ok(line("ADDED", &json));
                }
                if req.send_initial {
                    yield Ok(bookmark(def, page.rv, true));
                }
                page.rv
            }
        };
        let deadline = Instant::now() + req.timeout;
        let mut drop_at: Option<Instant> = None;
        let period = shared.options.bookmark_interval;
        let mut next_bookmark = next_bookmark_at(Instant::now(), period, deadline);
        loop {
            rv_rx.borrow_and_update();
            match store.events_after(last) {
                Ok(events) => {
                    for e in events {
                        last = e.rv;
                        if let Some(l) = render(&req, &e) {
                            yield Ok(l);
                        }
                    }
                }
                Err(too_old) => {
                    yield Ok(error_line(&ApiError::expired(too_old.requested, too_old.oldest)));
                    break;
                }
            }
            if drop_at.is_none() && shared.knobs.is_on(Fault::WatchDrop) {
                let ms = rand::rng().random_range(50..=500);
                drop_at = Some(Instant::now() + Duration::from_millis(ms));
            }
            let wake = tokio::select! {
                biased;
                _ = cancel.cancelled() => Wake::Stop,
                _ = reset_rx.changed() => Wake::Cut,
                _ = sleep_until_opt(drop_at) => Wake::Cut,
                _ = tokio::time::sleep_until(deadline) => Wake::Stop,
                r = rv_rx.changed() => if r.is_ok() { Wake::Changed } else { Wake::Stop },
                _ = sleep_until_opt(next_bookmark), if req.bookmarks && next_bookmark.is_some() => Wake::Bookmark,
                // Re-check the drop fault now and then.
                _ = tokio::time::sleep(Duration::from_millis(250)), if drop_at.is_none() => Wake::Changed,
            };
            match wake {
                Wake::Stop => break,
                Wake::Cut => {
                    yield Err(cut());
                    break;
                }
                Wake::Changed => {}
                Wake::Bookmark => {
                    next_bookmark = next_bookmark_at(Instant::now(), period, deadline);
                    yield Ok(bookmark(def, last, false));
                }
            }
        }
    }
}

/// When the next BOOKMARK is due, as the real API server schedules them:
/// every `period` (a minute upstream), and once 2 s before the watch's
/// deadline; `None` when the deadline is closer than that.
fn next_bookmark_at(now: Instant, period: Duration, deadline: Instant) -> Option<Instant> {
    let heartbeat = now + period;
    let before_deadline = deadline.checked_sub(Duration::from_secs(2))?;
    if before_deadline <= now {
        return None;
    }
    Some(heartbeat.min(before_deadline))
}

/// Parse a watch/list `resourceVersion`: `None` for "" and "0".
pub fn parse_rv(s: Option<&str>) -> Result<Option<u64>, ApiError> {
    match s {
        None | Some("") | Some("0") => Ok(None),
        Some(s) => s
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}"))),
    }
}

/// The JSON a stored object is sent as.
pub fn object_json(obj: &Value) -> Vec<u8> {
    serde_json::to_vec(obj).unwrap_or_default()
}
