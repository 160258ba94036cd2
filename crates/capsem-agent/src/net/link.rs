//! Interfaces and routes, through the classic IPv4 ioctls: bringing up
//! `lo`, and giving the dummy interface an address and the default route.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The dummy interface's address; its own traffic never leaves the guest.
pub const DUMMY_ADDR: [u8; 4] = [10, 0, 0, 1];

fn control_socket() -> Result<OwnedFd> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening a socket to configure interfaces")
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers
    // and addresses), for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux, and a
    // sockaddr_in is a valid sockaddr for AF_INET: this is how the kernel
    // reads it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Runs one interface ioctl, naming `what` on failure.
fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: &T, what: &str) -> Result<()> {
    // SAFETY: every request used here (SIOCSIFFLAGS, SIOCSIFADDR,
    // SIOCADDRT) reads a struct of type T through the pointer, which points
    // at a live, initialised T for the duration of the call; the socket is
    // open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *const T) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_owned());
    }
    Ok(())
}

fn up(sock: &OwnedFd, name: &str) -> Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as i16;
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        &req,
        &format!("bringing up {name}"),
    )
}

/// Brings up the loopback interface: programs that listen on 127.0.0.1
/// (test servers, language servers, the agent's own proxy) need it.
pub fn loopback_up() -> Result<()> {
    up(&control_socket()?, "lo")
}

/// Gives `dummy0` its address and the default route, so that a connection
/// to any address gets as far as the NAT hook that hands it to the agent.
/// Whatever is not redirected reaches the dummy device and is discarded.
pub fn dummy_default_route() -> Result<()> {
    let sock = control_socket()?;
    let mut req = ifreq("dummy0");
    req.ifr_ifru.ifru_addr = sockaddr_in(DUMMY_ADDR);
    ioctl(&sock, libc::SIOCSIFADDR, &req, "addressing dummy0")?;
    up(&sock, "dummy0")?;
    let dev = CString::new("dummy0").expect("no NUL");
    // SAFETY: rtentry is plain old data apart from rt_dev, a pointer for
    // which null is valid; rt_dev is set below to a string that outlives
    // the ioctl.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_in([0; 4]);
    route.rt_genmask = sockaddr_in([0; 4]);
    route.rt_flags = libc::RTF_UP;
    route.rt_dev = dev.as_ptr().cast_mut();
    ioctl(&sock, libc::SIOCADDRT, &route, "adding the default route")
}
