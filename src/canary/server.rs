//! The canary's HTTP side: `/digest` (plain and long-poll), `/healthz`,
//! `/readyz`, over a shared view of the source that remembers when the
//! current digest was first seen.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::source::{Fingerprint, Reading, Source};

/// How often a file source is re-stat'ed while a long-poll waits.
///
/// Polling rather than `notify` (inotify): the kubelet publishes a Secret
/// volume by renaming a `..data` symlink in the volume's root, while the
/// file we are given is a symlink through it, so an inotify watch would have
/// to follow the chain of symlinks and re-arm after every swap; a `stat()`
/// that follows symlinks sees every kind of update (symlink swap, rename,
/// in-place write) for a few microseconds of CPU. It only runs while a
/// long-poll is waiting, and the interval bounds what it adds to the
/// measured `canary_observe` stage.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The longest a long-poll may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// The wait used when `differs_from` is given without `wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// What the canary currently sees, and since when.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The latest reading.
    pub reading: Reading,
    /// When this process first saw this reading (after seeing a different one).
    pub observed_at: DateTime<Utc>,
}

/// State shared by the handlers and the file poller.
#[derive(Debug)]
pub struct Shared {
    source: Source,
    started_at: DateTime<Utc>,
    state: watch::Sender<Observed>,
    /// The fingerprint the current reading was taken under.
    fingerprint: Mutex<Option<Fingerprint>>,
    /// Long-polls waiting now; the poller only runs while this is non-zero.
    waiters: AtomicUsize,
    wake: Notify,
}

impl Shared {
    /// Take the first reading now.
    pub fn new(source: Source) -> Arc<Shared> {
        let now = Utc::now();
        let fingerprint = source.fingerprint();
        let reading = source.read();
        let (state, _) = watch::channel(Observed {
            reading,
            observed_at: now,
        });
        Arc::new(Shared {
            source,
            started_at: now,
            state,
            fingerprint: Mutex::new(fingerprint),
            waiters: AtomicUsize::new(0),
            wake: Notify::new(),
        })
    }

    /// Re-read the source and publish the reading if it changed.
    pub fn refresh(&self) -> Observed {
        if !self.source.is_fixed() {
            // Stat before reading: if the file changes in between, the next
            // poll sees a different fingerprint and reads again.
            let fp = self.source.fingerprint();
            let reading = self.source.read();
            if let Ok(mut f) = self.fingerprint.lock() {
                *f = fp;
            }
            self.publish(reading);
        }
        self.state.borrow().clone()
    }

    /// Re-read only if the file's fingerprint moved (the poller's cheap path).
    fn refresh_if_changed(&self) {
        let fp = self.source.fingerprint();
        let same = self
            .fingerprint
            .lock()
            .map(|f| *f == fp && fp.is_some())
            .unwrap_or(false);
        if !same {
            self.refresh();
        }
    }

    fn publish(&self, reading: Reading) {
        self.state.send_if_modified(|o| {
            if o.reading == reading {
                return false;
            }
            o.reading = reading;
            o.observed_at = Utc::now();
            true
        });
    }

    /// The current view without touching the source.
    pub fn current(&self) -> Observed {
        self.state.borrow().clone()
    }
}

