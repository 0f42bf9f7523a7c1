//! Fuzzing the store's answers.

use super::*;

fn good_write_answer() -> Value {
    json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
        "data": {"created_time": "2025-01-01T00:00:00.123456789Z", "custom_metadata": null,
            "deletion_time": "", "destroyed": false, "version": 3},
        "wrap_info": null, "warnings": null, "auth": null})
}

fn good_lookup_answer() -> Value {
    json!({"request_id": "r", "lease_id": "", "lease_duration": 0, "renewable": false,
        "data": {"accessor": "a", "creation_time": 1, "creation_ttl": 0, "display_name": "token",
            "entity_id": "", "expire_time": null, "explicit_max_ttl": 0, "id": "t",
            "meta": null, "num_uses": 0, "orphan": true, "path": "auth/token/create",
            "policies": ["root"], "renewable": false, "ttl": 0},
        "wrap_info": null, "warnings": null, "auth": null})
}

const STEPS: [Step; 5] = [
    Step::Login,
    Step::LookupToken,
    Step::RenewToken,
    Step::Write,
    Step::SetMetadata,
];

/// What the store module reads of an answer, as vaultrs hands it over:
/// the envelope (`EndpointResult`), then our own reading of its fields.
fn read_store_answers(body: &[u8]) {
    use vaultrs::api::kv2::responses::SecretVersionMetadata;
    use vaultrs::api::token::responses::LookupTokenResponse;
    use vaultrs::api::{AuthInfo, EndpointError, EndpointResult};
    if let Ok(r) = serde_json::from_slice::<EndpointResult<SecretVersionMetadata>>(body) {
        if let Some(meta) = r.data {
            let _ = store::created_time(&meta.created_time);
        }
    }
    if let Ok(r) = serde_json::from_slice::<EndpointResult<LookupTokenResponse>>(body) {
        if let Some(info) = r.data {
            let _ = store::ttl(info.ttl);
        }
    }
    if let Ok(a) = serde_json::from_slice::<AuthInfo>(body) {
        let _ = store::ttl(a.lease_duration);
    }
    if let Ok(e) = serde_json::from_slice::<EndpointError>(body) {
        for step in STEPS {
            for code in [400u16, 403, 404, 412, 429, 500, 503] {
                let err = StoreError::from_client(
                    step,
                    vaultrs::error::ClientError::APIError {
                        code,
                        errors: e.errors.clone(),
                    },
                );
                assert!(matches!(
                    err.reason(),
                    Reason::AuthError | Reason::StoreError
                ));
                let text = err.to_string();
                assert!(
                    text.contains(&step.to_string()) && text.contains(&code.to_string()),
                    "{text}"
                );
            }
        }
    }
}

/// A store that answers every request with whatever the case says: the
/// prober's store client against hostile or broken answers, end to end
/// through vaultrs and rustify. Not a model of Vault: garbage on purpose.
struct Hostile {
    rt: tokio::runtime::Runtime,
    addr: String,
    answer: Arc<Mutex<Vec<u8>>>,
}

static HOSTILE: LazyLock<Hostile> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answer = Arc::new(Mutex::new(Vec::new()));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let a = answer.clone();
    rt.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let a = a.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and a body of Content-Length bytes.
                let need = loop {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        break end + 4 + len;
                    }
                };
                while buf.len() < need {
                    let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
                    else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let resp = a.lock().unwrap().clone();
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    std::env::set_var("SC_FUZZ_STORE_TOKEN", "fuzz-token");
    Hostile { rt, addr, answer }
});

fn http_answer() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        3 => (any::<prop::sample::Index>(), mutation(), prop::bool::ANY).prop_map(|(pick, m, lookup)| {
            let mut doc = if lookup { good_lookup_answer() } else { good_write_answer() };
            mutate(&mut doc, pick, m);
            serde_json::to_vec(&doc).unwrap()
        }),
        1 => any_json().prop_map(|d| serde_json::to_vec(&d).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => Just(serde_json::to_vec(&json!({"errors": ["permission denied"]})).unwrap()),
    ];
    (
        prop_oneof![
            4 => Just(200u16),
            1 => Just(204u16),
            1 => proptest::sample::select(vec![301u16, 400, 401, 403, 404, 412, 429, 500, 502, 503]),
            1 => 200u16..600,
        ],
        body,
        prop_oneof![
            4 => Just(None),
            1 => (0usize..600).prop_map(Some),
        ],
    )
        .prop_map(|(status, body, wrong_len)| {
            let len = wrong_len.unwrap_or(body.len());
            let mut r = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_answers_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        read_store_answers(&body);
    }

    #[test]
    fn store_answers_mutated(pick in any::<prop::sample::Index>(), m in mutation(), lookup in any::<bool>()) {
        let mut doc = if lookup { good_lookup_answer() } else { good_write_answer() };
        mutate(&mut doc, pick, m);
        read_store_answers(&serde_json::to_vec(&doc).unwrap());
    }

    #[test]
    fn store_error_bodies(errors in prop::collection::vec(tricky_string(), 0..4)) {
        read_store_answers(&serde_json::to_vec(&json!({"errors": errors})).unwrap());
    }

    /// The whole store client (login lookup, max_versions, write) against
    /// arbitrary HTTP answers: a result or a typed error, never a panic.
    #[test]
    fn store_client_against_hostile_answers(answer in http_answer()) {
        let h = &*HOSTILE;
        *h.answer.lock().unwrap() = answer;
        let cfg = crate::config::StoreConfig {
            address: h.addr.clone(),
            mount: "secret".into(),
            path: "canary/fuzz".into(),
            path_prefix: "canary/".into(),
            max_versions: None,
            key: "value".into(),
            namespace: None,
            ca_bundle: None,
            timeout: Some(Duration::from_secs(3)),
            auth: crate::config::StoreAuth::Token(crate::config::TokenSource::Env("SC_FUZZ_STORE_TOKEN".into())),
        };
        let r = h.rt.block_on(async {
            let store = Store::new(cfg);
            match store.prepare().await {
                Ok(()) => store.write("fuzz-value").await.map(|w| w.version),
                Err(e) => Err(e),
            }
        });
        if let Err(e) = r {
            prop_assert!(
                matches!(e.reason(), Reason::AuthError | Reason::StoreError),
                "unexpected reason {:?}: {e}", e.reason()
            );
            prop_assert!(!e.to_string().contains("fuzz-value"), "the value leaked into an error: {e}");
        }
    }
}
