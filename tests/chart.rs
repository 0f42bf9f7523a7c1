//! The Helm chart in `charts/secret-canary`, checked by real Helm (Helm v4
//! as a library, helm-sdkpy, driven by scripts/helm.py): lint with default
//! values and with every chain variant enabled, then render (a real `helm
//! install` against a throwaway in-process API stand-in) and check every
//! manifest: it round-trips through the k8s-openapi type of its kind, RBAC has
//! no wildcard and touches Secrets only by name and never cluster-wide, every
//! Pod runs under the restricted Pod Security profile, the prober config is
//! accepted by the prober's own validation, and the PrometheusRule and
//! dashboard ConfigMap are the sources in alerts/ and dashboards/. High
//! availability (leader election: Lease RBAC, rollout strategy, disruption
//! budget) and the metrics bearer token are checked against the prober's own
//! flag parsing and token reader.

mod ops;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

const CHART: &str = "charts/secret-canary";

fn chart_dir() -> PathBuf {
    ops::root().join(CHART)
}

/// Deep-merge `over` into `base` (objects merge, everything else replaces),
/// as Helm merges `--values`.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The chart's values.yaml with `overrides` merged in.
fn values_with(overrides: &Value) -> Value {
    let text = ops::read(&chart_dir().join("values.yaml"));
    let mut values: Value = serde_norway::from_str(&text).unwrap();
    merge(&mut values, overrides);
    values
}

/// Two leader-electing replicas with a generated metrics token.
fn ha_values() -> Value {
    json!({
        "replicaCount": 2,
        "leaderElection": {"enabled": true},
        "metrics": {"auth": {"enabled": true}}
    })
}

/// The value combinations every test runs: defaults, every chain variant
/// at once, Bank-Vaults alone (no ESO objects), the optional parts off
/// with a separate canary namespace, token auth and an extra probe, two
/// leader-electing replicas with a generated metrics token, and one
/// leader-electing replica with the token from an existing Secret.
fn combinations() -> Vec<(&'static str, Value)> {
    vec![
        ("defaults", json!({})),
        (
            "every-variant",
            json!({"variants": {
                "esoEnv": {"enabled": true, "forceSync": true},
                "esoVolume": {"enabled": true},
                "bankVaults": {"enabled": true}
            }}),
        ),
        (
            "bank-vaults-only",
            json!({"variants": {"esoEnv": {"enabled": false}, "bankVaults": {"enabled": true}}}),
        ),
        (
            "minimal",
            json!({
                "canary": {"namespace": "canary"},
                "store": {"auth": {"kubernetes": null, "token": {"env": "VAULT_TOKEN"}}},
                "prober": {"extraEnv": [{"name": "VAULT_TOKEN", "valueFrom": {"secretKeyRef": {"name": "vault-token", "key": "token"}}}]},
                "serviceMonitor": {"enabled": false},
                "prometheusRule": {"enabled": false},
                "dashboards": {"enabled": false},
                "networkPolicy": {"enabled": false},
                "tests": {"enabled": false},
                "extraProbes": [{
                    "name": "extra",
                    "interval": "10m",
                    "store": {"address": "http://vault:8200", "path": "canary/extra", "auth": {"token": {"env": "VAULT_TOKEN"}}},
                    "chain": {
                        "namespace": "canary",
                        "rollout": {"deployment": "extra", "trigger": "restart"},
                        "canary": {"selector": "app=extra", "source": "env"}
                    }
                }]
            }),
        ),
        ("ha-metrics-auth", ha_values()),
        (
            "cluster-store-custom-prefix",
            json!({
                "store": {"pathPrefix": "teams/payments/canary"},
                "secretStore": {"kind": "ClusterSecretStore"},
                "variants": {"esoVolume": {"enabled": true}, "bankVaults": {"enabled": true}}
            }),
        ),
        (
            "existing-store-openshift",
            json!({
                "secretStore": {"create": false, "kind": "ClusterSecretStore", "name": "vault-platform"},
                "adaptSecurityContext": "force",
                "commonLabels": {"team": "platform"},
                "image": {"registry": "registry.example:5000", "digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
                "prober": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}]}
            }),
        ),
        (
            "canary-proxy-access",
            json!({
                "canary": {"access": "proxy"},
                "networkPolicy": {"apiServerCIDRs": ["10.0.0.1/32"]}
            }),
        ),
        (
            "lease-existing-token",
            json!({
                "leaderElection": {"enabled": true, "leaseName": "prober-lease"},
                "metrics": {"auth": {"enabled": true, "existingSecret": "scrape-token", "key": "bearer"}},
                "variants": {"esoVolume": {"enabled": true, "forceSync": true}}
            }),
        ),
    ]
}

/// Helm drops keys set to null when merging; so do we for lint's values.yaml.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(drop_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn helm_py(args: &[&str], values: Option<&Value>) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(ops::venv_python());
    cmd.arg(ops::root().join("scripts/helm.py")).args(args);
    if let Some(v) = values {
        let f = dir.path().join("values.json");
        std::fs::write(&f, serde_json::to_vec(v).unwrap()).unwrap();
        cmd.arg("--values-json").arg(f);
    }
    let out = ops::run(&mut cmd);
    drop(dir);
    out
}

#[derive(Debug, Deserialize)]
struct Lint {
    errors: usize,
    messages: Vec<Value>,
}

#[derive(Debug, Deserialize)]
struct Hook {
    name: String,
    manifest: String,
}

#[derive(Debug, Deserialize)]
struct Render {
    manifest: String,
    hooks: Vec<Hook>,
    created: Vec<Value>,
}

/// Every object of a combination: the release manifest then the hooks.
struct Rendered {
    objects: Vec<Value>,
    hooks: Vec<Value>,
    created: usize,
}

