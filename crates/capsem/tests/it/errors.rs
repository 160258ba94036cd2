//! Failures of capsem's own: each exits 125 with a clear message and never
//! a backtrace.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{Capsem, assert_code, asset_dir, stderr, wait_until};

/// Asserts a capsem failure: 125, one `capsem:` message containing `what`,
/// and nothing that looks like a Rust panic.
#[track_caller]
fn assert_failure(out: &std::process::Output, what: &str) {
    assert_code(out, 125);
    let err = stderr(out);
    assert!(err.starts_with("capsem: "), "{err}");
    assert!(err.contains(what), "expected {what:?} in:\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

/// Writes an executable script.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The real QEMU, for wrappers (capsem clears QEMU's environment, so they
/// need absolute paths).
fn real_qemu() -> String {
    let path = std::env::var_os("PATH").unwrap();
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("qemu-system-x86_64 on PATH")
        .display()
        .to_string()
}

#[test]
fn missing_qemu_names_the_package() {
    let capsem = Capsem::new();
    let out = capsem
        .cmd(&["true"])
        .env("CAPSEM_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    assert_failure(&out, "install the Debian package qemu-system-x86");
}

#[test]
fn missing_assets_name_the_file_and_the_fix() {
    let capsem = Capsem::new();
    let empty = tempfile::tempdir().unwrap();
    let out = capsem
        .cmd(&["true"])
        .env("CAPSEM_ASSETS_DIR", empty.path())
        .output()
        .unwrap();
    assert_failure(&out, "the kernel asset is missing");
    assert!(
        stderr(&out).contains("cargo xtask build-assets"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tampered_kernel_is_refused_before_boot() {
    let assets = asset_dir();
    let copy = tempfile::tempdir().unwrap();
    for name in ["initramfs.cpio", "rootfs.erofs"] {
        std::os::unix::fs::symlink(assets.join(name), copy.path().join(name)).unwrap();
    }
    let kernel = copy.path().join("vmlinux");
    fs::copy(assets.join("vmlinux"), &kernel).unwrap();
    let original_mtime = fs::metadata(assets.join("vmlinux"))
        .unwrap()
        .modified()
        .unwrap();
    let mut bytes = fs::read(&kernel).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&kernel, &bytes).unwrap();
    fs::File::options()
        .write(true)
        .open(&kernel)
        .unwrap()
        .set_modified(original_mtime)
        .unwrap();

    let capsem = Capsem::new();
    let out = capsem
        .cmd(&["true"])
        .env("CAPSEM_ASSETS_DIR", copy.path())
        .output()
        .unwrap();
    assert_failure(&out, "does not match this capsem build");
    let err = stderr(&out);
    assert!(err.contains(&kernel.display().to_string()), "{err}");
    let manifest = fs::read_to_string(assets.join("manifest.json")).unwrap();
    let expected = manifest
        .split("\"vmlinux\"")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(3))
        .unwrap();
    assert!(err.contains(expected), "expected hash {expected} in {err}");
    assert!(capsem.sessions().is_empty(), "a VM was started");
}

fn has_hardware_virtualization() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    cpuinfo.split_whitespace().any(|f| f == "vmx" || f == "svm") && Path::new("/dev/kvm").exists()
}

#[test]
fn without_hardware_virtualization_tcg_is_used_with_one_notice() {
    let capsem = Capsem::new();
    let out = capsem.run(&["true"]);
    assert_code(&out, 0);
    let notices = stderr(&out).matches("using QEMU TCG").count();
    if has_hardware_virtualization() {
        assert_eq!(notices, 0, "{}", stderr(&out));
    } else {
        assert_eq!(notices, 1, "{}", stderr(&out));
        capsem.user_settings("[vm]\naccel = \"kvm\"\n");
        assert_failure(&capsem.run(&["true"]), "KVM is not usable here");
    }
    // -q silences the notice.
    capsem.user_settings("");
    let quiet = capsem.run(&["-q", "true"]);
    assert_code(&quiet, 0);
    assert_eq!(stderr(&quiet), "");
}

#[test]
fn a_broken_settings_file_is_reported_and_left_alone() {
    let capsem = Capsem::new();
    let broken = "[vm]\ncpus = = 2\n";
    capsem.user_settings(broken);
    let out = capsem.run(&["true"]);
    assert_failure(&out, "user.toml");
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(capsem.home().join("user.toml")).unwrap(),
        broken
    );
}

#[test]
fn forbidden_environment_is_refused() {
    let out = Capsem::new().run(&["-e", "LD_PRELOAD=/evil.so", "true"]);
    assert_code(&out, 125);
    assert!(stderr(&out).contains("LD_PRELOAD"), "{}", stderr(&out));
}

#[test]
fn a_guest_that_fails_to_boot_shows_its_boot_log() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.cpio");
    fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let wrapper = script(
        dir.path(),
        "qemu",
        &format!(
            "#!/bin/bash\nargs=()\nfor a in \"$@\"; do\n  [ \"$prev\" = -initrd ] && a={}\n  args+=(\"$a\"); prev=$a\ndone\nexec {} \"${{args[@]}}\"\n",
            junk.display(),
            real_qemu()
        ),
    );
    let capsem = Capsem::new();
    let out = capsem
        .cmd(&["true"])
        .env("CAPSEM_QEMU", &wrapper)
        .output()
        .unwrap();
    assert_failure(&out, "the VM stopped during boot");
    let err = stderr(&out);
    assert!(err.contains("boot.log"), "{err}");
    assert!(err.contains("Kernel panic"), "{err}");
}

#[test]
fn an_agent_that_never_answers_times_out_with_the_boot_log() {
    let dir = tempfile::tempdir().unwrap();
    // -S: QEMU starts with its CPUs stopped, so the guest never runs.
    let wrapper = script(
        dir.path(),
        "qemu",
        &format!("#!/bin/sh\nexec {} \"$@\" -S\n", real_qemu()),
    );
    let capsem = Capsem::new();
    capsem.user_settings("[vm]\nboot_timeout_secs = 3\n");
    let out = capsem
        .cmd(&["true"])
        .env("CAPSEM_QEMU", &wrapper)
        .output()
        .unwrap();
    assert_failure(&out, "did not answer within 3 s");
    assert!(
        stderr(&out).contains("vm.boot_timeout_secs"),
        "{}",
        stderr(&out)
    );
}

/// A fake VM monitor that connects to the channel and sends `payload`.
fn fake_guest(dir: &Path, payload: &[u8]) -> PathBuf {
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    script(
        dir,
        "fake-qemu",
        &format!(
            "#!/usr/bin/python3\n\
             import socket, sys, time\n\
             arg = next(a for a in sys.argv if a.startswith('socket,id=channel,'))\n\
             fd = int(arg.split('fd=', 1)[1].split(',')[0])\n\
             s = socket.socket(fileno=fd)\n\
             s.sendall(bytes.fromhex('{hex}'))\n\
             time.sleep(60)\n"
        ),
    )
}

#[test]
fn malformed_frames_from_the_guest_are_refused() {
    let cases: [(&[u8], &str); 3] = [
        // A length header far above the frame limit.
        (&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3], "exceeds the limit"),
        // A frame of four bytes that is not a hello.
        (&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], "malformed frame"),
        // A well-formed hello speaking protocol 99.
        (
            &[5, 0, 0, 0, 99, 1, b'x', 0, 0],
            "protocol version mismatch",
        ),
    ];
    for (payload, what) in cases {
        let dir = tempfile::tempdir().unwrap();
        let fake = fake_guest(dir.path(), payload);
        let capsem = Capsem::new();
        let out = capsem
            .cmd(&["true"])
            .env("CAPSEM_QEMU", &fake)
            .output()
            .unwrap();
        assert_failure(&out, what);
    }
}

#[test]
fn a_vm_killed_mid_command_is_reported() {
    let capsem = Capsem::new();
    let (mut child, qemu) = capsem.spawn_idle();
    std::process::Command::new("kill")
        .args(["-KILL", &qemu.to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || child
        .try_wait()
        .unwrap()
        .is_some()));
    let out = child.wait_with_output().unwrap();
    assert_failure(&out, "the VM stopped before the command finished");
}
