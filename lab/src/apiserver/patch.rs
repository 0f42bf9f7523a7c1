//! The PATCH flavours: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
//! Kubernetes strategic merge patch, which merges known lists of objects by
//! their key (containers and env by `name`, conditions by `type`, ...).

use serde_json::{Map, Value};

use super::resources::ResourceDef;
use super::status::ApiError;

/// A patch body with its flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// From the request's Content-Type, or the 415 the real server sends.
    pub fn from_content_type(ct: &str, res: &ResourceDef) -> Result<Self, ApiError> {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let accepted = if res.custom {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
        };
        match media.as_str() {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" if !res.custom => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media_type(
                "server-side apply (application/apply-patch+yaml) is not supported by the lab API server; use a merge, JSON or strategic merge patch",
            )),
            _ => Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format - accepted media types include: {accepted}"
            ))),
        }
    }
}

/// Apply `patch` to `target`, returning the patched object.
pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut doc = target.clone();
    match kind {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch could not be applied: {e}"),
                )
            })?;
        }
        PatchType::Strategic => {
            let Value::Object(p) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            merge_map(&mut doc, p);
        }
    }
    Ok(doc)
}

/// The merge key of a list field, as the real types' `patchMergeKey` tags
/// say; `None` means the list is replaced whole.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        _ => None,
    }
}

/// Lists of scalars that merge as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *target = Value::Object(strip_directives(replaced));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(del)) = (t.get_mut(field), v) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(pm) => {
                if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    merge_map(t.entry(k.clone()).or_insert(Value::Null), pm);
                }
            }
            Value::Array(items) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_list(slot, items, k);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn merge_list(target: &mut Value, items: &[Value], field: &str) {
    if is_set_list(field) {
        let mut out = target.as_array().cloned().unwrap_or_default();
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        *target = Value::Array(out);
        return;
    }
    let key = merge_key(field, items);
    let all_objects = items.iter().all(Value::is_object);
    let Some(key) = key.filter(|_| all_objects) else {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| !is_directive_only(i))
                .cloned()
                .collect(),
        );
        return;
    };
    // A `$patch: replace` element replaces the whole list.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| !is_directive_only(i))
                .map(|i| match i {
                    Value::Object(m) => Value::Object(strip_directives(m.clone())),
                    other => other.clone(),
                })
                .collect(),
        );
        return;
    }
    let mut out = target.as_array().cloned().unwrap_or_default();
    for item in items {
        let Value::Object(pm) = item else { continue };
        let id = pm.get(key);
        let pos = id.and_then(|id| out.iter().position(|o| o.get(key) == Some(id)));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = pos {
                out.remove(p);
            }
            continue;
        }
        match pos {
            Some(p) => merge_map(&mut out[p], pm),
            None => {
                let mut fresh = Value::Object(Map::new());
                merge_map(&mut fresh, pm);
                out.push(fresh);
            }
        }
    }
    *target = Value::Array(out);
}

fn is_directive_only(v: &Value) -> bool {
    matches!(v, Value::Object(m) if !m.is_empty() && m.keys().all(|k| k.starts_with('$')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"template": {"metadata": {"annotations": {"a": "1"}}, "spec": {"containers": [
            {"name": "app", "image": "x", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "y"}
        ]}}}})
    }

    #[test]
    fn strategic_merges_env_by_name() {
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "env": [{"name": "STAKATER_X_SECRET", "value": "abc"}, {"name": "A", "value": "2"}]}
        ]}}}});
        let out = apply(PatchType::Strategic, &deployment(), &p).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2);
        assert_eq!(c[0]["image"], "x");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "2"}, {"name": "STAKATER_X_SECRET", "value": "abc"}])
        );
        assert_eq!(c[1]["name"], "side");
    }

    #[test]
    fn strategic_directives() {
        let p = json!({"spec": {"template": {
            "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
            "spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = apply(PatchType::Strategic, &deployment(), &p).unwrap();
        assert_eq!(out["spec"]["template"]["metadata"]["annotations"]["a"], "1");
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
            "now"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert!(out["spec"]["template"]["spec"]
            .get("$setElementOrder/containers")
            .is_none());
    }

    #[test]
    fn merge_patch_replaces_lists() {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "only"}]}}}});
        let out = apply(PatchType::Merge, &deployment(), &p).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only"}])
        );
    }

    #[test]
    fn json_patch_and_errors() {
        let p = json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "z"}]);
        let out = apply(PatchType::Json, &deployment(), &p).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["image"],
            "z"
        );
        let bad = json!([{"op": "remove", "path": "/nope/x"}]);
        assert_eq!(
            apply(PatchType::Json, &deployment(), &bad)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply(PatchType::Json, &deployment(), &json!({"x": 1}))
                .unwrap_err()
                .code,
            400
        );
    }
}
