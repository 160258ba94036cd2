//! The QEMU `microvm` backend.
//!
//! QEMU runs with no default devices and no NIC; the guest sees a read-only
//! virtio disk, one virtio-serial port (the channel), virtio-rng and a
//! serial console written to the session's boot log. It runs under its
//! seccomp sandbox, with an empty environment, in its own process group (so
//! a terminal's Ctrl-C reaches the guest through capsem rather than killing
//! QEMU), and it dies with the thread that started it (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::accel::Accel;
use super::backend::{Backend, VmConfig, VmError, VmExit, VmHandle};
use crate::env;

/// QEMU's name on `PATH`.
const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Name of the channel port, matched by the agent.
pub const CHANNEL_PORT: &str = "capsem.0";
/// TCG translation cache, in MiB. QEMU's default is sized from host RAM (up
/// to 1 GiB); a sandbox running short commands needs far less.
const TCG_TB_SIZE_MIB: u32 = 64;
/// Kernel command line. `reboot=t` + `-no-reboot` make a guest power-off
/// end QEMU (there is no ACPI); `panic=-1` does the same on a guest panic.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet reboot=t panic=-1 8250.nr_uarts=1 \
    rdinit=/init random.trust_cpu=on";
/// The guest kernel's timer frequency (`CONFIG_HZ_100` in
/// `images/kernel/capsem.config`).
const GUEST_HZ: u64 = 100;

/// The command line for `accel`. Under TCG the emulated CPU lacks a
/// constant TSC, so the kernel would calibrate its delay loop on every
/// secondary CPU (~150 ms each); `lpj=` from the host's clock rate skips
/// that. Delays computed from it are at least as long as intended, as an
/// emulated loop runs slower than the host.
fn kernel_cmdline(accel: Accel) -> String {
    let lpj = match accel {
        Accel::Tcg => host_mhz().map(|mhz| (mhz * 1e6) as u64 / GUEST_HZ),
        Accel::Kvm => None,
    };
    match lpj {
        Some(lpj) => format!("{KERNEL_CMDLINE} lpj={lpj}"),
        None => KERNEL_CMDLINE.to_owned(),
    }
}

/// The host CPU's clock rate from `/proc/cpuinfo`.
fn host_mhz() -> Option<f64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|line| {
            line.strip_prefix("cpu MHz")?
                .split(':')
                .nth(1)?
                .trim()
                .parse()
                .ok()
        })
        .filter(|mhz: &f64| *mhz > 0.0)
}

/// Runs VMs with QEMU.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    binary: PathBuf,
}

impl QemuBackend {
    /// Finds QEMU: `$CAPSEM_QEMU`, else `qemu-system-x86_64` on `PATH`.
    pub fn locate() -> Result<Self, VmError> {
        let wanted = env::path_var(env::CAPSEM_QEMU).unwrap_or_else(|| PathBuf::from(QEMU_BINARY));
        let found = if wanted.components().count() > 1 {
            wanted.is_file().then(|| wanted.clone())
        } else {
            find_in_path(&wanted)
        };
        found
            .map(|binary| QemuBackend { binary })
            .ok_or_else(|| VmError::QemuNotFound {
                binary: wanted.display().to_string(),
            })
    }
}

fn find_in_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The machine a guest boots on: accelerator, CPUs, RAM, kernel, initramfs
/// and serial console, with no devices at all. The benchmark's floor boots
/// exactly this.
pub fn machine_args(
    accel: Accel,
    cpus: u32,
    memory_mib: u32,
    kernel: &Path,
    initramfs: &Path,
    boot_log: &Path,
) -> Vec<OsString> {
    let cmdline = kernel_cmdline(accel);
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm".to_owned(), "host"),
        Accel::Tcg => (format!("tcg,tb-size={TCG_TB_SIZE_MIB}"), "max"),
    };
    let args = [
        "-M",
        "microvm,acpi=off,x-option-roms=off,isa-serial=on",
        "-accel",
        &accel,
        "-cpu",
        cpu,
        "-smp",
        &cpus.to_string(),
        "-m",
        &format!("{memory_mib}M"),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-kernel",
        &kernel.display().to_string(),
        "-initrd",
        &initramfs.display().to_string(),
        "-append",
        &cmdline,
        "-chardev",
        &format!("file,id=console,path={}", boot_log.display()),
        "-serial",
        "chardev:console",
    ];
    args.iter().map(OsString::from).collect()
}

