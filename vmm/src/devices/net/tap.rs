//! The tap device behind virtio-net: creating one by name through `/dev/net/tun`, or checking
//! one opened by someone else, and putting it in the mode the device needs (tap, no packet
//! information, a 12-byte virtio-net header, non-blocking).
//!
//! Written by hand: it is four ioctls and an fcntl, and vmm-sys-util, the rust-vmm crate for
//! such host calls, has no tap wrapper.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// The flags a usable tap has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Creates (or attaches to) the tap named `name` and configures it. Returns the open tap and
/// the name the kernel gave it.
pub(super) fn open_named(name: &str) -> io::Result<(File, String)> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("tap {name}: {e}"));
    let mut ifr = ifreq_named(name).map_err(named)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| named(io::Error::new(e.kind(), format!("/dev/net/tun: {e}"))))?;
    // The short is the ifr_flags member of the union; TAP_FLAGS fits in 16 bits.
    ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, and `ifr` is one, alive for the
    // whole call; the fd is owned by `file`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(named(io::Error::new(e.kind(), format!("TUNSETIFF: {e}"))));
    }
    set_vnet_hdr_len(&file).map_err(named)?;
    Ok((file, ifr_name(&ifr)))
}

/// Takes an already open tap: checks it is a tap with a virtio-net header and no packet
/// information, sets the header size and makes it non-blocking. Returns the tap and its name.
pub(super) fn adopt(fd: OwnedFd) -> io::Result<(File, String)> {
    let file = File::from(fd);
    let fd_named =
        |e: io::Error| io::Error::new(e.kind(), format!("tap fd {}: {e}", file.as_raw_fd()));
    let mut ifr = ifreq_named("").map_err(fd_named)?;
    // SAFETY: TUNGETIFF writes one struct ifreq, and `ifr` is one, alive for the whole call;
    // the fd is owned by `file`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(fd_named(io::Error::new(
            e.kind(),
            format!("not a tap (TUNGETIFF: {e})"),
        )));
    }
    let name = ifr_name(&ifr);
    // SAFETY: TUNGETIFF filled ifr_flags, the union member read here; any value is a valid
    // c_short.
    let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
    let named = |e: io::Error| io::Error::new(e.kind(), format!("tap {name}: {e}"));
    if flags & TAP_FLAGS != TAP_FLAGS {
        return Err(named(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("opened with flags {flags:#x}; IFF_TAP, IFF_NO_PI and IFF_VNET_HDR are needed"),
        )));
    }
    set_vnet_hdr_len(&file).map_err(named)?;
    set_nonblocking(&file).map_err(named)?;
    Ok((file, name))
}

/// A zeroed ifreq carrying `name`.
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    // The name and its terminating NUL must fit in IFNAMSIZ.
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an interface name has at most {} bytes and no NUL",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    // SAFETY: ifreq is plain C data (arrays of integers and a union of integers and such
    // arrays) for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

fn ifr_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn set_vnet_hdr_len(file: &File) -> io::Result<()> {
    let len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, `len` is one and outlives the call; the fd is
    // owned by `file`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("TUNSETVNETHDRSZ: {e}")));
    }
    Ok(())
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument and only reads the fd's flags; the fd is owned by
    // `file`.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: F_SETFL takes an int of flags; the fd is owned by `file`.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
