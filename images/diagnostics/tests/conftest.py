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
