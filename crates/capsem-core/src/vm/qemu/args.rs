//! The QEMU command line.
//!
//! Every host resource reaches QEMU as an inherited file descriptor at a
//! fixed number ([`Fd`]); the command line names only `/proc/self/fd/N`,
//! `/dev/fdset/N` and `fd=N`, never a host path.

use std::ffi::OsString;

use super::super::accel::Accel;
use super::super::backend::GuestRoot;

/// Name of the channel port, matched by the agent.
pub const CHANNEL_PORT: &str = "capsem.0";
/// TCG translation cache, in MiB. QEMU's default is sized from host RAM (up
/// to 1 GiB); a sandbox running short commands needs far less.
const TCG_TB_SIZE_MIB: u32 = 64;
/// Kernel command line. `reboot=t` + `-no-reboot` make a guest power-off
/// end QEMU (there is no ACPI); `panic=-1` does the same on a guest panic.
/// `slab_nomerge`, `page_alloc.shuffle=1` and `init_on_alloc=1` make heap
/// exploits of the guest kernel harder.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet reboot=t panic=-1 8250.nr_uarts=1 \
    rdinit=/init random.trust_cpu=on slab_nomerge page_alloc.shuffle=1 init_on_alloc=1";
/// The guest kernel's timer frequency (`CONFIG_HZ_100` in
/// `images/kernel/capsem.config`).
const GUEST_HZ: u64 = 100;

/// The descriptor numbers QEMU finds its resources at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Fd {
    /// The verified kernel.
    Kernel = 3,
    /// The verified initramfs.
    Initramfs = 4,
    /// The verified root filesystem image.
    Rootfs = 5,
    /// The VM's end of the channel socket pair.
    Channel = 6,
    /// The VM's end of the console socket pair.
    Console = 7,
    /// A named sandbox's own disk, open read-write.
    HomeDisk = 8,
    /// The same, open read-only.
    HomeDiskReadOnly = 9,
    /// The VM's end of the QMP socket pair.
    Control = 10,
    /// The snapshot to resume.
    Incoming = 11,
}

/// What a VM's command line is made of, apart from its descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// KVM or TCG.
    pub accel: Accel,
    /// How the guest sees its root filesystem.
    pub root: GuestRoot,
    /// vCPUs.
    pub cpus: u32,
    /// Guest RAM.
    pub memory_mib: u32,
    /// Whether [`Fd::HomeDisk`] is a disk for `/root`.
    pub home_disk: bool,
    /// Whether [`Fd::Control`] is a QMP socket.
    pub control: bool,
    /// Whether [`Fd::Incoming`] is a snapshot to resume.
    pub incoming: bool,
}

/// The disks' serial numbers, by which the agent finds them.
pub const ROOT_SERIAL: &str = "capsem-root";
/// See [`ROOT_SERIAL`].
pub const HOME_SERIAL: &str = "capsem-home";

/// The machine: accelerator, CPUs, RAM, and the lockdown flags; no devices.
/// `mem-merge=off`: guest RAM is never offered to KSM, whose merging of
/// identical pages across VMs is a side channel between them.
pub fn machine_args(accel: Accel, cpus: u32, memory_mib: u32) -> Vec<OsString> {
    let (accel, cpu) = match accel {
        // No virtual PMU: with `-cpu host` on KVM it would hand the guest
        // the host CPU's performance counters (perf events cannot be
        // compiled out of an x86 kernel).
        Accel::Kvm => ("kvm".to_owned(), "host,pmu=off"),
        Accel::Tcg => (format!("tcg,tb-size={TCG_TB_SIZE_MIB}"), "max,pmu=off"),
    };
    to_args(&[
        "-M",
        "microvm,acpi=off,x-option-roms=off,isa-serial=on,mem-merge=off",
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
    ])
}

/// Direct kernel boot of `kernel` with `initramfs` (the bench's floor).
pub fn boot_args(accel: Accel, root: GuestRoot, kernel: &str, initramfs: &str) -> Vec<OsString> {
    to_args(&[
        "-kernel",
        kernel,
        "-initrd",
        initramfs,
        "-append",
        &kernel_cmdline(accel, root),
    ])
}

