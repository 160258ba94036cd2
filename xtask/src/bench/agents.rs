//! Cold start of each AI CLI inside a fresh guest: `CLI --version`, timed
//! by the guest's clock from just before it starts to just after it exits.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Map, Value};

use super::{in_guest, stats};

/// The CLIs and how each is asked for its version.
const CLIS: &[&str] = &["claude", "gemini", "codex"];
/// Runs per CLI.
const RUNS: usize = 3;

pub fn cold_starts(capsem: &Path, home: &Path) -> Result<Value> {
    let mut report = Map::new();
    for cli in CLIS {
        let mut samples = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            samples.push(once(capsem, home, cli)?);
        }
        report.insert((*cli).to_owned(), stats(samples));
    }
    Ok(Value::Object(report))
}

/// One fresh VM: milliseconds `CLI --version` took.
fn once(capsem: &Path, home: &Path, cli: &str) -> Result<f64> {
    let script = format!(
        "s=$(date +%s%N); {cli} --version >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
    );
    let text = in_guest(capsem, home, &script)?;
    match text.trim().parse::<f64>() {
        Ok(us) => Ok(us / 1000.0),
        _ => bail!("{cli} --version printed no time: {text}"),
    }
}
