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

# --- 1. no network path: see test_network.py ------------------------------------

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
