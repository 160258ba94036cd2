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

/// Sets `key` to the value `text` spells, in the user file.
pub fn set(user: &Path, corp: &Path, key: &str, text: &str) -> Result<(), SettingsError> {
    refuse_locked(corp, key)?;
    let value = parse_value(user, key, text)?;
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
    // Replacing only the value keeps the key and the comments around it.
    match table.get_mut(last) {
        Some(item) => *item = toml_edit::value(value),
        None => {
            table.insert(last, toml_edit::value(value));
        }
    }
    write_checked(user, &doc)
}

/// Removes `key` from the user file; returns whether it was there.
pub fn reset(user: &Path, corp: &Path, key: &str) -> Result<bool, SettingsError> {
    refuse_locked(corp, key)?;
    if registry::lookup(key).is_none() && !key.starts_with(GUEST_ENV_PREFIX) {
        return Err(unknown(user, key));
    }
    let mut doc = read_document(user)?;
    let parts: Vec<&str> = key.split('.').collect();
    let removed = remove(doc.as_table_mut(), &parts);
    if removed {
        write_checked(user, &doc)?;
    }
    Ok(removed)
}

/// Removes `parts` from `table`, and tables it leaves empty.
fn remove(table: &mut dyn TableLike, parts: &[&str]) -> bool {
    match parts {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => {
            let Some(inner) = table.get_mut(first).and_then(Item::as_table_like_mut) else {
                return false;
            };
            let removed = remove(inner, rest);
            if removed && inner.is_empty() {
                table.remove(first);
            }
            removed
        }
    }
}

fn unknown(user: &Path, key: &str) -> SettingsError {
    SettingsError::Invalid {
        path: user.to_owned(),
        key: key.to_owned(),
        value: String::new(),
        expected: "a known setting (see `capsem settings list`)".to_owned(),
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

/// Turns the command-line spelling of a value into a typed TOML value.
fn parse_value(user: &Path, key: &str, text: &str) -> Result<toml_edit::Value, SettingsError> {
    let kind = match registry::lookup(key) {
        Some(def) => def.kind,
        None if key.starts_with(GUEST_ENV_PREFIX) => Kind::Text,
        None => return Err(unknown(user, key)),
    };
    let invalid = || SettingsError::Invalid {
        path: user.to_owned(),
        key: key.to_owned(),
        value: text.to_owned(),
        expected: super::expected(kind),
    };
    Ok(match kind {
        Kind::Bool => text.parse::<bool>().map_err(|_| invalid())?.into(),
        Kind::Int { .. } => text.parse::<i64>().map_err(|_| invalid())?.into(),
        _ => text.into(),
    })
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
            message: e.to_string().trim_end().replace('\n', " "),
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
        assert_eq!(fs::read_to_string(&f.user).unwrap(), broken);
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
