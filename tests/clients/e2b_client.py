"""Drives `capsem e2b` with E2B's official Python SDK, unchanged, pointed at
it by E2B's own environment variables (E2B_API_URL, E2B_SANDBOX_URL,
E2B_API_KEY): creates sandboxes, runs commands (streaming, failing, in the
background, with stdin, on a terminal), moves files, times a sandbox out
and kills them; then tries what an attacker on this machine would, with
plain HTTP.

Run by crates/capsem/tests/it/e2b.rs. Prints what it did; exits non-zero on
the first failed check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from e2b import (
    AuthenticationException,
    CommandExitException,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from e2b.sandbox.commands.command_handle import PtySize

API = os.environ["E2B_API_URL"]


def log(*parts):
    print("e2b_client:", *parts, flush=True)


def check(cond, what, got=None):
    if not cond:
        raise AssertionError(f"{what}: got {got!r}")
    log("ok:", what)


def refused(call, kind, words, what):
    try:
        call()
    except kind as e:
        check(words in str(e), what, str(e))
        return
    raise AssertionError(f"{what}: it was not refused")


def http(method, path, headers=None, body=None):
    """A plain request: its status and body."""
    request = urllib.request.Request(API + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def commands(sbx):
    ran = sbx.commands.run("echo hi")
    check(ran.stdout == "hi\n" and ran.exit_code == 0, "commands.run returns stdout and 0", ran)
    seen = []
    ran = sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.2; done", on_stdout=seen.append)
    check("".join(seen) == "line1\nline2\nline3\n" and len(seen) >= 2,
          "on_stdout streams the output as it comes", seen)
    ran = sbx.commands.run("echo $FOO; pwd", envs={"FOO": "bar"}, cwd="/tmp")
    check(ran.stdout == "bar\n/tmp\n", "envs and cwd reach the command", ran.stdout)
    try:
        sbx.commands.run("echo bad >&2; exit 3")
        raise AssertionError("a failing command did not raise")
    except CommandExitException as e:
        check(e.exit_code == 3 and e.stderr == "bad\n", "a failing command raises with its code", e)

    sleeper = sbx.commands.run("sleep 600", background=True)
    listed = [p.pid for p in sbx.commands.list()]
    check(sleeper.pid in listed, "a background command is listed", listed)
    check(sbx.commands.kill(sleeper.pid) is True, "kill kills it")
    try:
        sleeper.wait()
        raise AssertionError("a killed command ended well")
    except CommandExitException as e:
        check(e.exit_code != 0, "the killed command ends with an error", e)
    check(sleeper.pid not in [p.pid for p in sbx.commands.list()], "it is no longer listed")
    check(sbx.commands.kill(99999) is False, "killing an unknown pid answers False")

    cat = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(cat.pid, "to stdin\n")
    sbx.commands.close_stdin(cat.pid)
    check(cat.wait().stdout == "to stdin\n", "send_stdin and close_stdin reach the command")

    echo = sbx.commands.run("sleep 1; echo late", background=True)
    again = sbx.commands.connect(echo.pid)
    check(again.wait().stdout == "late\n", "connect follows a running command")

    shown = []
    terminal = sbx.pty.create(PtySize(rows=24, cols=91))
    sbx.pty.send_stdin(terminal.pid, b"stty size; exit\n")
    terminal.wait(on_pty=shown.append)
    check("24 91" in b"".join(shown).decode(errors="replace"), "a pty has the size asked for", shown)


def files(sbx):
    info = sbx.files.write("/root/hello.txt", "hello world")
    check(info.path == "/root/hello.txt", "files.write writes a file", info)
    check(sbx.files.read("/root/hello.txt") == "hello world", "files.read reads it back")
    sbx.files.write("/root/empty", "")
    check(sbx.files.read("/root/empty") == "", "an empty file reads back empty")
    sbx.files.write("/root/hello2.txt", "old")
    sbx.files.write("/root/hello2.txt", "new")
    check(sbx.files.read("/root/hello2.txt") == "new", "a write replaces the file")
    sbx.files.write("relative.txt", "from home")
    check(sbx.commands.run("cat /root/relative.txt").stdout == "from home",
          "a relative path starts at root's home")
    blob = bytes(range(256)) * 4096 * 24
    sbx.files.write("/root/deep/er/blob.bin", blob)
    check(sbx.files.read("/root/deep/er/blob.bin", format="bytes") == blob,
          "a 24 MiB binary file goes both ways intact, its directories made")
    sbx.files.write_files([{"path": "/root/w/one.txt", "data": "1"}, {"path": "/root/w/two.txt", "data": "2"}])
    check(sbx.commands.run("cat /root/w/one.txt /root/w/two.txt").stdout == "12",
          "write_files writes several files in one upload")
    names = {e.name: e.type for e in sbx.files.list("/root")}
    check(names.get("hello.txt") == FileType.FILE and names.get("deep") == FileType.DIR,
          "files.list lists files and directories", names)
    deep = [e.path for e in sbx.files.list("/root/deep", depth=2)]
    check(deep == ["/root/deep/er", "/root/deep/er/blob.bin"], "files.list goes as deep as asked", deep)
    check(sbx.files.get_info("/root/hello.txt").size == 11, "get_info gives the size")
    check(sbx.files.exists("/root/hello.txt") and not sbx.files.exists("/root/nothing"),
          "exists tells what is there")
    check(sbx.files.make_dir("/root/made") is True, "make_dir makes a directory")
    check(sbx.files.make_dir("/root/made") is False, "make_dir of one that exists answers False")
    moved = sbx.files.rename("/root/hello.txt", "/root/made/moved.txt")
    check(moved.path == "/root/made/moved.txt", "rename moves it", moved)
    sbx.files.remove("/root/made")
    check(not sbx.files.exists("/root/made"), "remove removes a directory")
    refused(lambda: sbx.files.read("/root/nothing"), NotFoundException, "nothing",
            "reading a missing file is NotFound, named")
    refused(lambda: sbx.files.read("/root/../etc/shadow"), SandboxException, "refused",
            "a path with .. is refused")
    refused(lambda: sbx.files.read("/root/deep"), SandboxException, "is a directory",
            "reading a directory is refused")
    refused(lambda: sbx.files.write("/root/deep", "x"), SandboxException, "is a directory",
            "writing over a directory is refused")
    check(sbx.commands.run("ls /root/deep").stdout == "er\n", "a refused write leaves nothing behind")
    refused(lambda: sbx.commands.run("id", user="user"), SandboxException, "root",
            "a user other than root is refused")


def hostile(sbx, key):
    status, _ = http("GET", "/sandboxes")
    check(status == 401, "the control plane without a key answers 401", status)
    status, _ = http("GET", "/sandboxes", {"X-API-KEY": key + "x"})
    check(status == 401, "a wrong key answers 401", status)
    port = API.rsplit(":", 1)[1]
    status, _ = http("GET", "/sandboxes", {"X-API-KEY": key, "Host": f"evil.example:{port}"})
    check(status == 403, "a foreign Host (DNS rebinding) answers 403", status)
    status, body = http("POST", "/sandboxes", {"X-API-KEY": key, "Content-Type": "application/json"},
                        b"{not json")
    check(status == 400 and "bad request body" in body, "a malformed body is a 400 in words", body)
    status, body = http("POST", "/sandboxes", {"X-API-KEY": key, "Content-Type": "application/json"},
                        json.dumps({"templateID": "base", "gpu": True}).encode())
    check(status == 400 and "gpu" in body, "an unknown option is refused, named", body)
    status, body = http("POST", "/sandboxes", {"X-API-KEY": key, "Content-Type": "application/json"},
                        json.dumps({"templateID": "base", "metadata": {str(i): "v" for i in range(100)}}).encode())
    check(status == 400 and "metadata" in body, "too much metadata is refused", body)
    envd = {"Content-Type": "application/json", "E2b-Sandbox-Id": sbx.sandbox_id}
    status, _ = http("POST", "/process.Process/List", envd, b"{}")
    check(status == 401, "envd without the sandbox's token answers 401", status)
    status, _ = http("POST", "/process.Process/List", {**envd, "X-Access-Token": "0" * 64}, b"{}")
    check(status == 401, "envd with a forged token answers 401", status)
    status, body = http("POST", "/process.Process/List", {**envd, "E2b-Sandbox-Id": "nope"}, b"{}")
    check(status == 502 and "was not found" in body, "an unknown sandbox is not found", body)
    status, _ = http("GET", "/sandboxes/nope", {"X-API-KEY": key})
    check(status == 404, "an unknown sandbox id answers 404", status)


def main():
    key = os.environ["E2B_API_KEY"]
    refused(lambda: Sandbox.create(api_key="e2b_" + "0" * 40), AuthenticationException, "X-API-KEY",
            "a wrong API key is refused")
    refused(lambda: Sandbox.create(template="python"), SandboxException, "one template",
            "an unknown template is refused")
    refused(lambda: Sandbox.create(allow_internet_access=False), SandboxException, "network",
            "allow_internet_access=False is refused, not ignored")
    refused(lambda: Sandbox.create(envs={"LD_PRELOAD": "/x.so"}), SandboxException, "LD_PRELOAD",
            "a variable that hijacks the loader is refused")

    sbx = Sandbox.create(timeout=600)
    check(sbx.is_running(), "Sandbox.create makes a running sandbox")
    commands(sbx)
    files(sbx)
    hostile(sbx, key)
    sbx.commands.run("echo kept > /root/kept.txt")
    check(sbx.pause() is True, "pause pauses it (capsem suspends its VM)")
    check(str(sbx.get_info().state) == "paused", "a paused sandbox says so")
    check(sbx.pause() is False, "pausing a paused sandbox answers False")
    sbx = Sandbox.connect(sbx.sandbox_id, timeout=600)
    check(sbx.commands.run("cat /root/kept.txt").stdout == "kept\n", "connect resumes it where it was")
    failed = sbx.commands.run("curl -sS --max-time 10 https://denied.test || echo refused:$?")
    check("refused:" in failed.stdout, "the host's network policy holds", failed.stdout)

    other = Sandbox.create(metadata={"team": "capsem"})
    check(other.sandbox_id != sbx.sandbox_id, "a second sandbox at once")
    boots = {s.commands.run("cat /proc/sys/kernel/random/boot_id").stdout for s in (sbx, other)}
    check(len(boots) == 2, "two sandboxes are two machines", boots)
    listed = Sandbox.list().next_items()
    check({s.sandbox_id for s in listed} >= {sbx.sandbox_id, other.sandbox_id},
          "Sandbox.list lists both", listed)
    check(other.get_info().metadata == {"team": "capsem"}, "metadata comes back")
    other.set_timeout(2)
    deadline = time.time() + 60
    while other.is_running() and time.time() < deadline:
        time.sleep(1)
    check(not other.is_running(), "a sandbox past its timeout is killed")

    sbx.kill()
    check(not sbx.is_running(), "kill ends the sandbox")
    log("done")


def hold():
    """A sandbox with a command streaming, held open until killed: what a
    stopping `capsem e2b` must not wait for."""
    sbx = Sandbox.create(timeout=600)
    sbx.commands.run("sleep 600", background=True)
    print(f"holding {sbx.sandbox_id}", flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    if sys.argv[1:] == ["hold"]:
        hold()
    try:
        main()
    except AssertionError as e:
        print(f"e2b_client: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
