//! `capsem settings`: typed, layered, locked by the corporate file, secrets
//! never shown, the user's file never damaged.

use std::fs;

use crate::support::{Capsem, assert_code, stderr, stdout};

#[test]
fn set_get_list_and_reset_round_trip() {
    let capsem = Capsem::new();
    assert_code(&capsem.run(&["settings", "set", "vm.cpus", "1"]), 0);
    assert_code(
        &capsem.run(&["settings", "set", "guest.env.EDITOR", "vim"]),
        0,
    );
    assert_eq!(stdout(&capsem.run(&["settings", "get", "vm.cpus"])), "1\n");
    let list = capsem.json_lines(&["settings", "list", "--json"]);
    let setting = |key: &str| list.iter().find(|r| r["data"]["key"] == key);
    let cpus = setting("vm.cpus").unwrap();
    assert_eq!(cpus["data"]["source"], "user");
    assert_eq!(cpus["data"]["value"], 1, "a value keeps its type");
    assert!(setting("guest.env.EDITOR").is_some());
    let file = fs::read_to_string(capsem.home().join("user.toml")).unwrap();
    assert!(file.contains("[vm]\ncpus = 1"), "{file}");
    assert_code(&capsem.run(&["settings", "reset", "vm.cpus"]), 0);
    assert_eq!(stdout(&capsem.run(&["settings", "get", "vm.cpus"])), "2\n");
}

#[test]
fn the_corporate_file_locks_what_it_sets() {
    let capsem = Capsem::new();
    let corp = capsem.home().join("corp.toml");
    fs::write(&corp, "[vm]\ncpus = 4\n").unwrap();
    let cmd = |args: &[&str]| {
        capsem
            .cmd(args)
            .env("CAPSEM_CORP_CONFIG", &corp)
            .output()
            .unwrap()
    };
    let out = cmd(&["settings", "set", "vm.cpus", "1"]);
    assert_code(&out, 125);
    assert!(stderr(&out).contains(&format!("vm.cpus is locked by {}", corp.display())));
    assert!(stdout(&cmd(&["settings", "list"])).contains("corp (locked)"));
    // A user value for a locked key is ignored, with a warning.
    fs::write(capsem.home().join("user.toml"), "[vm]\ncpus = 1\n").unwrap();
    let out = cmd(&["settings", "get", "vm.cpus"]);
    assert_eq!(stdout(&out), "4\n");
    assert!(stderr(&out).contains("is ignored: it is locked by"));
}

#[test]
fn values_are_type_checked_and_a_corrupt_file_is_never_overwritten() {
    let capsem = Capsem::new();
    for (key, value) in [
        ("vm.cpus", "lots"),
        ("vm.accel", "warp"),
        ("ai.claude.settings_json", "not json"),
        ("guest.env.LD_PRELOAD", "/evil.so"),
        ("no.such.key", "1"),
    ] {
        let out = capsem.run(&["settings", "set", key, value]);
        assert_code(&out, 125);
        assert!(stderr(&out).starts_with("capsem: "), "{}", stderr(&out));
    }
    let broken = "[vm]\ncpus = = 2\n";
    fs::write(capsem.home().join("user.toml"), broken).unwrap();
    let out = capsem.run(&["settings", "set", "vm.cpus", "2"]);
    assert_code(&out, 125);
    assert!(stderr(&out).contains("line 2"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(capsem.home().join("user.toml")).unwrap(),
        broken
    );
}

#[test]
fn secrets_are_never_printed_in_full() {
    let capsem = Capsem::new();
    let key = "sk-ant-api03-very-secret-value-7f3a";
    assert_code(
        &capsem.run(&["settings", "set", "ai.anthropic.api_key", key]),
        0,
    );
    for args in [
        &["settings", "get", "ai.anthropic.api_key"][..],
        &["settings", "list"][..],
        &["settings", "list", "--json"][..],
    ] {
        let out = stdout(&capsem.run(args));
        assert!(!out.contains("very-secret"), "{args:?} leaked: {out}");
        assert!(out.contains("7f3a"), "{args:?}: {out}");
    }
}

#[test]
fn json_contents_can_come_from_stdin() {
    let capsem = Capsem::new();
    let json = "{\n  \"permissions\": {\"defaultMode\": \"default\"}\n}\n";
    let out = capsem.run_with_stdin(
        &["settings", "set", "ai.claude.settings_json", "-"],
        json.as_bytes(),
    );
    assert_code(&out, 0);
    assert_eq!(
        stdout(&capsem.run(&["settings", "get", "ai.claude.settings_json"])),
        json
    );
}
