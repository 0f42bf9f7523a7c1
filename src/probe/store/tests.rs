//! Unit tests of `store`.

use super::*;
use secret_canary_lab::openbao::OpenBao;
use serde_json::{json, Value};

fn tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A raw root-token request for test setup (not the code under test).
async fn root(bao: &OpenBao, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let c = reqwest::Client::new();
    let mut r = c
        .request(method, format!("{}/v1/{path}", bao.addr))
        .header("X-Vault-Token", &bao.root_token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

async fn bao(name: &str) -> OpenBao {
    tls();
    let dir = std::env::temp_dir().join(format!("sc-store-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    OpenBao::start(&dir.join("bao.log")).await.unwrap()
}

fn config(bao: &OpenBao, auth: StoreAuth) -> StoreConfig {
    StoreConfig {
        address: bao.addr.clone(),
        mount: "secret".into(),
        path: "canary/test".into(),
        path_prefix: "canary/".into(),
        max_versions: None,
        key: "value".into(),
        namespace: None,
        ca_bundle: None,
        timeout: Some(Duration::from_secs(5)),
        auth,
    }
}

fn token_file(name: &str, token: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sc-store-{name}-{}.token", std::process::id()));
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

async fn latest(bao: &OpenBao, path: &str) -> Value {
    root(
        bao,
        reqwest::Method::GET,
        &format!("secret/data/{path}"),
        None,
    )
    .await
}

#[tokio::test]
async fn token_from_file_writes_new_versions_and_caps_them() {
    let bao = bao("file").await;
    let file = token_file("file", &bao.root_token);
    let store = Store::new(config(
        &bao,
        StoreAuth::Token(TokenSource::File(file.clone())),
    ));
    store.prepare().await.unwrap();
    let a = store.write("first").await.unwrap();
    let b = store.write("second").await.unwrap();
    assert_eq!(b.version, a.version + 1);
    assert!(a.finished.at >= a.started.at);
    let created = b.created_time.unwrap();
    let slack = chrono::Duration::milliseconds(50);
    assert!(created >= b.started.wall - slack && created <= b.finished.wall + slack);
    let data = latest(&bao, "canary/test").await;
    assert_eq!(data["data"]["data"], json!({"value": "second"}));
    let meta = root(
        &bao,
        reqwest::Method::GET,
        "secret/metadata/canary/test",
        None,
    )
    .await;
    assert_eq!(meta["data"]["max_versions"], json!(MAX_VERSIONS));
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn errors_map_to_reasons() {
    let bao = bao("errors").await;
    // A token the store does not know.
    let file = token_file("bad", "not-a-token");
    let store = Store::new(config(
        &bao,
        StoreAuth::Token(TokenSource::File(file.clone())),
    ));
    let e = store.write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::AuthError, "{e}");
    std::fs::remove_file(file).ok();

    // A valid token whose policy does not allow the write.
    let policy = r#"path "secret/data/other" { capabilities = ["create", "update"] }"#;
    root(
        &bao,
        reqwest::Method::PUT,
        "sys/policies/acl/other",
        Some(json!({"policy": policy})),
    )
    .await;
    let t = root(
        &bao,
        reqwest::Method::POST,
        "auth/token/create",
        Some(json!({"policies": ["other"]})),
    )
    .await;
    let tok = t["auth"]["client_token"].as_str().unwrap().to_string();
    std::env::set_var("SC_STORE_TEST_TOKEN", &tok);
    let store = Store::new(config(
        &bao,
        StoreAuth::Token(TokenSource::Env("SC_STORE_TEST_TOKEN".into())),
    ));
    let e = store.write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::AuthError, "{e}");
    assert!(e.to_string().contains("permission denied"), "{e}");

    // Prober-side problems.
    let missing = PathBuf::from("/nonexistent/secret-canary/token");
    let store = Store::new(config(&bao, StoreAuth::Token(TokenSource::File(missing))));
    let e = store.write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::ProberError, "{e}");
    let mut cfg = config(
        &bao,
        StoreAuth::Token(TokenSource::Env("SC_STORE_TEST_TOKEN".into())),
    );
    cfg.address = "not a url".into();
    let e = Store::new(cfg).write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::ProberError, "{e}");

    // Nothing listening.
    let mut cfg = config(
        &bao,
        StoreAuth::Token(TokenSource::Env("SC_STORE_TEST_TOKEN".into())),
    );
    let port = secret_canary_lab::openbao::free_port().unwrap();
    cfg.address = format!("http://127.0.0.1:{port}");
    let e = Store::new(cfg).write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::StoreError, "{e}");

    // Sealed: 503.
    let file = token_file("sealed", &bao.root_token);
    let store = Store::new(config(
        &bao,
        StoreAuth::Token(TokenSource::File(file.clone())),
    ));
    store.write("before").await.unwrap();
    root(&bao, reqwest::Method::PUT, "sys/seal", None).await;
    let e = store.write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::StoreError, "{e}");
    std::fs::remove_file(file).ok();
}

