//! A container's environment: `env`, `envFrom`, the downward API and
//! `$(VAR)` expansion, resolved as the kubelet does.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;

use super::pod::PodRun;
use super::secrets::secret_data;
use crate::controllers::bankvaults::EnvValue;

/// `$(VAR)` expansion as Kubernetes does it: `$$` is a literal `$`, a
/// reference to an unknown variable (or an unterminated one) stays as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

pub(super) fn set_env(env: &mut Vec<EnvValue>, v: EnvValue) {
    match env.iter_mut().find(|e| e.name == v.name) {
        Some(e) => *e = v,
        None => env.push(v),
    }
}

/// The value of a `fieldRef`, as the downward API gives it.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: Ipv4Addr) -> Option<String> {
    let bracket = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    match path {
        "metadata.name" => Some(pod.name_any()),
        "metadata.namespace" => Some(pod.namespace().unwrap_or_else(|| "default".into())),
        "metadata.uid" => Some(pod.uid().unwrap_or_default()),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        "spec.nodeName" => Some(NODE_NAME.into()),
        "spec.serviceAccountName" => Some(service_account(pod)),
        _ => {
            if let Some(k) = bracket("metadata.labels") {
                return Some(pod.labels().get(&k).cloned().unwrap_or_default());
            }
            if let Some(k) = bracket("metadata.annotations") {
                return Some(pod.annotations().get(&k).cloned().unwrap_or_default());
            }
            None
        }
    }
}

/// The node's name in status and the downward API.
pub const NODE_NAME: &str = "lab-node";

pub(super) fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

pub(super) async fn build_env(run: &PodRun, c: &Container) -> Result<Vec<EnvValue>, String> {
    let mut env: Vec<EnvValue> = Vec::new();
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        if let Some(sr) = &src.secret_ref {
            let name = sr.name.clone();
            match run.kl.get_secret(&run.ns, &name).await? {
                Some(s) => {
                    for (k, v) in secret_data(&s) {
                        let var = format!("{prefix}{k}");
                        if valid_env_name(&var) {
                            set_env(
                                &mut env,
                                EnvValue {
                                    name: var,
                                    value: String::from_utf8_lossy(&v).into_owned(),
                                    secret: true,
                                },
                            );
                        }
                    }
                }
                None if sr.optional == Some(true) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        }
        if let Some(cr) = &src.config_map_ref {
            let name = cr.name.clone();
            match run.kl.get_config_map(&run.ns, &name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        let var = format!("{prefix}{k}");
                        if valid_env_name(&var) {
                            set_env(
                                &mut env,
                                EnvValue {
                                    name: var,
                                    value: v,
                                    secret: false,
                                },
                            );
                        }
                    }
                }
                None if cr.optional == Some(true) => {}
                None => return Err(format!("configmap \"{name}\" not found")),
            }
        }
    }
    for var in c.env.iter().flatten() {
        if let Some(vf) = &var.value_from {
            if let Some(sk) = &vf.secret_key_ref {
                let optional = sk.optional == Some(true);
                let name = sk.name.clone();
                let value = match run.kl.get_secret(&run.ns, &name).await? {
                    Some(s) => match secret_data(&s).get(&sk.key) {
                        Some(v) => Some(String::from_utf8_lossy(v).into_owned()),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                sk.key, run.ns, name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("secret \"{name}\" not found")),
                };
                if let Some(value) = value {
                    set_env(
                        &mut env,
                        EnvValue {
                            name: var.name.clone(),
                            value,
                            secret: true,
                        },
                    );
                }
            } else if let Some(ck) = &vf.config_map_key_ref {
                let optional = ck.optional == Some(true);
                let name = ck.name.clone();
                let value = match run.kl.get_config_map(&run.ns, &name).await? {
                    Some(cm) => match cm.data.unwrap_or_default().remove(&ck.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                ck.key, run.ns, name
                            ))
                        }
                    },
                    None if optional => None,
                    None => return Err(format!("configmap \"{name}\" not found")),
                };
                if let Some(value) = value {
                    set_env(
                        &mut env,
                        EnvValue {
                            name: var.name.clone(),
                            value,
                            secret: false,
                        },
                    );
                }
            } else if let Some(fr) = &vf.field_ref {
                let value = field_ref(&run.pod, &fr.field_path, run.ip)
                    .ok_or_else(|| format!("unsupported fieldRef {:?}", fr.field_path))?;
                set_env(
                    &mut env,
                    EnvValue {
                        name: var.name.clone(),
                        value,
                        secret: false,
                    },
                );
            } else {
                // resourceFieldRef: the lab sets no limits, so there is nothing to report.
                set_env(
                    &mut env,
                    EnvValue {
                        name: var.name.clone(),
                        value: String::new(),
                        secret: false,
                    },
                );
            }
        } else {
            let raw = var.value.clone().unwrap_or_default();
            let value = expand(&raw, |n| {
                env.iter().find(|e| e.name == n).map(|e| e.value.clone())
            });
            set_env(
                &mut env,
                EnvValue {
                    name: var.name.clone(),
                    value,
                    secret: false,
                },
            );
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "POD_IP" => Some("127.9.9.2".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y", vars), "x1y");
        assert_eq!(expand("$(POD_IP):8080", vars), "127.9.9.2:8080");
        assert_eq!(expand("$(NOPE)", vars), "$(NOPE)");
        assert_eq!(expand("$$(A)", vars), "$(A)");
        assert_eq!(expand("a$$b", vars), "a$b");
        assert_eq!(expand("$(A", vars), "$(A");
        assert_eq!(expand("cost $5", vars), "cost $5");
        assert_eq!(expand("end$", vars), "end$");
    }

    #[test]
    fn field_refs() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some(BTreeMap::from([("app".to_string(), "canary".to_string())]));
        let ip = Ipv4Addr::new(127, 5, 6, 7);
        assert_eq!(field_ref(&pod, "status.podIP", ip).unwrap(), "127.5.6.7");
        assert_eq!(field_ref(&pod, "metadata.name", ip).unwrap(), "p");
        assert_eq!(field_ref(&pod, "metadata.namespace", ip).unwrap(), "ns");
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']", ip).unwrap(),
            "canary"
        );
        assert_eq!(
            field_ref(&pod, "spec.serviceAccountName", ip).unwrap(),
            "default"
        );
        assert!(field_ref(&pod, "status.nope", ip).is_none());
    }
}
