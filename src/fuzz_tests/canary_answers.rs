//! Fuzzing the canary's `/digest` answers.

use super::*;

fn good_answer() -> Value {
    json!({
        "digest": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "source": "env",
        "observed_at": "2025-01-01T00:00:00.123456789Z",
        "started_at": "2025-01-01T00:00:00Z",
        "error": null,
        "changed": true
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn canary_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_answer(&body);
    }

    #[test]
    fn canary_arbitrary_json(doc in any_json()) {
        let _ = parse_answer(&serde_json::to_vec(&doc).unwrap());
    }

    /// One field of a good answer changed: a rejection names that field.
    #[test]
    fn canary_mutated_field(
        field in proptest::sample::select(vec!["digest", "source", "observed_at", "started_at", "error", "changed"]),
        value in prop::option::of(any_json()),
    ) {
        let mut doc = good_answer();
        match &value {
            Some(v) => doc[field] = v.clone(),
            None => { doc.as_object_mut().unwrap().remove(field); }
        }
        if let Err(e) = parse_answer(&serde_json::to_vec(&doc).unwrap()) {
            prop_assert!(e.contains(&format!("`{field}`")), "changed {field} to {value:?}: {e}");
            prop_assert!(e.len() < 400, "error echoes too much: {e}");
        }
    }

    /// The canary's `wait` query parameter (outside data on the canary side).
    #[test]
    fn canary_wait_parameter(w in prop::option::of(tricky_string())) {
        if let Ok(d) = crate::canary::server::parse_wait(w.as_deref()) {
            prop_assert!(d <= Duration::from_secs(3600));
        }
    }
}
