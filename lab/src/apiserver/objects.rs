//! Admission of written objects: validation (names, kind, namespace), the
//! defaults the real API server fills in, status subresource separation and
//! `metadata.generation`. The only place with per-kind rules for writes.

use base64::Engine;
use serde_json::{json, Map, Value};

use super::resources::ResourceDef;
use super::status::ApiError;

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain, as object names must be.
pub fn is_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

fn name_error(res: &ResourceDef, name: &str) -> Option<ApiError> {
    let (ok, msg) = if res.plural == "namespaces" {
        (is_label(name), LABEL_MSG)
    } else {
        (is_subdomain(name), SUBDOMAIN_MSG)
    };
    (!ok).then(|| {
        ApiError::invalid(
            res,
            name,
            "metadata.name",
            &format!("Invalid value: {name:?}: {msg}"),
        )
    })
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn metadata_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let m = obj.as_object_mut()?;
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    m.get_mut("metadata").and_then(Value::as_object_mut)
}

/// The body must be an object of this resource's kind; fills apiVersion and
/// kind when missing.
fn check_type(res: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the object provided is not a JSON object",
        ));
    };
    let api_version = res.api_version();
    match m.get("apiVersion") {
        None | Some(Value::Null) => {
            m.insert("apiVersion".into(), json!(api_version));
        }
        Some(Value::String(v)) if *v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({api_version})",
                v.as_str().unwrap_or("?")
            )))
        }
    }
    match m.get("kind") {
        None | Some(Value::Null) => {
            m.insert("kind".into(), json!(res.kind));
        }
        Some(Value::String(k)) if k == res.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({}) does not match the expected kind ({})",
                k.as_str().unwrap_or("?"),
                res.kind
            )))
        }
    }
    if m.get("metadata")
        .is_some_and(|v| !v.is_object() && !v.is_null())
    {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

fn check_namespace(
    res: &ResourceDef,
    url_ns: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let body_ns = meta_str(obj, "namespace").map(str::to_string);
    let Some(meta) = metadata_mut(obj) else {
        return Err(ApiError::bad_request(
            "the object provided is not a JSON object",
        ));
    };
    if res.namespaced {
        let url_ns = url_ns.unwrap_or("");
        if let Some(b) = body_ns.filter(|b| !b.is_empty()) {
            if b != url_ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        meta.insert("namespace".into(), json!(url_ns));
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

/// Fields clients may not set.
fn strip_server_fields(meta: &mut Map<String, Value>) {
    for f in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
        "generation",
    ] {
        meta.remove(f);
    }
}

/// Admit a create: returns the object to store (name may still be empty when
/// `generateName` is set; the store picks it).
pub fn prepare_create(
    res: &ResourceDef,
    url_ns: Option<&str>,
    mut obj: Value,
) -> Result<Value, ApiError> {
    check_type(res, &mut obj)?;
    check_namespace(res, url_ns, &mut obj)?;
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    let generate = meta_str(&obj, "generateName").unwrap_or("").to_string();
    if name.is_empty() {
        if generate.is_empty() {
            return Err(ApiError::invalid(
                res,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
            ));
        }
        // The generated name must be valid too.
        if name_error(res, &format!("{generate}x")).is_some() {
            return Err(ApiError::invalid(
                res,
                &generate,
                "metadata.generateName",
                &format!("Invalid value: {generate:?}: {SUBDOMAIN_MSG}"),
            ));
        }
    } else if let Some(e) = name_error(res, &name) {
        return Err(e);
    }
    if let Some(meta) = metadata_mut(&mut obj) {
        strip_server_fields(meta);
        if res.generation {
            meta.insert("generation".into(), json!(1));
        }
    }
    if res.status {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    apply_defaults(res, &mut obj, true)?;
    Ok(obj)
}

/// Admit an update (PUT, or the result of a PATCH) of `old`. With
/// `status_only` this is a write to the `/status` subresource.
pub fn prepare_update(
    res: &ResourceDef,
    url_ns: Option<&str>,
    url_name: &str,
    old: &Value,
    mut new: Value,
    status_only: bool,
) -> Result<Value, ApiError> {
    check_type(res, &mut new)?;
    check_namespace(res, url_ns, &mut new)?;
    match meta_str(&new, "name") {
        None | Some("") => {
            if let Some(meta) = metadata_mut(&mut new) {
                meta.insert("name".into(), json!(url_name));
            }
        }
        Some(n) if n == url_name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({url_name})"
            )))
        }
    }
    let old_rv = meta_str(old, "resourceVersion").unwrap_or("");
    if let Some(rv) = meta_str(&new, "resourceVersion").filter(|rv| !rv.is_empty()) {
        if rv != old_rv {
            return Err(ApiError::conflict(res, url_name));
        }
    }
    if status_only {
        let mut out = old.clone();
        if let Some(m) = out.as_object_mut() {
            match new.get("status") {
                Some(s) if !s.is_null() => {
                    m.insert("status".into(), s.clone());
                }
                _ => {
                    m.remove("status");
                }
            }
        }
        return Ok(out);
    }
    // Server-owned metadata comes from the stored object.
    if let (Some(meta), Some(old_meta)) = (
        metadata_mut(&mut new),
        old.get("metadata").and_then(Value::as_object),
    ) {
        strip_server_fields(meta);
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            if let Some(v) = old_meta.get(f) {
                meta.insert(f.into(), v.clone());
            }
        }
    }
    if res.status {
        if let Some(m) = new.as_object_mut() {
            match old.get("status") {
                Some(s) => {
                    m.insert("status".into(), s.clone());
                }
                None => {
                    m.remove("status");
                }
            }
        }
    }
    apply_defaults(res, &mut new, false)?;
    if res.generation && new.get("spec") != old.get("spec") {
        let g = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(meta) = metadata_mut(&mut new) {
            meta.insert("generation".into(), json!(g));
        }
    }
    Ok(new)
}

