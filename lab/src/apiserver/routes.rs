//! Routing: a request's path parsed into a resource path, the verb chosen,
//! and the request served from the store, the watch hub or a special
//! endpoint (TokenRequest, TokenReview, discovery).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::resources::{ResourceDef, NAMESPACES, SERVICE_ACCOUNTS};
use super::selectors::{FieldSelector, LabelSelector, Selectors};
use super::status::{ApiError, ApiResult};
use crate::faults::{Fault, Knob};

use super::{
    admin, auth, deletion, ensure_default_sa, objects, patch, resources, watch, webhooks,
    ServeState, Shared,
};

#[derive(Debug)]
pub(super) struct ResourcePath {
    resource: usize,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

#[derive(Debug)]
pub(super) enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    ResourceList(String, String),
    Resource(ResourcePath),
    /// `GET /api/v1/namespaces/NS/pods/NAME[:PORT]/proxy/PATH`.
    PodProxy {
        namespace: String,
        pod: String,
        path: String,
    },
    NotFound,
}

pub(super) fn decode(seg: &str) -> String {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8_lossy()
        .into_owned()
}

pub(super) fn parse_route(path: &str) -> Route {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Route::NotFound,
    };
    if rest.is_empty() {
        return Route::ResourceList(group.to_string(), version.to_string());
    }
    if rest.iter().any(|s| s.is_empty()) {
        return Route::NotFound;
    }
    if let ("", "v1", ["namespaces", ns, "pods", pod, "proxy", path @ ..]) = (group, version, rest)
    {
        return Route::PodProxy {
            namespace: ns.to_string(),
            pod: pod.to_string(),
            path: path.join("/"),
        };
    }
    if rest[0] == "namespaces" && rest.len() >= 3 {
        if let Some(id) =
            resources::find(group, version, rest[2]).filter(|id| resources::def(*id).namespaced)
        {
            if rest.len() > 5 {
                return Route::NotFound;
            }
            return Route::Resource(ResourcePath {
                resource: id,
                namespace: Some(rest[1].to_string()),
                name: rest.get(3).map(|s| s.to_string()),
                sub: rest.get(4).map(|s| s.to_string()),
            });
        }
    }
    let Some(id) = resources::find(group, version, rest[0]) else {
        return Route::NotFound;
    };
    if rest.len() > 3 || (resources::def(id).namespaced && rest.len() > 1) {
        return Route::NotFound;
    }
    Route::Resource(ResourcePath {
        resource: id,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

pub(super) fn query_map(q: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

pub(super) fn is_true(q: &BTreeMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true") | Some("1"))
}

pub(super) fn json_response(code: StatusCode, body: Vec<u8>) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub(super) fn value_response(code: StatusCode, v: &Value) -> Response {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(super) async fn read_body(body: Body, max: usize) -> ApiResult<Bytes> {
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(max))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "could not read the request body: {e}"
        ))),
    }
}

/// Bodies of create and update must be JSON: the lab has no protobuf or
/// CBOR codecs (kubectl's typed `create secret`/`create ns` send protobuf).
pub(super) fn check_json_content_type(headers: &HeaderMap) -> ApiResult<()> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.is_empty() || media == "application/json" || media.ends_with("+json") || media == "*/*"
    {
        return Ok(());
    }
    Err(ApiError::unsupported_media_type(format!(
        "the lab API server accepts JSON bodies only, not {media:?}; with kubectl, create objects from a manifest (`kubectl create --validate=false -f FILE`) instead of typed generators"
    )))
}

