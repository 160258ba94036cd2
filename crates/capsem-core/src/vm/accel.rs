//! Choosing the accelerator: KVM when the host really has hardware
//! virtualization, QEMU's TCG software emulation otherwise.
//!
//! `/dev/kvm` existing is not enough: on PVM hosts (nested virtualization
//! without VT-x/AMD-V) it opens fine, yet a stock kernel dies in early boot.
//! So KVM also needs the CPU to advertise `vmx` or `svm`.

use std::fs;
use std::path::Path;

use serde::Deserialize;

/// The `vm.accel` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelSetting {
    /// KVM when usable, else TCG with a notice.
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG always.
    Tcg,
}

/// The accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// Lower-case name, as in QEMU's `-accel`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator chosen, and the notice to show when it is a fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// What to run with.
    pub accel: Accel,
    /// Said once on stderr when auto mode fell back to TCG.
    pub notice: Option<String>,
}

/// `vm.accel = "kvm"` on a host without usable KVM.
#[derive(Debug, thiserror::Error)]
#[error("vm.accel is \"kvm\" but KVM is not usable here: {reason}")]
pub struct KvmUnavailable {
    /// Why not.
    pub reason: String,
}

/// Chooses for this host.
pub fn choose(setting: AccelSetting) -> Result<AccelChoice, KvmUnavailable> {
    choose_with(setting, || {
        kvm_unusable_reason(
            &fs::read_to_string("/proc/cpuinfo").unwrap_or_default(),
            Path::new("/dev/kvm"),
        )
    })
}

fn choose_with(
    setting: AccelSetting,
    probe: impl FnOnce() -> Option<String>,
) -> Result<AccelChoice, KvmUnavailable> {
    let tcg = |notice| AccelChoice {
        accel: Accel::Tcg,
        notice,
    };
    match setting {
        AccelSetting::Tcg => Ok(tcg(None)),
        AccelSetting::Kvm => match probe() {
            None => Ok(AccelChoice {
                accel: Accel::Kvm,
                notice: None,
            }),
            Some(reason) => Err(KvmUnavailable { reason }),
        },
        AccelSetting::Auto => Ok(match probe() {
            None => AccelChoice {
                accel: Accel::Kvm,
                notice: None,
            },
            Some(reason) => tcg(Some(format!(
                "KVM is not usable ({reason}); using QEMU TCG software emulation, which is slower \
                 (`capsem settings set vm.accel tcg` chooses it and silences this)"
            ))),
        }),
    }
}

/// Why KVM cannot run a stock guest here, or `None` when it can.
fn kvm_unusable_reason(cpuinfo: &str, dev_kvm: &Path) -> Option<String> {
    let has_hw_virt = cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .flat_map(|line| line.split_whitespace())
        .any(|flag| flag == "vmx" || flag == "svm");
    if !has_hw_virt {
        return Some("the CPU advertises no vmx/svm hardware virtualization".into());
    }
    match fs::OpenOptions::new().read(true).write(true).open(dev_kvm) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("{} does not exist", dev_kvm.display()))
        }
        Err(e) => Some(format!("{} cannot be opened: {e}", dev_kvm.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX: &str = "processor : 0\nflags\t\t: fpu vme vmx sse\n";
    const NO_VIRT: &str = "processor : 0\nflags\t\t: fpu vme sse hypervisor\n";

    #[test]
    fn no_hardware_virtualization_means_tcg_even_with_dev_kvm() {
        let dir = tempfile::tempdir().unwrap();
        let kvm = dir.path().join("kvm");
        fs::write(&kvm, b"").unwrap();
        let reason = kvm_unusable_reason(NO_VIRT, &kvm).unwrap();
        assert!(reason.contains("vmx/svm"), "{reason}");
        assert_eq!(kvm_unusable_reason(VMX, &kvm), None);
    }

    #[test]
    fn missing_dev_kvm_is_named() {
        let reason = kvm_unusable_reason(VMX, Path::new("/nonexistent/kvm")).unwrap();
        assert!(
            reason.contains("/nonexistent/kvm does not exist"),
            "{reason}"
        );
    }

    #[test]
    fn auto_falls_back_with_one_notice_and_kvm_fails() {
        let unusable = || Some("no vmx".to_string());
        let auto = choose_with(AccelSetting::Auto, unusable).unwrap();
        assert_eq!(auto.accel, Accel::Tcg);
        assert!(auto.notice.unwrap().contains("no vmx"));
        let err = choose_with(AccelSetting::Kvm, unusable).unwrap_err();
        assert!(err.to_string().contains("no vmx"));
        let tcg = choose_with(AccelSetting::Tcg, || panic!("TCG must not probe")).unwrap();
        assert_eq!(
            tcg,
            AccelChoice {
                accel: Accel::Tcg,
                notice: None
            }
        );
        let kvm = choose_with(AccelSetting::Auto, || None).unwrap();
        assert_eq!(kvm.accel, Accel::Kvm);
    }
}
