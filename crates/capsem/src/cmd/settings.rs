//! `capsem settings`: show and change settings.

use std::io::Read;

use capsem_core::paths;
use capsem_core::settings::registry::{self, GUEST_ENV_PREFIX, Kind};
use capsem_core::settings::{Settings, Source, Value, display, edit, record};
use serde_json::json;

use crate::cli::SettingsAction;
use crate::exit::Failure;
use crate::out::{out, outln};

/// Runs a `settings` subcommand; returns the exit code.
pub fn run(action: Option<SettingsAction>) -> Result<i32, Failure> {
    let (user, corp) = (paths::user_settings(), paths::corp_settings());
    match action.unwrap_or(SettingsAction::List { json: false }) {
        SettingsAction::List { json } => list(&load()?, json),
        SettingsAction::Get { key, json } => get(&load()?, &key, json),
        SettingsAction::Set { key, value } => {
            let value = if value == "-" { read_stdin()? } else { value };
            let warnings = edit::set(&user, &corp, &key, &value).map_err(|e| {
                Failure::new(e).hint(format!("settings live in {}", user.display()))
            })?;
            warnings.iter().for_each(|w| eprintln!("capsem: {w}"));
            Ok(0)
        }
        SettingsAction::Reset { key } => {
            if !edit::reset(&user, &corp, &key).map_err(Failure::new)? {
                eprintln!("capsem: {key} was not set in {}", user.display());
            }
            Ok(0)
        }
        SettingsAction::Path => {
            outln!("user {}", user.display());
            outln!("corp {}", corp.display());
            Ok(0)
        }
    }
}

fn load() -> Result<Settings, Failure> {
    let settings = Settings::load().map_err(|e| {
        Failure::new(e).hint("fix or remove the file; capsem never rewrites a file it cannot read")
    })?;
    settings
        .warnings
        .iter()
        .for_each(|w| eprintln!("capsem: {w}"));
    Ok(settings)
}

fn read_stdin() -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::new(format!("reading the value from stdin: {e}")))?;
    Ok(text)
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Default => "default",
        Source::User => "user",
        Source::Corp => "corp (locked)",
    }
}

/// A value on one line: file contents are summarised.
fn brief(kind: Kind, value: &Value) -> String {
    match (kind, value) {
        (Kind::Json | Kind::Toml, Value::Str(s)) => {
            let what = if kind == Kind::Json { "JSON" } else { "TOML" };
            format!("({what}, {} bytes)", s.len())
        }
        _ => display(kind, value),
    }
}

fn list(settings: &Settings, json: bool) -> Result<i32, Failure> {
    if json {
        for record in record::records(settings) {
            outln!("{}", json!({ "type": "setting", "data": record }));
        }
        return Ok(0);
    }
    for (def, entry) in settings.entries() {
        let short = brief(def.kind, &entry.value);
        outln!("{:<30} {short:<34} {}", def.key, source_name(entry.source));
    }
    for (name, value, source) in settings.guest_env() {
        let key = format!("{GUEST_ENV_PREFIX}{name}");
        outln!(
            "{key:<30} {:<34} {}",
            format!("{value:?}"),
            source_name(source)
        );
    }
    Ok(0)
}

fn get(settings: &Settings, key: &str, json: bool) -> Result<i32, Failure> {
    let unknown = || {
        if key.starts_with(GUEST_ENV_PREFIX) {
            return Failure::new(format!("{key} is not set"));
        }
        let near = registry::nearest(key).map(|n| format!("; did you mean `{n}`?"));
        Failure::new(format!(
            "unknown setting `{key}`{}",
            near.unwrap_or_default()
        ))
        .hint("`capsem settings list` shows them all")
    };
    if json {
        let found = record::find(settings, key).ok_or_else(unknown)?;
        outln!("{}", json!({ "type": "setting", "data": found }));
        return Ok(0);
    }
    if let Some(name) = key.strip_prefix(GUEST_ENV_PREFIX) {
        let (_, value, _) = settings
            .guest_env()
            .find(|(n, _, _)| *n == name)
            .ok_or_else(unknown)?;
        outln!("{value}");
        return Ok(0);
    }
    let def = registry::lookup(key).ok_or_else(unknown)?;
    let shown = edit::shown(def.kind, &settings.entry(key).value);
    // File contents end in their own newline.
    if shown.ends_with('\n') {
        out!("{shown}");
    } else {
        outln!("{shown}");
    }
    Ok(0)
}
