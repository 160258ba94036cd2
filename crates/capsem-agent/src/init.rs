//! Turning the initramfs into the sandbox's filesystem.
//!
//! The initramfs holds only this binary. The real root is the read-only
//! erofs image on the disk whose serial is `capsem-root`, seen through an
//! overlay whose writable layer is a fresh tmpfs (or, with
//! `capsem_root=read-only` on the kernel command line, as it is); `/tmp`,
//! `/run` and `/dev/shm` are fresh tmpfs mounts, so every boot starts
//! empty and nothing a command writes outlives the VM or reaches the
//! image. `/root` is a fresh tmpfs too, except in a named sandbox: there
//! the host's hello asks for the sandbox's own ext4 disk (serial
//! `capsem-home`), which the host formatted and keeps between boots, and
//! [`mount_home_disk`] mounts it over the tmpfs. That happens after the
//! boot, not during it, so that a named sandbox can resume a boot
//! template too: the template booted with a blank disk it never mounted.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::mount::{MsFlags, mount};

/// The disks, by the serial numbers the host gives them.
const ROOT_SERIAL: &str = "capsem-root";
const HOME_SERIAL: &str = "capsem-home";
const NEW_ROOT: &str = "/newroot";
/// Whether `/root` is the sandbox's disk ([`mount_home_disk`]).
static HOME_IS_DISK: AtomicBool = AtomicBool::new(false);
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
    for (dir, mode) in [("root", "0700"), ("tmp", "1777"), ("run", "0755")] {
        let target = format!("{NEW_ROOT}/{dir}");
        let opts = format!("mode={mode}");
        mount_fs("tmpfs", &target, "tmpfs", nodev_nosuid(), Some(&opts))?;
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

// `BLKFLSBUF`: `_IO(0x12, 97)`.
nix::ioctl_none!(blk_flush_buffers, 0x12, 97);

/// Mounts the sandbox's disk whole at [`crate::workspace::DISK`] (what it
/// keeps besides `/root`: the workspace's changes) and binds its `root`
/// directory over `/root` (the file system's own root holds
/// `lost+found`). Runs once the host's hello asked for it, before any
/// command. The kernel's cache of the device is dropped first: a guest
/// resumed from a template probed the template's blank disk, not this one.
pub fn mount_home_disk() -> Result<()> {
    let device = find_disk(HOME_SERIAL)?;
    let disk = fs::File::open(&device).with_context(|| format!("opening {device}"))?;
    // SAFETY: BLKFLSBUF takes no argument; the descriptor is an open
    // block device.
    unsafe { blk_flush_buffers(disk.as_raw_fd()) }
        .with_context(|| format!("dropping the cached blocks of {device}"))?;
    drop(disk);
    let whole = crate::workspace::DISK;
    make_dir(whole, 0o700)?;
    mount(
        Some(device.as_str()),
        whole,
        Some("ext4"),
        nodev_nosuid(),
        None::<&str>,
    )
    .with_context(|| format!("mounting the sandbox's disk {device}"))?;
    HOME_IS_DISK.store(true, Ordering::Release);
    let home = format!("{whole}/root");
    make_dir(&home, 0o700)?;
    mount(
        Some(home.as_str()),
        "/root",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(|| format!("binding {home} at /root"))
}

/// Whether the sandbox's disk is mounted ([`mount_home_disk`]).
pub fn home_is_disk() -> bool {
    HOME_IS_DISK.load(Ordering::Acquire)
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
