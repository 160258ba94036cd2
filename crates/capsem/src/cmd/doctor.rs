//! `capsem doctor`: the in-VM diagnostics, run like any other command,
//! with the session's policy handed to the checks so that a refusal the
//! user's own settings make is not counted as a leak.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use capsem_core::net::Policy;
use capsem_core::settings::Settings;
use serde::{Deserialize, Serialize};

use crate::cli::{DoctorArgs, EnvArg, RunArgs, RunOptions};
use crate::cmd::run::{self, Output};
use crate::exit::Failure;
use crate::out::outln;
use crate::terminal;

/// Names the checks that need an allowed name may use, the first the
/// session's policy allows.
const ALLOWED_PROBES: [&str; 3] = [
    "api.anthropic.com",
    "api.openai.com",
    "generativelanguage.googleapis.com",
];
/// Names the checks expect to be refused; those the policy allows are
/// skipped.
const DENIED_PROBES: [&str; 4] = ["example.com", "google.com", "pypi.org", "evil.test"];

/// Runs the diagnostics; returns capsem's exit code.
pub fn run(args: DoctorArgs, outer: RunOptions, started: Instant) -> i32 {
    let options = args.options.clone().with_outer(outer);
    let settings = match Settings::load() {
        Ok(settings) => settings,
        // The run reports it, with its hint.
        Err(_) => Settings::defaults(),
    };
    let policy = Policy::new(&settings);
    let mut env = probes(&policy);
    if args.json {
        env.push(EnvArg::Set("CAPSEM_DOCTOR_JSON".into(), "1".into()));
    }
    let run_args = RunArgs {
        options: RunOptions {
            env: [env, options.env.clone()].concat(),
            ..options.clone()
        },
        tty: false,
        workspace: crate::cli::WorkspaceArgs {
            workspace: None,
            no_workspace: true,
        },
        command: command(&args, options.verbose),
    };
    if !options.quiet && !args.json && terminal::stderr_is_terminal() {
        eprintln!("capsem: doctor: booting a VM for the checks...");
    }
    if !args.json {
        return run::run(run_args, started, Output::Report);
    }
    let kept = Arc::new(Mutex::new(Vec::new()));
    let code = run::run(run_args, started, Output::Capture(kept.clone()));
    let output = kept.lock().unwrap_or_else(PoisonError::into_inner);
    match summary(&output) {
        Some(summary) => {
            let record = serde_json::json!({ "type": "doctor", "data": summary });
            outln!("{record}");
            code
        }
        None => Failure::new("the doctor's checks gave no summary")
            .hint("run `capsem doctor` without --json to see what they said")
            .report(),
    }
}

/// `capsem-doctor` with pytest's options.
fn command(args: &DoctorArgs, verbose: bool) -> Vec<String> {
    let mut command = vec!["capsem-doctor".to_owned()];
    if let Some(expr) = &args.filter {
        command.extend(["-k".to_owned(), expr.clone()]);
    }
    if args.exit_first {
        command.push("-x".to_owned());
    }
    if verbose {
        command.push("-v".to_owned());
    }
    command
}

/// What the checks are told of the policy: a name it allows and the
/// names it refuses; and that Python must not hold back the progress.
fn probes(policy: &Policy) -> Vec<EnvArg> {
    let allowed = ALLOWED_PROBES
        .into_iter()
        .find(|name| policy.decide(name).allowed)
        .unwrap_or_default();
    let denied: Vec<&str> = DENIED_PROBES
        .into_iter()
        .filter(|name| !policy.decide(name).allowed)
        .collect();
    vec![
        EnvArg::Set("PYTHONUNBUFFERED".into(), "1".into()),
        EnvArg::Set("CAPSEM_DOCTOR_ALLOWED".into(), allowed.into()),
        EnvArg::Set("CAPSEM_DOCTOR_DENIED".into(), denied.join(" ")),
    ]
}

/// The summary the checks print last with `CAPSEM_DOCTOR_JSON` (see
/// `images/diagnostics/tests/conftest.py`). The guest writes it, so only
/// these fields, of these types, are passed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    /// Checks that passed.
    pub passed: u64,
    /// Checks that failed.
    pub failed: u64,
    /// Checks skipped (what the session's policy makes moot).
    pub skipped: u64,
    /// Checks that could not run.
    pub errors: u64,
    /// The failed checks' names.
    pub failures: Vec<String>,
    /// Network attacks tried.
    pub network_attacks: u64,
    /// Of which got through.
    pub network_leaks: u64,
}

/// The last line of `output` that is a summary.
fn summary(output: &[u8]) -> Option<Summary> {
    let text = String::from_utf8_lossy(output);
    text.lines().rev().find_map(|line| {
        let record: serde_json::Value = serde_json::from_str(line).ok()?;
        serde_json::from_value(record.get("capsem_doctor_summary")?.clone()).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(filter: Option<&str>, exit_first: bool) -> DoctorArgs {
        DoctorArgs {
            filter: filter.map(str::to_owned),
            exit_first,
            json: false,
            options: RunOptions::default(),
        }
    }

    #[test]
    fn options_become_pytest_arguments() {
        let command = command(&args(Some("sandbox and not curl"), true), true);
        assert_eq!(
            command,
            ["capsem-doctor", "-k", "sandbox and not curl", "-x", "-v"]
        );
        assert_eq!(super::command(&args(None, false), false), ["capsem-doctor"]);
    }

    #[test]
    fn the_checks_learn_what_the_policy_allows() {
        let env = |user: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("user.toml");
            std::fs::write(&path, user).unwrap();
            let corp = dir.path().join("corp.toml");
            let settings = Settings::load_from(&path, &corp).unwrap();
            probes(&Policy::new(&settings))
        };
        let defaults = env("");
        assert!(defaults.contains(&EnvArg::Set(
            "CAPSEM_DOCTOR_ALLOWED".into(),
            "api.anthropic.com".into()
        )));
        let off = env("[ai.anthropic]\nallow = false\n[registry.pypi]\nallow = true\n");
        assert!(off.contains(&EnvArg::Set(
            "CAPSEM_DOCTOR_ALLOWED".into(),
            "api.openai.com".into()
        )));
        assert!(off.contains(&EnvArg::Set(
            "CAPSEM_DOCTOR_DENIED".into(),
            "example.com google.com evil.test".into()
        )));
    }

    #[test]
    fn only_a_well_formed_summary_is_passed_on() {
        let good =
            r#"{"capsem_doctor_summary": {"passed": 3, "failed": 1, "skipped": 0, "errors": 0,
            "failures": ["test_x"], "network_attacks": 2, "network_leaks": 1}}"#
                .replace('\n', "");
        let output = format!("....F\n{good}\n");
        assert_eq!(summary(output.as_bytes()).unwrap().failed, 1);
        assert!(summary(b"{\"capsem_doctor_summary\": {\"passed\": \"many\"}}").is_none());
        let extra = good.replace("\"passed\"", "\"evil\": 1, \"passed\"");
        assert!(summary(extra.as_bytes()).is_none());
    }
}
