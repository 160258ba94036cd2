//! What makes this VM its own, set before any program of the user runs.
//!
//! A VM restored from a boot template starts with the template's memory:
//! its kernel's RNG state, and everything derived from it so far, are the
//! same in every VM restored from it. The host's hello carries fresh
//! entropy; it is mixed into the kernel's input pool and the CRNG is
//! reseeded from it, which also discards the per-CPU batches every
//! `get_random_*` call draws from. Everything read from the RNG afterwards
//! (`/dev/urandom`, `getrandom(2)`, ASLR of new processes, the
//! `boot_id`, which the kernel makes on its first read) differs per VM.
//! The machine-id is drawn from it next.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};

/// Where the per-VM machine-id is written (a tmpfs) and where it is
/// mounted over the image's empty file.
const MACHINE_ID_RUN: &str = "/run/machine-id";
const MACHINE_ID: &str = "/etc/machine-id";

/// `struct rand_pool_info` with room for the host's bytes.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 32],
}

// `RNDADDENTROPY` is declared as `_IOW('R', 0x03, int[2])`: the size in
// the request code is the header's, the kernel reads `buf_size` more bytes.
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    PoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Reseeds the kernel's CRNG from `entropy` and gives the VM a machine-id
/// of its own. A failure to reseed is an error: a clone must not run with
/// its template's RNG.
pub fn make_own(entropy: &[u8; 32]) -> Result<()> {
    let mut urandom = File::open("/dev/urandom").context("opening /dev/urandom")?;
    let info = PoolInfo {
        entropy_count: (entropy.len() * 8) as libc::c_int,
        buf_size: entropy.len() as libc::c_int,
        buf: *entropy,
    };
    // SAFETY: `info` is a valid `rand_pool_info` whose `buf_size` is the
    // length of its trailing buffer, alive for the call; the kernel only
    // reads it.
    unsafe { rnd_add_entropy(urandom.as_raw_fd(), &info) }.context("RNDADDENTROPY")?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { rnd_reseed_crng(urandom.as_raw_fd()) }.context("RNDRESEEDCRNG")?;
    let mut id = [0u8; 16];
    urandom
        .read_exact(&mut id)
        .context("reading /dev/urandom")?;
    if let Err(e) = set_machine_id(&id) {
        tracing::warn!("the VM keeps the image's machine-id: {e:#}");
    }
    Ok(())
}

/// Writes `id` as the machine-id (32 hex digits and a newline) and mounts
/// it over the image's, which may be read-only.
fn set_machine_id(id: &[u8; 16]) -> Result<()> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(MACHINE_ID_RUN, format!("{hex}\n")).context("writing /run/machine-id")?;
    mount(
        Some(MACHINE_ID_RUN),
        MACHINE_ID,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("mounting /run/machine-id on /etc/machine-id")
}
