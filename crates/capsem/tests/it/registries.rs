//! Package managers through the proxy: pip, uv, npm and apt install from
//! servers shaped like PyPI, the npm registry and a Debian archive,
//! reached under their real names once `registry.pypi.allow`,
//! `registry.npm.allow` and `registry.debian.allow` are on, and refused
//! by their switches when off.

use std::sync::OnceLock;

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

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds a file with a host tool in a temporary directory; `make` gets
/// that directory and returns the file's path in it.
fn built(make: impl FnOnce(&std::path::Path) -> std::path::PathBuf) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = make(dir.path());
    std::fs::read(file).unwrap()
}

fn run_tool(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An npm package tarball (`package/package.json` and a bin script).
fn npm_tarball() -> &'static [u8] {
    static TARBALL: OnceLock<Vec<u8>> = OnceLock::new();
    TARBALL.get_or_init(|| {
        built(|dir| {
            let pkg = dir.join("package");
            std::fs::create_dir(&pkg).unwrap();
            let manifest = r#"{"name": "capsem-demo", "version": "1.2.3", "bin": {"capsem-demo": "hello.js"}}"#;
            std::fs::write(pkg.join("package.json"), manifest).unwrap();
            std::fs::write(pkg.join("hello.js"), "#!/usr/bin/env node\nconsole.log('npm -g from the registry');\n").unwrap();
            run_tool(std::process::Command::new("tar").arg("czf").arg(dir.join("p.tgz")).arg("-C").arg(dir).arg("package"));
            dir.join("p.tgz")
        })
    })
}

/// A Debian package with one script, built by the host's dpkg-deb.
fn deb() -> &'static [u8] {
    static DEB: OnceLock<Vec<u8>> = OnceLock::new();
    DEB.get_or_init(|| {
        built(|dir| {
            let root = dir.join("root");
            std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
            std::fs::create_dir_all(root.join("usr/bin")).unwrap();
            std::fs::write(
                root.join("DEBIAN/control"),
                "Package: capsem-archive-demo\nVersion: 1.0\nArchitecture: all\n\
                 Maintainer: capsem <test@capsem>\nDescription: from a Debian-shaped archive\n",
            )
            .unwrap();
            let script = root.join("usr/bin/capsem-archive-demo");
            std::fs::write(&script, "#!/bin/sh\necho apt from the archive\n").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            let deb = dir.join("demo.deb");
            run_tool(
                std::process::Command::new("dpkg-deb")
                    .args(["--build", "--root-owner-group"])
                    .arg(&root)
                    .arg(&deb),
            );
            deb
        })
    })
}

/// A flat Debian repository's `Packages` index for [`deb`].
fn packages_index() -> String {
    let deb = deb();
    format!(
        "Package: capsem-archive-demo\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: capsem <test@capsem>\nFilename: ./capsem-archive-demo_1.0_all.deb\n\
         Size: {}\nSHA256: {}\nDescription: from a Debian-shaped archive\n\n",
        deb.len(),
        hex(deb)
    )
}

/// PyPI's simple index and files, the npm registry and a flat Debian
/// repository, in one server.
fn fake_registries(req: &Request) -> (u16, &'static str, Vec<u8>) {
    let line = req.line();
    // A Debian archive's names are case-sensitive: match the raw line.
    if let Some(reply) = fake_archive(req.raw_head.lines().next().unwrap_or_default()) {
        return reply;
    }
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
                "bin": {"capsem-demo": "hello.js"},
                "dist": {"tarball": "https://registry.npmjs.org/capsem-demo/-/capsem-demo-1.2.3.tgz"}
            }}
        });
        (200, "application/json", packument.to_string().into_bytes())
    } else if line.starts_with("get /capsem-demo/-/capsem-demo-1.2.3.tgz ") {
        (200, "application/octet-stream", npm_tarball().to_vec())
    } else {
        (404, "text/plain", b"not found\n".to_vec())
    }
}

