//! The prober's configuration: the YAML model and its validation. Every
//! error names the field path (`probes[1].store.auth`) so a person can fix it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::probe::Stage;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach the Kubernetes API. Absent: in-cluster, else `$KUBECONFIG`
    /// or `~/.kube/config`, as kubectl does.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// The probes; names must be unique.
    pub probes: Vec<ProbeConfig>,
}

/// How the prober reaches the API server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// A kubeconfig file to use instead of the inferred one.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Timeout of each API request (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

/// One probe: a store path and the chain that delivers it to a canary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Unique name; the `probe` label value.
    pub name: String,
    /// A cron expression (the `cron` crate's syntax, seconds field first,
    /// e.g. `0 */5 * * * *`). Exactly one of `schedule` and `interval`.
    #[serde(default)]
    pub schedule: Option<String>,
    /// A fixed interval between run starts (e.g. `30s`).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// The whole run's deadline (default 5 m).
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Per-stage deadlines, measured from the stage's start.
    #[serde(default)]
    pub stage_deadlines: BTreeMap<Stage, HumanDuration>,
    /// SLO thresholds per stage and for `end_to_end`: a run that completes
    /// but exceeds one breaks the SLO (`once` exits 1).
    #[serde(default)]
    pub slo: BTreeMap<Stage, HumanDuration>,
    /// Where the test value is written.
    pub store: StoreConfig,
    /// The delivery chain to time.
    pub chain: ChainConfig,
}

/// A duration written like `90s` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

/// The Vault / OpenBao KV v2 location and credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `https://vault.example:8200`.
    pub address: String,
    /// The KV v2 mount (default `secret`).
    #[serde(default = "default_mount")]
    pub mount: String,
    /// The secret's path inside the mount, e.g. `canary/eso-env`.
    pub path: String,
    /// The prober writes only below this prefix (default `canary/`): a
    /// typo in `path` must not overwrite a real secret. Pair it with a
    /// store policy limited to the same prefix (docs/vault-policy.hcl).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// KV v2 `max_versions` set on the canary path at the first run, so
    /// one version per run does not pile up (default 10).
    #[serde(default)]
    pub max_versions: Option<u64>,
    /// The key inside the secret that carries the test value (default `value`).
    #[serde(default = "default_key")]
    pub key: String,
    /// Vault Enterprise / OpenBao namespace (`X-Vault-Namespace`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// PEM CA bundle for TLS to the store.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Timeout of each store request (default 10 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How to log in: `{token: {env: VAULT_TOKEN}}`, `{token: {file: /path}}`,
    /// `{kubernetes: {role: canary}}` or `{approle: {role_id: .., secret_id: {file: ..}}}`.
    // serde_yaml 0.9 reads an enum nested in an enum only as a YAML tag
    // (`!env X`); the singleton-map form is what people write.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub auth: StoreAuth,
}

fn default_mount() -> String {
    "secret".into()
}

fn default_path_prefix() -> String {
    DEFAULT_PATH_PREFIX.into()
}

fn default_key() -> String {
    "value".into()
}

/// Store credentials. Exactly one method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreAuth {
    /// A token read from a file or an environment variable.
    Token(TokenSource),
    /// Kubernetes auth: a ServiceAccount JWT exchanged for a token.
    Kubernetes {
        /// The Vault role.
        role: String,
        /// The auth mount (default `kubernetes`).
        #[serde(default = "default_k8s_mount")]
        mount: String,
        /// The JWT file (default the projected ServiceAccount token).
        #[serde(default = "default_sa_token")]
        token_file: PathBuf,
    },
    /// AppRole: role id plus a secret id from a file or env.
    Approle {
        /// The auth mount (default `approle`).
        #[serde(default = "default_approle_mount")]
        mount: String,
        /// The role id.
        role_id: String,
        /// Where the secret id comes from.
        secret_id: TokenSource,
    },
}

fn default_k8s_mount() -> String {
    "kubernetes".into()
}

fn default_approle_mount() -> String {
    "approle".into()
}

fn default_sa_token() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
}

/// A credential read at run time, never written in the config itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TokenSource {
    /// Read from this file (re-read on each login, so rotation works).
    File(PathBuf),
    /// Read from this environment variable.
    Env(String),
}