impl Rendered {
    fn all(&self) -> impl Iterator<Item = &Value> {
        self.objects.iter().chain(self.hooks.iter())
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.all().filter(|o| o["kind"] == kind).collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.all()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("bad YAML document: {e}\n{text}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn render(overrides: &Value) -> Rendered {
    render_on(overrides, &[])
}

/// Render against a stand-in cluster whose API discovery differs from the
/// default (`--drop-api GV`, `--add-api GV`; see scripts/helm.py).
fn render_on(overrides: &Value, apis: &[&str]) -> Rendered {
    let mut args = vec!["render", CHART];
    args.extend_from_slice(apis);
    let out = helm_py(&args, Some(overrides));
    assert!(
        out.status.success(),
        "helm install (render) failed for {overrides}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Render = serde_json::from_slice(&out.stdout).expect("helm.py render output");
    Rendered {
        objects: yaml_docs(&r.manifest),
        hooks: r
            .hooks
            .iter()
            .flat_map(|h| {
                let docs = yaml_docs(&h.manifest);
                assert!(!docs.is_empty(), "hook {} is empty", h.name);
                docs
            })
            .collect(),
        created: r.created.len(),
    }
}

fn rendered_all() -> Vec<(&'static str, Rendered)> {
    combinations()
        .into_iter()
        .map(|(name, v)| (name, render(&v)))
        .collect()
}

#[test]
fn helm_lint_has_no_errors_for_every_value_combination() {
    for (name, overrides) in combinations() {
        let mut values = values_with(&overrides);
        drop_nulls(&mut values);
        let out = helm_py(&["lint", CHART], Some(&values));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lint: Lint = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{name}: helm.py lint printed no result ({e}):\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(
            lint.errors, 0,
            "{name}: helm lint reported errors:\n{stdout}"
        );
        assert!(out.status.success(), "{name}: {stdout}");
        assert!(
            !lint.messages.is_empty(),
            "{name}: lint said nothing at all"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn helm_lint_reports_a_broken_template() {
    // The linter really renders and parses: a copy of the chart with one
    // malformed manifest fails. (In lint mode Helm only logs `fail` and
    // `required`; the render tests cover those.)
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("secret-canary");
    copy_dir(&chart_dir(), &copy);
    std::fs::write(
        copy.join("templates/broken.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n",
    )
    .unwrap();
    let out = helm_py(&["lint", copy.to_str().unwrap()], None);
    let lint: Lint = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        lint.errors > 0,
        "a malformed template must fail the lint: {lint:?}"
    );
    assert!(!out.status.success());
}

#[test]
fn a_release_without_any_probe_is_refused() {
    let out = helm_py(
        &["render", CHART],
        Some(&json!({"variants": {"esoEnv": {"enabled": false}}})),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no probe"));
}

#[test]
fn values_schema_rejects_what_the_chart_cannot_do() {
    for bad in [
        json!({"prober": {"replicas": 2}}),
        json!({"store": {"auth": {"token": {"env": "X"}}}}), // two methods with the default kubernetes
        json!({"variants": {"esoEnv": {"interval": "often"}}}),
        json!({"variants": {"esoEnv": {"name": "Not_A_Name"}}}),
        json!({"variants": {"esoEnv": {"slo": {"no_such_stage": "1s"}}}}),
        json!({"replicaCount": 0}),
        // leaseDurationSeconds is whole seconds.
        json!({"leaderElection": {"enabled": true, "leaseDuration": "1500ms"}}),
        json!({"leaderElection": {"enabled": true, "leaseName": "Not_A_Name"}}),
        json!({"metrics": {"auth": {"enabled": true, "key": ""}}}),
    ] {
        let out = helm_py(&["render", CHART], Some(&bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {bad}");
        assert!(err.contains("schema"), "{bad}: {err}");
    }
}

/// Deserialize into the k8s-openapi type and serialize back: an unknown or
/// misplaced field (which the types would silently drop) shows as a difference.
fn round_trip<T: DeserializeOwned + serde::Serialize + k8s_openapi::Resource>(obj: &Value) {
    let name = &obj["metadata"]["name"];
    assert_eq!(obj["apiVersion"], T::API_VERSION, "{name}");
    assert_eq!(obj["kind"], T::KIND, "{name}");
    let typed: T = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("{} {name} is not a valid {}: {e}", T::KIND, T::KIND));
    let back = serde_json::to_value(&typed).unwrap();
    if let Some(path) = first_difference(obj, &back, String::new()) {
        panic!(
            "{} {name}: field {path} does not survive the k8s-openapi type (unknown or misplaced?)\n{}",
            T::KIND,
            serde_json::to_string_pretty(obj).unwrap()
        );
    }
}

fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                if v.is_null() {
                    continue;
                }
                match y.get(k) {
                    None => return Some(format!("{at}.{k}")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(at);
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]")))
        }
        // Quantities and int-or-strings may change representation, not value.
        (x, y) if x == y || x.to_string().trim_matches('"') == y.to_string().trim_matches('"') => {
            None
        }
        _ => Some(at),
    }
}

/// The custom resources: the group/version and the fields their controllers need.
fn check_custom(obj: &Value) {
    let kind = obj["kind"].as_str().unwrap();
    let name = &obj["metadata"]["name"];
    let (api, required): (&str, &[&str]) = match kind {
        "ClusterSecretStore" => (
            "external-secrets.io/v1",
            &[
                "/spec/provider/vault/server",
                "/spec/provider/vault/auth/kubernetes/serviceAccountRef/namespace",
                "/spec/conditions/0/namespaces/0",
            ],
        ),
        "AlertmanagerConfig" => (
            "monitoring.coreos.com/v1alpha1",
            &["/spec/inhibitRules/0/sourceMatch/0/name"],
        ),
        "ServiceMonitor" => (
            "monitoring.coreos.com/v1",
            &["/spec/selector/matchLabels", "/spec/endpoints/0/port"],
        ),
        "PrometheusRule" => ("monitoring.coreos.com/v1", &["/spec/groups/0/rules/0/expr"]),
        "SecretStore" => (
            "external-secrets.io/v1",
            &[
                "/spec/provider/vault/server",
                "/spec/provider/vault/auth/kubernetes/role",
            ],
        ),
        "ExternalSecret" => (
            "external-secrets.io/v1",
            &[
                "/spec/secretStoreRef/name",
                "/spec/target/name",
                "/spec/data/0/remoteRef/key",
                "/spec/refreshInterval",
            ],
        ),
        other => panic!("unexpected kind {other} ({name})"),
    };
    assert_eq!(obj["apiVersion"], api, "{kind} {name}");
    for p in required {
        assert!(obj.pointer(p).is_some(), "{kind} {name} lacks {p}");
    }
}

#[test]
fn rendered_manifests_parse_as_kubernetes_objects() {
    for (combo, r) in rendered_all() {
        assert_eq!(
            r.created,
            r.objects.len(),
            "{combo}: Helm applied a different set of objects than it rendered"
        );
        for obj in r.all() {
            assert!(
                obj["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{combo}: unnamed {obj}"
            );
            match obj["kind"].as_str().unwrap_or_default() {
                "Deployment" => round_trip::<Deployment>(obj),
                "Pod" => round_trip::<Pod>(obj),
                "Service" => round_trip::<Service>(obj),
                "ServiceAccount" => round_trip::<ServiceAccount>(obj),
                "ConfigMap" => round_trip::<ConfigMap>(obj),
                "Secret" => round_trip::<Secret>(obj),
                "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(obj),
                "Role" => round_trip::<Role>(obj),
                "RoleBinding" => round_trip::<RoleBinding>(obj),
                "ClusterRole" => round_trip::<ClusterRole>(obj),
                "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(obj),
                "NetworkPolicy" => round_trip::<NetworkPolicy>(obj),
                _ => check_custom(obj),
            }
        }
    }
}

/// Every RBAC rule of a rendered combination: (kind, rule).
fn rbac_rules(r: &Rendered) -> Vec<(String, Value)> {
    r.all()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .flat_map(|o| {
            let kind = o["kind"].as_str().unwrap().to_string();
            o["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |rule| (kind.clone(), rule))
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Problems with a set of RBAC rules (empty: acceptable).
fn rbac_problems(rules: &[(String, Value)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (kind, rule) in rules {
        for field in [
            "verbs",
            "resources",
            "apiGroups",
            "resourceNames",
            "nonResourceURLs",
        ] {
            if strings(&rule[field]).iter().any(|s| s.contains('*')) {
                problems.push(format!("{kind}: wildcard in {field}: {rule}"));
            }
        }
        let resources = strings(&rule["resources"]);
        let secrets = resources
            .iter()
            .any(|r| r == "secrets" || r.starts_with("secrets/"));
        if secrets && kind == "ClusterRole" {
            problems.push(format!(
                "ClusterRole grants access to Secrets cluster-wide: {rule}"
            ));
        }
        if secrets && strings(&rule["resourceNames"]).is_empty() {
            problems.push(format!(
                "{kind} grants Secrets without resourceNames: {rule}"
            ));
        }
        // Writes only ever by name, except creating a Lease (below).
        let writes = strings(&rule["verbs"]).iter().any(|v| {
            matches!(
                v.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        });
        if writes && strings(&rule["resourceNames"]).is_empty() && !is_lease_create(rule) {
            problems.push(format!(
                "{kind} grants writes without resourceNames: {rule}"
            ));
        }
    }
    problems
}

/// `create` on Leases and nothing else: the one write RBAC cannot narrow by
/// name (a create is authorized before the object, and its name, exist), so
/// leader election needs it unnamed.
fn is_lease_create(rule: &Value) -> bool {
    strings(&rule["apiGroups"]) == ["coordination.k8s.io"]
        && strings(&rule["resources"]) == ["leases"]
        && strings(&rule["verbs"]) == ["create"]
}

#[test]
fn rbac_has_no_wildcard_and_touches_secrets_only_by_name_and_never_cluster_wide() {
    for (combo, r) in rendered_all() {
        assert!(
            r.of_kind("ClusterRole").is_empty(),
            "{combo}: the chart needs no ClusterRole"
        );
        assert!(
            r.of_kind("ClusterRoleBinding").is_empty(),
            "{combo}: the chart needs no ClusterRoleBinding"
        );
        let rules = rbac_rules(&r);
        assert!(!rules.is_empty(), "{combo}: no Role rendered");
        let problems = rbac_problems(&rules);
        assert!(problems.is_empty(), "{combo}:\n{}", problems.join("\n"));
        // Only Pods are granted without names (their names are generated;
        // read-only), and Lease creation (see is_lease_create); `get` on pods/proxy only
        // when the prober reaches the canaries through the Pod proxy.
        let (_, config) = prober_config(&r);
        let proxied = config
            .probes
            .iter()
            .any(|p| p.chain.canary.access != secret_canary::config::CanaryAccess::Direct);
        let mut proxy_rules = 0;
        for (_, rule) in &rules {
            if strings(&rule["resourceNames"]).is_empty() && !is_lease_create(rule) {
                if strings(&rule["resources"]) == ["pods/proxy"] {
                    assert_eq!(strings(&rule["verbs"]), ["get"], "{combo}: {rule}");
                    proxy_rules += 1;
                    continue;
                }
                assert_eq!(strings(&rule["resources"]), ["pods"], "{combo}: {rule}");
                // The prober lists and watches them; the `helm test` Pod
                // only lists them (to find the prober Pods).
                assert!(
                    {
                        let v = strings(&rule["verbs"]);
                        v == ["list", "watch"] || v == ["list"]
                    },
                    "{combo}: {rule}"
                );
            }
        }
        assert_eq!(
            proxy_rules,
            usize::from(proxied),
            "{combo}: pods/proxy granted exactly when canary.access is proxy or auto"
        );
    }
}

#[test]
fn rbac_checker_catches_what_it_must() {
    let bad = [
        (
            "Role",
            json!({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}),
        ),
        (
            "Role",
            json!({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}),
        ),
        (
            "Role",
            json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}),
        ),
        (
            "Role",
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}),
        ),
        (
            "ClusterRole",
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["x"], "verbs": ["get"]}),
        ),
        (
            "Role",
            json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"]}),
        ),
        // The Lease exemption is for `create` alone.
        (
            "Role",
            json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "update"]}),
        ),
        (
            "Role",
            json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
        ),
    ];
    for (kind, rule) in bad {
        assert!(
            !rbac_problems(&[(kind.to_string(), rule.clone())]).is_empty(),
            "{kind} {rule} passed"
        );
    }
}

/// The restricted Pod Security profile, container by container.
fn check_restricted(what: &str, spec: &PodSpec) {
    let pod = spec.security_context.clone().unwrap_or_default();
    assert_eq!(pod.run_as_non_root, Some(true), "{what}: runAsNonRoot");
    // Absent in the adaptive mode (the platform assigns a non-root UID).
    assert!(pod.run_as_user.is_none_or(|u| u != 0), "{what}: runAsUser");
    assert_eq!(
        pod.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault"),
        "{what}: seccomp"
    );
    assert_ne!(spec.host_network, Some(true), "{what}: hostNetwork");
    assert_ne!(spec.host_pid, Some(true), "{what}: hostPID");
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().unwrap_or_default();
        let at = format!("{what}/{}", c.name);
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{at}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{at}: readOnlyRootFilesystem"
        );
        assert_ne!(sc.privileged, Some(true), "{at}: privileged");
        let drop = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.clone())
            .unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{at}: capabilities.drop");
        let add = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default();
        assert!(add.is_empty(), "{at}: capabilities.add");
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some(),
            "{at}: no resource limits"
        );
    }
}

