//! The per-installation interception CA (`~/.capsem/ca.pem`, 0600, key and
//! certificate in one file so they are replaced together) and the leaf
//! certificates it signs for each name a guest reaches over TLS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::fsutil;

/// The CA file under capsem's home.
pub const CA_FILE: &str = "ca.pem";
const CA_NAME: &str = "Capsem interception CA";
/// Most leaf configurations kept; beyond it the cache starts over.
const MAX_LEAVES: usize = 1024;

/// The CA cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing the CA file.
    #[error("interception CA {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds no usable key or certificate.
    #[error("interception CA {path} is damaged ({why}); delete it to make a new one")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Signing a certificate failed.
    #[error("signing a certificate: {0}")]
    Sign(#[from] rcgen::Error),
    /// rustls refused the certificate.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The CA and its cache of leaf configurations.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// One key for every leaf: leaves are cheap to sign, keys less so.
    leaf_key: KeyPair,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

impl Ca {
    /// Loads the CA from `home`, creating it on first use.
    pub fn load_or_create(home: &Path) -> Result<Ca, CaError> {
        let path = home.join(CA_FILE);
        let io = |source| CaError::Io {
            path: path.clone(),
            source,
        };
        let (key, cert_pem) = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).map_err(|why| CaError::Damaged {
                path: path.clone(),
                why,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate()?;
                let cert = ca_params().self_signed(&key)?;
                let text = format!("{}{}", key.serialize_pem(), cert.pem());
                fsutil::write_atomic(&path, text.as_bytes()).map_err(io)?;
                tracing::info!("created the interception CA {}", path.display());
                (key, cert.pem())
            }
            Err(e) => return Err(io(e)),
        };
        Ok(Ca {
            issuer: Issuer::new(ca_params(), key),
            cert_pem,
            leaf_key: KeyPair::generate()?,
            leaves: Mutex::default(),
        })
    }

    /// The CA certificate, PEM, for the guest's trust store.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS server configuration presenting a certificate for `name`.
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, CaError> {
        let mut leaves = self.leaves.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(config) = leaves.get(name) {
            return Ok(config.clone());
        }
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        let leaf = params.signed_by(&self.leaf_key, &self.issuer)?;
        let key = PrivateKeyDer::try_from(self.leaf_key.serialize_der())
            .map_err(|e| rustls::Error::General(e.to_owned()))?;
        let mut config = ServerConfig::builder_with_provider(super::crypto())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(name.to_owned(), config.clone());
        Ok(config)
    }
}

/// The CA's parameters. Signing needs only its name and key, so the same
/// parameters serve a CA loaded from disk.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Capsem");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    params
}

/// The key and certificate of a CA file.
fn parse(text: &str) -> Result<(KeyPair, String), String> {
    let key = KeyPair::from_pem(text).map_err(|e| format!("key: {e}"))?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| format!("certificate: {e}"))?;
    let begin = text
        .find("-----BEGIN CERTIFICATE-----")
        .ok_or("no certificate")?;
    Ok((key, text[begin..].to_owned()))
}
