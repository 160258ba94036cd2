//! Settings: built-in defaults, overridden by `~/.capsem/user.toml`, both
//! overridden by `/etc/capsem/corp.toml`. Whatever the corporate file sets
//! is locked: a user value for it is ignored with a warning.
//!
//! The files are plain TOML where a dotted key is a table path, so
//! `vm.cpus = 2` is written `[vm]` / `cpus = 2`. Every key is declared in
//! [`registry`] with its type and range; a value of the wrong type or out of
//! range is an error naming the file and key, and capsem never rewrites a
//! file it cannot read. Unknown keys are reported and otherwise ignored.

pub mod edit;
mod host;
pub mod record;
pub use host::check_vm_shape;
pub mod registry;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use registry::{Def, GUEST_ENV_PREFIX, Kind, REGISTRY};

use crate::vm::AccelSetting;

/// A settings file that cannot be used.
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
    /// The file is not valid TOML.
    #[error("settings file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// The corporate file sets this key.
    #[error("{key} is locked by {corp}; ask whoever manages that file to change it")]
    Locked {
        /// The dotted key.
        key: String,
        /// The corporate file.
        corp: PathBuf,
    },
    /// A value given on the command line cannot be used.
    #[error("`{key}`: '{value}' is not {expected}")]
    Value {
        /// The dotted key.
        key: String,
        /// The value given.
        value: String,
        /// What the key accepts, or why this value does not fit the host.
        expected: String,
    },
    /// No setting has this key.
    #[error("unknown setting `{key}`{}", match suggestion {
        Some(near) => format!("; did you mean `{near}`?"),
        None => String::new(),
    })]
    Unknown {
        /// The key given.
        key: String,
        /// The nearest known key, if one is close.
        suggestion: Option<String>,
    },
    /// A value has the wrong type or is out of range.
    #[error("settings file {path}: {key} = {value} is invalid: expected {expected}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: String,
        /// The value found.
        value: String,
        /// What the key accepts.
        expected: String,
    },
}

/// A setting's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// `~/.capsem/user.toml`.
    User,
    /// `/etc/capsem/corp.toml`; the value is locked.
    Corp,
}

/// A value in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Its layer.
    pub source: Source,
}

/// All settings in effect, with the warnings their loading produced.
#[derive(Debug, Clone)]
pub struct Settings {
    entries: BTreeMap<&'static str, Entry>,
    /// `guest.env.NAME` values by NAME.
    env: BTreeMap<String, (String, Source)>,
    /// Things the user should know (a locked key, an unknown key).
    pub warnings: Vec<String>,
}

/// The checked values of one file.
#[derive(Debug, Default)]
struct Layer {
    values: BTreeMap<&'static str, Value>,
    env: BTreeMap<String, String>,
}

impl Layer {
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        self.values.keys().map(|k| (*k).to_owned()).chain(
            self.env
                .keys()
                .map(|name| format!("{GUEST_ENV_PREFIX}{name}")),
        )
    }
}

/// VM settings (`[vm]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSettings {
    /// `vm.accel`.
    pub accel: AccelSetting,
    /// `vm.cpus`.
    pub cpus: u32,
    /// `vm.memory_mib`.
    pub memory_mib: u32,
    /// `vm.boot_timeout_secs`.
    pub boot_timeout_secs: u32,
    /// `vm.timeout_secs`; 0 for none.
    pub timeout_secs: u32,
    /// `vm.snapshot_start`.
    pub snapshot_start: bool,
    /// `guest.root`.
    pub root: crate::vm::GuestRoot,
}

impl Default for VmSettings {
    fn default() -> Self {
        Settings::defaults().vm()
    }
}

/// Session retention (`[sessions]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `sessions.retention_days`; 0 keeps sessions forever.
    pub retention_days: u32,
    /// `sessions.max_count`; 0 for no limit.
    pub max_count: u32,
    /// `sessions.max_session_mib`: the disk one session's records may take.
    pub max_session_mib: u32,
}