#[test]
fn every_pod_runs_under_the_restricted_pod_security_profile() {
    for (combo, r) in rendered_all() {
        for d in r.of_kind("Deployment") {
            let d: Deployment = serde_json::from_value(d.clone()).unwrap();
            let name = d.metadata.name.clone().unwrap();
            let spec = d.spec.template.spec.unwrap();
            check_restricted(&format!("{combo}: Deployment {name}"), &spec);
        }
        for p in r.of_kind("Pod") {
            let p: Pod = serde_json::from_value(p.clone()).unwrap();
            check_restricted(
                &format!("{combo}: Pod {}", p.metadata.name.unwrap()),
                &p.spec.unwrap(),
            );
        }
    }
}

fn deployment(r: &Rendered, name: &str) -> Deployment {
    serde_json::from_value(r.named("Deployment", name).clone()).unwrap()
}

fn prober_config(r: &Rendered) -> (Value, secret_canary::config::Config) {
    let cm = r
        .of_kind("ConfigMap")
        .into_iter()
        .find(|c| c["data"]["config.yaml"].is_string())
        .expect("prober ConfigMap")
        .clone();
    let text = cm["data"]["config.yaml"].as_str().unwrap();
    let config = secret_canary::config::Config::from_yaml(text, "chart ConfigMap")
        .unwrap_or_else(|e| panic!("the prober rejects the chart's config: {e}\n{text}"));
    (cm, config)
}

#[test]
fn the_prober_accepts_the_rendered_config_and_each_probe_finds_its_canary() {
    for (combo, r) in rendered_all() {
        let (_, config) = prober_config(&r);
        assert!(!config.probes.is_empty(), "{combo}");
        for probe in &config.probes {
            if probe.name == "extra" {
                continue;
            }
            let selector: BTreeMap<String, String> = probe
                .chain
                .canary
                .selector
                .split(',')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            // Exactly one canary Deployment's Pods match the probe's selector.
            let matching: Vec<String> = r
                .of_kind("Deployment")
                .into_iter()
                .filter(|d| {
                    let labels = &d["spec"]["template"]["metadata"]["labels"];
                    selector.iter().all(|(k, v)| labels[k] == v.as_str())
                })
                .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(
                matching,
                std::slice::from_ref(&probe.name),
                "{combo}: probe {} selects {matching:?}",
                probe.name
            );
            let d = r.named("Deployment", &probe.name);
            assert_eq!(
                d["metadata"]["namespace"],
                probe.chain.namespace.as_str(),
                "{combo}"
            );
            if let Some(es) = &probe.chain.external_secret {
                let es = r.named("ExternalSecret", es);
                let secret = probe.chain.secret.as_ref().unwrap();
                assert_eq!(es["spec"]["target"]["name"], secret.name.as_str());
                assert_eq!(es["spec"]["data"][0]["secretKey"], secret.key.as_str());
                assert_eq!(
                    es["spec"]["data"][0]["remoteRef"]["key"],
                    probe.store.path.as_str(),
                    "{combo}: ESO must read the path the prober writes"
                );
            }
        }
    }
}

