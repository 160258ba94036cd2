//! `capsem version`.

use capsem_proto::limits::PROTOCOL_VERSION;
use serde_json::json;

use crate::embedded;
use crate::exit::Failure;
use crate::out::outln;

/// Prints versions, the pinned assets and where they are looked for.
pub fn print(json: bool) -> Result<i32, Failure> {
    let embedded::Assets {
        manifest,
        dir,
        source,
    } = embedded::assets()?;
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
            "asset_source": source.name(),
            "assets": assets,
        });
        outln!("{}", json!({ "type": "version", "data": data }));
        return Ok(0);
    }
    outln!("capsem {}", env!("CARGO_PKG_VERSION"));
    outln!("protocol {PROTOCOL_VERSION}");
    outln!("assets {} ({})", dir.display(), source.name());
    for (role, entry) in manifest.entries() {
        outln!("  {role:<9} {} {}", entry.blake3, entry.file);
    }
    Ok(0)
}
