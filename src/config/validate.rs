//! Validation of a parsed config: everything serde cannot check, every
//! problem found (not the first), each naming its field path.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

impl Config {
    /// Every validation problem, in file order (empty when the config is valid).
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if let Some(t) = self.kubernetes.request_timeout {
            p.positive("kubernetes.request_timeout", t);
        }
        if self.probes.is_empty() {
            p.push("probes", "at least one probe is required");
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let at = format!("probes[{i}]");
            if let Some(first) = seen.insert(probe.name.as_str(), i) {
                // Keep the first index so a third duplicate still names it.
                seen.insert(probe.name.as_str(), first);
                p.push(
                    format!("{at}.name"),
                    format!(
                        "duplicate probe name {:?} (also probes[{first}])",
                        probe.name
                    ),
                );
            }
            probe.check(&at, &mut p);
        }
        if !self.allow_shared_objects {
            self.check_shared(&mut p);
        }
        p.0
    }

    /// Two probes writing one store path, or following one ExternalSecret
    /// or Deployment, would see each other's runs as their own.
    fn check_shared(&self, p: &mut Problems) {
        let mut seen: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (i, probe) in self.probes.iter().enumerate() {
            let chain = &probe.chain;
            let ns = chain.namespace.as_str();
            let mut keys = vec![(
                "store.path",
                format!(
                    "{} {}/{}",
                    probe.store.address,
                    probe.store.mount,
                    probe.store.path.trim_matches('/')
                ),
            )];
            if let Some(es) = &chain.external_secret {
                keys.push(("chain.external_secret", format!("{ns}/{es}")));
            }
            if let Some(r) = &chain.rollout {
                keys.push(("chain.rollout.deployment", format!("{ns}/{}", r.deployment)));
            }
            for (field, key) in keys {
                if let Some(first) = seen.get(&(field, key.clone())) {
                    p.push(
                        format!("probes[{i}].{field}"),
                        format!("also used by probes[{first}]: two probes would take each other's runs for their own"),
                    );
                } else {
                    seen.insert((field, key), i);
                }
            }
        }
    }
}

impl ProbeConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        check_name(&format!("{at}.name"), &self.name, p);

        match (&self.schedule, self.interval) {
            (Some(_), Some(_)) => p.push(
                format!("{at}.schedule"),
                "set exactly one of `schedule` and `interval`, not both",
            ),
            (None, None) => p.push(
                format!("{at}.schedule"),
                "set exactly one of `schedule` (cron) and `interval` (e.g. `1m`)",
            ),
            (Some(expr), None) => {
                if let Err(e) = expr.schedule() {
                    p.push(format!("{at}.schedule"), e.to_string());
                }
            }
            (None, Some(interval)) => {
                if interval < MIN_INTERVAL {
                    p.push(
                        format!("{at}.interval"),
                        format!(
                            "{} is below the minimum of 1s",
                            humantime::format_duration(interval)
                        ),
                    );
                }
            }
        }

        let deadline = self.deadline();
        if let Some(d) = self.deadline {
            if p.positive(&format!("{at}.deadline"), d) && d > MAX_DEADLINE {
                p.push(
                    format!("{at}.deadline"),
                    format!(
                        "{} exceeds the maximum of {}",
                        humantime::format_duration(d),
                        humantime::format_duration(MAX_DEADLINE)
                    ),
                );
            }
        }
        if let Some(b) = self.blocked_for {
            if p.positive(&format!("{at}.blocked_for"), b) && b >= deadline {
                p.push(
                    format!("{at}.blocked_for"),
                    format!(
                        "{} is not below the run deadline ({}): a blocked run would wait it out",
                        humantime::format_duration(b),
                        humantime::format_duration(deadline)
                    ),
                );
            }
        }
        let stages = self.stages();
        let have = stage_list(&stages);
        for (stage, d) in &self.stage_deadlines {
            let field = format!("{at}.stage_deadlines.{stage}");
            if *stage == Stage::EndToEnd {
                p.push(field, format!("use `{at}.deadline` for the whole run"));
                continue;
            }
            if !stages.contains(stage) {
                p.push(
                    field,
                    format!("stage {stage} is not part of this probe's chain (it has: {have})"),
                );
                continue;
            }
            if p.positive(&field, d.0) && d.0 > deadline {
                p.push(
                    field,
                    format!(
                        "{} exceeds the run deadline of {}",
                        humantime::format_duration(d.0),
                        humantime::format_duration(deadline)
                    ),
                );
            }
        }
        for (stage, d) in &self.slo {
            let field = format!("{at}.slo.{stage}");
            if !self.has_stage(*stage) {
                p.push(
                    field,
                    format!("stage {stage} is not part of this probe's chain (it has: {have}, end_to_end)"),
                );
                continue;
            }
            p.positive(&field, d.0);
        }

        self.store.check(&format!("{at}.store"), p);
        self.chain.check(&format!("{at}.chain"), p);
    }
}