#[tokio::test]
async fn approle_short_lived_tokens_do_not_fail_writes() {
    let bao = bao("approle").await;
    let policy = r#"
            path "secret/data/canary/*" { capabilities = ["create", "update"] }
            path "secret/metadata/canary/*" { capabilities = ["create", "update"] }
        "#;
    root(
        &bao,
        reqwest::Method::PUT,
        "sys/policies/acl/canary",
        Some(json!({"policy": policy})),
    )
    .await;
    root(
        &bao,
        reqwest::Method::POST,
        "sys/auth/approle",
        Some(json!({"type": "approle"})),
    )
    .await;
    // Renewable up to 4 s in total, 2 s at a time: both renewal and a
    // fresh login are needed over the test.
    root(
        &bao,
        reqwest::Method::POST,
        "auth/approle/role/canary",
        Some(json!({"token_policies": ["canary"], "token_ttl": "2s", "token_max_ttl": "4s"})),
    )
    .await;
    let r = root(
        &bao,
        reqwest::Method::GET,
        "auth/approle/role/canary/role-id",
        None,
    )
    .await;
    let role_id = r["data"]["role_id"].as_str().unwrap().to_string();
    let s = root(
        &bao,
        reqwest::Method::POST,
        "auth/approle/role/canary/secret-id",
        Some(json!({})),
    )
    .await;
    let secret_file = token_file("approle", s["data"]["secret_id"].as_str().unwrap());
    let store = Store::new(config(
        &bao,
        StoreAuth::Approle {
            mount: "approle".into(),
            role_id: role_id.clone(),
            secret_id: TokenSource::File(secret_file.clone()),
        },
    ));
    let mut last = 0;
    for i in 0..12 {
        let w = store.write(&format!("v{i}")).await.unwrap();
        assert!(w.version > last);
        last = w.version;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // A wrong secret id is an auth error.
    let bad = token_file("approle-bad", "00000000-0000-0000-0000-000000000000");
    let store = Store::new(config(
        &bao,
        StoreAuth::Approle {
            mount: "approle".into(),
            role_id,
            secret_id: TokenSource::File(bad.clone()),
        },
    ));
    let e = store.write("x").await.unwrap_err();
    assert_eq!(e.reason(), Reason::AuthError, "{e}");
    std::fs::remove_file(secret_file).ok();
    std::fs::remove_file(bad).ok();
}

#[test]
fn probes_with_the_same_address_and_credential_share_a_session() {
    let cfg = |path: &str, env: &str| StoreConfig {
        address: "http://127.0.0.1:8200".into(),
        mount: "secret".into(),
        path: path.into(),
        path_prefix: "canary/".into(),
        max_versions: None,
        key: "value".into(),
        namespace: None,
        ca_bundle: None,
        timeout: None,
        auth: StoreAuth::Token(TokenSource::Env(env.into())),
    };
    let a = Store::new(cfg("canary/a", "SC_SHARE_TOKEN"));
    let b = Store::new(cfg("canary/b", "SC_SHARE_TOKEN"));
    let c = Store::new(cfg("canary/c", "SC_OTHER_TOKEN"));
    assert!(Arc::ptr_eq(&a.session, &b.session));
    assert!(!Arc::ptr_eq(&a.session, &c.session));
    let weak = Arc::downgrade(&a.session);
    drop((a, b));
    assert!(
        weak.upgrade().is_none(),
        "the session ends with its last probe"
    );
}

#[test]
fn the_commit_is_the_stores_time_kept_within_the_round_trip() {
    let started = crate::probe::Stamp::now();
    let rtt = std::time::Duration::from_millis(8);
    let finished = crate::probe::Stamp {
        at: started.at + rtt,
        wall: started.wall + chrono::Duration::milliseconds(8),
    };
    let written = |created: Option<chrono::DateTime<chrono::Utc>>| Written {
        version: 1,
        created_time: created,
        started,
        finished,
    };
    let ms = |n: i64| started.wall + chrono::Duration::milliseconds(n);
    // Inside the round trip: the store's time, on both clocks.
    let c = written(Some(ms(3))).committed();
    assert_eq!(c.wall, ms(3));
    assert_eq!(c.at - started.at, std::time::Duration::from_millis(3));
    // A store clock behind or ahead of ours: an edge of the round trip.
    assert_eq!(written(Some(ms(-500))).committed(), started);
    assert_eq!(written(Some(ms(500))).committed(), finished);
    // No time from the store: when the answer came.
    assert_eq!(written(None).committed(), finished);
}
