//! The real cluster's certificates, made here with `rcgen`: one CA, serving
//! certificates for the API server, controller-manager and scheduler, client
//! certificates (admin in `system:masters`, the controller-manager, the
//! scheduler, the API server's kubelet client), and the ServiceAccount token
//! signing key. All ECDSA P-256, written 0600 into `DIR/pki`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// rcgen refused.
    #[error("making certificate {name}: {source}")]
    Cert {
        /// Which certificate.
        name: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8).
    pub key: PathBuf,
}

/// The cluster's CA: it signs every certificate here, and the
/// controller-manager signs CertificateSigningRequests with it.
pub struct Ca {
    /// Its certificate and key files.
    pub files: CertFiles,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub struct Leaf<'a> {
    /// File stem in `DIR/pki`.
    pub name: &'a str,
    /// Subject common name (the user name, for a client certificate).
    pub common_name: &'a str,
    /// Subject organizations (the groups, for a client certificate).
    pub organizations: &'a [&'a str],
    /// DNS names and IP addresses (a serving certificate).
    pub sans: &'a [&'a str],
    /// Server authentication.
    pub server: bool,
    /// Client authentication.
    pub client: bool,
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn validity(p: &mut CertificateParams) {
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
}

impl Ca {
    /// A fresh CA written to `dir/ca.crt` and `dir/ca.key`.
    pub fn create(dir: &Path) -> Result<Ca, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let err = |source| Error::Cert {
            name: "ca".into(),
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::default();
        validity(&mut p);
        p.serial_number = Some(serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "secret-canary-lab-ca");
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(err)?;
        let files = CertFiles {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        write_private(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(Ca {
            files,
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
            dir: dir.to_path_buf(),
        })
    }

    /// A leaf certificate signed by this CA, written to `DIR/pki/<name>.{crt,key}`.
    pub fn issue(&self, leaf: &Leaf<'_>) -> Result<CertFiles, Error> {
        let err = |source| Error::Cert {
            name: leaf.name.to_string(),
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::default();
        validity(&mut p);
        p.serial_number = Some(serial());
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, leaf.common_name);
        for o in leaf.organizations {
            dn.push(DnType::OrganizationName, *o);
        }
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        if leaf.server {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for san in leaf.sans {
            p.subject_alt_names.push(match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into().map_err(err)?),
            });
        }
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer).map_err(err)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{}.crt", leaf.name)),
            key: self.dir.join(format!("{}.key", leaf.name)),
        };
        write_private(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

/// The ServiceAccount token signing key `DIR/pki/sa.key` (PKCS#8) and its
/// public half `DIR/pki/sa.pub` (PKIX). The API server's
/// `--service-account-key-file` needs the public one: it reads EC private
/// keys only in SEC1 form, not PKCS#8. Returns `(key, pub)`.
pub fn service_account_key(dir: &Path) -> Result<(PathBuf, PathBuf), Error> {
    let key = KeyPair::generate().map_err(|source| Error::Cert {
        name: "sa".into(),
        source,
    })?;
    let path = dir.join("sa.key");
    write_private(&path, &key.serialize_pem())?;
    let public = dir.join("sa.pub");
    write_private(&public, &key.public_key_pem())?;
    Ok((path, public))
}

/// The names and addresses of the API server's serving certificate: loopback,
/// and the in-cluster names and Service IP Pods use.
pub fn apiserver_sans(service_ip: Ipv4Addr) -> Vec<String> {
    vec![
        "127.0.0.1".into(),
        "localhost".into(),
        service_ip.to_string(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ]
}

/// Write a file readable by the owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}
