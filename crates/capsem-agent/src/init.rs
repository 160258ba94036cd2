//! Turning the initramfs into the sandbox's filesystem.
//!
//! The initramfs holds only this binary. The real root is the read-only
//! erofs image on the disk whose serial is `capsem-root`, seen through an
//! overlay whose writable layer is a fresh tmpfs (or, with
//! `capsem_root=read-only` on the kernel command line, as it is); `/tmp`,
//! `/run` and `/dev/shm` are fresh tmpfs mounts, so every boot starts
//! empty and nothing a command writes outlives the VM or reaches the
//! image. `/root` is a fresh tmpfs too, except in a named sandbox
//! (`capsem_home=disk`): there it is the sandbox's own ext4 disk (serial
//! `capsem-home`), which the host formatted and keeps between boots.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};

/// The disks, by the serial numbers the host gives them.
const ROOT_SERIAL: &str = "capsem-root";
const HOME_SERIAL: &str = "capsem-home";
const NEW_ROOT: &str = "/newroot";
/// Where the home disk is mounted (in the initramfs, out of the guest's
/// sight); its `root` directory becomes `/root`.
const HOME_DISK: &str = "/home-disk";
/// Set on the kernel command line when `/root` is a disk.
const HOME_VAR: &str = "capsem_home";
/// The image, under the overlay (in the initramfs, out of the guest's
/// sight once the root is switched).
const LOWER: &str = "/image";
/// The overlay's writable layer and its work directory.
const WRITABLE: &str = "/writable";
/// How the host asks for the root (`capsem_root=` on the kernel command
/// line, which the kernel hands to init as an environment variable).
const ROOT_MODE_VAR: &str = "capsem_root";
/// How long to wait for a disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(5);
const HOSTNAME: &str = "capsem";

/// Makes the agent's own descriptors (the channel to the host above all)
/// hard to take from guest processes, which run as root: PID 1 becomes
/// non-dumpable, so `ptrace`, `pidfd_getfd`, `/proc/1/fd` and
/// `/proc/1/mem` need `CAP_SYS_PTRACE`, and that capability leaves the
/// bounding set, so no command this agent starts (nor anything they
/// execute) can hold it. Commands can still trace their own children.
/// Runs before any thread exists: the bounding set is per thread, and
/// threads and children inherit it.
pub fn protect_self() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).context("making PID 1 non-dumpable")?;
    rustix::thread::remove_capability_from_bounding_set(rustix::thread::CapabilitySet::SYS_PTRACE)
        .context("dropping CAP_SYS_PTRACE from the bounding set")
}

/// Mounts everything and switches into the real root.
pub fn setup() -> Result<()> {
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    // The disks are found by their serial numbers in sysfs.
    make_dir("/sys", 0o555)?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        nodev_nosuid() | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_root()?;
    let home_disk = std::env::var(HOME_VAR).is_ok_and(|v| v == "disk");
    if home_disk {
        mount_home_disk()?;
    } else {
        mount_fs(
            "tmpfs",
            &format!("{NEW_ROOT}/root"),
            "tmpfs",
            nodev_nosuid(),
            Some("mode=0700"),
        )?;
    }
    for (dir, mode) in [("tmp", "1777"), ("run", "0755")] {
        let target = format!("{NEW_ROOT}/{dir}");
        let opts = format!("mode={mode}");
        mount_fs("tmpfs", &target, "tmpfs", nodev_nosuid(), Some(&opts))?;
    }
    if home_disk {
        // The whole disk, for what the sandbox keeps besides /root (the
        // workspace's changes).
        let target = format!("{NEW_ROOT}{}", crate::workspace::DISK);
        make_dir(&target, 0o700)?;
        mount(
            Some(HOME_DISK),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("binding the sandbox's disk at {target}"))?;
    }
    move_mount("/dev", &format!("{NEW_ROOT}/dev"))?;
    move_mount("/sys", &format!("{NEW_ROOT}/sys"))?;
    switch_root()?;
    mount_fs(
        "proc",
        "/proc",
        "proc",
        nodev_nosuid() | MsFlags::MS_NOEXEC,
        None,
    )?;
    make_dir("/dev/pts", 0o755)?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    make_dir("/dev/shm", 0o1777)?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        nodev_nosuid(),
        Some("mode=1777"),
    )?;
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link).with_context(|| format!("linking {link}"))?;
    }
    nix::unistd::sethostname(HOSTNAME).context("setting the hostname")
}

