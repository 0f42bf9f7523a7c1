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
    /// How to log in.
    pub auth: StoreAuth,
}

fn default_mount() -> String {
    "secret".into()
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
