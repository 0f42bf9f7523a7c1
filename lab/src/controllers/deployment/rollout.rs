//! The rollout arithmetic, pure: the template hash, `maxSurge` and
//! `maxUnavailable` resolved, how far the new ReplicaSet may scale up and
//! the old ones down (kube-controller-manager's `rolloutRolling`).

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::controllers::workload::seconds;

/// A stable, short, lower-case alphanumeric hash of a pod template (the
/// alphabet Kubernetes uses for generated names: no vowels, no look-alikes).
pub fn pod_template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut n = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

/// An int-or-percent scaled against `total`; percentages round up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Option<i32> {
    match v {
        IntOrString::Int(i) => Some(*i),
        IntOrString::String(s) => {
            let p: i64 = s.trim().strip_suffix('%')?.trim().parse().ok()?;
            let num = p * i64::from(total);
            let r = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            i32::try_from(r).ok()
        }
    }
}

/// `(maxSurge, maxUnavailable)` resolved against the desired replicas:
/// defaults 25%/25%, surge rounds up, unavailable down, never both zero.
pub fn resolve_fenceposts(
    surge: Option<&IntOrString>,
    unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let quarter = IntOrString::String("25%".into());
    let s = scaled_value(surge.unwrap_or(&quarter), desired, true)
        .or_else(|| scaled_value(&quarter, desired, true))
        .unwrap_or(1)
        .max(0);
    let mut u = scaled_value(unavailable.unwrap_or(&quarter), desired, false)
        .or_else(|| scaled_value(&quarter, desired, false))
        .unwrap_or(0)
        .max(0);
    if s == 0 && u == 0 {
        u = 1;
    }
    (s, u)
}

/// What the rollout arithmetic needs from a ReplicaSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsView {
    /// Name.
    pub name: String,
    /// `spec.replicas`.
    pub spec_replicas: i32,
    /// `status.replicas`.
    pub status_replicas: i32,
    /// `status.readyReplicas`.
    pub ready: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// Creation time (unix seconds), for oldest-first ordering.
    pub created: i64,
}

impl RsView {
    /// The Pods this ReplicaSet may still have: its spec, or more while a
    /// scale-down is not yet reflected in its status. The real controller
    /// sums `spec.replicas` only, so the ReplicaSet controller's deletes
    /// (old) and creates (new) can cross and briefly exceed `maxSurge`; the
    /// lab waits for the old Pods to be gone before surging again.
    pub fn replicas_upper_bound(&self) -> i32 {
        self.spec_replicas.max(self.status_replicas)
    }

    pub(super) fn of(rs: &ReplicaSet) -> RsView {
        let st = rs.status.clone().unwrap_or_default();
        RsView {
            name: rs.name_any(),
            spec_replicas: rs.spec.replicas.unwrap_or(1),
            status_replicas: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            created: rs
                .metadata
                .creation_timestamp
                .as_ref()
                .map(seconds)
                .unwrap_or(0),
        }
    }
}

/// `NewRSNewReplicas` for a rolling update: scale the new ReplicaSet up as
/// far as `replicas + maxSurge` total allows.
pub fn new_rs_target(desired: i32, surge: i32, all_spec_replicas: i32, new_spec: i32) -> i32 {
    if new_spec >= desired {
        return desired;
    }
    let max_total = desired + surge;
    if all_spec_replicas >= max_total {
        return new_spec;
    }
    let up = (max_total - all_spec_replicas).min(desired - new_spec);
    new_spec + up
}