fn set_default(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for (i, seg) in path.iter().enumerate() {
        let Some(m) = cur.as_object_mut() else { return };
        if i == path.len() - 1 {
            m.entry(seg.to_string()).or_insert(value);
            return;
        }
        cur = m.entry(seg.to_string()).or_insert_with(|| json!({}));
    }
}

/// The defaults the real API server's defaulting and admission fill in, for
/// the fields clients and controllers read back.
fn apply_defaults(res: &ResourceDef, obj: &mut Value, create: bool) -> Result<(), ApiError> {
    match (res.group, res.kind) {
        ("", "Secret") => {
            set_default(obj, &["type"], json!("Opaque"));
            normalise_secret(obj)?;
        }
        ("", "Namespace") => {
            let name = meta_str(obj, "name").unwrap_or("").to_string();
            set_default(
                obj,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                json!(name),
            );
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            set_default(obj, &["status", "phase"], json!("Active"));
        }
        ("", "Pod") => {
            set_default(obj, &["spec", "restartPolicy"], json!("Always"));
            set_default(obj, &["spec", "serviceAccountName"], json!("default"));
            set_default(obj, &["spec", "terminationGracePeriodSeconds"], json!(30));
            set_default(obj, &["spec", "dnsPolicy"], json!("ClusterFirst"));
            set_default(obj, &["spec", "schedulerName"], json!("default-scheduler"));
            if create {
                set_default(obj, &["status", "phase"], json!("Pending"));
            }
        }
        ("apps", "Deployment") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            set_default(
                obj,
                &["spec", "strategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        ("apps", "ReplicaSet") => {
            set_default(obj, &["spec", "replicas"], json!(1));
        }
        _ => {}
    }
    Ok(())
}

/// `stringData` folds into base64 `data`; `data` must be base64.
fn normalise_secret(obj: &mut Value) -> Result<(), ApiError> {
    let Some(m) = obj.as_object_mut() else {
        return Ok(());
    };
    let string_data = m.remove("stringData");
    if let Some(Value::Object(sd)) = string_data {
        let data = m.entry("data").or_insert_with(|| json!({}));
        if data.is_null() {
            *data = json!({});
        }
        if let Some(d) = data.as_object_mut() {
            for (k, v) in sd {
                let s = v.as_str().unwrap_or_default();
                d.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(s)),
                );
            }
        }
    }
    match m.get("data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(d)) => {
            for (k, v) in d {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k:?}]"
                    )));
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "Secret data must be an object of base64 strings",
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::resources::{def, find};
    use super::*;

    #[test]
    fn names() {
        assert!(is_subdomain("a.b-c"));
        assert!(!is_subdomain("A"));
        assert!(!is_subdomain("-a"));
        assert!(!is_subdomain(""));
        assert!(!is_subdomain("a..b"));
    }

    #[test]
    fn create_and_update_rules() {
        let d = def(find("apps", "v1", "deployments").unwrap());
        let o = prepare_create(
            d,
            Some("ns"),
            json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}, "status": {"replicas": 9}}),
        )
        .unwrap();
        assert_eq!(o["metadata"]["generation"], 1);
        assert!(o.get("status").is_none());
        assert_eq!(o["metadata"]["namespace"], "ns");
        let mut stored = o.clone();
        stored["metadata"]["resourceVersion"] = json!("5");
        stored["status"] = json!({"replicas": 1});
        // Label change: no generation bump, status kept.
        let mut n = stored.clone();
        n["metadata"]["labels"] = json!({"a": "b"});
        n["status"] = json!({"replicas": 100});
        let u = prepare_update(d, Some("ns"), "x", &stored, n, false).unwrap();
        assert_eq!(u["metadata"]["generation"], 1);
        assert_eq!(u["status"]["replicas"], 1);
        // Spec change bumps.
        let mut n = stored.clone();
        n["spec"]["replicas"] = json!(3);
        assert_eq!(
            prepare_update(d, Some("ns"), "x", &stored, n, false).unwrap()["metadata"]
                ["generation"],
            2
        );
        // Stale RV conflicts.
        let mut n = stored.clone();
        n["metadata"]["resourceVersion"] = json!("4");
        assert_eq!(
            prepare_update(d, Some("ns"), "x", &stored, n, false)
                .unwrap_err()
                .code,
            409
        );
        // Status write changes only status.
        let mut n = stored.clone();
        n["spec"]["replicas"] = json!(7);
        n["status"] = json!({"replicas": 2});
        let u = prepare_update(d, Some("ns"), "x", &stored, n, true).unwrap();
        assert_eq!(u["spec"]["replicas"], 2);
        assert_eq!(u["status"]["replicas"], 2);
        // Invalid name.
        assert_eq!(
            prepare_create(d, Some("ns"), json!({"metadata": {"name": "Bad_Name"}}))
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            prepare_create(
                d,
                Some("ns"),
                json!({"kind": "Pod", "metadata": {"name": "a"}})
            )
            .unwrap_err()
            .code,
            400
        );
    }

    #[test]
    fn secret_string_data() {
        let s = def(super::super::resources::SECRETS);
        let o = prepare_create(
            s,
            Some("ns"),
            json!({"metadata": {"name": "x"}, "stringData": {"k": "v"}}),
        )
        .unwrap();
        assert_eq!(o["data"]["k"], "dg==");
        assert!(o.get("stringData").is_none());
        assert_eq!(o["type"], "Opaque");
        assert_eq!(
            prepare_create(
                s,
                Some("ns"),
                json!({"metadata": {"name": "x"}, "data": {"k": "%%"}})
            )
            .unwrap_err()
            .code,
            400
        );
    }
}