pub(super) fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Every request comes through here.
pub(super) async fn handle(State(st): State<ServeState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez")
        || ["/healthz/", "/readyz/", "/livez/"]
            .iter()
            .any(|p| path.starts_with(p))
    {
        return (StatusCode::OK, "ok").into_response();
    }
    let identity = match bearer(req.headers()) {
        Some(t) => st.shared.tokens.verify(t),
        None if st.anonymous_admin && !req.headers().contains_key(header::AUTHORIZATION) => {
            st.shared.tokens.verify(st.shared.tokens.admin())
        }
        None => None,
    };
    let Some(identity) = identity else {
        return ApiError::unauthorized().into_response();
    };
    if path == "/lab" || path.starts_with("/lab/") {
        return admin::handle(&st.shared, &identity, req).await;
    }
    if st.shared.knobs.is_on(Fault::ApiForbidden)
        && !identity.admin
        && !path.ends_with("/tokenreviews")
    {
        return ApiError::forbidden(format!(
            "{} cannot access {path}: the lab's api-forbidden fault is on (RBAC revoked)",
            identity.username
        ))
        .into_response();
    }
    match serve_api(&st, req, &path, &identity.username).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub(super) fn verb_of(method: &Method, rp: &ResourcePath, watch: bool) -> Option<&'static str> {
    Some(match (method.as_str(), rp.name.is_some()) {
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("GET", true) => "get",
        ("POST", _) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    })
}

pub(super) async fn serve_api(
    st: &ServeState,
    req: Request,
    path: &str,
    user: &str,
) -> ApiResult<Response> {
    let shared = &st.shared;
    let route = parse_route(path);
    let query = query_map(req.uri().query());
    let method = req.method().clone();
    let mut is_token_review = false;
    if let Route::Resource(rp) = &route {
        let def = resources::def(rp.resource);
        is_token_review = def.virtual_create;
        let watch = is_true(&query, "watch");
        if let Some(verb) = verb_of(&method, rp, watch) {
            let res = match &rp.sub {
                Some(s) => format!("{}/{}", def.plural, s),
                None => def.plural.to_string(),
            };
            let count = |c: &mut super::RequestCounts| {
                *c.counts
                    .entry(verb.to_string())
                    .or_default()
                    .entry(res.clone())
                    .or_default() += 1;
            };
            count(&mut shared.counts.lock());
            count(
                shared
                    .counts_by_user
                    .lock()
                    .entry(user.to_string())
                    .or_default(),
            );
        }
    }
    if let Route::PodProxy { .. } = &route {
        *shared
            .counts
            .lock()
            .counts
            .entry(method.as_str().to_ascii_lowercase())
            .or_default()
            .entry("pods/proxy".into())
            .or_default() += 1;
    }
    if shared.knobs.is_on(Fault::ApiErrors) && !is_token_review {
        return Err(ApiError::internal("the lab's api-errors fault is on"));
    }
    if shared.knobs.is_on(Fault::ApiSlow) {
        shared.knobs.delay(Knob::ApiLatency).await;
    }
    let get_only = |v: Option<Value>| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        v.map(|v| value_response(StatusCode::OK, &v))
            .ok_or_else(ApiError::no_such_resource)
    };
    match route {
        Route::Version => get_only(Some(resources::version())),
        Route::CoreVersions => get_only(Some(resources::core_versions())),
        Route::Groups => get_only(Some(resources::group_list())),
        Route::Group(g) => get_only(resources::group(&g)),
        Route::ResourceList(g, v) => get_only(resources::resource_list(&g, &v)),
        Route::NotFound => Err(ApiError::no_such_resource()),
        Route::Resource(rp) => resource_request(st, req, rp, query).await,
        Route::PodProxy {
            namespace,
            pod,
            path,
        } => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            pod_proxy(shared, &namespace, &pod, &path, req.uri().query()).await
        }
    }
}

