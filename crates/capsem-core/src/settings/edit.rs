//! Changing the user's settings file: `capsem settings set` and `reset`.
//!
//! Edits go through `toml_edit`, so the user's comments, ordering and keys
//! this version does not know survive. The new file is checked as a whole
//! before it replaces the old one atomically; a file that does not parse is
//! reported and never overwritten; a key the corporate file sets is
//! refused, naming that file.

use std::fs;
use std::path::Path;

use toml_edit::{DocumentMut, Item, TableLike};

use super::registry::{self, GUEST_ENV_PREFIX, Kind};
use super::{SettingsError, Value, parse_layer};
use crate::fsutil::write_atomic;

/// Sets `key` to the value `text` spells, in the user file. Returns
/// warnings for the user (a value the host can run, but not well).
pub fn set(user: &Path, corp: &Path, key: &str, text: &str) -> Result<Vec<String>, SettingsError> {
    refuse_locked(corp, key)?;
    let (value, warnings) = parse_value(key, text)?;
    let mut doc = read_document(user)?;
    let parts: Vec<&str> = key.split('.').collect();
    let (last, tables) = parts.split_last().expect("a key has at least one part");
    let mut table: &mut dyn TableLike = doc.as_table_mut();
    for part in tables {
        let item = table.entry(part).or_insert(toml_edit::table());
        table = item
            .as_table_like_mut()
            .ok_or_else(|| SettingsError::Invalid {
                path: user.to_owned(),
                key: key.to_owned(),
                value: text.to_owned(),
                expected: format!("{part} in the file to be a table"),
            })?;
    }
    match table.get_mut(last) {
        // The old value's decor carries its comments (`cpus = 2 # fast`).
        Some(item) => {
            let mut value = value;
            if let Some(old) = item.as_value() {
                *value.decor_mut() = old.decor().clone();
            }
            *item = Item::Value(value);
        }
        None => {
            table.insert(last, Item::Value(value));
        }
    }
    write_checked(user, &doc)?;
    Ok(warnings)
}

/// Removes `key` from the user file; returns whether it was there. The
/// file keeps its comments: those of the key move to what follows it, and
/// a table is removed only when it is left empty and has none.
pub fn reset(user: &Path, corp: &Path, key: &str) -> Result<bool, SettingsError> {
    refuse_locked(corp, key)?;
    if registry::lookup(key).is_none() && !key.starts_with(GUEST_ENV_PREFIX) {
        return Err(unknown(key));
    }
    let mut doc = read_document(user)?;
    let parts: Vec<&str> = key.split('.').collect();
    let Some(left) = remove(doc.as_table_mut(), &parts) else {
        return Ok(false);
    };
    if !left.is_empty() {
        let trailing = doc.trailing().as_str().unwrap_or_default();
        let trailing = format!("{left}{trailing}");
        doc.set_trailing(trailing);
    }
    write_checked(user, &doc)?;
    Ok(true)
}

/// Removes `parts` from `table`, and tables it leaves empty and without
/// comments. The removed key's comment lines go above the key that takes
/// its place, else after the key before it, else under its table's
/// header. Returns the comment lines still to be placed (for the caller
/// that holds the table's header), or `None` if the key was not there.
fn remove(table: &mut dyn TableLike, parts: &[&str]) -> Option<String> {
    match parts {
        [] => None,
        [last] => {
            let comments = comments_of(table, last);
            let index = table.iter().position(|(k, _)| k == *last)?;
            table.remove(last);
            Some(place_comments(table, index, comments))
        }
        [first, rest @ ..] => {
            let item = table.get_mut(first)?;
            let mut left = remove(item.as_table_like_mut()?, rest)?;
            if let Item::Table(inner) = item
                && !left.is_empty()
            {
                let decor = inner.decor_mut();
                let suffix = decor.suffix().and_then(|s| s.as_str()).unwrap_or("");
                let suffix = format!("{suffix}\n{}", left.trim_end());
                decor.set_suffix(suffix);
                left.clear();
            }
            let empty = item.as_table_like().is_some_and(|t| t.is_empty());
            if empty && left.is_empty() && !has_comments(item) {
                table.remove(first);
            }
            Some(left)
        }
    }
}

