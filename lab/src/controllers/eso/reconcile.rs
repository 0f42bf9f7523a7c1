//! One reconcile of an ExternalSecret: refresh check, fetch, Secret write,
//! status write, each recorded as ground truth.

use std::sync::Arc;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::ResourceExt;
use serde_json::json;

use super::provider::fetch;
use super::refresh::{requeue_after, secret_is_valid, should_refresh, synced_resource_version};
use super::resources::{EsSpec, EsStatus, ExternalSecret};
use super::secret::write_secret;
use super::status::{ready_conditions, update_status, write_error_status, Written};
use super::{Error, State, FINALIZER};
use crate::controllers::api::kube_call;
use crate::faults::{Fault, Knob};
use crate::truth::{self, step};

/// A status update that met a conflict is retried this soon (by then the
/// watch has brought the newer object).
const CONFLICT_REQUEUE: Duration = Duration::from_millis(100);

/// Adds ESO's finalizer when missing (returning the updated object), or,
/// when the ExternalSecret is being deleted, removes it (returning `None`:
/// nothing more to do).
async fn finalizer(
    st: &State,
    es: Arc<ExternalSecret>,
) -> Result<Option<Arc<ExternalSecret>>, Error> {
    let has = es
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let deleting = es.metadata.deletion_timestamp.is_some();
    match (deleting, has) {
        (false, true) => return Ok(Some(es)),
        (true, false) => return Ok(None),
        _ => {}
    }
    let mut obj = (*es).clone();
    let fin = obj.metadata.finalizers.get_or_insert_with(Vec::new);
    if deleting {
        fin.retain(|f| f != FINALIZER);
    } else {
        fin.push(FINALIZER.to_string());
    }
    let api: Api<ExternalSecret> =
        Api::namespaced(st.ctx.client.clone(), &es.namespace().unwrap_or_default());
    match kube_call(
        "update ExternalSecret finalizers",
        api.replace(&es.name_any(), &PostParams::default(), &obj),
    )
    .await
    {
        Ok(updated) if !deleting => Ok(Some(Arc::new(updated))),
        Ok(_) => Ok(None),
        // Changed meanwhile: the watch brings the new version and another pass.
        Err(e) if e.api_code() == Some(409) => Ok(None),
        Err(e) if deleting && e.api_code() == Some(404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn reconcile(es: Arc<ExternalSecret>, st: Arc<State>) -> Result<Action, Error> {
    let knobs = &st.ctx.knobs;
    if knobs.is_on(Fault::EsoStall) {
        // Resumed by the knob-change trigger when the fault is switched off.
        return Ok(Action::await_change());
    }
    let ns = es.namespace().unwrap_or_default();
    let name = es.name_any();
    let key = (ns.clone(), name.clone());
    // ESO's finalizer: added to every ExternalSecret before its first sync
    // (one more event), removed when it is deleted.
    let es = match finalizer(&st, es).await? {
        Some(es) => es,
        None => return Ok(Action::await_change()),
    };
    let version = synced_resource_version(&es.metadata);
    if let Some(wait) = st.backoff.remaining(&key, &version) {
        return Ok(Action::requeue(wait));
    }
    // ESO's own clock (skewed by the `eso-clock-skew` knob): refreshTime
    // and the refresh decisions use it; ground truth stays on the true clock.
    let start = st.now();
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
            // Debug: the whole cause chain (reqwest's message alone does not say
            // whether a connect, a timeout or a reset failed).
            tracing::info!(namespace = %ns, es = %name, error = ?e, "ExternalSecret sync failed");
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
        Err(Error::SecretMissing(_)) => {
            // Merge into a Secret that does not exist: ESO marks the sync
            // done (Ready=True/SecretMissing, refreshTime updated) and writes
            // nothing else.
            let conditions = ready_conditions(
                &es.status,
                true,
                "SecretMissing",
                "secret will not be created, creationPolicy is Merge and the secret does not exist",
                start,
            );
            let refresh_time = start.to_rfc3339_opts(SecondsFormat::Secs, true);
            let written = update_status(&st, &es, |s| {
                s.insert("refreshTime".into(), json!(refresh_time));
                s.insert("syncedResourceVersion".into(), json!(version));
                s.insert("conditions".into(), json!(conditions));
            })
            .await?;
            if written == Written::Conflict {
                return Ok(Action::requeue(CONFLICT_REQUEUE));
            }
            st.backoff.reset(&key);
            return Ok(Action::requeue(requeue_after(&spec, Some(start), st.now())));
        }
        Err(e) => {
            write_error_status(&st, &es, "could not update Secret").await?;
            return Err(e);
        }
    }

    knobs.delay(Knob::EsoStatusLatency).await;
    let refresh_time = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let conditions = ready_conditions(&es.status, true, "SecretSynced", "secret synced", start);
    let written = update_status(&st, &es, |s| {
        s.insert("refreshTime".into(), json!(refresh_time));
        s.insert("syncedResourceVersion".into(), json!(version));
        s.insert("binding".into(), json!({"name": spec.target_name}));
        s.insert("conditions".into(), json!(conditions));
    })
    .await?;
    match written {
        Written::Conflict => return Ok(Action::requeue(CONFLICT_REQUEUE)),
        Written::Unchanged => {}
        Written::Yes => {
            for v in data.values() {
                st.ctx.truth.record(
                    step::ESO_STATUS_SYNCED,
                    &ns,
                    &name,
                    Some(&truth::digest(&v.0)),
                );
            }
        }
    }
    st.backoff.reset(&key);
    let written = DateTime::parse_from_rfc3339(&refresh_time)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    Ok(Action::requeue(requeue_after(&spec, written, st.now())))
}
