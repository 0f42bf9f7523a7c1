//! What every lab controller needs around the API server: one way to make a
//! call (with a deadline, failing with an error that names the call) and the
//! per-object error back-off of a controller's work queue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::Resource;

/// Every Kubernetes call a controller makes gets at most this long.
pub(crate) const KUBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Which object something belongs to: `(namespace, name)`.
pub(crate) type Key = (String, String);

/// `(namespace, name)` of an object.
pub(crate) fn key_of<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// A Kubernetes API call that failed. Each controller's error enum wraps it.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The API server answered with an error, or the request failed.
    #[error("Kubernetes API call `{what}` failed: {source}")]
    Failed {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The call did not answer within [`KUBE_TIMEOUT`].
    #[error("Kubernetes API call `{0}` timed out")]
    TimedOut(String),
}

impl KubeError {
    /// The HTTP status of the API server's error answer, if it gave one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            KubeError::Failed {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// What was being done (`create Pod`, `patch Secret`).
    pub fn what(&self) -> &str {
        match self {
            KubeError::Failed { what, .. } | KubeError::TimedOut(what) => what,
        }
    }
}

/// Runs the Kubernetes call `fut` (described by `what`) with a deadline.
pub(crate) async fn kube_call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(KUBE_TIMEOUT, fut).await {
        Ok(r) => r.map_err(|source| KubeError::Failed {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(KubeError::TimedOut(what.to_string())),
    }
}

/// One object's consecutive failures.
#[derive(Debug)]
struct Failures {
    attempts: u32,
    until: Instant,
    /// The object's version when it last failed: a controller that passes a
    /// version retries at once after the object changed, as a new event
    /// does in the real work queues.
    version: String,
}

/// Per-object error back-off: the n-th consecutive failure of an object
/// waits `delay(n)`; a success resets it, and a fault or knob switch
/// clears it for every object so a cleared fault is retried at once.
pub(crate) struct Backoffs {
    delay: fn(u32) -> Duration,
    map: Mutex<HashMap<Key, Failures>>,
}

impl Backoffs {
    /// An empty back-off whose n-th consecutive failure waits `delay(n)`.
    pub(crate) fn new(delay: fn(u32) -> Duration) -> Self {
        Backoffs {
            delay,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Count one more failure of `key` at `version`; how long to wait.
    pub(crate) fn next(&self, key: Key, version: &str) -> Duration {
        let Ok(mut m) = self.map.lock() else {
            return Duration::from_secs(1);
        };
        let attempts = m.get(&key).map(|f| f.attempts + 1).unwrap_or(1);
        let delay = (self.delay)(attempts);
        m.insert(
            key,
            Failures {
                attempts,
                until: Instant::now() + delay,
                version: version.to_string(),
            },
        );
        delay
    }

    /// The requeue after a failed reconcile of `obj` (versions not tracked).
    pub(crate) fn requeue<K: Resource>(&self, obj: &K) -> Action {
        Action::requeue(self.next(key_of(obj), ""))
    }

    /// How much of `key`'s back-off is left, if it last failed at `version`.
    pub(crate) fn remaining(&self, key: &Key, version: &str) -> Option<Duration> {
        let m = self.map.lock().ok()?;
        let f = m.get(key)?;
        if f.version != version {
            return None;
        }
        f.until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// `key` succeeded.
    pub(crate) fn reset(&self, key: &Key) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
        }
    }

    /// Forget every object's failures.
    pub(crate) fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(n: u32) -> Duration {
        Duration::from_secs(u64::from(n) * 10)
    }

    #[test]
    fn backoff_grows_resets_and_skips_a_new_version() {
        let b = Backoffs::new(linear);
        let k: Key = ("ns".into(), "a".into());
        assert_eq!(b.next(k.clone(), "1"), Duration::from_secs(10));
        assert_eq!(b.next(k.clone(), "1"), Duration::from_secs(20));
        assert!(b.remaining(&k, "1").is_some());
        assert!(b.remaining(&k, "2").is_none());
        b.reset(&k);
        assert!(b.remaining(&k, "1").is_none());
        assert_eq!(b.next(k.clone(), "1"), Duration::from_secs(10));
        b.clear();
        assert!(b.remaining(&k, "1").is_none());
    }

    #[test]
    fn kube_error_names_the_call() {
        let e = KubeError::TimedOut("get Pod".into());
        assert_eq!(e.what(), "get Pod");
        assert_eq!(e.api_code(), None);
        assert_eq!(e.to_string(), "Kubernetes API call `get Pod` timed out");
    }
}
