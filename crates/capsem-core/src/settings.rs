//! Settings: built-in defaults, overridden by `~/.capsem/user.toml`, both
//! overridden by `/etc/capsem/corp.toml`. Whatever the corporate file sets
//! is locked: a user value for it is ignored with a warning.
//!
//! The files are plain TOML where a dotted key is a table path, so
//! `vm.cpus = 2` is written `[vm]` / `cpus = 2`. Keys this version does not
//! know are left alone, so a newer file still loads.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::vm::AccelSetting;

/// Fewest and most vCPUs a VM may have.
pub const CPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=64;
/// Smallest and largest guest RAM, in MiB.
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u32> = 128..=65536;

/// A settings file that cannot be used. The file is never rewritten.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file exists but cannot be read.
    #[error("reading settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("settings file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("settings file {path}: {key} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// The value found.
        value: String,
        /// The allowed range.
        allowed: String,
    },
}

/// VM settings (`[vm]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSettings {
    /// `vm.accel`: `auto`, `kvm` or `tcg`.
    pub accel: AccelSetting,
    /// `vm.cpus`: vCPUs.
    pub cpus: u32,
    /// `vm.memory_mib`: guest RAM in MiB.
    pub memory_mib: u32,
    /// `vm.boot_timeout_secs`: how long the guest agent may take to answer.
    pub boot_timeout_secs: u32,
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            accel: AccelSetting::Auto,
            cpus: 2,
            memory_mib: 1024,
            boot_timeout_secs: 60,
        }
    }
}

/// All settings in effect, with the warnings their loading produced.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `[vm]`.
    pub vm: VmSettings,
    /// Things the user should know (a locked key, for instance).
    pub warnings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct FileLayer {
    #[serde(default)]
    vm: VmLayer,
}

#[derive(Debug, Default, Deserialize)]
struct VmLayer {
    accel: Option<AccelSetting>,
    cpus: Option<u32>,
    memory_mib: Option<u32>,
    boot_timeout_secs: Option<u32>,
}

impl Settings {
    /// Loads the default files (see [`crate::paths`]).
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(
            &crate::paths::user_settings(),
            &crate::paths::corp_settings(),
        )
    }

    /// Loads from explicit files; a missing file is an empty layer.
    pub fn load_from(user_path: &Path, corp_path: &Path) -> Result<Self, SettingsError> {
        let user = read_layer(user_path)?.vm;
        let corp = read_layer(corp_path)?.vm;
        let mut settings = Settings::default();
        let corp_keys = corp.keys();
        for key in user.keys().into_iter().filter(|k| corp_keys.contains(k)) {
            settings.warnings.push(format!(
                "{key} in {} is ignored: it is locked by {}",
                user_path.display(),
                corp_path.display()
            ));
        }
        user.apply_to(&mut settings.vm, user_path)?;
        corp.apply_to(&mut settings.vm, corp_path)?;
        Ok(settings)
    }
}

impl VmLayer {
    /// The dotted keys this layer sets.
    fn keys(&self) -> Vec<&'static str> {
        [
            ("vm.accel", self.accel.is_some()),
            ("vm.cpus", self.cpus.is_some()),
            ("vm.memory_mib", self.memory_mib.is_some()),
            ("vm.boot_timeout_secs", self.boot_timeout_secs.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    fn apply_to(self, vm: &mut VmSettings, path: &Path) -> Result<(), SettingsError> {
        if let Some(accel) = self.accel {
            vm.accel = accel;
        }
        if let Some(cpus) = self.cpus {
            vm.cpus = in_range(path, "vm.cpus", cpus, &CPUS_RANGE)?;
        }
        if let Some(mib) = self.memory_mib {
            vm.memory_mib = in_range(path, "vm.memory_mib", mib, &MEMORY_MIB_RANGE)?;
        }
        if let Some(secs) = self.boot_timeout_secs {
            vm.boot_timeout_secs = in_range(path, "vm.boot_timeout_secs", secs, &(1..=3600))?;
        }
        Ok(())
    }
}

fn in_range(
    path: &Path,
    key: &'static str,
    value: u32,
    range: &std::ops::RangeInclusive<u32>,
) -> Result<u32, SettingsError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(SettingsError::OutOfRange {
            path: path.to_owned(),
            key,
            value: value.to_string(),
            allowed: format!("{}..={}", range.start(), range.end()),
        })
    }
}

fn read_layer(path: &Path) -> Result<FileLayer, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileLayer::default()),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    toml::from_str(&text).map_err(|e| SettingsError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(user: Option<&str>, corp: Option<&str>) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (u, c) = (dir.path().join("user.toml"), dir.path().join("corp.toml"));
        if let Some(text) = user {
            fs::write(&u, text).unwrap();
        }
        if let Some(text) = corp {
            fs::write(&c, text).unwrap();
        }
        (dir, u, c)
    }

    #[test]
    fn missing_files_give_defaults() {
        let (_d, u, c) = files(None, None);
        let s = Settings::load_from(&u, &c).unwrap();
        assert_eq!(s.vm, VmSettings::default());
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn user_overrides_defaults_and_corp_locks() {
        let (_d, u, c) = files(
            Some("[vm]\ncpus = 1\nmemory_mib = 512\nunknown_key = 3\n"),
            Some("[vm]\ncpus = 2\naccel = \"tcg\"\n"),
        );
        let s = Settings::load_from(&u, &c).unwrap();
        assert_eq!(s.vm.cpus, 2);
        assert_eq!(s.vm.memory_mib, 512);
        assert_eq!(s.vm.accel, AccelSetting::Tcg);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("vm.cpus"), "{:?}", s.warnings);
    }

    #[test]
    fn broken_toml_names_file_and_line() {
        let (_d, u, c) = files(Some("[vm]\ncpus = = 2\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("user.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn wrong_types_and_ranges_are_errors() {
        let (_d, u, c) = files(Some("[vm]\ncpus = \"two\"\n"), None);
        assert!(matches!(
            Settings::load_from(&u, &c),
            Err(SettingsError::Parse { .. })
        ));
        let (_d, u, c) = files(Some("[vm]\nmemory_mib = 1\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("vm.memory_mib = 1"), "{err}");
        let (_d, u, c) = files(Some("[vm]\naccel = \"warp\"\n"), None);
        assert!(Settings::load_from(&u, &c).is_err());
    }
}