/// The `sandbox.*` settings of named sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// `sandbox.disk_gib`: the size of a new sandbox's disk.
    pub disk_gib: u32,
    /// `sandbox.idle_timeout_secs`; 0 never stops an idle sandbox.
    pub idle_timeout_secs: u32,
    /// `sandbox.max_running`.
    pub max_running: u32,
    /// `sandbox.max_copy_bytes`.
    pub max_copy_bytes: u64,
}

/// The `ui.*` settings of the web UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSettings {
    /// `ui.port`: where on 127.0.0.1 it listens.
    pub port: u16,
    /// `ui.theme`: `system`, `light` or `dark`.
    pub theme: String,
    /// `ui.font_size`: of its terminals.
    pub font_size: u32,
}

/// The `e2b.*` settings of `capsem e2b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2bSettings {
    /// `e2b.port`: where on 127.0.0.1 it listens.
    pub port: u16,
    /// `e2b.api_key`: empty until its first start generates one.
    pub api_key: String,
}

/// The `workspace.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSettings {
    /// `workspace.auto`.
    pub auto: WorkspaceAuto,
    /// `workspace.exclude`: globs the guest never sees.
    pub exclude: Vec<String>,
}

/// Which runs get a workspace without `-w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceAuto {
    /// The AI CLIs (`capsem claude|gemini|codex`).
    AiClis,
    /// Every run.
    Always,
    /// None.
    Never,
}

impl Settings {
    /// Only the built-in defaults.
    pub fn defaults() -> Self {
        let entries = REGISTRY
            .iter()
            .map(|def| {
                let value = match def.default {
                    registry::Default::Bool(b) => Value::Bool(b),
                    registry::Default::Int(i) => Value::Int(i),
                    registry::Default::Str(s) => Value::Str(s.to_owned()),
                };
                let source = Source::Default;
                (def.key, Entry { value, source })
            })
            .collect();
        Settings {
            entries,
            env: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }

    /// Loads the default files (see [`crate::paths`]).
    pub fn load() -> Result<Self, SettingsError> {
        Self::load_from(
            &crate::paths::user_settings(),
            &crate::paths::corp_settings(),
        )
    }

    /// Loads from explicit files; a missing file is an empty layer.
    pub fn load_from(user_path: &Path, corp_path: &Path) -> Result<Self, SettingsError> {
        let mut settings = Settings::defaults();
        let corp = read_layer(corp_path, &mut settings.warnings)?;
        let user = read_layer(user_path, &mut settings.warnings)?;
        let locked: Vec<String> = corp.keys().collect();
        for key in user.keys().filter(|k| locked.contains(k)) {
            settings.warnings.push(format!(
                "{key} in {} is ignored: it is locked by {}",
                user_path.display(),
                corp_path.display()
            ));
        }
        for (layer, source) in [(user, Source::User), (corp, Source::Corp)] {
            for (key, value) in layer.values {
                if source == Source::Corp || !locked.iter().any(|k| k == key) {
                    settings.set(key, value, source);
                }
            }
            for (name, value) in layer.env {
                let key = format!("{GUEST_ENV_PREFIX}{name}");
                if source == Source::Corp || !locked.contains(&key) {
                    settings.env.insert(name, (value, source));
                }
            }
        }
        Ok(settings)
    }

    fn set(&mut self, key: &'static str, value: Value, source: Source) {
        self.entries.insert(key, Entry { value, source });
    }

    /// The entry of a registered key.
    ///
    /// # Panics
    /// If `key` is not in the registry: keys are constants of this crate.
    pub fn entry(&self, key: &str) -> &Entry {
        self.entries
            .get(key)
            .unwrap_or_else(|| panic!("setting {key} is not registered"))
    }

    /// Every setting with its entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static Def, &Entry)> {
        REGISTRY.iter().map(|def| (def, self.entry(def.key)))
    }