/// Puts `comments` where the key at `index` of `table` was: above the key
/// now there, else after the one before; returns them if neither exists.
fn place_comments(table: &mut dyn TableLike, index: usize, comments: String) -> String {
    if comments.is_empty() {
        return comments;
    }
    let keys: Vec<String> = table.iter().map(|(k, _)| k.to_owned()).collect();
    if let Some(mut next) = keys.get(index).and_then(|k| table.key_mut(k)) {
        let decor = next.leaf_decor_mut();
        let prefix = decor.prefix().and_then(|p| p.as_str()).unwrap_or("");
        let prefix = format!("{comments}{prefix}");
        decor.set_prefix(prefix);
        return String::new();
    }
    let previous = index.checked_sub(1).and_then(|i| keys.get(i));
    if let Some(value) = previous
        .and_then(|k| table.get_mut(k))
        .and_then(Item::as_value_mut)
    {
        let suffix = value
            .decor()
            .suffix()
            .and_then(|s| s.as_str())
            .unwrap_or("");
        let suffix = format!("{suffix}\n{}", comments.trim_end());
        value.decor_mut().set_suffix(suffix);
        return String::new();
    }
    comments
}

/// The comment lines around `key` in `table`: above it and after its value.
fn comments_of(table: &dyn TableLike, key: &str) -> String {
    let mut lines = String::new();
    if let Some((key, value)) = table.get_key_value(key) {
        let above = key.leaf_decor().prefix().and_then(|p| p.as_str());
        let after = value
            .as_value()
            .and_then(|v| v.decor().suffix())
            .and_then(|s| s.as_str());
        for text in [above, after].into_iter().flatten() {
            for line in text.lines().map(str::trim).filter(|l| l.starts_with('#')) {
                lines.push_str(line);
                lines.push('\n');
            }
        }
    }
    lines
}

/// Whether a table has comments on its header line or above it.
fn has_comments(item: &Item) -> bool {
    let Item::Table(table) = item else {
        return false;
    };
    let decor = table.decor();
    [decor.prefix(), decor.suffix()]
        .into_iter()
        .flatten()
        .filter_map(|raw| raw.as_str())
        .any(|text| text.contains('#'))
}

fn unknown(key: &str) -> SettingsError {
    SettingsError::Unknown {
        key: key.to_owned(),
        suggestion: registry::nearest(key).map(str::to_owned),
    }
}

/// Fails when the corporate file sets `key`.
fn refuse_locked(corp: &Path, key: &str) -> Result<(), SettingsError> {
    let layer = super::read_layer(corp, &mut Vec::new())?;
    if layer.keys().any(|k| k == key) {
        return Err(SettingsError::Locked {
            key: key.to_owned(),
            corp: corp.to_owned(),
        });
    }
    Ok(())
}

/// Turns the command-line spelling of a value into a typed TOML value,
/// checked against its kind and, where it matters, this host; returns it
/// with any warnings.
fn parse_value(key: &str, text: &str) -> Result<(toml_edit::Value, Vec<String>), SettingsError> {
    let kind = match registry::lookup(key) {
        Some(def) => def.kind,
        None if key.starts_with(GUEST_ENV_PREFIX) => Kind::Text,
        None => return Err(unknown(key)),
    };
    let invalid = |expected: String| SettingsError::Value {
        key: key.to_owned(),
        value: text.to_owned(),
        expected,
    };
    let value: toml_edit::Value = match kind {
        Kind::Bool => text
            .parse::<bool>()
            .map_err(|_| invalid(super::expected(kind)))?
            .into(),
        Kind::Int { .. } => text
            .parse::<i64>()
            .map_err(|_| invalid(super::expected(kind)))?
            .into(),
        Kind::CaFile => check_ca_file(text).map_err(invalid)?.into(),
        _ => text.into(),
    };
    let warnings = super::host::fits(key, &value).map_err(invalid)?;
    Ok((value, warnings))
}

