//! The built kernel's configuration, checked option by option, so a config
//! drift fails CI.

use crate::support::asset_dir;

const REQUIRED: &[(&str, &str)] = &[
    ("CONFIG_MODULES", "n"),
    ("CONFIG_DUMMY", "y"),
    ("CONFIG_ETHERNET", "n"),
    ("CONFIG_NFT_REDIR", "y"),
    ("CONFIG_PACKET", "n"),
    ("CONFIG_VIRTIO_MMIO", "y"),
    ("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "y"),
    ("CONFIG_VIRTIO_BLK", "y"),
    ("CONFIG_VIRTIO_CONSOLE", "y"),
    ("CONFIG_HW_RANDOM_VIRTIO", "y"),
    ("CONFIG_EROFS_FS", "y"),
    ("CONFIG_TMPFS", "y"),
    ("CONFIG_DEVTMPFS", "y"),
    ("CONFIG_UNIX98_PTYS", "y"),
    ("CONFIG_SECCOMP_FILTER", "y"),
    ("CONFIG_STACKPROTECTOR_STRONG", "y"),
    ("CONFIG_FORTIFY_SOURCE", "y"),
    ("CONFIG_HARDENED_USERCOPY", "y"),
    ("CONFIG_INIT_ON_ALLOC_DEFAULT_ON", "y"),
    ("CONFIG_RANDOMIZE_BASE", "y"),
    ("CONFIG_DEVMEM", "n"),
    ("CONFIG_KALLSYMS", "n"),
    ("CONFIG_BPF_SYSCALL", "n"),
    ("CONFIG_USB_SUPPORT", "n"),
    ("CONFIG_PVH", "y"),
    ("CONFIG_NET", "y"),
    ("CONFIG_INET", "y"),
    ("CONFIG_IPV6", "n"),
    ("CONFIG_KEXEC", "n"),
];

#[test]
fn the_built_kernel_has_every_required_option() {
    let config = std::fs::read_to_string(asset_dir().join("kernel.config")).unwrap();
    let value = |name: &str| -> String {
        config
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("n")
            .to_owned()
    };
    let wrong: Vec<String> = REQUIRED
        .iter()
        .filter(|(name, want)| value(name) != *want)
        .map(|(name, want)| format!("{name}={} (want {want})", value(name)))
        .collect();
    assert!(wrong.is_empty(), "kernel config drifted: {wrong:?}");
}

#[test]
fn no_network_device_driver_is_built_in() {
    let config = std::fs::read_to_string(asset_dir().join("kernel.config")).unwrap();
    let drivers: Vec<&str> = config
        .lines()
        .filter(|l| l.ends_with("=y"))
        .filter(|l| {
            l.starts_with("CONFIG_VIRTIO_NET")
                || l.starts_with("CONFIG_E1000")
                || l.starts_with("CONFIG_NET_VENDOR")
                || l.starts_with("CONFIG_WLAN")
                || l.starts_with("CONFIG_TUN")
                || l.starts_with("CONFIG_VETH")
                || l.starts_with("CONFIG_MACVLAN")
                || l.starts_with("CONFIG_VSOCKETS")
        })
        .collect();
    assert!(drivers.is_empty(), "{drivers:?}");
}
