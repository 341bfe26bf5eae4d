//! One process the agent started in a container (init or exec): its pid, its standard
//! streams (pipes or a pty master, all owned by the agent) and its exit.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use crate::error::{AgentError, Result};
use crate::reaper::{ExitStatus, ExitWatch};

/// A non-blocking pipe end or pty master the agent reads or writes asynchronously.
pub type Stream = Arc<AsyncFd<File>>;

/// The agent's ends of a process's standard streams.
pub struct Stdio {
    /// Where WriteStdin goes; `None` after CloseStdin.
    pub stdin: Mutex<Option<Stream>>,
    /// Where ReadStdout reads (the pty master for terminal processes).
    pub stdout: Option<Stream>,
    /// Where ReadStderr reads; `None` for terminal processes (reads report EOF at once).
    pub stderr: Option<Stream>,
    /// The pty master for TtyWinResize.
    pub pty: Option<Stream>,
}

/// The container's ends of its standard pipes, to hand to libcontainer.
pub struct ChildStdio {
    /// The read end of the stdin pipe.
    pub stdin: OwnedFd,
    /// The write end of the stdout pipe.
    pub stdout: OwnedFd,
    /// The write end of the stderr pipe.
    pub stderr: OwnedFd,
}

fn nonblocking(fd: OwnedFd) -> Result<Stream> {
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(AgentError::Errno)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(AgentError::Errno)?;
    let file = File::from(fd);
    // SAFETY: `file` owns an open descriptor and the AsyncFd owns `file`, so the descriptor
    // stays open and the same until the AsyncFd is dropped.
    let fd = unsafe { AsyncFd::register(file) }
        .map_err(|e| AgentError::io("registering a stream", e.into()))?;
    Ok(Arc::new(fd))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys("pipe", e))
}

impl Stdio {
    /// Three pipes: the agent keeps one end of each, the container gets the other.
    pub fn pipes() -> Result<(Self, ChildStdio)> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let ours = Self {
            stdin: Mutex::new(Some(nonblocking(in_w)?)),
            stdout: Some(nonblocking(out_r)?),
            stderr: Some(nonblocking(err_r)?),
            pty: None,
        };
        Ok((
            ours,
            ChildStdio {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
        ))
    }

    /// A terminal process: every stream is the pty master received from libcontainer.
    pub fn pty(master: OwnedFd) -> Result<Self> {
        let master = nonblocking(master)?;
        Ok(Self {
            stdin: Mutex::new(Some(master.clone())),
            stdout: Some(master.clone()),
            stderr: None,
            pty: Some(master),
        })
    }
}

/// Reads up to `len` bytes; `Ok(None)` at end of stream.
pub async fn read(stream: &Stream, len: usize) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; len.clamp(1, 1 << 20)];
    loop {
        let mut guard = stream
            .readable()
            .await
            .map_err(|e| AgentError::io("poll", e))?;
        match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Ok(Ok(0)) => return Ok(None),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            // A pty master reads EIO once the last slave fd closed: that is its end.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(None),
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(AgentError::io("reading a stream", e)),
            Err(_would_block) => {}
        }
    }
}

/// Writes all of `data`.
pub async fn write_all(stream: &Stream, data: &[u8]) -> Result<usize> {
    let mut done = 0;
    while done < data.len() {
        let mut guard = stream
            .writable()
            .await
            .map_err(|e| AgentError::io("poll", e))?;
        match guard.try_io(|f| f.get_ref().write(&data[done..])) {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) if e.kind() == ErrorKind::BrokenPipe => {
                return Err(AgentError::FailedPrecondition(
                    "the process closed its stdin".into(),
                ))
            }
            Ok(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(AgentError::io("writing stdin", e)),
            Err(_would_block) => {}
        }
    }
    Ok(done)
}

/// Sets the window size of a pty.
pub fn resize(pty: &Stream, rows: u16, cols: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which lives across the call;
    // the fd is an open pty master owned by `pty`.
    let rc = unsafe { libc::ioctl(pty.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(AgentError::io(
            "TIOCSWINSZ",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A started process.
pub struct Process {
    /// Its pid in the agent's pid namespace.
    pub pid: Pid,
    /// Its streams.
    pub stdio: Stdio,
    /// Its exit, once reaped.
    pub exit: ExitWatch,
}

impl Process {
    /// The exit status if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        let result = rx.wait_for(Option::is_some).await.map(|s| *s);
        match result {
            Ok(Some(status)) => status,
            // The reaper never drops a registered sender without sending; be total anyway.
            _ => ExitStatus {
                status: 255,
                signal: 0,
                at: std::time::SystemTime::now(),
            },
        }
    }
}
