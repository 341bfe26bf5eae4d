//! `carapace-fs-probe`: a tiny static program the virtio-fs lab tests run inside guests for
//! what busybox lacks: extended attributes, mmap and fsync of a file.
//!
//!   carapace-fs-probe setxattr PATH NAME VALUE   set an xattr; prints "setxattr ok" or the errno
//!                                                (VALUE `hex:0a1b...` sets those bytes)
//!   carapace-fs-probe getxattr PATH NAME         prints "getxattr VALUE" or the errno
//!   carapace-fs-probe mmap-shared PATH TEXT      writes TEXT at offset 0 through a shared
//!                                                writable mapping and msyncs it
//!   carapace-fs-probe mmap-private PATH          prints the first line read through a private
//!                                                read-only mapping
//!   carapace-fs-probe fsync PATH TEXT            writes TEXT to a new file and fsyncs it
//!
//! Every command prints one line starting with its name and exits 0 when it worked, 1 when
//! the system call failed (the line then names the error).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in arguments")
}

fn outcome(what: &str, rc: libc::c_long, ok: String) -> ExitCode {
    if rc < 0 {
        println!("{what} failed: {}", std::io::Error::last_os_error());
        ExitCode::from(1)
    } else {
        println!("{what} {ok}");
        ExitCode::SUCCESS
    }
}

fn failed(what: &str, e: std::io::Error) -> ExitCode {
    println!("{what} failed: {e}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["setxattr", path, name, value] => {
            let (p, n) = (cstr(path), cstr(name));
            let value: Vec<u8> = match value.strip_prefix("hex:") {
                Some(h) => (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex digits"))
                    .collect(),
                None => value.as_bytes().to_vec(),
            };
            // SAFETY: p and n are NUL-terminated; value is a live buffer of value.len() bytes.
            let rc = unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            outcome("setxattr", rc as libc::c_long, "ok".into())
        }
        ["getxattr", path, name] => {
            let (p, n) = (cstr(path), cstr(name));
            let mut buf = vec![0u8; 4096];
            // SAFETY: p and n are NUL-terminated; buf is a live buffer of buf.len() bytes.
            let rc = unsafe {
                libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            let v = String::from_utf8_lossy(&buf[..rc.max(0) as usize]).into_owned();
            outcome("getxattr", rc as libc::c_long, v)
        }
        ["mmap-shared", path, text] => {
            let f = match OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => f,
                Err(e) => return failed("mmap-shared", e),
            };
            map(
                &f,
                text.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                |p| {
                    // SAFETY: the mapping is text.len() bytes long and writable.
                    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len()) };
                    // SAFETY: p is the start of a live mapping of text.len() bytes.
                    let rc = unsafe { libc::msync(p.cast(), text.len(), libc::MS_SYNC) };
                    outcome("mmap-shared", rc.into(), "ok".into())
                },
            )
        }
        ["mmap-private", path] => {
            let f = match File::open(path) {
                Ok(f) => f,
                Err(e) => return failed("mmap-private", e),
            };
            let len = f.metadata().map(|m| m.len() as usize).unwrap_or(0).min(256);
            if len == 0 {
                return failed("mmap-private", std::io::Error::other("empty file"));
            }
            map(&f, len, libc::PROT_READ, libc::MAP_PRIVATE, |p| {
                // SAFETY: the mapping is len bytes long and readable.
                let bytes = unsafe { std::slice::from_raw_parts(p, len) };
                let line = String::from_utf8_lossy(bytes);
                outcome("mmap-private", 0, line.lines().next().unwrap_or("").into())
            })
        }
        ["fsync", path, text] => {
            let r = File::create(path).and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            });
            match r {
                Ok(()) => outcome("fsync", 0, "ok".into()),
                Err(e) => failed("fsync", e),
            }
        }
        _ => {
            eprintln!("usage: see the top of tests/src/bin/fs-probe.rs");
            ExitCode::from(2)
        }
    }
}

/// Maps `len` bytes of `f`, runs `f_map` on the mapping, and unmaps it.
fn map(
    f: &File,
    len: usize,
    prot: libc::c_int,
    flags: libc::c_int,
    f_map: impl FnOnce(*mut u8) -> ExitCode,
) -> ExitCode {
    // SAFETY: a fresh mapping chosen by the kernel; the fd is open for the duration.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return failed("mmap", std::io::Error::last_os_error());
    }
    let code = f_map(p.cast());
    // SAFETY: p is a mapping of len bytes made above and no longer used.
    unsafe { libc::munmap(p, len) };
    code
}
