"""The sandbox's claims, checked from inside by an adversarial root.

1. No network path.  2. Immutable system.  3. No kernel extension.
4. No services.  (docs/security.md lists each claim and its tests.)
"""
import ctypes
import errno
import os
import socket

import pytest

from conftest import run

# --- 1. no network path ---------------------------------------------------------

OUTSIDE = [
    ("1.1.1.1", 443),
    ("8.8.8.8", 53),
    ("10.0.2.2", 22),
    ("10.0.2.3", 53),
    ("169.254.169.254", 80),
    ("192.168.1.1", 80),
    ("172.17.0.1", 80),
    ("100.100.100.200", 80),
]


def test_only_loopback_and_the_dummy_device_exist():
    assert sorted(os.listdir("/sys/class/net")) == ["dummy0", "lo"]


def test_no_device_leads_anywhere():
    # A real NIC has a driver behind it; dummy0 discards what it is given.
    for dev in os.listdir("/sys/class/net"):
        assert not os.path.exists(f"/sys/class/net/{dev}/device"), dev


def test_loopback_is_up_and_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname(), timeout=5)
    conn, _ = server.accept()
    client.sendall(b"ping")
    assert conn.recv(4) == b"ping"


@pytest.mark.parametrize("host,port", OUTSIDE)
def test_tcp_to_outside_addresses_is_refused(host, port):
    # The agent accepts every connection, then resets it when the host
    # refuses: a raw address is never a name the guest resolved.
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(10)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.recv(1)


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "224.0.0.251", "255.255.255.255"])
@pytest.mark.parametrize("port", [443, 123, 51820])
def test_udp_to_outside_addresses_is_rejected(host, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.settimeout(2)
    with pytest.raises(OSError):
        sock.connect((host, port))
        sock.send(b"x")
        sock.recv(1)


@pytest.mark.parametrize("name", ["example.com", "google.com", "pypi.org", "evil.test"])
def test_names_outside_the_policy_do_not_resolve(name):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(name, 443)


def test_dns_to_an_outside_resolver_is_answered_by_the_policy():
    # A query to 8.8.8.8 reaches the agent's resolver, not Google.
    query = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.sendto(query, ("8.8.8.8", 53))
    answer = sock.recv(512)
    assert answer[:2] == b"\xab\xcd"
    assert answer[3] & 0x0F == 3  # NXDOMAIN


def test_allowed_names_resolve_to_synthetic_addresses():
    addrs = {info[4][0] for info in socket.getaddrinfo("api.anthropic.com", 443, socket.AF_INET)}
    assert len(addrs) == 1
    first, second = map(int, addrs.pop().split(".")[:2])
    assert first == 100 and 64 <= second < 128


def test_ipv6_is_not_available():
    with pytest.raises(OSError) as err:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    assert err.value.errno == errno.EAFNOSUPPORT


def test_raw_sockets_reach_nothing():
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    raw.settimeout(2)
    echo = bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])
    with pytest.raises(OSError):
        raw.sendto(echo, ("8.8.8.8", 0))
        while True:
            raw.recv(1500)


def test_packet_sockets_do_not_exist():
    with pytest.raises(OSError) as err:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    assert err.value.errno in (errno.EAFNOSUPPORT, errno.EINVAL)


def test_curl_cannot_reach_a_name_outside_the_policy():
    proc = run("curl -sS --max-time 10 https://example.com/", check=False)
    assert proc.returncode != 0
    assert "Could not resolve host" in proc.stderr


def test_doh_to_a_raw_address_fails():
    proc = run("curl -sS --max-time 10 https://1.1.1.1/dns-query?name=example.com", check=False)
    assert proc.returncode != 0


def test_a_client_ignoring_proxy_variables_is_still_intercepted():
    proc = run("env -u http_proxy -u https_proxy curl -sS --noproxy '*' --max-time 10 http://93.184.215.14/", check=False)
    assert proc.returncode != 0


# --- 2. immutable system --------------------------------------------------------

def mounts():
    with open("/proc/mounts") as f:
        return {fields[1]: fields for fields in (line.split() for line in f)}


def test_root_is_mounted_read_only():
    root = mounts()["/"]
    assert "ro" in root[3].split(","), root