#[test]
fn canaries_carry_the_reloader_and_bank_vaults_wiring() {
    let r = render(&combinations()[1].1);
    let args = |d: &Deployment| {
        let c = &d.spec.template.spec.as_ref().unwrap().containers[0];
        (
            c.command.clone().unwrap_or_default(),
            c.args.clone().unwrap_or_default(),
            c.clone(),
        )
    };
    // ESO + Reloader + env.
    let env = deployment(&r, "eso-env");
    assert_eq!(
        env.metadata.annotations.as_ref().unwrap()["reloader.stakater.com/auto"],
        "true"
    );
    let (cmd, a, c) = args(&env);
    assert_eq!(cmd, ["/usr/local/bin/secret-canary"]);
    assert_eq!(a[0], "canary");
    assert!(
        a.contains(&"--from-env=SECRET_CANARY_VALUE".to_string()),
        "{a:?}"
    );
    let var = &c.env.as_ref().unwrap()[0];
    assert_eq!(
        var.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "eso-env"
    );
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 8080);
    // ESO + volume: a whole-Secret volume (no subPath), no Reloader.
    let vol = deployment(&r, "eso-volume");
    assert!(vol
        .metadata
        .annotations
        .as_ref()
        .is_none_or(|a| !a.contains_key("reloader.stakater.com/auto")));
    let (_, a, c) = args(&vol);
    assert!(
        a.iter()
            .any(|x| x.starts_with("--from-file=/etc/canary-secret/")),
        "{a:?}"
    );
    assert!(c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .all(|m| m.sub_path.is_none()));
    // Bank-Vaults: webhook annotations on the Pod template, a vault: env value.
    let bv = deployment(&r, "bank-vaults");
    let ann = bv
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap();
    for k in ["vault-addr", "vault-role", "vault-path"] {
        assert!(
            ann.contains_key(&format!("vault.security.banzaicloud.io/{k}")),
            "{ann:?}"
        );
    }
    let (_, _, c) = args(&bv);
    let value = c.env.as_ref().unwrap()[0].value.clone().unwrap();
    assert_eq!(value, "vault:secret/data/canary/bank-vaults#value");
    // The prober restarts the Bank-Vaults canary and force-syncs eso-env: patch on exactly those.
    let (_, config) = prober_config(&r);
    let bvp = config
        .probes
        .iter()
        .find(|p| p.name == "bank-vaults")
        .unwrap();
    assert_eq!(
        bvp.chain.rollout.as_ref().unwrap().trigger,
        secret_canary::config::Trigger::Restart
    );
    let patch: BTreeSet<String> = rbac_rules(&r)
        .into_iter()
        .filter(|(_, rule)| strings(&rule["verbs"]).contains(&"patch".to_string()))
        .flat_map(|(_, rule)| strings(&rule["resourceNames"]))
        .collect();
    assert_eq!(
        patch,
        BTreeSet::from(["bank-vaults".to_string(), "eso-env".to_string()])
    );
}

