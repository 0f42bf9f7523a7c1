//! Generated lab scenarios and prober configs: any number of the reference
//! scenario's three chain variants (ESO + Reloader + env, ESO + Secret
//! volume, Bank-Vaults restart), each with its own store path,
//! ExternalSecret, Secret and canary Deployment, so probes never share a
//! chain and can run at the same time.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Namespace of every generated object.
pub const NAMESPACE: &str = "canary";

/// A chain variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// ESO -> Secret -> Reloader (env-vars) -> rollout -> env canary.
    Env,
    /// ESO -> Secret -> kubelet volume refresh -> file canary.
    Volume,
    /// Prober restart -> rollout -> `vault:` resolved at Pod start.
    Bankvaults,
}

impl Kind {
    /// Short name used in object names and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Env => "env",
            Kind::Volume => "volume",
            Kind::Bankvaults => "bankvaults",
        }
    }
}

impl From<Kind> for secret_canary_lab::truth::ChainKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Env => Self::Env,
            Kind::Volume => Self::Volume,
            Kind::Bankvaults => Self::Bankvaults,
        }
    }
}

/// One chain: its ExternalSecret, Secret and Deployment share `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// The variant.
    pub kind: Kind,
    /// Object name (ExternalSecret, Secret, Deployment) and probe name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// KV v2 path inside `secret/`.
    pub store_path: String,
    /// Label selector of the canary Pods.
    pub selector: String,
    /// Canary replicas.
    pub replicas: u32,
}

impl Chain {
    /// Chain `i` of a kind.
    pub fn new(kind: Kind, i: usize) -> Chain {
        let name = format!("{}-{i}", kind.as_str());
        Chain {
            kind,
            namespace: NAMESPACE.into(),
            store_path: format!("canary/{name}"),
            selector: format!("app={name}"),
            replicas: if kind == Kind::Env { 2 } else { 1 },
            name,
        }
    }
}

/// `copies` chains of each of `kinds`, interleaved (env-0, volume-0, ...).
pub fn chains(kinds: &[Kind], copies: usize) -> Vec<Chain> {
    (0..copies)
        .flat_map(|i| kinds.iter().map(move |k| Chain::new(*k, i)))
        .collect()
}

/// How the (simulated) ESO authenticates to OpenBao.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsoAuth {
    /// Kubernetes auth, as the reference scenario: a TokenRequest and an
    /// OpenBao login (with a TokenReview back to the lab) on every sync.
    Kubernetes,
    /// `tokenSecretRef` to a Secret holding [`ESO_TOKEN`]: no login per sync,
    /// so a thousand chains do not turn every tick into a thousand logins.
    Token,
}

/// The OpenBao token id ESO uses with [`EsoAuth::Token`] (created by the
/// bench once OpenBao runs; a lab-only credential).
pub const ESO_TOKEN: &str = "bench-eso-reader";