@pytest.mark.parametrize("path", ["/usr/bin/capsem-evil", "/etc/evil", "/bin/evil", "/var/evil"])
def test_system_paths_cannot_be_written(path):
    with pytest.raises(OSError) as err:
        open(path, "w")
    assert err.value.errno == errno.EROFS


def test_system_files_cannot_be_modified():
    with pytest.raises(OSError) as err:
        open("/etc/passwd", "a")
    assert err.value.errno == errno.EROFS


def test_root_cannot_be_remounted_read_write():
    proc = run("mount -o remount,rw /", check=False)
    assert proc.returncode != 0
    assert "ro" in mounts()["/"][3].split(",")


def test_the_root_disk_is_read_only_at_the_device():
    assert run("blockdev --getro /dev/vda").stdout.strip() == "1"
    # Opening for writing may be refused outright; if not, writing is.
    with pytest.raises(OSError) as err:
        fd = os.open("/dev/vda", os.O_WRONLY)
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
    assert err.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


@pytest.mark.parametrize("path", ["/root", "/tmp", "/run", "/dev/shm"])
def test_scratch_space_is_tmpfs(path):
    assert mounts()[path][2] == "tmpfs"


@pytest.mark.parametrize("path", ["/root", "/tmp", "/run", "/dev/shm"])
def test_scratch_space_is_writable(path):
    target = os.path.join(path, f"doctor-{os.getpid()}")
    with open(target, "w") as f:
        f.write("ok")
    os.unlink(target)


def test_home_starts_empty():
    leftovers = [n for n in os.listdir("/root") if not n.startswith(".")]
    assert leftovers == []


# --- 3. no kernel extension -----------------------------------------------------

@pytest.mark.parametrize("path", ["/proc/modules", "/proc/kallsyms", "/dev/mem", "/dev/kmem", "/dev/port", "/proc/kcore", "/proc/config.gz"])
def test_kernel_access_paths_are_absent(path):
    assert not os.path.exists(path)


libc = ctypes.CDLL(None, use_errno=True)

SYSCALLS = {
    "init_module": 175,
    "finit_module": 313,
    "delete_module": 176,
    "kexec_load": 246,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "modify_ldt": 154,
}


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_kernel_extension_syscalls_are_not_implemented(name):
    rc = libc.syscall(SYSCALLS[name], 0, 0, 0, 0, 0)
    assert rc == -1
    assert ctypes.get_errno() == errno.ENOSYS, os.strerror(ctypes.get_errno())


def test_debugfs_is_absent():
    assert "debugfs" not in open("/proc/filesystems").read()


def test_kernel_is_the_capsem_build_without_module_loading():
    assert os.uname().release.startswith("6.1."), os.uname().release
    assert not os.path.exists("/proc/sys/kernel/modprobe")


# --- 4. no services -------------------------------------------------------------

def processes():
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")[0].decode()
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        procs[int(pid)] = (cmdline, ppid)
    return procs


def test_pid_1_is_the_capsem_agent():
    assert processes()[1][0] == "/init"


@pytest.mark.parametrize("daemon", ["systemd", "cron", "sshd", "dbus-daemon", "rsyslogd", "udevd", "agetty"])
def test_no_daemon_runs(daemon):
    names = [os.path.basename(cmd) for cmd, _ in processes().values()]
    assert daemon not in names


def test_user_space_is_only_init_and_this_command():
    # Kernel threads have an empty cmdline and descend from kthreadd (pid 2).
    user = {pid: cmd for pid, (cmd, ppid) in processes().items() if cmd and ppid != 2 and pid != 2}
    mine = set()
    pid = os.getpid()
    while pid > 1:
        mine.add(pid)
        pid = processes()[pid][1]
    others = {pid: cmd for pid, cmd in user.items() if pid != 1 and pid not in mine}
    # Only children of this test may be left (none are running now).
    assert others == {}, others


def test_only_the_agent_listens_and_only_on_loopback():
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    listening = sorted(row[1] for row in rows if row[3] == "0A")  # 0A is LISTEN
    assert listening == ["0100007F:3A99"]  # 127.0.0.1:15001, the interception port


def test_hostname_is_capsem():
    assert socket.gethostname() == "capsem"
