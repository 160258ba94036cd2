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
