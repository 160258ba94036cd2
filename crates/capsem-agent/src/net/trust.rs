//! The guest's trust store: the distribution's CA bundle plus the host's
//! interception CA, written to `/run/capsem` where the read-only image's
//! `/etc/ssl/certs/ca-certificates.crt` points.

use std::fs;
use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, Result};

const DIR: &str = "/run/capsem";
const DISTRO_BUNDLE: &str = "/usr/share/capsem/ca-certificates.crt";
/// The system bundle (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`).
pub const BUNDLE: &str = "/run/capsem/ca-certificates.crt";
/// The host's CA alone (`NODE_EXTRA_CA_CERTS`).
pub const CAPSEM_CA: &str = "/run/capsem/capsem-ca.pem";

/// Writes the bundle with `ca_pem` (the host's CA; may be empty) added.
pub fn install(ca_pem: &str) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(DIR)
        .with_context(|| format!("creating {DIR}"))?;
    let mut bundle = fs::read_to_string(DISTRO_BUNDLE).unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    fs::write(BUNDLE, bundle).with_context(|| format!("writing {BUNDLE}"))?;
    fs::write(CAPSEM_CA, ca_pem).with_context(|| format!("writing {CAPSEM_CA}"))
}