    /// The value of a boolean setting.
    ///
    /// # Panics
    /// If `key` is not a registered boolean setting.
    pub fn flag(&self, key: &str) -> bool {
        match self.entry(key).value {
            Value::Bool(b) => b,
            ref other => panic!("setting {key} is {other}, not a boolean"),
        }
    }

    fn int(&self, key: &str) -> i64 {
        match self.entry(key).value {
            Value::Int(i) => i,
            ref other => panic!("setting {key} is {other}, not an integer"),
        }
    }

    /// The value of an integer setting as a size.
    ///
    /// # Panics
    /// If `key` is not a registered integer setting.
    pub fn size(&self, key: &str) -> usize {
        usize::try_from(self.int(key)).unwrap_or(0)
    }

    fn u32(&self, key: &str) -> u32 {
        // Registry ranges keep every integer setting within u32.
        u32::try_from(self.int(key)).unwrap_or(u32::MAX)
    }

    /// The value of a string setting (text, JSON, TOML, secret, choice).
    ///
    /// # Panics
    /// If `key` is not a registered string setting.
    pub fn text(&self, key: &str) -> &str {
        match &self.entry(key).value {
            Value::Str(s) => s,
            other => panic!("setting {key} is {other}, not a string"),
        }
    }

    /// `guest.env.*`: variables for guest commands, with their layers.
    pub fn guest_env(&self) -> impl Iterator<Item = (&str, &str, Source)> {
        self.env
            .iter()
            .map(|(name, (value, source))| (name.as_str(), value.as_str(), *source))
    }

    /// The `[vm]` settings.
    pub fn vm(&self) -> VmSettings {
        VmSettings {
            accel: match self.text("vm.accel") {
                "kvm" => AccelSetting::Kvm,
                "tcg" => AccelSetting::Tcg,
                _ => AccelSetting::Auto,
            },
            cpus: self.u32("vm.cpus"),
            memory_mib: self.u32("vm.memory_mib"),
            boot_timeout_secs: self.u32("vm.boot_timeout_secs"),
            timeout_secs: self.u32("vm.timeout_secs"),
            snapshot_start: self.flag("vm.snapshot_start"),
            root: match self.text("guest.root") {
                "read-only" => crate::vm::GuestRoot::ReadOnly,
                _ => crate::vm::GuestRoot::Overlay,
            },
        }
    }

    /// The `[sessions]` settings.
    pub fn sessions(&self) -> SessionSettings {
        SessionSettings {
            retention_days: self.u32("sessions.retention_days"),
            max_count: self.u32("sessions.max_count"),
            max_session_mib: self.u32("sessions.max_session_mib"),
        }
    }

    /// The `workspace.*` settings.
    pub fn workspace(&self) -> WorkspaceSettings {
        WorkspaceSettings {
            auto: match self.text("workspace.auto") {
                "always" => WorkspaceAuto::Always,
                "never" => WorkspaceAuto::Never,
                _ => WorkspaceAuto::AiClis,
            },
            exclude: split_list(self.text("workspace.exclude")),
        }
    }

    /// The `ui.*` settings.
    pub fn ui(&self) -> UiSettings {
        UiSettings {
            // The registry bounds it to 1..=65535.
            port: u16::try_from(self.u32("ui.port")).unwrap_or(u16::MAX),
            theme: self.text("ui.theme").to_owned(),
            font_size: self.u32("ui.font_size"),
        }
    }

    /// The `e2b.*` settings.
    pub fn e2b(&self) -> E2bSettings {
        E2bSettings {
            // The registry bounds it to 1..=65535.
            port: u16::try_from(self.u32("e2b.port")).unwrap_or(u16::MAX),
            api_key: self.text("e2b.api_key").to_owned(),
        }
    }

    /// The `sandbox.*` settings.
    pub fn sandbox(&self) -> SandboxSettings {
        SandboxSettings {
            disk_gib: self.u32("sandbox.disk_gib"),
            idle_timeout_secs: self.u32("sandbox.idle_timeout_secs"),
            max_running: self.u32("sandbox.max_running"),
            max_copy_bytes: self.size("sandbox.max_copy_bytes") as u64,
        }
    }
}