/// The chain the value travels. Absent parts are absent stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Namespace of every object below.
    pub namespace: String,
    /// The ExternalSecret that syncs the store path (ESO chains).
    #[serde(default)]
    pub external_secret: Option<String>,
    /// The Kubernetes Secret ESO writes (ESO chains).
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// The workload that must roll to pick up the value.
    #[serde(default)]
    pub rollout: Option<RolloutConfig>,
    /// The canary Pods that report what they see.
    pub canary: CanaryConfig,
    /// Right after the store write, annotate the ExternalSecret
    /// (`force-sync=<unix time>`) so ESO syncs without waiting for its
    /// refreshInterval. Needs `patch` on `externalsecrets`; such runs are
    /// exported apart from natural ones. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_sync: bool,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Secret name.
    pub name: String,
    /// Key carrying the test value (default `value`).
    #[serde(default = "default_key")]
    pub key: String,
}

/// How the workload picks the new value up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutConfig {
    /// The Deployment's name.
    pub deployment: String,
    /// Who changes the pod template.
    pub trigger: Trigger,
}

/// Who changes the pod template after the value changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Stakater Reloader patches it when the Secret changes.
    Reloader,
    /// The prober itself patches `kubectl.kubernetes.io/restartedAt` right
    /// after the store write (Bank-Vaults: values resolve only at Pod start).
    Restart,
    /// Nothing rolls (Secret volume: the kubelet refreshes the file).
    None,
}

/// Where the canary Pods are and what they read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// Label selector of the canary Pods, e.g. `app=canary-env`.
    pub selector: String,
    /// The canary's HTTP port (default 8080).
    #[serde(default = "default_canary_port")]
    pub port: u16,
    /// Whether the canary reads an env var (fixed at start) or a file.
    pub source: CanarySource,
    /// Timeout of each canary request, long-polls excepted (default 5 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

fn default_canary_port() -> u16 {
    8080
}

/// What the canary reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanarySource {
    /// An env var resolved at process start.
    Env,
    /// A file re-read on each request (Secret volume).
    File,
}

/// Run deadline when `deadline` is absent.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
/// Kubernetes request timeout when `kubernetes.request_timeout` is absent.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Store request timeout when `store.timeout` is absent.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// `store.path_prefix` when absent: the prober writes only below it.
pub const DEFAULT_PATH_PREFIX: &str = "canary/";
/// `store.max_versions` when absent.
pub const DEFAULT_MAX_VERSIONS: u64 = 10;
/// Largest `store.max_versions` accepted: more only keeps test values around.
pub const MAX_MAX_VERSIONS: u64 = 1000;
/// Canary request timeout when `canary.timeout` is absent.
pub const DEFAULT_CANARY_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest `interval` accepted: faster runs would measure the prober, not the pipeline.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest run deadline accepted (a run holds its probe's schedule).
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);
/// Longest probe name: it is a label value and a Kubernetes-style name.
pub const MAX_NAME_LEN: usize = 63;

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid YAML, or not the shape of a config (unknown field, wrong
    /// type, unknown stage name). serde stops at the first such error.
    #[error("{path}: {message}")]
    Syntax {
        /// The file (`-` for in-memory text).
        path: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column of the error, when known.
        column: Option<usize>,
        /// serde_yaml's message: field path, what is wrong, line and column.
        message: String,
    },
    /// Well-formed but inconsistent: every problem found, each naming its field.
    #[error("{path}: {} problem(s):\n  {}", problems.len(), join_problems(problems))]
    Invalid {
        /// The file (`-` for in-memory text).
        path: PathBuf,
        /// Every problem, in file order.
        problems: Vec<Problem>,
    },
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl ConfigError {
    /// Every problem as a line for the user (one line for syntax errors).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => problems
                .iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One validation problem: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `probes[1].schedule`, `probes[0].chain.canary.selector`, ...
    pub field: String,
    /// What is wrong and, where useful, how to fix it.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text, path)
    }

    /// Parse and validate YAML text; `origin` only names it in errors.
    pub fn from_yaml(
        text: &str,
        origin: impl AsRef<std::path::Path>,
    ) -> Result<Config, ConfigError> {
        let origin = origin.as_ref();
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let location = e.location();
            ConfigError::Syntax {
                path: origin.to_path_buf(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: origin.to_path_buf(),
                problems,
            })
        }
    }

    /// Check everything serde cannot: returns every problem, not the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: PathBuf::from("-"),
                problems,
            })
        }
    }

    /// Every validation problem, in file order (empty when the config is valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if let Some(t) = self.kubernetes.request_timeout {
            p.positive("kubernetes.request_timeout", t);
        }
        if self.probes.is_empty() {
            p.push("probes", "at least one probe is required");
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let at = format!("probes[{i}]");
            if let Some(first) = seen.insert(probe.name.as_str(), i) {
                // Keep the first index so a third duplicate still names it.
                seen.insert(probe.name.as_str(), first);
                p.push(
                    format!("{at}.name"),
                    format!(
                        "duplicate probe name {:?} (also probes[{first}])",
                        probe.name
                    ),
                );
            }
            probe.check(&at, &mut p);
        }
        self.check_shared(&mut p);
        p.0
    }

    /// Two probes writing one store path, or following one ExternalSecret
    /// or Deployment, would see each other's runs as their own.
    fn check_shared(&self, p: &mut Problems) {
        let mut seen: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let chain = &probe.chain;
            let ns = chain.namespace.as_str();
            let mut keys = vec![(
                "store.path",
                format!(
                    "{} {}/{}",
                    probe.store.address,
                    probe.store.mount,
                    probe.store.path.trim_matches('/')
                ),
            )];
            if let Some(es) = &chain.external_secret {
                keys.push(("chain.external_secret", format!("{ns}/{es}")));
            }
            if let Some(r) = &chain.rollout {
                keys.push(("chain.rollout.deployment", format!("{ns}/{}", r.deployment)));
            }
            for (field, key) in keys {
                if let Some(first) = seen.get(&(field, key.clone())) {
                    p.push(
                        format!("probes[{i}].{field}"),
                        format!("also used by probes[{first}]: two probes would take each other's runs for their own"),
                    );
                } else {
                    seen.insert((field, key), i);
                }
            }
        }
    }

    /// The probe with this name.
    pub fn probe(&self, name: &str) -> Option<&ProbeConfig> {
        self.probes.iter().find(|p| p.name == name)
    }
}

