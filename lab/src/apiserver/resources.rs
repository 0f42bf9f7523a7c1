//! The resource types the lab serves and the discovery documents built from
//! them. Everything kind-specific that the generic store needs to know (scope,
//! status subresource, generation tracking) is a field here.

use serde_json::{json, Value};

/// One served resource type.
#[derive(Debug)]
pub struct ResourceDef {
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// `kind` of one object.
    pub kind: &'static str,
    /// URL segment.
    pub plural: &'static str,
    /// Singular name (discovery).
    pub singular: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// kubectl categories (`all`).
    pub categories: &'static [&'static str],
    /// Has a `/status` subresource: main writes keep status, status writes
    /// keep everything else.
    pub status: bool,
    /// `metadata.generation` starts at 1 and is bumped on `spec` changes.
    pub generation: bool,
    /// Not stored: only `create` (TokenReview).
    pub virtual_create: bool,
    /// Served like a CustomResourceDefinition: no strategic merge patch.
    pub custom: bool,
}

impl ResourceDef {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `secrets` or `deployments.apps`, as in the real error messages.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `SecretList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced: true,
        short_names: &[],
        categories: &[],
        status: false,
        generation: false,
        virtual_create: false,
        custom: false,
    }
}

/// Every served resource type; a resource's index here is its id in the store.
pub static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        namespaced: false,
        short_names: &["ns"],
        status: true,
        ..res("", "v1", "Namespace", "namespaces", "namespace")
    },
    res("", "v1", "Secret", "secrets", "secret"),
    ResourceDef {
        short_names: &["cm"],
        ..res("", "v1", "ConfigMap", "configmaps", "configmap")
    },
    ResourceDef {
        short_names: &["po"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res("", "v1", "Pod", "pods", "pod")
    },
    ResourceDef {
        short_names: &["ev"],
        ..res("", "v1", "Event", "events", "event")
    },
    ResourceDef {
        short_names: &["sa"],
        ..res(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            "serviceaccount",
        )
    },
    ResourceDef {
        short_names: &["deploy"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res("apps", "v1", "Deployment", "deployments", "deployment")
    },
    ResourceDef {
        short_names: &["rs"],
        categories: &["all"],
        status: true,
        generation: true,
        ..res("apps", "v1", "ReplicaSet", "replicasets", "replicaset")
    },
    res("coordination.k8s.io", "v1", "Lease", "leases", "lease"),
    ResourceDef {
        short_names: &["ev"],
        ..res("events.k8s.io", "v1", "Event", "events", "event")
    },
    ResourceDef {
        short_names: &["ss"],
        categories: &["external-secrets"],
        status: true,
        generation: true,
        custom: true,
        ..res(
            "external-secrets.io",
            "v1",
            "SecretStore",
            "secretstores",
            "secretstore",
        )
    },
    ResourceDef {
        namespaced: false,
        short_names: &["css"],
        categories: &["external-secrets"],
        status: true,
        generation: true,
        custom: true,
        ..res(
            "external-secrets.io",
            "v1",
            "ClusterSecretStore",
            "clustersecretstores",
            "clustersecretstore",
        )
    },
    ResourceDef {
        short_names: &["es"],
        categories: &["external-secrets"],
        status: true,
        generation: true,
        custom: true,
        ..res(
            "external-secrets.io",
            "v1",
            "ExternalSecret",
            "externalsecrets",
            "externalsecret",
        )
    },
    ResourceDef {
        namespaced: false,
        virtual_create: true,
        ..res(
            "authentication.k8s.io",
            "v1",
            "TokenReview",
            "tokenreviews",
            "tokenreview",
        )
    },
];

/// Index of Namespaces in [`RESOURCES`].
pub const NAMESPACES: usize = 0;
/// Index of Secrets.
#[cfg(test)]
pub const SECRETS: usize = 1;
/// Index of ServiceAccounts.
pub const SERVICE_ACCOUNTS: usize = 5;

/// Look a resource up by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The definition behind an index.
pub fn def(id: usize) -> &'static ResourceDef {
    &RESOURCES[id.min(RESOURCES.len() - 1)]
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-lab",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `GET /api`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    })
}

fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

/// `GET /apis`.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_doc).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group_doc(group: &str) -> Value {
    let version = RESOURCES
        .iter()
        .find(|r| r.group == group)
        .map(|r| r.version)
        .unwrap_or("v1");
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis/GROUP`, if served.
pub fn group(group: &str) -> Option<Value> {
    if !groups().contains(&group) {
        return None;
    }
    let mut doc = group_doc(group);
    if let Some(m) = doc.as_object_mut() {
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
    }
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/GROUP/VERSION`, if served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in defs {
        let verbs: &[&str] = if r.virtual_create { &["create"] } else { VERBS };
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        });
        if let Some(m) = entry.as_object_mut() {
            if !r.short_names.is_empty() {
                m.insert("shortNames".into(), json!(r.short_names));
            }
            if !r.categories.is_empty() {
                m.insert("categories".into(), json!(r.categories));
            }
        }
        resources.push(entry);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.plural == "serviceaccounts" {
            resources.push(json!({
                "name": "serviceaccounts/token",
                "singularName": "",
                "namespaced": true,
                "group": "authentication.k8s.io",
                "version": "v1",
                "kind": "TokenRequest",
                "verbs": ["create"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_the_constants() {
        assert_eq!(def(NAMESPACES).plural, "namespaces");
        assert_eq!(def(SECRETS).plural, "secrets");
        assert_eq!(def(SERVICE_ACCOUNTS).plural, "serviceaccounts");
        assert_eq!(
            find("apps", "v1", "deployments").map(|i| def(i).kind),
            Some("Deployment")
        );
    }

    #[test]
    fn discovery_lists_status_subresources() {
        let l = resource_list("apps", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"deployments/status"), "{names:?}");
        assert!(group_list()["groups"].as_array().unwrap().len() >= 4);
    }
}
