//! `capsem version`.

use capsem_proto::limits::PROTOCOL_VERSION;

use crate::embedded;
use crate::exit::Failure;

/// Prints versions and the pinned assets.
pub fn print() -> Result<i32, Failure> {
    println!("capsem {}", env!("CARGO_PKG_VERSION"));
    println!("protocol {PROTOCOL_VERSION}");
    let (manifest, dir) = embedded::assets()?;
    println!("assets {}", dir.display());
    for (role, entry) in manifest.entries() {
        println!("  {role:<9} {} {}", entry.blake3, entry.file);
    }
    Ok(0)
}