impl KubernetesConfig {
    /// The request timeout, defaulted.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT)
    }
}

impl StoreConfig {
    /// The store request timeout, defaulted.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_STORE_TIMEOUT)
    }

    /// The KV v2 `max_versions` of the canary path, defaulted.
    pub fn max_versions(&self) -> u64 {
        self.max_versions.unwrap_or(DEFAULT_MAX_VERSIONS)
    }

    /// Whether `path` lies strictly below `path_prefix` (segment-wise:
    /// prefix `canary` or `canary/` admits `canary/x`, not `canary-x`).
    pub fn path_in_prefix(&self) -> bool {
        path_below(&self.path, &self.path_prefix)
    }
}

/// `path` is strictly below the `prefix` directory (both relative KV paths).
pub fn path_below(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    !prefix.is_empty()
        && path
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.trim_matches('/').is_empty())
}

impl CanaryConfig {
    /// The canary request timeout, defaulted.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CANARY_TIMEOUT)
    }
}

impl ChainConfig {
    /// Whether a pod-template change (and so a rollout) is part of the chain.
    pub fn rolls(&self) -> bool {
        matches!(
            self.rollout,
            Some(RolloutConfig {
                trigger: Trigger::Reloader | Trigger::Restart,
                ..
            })
        )
    }
}

