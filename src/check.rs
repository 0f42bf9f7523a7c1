//! `secret-canary check`: ask a running prober, through its `/probes`
//! endpoint, whether every probe had a recent successful run, waiting up to
//! a bound for the next run. This is what `helm test` runs: it reads the
//! prober's own results instead of running probes beside it, so it never
//! writes the store paths the prober rotates (a second writer would make one
//! run's value look like the other's mismatch).
//!
//! The prober is reached by URL (`--url`, e.g. through a port-forward or
//! the Service's DNS name), or as every prober Pod a label selector finds
//! (`--pods SELECTOR`, `list` on pods in the namespace), each at its Pod IP:
//! with several replicas under leader election the leader's answer counts (a
//! follower has no runs to report), and no cluster DNS is needed. Not
//! through the API server's Service or Pod proxy: it refuses Pod addresses
//! in some ranges (loopback, link-local) and does not pass a bearer token on.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The longest `/probes` answer read.
const MAX_BODY: usize = 4 << 20;
/// Every request to the prober (or the API server) gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a check could not be made (a probe failing is a [`Verdict`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--pods` is not a label selector.
    #[error("--pods {0:?}: expected a label selector such as app.kubernetes.io/component=prober")]
    BadSelector(String),
    /// `--url` is not an http(s) URL.
    #[error("--url {0:?}: expected an http:// or https:// URL of the prober's /probes")]
    BadUrl(String),
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
}

impl Error {
    /// Usage and setup errors exit 2.
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// Where the prober's `/probes` is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Directly, by URL.
    Url(String),
    /// Every Pod the selector finds, at its Pod IP.
    Pods {
        /// The Pods' namespace (default: the client's).
        namespace: Option<String>,
        /// A label selector.
        selector: String,
        /// The prober's port.
        port: u16,
    },
}

/// What `check` is asked.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Where to ask.
    pub target: Target,
    /// Bearer token for `/probes`.
    pub token: Option<String>,
    /// Probes to check (empty: every probe the prober reports).
    pub probes: Vec<String>,
    /// A successful run counts if it finished at most this long ago.
    pub within: Duration,
    /// How long to wait for every probe to have one.
    pub timeout: Duration,
    /// How often to ask.
    pub poll: Duration,
}

/// One probe's state as last seen.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeState {
    /// The probe.
    pub name: String,
    /// When its recent successful run finished, once one was seen.
    pub passed_at: Option<DateTime<Utc>>,
    /// The last run seen, summarised (`None`: no run reported yet).
    pub last: Option<LastRun>,
}

/// The last run of a probe, as `/probes` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    /// Succeeded and met every SLO.
    pub passed: bool,
    /// `success`, `failure`, ...
    pub result: String,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The first stage that did not complete (or broke its SLO).
    pub stage: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The run's detail.
    pub detail: Option<String>,
}

/// The check's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Every checked probe, in the prober's order (then names it never reported).
    pub probes: Vec<ProbeState>,
    /// The last error reaching the prober, if the last attempt failed.
    pub unreachable: Option<String>,
}

impl Verdict {
    /// Every probe has a recent successful run.
    pub fn passed(&self) -> bool {
        !self.probes.is_empty() && self.probes.iter().all(|p| p.passed_at.is_some())
    }