#[test]
fn a_config_change_rolls_the_prober_through_its_checksum() {
    let checksum = |r: &Rendered| {
        let d = r
            .of_kind("Deployment")
            .into_iter()
            .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "prober")
            .expect("prober Deployment")
            .clone();
        d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = render(&json!({}));
    let b = render(&json!({"variants": {"esoEnv": {"interval": "2m"}}}));
    let (ca, cb) = (checksum(&a), checksum(&b));
    assert_eq!(ca.len(), 64, "{ca}");
    assert!(ca.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(ca, cb);
    assert_eq!(
        ca,
        checksum(&render(&json!({}))),
        "rendering is deterministic"
    );
}

#[test]
fn helm_test_hook_asks_the_running_prober_and_writes_nothing() {
    let help = Command::new(env!("CARGO_BIN_EXE_secret-canary"))
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for (values, auth) in [
        (json!({}), false),
        (json!({"metrics": {"auth": {"enabled": true}}}), true),
    ] {
        let r = render(&values);
        let pods = r
            .hooks
            .iter()
            .filter(|h| h["kind"] == "Pod")
            .collect::<Vec<_>>();
        assert_eq!(pods.len(), 1);
        let pod: Pod = serde_json::from_value(pods[0].clone()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("secret-canary-test"));
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()["helm.sh/hook"],
            "test"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("secret-canary-test")
        );
        let args = spec.containers[0].args.clone().unwrap();
        // `check` reads the prober's results; `once` would write the store
        // paths the running prober rotates.
        assert_eq!(args[0], "check");
        for a in &args[1..] {
            let name = a.split('=').next().unwrap();
            assert!(help.contains(name), "`check` has no {name}:\n{help}");
        }
        assert_eq!(flag(&args, "within"), Some("10m"));
        assert_eq!(flag(&args, "timeout"), Some("4m"));
        // No prober config, no store credentials, no network label of the prober.
        assert!(spec
            .volumes
            .iter()
            .flatten()
            .all(|v| v.config_map.is_none()));
        assert!(!pod
            .metadata
            .labels
            .unwrap()
            .keys()
            .any(|k| k.contains("network")));
        assert_eq!(
            flag(&args, "pods"),
            Some("app.kubernetes.io/name=secret-canary,app.kubernetes.io/instance=secret-canary,app.kubernetes.io/component=prober")
        );
        assert_eq!(flag(&args, "namespace"), Some("secret-canary"));
        assert_eq!(flag(&args, "port"), Some("9850"));
        assert_eq!(
            flag(&args, "token-file").is_some(),
            auth,
            "the token only with metrics.auth"
        );
        // Its Role: `list` Pods, nothing else.
        let role = r.named("Role", "secret-canary-test");
        assert_eq!(
            role["rules"],
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
        );
        let binding = r.named("RoleBinding", "secret-canary-test");
        assert_eq!(binding["subjects"][0]["name"], "secret-canary-test");
        r.named("ServiceAccount", "secret-canary-test");
    }
    // With metricsFrom restricting the metrics port, the test Pod is admitted.
    let r = render(&json!({"metrics": {"auth": {"enabled": true}},
        "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}]}}));
    let np = r.named("NetworkPolicy", "secret-canary");
    let from = &np["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 2, "{from}");
    assert_eq!(
        from[1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "test"
    );
    let off = render(&json!({"tests": {"enabled": false}}));
    assert!(off.hooks.iter().all(|h| h["kind"] != "Pod"));
    assert!(off
        .all()
        .all(|o| o["metadata"]["name"] != "secret-canary-test"));
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn the_charts_copies_of_rules_and_dashboards_equal_their_sources() {
    let hint = "run scripts/sync-chart-files.sh";
    let files = chart_dir().join("files");
    let inhibit = ops::root().join("alerts/alertmanager-inhibit.yml");
    assert!(
        file_bytes(&inhibit) == file_bytes(&files.join("alertmanager-inhibit.yml")),
        "files/alertmanager-inhibit.yml differs from alerts/; {hint}"
    );
    for (sources, copies) in [
        (ops::rule_files(), files.clone()),
        (ops::dashboard_files(), files.join("dashboards")),
    ] {
        let names: BTreeSet<String> = sources
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        let suffix = if copies.ends_with("dashboards") {
            ".json"
        } else {
            ".rules.yml"
        };
        let copied: BTreeSet<String> = std::fs::read_dir(&copies)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(suffix))
            .collect();
        assert_eq!(
            names,
            copied,
            "{}: the chart's copies are not the sources' set; {hint}",
            copies.display()
        );
        for src in sources {
            let copy = copies.join(src.file_name().unwrap());
            assert!(
                file_bytes(&src) == file_bytes(&copy),
                "{} differs from {}; {hint}",
                copy.display(),
                src.display()
            );
        }
    }
}

#[test]
fn prometheus_rule_and_dashboard_configmap_carry_the_sources() {
    let r = render(
        &json!({"prometheusRule": {"runbookBaseUrl": "https://runbooks.example/secret-canary.md"}}),
    );
    let rule = r.of_kind("PrometheusRule");
    assert_eq!(rule.len(), 1);
    // The same groups as the source files, runbook URLs rebased.
    let mut expected = Vec::new();
    for f in ops::rule_files() {
        let text = ops::read(&f).replace(
            "https://github.com/secret-canary/secret-canary/blob/main/docs/runbooks.md",
            "https://runbooks.example/secret-canary.md",
        );
        let doc: Value = serde_norway::from_str(&text).unwrap();
        expected.extend(doc["groups"].as_array().unwrap().clone());
    }
    assert_eq!(
        rule[0]["spec"]["groups"],
        Value::Array(expected),
        "PrometheusRule differs from alerts/"
    );
    let text = serde_json::to_string(rule[0]).unwrap();
    assert!(
        text.contains("https://runbooks.example/secret-canary.md#secretcanaryerrorbudgetburnfast")
    );
    assert!(!text.contains("github.com/secret-canary"));
    // The dashboards, byte for byte, under the Grafana sidecar's label.
    let cm = r
        .of_kind("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("dashboard ConfigMap with grafana_dashboard: \"1\"");
    for f in ops::dashboard_files() {
        let key = f.file_name().unwrap().to_string_lossy().into_owned();
        let data = cm["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in the dashboard ConfigMap"));
        assert_eq!(data.trim_end(), ops::read(&f).trim_end(), "{key}");
    }
}

#[test]
fn the_default_image_is_the_dockerfiles() {
    let values = values_with(&json!({}));
    let dockerfile = ops::read(&ops::root().join("Dockerfile"));
    let chart: Value = serde_norway::from_str(&ops::read(&chart_dir().join("Chart.yaml"))).unwrap();
    assert_eq!(values["image"]["registry"], "ghcr.io");
    assert_eq!(values["image"]["repository"], "secret-canary/secret-canary");
    assert_eq!(values["image"]["tag"], "", "the tag defaults to appVersion");
    assert_eq!(values["image"]["digest"], "");
    let cargo: toml_lite::Manifest = toml_lite::parse(&ops::read(&ops::root().join("Cargo.toml")));
    assert_eq!(
        chart["appVersion"],
        cargo.package_version.as_str(),
        "Chart appVersion = crate version"
    );
    // Multi-stage, non-root numeric user, the binary where the chart runs it.
    assert!(
        dockerfile.matches("\nFROM ").count() >= 2,
        "not multi-stage"
    );
    assert!(
        dockerfile.contains("COPY --from=build /out/secret-canary /usr/local/bin/secret-canary")
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/secret-canary\"]"));
}

fn prober_deployment(r: &Rendered) -> Deployment {
    let d = r
        .of_kind("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == "prober")
        .expect("prober Deployment")
        .clone();
    serde_json::from_value(d).unwrap()
}

fn prober_args(d: &Deployment) -> Vec<String> {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// The value of `--name=VALUE` among `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    args.iter().find_map(|a| a.strip_prefix(prefix.as_str()))
}

/// The leader election flags parsed and checked by the prober's own code.
#[derive(clap::Parser)]
struct LeaderFlags {
    #[command(flatten)]
    leader: secret_canary::leader::LeaderElectArgs,
}

fn lease_roles(r: &Rendered) -> Vec<(&Value, Vec<Value>)> {
    r.of_kind("Role")
        .into_iter()
        .filter_map(|role| {
            let rules: Vec<Value> = role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|rule| strings(&rule["resources"]).contains(&"leases".to_string()))
                .cloned()
                .collect();
            (!rules.is_empty()).then_some((role, rules))
        })
        .collect()
}

#[test]
fn every_flag_the_chart_passes_is_one_the_prober_accepts() {
    let help = Command::new(env!("CARGO_BIN_EXE_secret-canary"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for (combo, r) in rendered_all() {
        let args = prober_args(&prober_deployment(&r));
        assert_eq!(args[0], "run", "{combo}");
        for a in &args[1..] {
            let name = a.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
                "{combo}: `secret-canary run` has no {name}:\n{help}"
            );
        }
    }
}

#[test]
fn leader_election_grants_the_lease_by_name_and_rolls_with_a_standby() {
    let r = render(&ha_values());
    let d = prober_deployment(&r);
    let spec = d.spec.clone();
    assert_eq!(spec.replicas, Some(2));
    let strategy = spec.strategy.clone().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    // The flags, parsed and validated by the prober's own code.
    let args = prober_args(&d);
    let mut argv = vec!["prober".to_string()];
    argv.extend(
        args.iter()
            .filter(|a| a.starts_with("--leader-elect"))
            .cloned(),
    );
    let parsed = <LeaderFlags as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let config = parsed
        .leader
        .config()
        .unwrap_or_else(|e| panic!("the prober rejects {argv:?}: {e}"))
        .expect("--leader-elect is on");
    assert_eq!(config.lease_name, "secret-canary");
    assert_eq!(config.lease_namespace.as_deref(), Some("secret-canary"));
    // The holder identity comes from the Pod name (downward API).
    let pod = spec.template.spec.unwrap();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "metadata.name"
    );
    // One Role with the Lease rules, in the Lease's namespace, bound to the prober.
    let roles = lease_roles(&r);
    assert_eq!(roles.len(), 1, "{roles:?}");
    let (role, rules) = &roles[0];
    assert_eq!(role["metadata"]["namespace"], "secret-canary");
    for rule in rules {
        assert_eq!(strings(&rule["apiGroups"]), ["coordination.k8s.io"]);
        if strings(&rule["resourceNames"]).is_empty() {
            assert!(is_lease_create(rule), "unnamed Lease rule: {rule}");
        } else {
            assert_eq!(
                strings(&rule["resourceNames"]),
                std::slice::from_ref(&config.lease_name)
            );
            assert_eq!(strings(&rule["verbs"]), ["get", "update"], "{rule}");
        }
    }
    let verbs: BTreeSet<String> = rules.iter().flat_map(|r| strings(&r["verbs"])).collect();
    assert_eq!(
        verbs,
        BTreeSet::from(["create", "get", "update"].map(String::from))
    );
    let binding = r
        .of_kind("RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == role["metadata"]["name"])
        .expect("a RoleBinding of the Lease Role");
    assert_eq!(binding["metadata"]["namespace"], "secret-canary");
    assert_eq!(binding["subjects"][0]["name"], "secret-canary");
    // A disruption budget over the prober Pods, and a spread across nodes.
    let pdbs = r.of_kind("PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    let pdb: PodDisruptionBudget = serde_json::from_value(pdbs[0].clone()).unwrap();
    let selector = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    assert_eq!(
        selector
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("prober")
    );
    assert!(pod.affinity.and_then(|a| a.pod_anti_affinity).is_some());

    // One replica with leader election: the Lease and RollingUpdate, no budget.
    let one = render(&json!({"leaderElection": {"enabled": true, "leaseName": "l"}}));
    assert_eq!(lease_roles(&one).len(), 1);
    assert!(one.of_kind("PodDisruptionBudget").is_empty());
    let d = prober_deployment(&one);
    assert_eq!(flag(&prober_args(&d), "leader-elect-lease-name"), Some("l"));
    assert_eq!(
        d.spec.strategy.unwrap().type_.as_deref(),
        Some("RollingUpdate")
    );
}

#[test]
fn without_leader_election_there_is_no_lease_access_and_one_recreated_prober() {
    let r = render(&json!({}));
    assert!(lease_roles(&r).is_empty());
    assert!(r.of_kind("PodDisruptionBudget").is_empty());
    let d = prober_deployment(&r);
    assert!(!prober_args(&d)
        .iter()
        .any(|a| a.starts_with("--leader-elect")));
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
    assert!(
        r.all().all(|o| o["kind"] != "Secret"),
        "no metrics token Secret by default"
    );
}

#[test]
fn two_replicas_without_leader_election_are_refused() {
    for values in [
        json!({"replicaCount": 2}),
        json!({"replicaCount": 3, "leaderElection": {"enabled": false}}),
    ] {
        let out = helm_py(&["render", CHART], Some(&values));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted {values}");
        assert!(
            err.contains("leaderElection.enabled is false"),
            "{values}: unclear refusal: {err}"
        );
    }
}

#[test]
fn metrics_auth_mounts_the_token_and_the_service_monitor_sends_it() {
    let base = render(&json!({}));
    let r = render(&json!({"metrics": {"auth": {"enabled": true}}}));
    // A generated token the prober's own reader accepts.
    let secrets = r.of_kind("Secret");
    assert_eq!(secrets.len(), 1);
    let secret: Secret = serde_json::from_value(secrets[0].clone()).unwrap();
    let secret_name = secret.metadata.name.clone().unwrap();
    assert_eq!(secret_name, "secret-canary-metrics-token");
    let token = &secret.data.as_ref().unwrap()["token"].0;
    assert!(token.len() >= 32, "a short token");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token).unwrap();
    secret_canary::http::read_token_file(&file).expect("the prober rejects the generated token");

    // The prober reads it from a read-only mount of exactly that key.
    let d = prober_deployment(&r);
    let args = prober_args(&d);
    let path = Path::new(flag(&args, "metrics-token-file").expect("--metrics-token-file"));
    let pod = d.spec.template.spec.clone().unwrap();
    let c = &pod.containers[0];
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| Path::new(&m.mount_path) == path.parent().unwrap())
        .expect("a mount holding the token file");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let sv = volume.secret.as_ref().expect("a Secret volume");
    assert_eq!(sv.secret_name.as_deref(), Some(secret_name.as_str()));
    let item = &sv.items.as_ref().unwrap()[0];
    assert_eq!(item.key, "token");
    assert_eq!(Path::new(&item.path), Path::new(path.file_name().unwrap()));
    assert_eq!(sv.default_mode.unwrap() & 0o007, 0, "world-readable token");
    assert_eq!(
        d.metadata.annotations.as_ref().unwrap()["secret.reloader.stakater.com/reload"],
        secret_name
    );

    // Prometheus sends it.
    let sm = r.of_kind("ServiceMonitor");
    let auth = &sm[0]["spec"]["endpoints"][0]["authorization"];
    assert_eq!(auth["type"], "Bearer", "{}", sm[0]);
    assert_eq!(auth["credentials"]["name"], secret_name.as_str());
    assert_eq!(auth["credentials"]["key"], "token");
    assert_eq!(
        sm[0]["metadata"]["namespace"],
        secrets[0]["metadata"]["namespace"]
    );
    assert!(base.of_kind("ServiceMonitor")[0]["spec"]["endpoints"][0]["authorization"].is_null());

    // The kubelet's probes stay open; the NetworkPolicies are what they are
    // without auth (no metricsFrom: anyone may ask the metrics port). The
    // helm test Pod asks the Service directly with the token (the API
    // server's Service proxy does not pass a bearer token on).
    for p in [&c.liveness_probe, &c.readiness_probe] {
        let path = p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
        assert!(
            matches!(path.as_deref(), Some("/healthz" | "/readyz")),
            "{path:?}"
        );
    }
    let test_pod: Pod = serde_json::from_value(r.of_kind("Pod")[0].clone()).unwrap();
    let spec = test_pod.spec.unwrap();
    let args = spec.containers[0].args.clone().unwrap();
    assert_eq!(
        flag(&args, "token-file"),
        Some("/var/run/secrets/secret-canary/metrics/token")
    );
    let vol = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some(secret_name.as_str())
    );
    assert_eq!(
        base.of_kind("NetworkPolicy"),
        r.of_kind("NetworkPolicy"),
        "the NetworkPolicies changed"
    );

    // An existing Secret: none generated, both sides use its name and key.
    let r = render(
        &json!({"metrics": {"auth": {"enabled": true, "existingSecret": "scrape-token", "key": "bearer"}}}),
    );
    assert!(r.of_kind("Secret").is_empty());
    let auth = &r.of_kind("ServiceMonitor")[0]["spec"]["endpoints"][0]["authorization"];
    assert_eq!(auth["credentials"]["name"], "scrape-token");
    assert_eq!(auth["credentials"]["key"], "bearer");
    let d = prober_deployment(&r);
    let sv = d
        .spec
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find_map(|v| v.secret)
        .unwrap();
    assert_eq!(sv.secret_name.as_deref(), Some("scrape-token"));
    assert_eq!(sv.items.unwrap()[0].key, "bearer");
}

#[test]
fn externalsecret_patch_is_granted_exactly_for_the_force_synced_probes() {
    for (combo, r) in rendered_all() {
        let (_, config) = prober_config(&r);
        let force_synced: BTreeSet<String> = config
            .probes
            .iter()
            .filter(|p| p.name != "extra" && p.chain.force_sync)
            .filter_map(|p| p.chain.external_secret.clone())
            .collect();
        let patchable: BTreeSet<String> = rbac_rules(&r)
            .into_iter()
            .filter(|(_, rule)| {
                strings(&rule["resources"]).contains(&"externalsecrets".to_string())
                    && strings(&rule["verbs"])
                        .iter()
                        .any(|v| v != "get" && v != "list" && v != "watch")
            })
            .flat_map(|(_, rule)| strings(&rule["resourceNames"]))
            .collect();
        assert_eq!(patchable, force_synced, "{combo}");
    }
    // Off by default.
    let r = render(&json!({}));
    let (_, config) = prober_config(&r);
    assert!(config.probes.iter().all(|p| !p.chain.force_sync));
}

fn image_of(d: &Deployment) -> String {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

#[test]
fn the_image_reference_is_fully_qualified_and_a_digest_wins() {
    let image = |v: Value| image_of(&prober_deployment(&render(&v)));
    assert_eq!(
        image(json!({})),
        "ghcr.io/secret-canary/secret-canary:0.1.0"
    );
    assert_eq!(
        image(json!({"image": {"registry": "registry.example:5000", "tag": "dev"}})),
        "registry.example:5000/secret-canary/secret-canary:dev"
    );
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    assert_eq!(
        image(json!({"image": {"tag": "ignored", "digest": digest}})),
        format!("ghcr.io/secret-canary/secret-canary@{digest}")
    );
    // kind: an image loaded into the nodes, no registry.
    assert_eq!(
        image(json!({"image": {"registry": "", "repository": "secret-canary"}})),
        "secret-canary:0.1.0"
    );
    // Every container of the chart runs the same image.
    let r = render(&json!({"image": {"digest": digest}}));
    for d in r.of_kind("Deployment") {
        let d: Deployment = serde_json::from_value(d.clone()).unwrap();
        assert!(image_of(&d).ends_with(digest));
    }
}

#[test]
fn monitoring_objects_render_only_where_their_api_is_served() {
    let kinds = |r: &Rendered| -> BTreeSet<String> {
        ["ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"]
            .into_iter()
            .filter(|k| !r.of_kind(k).is_empty())
            .map(String::from)
            .collect()
    };
    let set = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    let amc = json!({"alertmanagerConfig": {"enabled": true}});
    // With the Operator's APIs (v1alpha1 for AlertmanagerConfig, opt-in).
    assert_eq!(
        kinds(&render_on(
            &amc,
            &["--add-api", "monitoring.coreos.com/v1alpha1"]
        )),
        set(&["ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"])
    );
    assert_eq!(
        kinds(&render(&amc)),
        set(&["ServiceMonitor", "PrometheusRule"])
    );
    // A cluster without the Prometheus Operator: the install succeeds without them.
    let bare = render_on(&amc, &["--drop-api", "monitoring.coreos.com/v1"]);
    assert!(kinds(&bare).is_empty(), "{:?}", kinds(&bare));
    // skipIfMissing: false renders them regardless (helm template for GitOps);
    // the stand-in then refuses the unknown kind, as a cluster would.
    let out = helm_py(
        &["render", CHART, "--drop-api", "monitoring.coreos.com/v1"],
        Some(&json!({"serviceMonitor": {"skipIfMissing": false}})),
    );
    assert!(
        !out.status.success(),
        "an unknown kind must fail the install"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ServiceMonitor"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Relabelings, metric relabelings and the namespaces.
    let r = render(&json!({
        "serviceMonitor": {
            "namespace": "monitoring",
            "relabelings": [{"targetLabel": "cluster", "replacement": "prod-eu"}],
            "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "secret_canary_schedule_.*", "action": "drop"}]
        },
        "prometheusRule": {"namespace": "monitoring"}
    }));
    let sm = r.of_kind("ServiceMonitor")[0];
    assert_eq!(sm["metadata"]["namespace"], "monitoring");
    assert_eq!(
        sm["spec"]["namespaceSelector"]["matchNames"][0],
        "secret-canary"
    );
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(ep["relabelings"][0]["targetLabel"], "cluster");
    assert_eq!(ep["metricRelabelings"][0]["action"], "drop");
    assert_eq!(
        r.of_kind("PrometheusRule")[0]["metadata"]["namespace"],
        "monitoring"
    );
    // The bearer token Secret must be in the ServiceMonitor's namespace: refused.
    let out = helm_py(
        &["render", CHART],
        Some(
            &json!({"serviceMonitor": {"namespace": "monitoring"}, "metrics": {"auth": {"enabled": true}}}),
        ),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("serviceMonitor.namespace"));
}

#[test]
fn the_eso_api_version_is_detected_or_chosen() {
    let versions = |r: &Rendered| -> BTreeSet<String> {
        r.all()
            .filter(|o| {
                o["apiVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("external-secrets.io/")
            })
            .map(|o| o["apiVersion"].as_str().unwrap().to_string())
            .collect()
    };
    let one = |v: &str| BTreeSet::from([v.to_string()]);
    assert_eq!(versions(&render(&json!({}))), one("external-secrets.io/v1"));
    // Both served: v1.
    assert_eq!(
        versions(&render_on(
            &json!({}),
            &["--add-api", "external-secrets.io/v1beta1"]
        )),
        one("external-secrets.io/v1")
    );
    // An older ESO serving only v1beta1.
    let old = render_on(
        &json!({}),
        &[
            "--drop-api",
            "external-secrets.io/v1",
            "--add-api",
            "external-secrets.io/v1beta1",
        ],
    );
    assert_eq!(versions(&old), one("external-secrets.io/v1beta1"));
    assert!(!old.of_kind("ExternalSecret").is_empty());
    // Chosen.
    let chosen = render_on(
        &json!({"externalSecrets": {"apiVersion": "external-secrets.io/v1beta1"}}),
        &["--add-api", "external-secrets.io/v1beta1"],
    );
    assert_eq!(versions(&chosen), one("external-secrets.io/v1beta1"));
}

#[test]
fn any_path_prefix_renders_a_config_the_prober_accepts() {
    // (values.schema.json refuses a leading or trailing `/`.)
    for prefix in ["canary", "teams/payments/canary", "x"] {
        let r = render(&json!({
            "store": {"pathPrefix": prefix},
            "variants": {"esoVolume": {"enabled": true}, "bankVaults": {"enabled": true}}
        }));
        let (_, config) = prober_config(&r);
        let bare = prefix.trim_end_matches('/');
        for p in &config.probes {
            assert_eq!(p.store.path, format!("{bare}/{}", p.name), "{prefix}");
            assert!(p.store.path_in_prefix(), "{prefix}: {}", p.store.path);
        }
        // ESO and vault-env read exactly where the prober writes.
        for es in r.of_kind("ExternalSecret") {
            let key = es["spec"]["data"][0]["remoteRef"]["key"].as_str().unwrap();
            assert!(key.starts_with(&format!("{bare}/")), "{prefix}: {key}");
            assert!(!key.contains("//"), "{key}");
        }
        let bv = deployment(&r, "bank-vaults");
        let c = &bv.spec.template.spec.unwrap().containers[0];
        assert_eq!(
            c.env.as_ref().unwrap()[0].value.as_deref(),
            Some(format!("vault:secret/data/{bare}/bank-vaults#value").as_str())
        );
    }
}

#[test]
fn externalsecrets_read_a_cluster_secret_store_or_an_existing_store() {
    // The chart's example as a ClusterSecretStore: cluster-scoped, limited to
    // the canary namespace, its ServiceAccount named with its namespace.
    let r = render(
        &json!({"secretStore": {"kind": "ClusterSecretStore"}, "canary": {"namespace": "canaries"}}),
    );
    assert!(r.of_kind("SecretStore").is_empty());
    let css = r.of_kind("ClusterSecretStore");
    assert_eq!(css.len(), 1);
    assert!(css[0]["metadata"]["namespace"].is_null(), "cluster-scoped");
    assert_eq!(
        css[0]["spec"]["provider"]["vault"]["auth"]["kubernetes"]["serviceAccountRef"]["namespace"],
        "canaries"
    );
    assert_eq!(css[0]["spec"]["conditions"][0]["namespaces"][0], "canaries");
    for es in r.of_kind("ExternalSecret") {
        assert_eq!(es["spec"]["secretStoreRef"]["kind"], "ClusterSecretStore");
        assert_eq!(
            es["spec"]["secretStoreRef"]["name"],
            css[0]["metadata"]["name"]
        );
    }
    // An existing store of either kind: none created, referenced by name.
    for kind in ["SecretStore", "ClusterSecretStore"] {
        let r = render(
            &json!({"secretStore": {"create": false, "kind": kind, "name": "vault-platform"}}),
        );
        assert!(r.of_kind("SecretStore").is_empty() && r.of_kind("ClusterSecretStore").is_empty());
        let es = r.of_kind("ExternalSecret");
        assert!(!es.is_empty());
        for es in es {
            assert_eq!(es["spec"]["secretStoreRef"]["kind"], kind);
            assert_eq!(es["spec"]["secretStoreRef"]["name"], "vault-platform");
        }
    }
    let out = helm_py(
        &["render", CHART],
        Some(&json!({"secretStore": {"create": false}})),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secretStore.name is required"));
}

fn pod_specs(r: &Rendered) -> Vec<(String, PodSpec)> {
    let mut out: Vec<(String, PodSpec)> = r
        .of_kind("Deployment")
        .into_iter()
        .map(|d| {
            let d: Deployment = serde_json::from_value(d.clone()).unwrap();
            (d.metadata.name.unwrap(), d.spec.template.spec.unwrap())
        })
        .collect();
    for p in r.of_kind("Pod") {
        let p: Pod = serde_json::from_value(p.clone()).unwrap();
        out.push((p.metadata.name.unwrap(), p.spec.unwrap()));
    }
    out
}

#[test]
fn security_contexts_are_values_and_adapt_to_assigned_uids() {
    let every =
        json!({"variants": {"esoVolume": {"enabled": true}, "bankVaults": {"enabled": true}}});
    // Defaults: fixed non-root IDs.
    for (name, spec) in pod_specs(&render(&every)) {
        let sc = spec.security_context.unwrap();
        assert_eq!(
            (sc.run_as_user, sc.run_as_group, sc.fs_group),
            (Some(65532), Some(65532), Some(65532)),
            "{name}"
        );
    }
    // OpenShift (security.openshift.io/v1 served) with `auto`, or `force`:
    // no fixed IDs anywhere, the rest of the restricted profile kept.
    for (values, apis) in [
        (every.clone(), vec!["--add-api", "security.openshift.io/v1"]),
        (
            {
                let mut v = every.clone();
                merge(&mut v, &json!({"adaptSecurityContext": "force"}));
                v
            },
            vec![],
        ),
    ] {
        let r = render_on(&values, &apis);
        for (name, spec) in pod_specs(&r) {
            let sc = spec.security_context.clone().unwrap();
            assert_eq!(
                (sc.run_as_user, sc.run_as_group, sc.fs_group),
                (None, None, None),
                "{name}"
            );
            assert_eq!(sc.run_as_non_root, Some(true), "{name}");
            check_restricted(&name, &spec);
        }
    }
    // `disabled` keeps them even on OpenShift.
    let r = render_on(
        &json!({"adaptSecurityContext": "disabled"}),
        &["--add-api", "security.openshift.io/v1"],
    );
    assert_eq!(
        prober_deployment(&r)
            .spec
            .template
            .spec
            .unwrap()
            .security_context
            .unwrap()
            .run_as_user,
        Some(65532)
    );
    // Overridden.
    let r = render(
        &json!({"podSecurityContext": {"runAsUser": 1001, "fsGroup": 2000}, "containerSecurityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": true}}),
    );
    let spec = prober_deployment(&r).spec.template.spec.unwrap();
    let sc = spec.security_context.clone().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.fs_group, sc.run_as_group),
        (Some(1001), Some(2000), Some(65532))
    );
    check_restricted("overridden", &spec);
}

#[test]
fn termination_grace_follows_prober_grace() {
    let grace = |v: Value| {
        prober_deployment(&render(&v))
            .spec
            .template
            .spec
            .unwrap()
            .termination_grace_period_seconds
            .unwrap()
    };
    assert_eq!(grace(json!({})), 20, "10s + 10 s margin");
    assert_eq!(grace(json!({"prober": {"grace": "1m30s"}})), 100);
    assert_eq!(
        grace(json!({"prober": {"grace": "2500ms", "terminationGraceMargin": 5}})),
        8
    );
    assert_eq!(grace(json!({"prober": {"grace": "1h"}})), 3610);
    // The prober parses the same value (its --grace flag).
    let d = prober_deployment(&render(&json!({"prober": {"grace": "1m30s"}})));
    assert_eq!(flag(&prober_args(&d), "grace"), Some("1m30s"));
}

#[test]
fn common_labels_topology_spread_and_revision_history() {
    let r = render(&json!({
        "commonLabels": {"team": "platform", "cost-center": "42"},
        "prober": {"revisionHistoryLimit": 5, "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"x": "y"}}}
        ]},
        "variants": {"bankVaults": {"enabled": true}},
        "metrics": {"auth": {"enabled": true}},
        "leaderElection": {"enabled": true}
    }));
    for o in r.all() {
        let labels = &o["metadata"]["labels"];
        assert_eq!(
            labels["team"], "platform",
            "{} {}",
            o["kind"], o["metadata"]["name"]
        );
        assert_eq!(labels["cost-center"], "42");
    }
    for d in r.of_kind("Deployment") {
        assert_eq!(
            d["spec"]["revisionHistoryLimit"], 5,
            "{}",
            d["metadata"]["name"]
        );
    }
    let spec = prober_deployment(&r).spec.template.spec.unwrap();
    let tsc = spec.topology_spread_constraints.unwrap();
    assert_eq!(tsc.len(), 2);
    let selector = tsc[0].label_selector.clone().unwrap().match_labels.unwrap();
    assert_eq!(
        selector
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("prober")
    );
    assert_eq!(
        tsc[1]
            .label_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap()
            .get("x")
            .map(String::as_str),
        Some("y")
    );
    // Defaults: 3 old ReplicaSets, no spread constraints.
    let d = prober_deployment(&render(&json!({})));
    assert_eq!(d.spec.revision_history_limit, Some(3));
    assert!(d
        .spec
        .template
        .spec
        .unwrap()
        .topology_spread_constraints
        .is_none());
}

#[test]
fn chart_yaml_names_home_and_sources() {
    let chart: Value = serde_norway::from_str(&ops::read(&chart_dir().join("Chart.yaml"))).unwrap();
    assert!(
        chart["home"]
            .as_str()
            .is_some_and(|h| h.starts_with("https://")),
        "{chart}"
    );
    assert!(
        chart["sources"][0]
            .as_str()
            .is_some_and(|h| h.starts_with("https://")),
        "{chart}"
    );
}

#[test]
fn the_chart_readme_is_generated_from_values_and_current() {
    let out = ops::run(
        Command::new(ops::venv_python())
            .arg(ops::root().join("scripts/chart-readme.py"))
            .arg("--check"),
    );
    assert!(
        out.status.success(),
        "charts/secret-canary/README.md is stale: run scripts/chart-readme.py\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every leaf key of values.yaml has a row.
    let readme = ops::read(&chart_dir().join("README.md"));
    let values: Value =
        serde_norway::from_str(&ops::read(&chart_dir().join("values.yaml"))).unwrap();
    fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(v, p, out);
                }
            }
            _ => out.push(at),
        }
    }
    let mut keys = Vec::new();
    leaves(&values, String::new(), &mut keys);
    // Every key has a row, or a parent written as one flow value does
    // (`resources: {requests: {cpu: 10m}}` is one row).
    for k in keys {
        let mut at = k.as_str();
        loop {
            if readme.contains(&format!("| `{at}` |")) {
                break;
            }
            match at.rsplit_once('.') {
                Some((parent, _)) => at = parent,
                None => panic!("README has no row for {k}"),
            }
        }
    }
    for alert in ops::alerts().into_iter().filter_map(|r| r.alert) {
        assert!(
            readme.contains(&format!("| {alert} |")),
            "README lacks {alert}"
        );
    }
}