fn nodev_nosuid() -> MsFlags {
    MsFlags::MS_NODEV | MsFlags::MS_NOSUID
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} on {target}"))
}

fn move_mount(from: &str, to: &str) -> Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .with_context(|| format!("moving mount {from} to {to}"))
}

fn make_dir(path: &str, mode: u32) -> Result<()> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {path}")),
    }
    // The umask may have narrowed the mode (and drops the sticky bit).
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {path}"))
}

/// The device of the virtio disk with this serial number, once it exists.
fn find_disk(serial: &str) -> Result<String> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Some(name) = disk_with_serial(serial) {
            let device = format!("/dev/{name}");
            if Path::new(&device).exists() {
                return Ok(device);
            }
        }
        if Instant::now() > deadline {
            bail!("the disk {serial} did not appear within {DISK_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn disk_with_serial(serial: &str) -> Option<String> {
    fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let found = fs::read_to_string(entry.path().join("serial")).ok()?;
            (found.trim() == serial).then(|| entry.file_name().to_string_lossy().into_owned())
        })
}

/// Mounts the sandbox's disk and binds its `root` directory at `/root`
/// (the file system's own root holds `lost+found`).
fn mount_home_disk() -> Result<()> {
    let device = find_disk(HOME_SERIAL)?;
    make_dir(HOME_DISK, 0o700)?;
    mount(
        Some(device.as_str()),
        HOME_DISK,
        Some("ext4"),
        nodev_nosuid(),
        None::<&str>,
    )
    .with_context(|| format!("mounting the sandbox's disk {device}"))?;
    let home = format!("{HOME_DISK}/root");
    make_dir(&home, 0o700)?;
    let target = format!("{NEW_ROOT}/root");
    mount(
        Some(home.as_str()),
        target.as_str(),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("binding {home} at /root"))
}

/// Mounts the image read-only at `NEW_ROOT`, or under an overlay there.
fn mount_root() -> Result<()> {
    let device = find_disk(ROOT_SERIAL)?;
    make_dir(NEW_ROOT, 0o755)?;
    let read_only = std::env::var(ROOT_MODE_VAR).is_ok_and(|mode| mode == "read-only");
    let image = if read_only { NEW_ROOT } else { LOWER };
    make_dir(image, 0o755)?;
    mount(
        Some(device.as_str()),
        image,
        Some("erofs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .with_context(|| format!("mounting the root filesystem {device} read-only"))?;
    if read_only {
        return Ok(());
    }
    make_dir(WRITABLE, 0o755)?;
    mount_fs(
        "tmpfs",
        WRITABLE,
        "tmpfs",
        nodev_nosuid(),
        Some("mode=0755"),
    )?;
    for dir in ["upper", "work"] {
        make_dir(&format!("{WRITABLE}/{dir}"), 0o755)?;
    }
    let options = format!("lowerdir={LOWER},upperdir={WRITABLE}/upper,workdir={WRITABLE}/work");
    mount_fs(
        "overlay",
        NEW_ROOT,
        "overlay",
        MsFlags::MS_NODEV,
        Some(&options),
    )
}

/// Makes `NEW_ROOT` the root. The initramfs cannot be unmounted; freeing
/// its one file (this binary, already loaded) returns its memory.
fn switch_root() -> Result<()> {
    fs::remove_file("/init").context("removing /init from the initramfs")?;
    std::env::set_current_dir(NEW_ROOT).context("entering the new root")?;
    move_mount(".", "/")?;
    nix::unistd::chroot(".").context("chroot into the new root")?;
    std::env::set_current_dir("/").context("entering /")
}
