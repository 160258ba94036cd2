//! `capsem settings`: show and change settings.

use std::io::Read;

use capsem_core::paths;
use capsem_core::settings::registry::{self, GUEST_ENV_PREFIX, Kind};
use capsem_core::settings::{Settings, Source, Value, display, edit};
use serde_json::json;

use crate::cli::SettingsAction;
use crate::exit::Failure;

/// Runs a `settings` subcommand; returns the exit code.
pub fn run(action: Option<SettingsAction>) -> Result<i32, Failure> {
    let (user, corp) = (paths::user_settings(), paths::corp_settings());
    match action.unwrap_or(SettingsAction::List { json: false }) {
        SettingsAction::List { json } => list(&load()?, json),
        SettingsAction::Get { key } => get(&load()?, &key),
        SettingsAction::Set { key, value } => {
            let value = if value == "-" { read_stdin()? } else { value };
            edit::set(&user, &corp, &key, &value).map_err(Failure::new)?;
            Ok(0)
        }
        SettingsAction::Reset { key } => {
            if !edit::reset(&user, &corp, &key).map_err(Failure::new)? {
                eprintln!("capsem: {key} was not set in {}", user.display());
            }
            Ok(0)
        }
        SettingsAction::Path => {
            println!("user {}", user.display());
            println!("corp {}", corp.display());
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
    let mut rows: Vec<(String, String, String, Source, &str)> = settings
        .entries()
        .map(|(def, entry)| {
            let full = edit::shown(def.kind, &entry.value);
            let short = brief(def.kind, &entry.value);
            (
                def.key.to_owned(),
                short,
                full,
                entry.source,
                def.description,
            )
        })
        .collect();
    rows.extend(settings.guest_env().map(|(name, value, source)| {
        let shown = format!("{value:?}");
        (
            format!("{GUEST_ENV_PREFIX}{name}"),
            shown.clone(),
            value.to_owned(),
            source,
            "guest environment variable",
        )
    }));
    for (key, short, full, source, description) in &rows {
        if json {
            let data = json!({
                "key": key,
                "value": full,
                "source": match source { Source::Default => "default", Source::User => "user", Source::Corp => "corp" },
                "locked": *source == Source::Corp,
                "description": description,
            });
            println!("{}", json!({ "type": "setting", "data": data }));
        } else {
            println!("{key:<30} {short:<34} {}", source_name(*source));
        }
    }
    Ok(0)
}

fn get(settings: &Settings, key: &str) -> Result<i32, Failure> {
    if let Some(name) = key.strip_prefix(GUEST_ENV_PREFIX) {
        let value = settings
            .guest_env()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, _)| v);
        return match value {
            Some(value) => {
                println!("{value}");
                Ok(0)
            }
            None => Err(Failure::new(format!("{key} is not set"))),
        };
    }
    let def = registry::lookup(key).ok_or_else(|| {
        Failure::new(format!("unknown setting {key}")).hint("`capsem settings list` shows them all")
    })?;
    let shown = edit::shown(def.kind, &settings.entry(key).value);
    // File contents end in their own newline.
    if shown.ends_with('\n') {
        print!("{shown}");
    } else {
        println!("{shown}");
    }
    Ok(0)
}