/// The Pod proxy (`pods/NAME[:PORT]/proxy/PATH`, GET only): the request
/// forwarded to the Pod's `status.podIP`, the answer passed back; a Pod that
/// cannot be reached is a 503 Status saying why, as kube-apiserver does.
async fn pod_proxy(
    shared: &Shared,
    namespace: &str,
    id: &str,
    path: &str,
    query: Option<&str>,
) -> ApiResult<Response> {
    static HTTP: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .no_proxy()
            .build()
            .unwrap_or_default()
    });
    let pods = resources::find("", "v1", "pods").ok_or_else(ApiError::no_such_resource)?;
    let def = resources::def(pods);
    let (name, port) = match id.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (id, None),
    };
    let pod = shared
        .store
        .get(&(pods, namespace.to_string(), name.to_string()))
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| ApiError::bad_request(format!("invalid pod request {id:?}")))?,
        None => pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| ApiError::bad_request("no port to proxy to"))?,
    };
    let ip: std::net::IpAddr = pod["status"]["podIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::bad_request("address not allowed"))?;
    let mut url = format!("http://{}/{path}", std::net::SocketAddr::new(ip, port));
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    let resp = HTTP.get(&url).send().await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error trying to reach service: {e}"),
        )
    })?;
    let code = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = resp.bytes().await.map_err(|e| {
        ApiError::new(
            503,
            "ServiceUnavailable",
            format!("error reading from the Pod: {e}"),
        )
    })?;
    let mut out = (code, body).into_response();
    if let Some(ct) = ct {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

pub(super) async fn resource_request(
    st: &ServeState,
    req: Request,
    rp: ResourcePath,
    query: BTreeMap<String, String>,
) -> ApiResult<Response> {
    let shared = &st.shared;
    let def = resources::def(rp.resource);
    let (parts, body) = req.into_parts();
    let method = parts.method;
    let sub = rp.sub.as_deref();
    let status_only = match sub {
        None => false,
        Some("status") if def.status => true,
        Some("token") if rp.resource == SERVICE_ACCOUNTS && method == Method::POST => false,
        Some(_) => return Err(ApiError::no_such_resource()),
    };
    if def.virtual_create {
        if method != Method::POST || rp.name.is_some() {
            return Err(ApiError::method_not_allowed());
        }
        let body = parse_json(&read_body(body, shared.options.max_body_bytes).await?)?;
        let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
        return Ok(value_response(
            StatusCode::CREATED,
            &auth::review(&shared.tokens, &spec),
        ));
    }
    let ns = rp.namespace.clone();
    match (&method, &rp.name) {
        (&Method::GET, None) => {
            let selectors = Selectors {
                labels: LabelSelector::parse(
                    query.get("labelSelector").map(String::as_str).unwrap_or(""),
                )?,
                fields: FieldSelector::parse(
                    query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                    def,
                )?,
            };
            if is_true(&query, "watch") {
                watch_request(st, rp.resource, ns, selectors, &query)
            } else {
                list_request(shared, def, rp.resource, ns.as_deref(), &selectors, &query)
            }
        }
        (&Method::GET, Some(name)) => {
            let key = (rp.resource, ns.unwrap_or_default(), name.clone());
            let obj = shared
                .store
                .get(&key)
                .ok_or_else(|| ApiError::not_found(def, name))?;
            Ok(json_response(StatusCode::OK, watch::object_json(&obj)))
        }
        (&Method::POST, None) => {
            if def.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            check_json_content_type(&parts.headers)?;
            let body = parse_json(&read_body(body, shared.options.max_body_bytes).await?)?;
            create_request(shared, def, rp.resource, ns.as_deref(), body, &query)
        }
        (&Method::POST, Some(name)) if sub == Some("token") => {
            let body = read_body(body, shared.options.max_body_bytes).await?;
            let body = if body.is_empty() {
                json!({})
            } else {
                parse_json(&body)?
            };
            token_request(shared, ns.as_deref().unwrap_or(""), name, &body)
        }
        (&Method::PUT, Some(name)) => {
            check_json_content_type(&parts.headers)?;
            let body = parse_json(&read_body(body, shared.options.max_body_bytes).await?)?;
            let key = (rp.resource, ns.clone().unwrap_or_default(), name.clone());
            if query.contains_key("dryRun") {
                let old = shared
                    .store
                    .get(&key)
                    .ok_or_else(|| ApiError::not_found(def, name))?;
                let out =
                    objects::prepare_update(def, ns.as_deref(), name, &old, body, status_only)?;
                return Ok(value_response(StatusCode::OK, &out));
            }
            let out = shared.store.update(&key, |old| {
                objects::prepare_update(def, ns.as_deref(), name, old, body, status_only)
            })?;
            Ok(json_response(StatusCode::OK, watch::object_json(&out)))
        }
        (&Method::PATCH, Some(name)) => {
            let ct = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let kind = patch::PatchType::from_content_type(ct, def)?;
            let raw = read_body(body, shared.options.max_body_bytes).await?;
            let patch_body: Value = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
            let key = (rp.resource, ns.clone().unwrap_or_default(), name.clone());
            let apply = |old: &Value| {
                let patched = patch::apply(kind, old, &patch_body)?;
                objects::prepare_update(def, ns.as_deref(), name, old, patched, status_only)
            };
            if query.contains_key("dryRun") {
                let old = shared
                    .store
                    .get(&key)
                    .ok_or_else(|| ApiError::not_found(def, name))?;
                return Ok(value_response(StatusCode::OK, &apply(&old)?));
            }
            let out = shared.store.update(&key, apply)?;
            Ok(json_response(StatusCode::OK, watch::object_json(&out)))
        }
        (&Method::DELETE, Some(name)) if sub.is_none() => {
            let raw = read_body(body, shared.options.max_body_bytes).await?;
            let opts = if raw.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                parse_json(&raw)?
            };
            let orphan = opts.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
                || query.get("propagationPolicy").map(String::as_str) == Some("Orphan")
                || opts.get("orphanDependents").and_then(Value::as_bool) == Some(true);
            let pre_rv = opts
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            let pre_uid = opts
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            let key = (rp.resource, ns.unwrap_or_default(), name.clone());
            let check = |old: &Value| {
                let meta = |f: &str| {
                    old.pointer(&format!("/metadata/{f}"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                if pre_rv
                    .as_ref()
                    .is_some_and(|rv| *rv != meta("resourceVersion"))
                    || pre_uid.as_ref().is_some_and(|u| *u != meta("uid"))
                {
                    return Err(ApiError::conflict(def, name));
                }
                Ok(())
            };
            if query.contains_key("dryRun") {
                let old = shared
                    .store
                    .get(&key)
                    .ok_or_else(|| ApiError::not_found(def, name))?;
                check(&old)?;
                return Ok(json_response(StatusCode::OK, watch::object_json(&old)));
            }
            let (obj, gone) = deletion::delete(shared, &key, check, orphan, &opts, &query)?;
            let code = if gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(json_response(code, watch::object_json(&obj)))
        }
        (&Method::DELETE, None) => {
            let selectors = Selectors {
                labels: LabelSelector::parse(
                    query.get("labelSelector").map(String::as_str).unwrap_or(""),
                )?,
                fields: FieldSelector::parse(
                    query.get("fieldSelector").map(String::as_str).unwrap_or(""),
                    def,
                )?,
            };
            let page = shared
                .store
                .list(rp.resource, ns.as_deref(), None, &selectors, None);
            let mut gone = Vec::new();
            for obj in page.items {
                let name = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let key = (rp.resource, ns.clone().unwrap_or_default(), name);
                if let Ok((o, _)) =
                    deletion::delete(shared, &key, |_| Ok(()), false, &json!({}), &query)
                {
                    gone.push(o);
                }
            }
            Ok(list_response(def, shared.store.current_rv(), None, &gone))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

pub(super) fn list_response(
    def: &ResourceDef,
    rv: u64,
    cont: Option<String>,
    items: &[Arc<Value>],
) -> Response {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let head = json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": meta})
        .to_string();
    let mut b = BytesMut::with_capacity(head.len() + 64 + items.len() * 512);
    // `head` is `{...}`: reopen it to append the items without cloning them.
    b.put_slice(&head.as_bytes()[..head.len() - 1]);
    b.put_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            b.put_u8(b',');
        }
        b.put_slice(&watch::object_json(item));
    }
    b.put_slice(b"]}");
    json_response(StatusCode::OK, b.to_vec())
}

#[derive(Serialize, Deserialize)]
pub(super) struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

pub(super) fn list_request(
    shared: &Shared,
    def: &ResourceDef,
    resource: usize,
    ns: Option<&str>,
    selectors: &Selectors,
    query: &BTreeMap<String, String>,
) -> ApiResult<Response> {
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    let token = match query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: the token is malformed")
                })?,
        ),
    };
    let after = token.as_ref().map(|t| (t.ns.as_str(), t.name.as_str()));
    let page = shared.store.list(resource, ns, after, selectors, limit);
    // Every page reports the first page's RV, so a watch from it misses nothing.
    let rv = token.as_ref().map(|t| t.rv).unwrap_or(page.rv);
    let cont = page.next.map(|(ns, name)| {
        URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&ContinueToken { rv, ns, name }).unwrap_or_default())
    });
    Ok(list_response(def, rv, cont, &page.items))
}

