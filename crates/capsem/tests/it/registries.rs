//! Package managers through the proxy: `pip download` from a PyPI-shaped
//! server and `npm view` from an npm-registry-shaped one, reached under
//! their real names once `registry.pypi.allow` and `registry.npm.allow`
//! are on.

use sha2::{Digest, Sha256};

use crate::support::{Capsem, assert_code, stdout};
use crate::upstream::{Request, TestCa, Upstream};

const WHEEL: &str = "capsem_demo-1.0-py3-none-any.whl";

/// A minimal valid wheel: an uncompressed zip of a module and its
/// metadata.
fn wheel() -> Vec<u8> {
    let files: [(&str, &str); 4] = [
        ("capsem_demo/__init__.py", "VALUE = 1\n"),
        (
            "capsem_demo-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: capsem-demo\nVersion: 1.0\n",
        ),
        (
            "capsem_demo-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: capsem-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        ("capsem_demo-1.0.dist-info/RECORD", ""),
    ];
    stored_zip(&files)
}

/// A zip archive with every entry stored (no compression).
fn stored_zip(files: &[(&str, &str)]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in files {
        let (name, data) = (name.as_bytes(), data.as_bytes());
        let offset = out.len() as u32;
        let crc = crc32(data);
        let sizes = [crc, data.len() as u32, data.len() as u32];
        // Local header: signature, version, flags, method 0, time, date.
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        sizes.iter().for_each(|v| out.extend(v.to_le_bytes()));
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name);
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
        sizes.iter().for_each(|v| central.extend(v.to_le_bytes()));
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name);
    }
    let start = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(start.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// PyPI's simple index and files, and the npm registry, in one server.
fn fake_registries(req: &Request) -> (u16, &'static str, Vec<u8>) {
    let line = req.line();
    if line.starts_with("get /simple/capsem-demo/") {
        let hash = Sha256::digest(wheel())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let page = format!(
            "<!DOCTYPE html><html><body><a href=\"https://files.pythonhosted.org/packages/{WHEEL}#sha256={hash}\">{WHEEL}</a></body></html>"
        );
        (200, "text/html", page.into_bytes())
    } else if line.starts_with(&format!("get /packages/{WHEEL}")) {
        (200, "application/octet-stream", wheel())
    } else if line.starts_with("get /capsem-demo ") {
        let packument = serde_json::json!({
            "name": "capsem-demo",
            "dist-tags": {"latest": "1.2.3"},
            "versions": {"1.2.3": {
                "name": "capsem-demo", "version": "1.2.3", "description": "served through capsem",
                "dist": {"tarball": "https://registry.npmjs.org/capsem-demo/-/capsem-demo-1.2.3.tgz"}
            }}
        });
        (200, "application/json", packument.to_string().into_bytes())
    } else {
        (404, "text/plain", b"not found\n".to_vec())
    }
}

#[test]
fn pip_and_npm_reach_their_registries_when_allowed() {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let names = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"];
    let server = Upstream::https_with(&ca, &names, fake_registries);
    let overrides: Vec<String> = names
        .iter()
        .map(|n| format!("{n}=127.0.0.1:{}", server.port))
        .collect();
    let settings = |npm: bool| {
        format!(
            "[network]\nresolve_override = \"{}\"\nextra_upstream_ca = \"{}\"\n\
             [registry.pypi]\nallow = true\n[registry.npm]\nallow = {npm}\n",
            overrides.join(", "),
            ca.pem.display()
        )
    };
    capsem.user_settings(&settings(true));
    let script = "cd /tmp && pip download --no-deps --disable-pip-version-check -q capsem-demo \
        && ls capsem_demo-1.0-py3-none-any.whl && npm view capsem-demo version";
    let out = capsem.run(&["run", "--timeout", "300", "--", "sh", "-c", script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    assert!(text.contains(WHEEL), "{text}");
    assert!(text.trim_end().ends_with("1.2.3"), "{text}");

    // With npm switched off, all else equal, its registry does not resolve.
    capsem.user_settings(&settings(false));
    let out = capsem.run(&["-q", "npm view capsem-demo version --fetch-retries=0"]);
    assert_ne!(out.status.code(), Some(0));
    let log = capsem.json_lines(&["net", "log", "--json"]);
    let refused = log
        .iter()
        .map(|record| &record["data"])
        .any(|row| row["name"] == "registry.npmjs.org" && row["allowed"] == false);
    assert!(refused, "no refused lookup of the registry in:\n{log:#?}");
}