    /// One line per probe, and why the check failed.
    pub fn render(&self, now: DateTime<Utc>, within: Duration) -> String {
        let mut out = String::new();
        let width = self.probes.iter().map(|p| p.name.len()).max().unwrap_or(5);
        for p in &self.probes {
            let line = match (&p.passed_at, &p.last) {
                (Some(at), _) => format!(
                    "passed    a successful run finished {} ago ({})",
                    ago(now, *at),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                (None, None) => "FAILED    no run reported yet".to_string(),
                (None, Some(l)) if l.passed => format!(
                    "FAILED    the last successful run finished {} ago, more than {}",
                    l.finished_at.map_or("?".into(), |f| ago(now, f)),
                    humantime::format_duration(within)
                ),
                (None, Some(l)) => {
                    let mut s = format!("FAILED    last run {}", l.result);
                    if let Some(st) = &l.stage {
                        s.push_str(&format!(" at stage {st}"));
                    }
                    if let Some(r) = &l.reason {
                        s.push_str(&format!(" ({r})"));
                    }
                    if let Some(d) = &l.detail {
                        s.push_str(&format!(": {d}"));
                    }
                    s
                }
            };
            out.push_str(&format!("{:width$}  {line}\n", p.name));
        }
        if let Some(e) = &self.unreachable {
            out.push_str(&format!("the prober could not be reached: {e}\n"));
        }
        if self.probes.is_empty() && self.unreachable.is_none() {
            out.push_str("the prober reports no probe\n");
        }
        out
    }
}

fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Fold one `/probes` document into `states` (a recent success, once seen,
/// stays: with several replicas only the leader's answer has runs).
pub fn observe(
    states: &mut BTreeMap<String, ProbeState>,
    order: &mut Vec<String>,
    doc: &Value,
    selected: &[String],
    now: DateTime<Utc>,
    within: Duration,
) {
    let within = chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
    for p in doc["probes"].as_array().into_iter().flatten() {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        if !selected.is_empty() && !selected.iter().any(|s| s == name) {
            continue;
        }
        if !order.iter().any(|o| o == name) {
            order.push(name.to_string());
        }
        let state = states.entry(name.to_string()).or_insert(ProbeState {
            name: name.to_string(),
            passed_at: None,
            last: None,
        });
        let run = &p["last_run"];
        if !run.is_object() {
            continue;
        }
        let last = LastRun {
            passed: run["passed"] == true,
            result: run["result"].as_str().unwrap_or("unknown").to_string(),
            finished_at: parse_time(&run["finished_at"]),
            stage: run["failure"]["stage"].as_str().map(str::to_string),
            reason: run["failure"]["reason"].as_str().map(str::to_string),
            detail: run["detail"].as_str().map(str::to_string),
        };
        if let (true, Some(at)) = (last.passed, last.finished_at) {
            if now - at <= within && state.passed_at.is_none_or(|p| p < at) {
                state.passed_at = Some(at);
            }
        }
        // A replica without runs (a follower) does not hide the leader's.
        state.last = Some(last);
    }
}

/// How `/probes` is fetched.
struct Fetcher {
    http: reqwest::Client,
    token: Option<String>,
    target: Where,
}

enum Where {
    Url(String),
    Pods {
        pods: Box<kube::Api<k8s_openapi::api::core::v1::Pod>>,
        selector: String,
        port: u16,
    },
}

impl Fetcher {
    async fn new(opts: &CheckOptions) -> Result<Fetcher, Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // Pod IPs and the prober's Service are reached directly.
            .no_proxy()
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        let target = match &opts.target {
            Target::Url(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::BadUrl(url.clone()));
                }
                Where::Url(url.clone())
            }
            Target::Pods {
                namespace,
                selector,
                port,
            } => {
                let valid = !selector.trim().is_empty()
                    && selector
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./=,!() ".contains(c));
                if !valid {
                    return Err(Error::BadSelector(selector.clone()));
                }
                let config = kube::Config::infer()
                    .await
                    .map_err(|e| Error::Kube(e.to_string()))?;
                let ns = namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone());
                let kube =
                    kube::Client::try_from(config).map_err(|e| Error::Kube(e.to_string()))?;
                Where::Pods {
                    pods: Box::new(kube::Api::namespaced(kube, &ns)),
                    selector: selector.clone(),
                    port: *port,
                }
            }
        };
        Ok(Fetcher {
            http,
            token: opts.token.clone(),
            target,
        })
    }

    async fn get(&self, url: &str) -> Result<Value, String> {
        let mut req = self.http.get(url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let code = resp.status();
        if !code.is_success() {
            return Err(format!("{url}: HTTP {code}"));
        }
        if resp.content_length().is_some_and(|l| l > MAX_BODY as u64) {
            return Err(format!("{url}: answer longer than {MAX_BODY} bytes"));
        }
        let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }

    /// Every answer, or why there is none.
    async fn fetch(&self) -> Result<Vec<Value>, String> {
        match &self.target {
            Where::Url(url) => self.get(url).await.map(|v| vec![v]),
            Where::Pods {
                pods,
                selector,
                port,
            } => {
                let lp = kube::api::ListParams::default().labels(selector);
                let list = tokio::time::timeout(REQUEST_TIMEOUT, pods.list(&lp))
                    .await
                    .map_err(|_| {
                        format!("listing Pods {selector}: no answer in {REQUEST_TIMEOUT:?}")
                    })?
                    .map_err(|e| format!("listing Pods {selector}: {e}"))?;
                let urls: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
                    .map(|ip| match ip.parse::<std::net::IpAddr>() {
                        Ok(std::net::IpAddr::V6(_)) => format!("http://[{ip}]:{port}/probes"),
                        _ => format!("http://{ip}:{port}/probes"),
                    })
                    .collect();
                if urls.is_empty() {
                    return Err(format!("no running Pod matches {selector}"));
                }
                let answers = futures::future::join_all(urls.iter().map(|u| self.get(u))).await;
                let mut docs = Vec::new();
                let mut errors = Vec::new();
                for a in answers {
                    match a {
                        Ok(d) => docs.push(d),
                        Err(e) => errors.push(e),
                    }
                }
                if docs.is_empty() {
                    return Err(errors.join("; "));
                }
                Ok(docs)
            }
        }
    }
}