pub(super) fn watch_request(
    st: &ServeState,
    resource: usize,
    ns: Option<String>,
    selectors: Selectors,
    query: &BTreeMap<String, String>,
) -> ApiResult<Response> {
    let rv = watch::parse_rv(query.get("resourceVersion").map(String::as_str))?;
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => st.shared.options.default_watch_timeout,
    };
    let req = watch::WatchRequest {
        resource,
        namespace: ns,
        selectors,
        rv,
        send_initial: is_true(query, "sendInitialEvents"),
        bookmarks: is_true(query, "allowWatchBookmarks"),
        timeout,
    };
    let stream = watch::stream(st.shared.clone(), req, st.cancel.clone());
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

pub(super) fn webhook_rejects(pod: &Value) -> bool {
    const PREFIX: &str = "vault.security.banzaicloud.io/";
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| {
            a.iter().any(|(k, v)| {
                k.starts_with(PREFIX)
                    && !(k == "vault.security.banzaicloud.io/mutate" && v.as_str() == Some("skip"))
            })
        });
    let vault_env = ["containers", "initContainers"].iter().any(|f| {
        pod.pointer(&format!("/spec/{f}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| c.get("env").and_then(Value::as_array).into_iter().flatten())
            .any(|e| {
                e.get("value")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.starts_with("vault:"))
            })
    });
    annotated || vault_env
}

