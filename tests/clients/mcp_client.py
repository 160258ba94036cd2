"""Drives `capsem mcp` with the official Python MCP SDK, as a host agent
would: lists the tools, creates a sandbox, runs commands, moves files,
reads the network log, tries hostile arguments, deletes the sandbox.

Run by crates/capsem/tests/it/mcp.rs with CAPSEM_BIN (the binary) and the
test's CAPSEM_HOME. Prints what it did; exits non-zero on the first
failed check.
"""

import asyncio
import json
import os
import shutil
import sys
import tempfile

from mcp import Client, StdioServerParameters

NAME = "mcp-sbx"


def log(*parts):
    print("mcp_client:", *parts, flush=True)


def check(cond, what, got=None):
    if not cond:
        raise AssertionError(f"{what}: got {got!r}")
    log("ok:", what)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def call(client, tool, args=None, error=False):
    result = await client.call_tool(tool, args or {}, read_timeout_seconds=300)
    check(bool(result.is_error) == error,
          f"{tool} {'fails' if error else 'succeeds'}", text_of(result))
    if error:
        return text_of(result)
    return result.structured_content


async def main():
    server = StdioServerParameters(
        command=os.environ["CAPSEM_BIN"], args=["mcp"], env=dict(os.environ))
    async with Client(server) as client:
        listed = await client.list_tools()
        names = {t.name for t in listed.tools}
        for want in ["sandbox_create", "sandbox_list", "sandbox_stop", "sandbox_delete",
                     "exec", "read_file", "write_file", "list_dir", "net_log",
                     "session_show", "workspace_diff"]:
            check(want in names, f"the tool {want} is listed", sorted(names))
        check(all(t.description and t.input_schema.get("type") == "object"
                  for t in listed.tools), "every tool has a description and a schema")

        said = await call(client, "sandbox_create", {"name": NAME, "env": {"LD_PRELOAD": "/x.so"}}, error=True)
        check("not allowed" in said, "a variable that hijacks the loader is refused", said)
        said = await call(client, "sandbox_create", {"name": "Bad Name!"}, error=True)
        check("Bad Name!" in said, "a bad name is refused in words", said)
        project = tempfile.mkdtemp(prefix="capsem-mcp-proj-")
        with open(os.path.join(project, "readme.txt"), "w") as f:
            f.write("the project\n")
        created = await call(client, "sandbox_create",
                             {"name": NAME, "env": {"GREETING": "hi"}, "workspace": project})
        check(created["name"] == NAME and created["state"] == "running",
              "sandbox_create boots a running sandbox", created)
        listing = await call(client, "sandbox_list")
        check(any(s["name"] == NAME for s in listing["sandboxes"]),
              "sandbox_list lists it", listing)

        ran = await call(client, "exec", {"name": NAME, "command": "echo $GREETING from $(uname -s)"})
        check(ran["stdout"] == "hi from Linux\n" and ran["exit_code"] == 0,
              "exec returns stdout and the exit code", ran)
        ran = await call(client, "exec", {"name": NAME, "command": "echo oops >&2; exit 3"})
        check(ran["exit_code"] == 3 and ran["stderr"] == "oops\n",
              "a failing command's code and stderr come back", ran)
        ran = await call(client, "exec", {"name": NAME, "command": "tr a-z A-Z", "stdin": "shout"})
        check(ran["stdout"] == "SHOUT", "stdin reaches the command", ran)
        ran = await call(client, "exec", {"name": NAME, "command": "head -c 3000000 /dev/zero | tr '\\0' x"})
        check(ran["stdout_bytes"] == 3000000 and len(ran["stdout"]) < 300000
              and "cut at 256 KiB of 3000000 bytes" in ran["stdout"],
              "large output is cut with a note and its size", ran["stdout"][-80:])
        ran = await call(client, "exec", {"name": NAME, "command": "sleep 30", "timeout_secs": 1})
        check(ran["timed_out"] is True, "a command past its timeout is killed", ran)

        written = await call(client, "write_file",
                             {"name": NAME, "path": "/root/notes.txt", "content": "line one\nline two\n"})
        check(written["bytes"] == 18, "write_file writes the file", written)
        read = await call(client, "read_file", {"name": NAME, "path": "/root/notes.txt"})
        check(read["content"] == "line one\nline two\n", "read_file reads it back", read)
        ran = await call(client, "exec", {"name": NAME, "command": "mkdir -p /root/d/sub && ln -s /etc/hostname /root/d/link"})
        entries = (await call(client, "list_dir", {"name": NAME, "path": "/root"}))["entries"]
        kinds = {e["name"]: e["kind"] for e in entries}
        check(kinds.get("notes.txt") == "file" and kinds.get("d") == "directory",
              "list_dir lists files and directories", kinds)
        entries = (await call(client, "list_dir", {"name": NAME, "path": "/root/d"}))["entries"]
        check({e["name"]: e["kind"] for e in entries} == {"sub": "directory", "link": "symlink"},
              "list_dir shows a symlink as one", entries)

        mounted = "/root/" + os.path.basename(project)
        ran = await call(client, "exec", {"name": NAME, "command": f"cat {mounted}/readme.txt && echo new > {mounted}/added.txt"})
        check(ran["stdout"] == "the project\n", "the workspace is in the sandbox", ran)
        diff = await call(client, "workspace_diff", {"id": NAME})
        check("added.txt" in json.dumps(diff["changes"]) and "+new" in diff["patch"],
              "workspace_diff shows the sandbox's change", diff)
        check(not os.path.exists(os.path.join(project, "added.txt")),
              "the change has not reached the project")

        await call(client, "exec", {"name": NAME, "command": "curl -sS --max-time 10 https://denied.test"})
        net = await call(client, "net_log", {"id": NAME})
        check("denied.test" in json.dumps(net["dns"] + net["requests"]),
              "net_log shows the refused request", net)
        session = await call(client, "session_show", {"id": created["session"]})
        check(session["session"]["id"] == created["session"], "session_show shows its session", session)

        # Hostile arguments: each a tool error in words, the server lives on.
        said = await call(client, "read_file", {"name": NAME, "path": "/root/../etc/shadow"}, error=True)
        check("refused" in said, "a path with .. is refused", said)
        said = await call(client, "read_file", {"name": NAME, "path": "etc/passwd"}, error=True)
        check("absolute path" in said, "a relative path is refused", said)
        said = await call(client, "read_file", {"name": NAME, "path": "/root/d"}, error=True)
        check("not a regular file" in said, "reading a directory is refused", said)
        said = await call(client, "list_dir", {"name": NAME, "path": "/root/notes.txt"}, error=True)
        check("not a directory" in said, "listing a file is refused", said)
        said = await call(client, "read_file", {"name": NAME, "path": "/root/nothing-here"}, error=True)
        check("nothing-here" in said, "a missing file is named", said)
        said = await call(client, "exec", {"name": "no-such-sandbox", "command": "true"}, error=True)
        check("no-such-sandbox" in said, "an unknown sandbox is named", said)
        big = "x" * (100 << 20)
        said = await call(client, "write_file", {"name": NAME, "path": "/root/big", "content": big}, error=True)
        check("at most 16 MiB" in said, "a 100 MiB write is refused with the limit", said)
        del big
        ran = await call(client, "exec", {"name": NAME, "command": "test ! -e /root/big && echo none"})
        check(ran["stdout"] == "none\n", "nothing of the refused write reached the sandbox", ran)
        await call(client, "exec", {"name": NAME, "command": "head -c 5000000 /dev/zero > /root/large"})
        said = await call(client, "read_file", {"name": NAME, "path": "/root/large"}, error=True)
        check("larger than 4 MiB" in said, "a file over 4 MiB is refused", said)
        await call(client, "exec", {"name": NAME, "command": "printf '\\377\\376' > /root/bin"})
        said = await call(client, "read_file", {"name": NAME, "path": "/root/bin"}, error=True)
        check("not UTF-8" in said, "a binary file is refused", said)

        stopped = await call(client, "sandbox_stop", {"name": NAME})
        check(stopped["state"] == "stopped", "sandbox_stop stops it", stopped)
        said = await call(client, "exec", {"name": NAME, "command": "true"}, error=True)
        check("stopped" in said, "a stopped sandbox refuses commands in the CLI's words", said)
        deleted = await call(client, "sandbox_delete", {"name": NAME})
        check(deleted["deleted"] == NAME, "sandbox_delete deletes it", deleted)
        listing = await call(client, "sandbox_list")
        check(all(s["name"] != NAME for s in listing["sandboxes"]), "it is gone", listing)
        shutil.rmtree(project)
    log("done")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except AssertionError as e:
        print(f"mcp_client: FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
