"""Shared helpers for the in-VM diagnostics."""
import json
import os
import subprocess
import sys

import pytest

# What the host says of the session's policy (capsem doctor sets these): a
# name it allows, and names it refuses. Run by hand, the defaults hold.
ALLOWED = os.environ.get("CAPSEM_DOCTOR_ALLOWED", "api.anthropic.com")
DENIED = os.environ.get("CAPSEM_DOCTOR_DENIED", "example.com google.com pypi.org evil.test").split()


def run(cmd, *, input=None, cwd=None, check=True, timeout=120):
    """Runs a shell command; returns its CompletedProcess (text mode)."""
    proc = subprocess.run(
        cmd,
        shell=isinstance(cmd, str),
        input=input,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd!r} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


@pytest.fixture
def workdir(tmp_path):
    """A fresh directory on the writable tmpfs."""
    return tmp_path


@pytest.fixture
def allowed_name():
    """A name this session's policy allows; the check is moot without one."""
    if not ALLOWED:
        pytest.skip("this session's policy allows none of the AI providers' API names")
    return ALLOWED


def pytest_collection_finish(session):
    """Says how many checks will run, before they do (progress on stderr)."""
    count = len(session.items)
    print(f"capsem-doctor: running {count} check{'' if count == 1 else 's'}", file=sys.stderr, flush=True)


def pytest_terminal_summary(terminalreporter):
    """Counts the network attacks: each test of test_network.py is one; a
    skipped one (moot under this session's policy) is not tried. With
    CAPSEM_DOCTOR_JSON, ends with a JSON summary for `capsem doctor --json`."""
    tried = leaks = 0
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "test_network.py" in getattr(report, "nodeid", "") and report.when == "call":
                tried += 1
                leaks += outcome != "passed"
    if tried:
        terminalreporter.write_line(f"network attacks: {tried} tried, {leaks} leaks")
    if os.environ.get("CAPSEM_DOCTOR_JSON"):
        stats = terminalreporter.stats
        calls = lambda key: [r for r in stats.get(key, []) if getattr(r, "when", None) == "call"]
        summary = {
            "passed": len(calls("passed")),
            "failed": len(calls("failed")),
            "skipped": len(stats.get("skipped", [])),
            "errors": len(stats.get("error", [])),
            "failures": [r.nodeid for r in calls("failed")],
            "network_attacks": tried,
            "network_leaks": leaks,
        }
        terminalreporter.write_line(json.dumps({"capsem_doctor_summary": summary}))
