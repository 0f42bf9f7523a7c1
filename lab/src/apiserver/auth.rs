//! Bearer tokens: real JWTs (HMAC-SHA256 with a per-server random key,
//! labelled RS256) carrying the usual ServiceAccount claims, so OpenBao's
//! Kubernetes auth method can parse them before it asks the lab's TokenReview
//! whether they are genuine.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The issuer in every token, as a kubeadm cluster's.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `system:serviceaccount:NS:NAME` or the admin's name.
    pub username: String,
    /// The ServiceAccount's uid (or the admin's).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// The lab administrator (may use `/lab/`).
    pub admin: bool,
    /// `aud` claim.
    pub audiences: Vec<String>,
    /// Bound Pod, if the token is bound to one.
    pub pod: Option<(String, String)>,
}

/// Signs and verifies tokens.
pub struct Tokens {
    key: [u8; 32],
    admin: String,
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Tokens {
    /// A fresh key and admin token.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut t = Tokens {
            key,
            admin: String::new(),
        };
        let iat = now();
        t.admin = t.sign(&json!({
            "iss": ISSUER,
            "sub": "lab:admin",
            "aud": [ISSUER],
            "iat": iat,
            "nbf": iat,
            "exp": iat + 10 * 365 * 24 * 3600,
            "lab.admin": true,
        }));
        t
    }

    /// The administrator's bearer token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    fn sign(&self, claims: &Value) -> String {
        // The header says RS256 although the lab signs with HMAC-SHA256:
        // OpenBao's Kubernetes auth refuses HS256 tokens before it ever
        // asks TokenReview ("permission denied"), and nothing but this
        // server checks the signature (verify() ignores the header).
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT","kid":"lab"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(hmac_sha256(&self.key, signing_input.as_bytes()));
        format!("{signing_input}.{sig}")
    }

    /// A ServiceAccount token with the claims a real cluster puts in one.
    pub fn service_account(
        &self,
        namespace: &str,
        name: &str,
        sa_uid: &str,
        audiences: &[String],
        ttl_seconds: i64,
        pod: Option<(&str, &str)>,
    ) -> (String, i64) {
        let iat = now();
        let exp = iat + ttl_seconds.max(1);
        let aud: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let mut k8s = json!({
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": sa_uid},
        });
        if let (Some((pod_name, pod_uid)), Some(m)) = (pod, k8s.as_object_mut()) {
            m.insert("pod".into(), json!({"name": pod_name, "uid": pod_uid}));
        }
        let claims = json!({
            "iss": ISSUER,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": aud,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "kubernetes.io": k8s,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
        });
        (self.sign(&claims), exp)
    }

    /// Who the token is, if this server signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Option<Identity> {
        let mut parts = token.trim().split('.');
        let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let want = hmac_sha256(&self.key, format!("{h}.{p}").as_bytes());
        if sig.len() != want.len()
            || sig
                .iter()
                .zip(want.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok()?;
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_some_and(|exp| exp < now())
        {
            return None;
        }
        let audiences = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        if claims.get("lab.admin").and_then(Value::as_bool) == Some(true) {
            return Some(Identity {
                username: "lab:admin".into(),
                uid: "lab-admin".into(),
                groups: vec!["system:masters".into(), "system:authenticated".into()],
                admin: true,
                audiences,
                pod: None,
            });
        }
        let k8s = claims.get("kubernetes.io")?;
        let ns = k8s.get("namespace")?.as_str()?;
        let name = k8s.pointer("/serviceaccount/name")?.as_str()?;
        let uid = k8s
            .pointer("/serviceaccount/uid")
            .and_then(Value::as_str)
            .unwrap_or("");
        let pod = k8s.get("pod").and_then(|p| {
            Some((
                p.get("name")?.as_str()?.to_string(),
                p.get("uid")?.as_str()?.to_string(),
            ))
        });
        Some(Identity {
            username: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            admin: false,
            audiences,
            pod,
        })
    }
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

/// The TokenReview answer for `spec` (`{token, audiences}`).
pub fn review(tokens: &Tokens, spec: &Value) -> Value {
    let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
    let wanted: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let status = match tokens.verify(token) {
        Some(id) => {
            let audiences: Vec<String> = if wanted.is_empty() {
                id.audiences.clone()
            } else {
                wanted
                    .iter()
                    .filter(|w| id.audiences.contains(w))
                    .cloned()
                    .collect()
            };
            if !wanted.is_empty() && audiences.is_empty() {
                json!({"authenticated": false, "user": {}, "error": "token audiences do not match the requested audiences"})
            } else {
                let mut user = json!({"username": id.username, "uid": id.uid, "groups": id.groups});
                if let (Some((pod, pod_uid)), Some(m)) = (&id.pod, user.as_object_mut()) {
                    m.insert(
                        "extra".into(),
                        json!({"authentication.kubernetes.io/pod-name": [pod], "authentication.kubernetes.io/pod-uid": [pod_uid]}),
                    );
                }
                json!({"authenticated": true, "user": user, "audiences": audiences})
            }
        }
        None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
    };
    json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_forgeries() {
        let t = Tokens::new();
        let (tok, _) = t.service_account("ns", "sa", "u1", &[], 3600, None);
        let id = t.verify(&tok).unwrap();
        assert_eq!(id.username, "system:serviceaccount:ns:sa");
        assert!(!id.admin);
        assert!(t.verify(t.admin()).unwrap().admin);
        let other = Tokens::new();
        assert!(other.verify(&tok).is_none());
        assert!(t.verify("a.b.c").is_none());
        assert!(t.verify("garbage").is_none());
        let (expired, _) = t.service_account("ns", "sa", "u1", &[], -100, None);
        // ttl is clamped to 1 s, so it is still valid right now.
        assert!(t.verify(&expired).is_some());
        let r = review(&t, &json!({"token": tok}));
        assert_eq!(r["status"]["authenticated"], true);
        assert_eq!(
            review(&t, &json!({"token": "x"}))["status"]["authenticated"],
            false
        );
    }
}
