//! Canary polling: one task per canary Pod of the current ReplicaSet,
//! long-polling its `/digest` ("answer when it differs from what you last
//! told me") until it reports the new value or the canary stage's deadline
//! passes. Answers come back to the run on a channel, stamped on arrival.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::canary::{CanaryClient, MAX_LONG_POLL};
use super::tracker::{PodAnswer, Target};
use super::Stamp;

/// Pause before asking again a canary that had no value or did not answer.
const CANARY_RETRY: Duration = Duration::from_millis(250);

/// One canary answer, from a poller to the run.
pub struct Report {
    /// The Pod asked.
    pub pod: String,
    /// When the answer arrived.
    pub stamp: Stamp,
    /// What it said.
    pub answer: PodAnswer,
}

/// The pollers of one run: at most one per target Pod.
pub struct Pollers {
    /// `None` when the client could not be built (the run reports that).
    client: Option<CanaryClient>,
    /// The digest the canaries start from (`None`: ask plainly first).
    known: Option<String>,
    new: String,
    tasks: JoinSet<()>,
    by_pod: HashMap<String, (String, AbortHandle)>,
    tx: mpsc::UnboundedSender<Report>,
    rx: mpsc::UnboundedReceiver<Report>,
}

impl Pollers {
    /// Pollers waiting for `new`, starting from `known`.
    pub fn new(client: Option<CanaryClient>, known: Option<String>, new: String) -> Pollers {
        let (tx, rx) = mpsc::unbounded_channel();
        Pollers {
            client,
            known,
            new,
            tasks: JoinSet::new(),
            by_pod: HashMap::new(),
            tx,
            rx,
        }
    }

    /// Poll exactly `targets`: stop pollers of Pods no longer there (or
    /// with another IP), start one for each new Pod, bounded by `deadline`.
    pub fn follow(&mut self, targets: &[Target], deadline: Instant) {
        let Some(client) = &self.client else { return };
        self.by_pod.retain(|pod, (ip, handle)| {
            let keep = targets.iter().any(|t| t.pod == *pod && t.ip == *ip);
            if !keep {
                handle.abort();
            }
            keep
        });
        for t in targets {
            if !self.by_pod.contains_key(&t.pod) {
                let h = self.tasks.spawn(poll_pod(
                    client.clone(),
                    t.clone(),
                    self.known.clone(),
                    self.new.clone(),
                    deadline,
                    self.tx.clone(),
                ));
                self.by_pod.insert(t.pod.clone(), (t.ip.clone(), h));
            }
        }
    }

    /// An answer that already arrived, if any.
    pub fn try_next(&mut self) -> Option<Report> {
        self.rx.try_recv().ok()
    }

    /// The next answer (pending while no poller runs).
    pub async fn next(&mut self) -> Report {
        loop {
            tokio::select! {
                Some(r) = self.rx.recv() => return r,
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Stop every poller.
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Ask one canary Pod until it reports `new` or the deadline passes:
/// long-poll "answer when it differs from what you last told me".
async fn poll_pod(
    client: CanaryClient,
    target: Target,
    mut known: Option<String>,
    new: String,
    deadline: Instant,
    tx: mpsc::UnboundedSender<Report>,
) {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let remaining = deadline - now;
        let res = match &known {
            Some(k) => {
                client
                    .wait_change(&target.pod, &target.ip, k, remaining.min(MAX_LONG_POLL))
                    .await
            }
            None => client.digest(&target.pod, &target.ip).await,
        };
        let stamp = Stamp::now();
        let (answer, pause) = match res {
            Ok(a) => {
                let pause = a.digest.is_none();
                known = a.digest.clone();
                if a.unresolved_reference {
                    (PodAnswer::Unresolved, pause)
                } else {
                    (PodAnswer::Digest(a.digest), pause)
                }
            }
            Err(e) => (PodAnswer::Failed(Arc::new(e)), true),
        };
        let reached = matches!(&answer, PodAnswer::Digest(Some(d)) if *d == new);
        let report = Report {
            pod: target.pod.clone(),
            stamp,
            answer,
        };
        if tx.send(report).is_err() || reached {
            return;
        }
        if pause {
            tokio::time::sleep(
                CANARY_RETRY.min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }
}