#[test]
fn alert_values_change_the_rules_and_defaults_keep_the_source() {
    let rules = |r: &Rendered| -> BTreeMap<String, Value> {
        r.of_kind("PrometheusRule")[0]["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .filter_map(|rule| Some((rule["alert"].as_str()?.to_string(), rule)))
            .collect()
    };
    let defaults = rules(&render(&json!({})));
    let r = render(&json!({"prometheusRule": {
        "objective": 0.999,
        "teams": {"secret-pipeline": "payments-platform"},
        "additionalLabels": {"routing": "secrets"},
        "alerts": {
            "SecretCanaryErrorBudgetBurnSlow": {"for": "30m", "severity": "info", "labels": {"ticket": "yes"}},
            "SecretCanaryProbeFailing": {"keepFiringFor": "45m"},
            "SecretCanaryEsoSyncSlow": {"disabled": true}
        }
    }}));
    let changed = rules(&r);
    assert!(!changed.contains_key("SecretCanaryEsoSyncSlow"));
    assert_eq!(changed.len(), defaults.len() - 1);
    let slow = &changed["SecretCanaryErrorBudgetBurnSlow"];
    assert_eq!(slow["for"], "30m");
    assert_eq!(slow["labels"]["severity"], "info");
    assert_eq!(slow["labels"]["ticket"], "yes");
    assert_eq!(
        changed["SecretCanaryProbeFailing"]["keep_firing_for"],
        "45m"
    );
    for (name, rule) in &changed {
        assert_eq!(rule["labels"]["routing"], "secrets", "{name}");
        let team = rule["labels"]["team"].as_str().unwrap();
        assert!(
            team == "payments-platform" || team == "secret-canary",
            "{name}: {team}"
        );
    }
    // The objective: 0.1 % error budget in every burn-rate threshold.
    let fast = changed["SecretCanaryErrorBudgetBurnFast"]["expr"]
        .as_str()
        .unwrap();
    assert!(
        fast.contains("> (14.4 * 0.001)") && !fast.contains("0.01)"),
        "{fast}"
    );
    assert!(
        changed["SecretCanaryErrorBudgetBurnFast"]["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("error budget (0.1 %)")
    );
    // The dashboard's objective constant follows.
    let cm = r
        .of_kind("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "secret-canary-dashboards")
        .unwrap();
    assert!(cm["data"]["secret-canary.json"]
        .as_str()
        .unwrap()
        .contains("\"query\": \"0.999\""));
    // Rendered rules still pass promtool.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rendered.rules.yml");
    let groups = &r.of_kind("PrometheusRule")[0]["spec"];
    std::fs::write(&f, serde_norway::to_string(groups).unwrap()).unwrap();
    ops::run_ok(
        Command::new(ops::promtool())
            .args(["check", "rules"])
            .arg(&f),
    );
    // A nonsense objective is refused.
    let out = helm_py(
        &["render", CHART],
        Some(&json!({"prometheusRule": {"objective": 99}})),
    );
    assert!(!out.status.success());
}

/// The one value of Cargo.toml this test needs, without a TOML dependency.
mod toml_lite {
    pub struct Manifest {
        pub package_version: String,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut in_package = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_package = line == "[package]";
            } else if in_package {
                if let Some(v) = line.strip_prefix("version") {
                    let v = v
                        .trim_start()
                        .trim_start_matches('=')
                        .trim()
                        .trim_matches('"');
                    return Manifest {
                        package_version: v.to_string(),
                    };
                }
            }
        }
        panic!("no [package] version in Cargo.toml");
    }
}