/// The QEMU command line for `config`: the machine, plus the read-only root
/// disk, the channel port and the entropy source. No NIC.
pub fn args(config: &VmConfig) -> Vec<OsString> {
    let mut args = machine_args(
        config.accel,
        config.cpus,
        config.memory_mib,
        &config.assets.kernel,
        &config.assets.initramfs,
        &config.boot_log,
    );
    let devices = [
        "-name",
        &config.name,
        "-drive",
        &format!(
            "if=none,id=rootfs,file={},format=raw,readonly=on",
            config.assets.rootfs.display()
        ),
        "-device",
        "virtio-blk-device,drive=rootfs",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!("socket,id=channel,path={}", config.channel_socket.display()),
        "-device",
        &format!("virtserialport,chardev=channel,name={CHANNEL_PORT}"),
        "-object",
        "rng-random,id=rng,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng",
    ];
    args.extend(devices.iter().map(OsString::from));
    args
}

impl Backend for QemuBackend {
    fn launch(&self, config: &VmConfig) -> Result<VmHandle, VmError> {
        let spawn_err = |source| VmError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        };
        let log = File::create(&config.monitor_log).map_err(spawn_err)?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args(config))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_err)?)
            .stderr(log)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed; prctl(2) and getppid(2) are
        // raw system calls that neither allocate nor take locks.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died before the death signal was armed.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        spawn_supervised(cmd).map_err(spawn_err)
    }
}

/// Spawns `cmd` from a thread that lives exactly as long as the child.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// so forking from a short-lived worker thread would kill the VM early.
fn spawn_supervised(mut cmd: Command) -> std::io::Result<VmHandle> {
    let (exit_tx, exit_rx) = watch::channel(None);
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("vm-monitor".into())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                    return;
                }
            };
            let pidfd = rustix::process::Pid::from_raw(child.id() as i32)
                .ok_or_else(|| std::io::Error::other("invalid pid"))
                .and_then(|pid| {
                    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                        .map_err(std::io::Error::from)
                });
            let _ = started_tx.send(pidfd.map(|fd| (child.id(), fd)));
            let exit = match child.wait() {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => VmExit::Code(code),
                    (None, Some(sig)) => VmExit::Signal(sig),
                    (None, None) => VmExit::Signal(9),
                },
                Err(_) => VmExit::Signal(9),
            };
            let _ = exit_tx.send(Some(exit));
        })?;
    let (pid, pidfd) = started_rx
        .recv()
        .map_err(|_| std::io::Error::other("the VM monitor thread died"))??;
    Ok(VmHandle::new(Some(pid), exit_rx, killer(pidfd)))
}

/// Kills through a pidfd, which cannot hit a recycled pid once the child
/// has been reaped.
fn killer(pidfd: OwnedFd) -> Arc<dyn Fn() + Send + Sync> {
    Arc::new(move || {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::VerifiedAssets;

    fn config(accel: Accel) -> VmConfig {
        VmConfig {
            name: "capsem-test".into(),
            assets: VerifiedAssets {
                kernel: "/a/vmlinux".into(),
                initramfs: "/a/initramfs.cpio".into(),
                rootfs: "/a/rootfs.erofs".into(),
            },
            accel,
            cpus: 2,
            memory_mib: 1024,
            channel_socket: "/run/x/channel.sock".into(),
            boot_log: "/s/boot.log".into(),
            monitor_log: "/s/qemu.log".into(),
        }
    }

    fn joined(accel: Accel) -> String {
        args(&config(accel))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn the_vm_has_no_network_and_a_read_only_root() {
        let line = joined(Accel::Tcg);
        assert!(line.contains("-nodefaults"));
        assert!(!line.contains("-netdev") && !line.contains("-nic") && !line.contains("-net "));
        assert!(line.contains("file=/a/rootfs.erofs,format=raw,readonly=on"));
        assert!(line.contains("-no-reboot"));
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
    }

    #[test]
    fn accelerator_selects_cpu_model_and_bounds_tcg_cache() {
        assert!(joined(Accel::Tcg).contains("-accel tcg,tb-size=64 -cpu max"));
        assert!(joined(Accel::Kvm).contains("-accel kvm -cpu host"));
    }

    #[test]
    fn tcg_skips_delay_calibration_and_kvm_needs_nothing_extra() {
        assert_eq!(kernel_cmdline(Accel::Kvm), KERNEL_CMDLINE);
        if host_mhz().is_some() {
            assert!(kernel_cmdline(Accel::Tcg).contains(" lpj="));
        }
    }

    #[test]
    fn missing_qemu_names_the_package() {
        let err = VmError::QemuNotFound {
            binary: "/nope/qemu".into(),
        };
        assert!(err.to_string().contains("qemu-system-x86"));
    }
}