/// A scenario file's content for `chains`: knobs, store values, objects,
/// OpenBao roles (no `prober`: the bench writes its own configs).
pub fn scenario_yaml(
    chains: &[Chain],
    knobs: &[(&str, String)],
    refresh_interval: &str,
    auth: EsoAuth,
) -> String {
    let store_auth = match auth {
        EsoAuth::Kubernetes => {
            json!({"kubernetes": {"mountPath": "kubernetes", "role": "external-secrets",
            "serviceAccountRef": {"name": "external-secrets"}}})
        }
        EsoAuth::Token => json!({"tokenSecretRef": {"name": "openbao-token", "key": "token"}}),
    };
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "external-secrets", "namespace": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "canary-bankvaults", "namespace": NAMESPACE}}),
        json!({"apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
            "metadata": {"name": "openbao", "namespace": NAMESPACE},
            "spec": {"provider": {"vault": {"server": "${VAULT_ADDR}", "path": "secret", "version": "v2",
                "auth": store_auth}}}}),
    ];
    if auth == EsoAuth::Token {
        use base64_token::encode;
        objects.push(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "openbao-token", "namespace": NAMESPACE},
            "data": {"token": encode(ESO_TOKEN)}}));
    }
    for c in chains {
        if c.kind != Kind::Bankvaults {
            objects.push(json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                "metadata": {"name": c.name, "namespace": c.namespace},
                "spec": {"refreshInterval": refresh_interval,
                    "secretStoreRef": {"name": "openbao", "kind": "SecretStore"},
                    "target": {"name": c.name, "creationPolicy": "Owner"},
                    "data": [{"secretKey": "value", "remoteRef": {"key": c.store_path, "property": "value"}}]}}));
        }
        objects.push(deployment(c));
    }
    let store: Vec<Value> = chains
        .iter()
        .map(|c| json!({"path": c.store_path, "data": {"value": "initial"}}))
        .collect();
    let knobs: serde_json::Map<String, Value> = knobs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    let doc = json!({
        "knobs": knobs,
        "store": store,
        "objects": objects,
        "vault_roles": [
            {"name": "external-secrets", "service_account": "external-secrets", "namespace": NAMESPACE, "policy": "read-canary"},
            {"name": "canary-bankvaults", "service_account": "canary-bankvaults", "namespace": NAMESPACE, "policy": "read-canary"},
        ],
    });
    serde_norway::to_string(&doc).unwrap_or_default()
}

/// Base64 for the one Secret the bench writes (no extra dependency).
mod base64_token {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding.
    pub fn encode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn encodes_like_rfc_4648() {
        assert_eq!(encode("f"), "Zg==");
        assert_eq!(encode("fo"), "Zm8=");
        assert_eq!(encode("foo"), "Zm9v");
        assert_eq!(encode("foobar"), "Zm9vYmFy");
    }
}

fn deployment(c: &Chain) -> Value {
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "SECRET_CANARY_LISTEN", "value": "$(POD_IP):8080"}),
    ];
    let mut annotations = json!({});
    let mut template_annotations = json!({});
    let mut spec_extra = json!({});
    let mut volumes = Value::Null;
    let mut mounts = Value::Null;
    match c.kind {
        Kind::Env => {
            annotations = json!({"reloader.stakater.com/auto": "true"});
            env.push(json!({"name": "SECRET_CANARY_FROM_ENV", "value": "CANARY_VALUE"}));
            env.push(json!({"name": "CANARY_VALUE", "valueFrom": {"secretKeyRef": {"name": c.name, "key": "value"}}}));
        }
        Kind::Volume => {
            env.push(json!({"name": "SECRET_CANARY_FROM_FILE", "value": "/etc/canary/value"}));
            volumes = json!([{"name": "secret", "secret": {"secretName": c.name}}]);
            mounts = json!([{"name": "secret", "mountPath": "/etc/canary", "readOnly": true}]);
        }
        Kind::Bankvaults => {
            template_annotations = json!({
                "vault.security.banzaicloud.io/vault-addr": "${VAULT_ADDR}",
                "vault.security.banzaicloud.io/vault-role": "canary-bankvaults",
                "vault.security.banzaicloud.io/vault-path": "kubernetes",
            });
            spec_extra = json!({"serviceAccountName": "canary-bankvaults"});
            env.push(json!({"name": "SECRET_CANARY_FROM_ENV", "value": "CANARY_VALUE"}));
            env.push(json!({"name": "CANARY_VALUE", "value": format!("vault:secret/data/{}#value", c.store_path)}));
        }
    }
    let mut container = json!({
        "name": "canary",
        "image": "secret-canary:latest",
        "command": ["secret-canary", "canary"],
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}},
    });
    if !mounts.is_null() {
        container["volumeMounts"] = mounts;
    }
    let mut pod_spec = json!({"containers": [container]});
    if let (Some(p), Some(extra)) = (pod_spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    if !volumes.is_null() {
        pod_spec["volumes"] = volumes;
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": c.name, "namespace": c.namespace, "annotations": annotations},
        "spec": {
            "replicas": c.replicas,
            "progressDeadlineSeconds": 30,
            "selector": {"matchLabels": {"app": c.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": c.name}, "annotations": template_annotations},
                "spec": pod_spec,
            },
        },
    })
}

