//! `capsem assets verify`.

use capsem_core::{RunError, assets};
use serde_json::json;

use crate::embedded;
use crate::exit::Failure;
use crate::out::outln;

/// Hashes every pinned asset afresh (this command exists to check, not to
/// trust a cache) and prints one line per asset, or one JSON object.
pub fn verify(json: bool) -> Result<i32, Failure> {
    let embedded::Assets { manifest, dir, .. } = embedded::assets()?;
    let verified = match assets::verify(&manifest, &dir, None) {
        Ok(verified) => verified,
        Err(e) if json => {
            let data = json!({ "ok": false, "error": e.to_string(), "assets": [] });
            outln!("{}", json!({ "type": "assets", "data": data }));
            return Ok(crate::exit::FAILURE);
        }
        Err(e) => return Err(RunError::from(e).into()),
    };
    let paths = [&verified.kernel, &verified.initramfs, &verified.rootfs];
    let checked = manifest.entries().into_iter().zip(paths);
    if json {
        let assets: Vec<_> = checked
            .map(|((role, entry), path)| {
                json!({ "role": role, "path": path.path, "size": entry.size, "blake3": entry.blake3 })
            })
            .collect();
        let data = json!({ "ok": true, "error": null, "assets": assets });
        outln!("{}", json!({ "type": "assets", "data": data }));
        return Ok(0);
    }
    for ((role, entry), path) in checked {
        outln!(
            "ok  {role:<9} {} {:>10} bytes  {}",
            entry.blake3,
            entry.size,
            path.path.display()
        );
    }
    Ok(0)
}