/// Ask until every selected probe shows a successful run finished within
/// `opts.within`, `opts.timeout` passes or `cancel` fires.
pub async fn check(opts: &CheckOptions, cancel: CancellationToken) -> Result<Verdict, Error> {
    let fetcher = Fetcher::new(opts).await?;
    let start = tokio::time::Instant::now();
    let mut states: BTreeMap<String, ProbeState> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    loop {
        let unreachable = match fetcher.fetch().await {
            Ok(docs) => {
                for doc in &docs {
                    observe(
                        &mut states,
                        &mut order,
                        doc,
                        &opts.probes,
                        Utc::now(),
                        opts.within,
                    );
                }
                None
            }
            Err(e) => Some(e),
        };
        let mut verdict = Verdict {
            probes: order
                .iter()
                .filter_map(|n| states.get(n).cloned())
                .collect(),
            unreachable,
        };
        // Names asked for that the prober never reported.
        for name in &opts.probes {
            if !order.contains(name) {
                verdict.probes.push(ProbeState {
                    name: name.clone(),
                    passed_at: None,
                    last: None,
                });
            }
        }
        if verdict.passed() || start.elapsed() >= opts.timeout {
            return Ok(verdict);
        }
        tracing::info!(
            waiting_for = verdict
                .probes
                .iter()
                .filter(|p| p.passed_at.is_none())
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            "no recent successful run yet; asking again"
        );
        let wait = opts.poll.min(opts.timeout.saturating_sub(start.elapsed()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return Ok(verdict),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(name: &str, run: Value) -> Value {
        json!({"probes": [{"name": name, "ready": true, "last_run": run}]})
    }

    #[test]
    fn a_recent_success_passes_an_old_one_or_a_failure_does_not() {
        let now = Utc::now();
        let within = Duration::from_secs(300);
        let at = |s: i64| (now - chrono::Duration::seconds(s)).to_rfc3339();
        let (mut states, mut order) = (BTreeMap::new(), Vec::new());
        observe(
            &mut states,
            &mut order,
            &doc(
                "p",
                json!({"passed": true, "result": "success", "finished_at": at(600)}),
            ),
            &[],
            now,
            within,
        );
        assert_eq!(states["p"].passed_at, None);
        let failed = json!({"passed": false, "result": "failure", "finished_at": at(10),
            "failure": {"stage": "eso_sync", "reason": "timeout"}, "detail": "no sync"});
        observe(&mut states, &mut order, &doc("p", failed), &[], now, within);
        let v = Verdict {
            probes: vec![states["p"].clone()],
            unreachable: None,
        };
        assert!(!v.passed());
        let text = v.render(now, within);
        assert!(
            text.contains("p  FAILED    last run failure at stage eso_sync (timeout): no sync"),
            "{text}"
        );
        observe(
            &mut states,
            &mut order,
            &doc(
                "p",
                json!({"passed": true, "result": "success", "finished_at": at(5)}),
            ),
            &[],
            now,
            within,
        );
        // A follower's answer (no runs) afterwards does not undo it.
        observe(
            &mut states,
            &mut order,
            &doc("p", Value::Null),
            &[],
            now,
            within,
        );
        let v = Verdict {
            probes: vec![states["p"].clone()],
            unreachable: None,
        };
        assert!(v.passed(), "{v:?}");
        assert!(v.render(now, within).contains("passed"));
    }

    #[test]
    fn only_selected_probes_count_and_nothing_reported_fails() {
        let now = Utc::now();
        let (mut states, mut order) = (BTreeMap::new(), Vec::new());
        let d = json!({"probes": [
            {"name": "a", "last_run": null},
            {"name": "b", "last_run": {"passed": true, "result": "success", "finished_at": now.to_rfc3339()}},
        ]});
        observe(
            &mut states,
            &mut order,
            &d,
            &["b".into()],
            now,
            Duration::from_secs(60),
        );
        assert_eq!(order, ["b"]);
        assert!(states["b"].passed_at.is_some());
        let empty = Verdict {
            probes: vec![],
            unreachable: None,
        };
        assert!(!empty.passed());
        let none = Verdict {
            probes: vec![ProbeState {
                name: "x".into(),
                passed_at: None,
                last: None,
            }],
            unreachable: Some("refused".into()),
        };
        let t = none.render(now, Duration::from_secs(60));
        assert!(
            t.contains("no run reported yet") && t.contains("could not be reached: refused"),
            "{t}"
        );
    }
}
