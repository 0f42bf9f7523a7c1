//! Where the canary's value comes from: an environment variable (fixed when
//! the process starts) or a file (re-read whenever asked). Only the SHA-256
//! digest of the value ever leaves this module.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Which kind of source the canary reads (the `source` field of `/digest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An environment variable.
    Env,
    /// A file, e.g. in a Secret volume.
    File,
}

impl SourceKind {
    /// The name served in `/digest`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Env => "env",
            SourceKind::File => "file",
        }
    }
}

/// Why there is no value (the `error` field of `/digest`): a fixed set, so a
/// prober can map it to a bounded failure reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadError {
    /// The variable is unset, or the file does not exist.
    Missing,
    /// The file exists but cannot be read (permissions, a directory, ...).
    Unreadable,
}

impl ReadError {
    /// The name served in `/digest`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadError::Missing => "missing",
            ReadError::Unreadable => "unreadable",
        }
    }
}

/// One look at the source: the digest of the value, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// SHA-256 of the value, lower-case hex.
    pub digest: Option<String>,
    /// Set exactly when `digest` is `None`.
    pub error: Option<ReadError>,
    /// The value is a literal Bank-Vaults reference (`vault:...`,
    /// `>>vault:...`) that no webhook resolved. Only this boolean leaves the
    /// process, never the reference or the value.
    pub unresolved_reference: bool,
}

impl Reading {
    fn value(bytes: &[u8]) -> Reading {
        Reading {
            digest: Some(digest(bytes)),
            error: None,
            unresolved_reference: is_unresolved_reference(bytes),
        }
    }

    fn failed(error: ReadError) -> Reading {
        Reading {
            digest: None,
            error: Some(error),
            unresolved_reference: false,
        }
    }
}

/// Whether a value is a Bank-Vaults secret reference left as is: the
/// webhook replaces `vault:PATH#KEY` (and `>>vault:` for dynamic secrets)
/// before the container starts, so a process that sees the prefix runs with
/// the reference instead of the secret (the webhook failed open).
pub fn is_unresolved_reference(value: &[u8]) -> bool {
    let v = value.trim_ascii_start();
    v.starts_with(b"vault:") || v.starts_with(b">>vault:")
}

/// SHA-256 of a value, lower-case hex (the same form as the lab's ground truth).
pub fn digest(value: &[u8]) -> String {
    hex::encode(Sha256::digest(value))
}

/// What identifies one version of a file without reading it: if none of
/// these changed, its content did not either. Following symlinks matters:
/// the kubelet swaps a `..data` symlink, which changes the resolved inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The configured source.
#[derive(Debug)]
pub enum Source {
    /// An environment variable, read once at start (as a real container's
    /// env is fixed for its lifetime).
    Env {
        /// The variable's name (logged; its value never is).
        name: String,
        /// The reading taken at start.
        reading: Reading,
    },
    /// A file, read on demand.
    File {
        /// The path as given.
        path: PathBuf,
    },
}

impl Source {
    /// Read the variable `name` of this process now.
    pub fn env(name: &str) -> Source {
        Source::env_value(name, std::env::var_os(name))
    }

    /// An env source from a value already looked up (for tests).
    pub fn env_value(name: &str, value: Option<OsString>) -> Source {
        let reading = match value {
            Some(v) => Reading::value(v.as_bytes()),
            None => Reading::failed(ReadError::Missing),
        };
        Source::Env {
            name: name.to_string(),
            reading,
        }
    }

    /// A file source.
    pub fn file(path: &Path) -> Source {
        Source::File {
            path: path.to_path_buf(),
        }
    }

    /// Env or file.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Env { .. } => SourceKind::Env,
            Source::File { .. } => SourceKind::File,
        }
    }

    /// Is the value fixed for the process's lifetime?
    pub fn is_fixed(&self) -> bool {
        matches!(self, Source::Env { .. })
    }

    /// The file's path, for a file source.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File { path } => Some(path),
            Source::Env { .. } => None,
        }
    }

    /// Look at the value now.
    pub fn read(&self) -> Reading {
        match self {
            Source::Env { reading, .. } => reading.clone(),
            Source::File { path } => match std::fs::read(path) {
                Ok(bytes) => Reading::value(&bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Reading::failed(ReadError::Missing)
                }
                Err(_) => Reading::failed(ReadError::Unreadable),
            },
        }
    }

    /// The file's identity now (`None` for env sources or when it cannot be
    /// stat'ed: a missing file has no fingerprint, so any change from or to
    /// missing is a change).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        let Source::File { path } = self else {
            return None;
        };
        let m = std::fs::metadata(path).ok()?;
        Some(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// What to log about the source (never the value).
    pub fn describe(&self) -> String {
        match self {
            Source::Env { name, .. } => format!("env {name}"),
            Source::File { path } => format!("file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("canary-src-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn env_source_is_read_once() {
        let s = Source::env_value("X", Some("hello".into()));
        assert_eq!(s.read().digest.as_deref(), Some(digest(b"hello").as_str()));
        assert!(s.is_fixed());
        let s = Source::env_value("X", None);
        assert_eq!(s.read(), Reading::failed(ReadError::Missing));
        // An empty value is still a value.
        let s = Source::env_value("X", Some("".into()));
        assert_eq!(s.read().digest, Some(digest(b"")));
    }

    #[test]
    fn an_unresolved_vault_reference_is_flagged_never_echoed() {
        for v in [
            "vault:secret/data/canary#value",
            ">>vault:database/creds/app#password",
        ] {
            let r = Source::env_value("X", Some(v.into())).read();
            assert!(r.unresolved_reference, "{v}");
            assert_eq!(r.digest, Some(digest(v.as_bytes())));
        }
        for v in ["s3cr3t", "my vault: value", ""] {
            assert!(
                !Source::env_value("X", Some(v.into()))
                    .read()
                    .unresolved_reference
            );
        }
        assert!(!Source::env_value("X", None).read().unresolved_reference);
    }

    #[test]
    fn file_source_rereads_and_reports_missing_and_unreadable() {
        let d = tempdir("file");
        let p = d.join("value");
        let s = Source::file(&p);
        assert_eq!(s.read().error, Some(ReadError::Missing));
        assert!(s.fingerprint().is_none());
        std::fs::write(&p, "one").unwrap();
        assert_eq!(s.read().digest, Some(digest(b"one")));
        let f1 = s.fingerprint().unwrap();
        // Atomic replace: a new inode, so a new fingerprint.
        std::fs::write(d.join("tmp"), "two").unwrap();
        std::fs::rename(d.join("tmp"), &p).unwrap();
        assert_ne!(s.fingerprint().unwrap(), f1);
        assert_eq!(s.read().digest, Some(digest(b"two")));
        // A directory where the file should be cannot be read as a value.
        let s = Source::file(&d);
        assert_eq!(s.read().error, Some(ReadError::Unreadable));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn symlink_swap_changes_the_fingerprint() {
        let d = tempdir("swap");
        std::fs::create_dir(d.join("v1")).unwrap();
        std::fs::write(d.join("v1/key"), "a").unwrap();
        std::os::unix::fs::symlink("v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/key", d.join("key")).unwrap();
        let s = Source::file(&d.join("key"));
        let f1 = s.fingerprint().unwrap();
        std::fs::create_dir(d.join("v2")).unwrap();
        std::fs::write(d.join("v2/key"), "b").unwrap();
        std::os::unix::fs::symlink("v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_ne!(s.fingerprint().unwrap(), f1);
        assert_eq!(s.read().digest, Some(digest(b"b")));
        std::fs::remove_dir_all(&d).ok();
    }
}
