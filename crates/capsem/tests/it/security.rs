//! The host side of the security claims: QEMU confined, capsem bounded,
//! the guest's excesses contained (docs/security.md, claims 6 and 7).

use std::fs;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{
    Capsem, RSS_LIMIT_KIB, alive, assert_code, children_of, peak_kib, status_field, stdout,
    wait_until, wait_with_peak_kib,
};

#[test]
fn qemu_runs_confined_and_sees_only_what_it_was_given() {
    let capsem = Capsem::new();
    let (mut child, qemu) = capsem.spawn_idle();
    assert_eq!(
        status_field(qemu, "Seccomp"),
        "2",
        "QEMU's seccomp sandbox is off"
    );
    assert_eq!(status_field(qemu, "NoNewPrivs"), "1");
    assert_eq!(status_field(qemu, "CapEff"), "0000000000000000");
    let uid: u32 = status_field(qemu, "Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let we_are_root = status_field(std::process::id(), "Uid").starts_with("0\t");
    if we_are_root {
        assert!(uid >= 1_000_000_000, "QEMU kept uid {uid} of a root capsem");
        assert!(status_field(qemu, "Groups").is_empty());
    }
    assert!(
        fs::read(format!("/proc/{qemu}/environ"))
            .unwrap()
            .is_empty()
    );
    let home = capsem.home().display().to_string();
    for fd in fs::read_dir(format!("/proc/{qemu}/fd")).unwrap() {
        let target = fs::read_link(fd.unwrap().path())
            .unwrap()
            .display()
            .to_string();
        let expected = target.starts_with("socket:")
            || target.starts_with("anon_inode:")
            || target.starts_with("pipe:")
            || target.starts_with(&format!("{home}/sessions/"))
            || target.ends_with("/vmlinux")
            || target.ends_with("/initramfs.cpio")
            || target.ends_with("/rootfs.erofs")
            || ["/dev/null", "/dev/urandom", "/dev/kvm"].contains(&target.as_str());
        assert!(expected, "QEMU holds an unexpected file: {target}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_output_flood_keeps_capsem_small() {
    let capsem = Capsem::new();
    let mut child = capsem
        .cmd(&["-q", "--timeout", "8", "cat /dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak) = wait_with_peak_kib(&mut child);
    assert_eq!(status.code(), Some(124), "the flood ran until the timeout");
    assert!(
        peak < RSS_LIMIT_KIB,
        "capsem grew to {peak} KiB under an output flood"
    );
}

#[test]
fn a_reader_that_stops_reading_stalls_the_guest_not_capsem_memory() {
    let capsem = Capsem::new();
    // stdout is piped and never read: the pipe fills, capsem stops reading
    // the guest, the guest's writes block.
    let mut child = capsem
        .cmd(&["-q", "cat /dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read a little, so the flood has surely begun, then stop reading.
    let mut first = vec![0; 1 << 20];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let peak = peak_kib(pid);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        peak < RSS_LIMIT_KIB,
        "capsem grew to {peak} KiB with a stalled reader"
    );
}

#[test]
fn filling_the_guest_tmpfs_fails_inside_the_guest_only() {
    let capsem = Capsem::new();
    capsem.user_settings("[vm]\nmemory_mib = 256\n");
    let out = capsem.run(&[
        "-q",
        "head -c 1G /dev/zero > /tmp/fill; echo status=$?; rm /tmp/fill; echo ok",
    ]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("status=1\nok"), "{}", stdout(&out));
}

#[test]
fn a_fork_bomb_is_contained() {
    let capsem = Capsem::new();
    capsem.user_settings("[vm]\nmemory_mib = 256\n");
    let mut child = capsem
        .cmd(&["-q", "--timeout", "10", "b() { b | b & }; b; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let qemu = loop {
        if let Some(pid) = children_of(child.id()).first().copied() {
            break pid;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("capsem ended before starting a VM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = child.wait().unwrap();
    // The timeout ends it (124), or the starved guest dies first (125).
    assert!(matches!(status.code(), Some(124 | 125)), "{status:?}");
    assert!(wait_until(Duration::from_secs(5), || !alive(qemu)));
}
