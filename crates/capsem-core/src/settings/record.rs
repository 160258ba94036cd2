//! A setting as programs see it: `capsem settings list --json` and the
//! service's `GET /v1/settings` (docs/json.md, "setting").

use serde::Serialize;
use serde_json::Value as Json;

use super::registry::{self, Def, GUEST_ENV_PREFIX, Kind};
use super::{Entry, Settings, Source, Value, display};

/// One setting, its value in its own type; a secret is `null` when unset,
/// else only its last characters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// The dotted key.
    pub key: String,
    /// The value in effect.
    pub value: Json,
    /// The value when no file sets it.
    pub default: Json,
    /// Its type.
    pub kind: &'static str,
    /// What a choice may be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choices: Option<&'static [&'static str]>,
    /// An integer's inclusive bounds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<[i64; 2]>,
    /// Its layer: `default`, `user` or `corp`.
    pub source: &'static str,
    /// Set by the corporate file: nobody else may change it.
    pub locked: bool,
    /// One line on its meaning.
    pub description: &'static str,
}

/// Every setting in effect: the registry's, then `guest.env.*`.
pub fn records(settings: &Settings) -> Vec<Record> {
    let mut all: Vec<Record> = settings
        .entries()
        .map(|(def, entry)| record(def, entry))
        .collect();
    all.extend(
        settings
            .guest_env()
            .map(|(name, value, source)| env_record(name, value, source)),
    );
    all
}

/// The setting `key` in effect, if there is one.
pub fn find(settings: &Settings, key: &str) -> Option<Record> {
    if let Some(name) = key.strip_prefix(GUEST_ENV_PREFIX) {
        return settings
            .guest_env()
            .find(|(n, _, _)| *n == name)
            .map(|(name, value, source)| env_record(name, value, source));
    }
    registry::lookup(key).map(|def| record(def, settings.entry(key)))
}

fn record(def: &Def, entry: &Entry) -> Record {
    let default = match def.default {
        registry::Default::Bool(b) => Value::Bool(b),
        registry::Default::Int(i) => Value::Int(i),
        registry::Default::Str(s) => Value::Str(s.to_owned()),
    };
    Record {
        key: def.key.to_owned(),
        value: json(def.kind, &entry.value),
        default: json(def.kind, &default),
        kind: kind_name(def.kind),
        choices: match def.kind {
            Kind::Choice(choices) => Some(choices),
            _ => None,
        },
        range: match def.kind {
            Kind::Int { min, max } => Some([min, max]),
            _ => None,
        },
        source: source_name(entry.source),
        locked: entry.source == Source::Corp,
        description: def.description,
    }
}

fn env_record(name: &str, value: &str, source: Source) -> Record {
    Record {
        key: format!("{GUEST_ENV_PREFIX}{name}"),
        value: value.into(),
        default: Json::Null,
        kind: "text",
        choices: None,
        range: None,
        source: source_name(source),
        locked: source == Source::Corp,
        description: "guest environment variable",
    }
}

/// A value as JSON; a secret never in full.
fn json(kind: Kind, value: &Value) -> Json {
    match (kind, value) {
        (Kind::Secret, Value::Str(s)) if s.is_empty() => Json::Null,
        (Kind::Secret, value) => display(kind, value).into(),
        (_, Value::Bool(b)) => (*b).into(),
        (_, Value::Int(i)) => (*i).into(),
        (_, Value::Str(s)) => s.as_str().into(),
    }
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Default => "default",
        Source::User => "user",
        Source::Corp => "corp",
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "bool",
        Kind::Int { .. } => "int",
        Kind::Choice(_) => "choice",
        Kind::Text => "text",
        Kind::Json => "json",
        Kind::Toml => "toml",
        Kind::Secret => "secret",
        Kind::Domains => "domains",
        Kind::Overrides => "overrides",
        Kind::Ranges => "ranges",
        Kind::CaFile => "ca_file",
        Kind::Globs => "globs",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_shown_in_full_not_even_as_its_default() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user.toml");
        let secret = registry::REGISTRY
            .iter()
            .find(|def| def.kind == Kind::Secret)
            .expect("a secret setting");
        let (table, name) = secret.key.rsplit_once('.').unwrap();
        std::fs::write(
            &user,
            format!("[{table}]\n{name} = \"sk-verysecretvalue1234\"\n"),
        )
        .unwrap();
        let settings = Settings::load_from(&user, &dir.path().join("corp.toml")).unwrap();
        let found = find(&settings, secret.key).unwrap();
        assert_eq!(found.value, "(set, ends in …1234)");
        assert_eq!(found.default, Json::Null);
        assert_eq!(found.source, "user");
        let text = serde_json::to_string(&records(&settings)).unwrap();
        assert!(!text.contains("verysecret"), "{text}");
    }

    #[test]
    fn a_corp_value_is_locked_and_bounds_and_choices_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let corp = dir.path().join("corp.toml");
        std::fs::write(&corp, "[vm]\ncpus = 1\n").unwrap();
        let settings = Settings::load_from(&dir.path().join("user.toml"), &corp).unwrap();
        let cpus = find(&settings, "vm.cpus").unwrap();
        assert_eq!(
            (cpus.value.clone(), cpus.source, cpus.locked),
            (1.into(), "corp", true)
        );
        assert_eq!(cpus.default, 2);
        assert!(cpus.range.is_some());
        let accel = find(&settings, "vm.accel").unwrap();
        assert!(accel.choices.unwrap().contains(&"tcg"));
        assert!(!accel.locked);
        assert!(find(&settings, "vm.nothing").is_none());
    }
}