/// The full command line of a capsem VM with its resources at [`Fd`].
pub fn vm_args(shape: &Shape, name: &str) -> Vec<OsString> {
    let fd = |fd: Fd| fd as i32;
    let mut args = machine_args(shape.accel, shape.cpus, shape.memory_mib);
    // Whether `/root` is the disk is told in the handshake, not here: a
    // named sandbox resumes a template booted before it existed.
    let cmdline = kernel_cmdline(shape.accel, shape.root);
    args.extend(to_args(&[
        "-kernel",
        &format!("/proc/self/fd/{}", fd(Fd::Kernel)),
        "-initrd",
        &format!("/proc/self/fd/{}", fd(Fd::Initramfs)),
        "-append",
        &cmdline,
    ]));
    args.extend(to_args(&[
        "-name",
        name,
        "-chardev",
        &format!("socket,id=console,fd={},server=off", fd(Fd::Console)),
        "-serial",
        "chardev:console",
        "-add-fd",
        &format!("fd={},set=1,opaque=rootfs", fd(Fd::Rootfs)),
        "-drive",
        "if=none,id=rootfs,file=/dev/fdset/1,format=raw,readonly=on",
        "-device",
        &format!("virtio-blk-device,drive=rootfs,serial={ROOT_SERIAL}"),
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
        &format!("socket,id=channel,fd={},server=off", fd(Fd::Channel)),
        "-device",
        &format!("virtserialport,chardev=channel,name={CHANNEL_PORT}"),
        "-object",
        "rng-random,id=rng,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=rng",
        // Free pages the guest reports are discarded: idle memory goes
        // back to the host. Capsem never inflates the balloon.
        "-device",
        "virtio-balloon-device,free-page-reporting=on",
    ]));
    if shape.home_disk {
        args.extend(to_args(&[
            "-add-fd",
            &format!("fd={},set=2,opaque=home", fd(Fd::HomeDisk)),
            "-add-fd",
            &format!(
                "fd={},set=2,opaque=home-read-only",
                fd(Fd::HomeDiskReadOnly)
            ),
            "-drive",
            "if=none,id=home,file=/dev/fdset/2,format=raw,discard=unmap",
            "-device",
            &format!("virtio-blk-device,drive=home,serial={HOME_SERIAL}"),
        ]));
    }
    if shape.control {
        args.extend(to_args(&[
            "-chardev",
            &format!("socket,id=control,fd={},server=off", fd(Fd::Control)),
            "-mon",
            "chardev=control,mode=control",
        ]));
    }
    if shape.incoming {
        args.extend(to_args(&["-incoming", &format!("fd:{}", fd(Fd::Incoming))]));
    }
    args
}

/// BLAKE3 of the command line of a fixed shape, without the kernel
/// command line: it changes whenever capsem changes the machine or its
/// devices, which a snapshot must match.
pub fn device_line_hash() -> String {
    let shape = Shape {
        accel: Accel::Tcg,
        root: GuestRoot::Overlay,
        cpus: 1,
        memory_mib: 128,
        home_disk: false,
        control: false,
        incoming: false,
    };
    let args = vm_args(&shape, "template");
    let mut hasher = blake3::Hasher::new();
    let mut words = args.iter();
    while let Some(word) = words.next() {
        hasher.update(word.as_encoded_bytes()).update(b"\0");
        if word == "-append" {
            words.next();
        }
    }
    hasher.finalize().to_hex()[..16].to_owned()
}