/// Keeps a file source fresh while long-polls wait; idle otherwise.
///
/// Besides the poll, an inotify watch on the file's directory wakes it as
/// soon as something there changes: the kubelet's rename of `..data` lands
/// in the volume's root, so a value is seen within microseconds instead of
/// up to [`FILE_POLL_INTERVAL`] later (half of it on average, which was
/// most of `canary_observe`'s measured error). The poll remains for what
/// the watch cannot see (a file below a symlinked directory, whose
/// directory the kubelet replaces).
pub async fn poll_file(shared: Arc<Shared>, cancel: CancellationToken) {
    let Some(path) = shared.source.path() else {
        return;
    };
    let dir_watch = DirWatch::new(path);
    loop {
        if shared.waiters.load(Ordering::Acquire) == 0 {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = cancel.cancelled() => return,
            }
        }
        shared.refresh_if_changed();
        tokio::select! {
            _ = tokio::time::sleep(FILE_POLL_INTERVAL) => {}
            _ = DirWatch::changed(dir_watch.as_ref()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// An inotify watch on a file's directory (entries created, renamed,
/// written or removed).
struct DirWatch {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl DirWatch {
    /// A watch on `file`'s directory; `None` (logged) where inotify is not
    /// available, in which case the poll alone keeps the file fresh.
    fn new(file: &std::path::Path) -> Option<DirWatch> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let watch = || -> std::io::Result<DirWatch> {
            let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
            inotify::add_watch(
                &fd,
                dir,
                WatchFlags::CREATE
                    | WatchFlags::MOVED_TO
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::DELETE
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::MODIFY
                    | WatchFlags::ATTRIB,
            )?;
            // `new` is deprecated for types whose descriptor may change or
            // close while registered; an `OwnedFd` moved into the `AsyncFd`
            // cannot, which is the contract of its (unsafe, and this crate
            // forbids unsafe code) replacement `register`.
            #[allow(deprecated)]
            let fd = tokio::io::unix::AsyncFd::new(fd)?;
            Ok(DirWatch { fd })
        };
        match watch() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::info!(dir = %dir.display(), error = %e, "no inotify watch on the file's directory; polling only");
                None
            }
        }
    }

    /// Until something in the directory changed (never, without a watch).
    async fn changed(watch: Option<&DirWatch>) {
        let Some(w) = watch else {
            return std::future::pending().await;
        };
        let Ok(mut ready) = w.fd.readable().await else {
            return std::future::pending().await;
        };
        // Drain the events: which entry changed does not matter, the
        // caller re-stats the file.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = rustix::fs::inotify::Reader::new(w.fd.get_ref(), &mut buf);
        loop {
            match reader.next() {
                Ok(_) => continue,
                Err(e) if e == rustix::io::Errno::AGAIN => {
                    ready.clear_ready();
                    return;
                }
                // Any other error: report a change (the caller re-stats)
                // and let the next wait find out again.
                Err(_) => return,
            }
        }
    }
}

/// Counts a waiting long-poll for as long as it lives.
struct Waiter<'a>(&'a Shared);

