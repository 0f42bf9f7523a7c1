//! Mutating admission webhooks the lab runs in process on CREATE. Today:
//! the Bank-Vaults Pod webhook ([`bankvaults::mutate_pod`]), with its two
//! failure modes as faults: `webhook-down` (`failurePolicy: Fail`, the Pod
//! is refused, checked before this in the create path) and
//! `webhook-fail-open` (`failurePolicy: Ignore`, the chart's default for
//! Pods: admitted unmutated).

use serde_json::Value;

use super::resources::ResourceDef;
use super::Shared;
use crate::controllers::bankvaults;
use crate::faults::Fault;

/// The object to store after the mutating webhooks ran on `body`.
pub(super) fn admit(shared: &Shared, def: &ResourceDef, mut body: Value) -> Value {
    if def.kind != "Pod" {
        return body;
    }
    if shared.knobs.is_on(Fault::WebhookFailOpen) {
        tracing::info!("bank-vaults webhook unreachable; failurePolicy Ignore admits the Pod unmutated (webhook-fail-open)");
        return body;
    }
    bankvaults::mutate_pod(&mut body);
    body
}
