//! The prober's configuration: the YAML model and its validation. Every
//! error names the field path (`probes[1].store.auth`) so a person can fix it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cadence::{Cadence, CronExpr};
use crate::vocab::Stage;

#[cfg(test)]
mod tests;
mod validate;

pub use crate::vocab::DEFAULT_DEADLINE;
pub use validate::check_label_selector;

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
    /// Let probes share a store path, ExternalSecret or Deployment. Off by
    /// default: two probes on one chain take each other's runs for their
    /// own. Only for probes whose schedules never overlap (the benchmark's
    /// scale phase staggers many probes over a few chains this way).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_shared_objects: bool,
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
    pub schedule: Option<CronExpr>,
    /// A fixed interval between run starts (e.g. `30s`).
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// The whole run's deadline (default 5 m).
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// How long the cluster may report a stage blocked (ExternalSecret
    /// `Ready=False`, a missing object, a canary with an unresolved value)
    /// before the run ends with that reason instead of waiting out the
    /// deadline (default 10 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub blocked_for: Option<Duration>,
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
    // serde_norway 0.9 reads an enum nested in an enum only as a YAML tag
    // (`!env X`); the singleton-map form is what people write.
    #[serde(with = "serde_norway::with::singleton_map_recursive")]
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
    /// How the prober reaches the canary Pods (default `direct`, by Pod IP).
    #[serde(default)]
    pub access: CanaryAccess,
}

/// How the prober reaches a canary Pod's `/digest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryAccess {
    /// By Pod IP: the prober runs inside the cluster network.
    #[default]
    Direct,
    /// Through the API server's Pod proxy
    /// (`pods/{name}:{port}/proxy/digest`, RBAC `get` on `pods/proxy`): for
    /// a prober outside the cluster network (a pipeline with a kubeconfig).
    Proxy,
    /// Direct first; when a Pod IP cannot be connected to, the Pod proxy,
    /// and the probe keeps using it.
    Auto,
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
/// How long a blocking signal may persist when `blocked_for` is absent:
/// long enough for a retry of ESO or the kubelet, well under any deadline.
pub const DEFAULT_BLOCKED_FOR: Duration = Duration::from_secs(10);
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
        /// serde_norway's message: field path, what is wrong, line and column.
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
        let config: Config = serde_norway::from_str(text).map_err(|e| {
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

    /// How long a blocking signal from the cluster may persist before the
    /// run ends (see [`ProbeConfig::blocked_for`]).
    pub fn blocked_for(&self) -> Duration {
        self.blocked_for.unwrap_or(DEFAULT_BLOCKED_FOR)
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
        Stage::chain(c.external_secret.is_some(), c.secret.is_some(), c.rolls())
    }

    /// How often the probe runs: its cron schedule (parsed when the config
    /// was read) or its interval. `None` only for a config the validator
    /// refuses (neither set, or an unusable expression).
    pub fn cadence(&self) -> Option<Cadence> {
        match (&self.schedule, self.interval) {
            (Some(expr), _) => expr
                .schedule()
                .ok()
                .map(|s| Cadence::Cron(Box::new(s.clone()))),
            (None, Some(interval)) => Some(Cadence::Interval(interval)),
            (None, None) => None,
        }
    }

    /// Whether the chain has this stage (`end_to_end` always).
    pub fn has_stage(&self, stage: Stage) -> bool {
        stage == Stage::EndToEnd || self.stages().contains(&stage)
    }
}