/// The items of a comma-separated setting, trimmed, without empty ones.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The settings files as they stand: what changes when one is edited or
/// replaced (length, modification time, inode); `None` when absent.
type Stamp = [Option<(u64, std::time::SystemTime, u64)>; 2];

/// Settings consulted again and again (the network policy, at every
/// request), kept as what is derived from them (`T`): the files are
/// parsed, and `T` derived, again only when one of them changed.
pub struct Live<T> {
    user: PathBuf,
    corp: PathBuf,
    derive: fn(&Settings) -> T,
    last: std::sync::Mutex<Option<(Stamp, Arc<T>)>>,
}

impl<T> Live<T> {
    /// `derive` of the default files' settings (see [`crate::paths`]).
    pub fn new(derive: fn(&Settings) -> T) -> Live<T> {
        Live::of_files(
            crate::paths::user_settings(),
            crate::paths::corp_settings(),
            derive,
        )
    }

    fn of_files(user: PathBuf, corp: PathBuf, derive: fn(&Settings) -> T) -> Live<T> {
        Live {
            user,
            corp,
            derive,
            last: std::sync::Mutex::default(),
        }
    }

    /// What the settings in effect now give.
    pub fn load(&self) -> Result<Arc<T>, SettingsError> {
        use std::os::unix::fs::MetadataExt;
        let stamp = [&self.user, &self.corp].map(|path| {
            let meta = fs::metadata(path).ok()?;
            Some((meta.len(), meta.modified().ok()?, meta.ino()))
        });
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((seen, derived)) = last.as_ref()
            && *seen == stamp
        {
            return Ok(derived.clone());
        }
        let settings = Settings::load_from(&self.user, &self.corp)?;
        let derived = Arc::new((self.derive)(&settings));
        *last = Some((stamp, derived.clone()));
        Ok(derived)
    }
}

/// Settings with `user` as the user file's text and no corporate file.
#[cfg(test)]
pub(crate) fn from_user_text(user: &str) -> Settings {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("user.toml");
    fs::write(&path, user).expect("writing the user file");
    Settings::load_from(&path, &dir.path().join("corp.toml")).expect("valid settings")
}

/// Reads one file into checked values; a missing file is empty.
fn read_layer(path: &Path, warnings: &mut Vec<String>) -> Result<Layer, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Layer::default()),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse_layer(&text, path, warnings)
}

/// Checks the text of a settings file; `path` names it in errors.
fn parse_layer(
    text: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Layer, SettingsError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingsError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let mut flat = Vec::new();
    flatten("", &toml::Value::Table(table), &mut flat);
    let mut layer = Layer::default();
    for (key, raw) in flat {
        if let Some(name) = key.strip_prefix(GUEST_ENV_PREFIX) {
            layer
                .env
                .insert(name.to_owned(), check_env(name, &raw, path)?);
        } else if let Some(def) = registry::lookup(&key) {
            layer.values.insert(def.key, check(def, &raw, path)?);
        } else {
            let near = registry::nearest(&key)
                .map(|near| format!(" (did you mean {near}?)"))
                .unwrap_or_default();
            warnings.push(format!(
                "unknown setting {key} in {} is ignored{near}",
                path.display()
            ));
        }
    }
    Ok(layer)
}

/// Checks a `guest.env.NAME` entry: a string for an allowed name.
fn check_env(name: &str, raw: &toml::Value, path: &Path) -> Result<String, SettingsError> {
    let invalid = |expected: String| SettingsError::Invalid {
        path: path.to_owned(),
        key: format!("{GUEST_ENV_PREFIX}{name}"),
        value: raw.to_string(),
        expected,
    };
    capsem_proto::validate_env_name(name).map_err(|e| invalid(format!("an allowed name ({e})")))?;
    match raw {
        toml::Value::String(value) if !value.contains('\0') => Ok(value.clone()),
        _ => Err(invalid("a string".to_owned())),
    }
}