/// How the generated probes run.
#[derive(Debug, Clone)]
pub struct ProberSpec<'a> {
    /// The kubeconfig the prober uses (the lab's, or the counting proxy's).
    pub kubeconfig: &'a Path,
    /// OpenBao's address.
    pub vault_addr: &'a str,
    /// A token file with write access to `secret/canary/*`.
    pub token_file: &'a Path,
    /// Interval between run starts.
    pub interval: Duration,
    /// Run deadline.
    pub deadline: Duration,
    /// Annotate the ExternalSecret right after the write (ESO syncs at once).
    pub force_sync: bool,
    /// Spread the probes' runs over the interval with cron schedules
    /// (`S/P * * * * *`, probe i at second i mod P) instead of starting
    /// them all together. Needs an interval of whole seconds dividing 60.
    pub stagger: bool,
}

/// The cron schedule of probe `i` staggered over `period` seconds, if the
/// period allows it (whole seconds, dividing a minute).
pub fn staggered_cron(i: usize, period: Duration) -> Option<String> {
    let secs = period.as_secs();
    let whole = period.subsec_nanos() == 0 && secs > 0 && secs < 60 && 60 % secs == 0;
    whole.then(|| format!("{}/{secs} * * * * *", i as u64 % secs))
}

/// A prober config with `probes` probes over `chains` (probe i on chain
/// i mod chains, named `p<i>-<chain>`). Probes sharing a chain take turns:
/// each runs every `spec.interval` (whole seconds dividing a minute), and
/// the k-th probe of a chain starts k·interval/shares seconds after the
/// first, so one chain never has two runs at once.
pub fn shared_prober_yaml(chains: &[Chain], probes: usize, spec: &ProberSpec<'_>) -> String {
    let n = chains.len().max(1);
    let period = spec.interval.as_secs().max(1);
    let shares = probes.div_ceil(n).max(1) as u64;
    let mut doc: Value = serde_norway::from_str(&prober_yaml(chains, spec)).unwrap_or_default();
    let Some(list) = doc["probes"].as_array().cloned() else {
        return String::new();
    };
    let out: Vec<Value> = (0..probes)
        .map(|i| {
            let mut p = list[i % n].clone();
            let k = (i / n) as u64;
            p["name"] = json!(format!("p{i}-{}", chains[i % n].name));
            if let Some(o) = p.as_object_mut() {
                o.remove("interval");
            }
            p["schedule"] = json!(format!("{}/{period} * * * * *", k * period / shares));
            p
        })
        .collect();
    doc["probes"] = json!(out);
    // Probes share a chain taking turns (staggered cron, one run at a time
    // per chain), which the prober refuses unless told.
    if shares > 1 {
        doc["allow_shared_objects"] = json!(true);
    }
    serde_norway::to_string(&doc).unwrap_or_default()
}

