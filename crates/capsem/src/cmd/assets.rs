//! `capsem assets verify`.

use capsem_core::{RunError, assets};

use crate::embedded;
use crate::exit::Failure;

/// Hashes every pinned asset afresh (this command exists to check, not to
/// trust a cache) and prints one line per asset.
pub fn verify() -> Result<i32, Failure> {
    let (manifest, dir) = embedded::assets()?;
    let verified = assets::verify(&manifest, &dir, None).map_err(RunError::from)?;
    let paths = [&verified.kernel, &verified.initramfs, &verified.rootfs];
    for ((role, entry), path) in manifest.entries().into_iter().zip(paths) {
        println!(
            "ok  {role:<9} {} {:>10} bytes  {}",
            entry.blake3,
            entry.size,
            path.path.display()
        );
    }
    Ok(0)
}