/// The flat repository `deb [trusted=yes] https://deb.debian.org/capsem-test ./`.
fn fake_archive(line: &str) -> Option<(u16, &'static str, Vec<u8>)> {
    let path = line.strip_prefix("GET /capsem-test/")?.split(' ').next()?;
    let path = path.trim_start_matches("./");
    let index = packages_index();
    Some(match path {
        "Packages" => (200, "text/plain", index.into_bytes()),
        "Release" => {
            let release = format!(
                "Origin: capsem-test\nLabel: capsem-test\nSuite: capsem-test\nCodename: capsem-test\n\
                 Date: Tue, 01 Dec 2026 00:00:00 UTC\nArchitectures: all amd64\nSHA256:\n {} {} Packages\n",
                hex(index.as_bytes()),
                index.len()
            );
            (200, "text/plain", release.into_bytes())
        }
        "capsem-archive-demo_1.0_all.deb" => (200, "application/octet-stream", deb().to_vec()),
        _ => (404, "text/plain", b"not found\n".to_vec()),
    })
}

/// A capsem whose registries' names all lead to one fake server; `on`
/// is the value of every registry switch.
fn registries_world(on: bool) -> (Capsem, Upstream) {
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let names = [
        "pypi.org",
        "files.pythonhosted.org",
        "registry.npmjs.org",
        "deb.debian.org",
    ];
    let server = Upstream::https_with(&ca, &names, fake_registries);
    let overrides: Vec<String> = names
        .iter()
        .map(|n| format!("{n}=127.0.0.1:{}", server.port))
        .collect();
    capsem.user_settings(&format!(
        "[network]\nresolve_override = \"{}\"\nextra_upstream_ca = \"{}\"\n\
         [registry.pypi]\nallow = {on}\n[registry.npm]\nallow = {on}\n[registry.debian]\nallow = {on}\n",
        overrides.join(", "),
        ca.pem.display()
    ));
    (capsem, server)
}

/// apt on the test repository alone.
const APT: &str = "echo 'deb [trusted=yes] https://deb.debian.org/capsem-test ./' > /etc/apt/sources.list.d/test.list \
    && apt-get update -q -o Dir::Etc::SourceList=/etc/apt/sources.list.d/test.list -o Dir::Etc::SourceParts=- \
    && apt-get install -y -q capsem-archive-demo >/dev/null && capsem-archive-demo";

#[test]
fn pip_uv_npm_and_apt_install_from_their_registries_when_allowed() {
    let (capsem, _server) = registries_world(true);
    let script = format!(
        "cd /tmp && pip install --quiet capsem-demo && python3 -c 'import capsem_demo; print(\"pip\", capsem_demo.VALUE)' \
         && pip uninstall -y -q capsem-demo && uv pip install --quiet capsem-demo \
         && python3 -c 'import capsem_demo; print(\"uv\", capsem_demo.VALUE)' \
         && npm install -g --silent capsem-demo && capsem-demo && {APT}"
    );
    let out = capsem.run(&["run", "--timeout", "600", "--", "sh", "-c", &script]);
    assert_code(&out, 0);
    let text = stdout(&out);
    for expected in [
        "pip 1",
        "uv 1",
        "npm -g from the registry",
        "apt from the archive",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
}

#[test]
fn each_registry_is_refused_by_its_switch_when_off() {
    let (capsem, server) = registries_world(false);
    let script = format!(
        "pip install --quiet --retries 0 --timeout 5 capsem-demo; echo pip=$?; \
         npm install -g --silent --fetch-retries=0 capsem-demo; echo npm=$?; {APT}; echo apt=$?"
    );
    let out = capsem.run(&["-q", &script]);
    let text = stdout(&out);
    for refused in ["pip=0", "npm=0", "apt=0"] {
        assert!(!text.contains(refused), "{refused}: {text}");
    }
    assert!(
        server.requests().is_empty(),
        "a refused registry was reached"
    );
    let log = capsem.json_lines(&["net", "log", "--json"]);
    for (name, rule) in [
        ("pypi.org", "registry.pypi.allow = false"),
        ("registry.npmjs.org", "registry.npm.allow = false"),
        ("deb.debian.org", "registry.debian.allow = false"),
    ] {
        let refused = log
            .iter()
            .map(|r| &r["data"])
            .any(|row| row["name"] == name && row["rule"] == rule);
        assert!(refused, "no refusal of {name} by {rule} in:\n{log:#?}");
    }
}
