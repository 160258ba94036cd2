//! `capsem version`.

use capsem_proto::limits::PROTOCOL_VERSION;
use serde_json::json;

use crate::embedded;
use crate::exit::Failure;
use crate::out::outln;

/// Prints versions and the pinned assets.
pub fn print(json: bool) -> Result<i32, Failure> {
    let (manifest, dir) = embedded::assets()?;
    if json {
        let assets: serde_json::Map<String, serde_json::Value> = manifest
            .entries()
            .into_iter()
            .map(|(role, entry)| {
                let data =
                    json!({ "file": entry.file, "size": entry.size, "blake3": entry.blake3 });
                (role.to_owned(), data)
            })
            .collect();
        let data = json!({
            "capsem": env!("CARGO_PKG_VERSION"),
            "protocol": PROTOCOL_VERSION,
            "asset_dir": dir,
            "assets": assets,
        });
        outln!("{}", json!({ "type": "version", "data": data }));
        return Ok(0);
    }
    outln!("capsem {}", env!("CARGO_PKG_VERSION"));
    outln!("protocol {PROTOCOL_VERSION}");
    outln!("assets {}", dir.display());
    for (role, entry) in manifest.entries() {
        outln!("  {role:<9} {} {}", entry.blake3, entry.file);
    }
    Ok(0)
}