/// A prober config with one probe per chain, named after the chain.
pub fn prober_yaml(chains: &[Chain], spec: &ProberSpec<'_>) -> String {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let probes: Vec<Value> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut chain = json!({
                "namespace": c.namespace,
                "canary": {
                    "selector": c.selector,
                    "port": 8080,
                    "source": if c.kind == Kind::Volume { "file" } else { "env" },
                },
            });
            match c.kind {
                Kind::Env => {
                    chain["external_secret"] = json!(c.name);
                    chain["secret"] = json!({"name": c.name, "key": "value"});
                    chain["rollout"] = json!({"deployment": c.name, "trigger": "reloader"});
                }
                Kind::Volume => {
                    chain["external_secret"] = json!(c.name);
                    chain["secret"] = json!({"name": c.name, "key": "value"});
                }
                Kind::Bankvaults => {
                    chain["rollout"] = json!({"deployment": c.name, "trigger": "restart"});
                }
            }
            if spec.force_sync && c.kind != Kind::Bankvaults {
                chain["force_sync"] = json!(true);
            }
            let mut probe = json!({
                "name": c.name,
                "deadline": secs(spec.deadline),
                "store": {
                    "address": spec.vault_addr,
                    "mount": "secret",
                    "path": c.store_path,
                    "key": "value",
                    "auth": {"token": {"file": spec.token_file}},
                },
                "chain": chain,
            });
            match staggered_cron(i, spec.interval).filter(|_| spec.stagger) {
                Some(cron) => probe["schedule"] = json!(cron),
                None => probe["interval"] = json!(secs(spec.interval)),
            }
            probe
        })
        .collect();
    let doc = json!({
        "kubernetes": {"kubeconfig": spec.kubeconfig},
        "probes": probes,
    });
    serde_norway::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn generated_scenarios_parse_and_configs_validate() {
        let cs = chains(&[Kind::Env, Kind::Volume, Kind::Bankvaults], 2);
        assert_eq!(cs.len(), 6);
        let text = scenario_yaml(
            &cs,
            &[("eso-latency", "20ms..400ms".into())],
            "2s",
            EsoAuth::Kubernetes,
        );
        let vars = BTreeMap::from([("VAULT_ADDR", "http://127.0.0.1:1".to_string())]);
        let s = secret_canary_lab::scenario::Scenario::parse(&text, &vars).unwrap();
        assert_eq!(s.store.len(), 6);
        assert_eq!(s.objects.len(), 4 + 4 + 6);
        let text = scenario_yaml(&cs, &[], "1h", EsoAuth::Token);
        let s = secret_canary_lab::scenario::Scenario::parse(&text, &vars).unwrap();
        assert_eq!(s.objects.len(), 5 + 4 + 6);
        assert!(!serde_json::to_string(&s.objects).unwrap().contains("${"));
        let cfg = prober_yaml(
            &cs,
            &ProberSpec {
                kubeconfig: Path::new("/tmp/k"),
                vault_addr: "http://127.0.0.1:1",
                token_file: Path::new("/tmp/t"),
                interval: Duration::from_secs(8),
                deadline: Duration::from_secs(60),
                force_sync: true,
                stagger: false,
            },
        );
        let parsed = secret_canary::config::Config::from_yaml(&cfg, "bench.yaml").unwrap();
        assert_eq!(parsed.probes.len(), 6);
        assert!(cfg.contains("force_sync: true"));
        assert!(cfg.contains("interval: 8000ms"));
        assert_eq!(
            staggered_cron(7, Duration::from_secs(30)).unwrap(),
            "7/30 * * * * *"
        );
        assert!(staggered_cron(7, Duration::from_secs(7)).is_none());
        assert!(staggered_cron(7, Duration::from_millis(7300)).is_none());
        let spec = ProberSpec {
            kubeconfig: Path::new("/tmp/k"),
            vault_addr: "http://127.0.0.1:1",
            token_file: Path::new("/tmp/t"),
            interval: Duration::from_secs(30),
            deadline: Duration::from_secs(20),
            force_sync: true,
            stagger: true,
        };
        let shared = shared_prober_yaml(&cs[..2], 20, &spec);
        let parsed = secret_canary::config::Config::from_yaml(&shared, "bench.yaml").unwrap();
        assert_eq!(parsed.probes.len(), 20);
        assert_eq!(parsed.probes[19].name, "p19-volume-0");
        assert_eq!(
            parsed.probes[19].schedule.as_deref(),
            Some("27/30 * * * * *")
        );
    }
}
