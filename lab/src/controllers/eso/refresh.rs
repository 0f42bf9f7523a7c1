//! ESO's refresh rules: when an ExternalSecret is fetched again, when it
//! is requeued, and the error back-off.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::resources::{CreationPolicy, EsSpec, EsStatus, RefreshPolicy};
use super::secret::data_hash;
use super::{DATA_HASH_ANNOTATION, DEFAULT_REQUEUE, MANAGED_LABEL, MAX_BACKOFF};

/// ESO's `syncedResourceVersion`: `<generation>-<hash of labels and annotations>`.
pub fn synced_resource_version(meta: &ObjectMeta) -> String {
    let body = json!({
        "annotations": meta.annotations.clone().unwrap_or_default(),
        "labels": meta.labels.clone().unwrap_or_default(),
    });
    let hash = Sha256::digest(body.to_string().as_bytes());
    format!(
        "{}-{}",
        meta.generation.unwrap_or(0),
        &hex::encode(hash)[..32]
    )
}

/// ESO's `shouldRefresh`: does this ES need a fetch from the provider?
pub fn should_refresh(
    spec: &EsSpec,
    status: &EsStatus,
    current_version: &str,
    now: DateTime<Utc>,
) -> bool {
    let never_synced = status.synced_resource_version.is_empty() || status.refresh_time.is_none();
    match spec.refresh_policy {
        RefreshPolicy::CreatedOnce => never_synced,
        RefreshPolicy::OnChange => {
            never_synced || status.synced_resource_version != current_version
        }
        RefreshPolicy::Periodic => {
            if spec.refresh_interval.is_zero() && !status.synced_resource_version.is_empty() {
                return false;
            }
            if status.synced_resource_version != current_version {
                return true;
            }
            match status.refresh_time {
                None => true,
                Some(t) => {
                    t + chrono::Duration::from_std(spec.refresh_interval)
                        .unwrap_or(chrono::Duration::MAX)
                        < now
                }
            }
        }
    }
}

/// ESO's requeue: `interval - (now - refreshTime)`, the whole interval when
/// that is not positive, the global requeue interval when `refreshInterval` is 0.
pub fn requeue_after(
    spec: &EsSpec,
    refresh_time: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    let interval = if spec.refresh_interval.is_zero() {
        DEFAULT_REQUEUE
    } else {
        spec.refresh_interval
    };
    if let Some(t) = refresh_time {
        if let Ok(since) = (now - t).to_std() {
            if since < interval {
                // 1 ms so the timer lands strictly after refreshTime + interval.
                return interval - since + Duration::from_millis(1);
            }
        } else {
            return interval; // refreshTime in the future: clock skew
        }
    }
    interval
}

/// Is the managed Secret as ESO left it (exists, labelled, data hash matches)?
pub fn secret_is_valid(secret: Option<&Secret>, policy: CreationPolicy) -> bool {
    if policy == CreationPolicy::None {
        return true;
    }
    let Some(s) = secret else { return false };
    let labels = s.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_LABEL).map(String::as_str) != Some("true") {
        return false;
    }
    let annotations = s.metadata.annotations.clone().unwrap_or_default();
    annotations.get(DATA_HASH_ANNOTATION) == Some(&data_hash(&s.data.clone().unwrap_or_default()))
}

/// 1 s·2ⁿ⁻¹ for the n-th consecutive failure, at most 7 minutes.
pub fn backoff_delay(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use serde_json::Value;

    use super::*;

    fn spec(v: Value) -> EsSpec {
        EsSpec::parse(&v, "es").unwrap()
    }

    fn basic() -> Value {
        json!({
            "refreshInterval": "1m",
            "secretStoreRef": {"name": "vault"},
            "data": [{"secretKey": "k", "remoteRef": {"key": "foo", "property": "p"}}]
        })
    }

    #[test]
    fn refresh_rules() {
        let now = Utc::now();
        let s = spec(basic());
        let never = EsStatus::default();
        assert!(should_refresh(&s, &never, "1-a", now));
        let fresh = EsStatus {
            refresh_time: Some(now - chrono::Duration::seconds(10)),
            synced_resource_version: "1-a".into(),
        };
        assert!(!should_refresh(&s, &fresh, "1-a", now));
        // A label/annotation change (force-sync) changes the version.
        assert!(should_refresh(&s, &fresh, "1-b", now));
        let stale = EsStatus {
            refresh_time: Some(now - chrono::Duration::seconds(61)),
            ..fresh.clone()
        };
        assert!(should_refresh(&s, &stale, "1-a", now));
        let mut once = basic();
        once["refreshPolicy"] = json!("CreatedOnce");
        let once = spec(once);
        assert!(!should_refresh(&once, &stale, "2-b", now));
        assert!(should_refresh(&once, &never, "1-a", now));
        let mut onchange = basic();
        onchange["refreshPolicy"] = json!("OnChange");
        let onchange = spec(onchange);
        assert!(!should_refresh(&onchange, &stale, "1-a", now));
        assert!(should_refresh(&onchange, &stale, "1-b", now));
        let mut zero = basic();
        zero["refreshInterval"] = json!("0");
        let zero = spec(zero);
        assert!(!should_refresh(&zero, &stale, "1-b", now));
        assert!(should_refresh(&zero, &never, "1-a", now));
    }

    #[test]
    fn requeue_is_remaining_interval() {
        let now = Utc::now();
        let s = spec(basic());
        let d = requeue_after(&s, Some(now - chrono::Duration::seconds(20)), now);
        assert!(
            d > Duration::from_secs(39) && d <= Duration::from_millis(40_001),
            "{d:?}"
        );
        assert_eq!(
            requeue_after(&s, Some(now - chrono::Duration::seconds(90)), now),
            Duration::from_secs(60)
        );
        assert_eq!(requeue_after(&s, None, now), Duration::from_secs(60));
        let mut zero = basic();
        zero["refreshInterval"] = json!("0s");
        assert_eq!(requeue_after(&spec(zero), None, now), DEFAULT_REQUEUE);
    }

    #[test]
    fn backoff_doubles_to_seven_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(9), Duration::from_secs(256));
        assert_eq!(backoff_delay(10), MAX_BACKOFF);
        assert_eq!(backoff_delay(1000), MAX_BACKOFF);
    }

    #[test]
    fn metadata_version_tracks_labels_and_annotations() {
        let mut m = ObjectMeta {
            generation: Some(3),
            ..Default::default()
        };
        let a = synced_resource_version(&m);
        assert!(a.starts_with("3-"));
        m.annotations = Some(BTreeMap::from([("force-sync".into(), "1".into())]));
        let b = synced_resource_version(&m);
        assert_ne!(a, b);
        assert_eq!(b, synced_resource_version(&m));
    }

    #[test]
    fn secret_validity_uses_label_and_data_hash() {
        let data = BTreeMap::from([("k".to_string(), ByteString(b"v".to_vec()))]);
        let mut s = Secret {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(MANAGED_LABEL.into(), "true".into())])),
                annotations: Some(BTreeMap::from([(
                    DATA_HASH_ANNOTATION.into(),
                    data_hash(&data),
                )])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        assert!(secret_is_valid(Some(&s), CreationPolicy::Owner));
        assert!(!secret_is_valid(None, CreationPolicy::Owner));
        assert!(secret_is_valid(None, CreationPolicy::None));
        s.data = Some(BTreeMap::from([(
            "k".to_string(),
            ByteString(b"edited".to_vec()),
        )]));
        assert!(!secret_is_valid(Some(&s), CreationPolicy::Owner));
    }
}
