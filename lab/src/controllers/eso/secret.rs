//! The target Secret ESO writes: created or updated per `creationPolicy`,
//! labelled as managed and annotated with a hash of its data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use sha2::{Digest, Sha224};

use super::resources::{CreationPolicy, EsSpec, ExternalSecret};
use super::{Error, API_VERSION, DATA_HASH_ANNOTATION, MANAGED_LABEL};
use crate::controllers::api::kube_call;

/// The data-hash annotation value for a Secret's data.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha224::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.0.len() as u64).to_be_bytes());
        h.update(&v.0);
    }
    hex::encode(h.finalize())
}

/// Create or update the target Secret; `Ok(true)` when something was written.
pub(super) async fn write_secret(
    secrets: &Api<Secret>,
    es: &ExternalSecret,
    spec: &EsSpec,
    existing: Option<Secret>,
    data: &BTreeMap<String, ByteString>,
) -> Result<bool, Error> {
    if spec.creation_policy == CreationPolicy::None {
        return Ok(false);
    }
    let merge = matches!(
        spec.creation_policy,
        CreationPolicy::Merge | CreationPolicy::CreateOrMerge
    );
    let owner = match spec.creation_policy {
        CreationPolicy::Owner => Some(OwnerReference {
            api_version: API_VERSION.into(),
            kind: "ExternalSecret".into(),
            name: es.name_any(),
            uid: es.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }),
        _ => None,
    };
    match existing {
        None => {
            if spec.creation_policy == CreationPolicy::Merge {
                return Err(Error::SecretMissing(spec.target_name.clone()));
            }
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(spec.target_name.clone()),
                    namespace: es.namespace(),
                    labels: Some(BTreeMap::from([(
                        MANAGED_LABEL.to_string(),
                        "true".to_string(),
                    )])),
                    annotations: Some(BTreeMap::from([(
                        DATA_HASH_ANNOTATION.to_string(),
                        data_hash(data),
                    )])),
                    owner_references: owner.map(|o| vec![o]),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data.clone()),
                ..Default::default()
            };
            kube_call(
                "create target Secret",
                secrets.create(&PostParams::default(), &secret),
            )
            .await?;
            Ok(true)
        }
        Some(old) => {
            let mut new = old.clone();
            let mut new_data = if merge {
                old.data.clone().unwrap_or_default()
            } else {
                BTreeMap::new()
            };
            new_data.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
            new.data = Some(new_data.clone());
            new.string_data = None;
            new.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(MANAGED_LABEL.into(), "true".into());
            new.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DATA_HASH_ANNOTATION.into(), data_hash(&new_data));
            if let Some(o) = owner {
                let refs = new.metadata.owner_references.get_or_insert_with(Vec::new);
                if !refs.iter().any(|r| r.uid == o.uid) {
                    refs.push(o);
                }
            }
            if new == old {
                return Ok(false);
            }
            kube_call(
                "update target Secret",
                secrets.replace(&spec.target_name, &PostParams::default(), &new),
            )
            .await?;
            Ok(true)
        }
    }
}
