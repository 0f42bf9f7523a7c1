//! The ExternalSecret status: the Ready condition, and the error status
//! written when a sync fails.

use chrono::{DateTime, SecondsFormat, Utc};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::resources::ExternalSecret;
use super::{Error, State};
use crate::controllers::api::kube_call;
use crate::truth::step;

/// The status `conditions` with Ready set; lastTransitionTime moves only
/// when the condition's status flips.
pub(super) fn ready_conditions(
    old_status: &Value,
    ok: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> Vec<Value> {
    let status = if ok { "True" } else { "False" };
    let old: Vec<Value> = old_status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut transition = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut out: Vec<Value> = Vec::new();
    for c in old {
        if c.get("type").and_then(Value::as_str) == Some("Ready") {
            if c.get("status").and_then(Value::as_str) == Some(status) {
                if let Some(t) = c.get("lastTransitionTime").and_then(Value::as_str) {
                    transition = t.to_string();
                }
            }
        } else {
            out.push(c);
        }
    }
    out.push(json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }));
    out
}

pub(super) async fn write_error_status(
    st: &State,
    es: &ExternalSecret,
    message: &str,
) -> Result<(), Error> {
    let ns = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let conditions = ready_conditions(&es.status, false, "SecretSyncedError", message, Utc::now());
    let patch = json!({"status": {"conditions": conditions}});
    let api: Api<ExternalSecret> = Api::namespaced(st.ctx.client.clone(), &ns);
    kube_call(
        "patch ExternalSecret status",
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    st.ctx
        .truth
        .record(step::ESO_STATUS_ERROR, &ns, &name, None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_condition_keeps_transition_time() {
        let old = json!({"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
                                         {"type": "Other", "status": "True"}]});
        let c = ready_conditions(&old, true, "SecretSynced", "secret synced", Utc::now());
        assert_eq!(c.len(), 2);
        assert_eq!(c[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        let c = ready_conditions(&old, false, "SecretSyncedError", "x", Utc::now());
        assert_ne!(c[1]["lastTransitionTime"], "2020-01-01T00:00:00Z");
        assert_eq!(c[1]["reason"], "SecretSyncedError");
    }
}
