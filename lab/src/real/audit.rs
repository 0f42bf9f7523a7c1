//! The real API server's audit policy. First matching rule wins:
//!
//! 1. Anything that carries secret material (Secrets, ServiceAccount token
//!    requests, TokenReviews, CSRs): `Metadata` only, so who did what to
//!    which object and when, never a request or response body.
//! 2. The writes the stages are timed by: ExternalSecret (and its status),
//!    Deployment template and status, ReplicaSets, Pod creation, binding,
//!    status and deletion: `RequestResponse`.
//! 3. The prober's own identity ([`PROBER_USER`], the reference scenario's
//!    ServiceAccount `canary/secret-canary`): every request at `Metadata`,
//!    so its API load can be counted by verb (`bench/`, the real tier). It
//!    comes after rule 2, so its Deployment patches keep their bodies.
//! 4. Everything else: `None`.
//!
//! `RequestReceived` is omitted: the `ResponseComplete` stage's
//! `stageTimestamp` is the completion time the truth is made of.

/// The user the prober runs as when it uses the reference scenario's
/// ServiceAccount: all its requests are audited (metadata only).
pub const PROBER_USER: &str = "system:serviceaccount:canary:secret-canary";

/// The policy file's text (`--audit-policy-file`).
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
omitManagedFields: true
rules:
  # Secret material: metadata only, never a body.
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "serviceaccounts/token"]
      - group: "authentication.k8s.io"
        resources: ["tokenreviews"]
      - group: "certificates.k8s.io"
        resources: ["certificatesigningrequests", "certificatesigningrequests/status", "certificatesigningrequests/approval"]
  # The writes the probe's stages are timed by.
  - level: RequestResponse
    verbs: ["create", "update", "patch", "delete"]
    resources:
      - group: "external-secrets.io"
        resources: ["externalsecrets", "externalsecrets/status"]
      - group: "apps"
        resources: ["deployments", "deployments/status", "replicasets", "replicasets/status"]
      - group: ""
        resources: ["pods", "pods/status", "pods/binding"]
  # The prober's own requests (metadata only), to count its API load.
  - level: Metadata
    users: ["system:serviceaccount:canary:secret-canary"]
  - level: None
"#;

#[cfg(test)]
mod tests {
    #[test]
    fn the_prober_user_is_audited() {
        assert!(super::POLICY.contains(&format!("users: [\"{}\"]", super::PROBER_USER)));
    }
}