fn stage_list(stages: &[Stage]) -> String {
    stages
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StoreConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        match reqwest::Url::parse(&self.address) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => p.push(
                format!("{at}.address"),
                format!("{:?} must be an http:// or https:// URL", self.address),
            ),
            Ok(url) if url.host_str().is_none_or(str::is_empty) => p.push(
                format!("{at}.address"),
                format!("{:?} has no host", self.address),
            ),
            Ok(_) => {}
            Err(e) => p.push(
                format!("{at}.address"),
                format!("{:?} is not a URL: {e}", self.address),
            ),
        }
        check_kv_path(&format!("{at}.mount"), &self.mount, p);
        let before = p.0.len();
        check_kv_path(&format!("{at}.path"), &self.path, p);
        check_kv_path(&format!("{at}.path_prefix"), &self.path_prefix, p);
        if p.0.len() == before && !self.path_in_prefix() {
            p.push(
                format!("{at}.path"),
                format!(
                    "{:?} is outside the canary prefix {:?} (`{at}.path_prefix`): the prober refuses to write there",
                    self.path, self.path_prefix
                ),
            );
        }
        if let Some(n) = self.max_versions {
            if n == 0 || n > MAX_MAX_VERSIONS {
                p.push(
                    format!("{at}.max_versions"),
                    format!("{n} must be 1-{MAX_MAX_VERSIONS}"),
                );
            }
        }
        p.non_empty(&format!("{at}.key"), &self.key);
        if let Some(ns) = &self.namespace {
            p.non_empty(&format!("{at}.namespace"), ns);
        }
        if let Some(ca) = &self.ca_bundle {
            p.non_empty_path(&format!("{at}.ca_bundle"), ca);
        }
        if let Some(t) = self.timeout {
            p.positive(&format!("{at}.timeout"), t);
        }
        let auth = format!("{at}.auth");
        match &self.auth {
            StoreAuth::Token(src) => src.check(&format!("{auth}.token"), p),
            StoreAuth::Kubernetes {
                role,
                mount,
                token_file,
            } => {
                p.non_empty(&format!("{auth}.kubernetes.role"), role);
                check_kv_path(&format!("{auth}.kubernetes.mount"), mount, p);
                p.non_empty_path(&format!("{auth}.kubernetes.token_file"), token_file);
            }
            StoreAuth::Approle {
                mount,
                role_id,
                secret_id,
            } => {
                check_kv_path(&format!("{auth}.approle.mount"), mount, p);
                p.non_empty(&format!("{auth}.approle.role_id"), role_id);
                secret_id.check(&format!("{auth}.approle.secret_id"), p);
            }
        }
    }
}

impl TokenSource {
    fn check(&self, at: &str, p: &mut Problems) {
        match self {
            TokenSource::File(path) => p.non_empty_path(&format!("{at}.file"), path),
            TokenSource::Env(var) => {
                let field = format!("{at}.env");
                if p.non_empty(&field, var) && (var.contains('=') || var.contains('\0')) {
                    p.push(
                        field,
                        format!("{var:?} is not an environment variable name"),
                    );
                }
            }
        }
    }
}

impl ChainConfig {
    fn check(&self, at: &str, p: &mut Problems) {
        check_dns_label(&format!("{at}.namespace"), &self.namespace, p);
        if self.force_sync && self.external_secret.is_none() {
            p.push(
                format!("{at}.force_sync"),
                "needs `external_secret`: force-sync annotates the ExternalSecret",
            );
        }
        if let Some(es) = &self.external_secret {
            check_dns_subdomain(&format!("{at}.external_secret"), es, p);
            if self.secret.is_none() {
                p.push(
                    format!("{at}.secret"),
                    "required when `external_secret` is set: the Secret ESO writes",
                );
            }
        }
        if let Some(secret) = &self.secret {
            check_dns_subdomain(&format!("{at}.secret.name"), &secret.name, p);
            p.non_empty(&format!("{at}.secret.key"), &secret.key);
        }
        if let Some(rollout) = &self.rollout {
            check_dns_subdomain(&format!("{at}.rollout.deployment"), &rollout.deployment, p);
            match rollout.trigger {
                Trigger::Reloader if self.secret.is_none() => p.push(
                    format!("{at}.rollout.trigger"),
                    "`reloader` reacts to a Secret change: set `secret` (or use `restart` for webhook injection)",
                ),
                Trigger::Restart if self.external_secret.is_some() => p.push(
                    format!("{at}.rollout.trigger"),
                    "`restart` on an ESO chain restarts before ESO synced (Pods would read the old Secret): use `reloader`",
                ),
                Trigger::None if self.canary.source != CanarySource::File => p.push(
                    format!("{at}.rollout.trigger"),
                    "`none` only works with `canary.source: file` (an env var changes only in a new Pod)",
                ),
                _ => {}
            }
        } else if self.canary.source == CanarySource::Env {
            p.push(
                format!("{at}.rollout"),
                "required with `canary.source: env`: an env var changes only in a new Pod (trigger `reloader` or `restart`)",
            );
        }
        // (Without a rollout and with an env canary, the problem above says it.)
        let rollout_reported = self.rollout.is_none() && self.canary.source == CanarySource::Env;
        if !rollout_reported
            && self.external_secret.is_none()
            && self.secret.is_none()
            && !matches!(
                self.rollout,
                Some(RolloutConfig {
                    trigger: Trigger::Restart,
                    ..
                })
            )
        {
            p.push(
                format!("{at}.rollout"),
                "a chain without ESO is the webhook-injection (Bank-Vaults) chain and needs `rollout.trigger: restart`",
            );
        }
        let canary = format!("{at}.canary");
        if let Err(e) = check_label_selector(&self.canary.selector) {
            p.push(format!("{canary}.selector"), e);
        }
        if self.canary.port == 0 {
            p.push(format!("{canary}.port"), "must be 1-65535");
        }
        if let Some(t) = self.canary.timeout {
            p.positive(&format!("{canary}.timeout"), t);
        }
    }
}