impl ProbeConfig {
    /// The whole run's deadline, defaulted.
    pub fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(DEFAULT_DEADLINE)
    }

    /// The deadline of one stage: its own, else the run's.
    pub fn stage_deadline(&self, stage: Stage) -> Duration {
        self.stage_deadlines
            .get(&stage)
            .map(|d| d.0)
            .unwrap_or_else(|| self.deadline())
    }

    /// The SLO threshold of a stage, if one is set.
    pub fn slo(&self, stage: Stage) -> Option<Duration> {
        self.slo.get(&stage).map(|d| d.0)
    }

    /// The hops this probe's chain has, in chain order (without `end_to_end`).
    /// This is the contract between the config, the probe engine, the
    /// metrics (which series exist) and the report.
    pub fn stages(&self) -> Vec<Stage> {
        let c = &self.chain;
        Stage::CHAIN
            .into_iter()
            .filter(|s| match s {
                Stage::StoreWrite | Stage::CanaryObserve => true,
                Stage::EsoSync => c.external_secret.is_some(),
                Stage::SecretUpdate => c.secret.is_some(),
                Stage::ReloaderTrigger | Stage::Rollout => c.rolls(),
                Stage::EndToEnd => false,
            })
            .collect()
    }

    /// Whether the chain has this stage (`end_to_end` always).
    pub fn has_stage(&self, stage: Stage) -> bool {
        stage == Stage::EndToEnd || self.stages().contains(&stage)
    }

    fn check(&self, at: &str, p: &mut Problems) {
        check_name(&format!("{at}.name"), &self.name, p);

        match (&self.schedule, self.interval) {
            (Some(_), Some(_)) => p.push(
                format!("{at}.schedule"),
                "set exactly one of `schedule` and `interval`, not both",
            ),
            (None, None) => p.push(
                format!("{at}.schedule"),
                "set exactly one of `schedule` (cron) and `interval` (e.g. `1m`)",
            ),
            (Some(expr), None) => {
                if let Err(e) = crate::schedule::parse_cron(expr) {
                    p.push(format!("{at}.schedule"), e.to_string());
                }
            }
            (None, Some(interval)) => {
                if interval < MIN_INTERVAL {
                    p.push(
                        format!("{at}.interval"),
                        format!(
                            "{} is below the minimum of 1s",
                            humantime::format_duration(interval)
                        ),
                    );
                }
            }
        }

        let deadline = self.deadline();
        if let Some(d) = self.deadline {
            if p.positive(&format!("{at}.deadline"), d) && d > MAX_DEADLINE {
                p.push(
                    format!("{at}.deadline"),
                    format!(
                        "{} exceeds the maximum of {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_DEADLINE)
                    ),
                );
            }
        }
        let stages = self.stages();
        let have = stage_list(&stages);
        for (stage, d) in &self.stage_deadlines {
            let field = format!("{at}.stage_deadlines.{stage}");
            if *stage == Stage::EndToEnd {
                p.push(field, format!("use `{at}.deadline` for the whole run"));
                continue;
            }
            if !stages.contains(stage) {
                p.push(
                    field,
                    format!("stage {stage} is not part of this probe's chain (it has: {have})"),
                );
                continue;
            }
            if p.positive(&field, d.0) && d.0 > deadline {
                p.push(
                    field,
                    format!(
                        "{} exceeds the run deadline of {}",
                        humantime::format_duration(d.0),
                        humantime::format_duration(deadline)
                    ),
                );
            }
        }
        for (stage, d) in &self.slo {
            let field = format!("{at}.slo.{stage}");
            if !self.has_stage(*stage) {
                p.push(
                    field,
                    format!("stage {stage} is not part of this probe's chain (it has: {have}, end_to_end)"),
                );
                continue;
            }
            p.positive(&field, d.0);
        }

        self.store.check(&format!("{at}.store"), p);
        self.chain.check(&format!("{at}.chain"), p);
    }
}

fn stage_list(stages: &[Stage]) -> String {
    stages
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        match reqwest::Url::parse(&self.address) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => p.push(
                format!("{at}.address"),
                format!("{:?} must be an http:// or https:// URL", self.address),
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => p.push(
                format!("{at}.address"),
                format!("{:?} has no host", self.address),
            ),
            Ok(_) => {}
            Err(e) => p.push(
                format!("{at}.address"),
                format!("{:?} is not a URL: {e}", self.address),
            ),
        }
        check_kv_path(&format!("{at}.mount"), &self.mount, p);
        let before = p.0.len();
        check_kv_path(&format!("{at}.path"), &self.path, p);
        check_kv_path(&format!("{at}.path_prefix"), &self.path_prefix, p);
        if p.0.len() == before && !self.path_in_prefix() {
            p.push(
                format!("{at}.path"),
                format!(
                    "{:?} is outside the canary prefix {:?} (`{at}.path_prefix`): the prober refuses to write there",
                    self.path, self.path_prefix
                ),
            );
        }
        if let Some(n) = self.max_versions {
            if n == 0 || n > MAX_MAX_VERSIONS {
                p.push(
                    format!("{at}.max_versions"),
                    format!("{n} must be 1-{MAX_MAX_VERSIONS}"),
                );
            }
        }
        p.non_empty(&format!("{at}.key"), &self.key);
        if let Some(ns) = &self.namespace {
            p.non_empty(&format!("{at}.namespace"), ns);
        }
        if let Some(ca) = &self.ca_bundle {
            p.non_empty_path(&format!("{at}.ca_bundle"), ca);
        }
        if let Some(t) = self.timeout {
            p.positive(&format!("{at}.timeout"), t);
        }
        let auth = format!("{at}.auth");
        match &self.auth {
            StoreAuth::Token(src) => src.check(&format!("{auth}.token"), p),
            StoreAuth::Kubernetes {
                role,
                mount,
                token_file,
            } => {
                p.non_empty(&format!("{auth}.kubernetes.role"), role);
                check_kv_path(&format!("{auth}.kubernetes.mount"), mount, p);
                p.non_empty_path(&format!("{auth}.kubernetes.token_file"), token_file);
            }
            StoreAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                check_kv_path(&format!("{auth}.approle.mount"), mount, p);
                p.non_empty(&format!("{auth}.approle.role_id"), role_id);
                secret_id.check(&format!("{auth}.approle.secret_id"), p);
            }
        }
    }
}

