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


def root_is_overlay():
    return mounts()["/"][2] == "overlay"


def test_the_root_is_the_image_under_an_overlay_or_read_only():
    # guest.root = "overlay" (the default): writable for the session over
    # the read-only image; "read-only": the image as it is.
    root = mounts()["/"]
    if root[2] == "overlay":
        assert "lowerdir=" in root[3] and "upperdir=" in root[3], root
    else:
        assert root[2] == "erofs" and "ro" in root[3].split(","), root


def test_the_image_is_out_of_sight():
    # Only the overlay is visible: the image's own mount is left behind in
    # the initramfs, so nothing can reach it but through the overlay.
    assert not any(m[2] == "erofs" for p, m in mounts().items() if p != "/")


@pytest.mark.parametrize("path", ["/usr/bin/capsem-evil", "/etc/evil", "/bin/evil", "/var/evil"])
def test_system_writes_stay_in_memory(path):
    # With the overlay they succeed and land in its tmpfs layer (a later
    # run sees none of them: it::exec::a_write_to_the_system_is_gone_in_the_next_run);
    # read-only, they fail.
    if not root_is_overlay():
        with pytest.raises(OSError) as err:
            open(path, "w")
        assert err.value.errno == errno.EROFS
        return
    with open(path, "w") as f:
        f.write("x")
    os.unlink(path)


@pytest.mark.parametrize("path", ["/var/tmp", "/var/log", "/var/cache", "/home", "/opt", "/usr/local/lib"])
def test_places_programs_write_to_are_writable(path):
    if not root_is_overlay():
        pytest.skip("guest.root is read-only")
    target = os.path.join(path, f"doctor-{os.getpid()}")
    with open(target, "w") as f:
        f.write("ok")
    os.unlink(target)


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


def test_the_root_disk_cannot_be_mounted_writable():
    os.makedirs("/tmp/doctor-vda", exist_ok=True)
    proc = run("mount -t erofs -o rw /dev/vda /tmp/doctor-vda", check=False)
    if proc.returncode == 0:
        # erofs has no write support at all: a mount is read-only regardless.
        try:
            assert "ro" in mounts()["/tmp/doctor-vda"][3].split(",")
        finally:
            run("umount /tmp/doctor-vda", check=False)


def test_no_file_is_setuid_or_setgid():
    found = run("find / -xdev -perm /6000 -type f", check=False).stdout.split()
    assert found == [], found


def test_the_kernel_hardens_its_heap():
    with open("/proc/cmdline") as f:
        words = f.read().split()
    for flag in ("slab_nomerge", "page_alloc.shuffle=1", "init_on_alloc=1"):
        assert flag in words, words


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
