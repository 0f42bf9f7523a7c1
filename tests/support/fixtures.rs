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