impl TokenSource {
    fn check(&self, at: &str, p: &mut Problems) {
        match self {
            TokenSource::File(path) => p.non_empty_path(&format!("{at}.file"), path),
            TokenSource::Env(var) => {
                let field = format!("{at}.env");
                if p.non_empty(&field, var) && (var.contains('=') || var.contains('\0')) {
                    p.push(
                        field,
                        format!("{var:?} is not an environment variable name"),
                    );
                }
            }
        }
    }
}

impl ChainConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        check_dns_label(&format!("{at}.namespace"), &self.namespace, p);
        if self.force_sync && self.external_secret.is_none() {
            p.push(
                format!("{at}.force_sync"),
                "needs `external_secret`: force-sync annotates the ExternalSecret",
            );
        }
        if let Some(es) = &self.external_secret {
            check_dns_subdomain(&format!("{at}.external_secret"), es, p);
            if self.secret.is_none() {
                p.push(
                    format!("{at}.secret"),
                    "required when `external_secret` is set: the Secret ESO writes",
                );
            }
        }
        if let Some(secret) = &self.secret {
            check_dns_subdomain(&format!("{at}.secret.name"), &secret.name, p);
            p.non_empty(&format!("{at}.secret.key"), &secret.key);
        }
        if let Some(rollout) = &self.rollout {
            check_dns_subdomain(&format!("{at}.rollout.deployment"), &rollout.deployment, p);
            match rollout.trigger {
                Trigger::Reloader if self.secret.is_none() => p.push(
                    format!("{at}.rollout.trigger"),
                    "`reloader` reacts to a Secret change: set `secret` (or use `restart` for webhook injection)",
                ),
                Trigger::Restart if self.external_secret.is_some() => p.push(
                    format!("{at}.rollout.trigger"),
                    "`restart` on an ESO chain restarts before ESO synced (Pods would read the old Secret): use `reloader`",
                ),
                Trigger::None if self.canary.source != CanarySource::File => p.push(
                    format!("{at}.rollout.trigger"),
                    "`none` only works with `canary.source: file` (an env var changes only in a new Pod)",
                ),
                _ => {}
            }
        } else if self.canary.source == CanarySource::Env {
            p.push(
                format!("{at}.rollout"),
                "required with `canary.source: env`: an env var changes only in a new Pod (trigger `reloader` or `restart`)",
            );
        }
        // (Without a rollout and with an env canary, the problem above says it.)
        let rollout_reported = self.rollout.is_none() && self.canary.source == CanarySource::Env;
        if !rollout_reported
            && self.external_secret.is_none()
            && self.secret.is_none()
            && !matches!(
                self.rollout,
                Some(RolloutConfig {
                    trigger: Trigger::Restart,
                    ..
                })
            )
        {
            p.push(
                format!("{at}.rollout"),
                "a chain without ESO is the webhook-injection (Bank-Vaults) chain and needs `rollout.trigger: restart`",
            );
        }
        let canary = format!("{at}.canary");
        if let Err(e) = check_label_selector(&self.canary.selector) {
            p.push(format!("{canary}.selector"), e);
        }
        if self.canary.port == 0 {
            p.push(format!("{canary}.port"), "must be 1-65535");
        }
        if let Some(t) = self.canary.timeout {
            p.positive(&format!("{canary}.timeout"), t);
        }
    }
}

/// Accumulates problems; helpers return whether the value passed.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn positive(&mut self, field: &str, d: Duration) -> bool {
        if d.is_zero() {
            self.push(field, "must be greater than 0");
            false
        } else {
            true
        }
    }

    fn non_empty(&mut self, field: &str, s: &str) -> bool {
        if s.trim().is_empty() {
            self.push(field, "must not be empty");
            false
        } else {
            true
        }
    }

    fn non_empty_path(&mut self, field: &str, path: &std::path::Path) {
        if path.as_os_str().is_empty() {
            self.push(field, "must not be empty");
        }
    }
}