pub(super) fn create_request(
    shared: &Shared,
    def: &ResourceDef,
    resource: usize,
    ns: Option<&str>,
    body: Value,
    query: &BTreeMap<String, String>,
) -> ApiResult<Response> {
    if let Some(ns) = ns {
        if !shared.store.namespace_exists(ns) {
            return Err(ApiError::not_found(resources::def(NAMESPACES), ns));
        }
    }
    if def.kind == "Pod" && shared.knobs.is_on(Fault::WebhookDown) && webhook_rejects(&body) {
        return Err(ApiError::internal(
            "failed calling webhook \"pods.vault-secrets-webhook.admission.banzaicloud.com\": failed to call webhook: connection refused",
        ));
    }
    let body = webhooks::admit(shared, def, body);
    let obj = objects::prepare_create(def, ns, body)?;
    if query.contains_key("dryRun") {
        return Ok(value_response(StatusCode::CREATED, &obj));
    }
    let created = shared.store.create(resource, ns.unwrap_or(""), obj)?;
    if resource == NAMESPACES {
        if let Some(name) = created.pointer("/metadata/name").and_then(Value::as_str) {
            ensure_default_sa(shared, name);
        }
    }
    Ok(json_response(
        StatusCode::CREATED,
        watch::object_json(&created),
    ))
}

/// `POST .../serviceaccounts/NAME/token`: a TokenRequest.
pub(super) fn token_request(
    shared: &Shared,
    ns: &str,
    name: &str,
    body: &Value,
) -> ApiResult<Response> {
    let def = resources::def(SERVICE_ACCOUNTS);
    let sa = shared
        .store
        .get(&(SERVICE_ACCOUNTS, ns.to_string(), name.to_string()))
        .ok_or_else(|| ApiError::not_found(def, name))?;
    let uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let ttl = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    let pod = spec
        .get("boundObjectRef")
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("Pod"))
        .and_then(|r| {
            Some((
                r.get("name")?.as_str()?,
                r.get("uid").and_then(Value::as_str).unwrap_or(""),
            ))
        });
    let (token, exp) = shared
        .tokens
        .service_account(ns, name, uid, &audiences, ttl, pod);
    let exp_ts = chrono::DateTime::from_timestamp(exp, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let mut out_spec = spec.clone();
    if let Some(m) = out_spec.as_object_mut() {
        m.insert("expirationSeconds".into(), json!(ttl));
        if audiences.is_empty() {
            m.insert("audiences".into(), json!([auth::ISSUER]));
        }
    }
    Ok(value_response(
        StatusCode::CREATED,
        &json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": out_spec,
            "status": {"token": token, "expirationTimestamp": exp_ts},
        }),
    ))
}
