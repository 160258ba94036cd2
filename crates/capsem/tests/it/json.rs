//! Every `--json` output against the schemas in docs/json.md: the page is
//! the promise, this is what holds the output to it.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::support::{Capsem, assert_code, stdout};
use crate::upstream::{TestCa, Upstream};

/// The schemas of docs/json.md, by record type: each is the fenced block
/// after a `<!-- schema: TYPE -->` line.
pub fn schemas() -> BTreeMap<String, jsonschema::Validator> {
    let page = include_str!("../../../../docs/json.md");
    let mut schemas = BTreeMap::new();
    let mut rest = page;
    while let Some(at) = rest.find("<!-- schema: ") {
        rest = &rest[at + "<!-- schema: ".len()..];
        let name = &rest[..rest.find(" -->").unwrap()];
        let start = rest.find("```json\n").unwrap() + "```json\n".len();
        let end = start + rest[start..].find("```").unwrap();
        let schema: Value = serde_json::from_str(&rest[start..end])
            .unwrap_or_else(|e| panic!("the {name} schema is not JSON: {e}"));
        let validator = jsonschema::validator_for(&schema)
            .unwrap_or_else(|e| panic!("the {name} schema is not a schema: {e}"));
        schemas.insert(name.to_owned(), validator);
        rest = &rest[end..];
    }
    schemas
}

/// Checks every line of `capsem ARGS` against its type's schema; returns
/// the records.
pub fn check(
    capsem: &Capsem,
    args: &[&str],
    schemas: &BTreeMap<String, jsonschema::Validator>,
) -> Vec<Value> {
    let out = capsem.run(args);
    let records: Vec<Value> = stdout(&out)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{args:?}: {e}: {line}")))
        .collect();
    assert!(!records.is_empty(), "{args:?} printed nothing");
    for record in &records {
        let kind = record["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: no type"));
        let schema = schemas
            .get(kind)
            .unwrap_or_else(|| panic!("{args:?}: type {kind} is not in docs/json.md"));
        let errors: Vec<String> = schema
            .iter_errors(&record["data"])
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{args:?} {kind}: {errors:?}\n{record}");
        assert_eq!(
            record.as_object().unwrap().len(),
            2,
            "only type and data: {record}"
        );
    }
    records
}

#[test]
fn every_json_output_matches_docs_json_md() {
    let schemas = schemas();
    let capsem = Capsem::new();
    let ca = TestCa::new(capsem.home());
    let api = Upstream::https(&ca, &["api.anthropic.com"]);
    capsem.user_settings(&format!(
        "[network]\nresolve_override = \"api.anthropic.com=127.0.0.1:{}\"\n\
         extra_upstream_ca = \"{}\"\nlog_bodies = true\n\
         [ai.anthropic]\napi_key = \"sk-ant-a-key-for-the-json-test\"\n",
        api.port,
        ca.pem.display()
    ));
    let script = "curl -sS --max-time 30 https://api.anthropic.com/v1/messages -d '{\"model\":\"m\"}'; \
                  curl -sS --max-time 10 https://denied.test/; true";
    assert_code(&capsem.run(&["run", "--", "sh", "-c", script]), 0);
    let id = capsem.last_session_id();

    let log = check(&capsem, &["net", "log", "--json"], &schemas);
    for kind in ["dns", "net", "model_call"] {
        assert!(
            log.iter().any(|r| r["type"] == kind),
            "no {kind} record: {log:?}"
        );
    }
    check(&capsem, &["sessions", "--json"], &schemas);
    check(
        &capsem,
        &["sessions", "list", "--json", "-n", "0"],
        &schemas,
    );
    let detail = check(&capsem, &["sessions", "show", &id, "--json"], &schemas);
    let session = &detail[0]["data"]["session"];
    let errors: Vec<String> = schemas["session"]
        .iter_errors(session)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(session["phases"]["agent_ready_ms"].is_number(), "{session}");
    check(&capsem, &["sessions", "inspect", &id, "--json"], &schemas);
    let settings = check(&capsem, &["settings", "list", "--json"], &schemas);
    let key = settings
        .iter()
        .find(|s| s["data"]["key"] == "ai.openai.api_key")
        .unwrap();
    assert!(
        key["data"]["value"].is_null(),
        "an unset secret is null: {key}"
    );
    let cpus = settings
        .iter()
        .find(|s| s["data"]["key"] == "vm.cpus")
        .unwrap();
    assert_eq!(cpus["data"]["value"], 2, "integers stay integers");
    let set = check(
        &capsem,
        &["settings", "get", "ai.anthropic.api_key", "--json"],
        &schemas,
    );
    assert!(
        !set[0].to_string().contains("a-key-for-the-json-test"),
        "{set:?}"
    );
    check(&capsem, &["version", "--json"], &schemas);
    check(&capsem, &["assets", "verify", "--json"], &schemas);
    let doctor = check(
        &capsem,
        &[
            "-q",
            "doctor",
            "--json",
            "-k",
            "test_hostname_is_capsem or test_tcp_to_outside",
        ],
        &schemas,
    );
    assert!(
        doctor[0]["data"]["passed"].as_u64().unwrap() >= 2,
        "{doctor:?}"
    );
    assert_eq!(doctor[0]["data"]["network_leaks"], 0);
}
