"""Times E2B's Python SDK against `capsem e2b` for `cargo xtask bench`:
`Sandbox.create()` to a sandbox that runs commands, and the round trip of
`commands.run("true")`. Prints one JSON object of milliseconds."""

import json
import sys
import time

from e2b import Sandbox

RUNS = int(sys.argv[1])
EXECS = 30


def ms(since):
    return (time.perf_counter() - since) * 1000


def main():
    creates = []
    for _ in range(RUNS):
        started = time.perf_counter()
        sbx = Sandbox.create(timeout=600)
        creates.append(ms(started))
        sbx.kill()
    sbx = Sandbox.create(timeout=600)
    sbx.commands.run("true")
    runs = []
    for _ in range(EXECS):
        started = time.perf_counter()
        sbx.commands.run("true")
        runs.append(ms(started))
    sbx.kill()
    print(json.dumps({"create_ms": creates, "run_true_ms": runs}))


main()
