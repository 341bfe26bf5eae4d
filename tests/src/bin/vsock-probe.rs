//! `carapace-vsock-probe`: a tiny static program the VMM lab tests run inside guests to use
//! AF_VSOCK, which busybox cannot.
//!
//!   carapace-vsock-probe echo PORT           accept one connection on PORT, echo it until EOF
//!   carapace-vsock-probe send CID PORT TEXT  connect to CID:PORT, send TEXT and a newline,
//!                                            print the first line that comes back

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// A connected vsock socket as a stream (UnixStream only wraps the fd's read/write).
fn stream(fd: OwnedFd) -> UnixStream {
    UnixStream::from(fd)
}

fn echo(port: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let listener = socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let ptr = (&addr as *const libc::sockaddr_vm).cast();
    // SAFETY: ptr points at a valid sockaddr_vm of `len` bytes.
    let rc = unsafe { libc::bind(listener.as_raw_fd(), ptr, len) };
    check(rc, "bind")?;
    // SAFETY: listen(2) on a socket we own.
    check(unsafe { libc::listen(listener.as_raw_fd(), 1) }, "listen")?;
    println!("vsock-probe: listening on port {port}");
    // SAFETY: accept(2) without an address buffer.
    let fd = unsafe {
        libc::accept(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    check(fd, "accept")?;
    // SAFETY: fd was just returned by accept(2).
    let mut conn = stream(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut buf = [0u8; 65536];
    let mut total = 0usize;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        total += n;
    }
    println!("vsock-probe: echoed {total} bytes");
    Ok(())
}

fn send(cid: u32, port: u32, text: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = socket()?;
    let addr = vsock_addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let ptr = (&addr as *const libc::sockaddr_vm).cast();
    // SAFETY: ptr points at a valid sockaddr_vm of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), ptr, len) };
    check(rc, "connect")?;
    let mut conn = stream(fd);
    writeln!(conn, "{text}")?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    println!("vsock-probe: reply: {}", line.trim_end());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &String| {
        s.parse::<u32>()
            .unwrap_or_else(|_| panic!("`{s}` is not a number"))
    };
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["echo", port] => echo(num(&port.to_string())),
        ["send", cid, port, text] => send(num(&cid.to_string()), num(&port.to_string()), text),
        _ => {
            eprintln!("usage: carapace-vsock-probe echo PORT | send CID PORT TEXT");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        println!("vsock-probe: error: {e}");
        std::process::exit(1);
    }
}