/// `reconcileOldReplicaSets`: how far each old ReplicaSet may be scaled
/// down now (unhealthy replicas first, then down to `replicas -
/// maxUnavailable` available). Returns `(index into old, new spec.replicas)`.
pub fn old_scale_down(
    old: &[RsView],
    new: Option<&RsView>,
    desired: i32,
    max_unavailable: i32,
) -> Vec<(usize, i32)> {
    let old_count: i32 = old.iter().map(|r| r.spec_replicas).sum();
    if old_count == 0 {
        return Vec::new();
    }
    let all_count = old_count + new.map(|n| n.spec_replicas).unwrap_or(0);
    let min_available = desired - max_unavailable;
    let new_unavailable = new
        .map(|n| n.spec_replicas - n.available)
        .unwrap_or(0)
        .max(0);
    let max_scaled_down = all_count - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by_key(|i| (old[*i].created, old[*i].name.clone()));
    let mut spec: Vec<i32> = old.iter().map(|r| r.spec_replicas).collect();
    // Phase 1: drop old replicas that are not available anyway.
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = spec[i] - old[i].available.min(spec[i]);
        if spec[i] == 0 || unhealthy <= 0 {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(unhealthy);
        spec[i] -= n;
        cleaned += n;
    }
    // Phase 2: scale down available old replicas while availability allows.
    let available: i32 =
        old.iter().map(|r| r.available).sum::<i32>() + new.map(|n| n.available).unwrap_or(0);
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for &i in &order {
            if done >= total {
                break;
            }
            if spec[i] == 0 {
                continue;
            }
            let n = spec[i].min(total - done);
            spec[i] -= n;
            done += n;
        }
    }
    (0..old.len())
        .filter(|i| spec[*i] != old[*i].spec_replicas)
        .map(|i| (i, spec[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[test]
    fn template_hash_is_stable_and_short() {
        let mut tpl = PodTemplateSpec::default();
        let a = pod_template_hash(&tpl);
        assert_eq!(a, pod_template_hash(&tpl.clone()));
        assert_eq!(a.len(), 10);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        tpl.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                "kubectl.kubernetes.io/restartedAt".into(),
                "x".into(),
            )])),
            ..Default::default()
        });
        assert_ne!(a, pod_template_hash(&tpl));
    }

    #[test]
    fn fenceposts() {
        assert_eq!(resolve_fenceposts(None, None, 4), (1, 1));
        assert_eq!(resolve_fenceposts(None, None, 3), (1, 0));
        assert_eq!(resolve_fenceposts(None, None, 10), (3, 2));
        assert_eq!(resolve_fenceposts(None, None, 1), (1, 0));
        let zero = IntOrString::Int(0);
        assert_eq!(resolve_fenceposts(Some(&zero), Some(&zero), 3), (0, 1));
        let half = IntOrString::String("50%".into());
        assert_eq!(resolve_fenceposts(Some(&half), Some(&half), 3), (2, 1));
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(0)), 3),
            (2, 0)
        );
        assert_eq!(
            scaled_value(&IntOrString::String("bad".into()), 4, true),
            None
        );
    }

    #[test]
    fn new_rs_scale_up_respects_surge() {
        // 3 desired, surge 1: old RS still has 3 → new may go to 1.
        assert_eq!(new_rs_target(3, 1, 3, 0), 1);
        assert_eq!(new_rs_target(3, 1, 4, 1), 1);
        assert_eq!(new_rs_target(3, 1, 3, 1), 2);
        assert_eq!(new_rs_target(3, 0, 3, 0), 0);
        assert_eq!(new_rs_target(3, 1, 3, 3), 3);
    }

    fn view(name: &str, spec: i32, avail: i32, created: i64) -> RsView {
        RsView {
            name: name.into(),
            spec_replicas: spec,
            status_replicas: spec,
            ready: avail,
            available: avail,
            created,
        }
    }

    #[test]
    fn old_scale_down_keeps_min_available() {
        // desired 3, maxUnavailable 0: new has 1 available → old may drop 1.
        let old = [view("old", 3, 3, 1)];
        let new = view("new", 1, 1, 2);
        assert_eq!(old_scale_down(&old, Some(&new), 3, 0), vec![(0, 2)]);
        // new not yet available: nothing may go.
        let new = view("new", 1, 0, 2);
        assert!(old_scale_down(&old, Some(&new), 3, 0).is_empty());
        // Unhealthy old replicas go first, as far as the surge headroom allows
        // (4 Pods, 2 must stay available, 1 new one unavailable → 1 may go).
        let old = [view("old", 3, 1, 1)];
        let new = view("new", 1, 0, 2);
        assert_eq!(old_scale_down(&old, Some(&new), 3, 1), vec![(0, 2)]);
    }

    /// Simulate a whole rolling update: each step the controller acts, then
    /// Pods appear for spec and become available. Checks the invariants.
    #[test]
    fn rolling_update_converges_within_bounds() {
        for (desired, surge, unavail) in [
            (3, 1, 0),
            (3, 1, 1),
            (4, 2, 1),
            (5, 0, 1),
            (1, 1, 0),
            (10, 3, 2),
        ] {
            let mut old = vec![view("old", desired, desired, 1)];
            let mut new = view("new", 0, 0, 2);
            for _ in 0..100 {
                let all_spec = old[0].spec_replicas + new.spec_replicas;
                let target = new_rs_target(desired, surge, all_spec, new.spec_replicas);
                if target > new.spec_replicas {
                    new.spec_replicas = target;
                } else {
                    for (i, r) in old_scale_down(&old, Some(&new), desired, unavail) {
                        old[i].spec_replicas = r;
                    }
                }
                // Pods follow spec immediately (scale-down kills, scale-up starts
                // unavailable, then becomes available next step).
                assert!(old[0].spec_replicas + new.spec_replicas <= desired + surge);
                old[0].available = old[0].available.min(old[0].spec_replicas);
                assert!(
                    old[0].available + new.available >= desired - unavail,
                    "{desired} {surge} {unavail}"
                );
                new.available = new.spec_replicas;
                if new.spec_replicas == desired && old[0].spec_replicas == 0 {
                    break;
                }
            }
            assert_eq!(
                (new.spec_replicas, old[0].spec_replicas),
                (desired, 0),
                "{desired} {surge} {unavail}"
            );
        }
    }
}
