"""Shared helpers for the in-VM diagnostics."""
import subprocess

import pytest


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


def pytest_terminal_summary(terminalreporter):
    """Counts the network attacks: each test of test_network.py is one."""
    tried = leaks = 0
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "test_network.py" in getattr(report, "nodeid", "") and report.when == "call":
                tried += 1
                leaks += outcome != "passed"
    if tried:
        terminalreporter.write_line(f"network attacks: {tried} tried, {leaks} leaks")