/// Turns nested tables into dotted keys.
fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match value {
        toml::Value::Table(table) => {
            for (name, inner) in table {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(&key, inner, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

/// Checks a raw value against its definition.
fn check(def: &Def, raw: &toml::Value, path: &Path) -> Result<Value, SettingsError> {
    let value = match (def.kind, raw) {
        (Kind::Bool, toml::Value::Boolean(b)) => Some(Value::Bool(*b)),
        (Kind::Int { min, max }, toml::Value::Integer(i)) if (min..=max).contains(i) => {
            Some(Value::Int(*i))
        }
        (Kind::Choice(choices), toml::Value::String(s)) if choices.contains(&s.as_str()) => {
            Some(Value::Str(s.clone()))
        }
        (Kind::Text | Kind::Secret | Kind::CaFile, toml::Value::String(s)) => {
            Some(Value::Str(s.clone()))
        }
        (Kind::Json, toml::Value::String(s)) if is_json_object(s) => Some(Value::Str(s.clone())),
        (Kind::Toml, toml::Value::String(s)) if s.parse::<toml::Table>().is_ok() => {
            Some(Value::Str(s.clone()))
        }
        (Kind::Domains, toml::Value::String(s))
            if crate::net::policy::parse_patterns(s).is_ok() =>
        {
            Some(Value::Str(s.clone()))
        }
        (Kind::Overrides, toml::Value::String(s))
            if crate::net::upstream::parse_overrides(s).is_ok() =>
        {
            Some(Value::Str(s.clone()))
        }
        (Kind::Ranges, toml::Value::String(s)) if crate::net::address::Ranges::parse(s).is_ok() => {
            Some(Value::Str(s.clone()))
        }
        (Kind::Globs, toml::Value::String(s))
            if crate::workspace::Excludes::new(&split_list(s)).is_ok() =>
        {
            Some(Value::Str(s.clone()))
        }
        _ => None,
    };
    value.ok_or_else(|| SettingsError::Invalid {
        path: path.to_owned(),
        key: def.key.to_owned(),
        value: raw.to_string(),
        expected: expected(def.kind),
    })
}

fn is_json_object(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v.is_object())
}

/// What a kind accepts, in words.
pub fn expected(kind: Kind) -> String {
    match kind {
        Kind::Bool => "true or false".to_owned(),
        Kind::Int { min, max } => format!("an integer from {min} to {max}"),
        Kind::Choice(choices) => format!("one of {}", choices.join(", ")),
        Kind::Text | Kind::Secret => "a string".to_owned(),
        Kind::Json => "a string holding a JSON object".to_owned(),
        Kind::Toml => "a string holding a TOML document".to_owned(),
        Kind::Domains => {
            "comma-separated names or patterns (example.com, *.example.com, *)".to_owned()
        }
        Kind::Overrides => "comma-separated name=ip:port pairs".to_owned(),
        Kind::Ranges => "comma-separated address ranges (10.1.0.0/16, fd00::/8)".to_owned(),
        Kind::CaFile => "an absolute path to a PEM file of CA certificates".to_owned(),
        Kind::Globs => "comma-separated file globs (.env, *.pem, secrets/**)".to_owned(),
    }
}

/// How a value is shown to the user: secrets never in full.
pub fn display(kind: Kind, value: &Value) -> String {
    match (kind, value) {
        (Kind::Secret, Value::Str(s)) if s.is_empty() => "(unset)".to_owned(),
        (Kind::Secret, Value::Str(s)) => {
            let tail: String = s
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("(set, ends in …{tail})")
        }
        (_, value) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_settings_follow_edits_and_removal_of_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let live = Live::of_files(user.clone(), dir.path().join("corp.toml"), Settings::vm);
        assert_eq!(live.load().unwrap().cpus, 2);
        fs::write(&user, "[vm]\ncpus = 3\n").unwrap();
        assert_eq!(live.load().unwrap().cpus, 3);
        fs::write(&user, "[vm]\ncpus = 12\n").unwrap();
        assert_eq!(live.load().unwrap().cpus, 12);
        fs::write(&user, "[vm]\ncpus = \"many\"\n").unwrap();
        assert!(
            live.load().is_err(),
            "a broken file is an error, not the old values"
        );
        fs::remove_file(&user).unwrap();
        assert_eq!(live.load().unwrap().cpus, 2);
    }

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
        assert_eq!(s.vm(), VmSettings::default());
        assert_eq!(s.vm().cpus, 2);
        assert_eq!(s.sessions().retention_days, 30);
        assert!(s.warnings.is_empty());
        assert!(s.entries().all(|(_, e)| e.source == Source::Default));
    }

    #[test]
    fn user_overrides_defaults_and_corp_locks() {
        let (_d, u, c) = files(
            Some("[vm]\ncpus = 1\nmemory_mib = 512\n"),
            Some("vm.cpus = 2\n[vm]\naccel = \"tcg\"\n"),
        );
        let err = Settings::load_from(&u, &c);
        // `vm.cpus = 2` then `[vm]` redefines the table: invalid TOML.
        assert!(matches!(err, Err(SettingsError::Parse { .. })));
        let (_d, u, c) = files(
            Some("[vm]\ncpus = 1\nmemory_mib = 512\n"),
            Some("[vm]\ncpus = 2\naccel = \"tcg\"\n"),
        );
        let s = Settings::load_from(&u, &c).unwrap();
        assert_eq!(s.vm().cpus, 2);
        assert_eq!(s.entry("vm.cpus").source, Source::Corp);
        assert_eq!(s.vm().memory_mib, 512);
        assert_eq!(s.entry("vm.memory_mib").source, Source::User);
        assert_eq!(s.vm().accel, AccelSetting::Tcg);
        assert_eq!(s.warnings.len(), 1);
        assert!(s.warnings[0].contains("vm.cpus"), "{:?}", s.warnings);
    }

    #[test]
    fn dotted_keys_and_tables_are_the_same_setting() {
        let (_d, u, c) = files(Some("vm.cpus = 1\n"), None);
        assert_eq!(Settings::load_from(&u, &c).unwrap().vm().cpus, 1);
    }

    #[test]
    fn broken_toml_names_file_and_line() {
        let (_d, u, c) = files(Some("[vm]\ncpus = = 2\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("user.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_key_and_what_it_accepts() {
        let (_d, u, c) = files(Some("[vm]\ncpus = \"two\"\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("vm.cpus = \"two\""), "{err}");
        assert!(err.contains("an integer from 1 to 64"), "{err}");
        let (_d, u, c) = files(Some("[vm]\nmemory_mib = 1\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("vm.memory_mib = 1"), "{err}");
        let (_d, u, c) = files(Some("[vm]\naccel = \"warp\"\n"), None);
        let err = Settings::load_from(&u, &c).unwrap_err().to_string();
        assert!(err.contains("one of auto, kvm, tcg"), "{err}");
    }

    #[test]
    fn unknown_keys_are_reported_not_fatal() {
        let (_d, u, c) = files(Some("[vm]\ncpu = 3\n[future]\nthing = true\n"), None);
        let s = Settings::load_from(&u, &c).unwrap();
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s.warnings[0].contains("future.thing") || s.warnings[1].contains("future.thing"));
    }

    #[test]
    fn every_default_satisfies_its_own_definition() {
        for def in REGISTRY {
            let raw = match def.default {
                registry::Default::Bool(b) => toml::Value::Boolean(b),
                registry::Default::Int(i) => toml::Value::Integer(i),
                registry::Default::Str(s) => toml::Value::String(s.to_owned()),
            };
            check(def, &raw, Path::new("defaults")).unwrap();
        }
    }
}
