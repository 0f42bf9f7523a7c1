//! Fixtures shared by the end-to-end tests: prober configs derived from the
//! lab's, and the three-chain config the offline tests start from.

use std::path::Path;

/// The lab's prober config with every probe's interval set to `interval`,
/// its token file replaced by `token_file` (if given), and `extra_store`
/// lines added to each store block.
pub fn prober_config(
    lab_config: &Path,
    interval: &str,
    token_file: Option<&Path>,
    extra_store: &str,
) -> String {
    let mut text = std::fs::read_to_string(lab_config).expect("lab prober.yaml");
    text = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("interval:") {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}interval: {interval}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if let Some(t) = token_file {
        let old = text
            .lines()
            .find(|l| l.trim_start().starts_with("file:") && l.contains("prober.token"))
            .map(|l| {
                l.trim_start()
                    .trim_start_matches("file:")
                    .trim()
                    .to_string()
            });
        if let Some(old) = old {
            text = text.replace(&old, &t.display().to_string());
        }
    }
    if !extra_store.is_empty() {
        text = text
            .lines()
            .flat_map(|l| {
                let mut out = vec![l.to_string()];
                if l.trim_start().starts_with("path: canary/") {
                    let indent = &l[..l.len() - l.trim_start().len()];
                    for e in extra_store.lines() {
                        out.push(format!("{indent}{e}"));
                    }
                }
                out
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    text.push('\n');
    text
}

/// The offline tests' config: one probe per chain variant (ESO + Reloader +
/// env, ESO + volume, Bank-Vaults + restart), with what the tests vary
/// filled in. [`ThreeChains::yaml`] writes it.
pub struct ThreeChains<'a> {
    /// The store's address, for every probe.
    pub address: &'a str,
    /// The store auth of the two ESO probes (Bank-Vaults uses Kubernetes auth).
    pub eso_auth: &'a str,
    /// Each probe's cadence line: `interval: 30s` or `schedule: "..."`
    /// (eso-env, eso-volume, bank-vaults).
    pub cadence: [&'a str; 3],
    /// eso-env's SLOs.
    pub env_slo: &'a str,
    /// eso-volume's SLOs, if any.
    pub volume_slo: Option<&'a str>,
    /// The Deployment (and canary app label) of the Bank-Vaults chain.
    pub bv_deployment: &'a str,
}

impl ThreeChains<'_> {
    /// The config as YAML.
    pub fn yaml(&self) -> String {
        let ThreeChains {
            address,
            eso_auth,
            cadence: [env, volume, bv],
            env_slo,
            volume_slo,
            bv_deployment,
        } = self;
        let volume_slo = volume_slo
            .map(|s| format!("\n    slo: {s}"))
            .unwrap_or_default();
        format!(
            r#"
probes:
  - name: eso-env
    {env}
    slo: {env_slo}
    store: {{address: "{address}", path: canary/eso-env, auth: {eso_auth}}}
    chain:
      namespace: canary
      external_secret: canary-env
      secret: {{name: canary-env}}
      rollout: {{deployment: canary-env, trigger: reloader}}
      canary: {{selector: app=canary-env, source: env}}
  - name: eso-volume
    {volume}{volume_slo}
    store: {{address: "{address}", path: canary/eso-volume, auth: {eso_auth}}}
    chain:
      namespace: canary
      external_secret: canary-volume
      secret: {{name: canary-volume}}
      canary: {{selector: app=canary-volume, source: file}}
  - name: bank-vaults
    {bv}
    store: {{address: "{address}", path: canary/bv, auth: {{kubernetes: {{role: canary}}}}}}
    chain:
      namespace: canary
      rollout: {{deployment: {bv_deployment}, trigger: restart}}
      canary: {{selector: app={bv_deployment}, source: env}}
"#
        )
    }
}
