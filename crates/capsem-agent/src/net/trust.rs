//! The guest's trust store: the host's interception CA, and nothing else.
//!
//! Every TLS connection a guest process can make ends at capsem's proxy,
//! which presents certificates from that CA (the public roots are checked
//! on the host, against the real servers). So the bundle holds that one
//! certificate: parsing the distribution's ~140 roots cost each new
//! connection about a second under emulation, for nothing.

use std::fs;
use std::os::unix::fs::DirBuilderExt;

use anyhow::{Context, Result};

const DIR: &str = "/run/capsem";
/// The system bundle: the image's `/etc/ssl/certs/ca-certificates.crt`
/// links here (also `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`,
/// `NODE_EXTRA_CA_CERTS`).
pub const BUNDLE: &str = "/run/capsem/ca-certificates.crt";

/// Writes the bundle: `ca_pem`, the host's CA.
pub fn install(ca_pem: &str) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(DIR)
        .with_context(|| format!("creating {DIR}"))?;
    fs::write(BUNDLE, ca_pem).with_context(|| format!("writing {BUNDLE}"))
}