fn check_name(field: &str, name: &str, p: &mut Problems) {
    if name.is_empty() {
        p.push(field, "must not be empty");
    } else if name.len() > MAX_NAME_LEN || !is_probe_name(name) {
        p.push(
            field,
            format!(
                "{name:?} must match [a-z0-9]([-a-z0-9_]*[a-z0-9])? and be at most {MAX_NAME_LEN} characters (it is a metric label value)"
            ),
        );
    }
}

fn is_probe_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: &u8| edge(c) || *c == b'-' || *c == b'_';
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => edge(first) && edge(last) && b.iter().all(inner),
        _ => false,
    }
}

/// A KV mount or path: relative, no `..`, no empty segments.
fn check_kv_path(field: &str, path: &str, p: &mut Problems) {
    if path.is_empty() {
        p.push(field, "must not be empty");
    } else if path.starts_with('/') {
        p.push(field, format!("{path:?} must not start with `/`"));
    } else if path.split('/').any(|seg| seg == ".." || seg == ".") {
        p.push(
            field,
            format!("{path:?} must not contain `.` or `..` segments"),
        );
    } else if path.trim_end_matches('/').split('/').any(str::is_empty) {
        p.push(field, format!("{path:?} has an empty segment (`//`)"));
    }
}

/// RFC 1123 label: namespaces.
fn check_dns_label(field: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        p.push(
            field,
            format!("{name:?} is not a valid Kubernetes name (RFC 1123 label)"),
        );
    }
}

/// RFC 1123 subdomain: Secret, ExternalSecret and Deployment names.
fn check_dns_subdomain(field: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if !ok {
        p.push(
            field,
            format!("{name:?} is not a valid Kubernetes name (RFC 1123 subdomain)"),
        );
    }
}

/// Check a label selector in the API server's string syntax
/// (`app=x,tier!=y,env in (a,b),!legacy`). Empty selects every Pod, which is
/// never what a canary wants, so it is refused.
pub fn check_label_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("must not be empty: it selects the canary Pods (e.g. `app=canary`)".into());
    }
    for req in split_top_level(selector)? {
        let req = req.trim();
        if req.is_empty() {
            return Err(format!("{selector:?} has an empty requirement (stray `,`)"));
        }
        check_requirement(req)?;
    }
    Ok(())
}