impl<'a> Waiter<'a> {
    fn enter(shared: &'a Shared) -> Self {
        shared.waiters.fetch_add(1, Ordering::AcqRel);
        // notify_one keeps a permit if the poller is not parked yet.
        shared.wake.notify_one();
        Waiter(shared)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// The routes, ready to serve. Long-polls end early when `cancel` fires so
/// graceful shutdown is not held up by them.
pub fn router(shared: Arc<Shared>, cancel: CancellationToken) -> Router {
    Router::new()
        .route("/digest", get(digest))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(App { shared, cancel })
}

/// `GET /digest` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct DigestResponse {
    /// SHA-256 hex of the value, or null.
    pub digest: Option<String>,
    /// `env` or `file`.
    pub source: String,
    /// When this process first saw this digest (RFC 3339, ns).
    pub observed_at: String,
    /// When this process started (RFC 3339, ns).
    pub started_at: String,
    /// null, `missing` or `unreadable`.
    pub error: Option<String>,
    /// Long-polls only: did the digest differ from `differs_from`?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// The value is a literal `vault:` reference nothing resolved (the
    /// Bank-Vaults webhook failed open). A boolean, never the value.
    #[serde(default)]
    pub unresolved_reference: bool,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn response(shared: &Shared, o: &Observed, changed: Option<bool>) -> DigestResponse {
    DigestResponse {
        digest: o.reading.digest.clone(),
        source: shared.source.kind().as_str().to_string(),
        observed_at: rfc3339(o.observed_at),
        started_at: rfc3339(shared.started_at),
        error: o.reading.error.map(|e| e.as_str().to_string()),
        changed,
        unresolved_reference: o.reading.unresolved_reference,
    }
}

/// Query of `/digest`.
#[derive(Debug, Default, Deserialize)]
struct DigestQuery {
    differs_from: Option<String>,
    wait: Option<String>,
}

/// Parse `wait`, capped at [`MAX_WAIT`].
pub fn parse_wait(wait: Option<&str>) -> Result<Duration, String> {
    match wait {
        None => Ok(DEFAULT_WAIT),
        Some(w) => humantime::parse_duration(w.trim())
            .map(|d| d.min(MAX_WAIT))
            .map_err(|e| format!("invalid wait {w:?}: {e} (expected e.g. 30s)")),
    }
}

fn bad_request(message: String) -> Response {
    let body = serde_json::json!({"error": "bad_request", "message": message});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn digest(
    State(app): State<App>,
    query: Result<Query<DigestQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return bad_request("invalid query string".into());
    };
    let shared = &app.shared;
    let Some(base) = q.differs_from else {
        let o = shared.refresh();
        return Json(response(shared, &o, None)).into_response();
    };
    let wait = match parse_wait(q.wait.as_deref()) {
        Ok(w) => w,
        Err(m) => return bad_request(m),
    };
    let base = base.trim().to_ascii_lowercase();
    let differs = |o: &Observed| o.reading.digest.as_deref() != Some(base.as_str());
    let mut rx = shared.state.subscribe();
    let _waiter = Waiter::enter(shared);
    let now = shared.refresh();
    if differs(&now) {
        return Json(response(shared, &now, Some(true))).into_response();
    }
    let changed = tokio::select! {
        r = tokio::time::timeout(wait, rx.wait_for(|o| differs(o))) => matches!(r, Ok(Ok(_))),
        _ = app.cancel.cancelled() => false,
    };
    let o = shared.current();
    let changed = changed && differs(&o);
    Json(response(shared, &o, Some(changed))).into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    let o = app.shared.refresh();
    if o.reading.digest.is_some() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no value loaded\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canary::source::digest as sha;

    #[test]
    fn wait_parses_defaults_and_caps() {
        assert_eq!(parse_wait(None).unwrap(), DEFAULT_WAIT);
        assert_eq!(
            parse_wait(Some("250ms")).unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_wait(Some("1h")).unwrap(), MAX_WAIT);
        assert!(parse_wait(Some("soon")).is_err());
    }

    #[tokio::test]
    async fn the_directory_watch_wakes_on_a_symlink_swap_and_not_before() {
        let dir = std::env::temp_dir().join(format!("canary-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The kubelet's layout: value -> ..data/value, ..data -> a dated dir.
        for d in ["a", "b"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
            std::fs::write(dir.join(d).join("value"), d).unwrap();
        }
        std::os::unix::fs::symlink("a", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/value", dir.join("value")).unwrap();
        let watch = DirWatch::new(&dir.join("value")).expect("inotify on a temp dir");
        let quiet =
            tokio::time::timeout(Duration::from_millis(50), DirWatch::changed(Some(&watch))).await;
        assert!(quiet.is_err(), "woke with nothing changed");
        let waiting = DirWatch::changed(Some(&watch));
        std::os::unix::fs::symlink("b", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the swap woke the watch");
        assert_eq!(std::fs::read(dir.join("value")).unwrap(), b"b");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn observed_at_moves_only_when_the_digest_changes() {
        let dir = std::env::temp_dir().join(format!("canary-srv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v");
        std::fs::write(&p, "a").unwrap();
        let s = Shared::new(Source::file(&p));
        let first = s.refresh();
        assert_eq!(first.reading.digest, Some(sha(b"a")));
        let again = s.refresh();
        assert_eq!(again.observed_at, first.observed_at);
        std::fs::write(&p, "b").unwrap();
        let next = s.refresh();
        assert_eq!(next.reading.digest, Some(sha(b"b")));
        assert!(next.observed_at > first.observed_at);
        let r = response(&s, &next, Some(true));
        assert_eq!(r.source, "file");
        assert_eq!(r.error, None);
        assert!(r.observed_at.ends_with('Z'));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn long_poll_wakes_on_file_change_and_times_out_otherwise() {
        let dir = std::env::temp_dir().join(format!("canary-lp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("v");
        std::fs::write(&p, "a").unwrap();
        let s = Shared::new(Source::file(&p));
        let cancel = CancellationToken::new();
        tokio::spawn(poll_file(s.clone(), cancel.clone()));
        let app = App {
            shared: s.clone(),
            cancel: cancel.clone(),
        };
        let q = |wait: &str| {
            Ok(Query(DigestQuery {
                differs_from: Some(sha(b"a")),
                wait: Some(wait.into()),
            }))
        };
        // Unchanged: answers after the wait with changed=false.
        let t = std::time::Instant::now();
        let r = digest(State(app.clone()), q("100ms")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(t.elapsed() >= Duration::from_millis(100));
        // Changed while waiting: answers promptly.
        let p2 = p.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(p2.with_extension("tmp"), "b").unwrap();
            std::fs::rename(p2.with_extension("tmp"), &p2).unwrap();
        });
        let t = std::time::Instant::now();
        let r = digest(State(app.clone()), q("10s")).await;
        assert!(t.elapsed() < Duration::from_secs(2));
        let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let d: DigestResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(d.changed, Some(true));
        assert_eq!(d.digest, Some(sha(b"b")));
        cancel.cancel();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn env_long_poll_ends_on_cancel() {
        let s = Shared::new(Source::env_value("X", Some("v".into())));
        let cancel = CancellationToken::new();
        let app = App {
            shared: s,
            cancel: cancel.clone(),
        };
        let c2 = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            c2.cancel();
        });
        let q = Ok(Query(DigestQuery {
            differs_from: Some(sha(b"v")),
            wait: Some("60s".into()),
        }));
        let r = tokio::time::timeout(Duration::from_secs(5), digest(State(app), q))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}
