"""Claim 1, the network: no path out except capsem's policy proxy.

Each test is an attack an adversarial root in the guest could try; each
must fail closed. The host logs every one of them (tested from the host in
crates/capsem/tests/it/network.rs). With the default settings only the AI
providers' names resolve, and nothing here needs the internet: every
refusal happens before capsem connects upstream.
"""
import errno
import os
import socket

import pytest

from conftest import DENIED, run

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
    sock.connect((host, port))
    # Rejected on the way out, not merely unanswered.
    with pytest.raises(PermissionError):
        sock.send(b"x")


@pytest.mark.parametrize("name", DENIED)
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


def test_allowed_names_resolve_to_synthetic_addresses(allowed_name):
    addrs = {info[4][0] for info in socket.getaddrinfo(allowed_name, 443, socket.AF_INET)}
    assert len(addrs) == 1
    first, second = map(int, addrs.pop().split(".")[:2])
    assert first == 100 and 64 <= second < 128


def test_ipv6_is_not_available():
    with pytest.raises(OSError) as err:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    assert err.value.errno == errno.EAFNOSUPPORT


def test_raw_sockets_reach_nothing():
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    echo = bytes([8, 0, 0xF7, 0xFF, 0, 0, 0, 0])
    with pytest.raises(PermissionError):
        raw.sendto(echo, ("8.8.8.8", 0))


def test_packet_sockets_do_not_exist():
    with pytest.raises(OSError) as err:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    assert err.value.errno in (errno.EAFNOSUPPORT, errno.EINVAL)


def test_curl_cannot_reach_a_name_outside_the_policy():
    if not DENIED:
        pytest.skip("this session's policy refuses none of the probe names")
    proc = run(f"curl -sS --max-time 10 https://{DENIED[0]}/", check=False)
    assert proc.returncode != 0
    assert "Could not resolve host" in proc.stderr


def test_doh_to_a_raw_address_fails():
    code, _ = curl_status("https://1.1.1.1/dns-query?name=example.com")
    assert code in REFUSED + (35,), code  # 35: reset during the TLS handshake


def test_a_client_ignoring_proxy_variables_is_still_intercepted():
    code, _ = curl_status("--noproxy '*' http://93.184.215.14/")
    assert code in REFUSED, code


# curl's exit codes for a connection refused (7), closed before a reply
# (52), reset while sending (55) or while receiving (56): which one
# depends on when the agent's reset lands.
REFUSED = (7, 52, 55, 56)


def synthetic_address(name):
    return socket.getaddrinfo(name, 443, socket.AF_INET)[0][4][0]


def curl_status(args):
    proc = run(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 20 {args}", check=False)
    return proc.returncode, proc.stdout


def test_domain_fronting_by_host_header_is_refused(allowed_name):
    code, status = curl_status(f"-H 'Host: example.com' https://{allowed_name}/")
    assert status == "421", (code, status)


def test_a_tls_hello_for_another_name_is_refused(allowed_name):
    ip = synthetic_address(allowed_name)
    code, _ = curl_status(f"--resolve example.com:443:{ip} https://example.com/")
    assert code == 35, code  # the TLS handshake is cut


def test_connect_through_the_proxy_to_a_denied_host_is_refused(allowed_name):
    proc = run(f"curl -s -o /dev/null -w '%{{http_connect}}' --max-time 20 -p -x http://{allowed_name}:80 https://example.com/", check=False)
    assert (proc.returncode, proc.stdout) == (56, "421")


def test_an_allowed_name_on_another_port_is_refused(allowed_name):
    ip = synthetic_address(allowed_name)
    sock = socket.create_connection((ip, 22), timeout=10)
    sock.settimeout(10)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        sock.sendall(b"SSH-2.0-x\r\n")
        sock.recv(1)


def test_an_unassigned_synthetic_address_is_refused():
    code, _ = curl_status("http://100.64.200.200/")
    assert code in REFUSED, code


def test_a_raw_ip_with_an_allowed_host_header_is_refused(allowed_name):
    code, _ = curl_status(f"-H 'Host: {allowed_name}' http://1.2.3.4/")
    assert code in REFUSED, code


def test_talking_to_the_interceptor_directly_gets_nowhere():
    code, _ = curl_status("http://127.0.0.1:15001/")
    assert code in REFUSED, code


def test_dns_over_tcp_to_an_outside_resolver_is_refused():
    query = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03com\x00\x00\x01\x00\x01"
    sock = socket.create_connection(("8.8.8.8", 53), timeout=10)
    sock.settimeout(10)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        sock.sendall(len(query).to_bytes(2, "big") + query)
        sock.recv(1)


def dns_answer(name):
    """Asks the resolver the guest is given (the agent, which asks the
    host) for `name`; returns the response code and the first address."""
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    query = bytes.fromhex("beef01000001000000000000") + labels + b"\x00\x01\x00\x01"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.sendto(query, ("127.0.0.1", 53))
    answer = sock.recv(512)
    rcode = answer[3] & 0x0F
    address = socket.inet_ntoa(answer[-4:]) if rcode == 0 and answer[7] > 0 else None
    return rcode, address


@pytest.mark.parametrize("name", ["2130706433", "0x7f.1", "0177.0.0.1", "127.1", "169.254.169.254", "0x7f000001"])
def test_addresses_spelled_as_names_are_refused_by_the_host(name):
    # The guest's own resolver library would read these as addresses; asked
    # as names, the host must not resolve them (to its loopback) for us.
    rcode, _ = dns_answer(name)
    assert rcode == 3, rcode  # NXDOMAIN


def test_a_name_that_is_loopback_on_the_host_is_not_reached():
    # "localhost" is the host's own loopback there. Under the default policy
    # it does not resolve; under a policy that allows it, the proxy must
    # refuse to connect to where it leads.
    rcode, address = dns_answer("localhost")
    if address is None:
        assert rcode == 3, rcode
        return
    proc = run(f"curl -s --max-time 20 --resolve localhost:80:{address} http://localhost/", check=False)
    assert "upstream.private_address" in proc.stdout, (proc.returncode, proc.stdout)


def test_the_agents_descriptors_cannot_be_taken():
    # The agent's channel to the host is what makes its reports count:
    # pidfd_getfd, ptrace, /proc/1/fd and /proc/1/mem must all be closed to
    # guest root, and the port it holds cannot be opened twice.
    import ctypes
    import glob
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(1)
    for fd in range(16):
        assert libc.syscall(438, pidfd, fd, 0) == -1, f"took fd {fd} of PID 1"  # pidfd_getfd
        assert ctypes.get_errno() == errno.EPERM
    assert libc.ptrace(16, 1, 0, 0) == -1  # PTRACE_ATTACH
    assert ctypes.get_errno() == errno.EPERM
    with pytest.raises(PermissionError):
        os.readlink("/proc/1/fd/0")
    with pytest.raises(PermissionError):
        open("/proc/1/mem", "rb")
    ports = glob.glob("/dev/vport*")
    assert ports
    for port in ports:
        with pytest.raises(OSError) as err:
            os.open(port, os.O_RDWR)
        assert err.value.errno == errno.EBUSY, port


def test_commands_can_still_trace_their_own_children():
    # Dropping CAP_SYS_PTRACE must not break debugging one's own processes.
    import ctypes
    import signal
    import time
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        assert libc.ptrace(16, child, 0, 0) == 0, errno.errorcode[ctypes.get_errno()]  # PTRACE_ATTACH
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
