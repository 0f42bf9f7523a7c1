//! Secret volume contents written the way the kubelet's atomic writer does.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use chrono::Utc;
use rand::Rng;

/// Write `files` into `dir` the way the kubelet's atomic writer does: a
/// fresh timestamped directory, a `..data` symlink renamed onto it, and
/// user-visible symlinks `dir/<top>` → `..data/<top>`; the old directory is
/// removed afterwards. Readers see either the old or the new set, never a mix.
pub fn write_atomic(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: Option<u32>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for p in files.keys() {
        let path = Path::new(p);
        let ok = !p.is_empty()
            && path.is_relative()
            && path
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            && !p.starts_with("..");
        if !ok {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid volume file path {p:?}"),
            ));
        }
    }
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    let old = std::fs::read_link(&data_link).ok();
    let ts = format!(
        "..{}_{:08x}",
        Utc::now().format("%Y_%m_%d_%H_%M_%S.%f"),
        rand::rng().random::<u32>()
    );
    let ts_dir = dir.join(&ts);
    std::fs::create_dir(&ts_dir)?;
    for (p, bytes) in files {
        let target = ts_dir.join(p);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes)?;
        if let Some(m) = mode {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(m))?;
        }
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    let tops: HashSet<String> = files
        .keys()
        .filter_map(|p| Path::new(p).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link)?;
        }
    }
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_link = e.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if !name.starts_with("..") && is_link && !tops.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some(old) = old {
        if old != Path::new(&ts) {
            let _ = std::fs::remove_dir_all(dir.join(old));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn atomic_writer_swaps_and_cleans_up() {
        let dir = std::env::temp_dir().join(format!("kubelet-aw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        write_atomic(&dir, &files, None).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        let first = std::fs::read_link(dir.join("..data")).unwrap();
        let files = BTreeMap::from([("a".to_string(), b"3".to_vec())]);
        write_atomic(&dir, &files, Some(0o644)).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"3");
        assert!(
            std::fs::symlink_metadata(dir.join("b")).is_err(),
            "removed key's link is gone"
        );
        assert!(!dir.join(first).exists(), "old generation removed");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            PathBuf::from("..data/a")
        );
        let bad = BTreeMap::from([("../x".to_string(), b"1".to_vec())]);
        assert!(write_atomic(&dir, &bad, None).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