/// Accumulates problems; helpers return whether the value passed.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    fn positive(&mut self, field: &str, d: Duration) -> bool {
        if d.is_zero() {
            self.push(field, "must be greater than 0");
            false
        } else {
            true
        }
    }

    fn non_empty(&mut self, field: &str, s: &str) -> bool {
        if s.trim().is_empty() {
            self.push(field, "must not be empty");
            false
        } else {
            true
        }
    }

    fn non_empty_path(&mut self, field: &str, path: &std::path::Path) {
        if path.as_os_str().is_empty() {
            self.push(field, "must not be empty");
        }
    }
}

fn check_name(field: &str, name: &str, p: &mut Problems) {
    if name.is_empty() {
        p.push(field, "must not be empty");
    } else if name.len() > MAX_NAME_LEN || !is_probe_name(name) {
        p.push(
            field,
            format!(
                "{name:?} must match [a-z0-9]([-a-z0-9_]*[a-z0-9])? and be at most {MAX_NAME_LEN} characters (it is a metric label value)"
            ),
        );
    }
}

fn is_probe_name(name: &str) -> bool {
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: &u8| edge(c) || *c == b'-' || *c == b'_';
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => edge(first) && edge(last) && b.iter().all(inner),
        _ => false,
    }
}

/// A KV mount or path: relative, no `..`, no empty segments.
fn check_kv_path(field: &str, path: &str, p: &mut Problems) {
    if path.is_empty() {
        p.push(field, "must not be empty");
    } else if path.starts_with('/') {
        p.push(field, format!("{path:?} must not start with `/`"));
    } else if path.split('/').any(|seg| seg == ".." || seg == ".") {
        p.push(
            field,
            format!("{path:?} must not contain `.` or `..` segments"),
        );
    } else if path.trim_end_matches('/').split('/').any(str::is_empty) {
        p.push(field, format!("{path:?} has an empty segment (`//`)"));
    }
}

/// RFC 1123 label: namespaces.
fn check_dns_label(field: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        p.push(
            field,
            format!("{name:?} is not a valid Kubernetes name (RFC 1123 label)"),
        );
    }
}

/// RFC 1123 subdomain: Secret, ExternalSecret and Deployment names.
fn check_dns_subdomain(field: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if !ok {
        p.push(
            field,
            format!("{name:?} is not a valid Kubernetes name (RFC 1123 subdomain)"),
        );
    }
}

/// Check a label selector in the API server's string syntax
/// (`app=x,tier!=y,env in (a,b),!legacy`). Empty selects every Pod, which is
/// never what a canary wants, so it is refused.
pub fn check_label_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("must not be empty: it selects the canary Pods (e.g. `app=canary`)".into());
    }
    for req in split_top_level(selector)? {
        let req = req.trim();
        if req.is_empty() {
            return Err(format!("{selector:?} has an empty requirement (stray `,`)"));
        }
        check_requirement(req)?;
    }
    Ok(())
}

/// Split on commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("{s:?} has an unmatched `)`"));
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{s:?} has an unmatched `(`"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn check_requirement(req: &str) -> Result<(), String> {
    if let Some(key) = req.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    for op in ["!=", "==", "="] {
        if let Some((k, v)) = req.split_once(op) {
            check_label_key(k.trim())?;
            return check_label_value(v.trim());
        }
    }
    let words: Vec<&str> = req.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words.as_slice() {
        let rest = rest.trim_start();
        let set = rest
            .strip_prefix("notin")
            .or_else(|| rest.strip_prefix("in"))
            .map(str::trim);
        let Some(set) = set else {
            return Err(format!(
                "unknown operator in {req:?} (use =, ==, !=, in, notin, !)"
            ));
        };
        check_label_key(key)?;
        let inner = set
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("{req:?}: the value set must be in parentheses"))?;
        if inner.trim().is_empty() {
            return Err(format!("{req:?}: the value set is empty"));
        }
        for v in inner.split(',') {
            check_label_value(v.trim())?;
        }
        return Ok(());
    }
    check_label_key(req)
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let mut scratch = Problems::default();
        check_dns_subdomain("", prefix, &mut scratch);
        if !scratch.0.is_empty() {
            return Err(format!("label key {key:?} has an invalid prefix"));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_word(name) {
        return Err(format!("{key:?} is not a valid label key"));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_word(value)) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            edge(f) && edge(l) && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}
