//! The view a watcher publishes: its objects, the log of recent
//! [`Change`]s, its current [`Fault`] and past [`Gap`]s, and the backoff of
//! a failing watch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::probe::{Reason, Stamp};

/// Changes kept per watcher. A run reads changes as they come, so this only
/// has to cover bursts between two wake-ups of a run.
const CHANGE_LOG: usize = 128;

/// How long a change stays in the log. A run drains its subscriptions each
/// time a watcher publishes, so an older change was read by every run that
/// wanted it, unless the process stalled that long (the run then warns of
/// the overflow and goes on from the objects' state). Without an age limit
/// every watcher kept its last [`CHANGE_LOG`] changes, each holding an old
/// state of its object, for as long as the process ran.
pub(super) const CHANGE_LOG_AGE: Duration = Duration::from_secs(10);

/// One object's new state (or its deletion), as an event delivered it.
#[derive(Debug, Clone)]
pub struct Change<T> {
    /// Arrival order across every watcher of the probe.
    pub seq: u64,
    /// When the event arrived.
    pub stamp: Stamp,
    /// The object's name.
    pub name: String,
    /// The new state; `None` when the object was deleted (or stopped matching).
    pub state: Option<Arc<T>>,
}

/// Why a watcher is failing right now.
#[derive(Debug, Clone)]
pub struct Fault {
    /// `not_found` (e.g. the ExternalSecret CRD is not installed), `api_error`,
    /// or `prober_error` (our request was malformed, e.g. a bad selector).
    pub reason: Reason,
    /// The error, for logs.
    pub message: String,
    /// When it was reported.
    pub stamp: Stamp,
}

/// The longest pause between two attempts of a failing watch. kube-runtime's
/// default goes up to 30 s; a run's stages are seconds long.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(3);

/// The first pause after a watch failed.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Gaps kept per watcher (enough to cover one run).
const GAPS_KEPT: usize = 16;

/// A stretch of time a watcher was failing: events of it may have arrived
/// late, so a duration measured across it is not the pipeline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// When the fault began.
    pub from: Stamp,
    /// When the watch was healthy again (`None`: still failing).
    pub to: Option<Stamp>,
}

impl Gap {
    /// Whether the gap overlaps `[start, end]` (`end` `None`: still open).
    pub fn overlaps(&self, start: Stamp, end: Option<Stamp>) -> bool {
        let before_end = end.is_none_or(|e| self.from.at <= e.at);
        let after_start = self.to.is_none_or(|t| t.at >= start.at);
        before_end && after_start
    }
}

/// The next pause of a failing watch: doubling, capped at [`WATCH_BACKOFF_MAX`].
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
}

/// What a watcher knows: the objects now, recent changes, its health.
#[derive(Debug)]
pub struct View<T> {
    /// The initial list completed at least once.
    pub synced: bool,
    /// Current objects by name.
    pub objects: BTreeMap<String, Arc<T>>,
    /// The latest changes, oldest first.
    pub changes: VecDeque<Change<T>>,
    /// Set while the watcher's last attempt failed; cleared by its next
    /// success (a relist completing, or any event).
    pub fault: Option<Fault>,
    /// Recent stretches of failure, oldest first (the current one is `fault`).
    pub gaps: VecDeque<Gap>,
    /// Changes dropped from the log before every run had read them (the
    /// log overflowed between two wake-ups of a run): the seq of the last
    /// change dropped.
    pub evicted: u64,
}

impl<T> Default for View<T> {
    fn default() -> Self {
        View {
            synced: false,
            objects: BTreeMap::new(),
            changes: VecDeque::new(),
            fault: None,
            gaps: VecDeque::new(),
            evicted: 0,
        }
    }
}

impl<T> View<T> {
    /// The sequence number of the latest change, 0 if none.
    pub fn last_seq(&self) -> u64 {
        self.changes.back().map(|c| c.seq).unwrap_or(0)
    }

    /// The watch failed: keep the stamp of the fault's beginning while it
    /// lasts (a fault counts against a stage only if it began after it).
    pub fn faulted(&mut self, reason: Reason, message: String, stamp: Stamp) {
        let since = self.fault.as_ref().map_or(stamp, |f| f.stamp);
        self.fault = Some(Fault {
            reason,
            message,
            stamp: since,
        });
    }

    /// The watch works again; returns whether it was failing.
    pub fn healthy(&mut self, stamp: Stamp) -> bool {
        let Some(f) = self.fault.take() else {
            return false;
        };
        self.gaps.push_back(Gap {
            from: f.stamp,
            to: Some(stamp),
        });
        while self.gaps.len() > GAPS_KEPT {
            self.gaps.pop_front();
        }
        true
    }

    /// Every recent gap, the current fault as an open one.
    pub fn all_gaps(&self) -> Vec<Gap> {
        let mut out: Vec<Gap> = self.gaps.iter().copied().collect();
        if let Some(f) = &self.fault {
            out.push(Gap {
                from: f.stamp,
                to: None,
            });
        }
        out
    }
}

/// Record a change in the view, keeping the log bounded.
pub(super) fn push<T>(
    v: &mut View<T>,
    seq: &AtomicU64,
    stamp: Stamp,
    name: String,
    state: Option<Arc<T>>,
) {
    let seq = seq.fetch_add(1, Ordering::Relaxed) + 1;
    debug_assert!(seq > v.evicted);
    v.changes.push_back(Change {
        seq,
        stamp,
        name,
        state,
    });
    while v.changes.len() > CHANGE_LOG {
        if let Some(c) = v.changes.pop_front() {
            v.evicted = c.seq;
        }
    }
    prune(v, stamp.at);
}

/// Drop the changes older than [`CHANGE_LOG_AGE`] at `now`; returns
/// whether any was dropped.
pub(super) fn prune<T>(v: &mut View<T>, now: Instant) -> bool {
    let mut dropped = false;
    while let Some(c) = v
        .changes
        .front()
        .filter(|c| now.saturating_duration_since(c.stamp.at) > CHANGE_LOG_AGE)
    {
        v.evicted = c.seq;
        v.changes.pop_front();
        dropped = true;
    }
    if dropped && v.changes.capacity() > 2 * v.changes.len().max(8) {
        v.changes.shrink_to_fit();
    }
    dropped
}