/// Split on commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("{s:?} has an unmatched `)`"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{s:?} has an unmatched `(`"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn check_requirement(req: &str) -> Result<(), String> {
    if let Some(key) = req.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    for op in ["!=", "==", "="] {
        if let Some((k, v)) = req.split_once(op) {
            check_label_key(k.trim())?;
            return check_label_value(v.trim());
        }
    }
    let words: Vec<&str> = req.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim_start();
        let set = rest
            .strip_prefix("notin")
            .or_else(|| rest.strip_prefix("in"))
            .map(str::trim);
        let Some(set) = set else {
            return Err(format!(
                "unknown operator in {req:?} (use =, ==, !=, in, notin, !)"
            ));
        };
        check_label_key(key)?;
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("{req:?}: the value set must be in parentheses"))?;
        if inner.trim().is_empty() {
            return Err(format!("{req:?}: the value set is empty"));
        }
        for v in inner.split(',') {
            check_label_value(v.trim())?;
        }
        return Ok(());
    }
    check_label_key(req)
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let mut scratch = Problems::default();
        check_dns_subdomain("", prefix, &mut scratch);
        if !scratch.0.is_empty() {
            return Err(format!("label key {key:?} has an invalid prefix"));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_word(name) {
        return Err(format!("{key:?} is not a valid label key"));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_word(value)) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            edge(f) && edge(l) && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three chain variants of the design, all valid.
    pub(crate) const GOOD: &str = r#"
kubernetes:
  request_timeout: 5s
probes:
  - name: eso-env
    interval: 30s
    deadline: 3m
    stage_deadlines: {eso_sync: 1m, rollout: 2m}
    slo: {eso_sync: 10s, end_to_end: 90s}
    store:
      address: http://127.0.0.1:8200
      path: canary/eso-env
      auth: {token: {env: VAULT_TOKEN}}
    chain:
      namespace: canary
      external_secret: canary-env
      secret: {name: canary-env}
      rollout: {deployment: canary-env, trigger: reloader}
      canary: {selector: "app=canary-env,tier in (canary, test),!legacy", source: env}
  - name: eso-volume
    schedule: "0 */5 * * * *"
    store:
      address: https://vault.example:8200
      path: canary/eso-volume
      auth: {kubernetes: {role: secret-canary}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {name: canary-volume}
      canary: {selector: app=canary-volume, source: file}
  - name: bank_vaults
    interval: 2m
    store:
      address: https://vault.example:8200
      path: canary/bankvaults
      auth: {approle: {role_id: abc, secret_id: {file: /etc/secret-id}}}
    chain:
      namespace: canary
      rollout: {deployment: canary-bv, trigger: restart}
      canary: {selector: app=canary-bv, source: env}
"#;

    fn problems(yaml: &str) -> Vec<String> {
        match Config::from_yaml(yaml, "bad.yaml") {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(Problem::to_string).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    fn has(problems: &[String], needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "no problem containing {needle:?} in:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn shared_objects_restart_on_eso_and_huge_deadlines_are_refused() {
        // A second eso-env probe on the same path, ExternalSecret and Deployment.
        let second = GOOD
            .split_once("  - name: eso-volume")
            .unwrap()
            .0
            .split_once("probes:\n")
            .unwrap()
            .1
            .replace("name: eso-env", "name: eso-env-2");
        let yaml = format!("{GOOD}{second}");
        let p = problems(&yaml);
        has(&p, "probes[3].store.path: also used by probes[0]");
        has(
            &p,
            "probes[3].chain.external_secret: also used by probes[0]",
        );
        has(
            &p,
            "probes[3].chain.rollout.deployment: also used by probes[0]",
        );
        let p = problems(&GOOD.replace("trigger: reloader", "trigger: restart"));
        has(
            &p,
            "probes[0].chain.rollout.trigger: `restart` on an ESO chain",
        );
        let p = problems(&GOOD.replace("deadline: 3m", "deadline: 2h"));
        has(&p, "probes[0].deadline: 2h exceeds the maximum of 1h");
    }

    #[test]
    fn the_three_chain_variants_are_valid() {
        let c = Config::from_yaml(GOOD, "good.yaml").unwrap();
        assert_eq!(c.probes.len(), 3);
        assert_eq!(
            c.probes[0].stages(),
            Stage::CHAIN.to_vec(),
            "the ESO + Reloader chain has every hop"
        );
        assert_eq!(
            c.probes[1].stages(),
            [
                Stage::StoreWrite,
                Stage::EsoSync,
                Stage::SecretUpdate,
                Stage::CanaryObserve
            ]
        );
        assert_eq!(
            c.probes[2].stages(),
            [
                Stage::StoreWrite,
                Stage::ReloaderTrigger,
                Stage::Rollout,
                Stage::CanaryObserve
            ]
        );
        assert_eq!(
            c.probes[0].stage_deadline(Stage::EsoSync),
            Duration::from_secs(60)
        );
        assert_eq!(
            c.probes[0].stage_deadline(Stage::CanaryObserve),
            Duration::from_secs(180)
        );
        assert_eq!(c.probes[1].deadline(), DEFAULT_DEADLINE);
        assert_eq!(c.kubernetes.request_timeout(), Duration::from_secs(5));
        assert_eq!(
            c.probes[0].store.auth,
            StoreAuth::Token(TokenSource::Env("VAULT_TOKEN".into()))
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field_path() {
        let yaml = r#"
probes:
  - name: Bad Name
    schedule: "*/5 * * * *"
    interval: 500ms
    deadline: 1m
    stage_deadlines: {eso_sync: 2m, rollout: 0s}
    slo: {reloader_trigger: 1s}
    store:
      address: ftp://vault
      mount: /secret
      path: ../escape
      auth: {token: {env: ""}}
    chain:
      namespace: Canary
      external_secret: es
      rollout: {deployment: d, trigger: none}
      canary: {selector: "app in canary", source: env, port: 0}
  - name: ok
    schedule: "0 61 * * * *"
    store: {address: "http://v:8200", path: "", auth: {kubernetes: {role: ""}}}
    chain:
      namespace: canary
      rollout: {deployment: d, trigger: reloader}
      canary: {selector: "", source: file}
  - name: ok
    store: {address: "not a url", path: a/b, auth: {approle: {role_id: "", secret_id: {file: ""}}}}
    chain:
      namespace: canary
      canary: {selector: app=x, source: file}
"#;
        let p = problems(yaml);
        has(&p, "probes[0].name: \"Bad Name\" must match");
        has(
            &p,
            "probes[0].schedule: set exactly one of `schedule` and `interval`, not both",
        );
        has(
            &p,
            "probes[0].stage_deadlines.eso_sync: 2m exceeds the run deadline of 1m",
        );
        has(
            &p,
            "probes[0].stage_deadlines.rollout: stage rollout is not part of this probe's chain",
        );
        has(&p, "probes[0].slo.reloader_trigger: stage reloader_trigger is not part of this probe's chain");
        has(
            &p,
            "probes[0].store.address: \"ftp://vault\" must be an http:// or https:// URL",
        );
        has(
            &p,
            "probes[0].store.mount: \"/secret\" must not start with `/`",
        );
        has(&p, "probes[0].store.path: \"../escape\" must not contain");
        has(&p, "probes[0].store.auth.token.env: must not be empty");
        has(
            &p,
            "probes[0].chain.namespace: \"Canary\" is not a valid Kubernetes name",
        );
        has(
            &p,
            "probes[0].chain.secret: required when `external_secret` is set",
        );
        has(
            &p,
            "probes[0].chain.rollout.trigger: `none` only works with `canary.source: file`",
        );
        has(&p, "probes[0].chain.canary.selector: \"app in canary\"");
        has(&p, "probes[0].chain.canary.port: must be 1-65535");
        has(
            &p,
            "probes[1].schedule: invalid cron expression \"0 61 * * * *\"",
        );
        has(&p, "probes[1].store.path: must not be empty");
        has(
            &p,
            "probes[1].store.auth.kubernetes.role: must not be empty",
        );
        has(
            &p,
            "probes[1].chain.rollout.trigger: `reloader` reacts to a Secret change",
        );
        has(&p, "probes[1].chain.canary.selector: must not be empty");
        has(
            &p,
            "probes[2].name: duplicate probe name \"ok\" (also probes[1])",
        );
        has(
            &p,
            "probes[2].schedule: set exactly one of `schedule` (cron) and `interval`",
        );
        has(&p, "probes[2].store.address: \"not a url\" is not a URL");
        has(
            &p,
            "probes[2].store.auth.approle.role_id: must not be empty",
        );
        has(
            &p,
            "probes[2].store.auth.approle.secret_id.file: must not be empty",
        );
        has(
            &p,
            "probes[2].chain.rollout: a chain without ESO is the webhook-injection",
        );
    }

    #[test]
    fn five_field_cron_and_short_intervals_are_refused() {
        let yaml = GOOD
            .replace("schedule: \"0 */5 * * * *\"", "schedule: \"*/5 * * * *\"")
            .replace("interval: 30s", "interval: 0s");
        let p = problems(&yaml);
        has(
            &p,
            "probes[1].schedule: invalid cron expression \"*/5 * * * *\": 5 fields",
        );
        has(&p, "probes[0].interval: 0s is below the minimum of 1s");
    }

    #[test]
    fn env_canary_without_rollout_is_refused() {
        let yaml = GOOD.replace(
            "      rollout: {deployment: canary-env, trigger: reloader}\n",
            "",
        );
        let p = problems(&yaml);
        has(
            &p,
            "probes[0].chain.rollout: required with `canary.source: env`",
        );
        has(
            &p,
            "probes[0].stage_deadlines.rollout: stage rollout is not part of this probe's chain",
        );
    }

    #[test]
    fn yaml_syntax_errors_carry_line_and_column() {
        let e = Config::from_yaml("probes:\n  - name: [unclosed\n", "x.yaml").unwrap_err();
        match e {
            ConfigError::Syntax { line, column, .. } => {
                assert!(line.is_some() && column.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_fields_and_stage_names_are_named() {
        let e = Config::from_yaml(&GOOD.replace("deadline: 3m", "deadlin: 3m"), "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("probes[0]: unknown field `deadlin`"), "{e}");
        assert!(e.contains("line 7"), "{e}");
        let e = Config::from_yaml(&GOOD.replace("{eso_sync: 10s", "{esosync: 10s"), "x.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `esosync`"), "{e}");
        assert!(e.contains("probes[0].slo"), "{e}");
    }

    #[test]
    fn label_selectors() {
        for ok in [
            "app=x",
            "app==x",
            "app!=x",
            "a.b/c=d",
            "app in (a, b)",
            "app notin (a)",
            "app",
            "!app",
            "app=x,tier",
        ] {
            check_label_selector(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "app=",
            "=x",
            "app in a",
            "app in ()",
            "app=x,",
            "app=(x",
            "-app=x",
            "app=x y",
        ] {
            if bad == "app=" {
                // An empty value is valid in the API's syntax.
                continue;
            }
            assert!(
                check_label_selector(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
