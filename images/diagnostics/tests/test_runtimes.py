"""Language runtimes and package tools, each running a real snippet."""
import json
import shutil
import sys

import pytest

from conftest import run


def version_of(command):
    return run(command).stdout.strip().lstrip("v")


def test_python_is_3_11_or_newer():
    assert sys.version_info >= (3, 11)


MODULES = ["json", "sqlite3", "ssl", "hashlib", "venv", "ctypes", "zlib", "lzma", "bz2", "pip", "urllib.request", "asyncio", "multiprocessing", "curses", "readline", "uuid", "decimal"]


@pytest.fixture(scope="module")
def import_errors():
    """Imports every module in one fresh interpreter (interpreters start
    slowly under emulation); maps each module to its error, or None."""
    script = (
        "import importlib, json, sys\n"
        "errors = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        errors[name] = None\n"
        "    except Exception as e:\n"
        "        errors[name] = repr(e)\n"
        "print(json.dumps(errors))\n"
    )
    return json.loads(run([sys.executable, "-c", script, *MODULES]).stdout)


@pytest.mark.parametrize("module", MODULES)
def test_python_module_imports(module, import_errors):
    assert import_errors[module] is None, import_errors[module]


def test_python_sqlite_works(workdir):
    out = run(
        [sys.executable, "-c", "import sqlite3; c = sqlite3.connect('db'); c.execute('create table t (x)'); "
         "c.execute('insert into t values (41)'); print(c.execute('select x + 1 from t').fetchone()[0])"],
        cwd=workdir,
    ).stdout
    assert out.strip() == "42"


def test_python_multiprocessing_works():
    out = run([sys.executable, "-c", "from multiprocessing import Pool\n"
               "if __name__ == '__main__':\n with Pool(2) as p: print(sum(p.map(abs, [-1, -2, 3])))"]).stdout
    assert out.strip() == "6"


def test_pip_knows_its_version():
    out = run([sys.executable, "-c", "import pip; print(pip.__version__)"]).stdout
    assert int(out.split(".")[0]) >= 23


def test_node_is_22_or_newer():
    assert int(version_of("node --version").split(".")[0]) >= 22


@pytest.mark.parametrize(
    "snippet,expected",
    [
        ("console.log([1, 2, 3].map(x => x * 2).join(','))", "2,4,6"),
        ("console.log(require('crypto').createHash('sha256').update('abc').digest('hex').slice(0, 8))", "ba7816bf"),
        ("console.log(require('os').platform())", "linux"),
        ("require('child_process').exec('echo hi', (e, out) => console.log(out.trim()))", "hi"),
        ("(async () => { await new Promise(r => setTimeout(r, 10)); console.log('timer') })()", "timer"),
        ("console.log(typeof fetch)", "function"),
        ("console.log(new Intl.NumberFormat('en-US').format(1234.5))", "1,234.5"),
    ],
)
def test_node_runs(snippet, expected):
    assert run(["node", "-e", snippet]).stdout.strip() == expected


def test_node_can_listen_on_loopback():
    script = (
        "const http = require('http');"
        "const s = http.createServer((q, r) => r.end('pong')).listen(0, '127.0.0.1', () => {"
        "  http.get({port: s.address().port, host: '127.0.0.1'}, r => {"
        "    let d = ''; r.on('data', c => d += c); r.on('end', () => { console.log(d); s.close(); });"
        "  });"
        "});"
    )
    assert run(["node", "-e", script]).stdout.strip() == "pong"


def test_npx_is_installed():
    assert shutil.which("npx") == "/usr/local/bin/npx"


def test_npm_runs_a_package_script(workdir):
    (workdir / "package.json").write_text(json.dumps({"name": "demo", "version": "1.2.3", "scripts": {"hi": "echo hi-from-npm"}}))
    out = run("npm run --silent hi", cwd=workdir).stdout
    assert out.strip() == "hi-from-npm"


def test_git_runs():
    assert version_of("git --version").startswith("git version 2.")


# --- installing what an agent needs (the system is an overlay) ------------------

def root_is_overlay():
    with open("/proc/mounts") as mounts:
        return any(line.split()[1:3] == ["/", "overlay"] for line in mounts)


needs_overlay = pytest.mark.skipif(not root_is_overlay(), reason="guest.root is read-only")


def local_wheel(workdir, name="capsem_local"):
    """A pure-Python wheel, built by hand (no network, no build backend)."""
    import zipfile
    path = workdir / f"{name}-1.0-py3-none-any.whl"
    dist = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        whl.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: doctor\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")
    return path


@needs_overlay
def test_pip_installs_without_breaking_system_packages(workdir):
    wheel = local_wheel(workdir, "capsem_pip")
    run(f"pip install --no-index --quiet {wheel}")
    assert run([sys.executable, "-c", "import capsem_pip; print(capsem_pip.VALUE)"]).stdout.strip() == "42"


@needs_overlay
def test_uv_installs_and_runs(workdir):
    wheel = local_wheel(workdir, "capsem_uv")
    run(f"uv pip install --offline --quiet {wheel}")
    assert run([sys.executable, "-c", "import capsem_uv; print(capsem_uv.VALUE)"]).stdout.strip() == "42"
    out = run("uv run --offline --no-project python -c 'print(6 * 7)'", cwd=workdir).stdout
    assert out.strip() == "42"


@needs_overlay
def test_npm_installs_globally_onto_the_path(workdir):
    pkg = workdir / "capsem-hello"
    pkg.mkdir()
    (pkg / "package.json").write_text(json.dumps({"name": "capsem-hello", "version": "1.0.0", "bin": {"capsem-hello": "hello.js"}}))
    (pkg / "hello.js").write_text("#!/usr/bin/env node\nconsole.log('hello from npm -g')\n")
    run(f"npm install -g --offline --silent {pkg}")
    assert run("capsem-hello").stdout.strip() == "hello from npm -g"


@needs_overlay
def test_apt_installs_a_local_deb(workdir):
    root = workdir / "deb"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: capsem-local\nVersion: 1.0\nArchitecture: all\nMaintainer: doctor <d@capsem>\nDescription: a local package\n")
    script = root / "usr/bin/capsem-local"
    script.write_text("#!/bin/sh\necho installed by apt\n")
    script.chmod(0o755)
    run(f"dpkg-deb --build --root-owner-group {root} {workdir / 'capsem-local.deb'}")
    run(f"apt-get install -y -q {workdir / 'capsem-local.deb'}")
    assert run("capsem-local").stdout.strip() == "installed by apt"


def test_c_extensions_can_be_built(workdir):
    (workdir / "hello.c").write_text('#include <Python.h>\n#include <stdio.h>\nint main(void) { printf("%d\\n", PY_MAJOR_VERSION); return 0; }\n')
    flags = run("python3-config --includes").stdout.strip()
    run(f"gcc {flags} -o hello hello.c", cwd=workdir)
    assert run("./hello", cwd=workdir).stdout.strip() == "3"