fn to_args(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

/// The command line for `accel`. Under TCG the emulated CPU lacks a
/// constant TSC, so the kernel would calibrate its delay loop on every
/// secondary CPU (~150 ms each); `lpj=` from the host's clock rate skips
/// that. Delays computed from it are at least as long as intended, as an
/// emulated loop runs slower than the host.
fn kernel_cmdline(accel: Accel, root: GuestRoot) -> String {
    let lpj = match accel {
        Accel::Tcg => host_mhz().map(|mhz| (mhz * 1e6) as u64 / GUEST_HZ),
        Accel::Kvm => None,
    };
    // Unknown `name=value` words reach init as its environment.
    let line = format!("{KERNEL_CMDLINE} capsem_root={}", root.name());
    match lpj {
        Some(lpj) => format!("{line} lpj={lpj}"),
        None => line,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(accel: Accel, home_disk: bool) -> Shape {
        Shape {
            accel,
            root: GuestRoot::Overlay,
            cpus: 2,
            memory_mib: 1024,
            home_disk,
            control: false,
            incoming: false,
        }
    }

    fn joined(accel: Accel) -> String {
        vm_args(&shape(accel, false), "capsem-test")
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
        assert!(line.contains("file=/dev/fdset/1,format=raw,readonly=on"));
        assert!(line.contains("-no-reboot"));
        assert!(line.contains(",mem-merge=off "));
        assert!(line.contains(
            "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
        ));
    }

    #[test]
    fn qemu_is_given_no_host_path_but_dev_urandom() {
        let args: Vec<String> = vm_args(&shape(Accel::Tcg, true), "capsem-test")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // The kernel command line is the guest's, not a host path.
        let append = args.iter().position(|a| a == "-append").unwrap();
        let paths: Vec<&str> = args
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != append + 1)
            .flat_map(|(_, a)| a.split([',', '=']))
            .filter(|word| word.starts_with('/'))
            .filter(|word| !word.starts_with("/proc/self/fd/") && !word.starts_with("/dev/fdset/"))
            .collect();
        assert_eq!(paths, ["/dev/urandom"]);
    }

    #[test]
    fn a_home_disk_is_writable_and_named_on_the_command_line() {
        let line = vm_args(&shape(Accel::Tcg, true), "capsem-test")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains("file=/dev/fdset/2,format=raw,discard=unmap"));
        assert!(line.contains(&format!("serial={HOME_SERIAL}")));
        assert!(!line.contains("capsem_home"));
    }

    #[test]
    fn a_snapshot_is_taken_over_qmp_and_resumed_from_a_descriptor() {
        let both = Shape {
            control: true,
            incoming: true,
            ..shape(Accel::Tcg, false)
        };
        let line = vm_args(&both, "capsem-test")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(line.contains("-chardev socket,id=control,fd=10,server=off"));
        assert!(line.contains("-mon chardev=control,mode=control"));
        assert!(line.ends_with("-incoming fd:11"));
        assert!(!joined(Accel::Tcg).contains("-incoming") && !joined(Accel::Tcg).contains("-mon"));
    }

    #[test]
    fn accelerator_selects_cpu_model_and_bounds_tcg_cache() {
        assert!(joined(Accel::Tcg).contains("-accel tcg,tb-size=64 -cpu max,pmu=off"));
        assert!(joined(Accel::Kvm).contains("-accel kvm -cpu host,pmu=off"));
    }

    #[test]
    fn tcg_skips_delay_calibration_and_kvm_needs_nothing_extra() {
        let kvm = kernel_cmdline(Accel::Kvm, GuestRoot::Overlay);
        assert_eq!(kvm, format!("{KERNEL_CMDLINE} capsem_root=overlay"));
        if host_mhz().is_some() {
            assert!(kernel_cmdline(Accel::Tcg, GuestRoot::Overlay).contains(" lpj="));
        }
        let read_only = kernel_cmdline(Accel::Kvm, GuestRoot::ReadOnly);
        assert!(read_only.ends_with(" capsem_root=read-only"));
    }

    #[test]
    fn the_kernel_is_told_to_harden_its_heap() {
        for flag in ["slab_nomerge", "page_alloc.shuffle=1", "init_on_alloc=1"] {
            assert!(KERNEL_CMDLINE.split(' ').any(|w| w == flag), "{flag}");
        }
    }
}
