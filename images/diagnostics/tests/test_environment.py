"""The environment a command starts in."""
import glob
import locale
import os
import time

import pytest

from conftest import run


def test_home_is_root():
    assert os.environ["HOME"] == "/root"


def test_commands_start_in_home():
    assert os.getcwd() == "/root"


@pytest.mark.parametrize("part", ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"])
def test_path_contains(part):
    assert part in os.environ["PATH"].split(":")


def test_term_is_set():
    assert os.environ.get("TERM")


def test_locale_is_utf8():
    assert os.environ["LANG"] == "C.UTF-8"
    assert locale.getpreferredencoding().lower().replace("-", "") == "utf8"


def test_runs_as_root():
    assert os.getuid() == 0 and os.geteuid() == 0


def test_clock_is_set_from_the_host():
    # A guest without the host's time would think it is 1970.
    assert time.gmtime().tm_year >= 2025


def test_clock_moves_forward():
    first = time.monotonic()
    time.sleep(0.05)
    assert time.monotonic() > first


def test_timezone_is_utc():
    assert time.strftime("%z") == "+0000"


def test_entropy_is_available():
    assert len(os.getrandom(32, os.GRND_NONBLOCK)) == 32
    with open("/dev/urandom", "rb") as f:
        assert len(set(f.read(64))) > 16


def test_virtio_rng_feeds_the_kernel():
    with open("/sys/class/misc/hw_random/rng_available") as f:
        assert "virtio_rng" in f.read()


@pytest.mark.parametrize("dev", ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/tty", "/dev/ptmx", "/dev/console"])
def test_device_exists(dev):
    assert os.path.exists(dev)


@pytest.mark.parametrize("link", ["/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr"])
def test_fd_links_exist(link):
    assert os.path.islink(link)


def test_process_substitution_works():
    assert run("bash -c 'cat <(echo ok)'").stdout.strip() == "ok"


def test_ptys_can_be_allocated():
    master, slave = os.openpty()
    assert os.ttyname(slave).startswith("/dev/pts/")
    os.close(master)
    os.close(slave)


@pytest.mark.parametrize("fs", ["proc", "sysfs", "devtmpfs", "devpts", "tmpfs"])
def test_filesystem_is_mounted(fs):
    with open("/proc/mounts") as f:
        assert any(line.split()[2] == fs for line in f)


def test_cpus_and_memory_match_the_vm():
    assert os.cpu_count() >= 1
    with open("/proc/meminfo") as f:
        total_kib = int(f.readline().split()[1])
    assert total_kib > 100 * 1024


def test_hosts_file_resolves_localhost():
    import socket
    assert socket.gethostbyname("localhost") == "127.0.0.1"


def test_shell_is_bash():
    assert os.environ.get("SHELL") == "/bin/bash"


def test_tls_clients_trust_capsems_ca_alone():
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    assert os.path.realpath(bundle) == "/run/capsem/ca-certificates.crt"
    for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert os.path.realpath(os.environ[var]) == os.path.realpath(bundle), var
    with open(bundle) as f:
        assert f.read().count("BEGIN CERTIFICATE") == 1
    # No hashed links to other roots (OpenSSL's CA directory).
    assert os.listdir("/etc/ssl/certs") == ["ca-certificates.crt"]


def test_free_pages_go_back_to_the_host():
    # The balloon device is bound (free page reporting); it is never
    # inflated, so the guest keeps all of its memory.
    assert glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*")
    assert os.path.exists("/sys/module/page_reporting/parameters/page_reporting_order")
