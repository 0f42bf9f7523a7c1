//! Label and field selectors, parsed from the query string with the real API
//! server's grammar and matched against stored JSON objects.

use serde_json::Value;

use super::resources::ResourceDef;
use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Eq(v), Some(x)) => v == x,
            (Op::Eq(_), None) => false,
            (Op::NotEq(v), Some(x)) => v != x,
            (Op::NotEq(_), None) => true,
            (Op::In(vs), Some(x)) => vs.iter().any(|v| v == x),
            (Op::In(_), None) => false,
            (Op::NotIn(vs), Some(x)) => !vs.iter().any(|v| v == x),
            (Op::NotIn(_), None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::NotExists, v) => v.is_none(),
        }
    }
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 316
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_set(rest: &str, selector: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad_label(selector, "expected a parenthesised set of values"))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(|v| !valid_value(v)) {
        return Err(bad_label(selector, "invalid value in set"));
    }
    Ok(values)
}

fn bad_label(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: invalid label selector {selector:?}: {why}"
    ))
}

impl LabelSelector {
    /// Parse `a=b,c!=d,e in (f,g),!h`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { reqs });
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad_label(s, "empty requirement"));
            }
            let req = if let Some(k) = part.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotEq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::Eq(v.trim().to_string()),
                }
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotIn(parse_set(rest, s)?),
                }
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::In(parse_set(rest, s)?),
                }
            } else {
                Requirement {
                    key: part.to_string(),
                    op: Op::Exists,
                }
            };
            if !valid_key(&req.key) {
                return Err(bad_label(s, "invalid key"));
            }
            if let Op::Eq(v) | Op::NotEq(v) = &req.op {
                if !valid_value(v) {
                    return Err(bad_label(s, "invalid value"));
                }
            }
            reqs.push(req);
        }
        Ok(LabelSelector { reqs })
    }

    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Does the object's `metadata.labels` satisfy every requirement?
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        self.reqs.iter().all(|r| {
            let v = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            r.matches(v)
        })
    }
}

/// A parsed `fieldSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    reqs: Vec<(String, Requirement)>,
}

/// Fields the real API server supports per kind besides `metadata.name` and
/// `metadata.namespace`, as JSON pointers.
fn kind_fields(kind: &str) -> &'static [(&'static str, &'static str)] {
    match kind {
        "Pod" => &[
            ("spec.nodeName", "/spec/nodeName"),
            ("spec.restartPolicy", "/spec/restartPolicy"),
            ("spec.schedulerName", "/spec/schedulerName"),
            ("spec.serviceAccountName", "/spec/serviceAccountName"),
            ("status.phase", "/status/phase"),
            ("status.podIP", "/status/podIP"),
        ],
        "Secret" => &[("type", "/type")],
        "Namespace" => &[("status.phase", "/status/phase")],
        "ReplicaSet" => &[("status.replicas", "/status/replicas")],
        "Event" => &[
            ("involvedObject.kind", "/involvedObject/kind"),
            ("involvedObject.namespace", "/involvedObject/namespace"),
            ("involvedObject.name", "/involvedObject/name"),
            ("involvedObject.uid", "/involvedObject/uid"),
            ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
            ("reason", "/reason"),
            ("type", "/type"),
        ],
        _ => &[],
    }
}

fn field_pointer(res: &ResourceDef, field: &str) -> Option<String> {
    match field {
        "metadata.name" => Some("/metadata/name".into()),
        "metadata.namespace" => Some("/metadata/namespace".into()),
        _ => kind_fields(res.kind)
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, p)| (*p).to_string()),
    }
}

impl FieldSelector {
    /// Parse `metadata.name=x,metadata.namespace!=y` for this resource.
    pub fn parse(s: &str, res: &ResourceDef) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { reqs });
        }
        for part in s.split(',') {
            let (field, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotEq(v.to_string()))
            } else if let Some((k, v)) = part.split_once("==") {
                (k, Op::Eq(v.to_string()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::Eq(v.to_string()))
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector {s:?}: {part:?} is not of the form field=value or field!=value"
                )));
            };
            let field = field.trim();
            let pointer = field_pointer(res, field).ok_or_else(|| {
                ApiError::bad_request(format!("field label not supported: {field}"))
            })?;
            reqs.push((
                pointer,
                Requirement {
                    key: field.to_string(),
                    op,
                },
            ));
        }
        Ok(FieldSelector { reqs })
    }

    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Does the object satisfy every requirement? Missing fields compare as `""`.
    pub fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(pointer, r)| {
            let v = match obj.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                _ => String::new(),
            };
            r.matches(Some(&v))
        })
    }
}

/// Both selectors of a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

impl Selectors {
    /// Does the object pass both?
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        let t = |s: &str| LabelSelector::parse(s).unwrap().matches(&o);
        assert!(t("app=web"));
        assert!(t("app==web,tier"));
        assert!(!t("app!=web"));
        assert!(t("app in (web, db)"));
        assert!(!t("app notin (web,db)"));
        assert!(t("!missing"));
        assert!(!t("!app"));
        assert!(t("missing!=x"));
        assert!(t("tier in (front),app"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse(",").is_err());
    }

    #[test]
    fn field_selectors() {
        let secrets = super::super::resources::def(super::super::resources::SECRETS);
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a", secrets)
            .unwrap()
            .matches(&o));
        assert!(!FieldSelector::parse("metadata.name!=a", secrets)
            .unwrap()
            .matches(&o));
        assert!(FieldSelector::parse("metadata.namespace==ns", secrets)
            .unwrap()
            .matches(&o));
        assert!(FieldSelector::parse("spec.x=y", secrets).is_err());
        assert!(FieldSelector::parse("type=Opaque", secrets).is_ok());
    }
}
