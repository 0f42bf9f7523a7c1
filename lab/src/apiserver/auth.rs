//! Bearer tokens: real ES256 JWTs (ECDSA P-256 with a per-server key made at
//! start) carrying the usual ServiceAccount claims, so OpenBao's Kubernetes
//! auth method accepts their form before it asks the lab's TokenReview whether
//! they are genuine; only this server's public key verifies them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
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
    key: EcdsaKeyPair,
    /// The key's public point (uncompressed SEC1), what `verify()` checks with.
    public: Vec<u8>,
    /// The JWT header, encoded once: it names the key by a digest of its
    /// public point, as a real API server's `kid` does.
    header: String,
    rng: SystemRandom,
    admin: String,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Tokens {
    /// A fresh key and admin token.
    ///
    /// # Panics
    /// If the operating system's random number generator fails, the only
    /// way P-256 key generation can fail.
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system RNG failed while generating the lab's token key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("ring rejected the P-256 key it just generated");
        let public = key.public_key().as_ref().to_vec();
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(&public));
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string());
        let mut t = Tokens {
            key,
            public,
            header,
            rng,
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
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{}.{payload}", self.header);
        // ECDSA needs a fresh nonce per signature; drawing it from the system
        // RNG is the only step that can fail, and the lab cannot issue
        // tokens without it.
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .expect("the system RNG failed while signing a lab token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
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
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(format!("{h}.{p}").as_bytes(), &sig)
            .ok()?;
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

    fn part(token: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(token.split('.').nth(i).unwrap())
            .unwrap()
    }

    #[test]
    fn tokens_are_es256_signed_by_the_public_key() {
        let t = Tokens::new();
        let (tok, _) = t.service_account("ns", "sa", "u1", &["vault".into()], 600, None);
        let header: Value = serde_json::from_slice(&part(&tok, 0)).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        let sig = part(&tok, 2);
        assert_eq!(sig.len(), 64, "ES256 signatures are r||s, 32 bytes each");
        let signed = tok.rsplit_once('.').unwrap().0;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &t.public)
            .verify(signed.as_bytes(), &sig)
            .unwrap();
        // Changing a claim breaks the signature.
        let mut claims: Value = serde_json::from_slice(&part(&tok, 1)).unwrap();
        claims["sub"] = json!("system:serviceaccount:ns:other");
        let forged = format!(
            "{}.{}.{}",
            tok.split('.').next().unwrap(),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            tok.split('.').nth(2).unwrap()
        );
        assert!(t.verify(&forged).is_none());
        assert!(t.verify(&tok).is_some());
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
