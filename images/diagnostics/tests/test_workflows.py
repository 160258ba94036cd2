"""Everyday workflows an agent performs, end to end, on the writable tmpfs."""
import pathlib
import shutil
import sys
import tempfile

import pytest

from conftest import run


@pytest.fixture(params=["/root", "/tmp"])
def place(request):
    """A fresh directory in /root or in /tmp, removed afterwards."""
    path = pathlib.Path(tempfile.mkdtemp(dir=request.param))
    yield path
    shutil.rmtree(path)


def test_git_init_commit_log(place):
    run("git init -q -b main repo && cd repo && git config user.email a@b.c && git config user.name A"
        " && echo one > f && git add f && git commit -qm first"
        " && echo two >> f && git commit -qam second", cwd=place)
    log = run("git log --format=%s", cwd=place / "repo").stdout.split()
    assert log == ["second", "first"]
    assert run("git diff HEAD~1 --stat", cwd=place / "repo").stdout.count("1 insertion") == 1


def test_git_branch_and_merge(place):
    run("git init -q -b main r && cd r && git config user.email a@b.c && git config user.name A"
        " && echo a > f && git add f && git commit -qm a && git checkout -qb topic"
        " && echo b > g && git add g && git commit -qm b && git checkout -q main && git merge -q topic",
        cwd=place)
    assert sorted(p.name for p in (place / "r").iterdir() if p.name != ".git") == ["f", "g"]


def test_python_venv_and_module_import(tmp_path):
    place = tmp_path
    run([sys.executable, "-m", "venv", "--without-pip", "venv"], cwd=place)
    pkg = place / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def answer():\n    return 42\n")
    out = run([str(place / "venv/bin/python"), "-c", "import mypkg; print(mypkg.answer())"], cwd=place).stdout
    assert out.strip() == "42"


def test_pytest_runs_a_generated_test(tmp_path):
    place = tmp_path
    (place / "test_gen.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gen.py"], cwd=place).stdout
    assert "1 passed" in out


def test_node_script_writes_and_reads_files(place):
    script = place / "io.js"
    script.write_text(
        "const fs = require('fs');"
        "fs.mkdirSync('out', {recursive: true});"
        "fs.writeFileSync('out/data.json', JSON.stringify({n: 7}));"
        "console.log(JSON.parse(fs.readFileSync('out/data.json')).n * 6);"
    )
    assert run(["node", str(script)], cwd=place).stdout.strip() == "42"


@pytest.mark.parametrize("compress", ["z", "j", "J"])
def test_tar_round_trip(place, compress):
    run(f"mkdir -p src/sub && seq 1000 > src/sub/n && tar c{compress}f a.tar src && mkdir dst "
        f"&& tar x{compress}f a.tar -C dst && diff -r src dst/src", cwd=place)


def test_make_builds_incrementally(place):
    (place / "Makefile").write_text("out: in\n\tcp in out\n")
    (place / "in").write_text("v1\n")
    run("make -s", cwd=place)
    assert "up to date" in run("make", cwd=place).stdout
    assert (place / "out").read_text() == "v1\n"


def test_shell_pipeline_and_redirections(place):
    out = run("seq 100 | grep 7 | sort -rn | head -3 > top && wc -l < top && head -1 top", cwd=place).stdout.split()
    assert out == ["3", "97"]


def test_large_file_in_tmpfs(place):
    run("head -c 50M /dev/urandom > big && test $(stat -c %s big) -eq 52428800 && rm big", cwd=place)
