//! `capsem doctor`: the in-VM diagnostics pass on a fresh build.

use crate::support::{Capsem, assert_code, stdout};

#[test]
fn capsem_doctor_passes() {
    let out = Capsem::new().run(&["-q", "doctor"]);
    assert_code(&out, 0);
    let text = stdout(&out);
    let passed: usize = text
        .lines()
        .find_map(|l| l.split(" passed").next()?.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary in:\n{text}"));
    assert!(passed >= 100, "only {passed} checks ran:\n{text}");
    assert!(
        text.contains(", 0 leaks"),
        "network attacks leaked:\n{text}"
    );
}

#[test]
fn capsem_doctor_filters_and_passes_exit_codes_through() {
    // A filter that selects a category still exits 0 and runs only it.
    let out = Capsem::new().run(&[
        "-q",
        "doctor",
        "-k",
        "test_only_loopback_and_the_dummy_device_exist",
    ]);
    assert_code(&out, 0);
    assert!(stdout(&out).contains("1 passed"), "{}", stdout(&out));
    // A failing check makes the exit code non-zero: pytest's 5 for "no
    // tests collected" stands in for it here.
    let out = Capsem::new().run(&["-q", "doctor", "-k", "no_such_check_anywhere"]);
    assert_code(&out, 5);
}
