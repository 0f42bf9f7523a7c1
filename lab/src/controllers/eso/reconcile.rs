//! One reconcile of an ExternalSecret: refresh check, fetch, Secret write,
//! status write, each recorded as ground truth.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use super::provider::fetch;
use super::refresh::{requeue_after, secret_is_valid, should_refresh, synced_resource_version};
use super::resources::{EsSpec, EsStatus, ExternalSecret};
use super::secret::write_secret;
use super::status::{ready_conditions, write_error_status};
use super::{Error, State};
use crate::controllers::api::kube_call;
use crate::faults::{Fault, Knob};
use crate::truth::{self, step};

pub(super) async fn reconcile(es: Arc<ExternalSecret>, st: Arc<State>) -> Result<Action, Error> {
    let knobs = &st.ctx.knobs;
    if knobs.is_on(Fault::EsoStall) {
        // Resumed by the knob-change trigger when the fault is switched off.
        return Ok(Action::await_change());
    }
    let ns = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let key = (ns.clone(), name.clone());
    let version = synced_resource_version(&es.metadata);
    if let Some(wait) = st.backoff.remaining(&key, &version) {
        return Ok(Action::requeue(wait));
    }
    let start = Utc::now();
    let spec = match EsSpec::parse(&es.spec, &name) {
        Ok(s) => s,
        Err(e) => {
            // A real cluster rejects this at admission; here: log and skip.
            tracing::warn!(namespace = %ns, es = %name, error = %e, "skipping invalid ExternalSecret");
            return Ok(Action::await_change());
        }
    };
    let status = EsStatus::parse(&es.status);
    let secrets: Api<Secret> = Api::namespaced(st.ctx.client.clone(), &ns);
    let existing = kube_call("get target Secret", secrets.get_opt(&spec.target_name)).await?;
    if !should_refresh(&spec, &status, &version, start)
        && secret_is_valid(existing.as_ref(), spec.creation_policy)
    {
        return Ok(Action::requeue(requeue_after(
            &spec,
            status.refresh_time,
            start,
        )));
    }

    knobs.delay(Knob::EsoLatency).await;
    if knobs.is_on(Fault::EsoStall) {
        return Ok(Action::await_change());
    }
    let data = match fetch(&st, &spec, &ns).await {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(namespace = %ns, es = %name, error = %e, "ExternalSecret sync failed");
            write_error_status(&st, &es, "could not get secret data from provider").await?;
            return Err(e);
        }
    };
    for v in data.values() {
        st.ctx
            .truth
            .record(step::ESO_STORE_READ, &ns, &name, Some(&truth::digest(&v.0)));
    }

    // Re-read: the fetch took time, and an edit meanwhile must not be lost.
    let existing = kube_call("get target Secret", secrets.get_opt(&spec.target_name)).await?;
    match write_secret(&secrets, &es, &spec, existing, &data).await {
        Ok(true) => {
            for v in data.values() {
                st.ctx.truth.record(
                    step::ESO_SECRET_WRITTEN,
                    &ns,
                    &spec.target_name,
                    Some(&truth::digest(&v.0)),
                );
            }
        }
        Ok(false) => {}
        Err(e) => {
            let msg = match e {
                Error::SecretMissing(_) => "secret does not exist and creationPolicy is Merge",
                _ => "could not update Secret",
            };
            write_error_status(&st, &es, msg).await?;
            return Err(e);
        }
    }

    knobs.delay(Knob::EsoStatusLatency).await;
    let refresh_time = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let conditions = ready_conditions(&es.status, true, "SecretSynced", "secret synced", start);
    let patch = json!({
        "status": {
            "refreshTime": refresh_time,
            "syncedResourceVersion": version,
            "binding": {"name": spec.target_name},
            "conditions": conditions,
        }
    });
    let api: Api<ExternalSecret> = Api::namespaced(st.ctx.client.clone(), &ns);
    kube_call(
        "patch ExternalSecret status",
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await?;
    for v in data.values() {
        st.ctx.truth.record(
            step::ESO_STATUS_SYNCED,
            &ns,
            &name,
            Some(&truth::digest(&v.0)),
        );
    }
    st.backoff.reset(&key);
    let written = DateTime::parse_from_rfc3339(&refresh_time)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    Ok(Action::requeue(requeue_after(&spec, written, Utc::now())))
}