/// A CA file must be an absolute path to PEM certificates, or empty.
fn check_ca_file(text: &str) -> Result<&str, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    if text.is_empty() {
        return Ok(text);
    }
    if !Path::new(text).is_absolute() {
        return Err("an absolute path".to_owned());
    }
    let certs = CertificateDer::pem_file_iter(text)
        .map_err(|e| format!("a readable PEM file ({e})"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a PEM file of certificates ({e})"))?;
    if certs.is_empty() {
        return Err("a PEM file with at least one certificate".to_owned());
    }
    Ok(text)
}

fn read_document(path: &Path) -> Result<DocumentMut, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    text.parse()
        .map_err(|e: toml_edit::TomlError| SettingsError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// Checks the edited document like any settings file, then replaces the
/// file with it atomically.
fn write_checked(path: &Path, doc: &DocumentMut) -> Result<(), SettingsError> {
    let text = doc.to_string();
    parse_layer(&text, path, &mut Vec::new())?;
    write_atomic(path, text.as_bytes()).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A stored value as `capsem settings get` prints it.
pub fn shown(kind: Kind, value: &Value) -> String {
    match (kind, value) {
        (Kind::Secret, _) => super::display(kind, value),
        (_, Value::Str(s)) => s.clone(),
        (_, other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Settings, Source};

    struct Files {
        _dir: tempfile::TempDir,
        user: std::path::PathBuf,
        corp: std::path::PathBuf,
    }

    fn files(user: &str, corp: &str) -> Files {
        let dir = tempfile::tempdir().unwrap();
        let (u, c) = (dir.path().join("user.toml"), dir.path().join("corp.toml"));
        fs::write(&u, user).unwrap();
        fs::write(&c, corp).unwrap();
        Files {
            _dir: dir,
            user: u,
            corp: c,
        }
    }

    #[test]
    fn set_keeps_comments_and_unknown_keys() {
        let f = files(
            "# my settings\n[vm]\n# fast\ncpus = 1\nfuture = \"x\"\n",
            "",
        );
        set(&f.user, &f.corp, "vm.memory_mib", "2048").unwrap();
        set(&f.user, &f.corp, "vm.cpus", "2").unwrap();
        set(&f.user, &f.corp, "guest.env.EDITOR", "vim").unwrap();
        let text = fs::read_to_string(&f.user).unwrap();
        assert!(
            text.contains("# my settings") && text.contains("# fast"),
            "{text}"
        );
        assert!(text.contains("future = \"x\""), "{text}");
        assert!(text.contains("[guest.env]\nEDITOR = \"vim\""), "{text}");
        let s = Settings::load_from(&f.user, &f.corp).unwrap();
        assert_eq!((s.vm().cpus, s.vm().memory_mib), (2, 2048));
        assert!(s.guest_env().any(|e| e == ("EDITOR", "vim", Source::User)));
    }

    #[test]
    fn values_are_type_checked_before_anything_is_written() {
        let f = files("[vm]\ncpus = 1\n", "");
        for (key, value) in [
            ("vm.cpus", "two"),
            ("vm.cpus", "0"),
            ("vm.accel", "warp"),
            ("ai.claude.settings_json", "[1, 2]"),
            ("ai.codex.config_toml", "= broken"),
            ("guest.env.LD_PRELOAD", "/x.so"),
            ("no.such.key", "1"),
        ] {
            assert!(
                set(&f.user, &f.corp, key, value).is_err(),
                "{key} = {value} accepted"
            );
        }
        assert_eq!(fs::read_to_string(&f.user).unwrap(), "[vm]\ncpus = 1\n");
    }

    #[test]
    fn corp_locked_keys_cannot_be_set_or_reset() {
        let f = files("", "[vm]\ncpus = 4\n[guest.env]\nHTTP_PROXY = \"corp\"\n");
        let err = set(&f.user, &f.corp, "vm.cpus", "1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("corp.toml"), "{err}");
        assert!(set(&f.user, &f.corp, "guest.env.HTTP_PROXY", "mine").is_err());
        assert!(reset(&f.user, &f.corp, "vm.cpus").is_err());
        set(&f.user, &f.corp, "vm.memory_mib", "512").unwrap();
    }

    #[test]
    fn a_corrupt_file_is_reported_and_left_alone() {
        let broken = "[vm]\ncpus = = 2\n";
        let f = files(broken, "");
        let err = set(&f.user, &f.corp, "vm.cpus", "2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(
            err.contains("cpus = = 2\n") && err.contains('^'),
            "the caret stays: {err}"
        );
        assert_eq!(fs::read_to_string(&f.user).unwrap(), broken);
    }

    #[test]
    fn set_keeps_the_comment_on_the_values_line() {
        let f = files("[vm]\ncpus = 2 # trailing\n", "");
        set(&f.user, &f.corp, "vm.cpus", "1").unwrap();
        assert_eq!(
            fs::read_to_string(&f.user).unwrap(),
            "[vm]\ncpus = 1 # trailing\n"
        );
    }

    #[test]
    fn reset_keeps_the_files_comments_and_commented_tables() {
        let f = files(
            "# mine\n[vm]\n# two is plenty\ncpus = 2 # trailing\nmemory_mib = 512\n",
            "",
        );
        assert!(reset(&f.user, &f.corp, "vm.cpus").unwrap());
        let text = fs::read_to_string(&f.user).unwrap();
        assert_eq!(
            text,
            "# mine\n[vm]\n# two is plenty\n# trailing\nmemory_mib = 512\n"
        );
        assert!(reset(&f.user, &f.corp, "vm.memory_mib").unwrap());
        let text = fs::read_to_string(&f.user).unwrap();
        assert!(
            text.starts_with("# mine\n[vm]"),
            "a commented table stays: {text}"
        );
        assert!(text.contains("# two is plenty"), "{text}");
        Settings::load_from(&f.user, &f.corp).unwrap();
        let f = files("[vm]\ncpus = 1\n# after\nmemory_mib = 512\n", "");
        assert!(reset(&f.user, &f.corp, "vm.memory_mib").unwrap());
        let text = fs::read_to_string(&f.user).unwrap();
        assert!(
            text.contains("cpus = 1") && text.contains("# after"),
            "{text}"
        );
        Settings::load_from(&f.user, &f.corp).unwrap();
    }

    #[test]
    fn errors_name_the_key_and_unknown_keys_get_the_nearest() {
        let f = files("", "");
        let err = set(&f.user, &f.corp, "vm.cpus", "four")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "`vm.cpus`: 'four' is not an integer from 1 to 64");
        let err = set(&f.user, &f.corp, "vm.cpu", "2")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "unknown setting `vm.cpu`; did you mean `vm.cpus`?");
        let err = set(&f.user, &f.corp, "quite.unlike.anything", "2").unwrap_err();
        assert_eq!(err.to_string(), "unknown setting `quite.unlike.anything`");
    }

    #[test]
    fn the_host_bounds_vcpus_and_memory_and_ca_files_must_exist() {
        let f = files("", "");
        let too_many = (std::thread::available_parallelism().unwrap().get() + 1).to_string();
        let err = set(&f.user, &f.corp, "vm.cpus", &too_many)
            .unwrap_err()
            .to_string();
        assert!(err.contains("this host has"), "{err}");
        let err = set(&f.user, &f.corp, "vm.memory_mib", "1048576").unwrap_err();
        assert!(err.to_string().contains("MiB of RAM"), "{err}");
        for bad in ["/nonexistent.pem", "relative.pem"] {
            assert!(
                set(&f.user, &f.corp, "network.extra_upstream_ca", bad).is_err(),
                "{bad}"
            );
        }
        let pem = f.user.with_file_name("ca.pem");
        fs::write(&pem, "not a certificate\n").unwrap();
        let path = pem.to_str().unwrap();
        assert!(set(&f.user, &f.corp, "network.extra_upstream_ca", path).is_err());
        set(&f.user, &f.corp, "network.extra_upstream_ca", "").unwrap();
    }

    #[test]
    fn reset_removes_the_key_and_empty_tables() {
        let f = files("[vm]\ncpus = 1\n[ui]\ntheme = \"dark\"\n", "");
        assert!(reset(&f.user, &f.corp, "vm.cpus").unwrap());
        assert!(!reset(&f.user, &f.corp, "vm.cpus").unwrap());
        assert_eq!(
            fs::read_to_string(&f.user).unwrap(),
            "[ui]\ntheme = \"dark\"\n"
        );
    }

    #[test]
    fn json_values_round_trip_exactly() {
        let f = files("", "");
        let json = "{\n  \"permissions\": {\"defaultMode\": \"default\"}\n}\n";
        set(&f.user, &f.corp, "ai.claude.settings_json", json).unwrap();
        let s = Settings::load_from(&f.user, &f.corp).unwrap();
        assert_eq!(s.text("ai.claude.settings_json"), json);
    }
}
