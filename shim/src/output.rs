//! Where a process's stdout and stderr go, as containerd names it in CreateTask/Exec:
//! containerd's fifos (a path or `fifo://path`), a file (`file:///path`: both streams
//! appended to it) or a logging binary (`binary:///path?key=value`). Parsing those URIs,
//! opening the destinations before the process starts, and stopping the logger afterwards.
//!
//! The logging binary follows containerd's contract (runtime/v2/logging and the runc shim's
//! `NewBinaryIO`): it runs with the process's stdout as a pipe on fd 3, its stderr on fd 4 and
//! a ready pipe on fd 5 that it closes once ready; its environment is only `CONTAINER_ID` (the
//! exec id for an exec) and `CONTAINER_NAMESPACE`; each query pair becomes the arguments
//! `key value`. Once the output ends the pipes close, and at Delete the logger gets a moment to
//! finish, then SIGTERM, then SIGKILL; it is always reaped.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use crate::error::{Result, ShimError};

/// How long a logger may take to close its ready pipe.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After the ready signal, how long the shim looks for a logger that exited instead of
/// running (closing fd 5 by exiting looks the same as closing it when ready).
const EXIT_GRACE: Duration = Duration::from_millis(100);
/// At Delete: how long a logger that has seen the end of its pipes may take to exit by
/// itself, then to exit after SIGTERM (containerd gives 12 s in all), then after SIGKILL.
const STOP_STEPS: [(i32, Duration); 3] = [
    (0, Duration::from_secs(2)),
    (libc::SIGTERM, Duration::from_secs(10)),
    (libc::SIGKILL, Duration::from_secs(5)),
];

/// Where stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// containerd's fifos (either may be absent).
    Fifos {
        /// The stdout fifo.
        stdout: Option<PathBuf>,
        /// The stderr fifo.
        stderr: Option<PathBuf>,
    },
    /// Both streams appended to this file (created with its directory if missing).
    File(PathBuf),
    /// A logging binary and its arguments.
    Binary {
        /// Absolute path of the binary.
        path: PathBuf,
        /// `key value` for each query pair.
        args: Vec<OsString>,
    },
}

/// A fifo named by a bare path or `fifo://path`.
pub fn fifo_path(p: &str) -> Option<PathBuf> {
    let p = p.strip_prefix("fifo://").unwrap_or(p);
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn bad_uri(uri: &str, why: &str) -> ShimError {
    ShimError::InvalidArgument(format!("stdio URI {uri:?}: {why}"))
}

/// Decodes `%XX` escapes, and `+` as a space in a query (as Go's `net/url`, which containerd
/// uses). Written here because the `url` crate would bring IDNA host parsing that these
/// host-less URIs never use.
fn unescape(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

impl Destination {
    /// The destination containerd named: the scheme of `stdout` decides, as in containerd's
    /// runc shim (a log URI sends stderr to the same place, whatever `stderr` says).
    pub fn parse(stdout: &str, stderr: &str) -> Result<Self> {
        let Some((scheme, rest)) = stdout.split_once("://") else {
            return Ok(Self::Fifos {
                stdout: fifo_path(stdout),
                stderr: fifo_path(stderr),
            });
        };
        if scheme == "fifo" {
            return Ok(Self::Fifos {
                stdout: fifo_path(stdout),
                stderr: fifo_path(stderr),
            });
        }
        if scheme != "file" && scheme != "binary" {
            return Err(bad_uri(
                stdout,
                &format!(
                    "unknown scheme {scheme:?} (a fifo path, file:///path or binary:///path?key=value)"
                ),
            ));
        }
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        if !path.starts_with('/') {
            return Err(bad_uri(
                stdout,
                &format!("{scheme}:// needs an absolute path and no host ({scheme}:///path)"),
            ));
        }
        let path = unescape(path, false)
            .ok_or_else(|| bad_uri(stdout, "a malformed %-escape in the path"))?;
        let path = PathBuf::from(OsString::from_vec(path));
        if scheme == "file" {
            return Ok(Self::File(path));
        }
        // Each key once, with its first value, in the order given.
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut args = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = unescape(k, true);
            let v = unescape(v, true);
            let (Some(k), Some(v)) = (k, v) else {
                return Err(bad_uri(stdout, "a malformed %-escape in the query"));
            };
            if !seen.contains(&k) {
                seen.push(k.clone());
                args.push(OsString::from_vec(k));
                args.push(OsString::from_vec(v));
            }
        }
        Ok(Self::Binary { path, args })
    }
}

/// An open output stream of a process.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// The opened destination of one process's stdout and stderr, and its logger if any.
pub struct Outputs {
    writers: Mutex<(Option<Writer>, Option<Writer>)>,
    logger: Option<Logger>,
}

fn open_fifo(path: &Path) -> Result<Writer> {
    // Opened read-write: never blocks on a missing reader and never fails with ENXIO.
    let w = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| ShimError::io(format!("opening the fifo {}", path.display()), e))?;
    Ok(Box::new(w))
}

fn open_file(path: &Path) -> Result<Writer> {
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| ShimError::io(format!("opening the log file {}", path.display()), e))?;
    Ok(Box::new(tokio::fs::File::from_std(f)))
}

fn pipe_sender(fd: OwnedFd) -> Result<Writer> {
    let w = pipe::Sender::from_owned_fd(fd)
        .map_err(|e| ShimError::io("registering a logger pipe", e))?;
    Ok(Box::new(w))
}

impl Outputs {
    /// Nothing to write to (a process with neither stdout nor stderr).
    #[cfg(test)]
    pub fn none() -> Self {
        Self {
            writers: Mutex::new((None, None)),
            logger: None,
        }
    }

    /// Opens `dest` for the process `id` (the container id, or the exec id) of containerd
    /// namespace `namespace`; a terminal process has no stderr. A logger is started and
    /// ready when this returns; on error nothing is left running.
    pub async fn open(
        dest: &Destination,
        terminal: bool,
        id: &str,
        namespace: &str,
    ) -> Result<Self> {
        let (stdout, stderr, logger) = match dest {
            Destination::Fifos { stdout, stderr } => {
                let out = stdout.as_deref().map(open_fifo).transpose()?;
                let err = match stderr {
                    Some(p) if !terminal => Some(open_fifo(p)?),
                    _ => None,
                };
                (out, err, None)
            }
            Destination::File(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ShimError::io(format!("creating the log directory {}", dir.display()), e)
                    })?;
                }
                let out = open_file(path)?;
                let err = if terminal {
                    None
                } else {
                    Some(open_file(path)?)
                };
                (Some(out), err, None)
            }
            Destination::Binary { path, args } => {
                let (logger, out, err) = Logger::start(path, args, id, namespace).await?;
                let err = if terminal {
                    None
                } else {
                    Some(pipe_sender(err)?)
                };
                (Some(pipe_sender(out)?), err, Some(logger))
            }
        };
        Ok(Self {
            writers: Mutex::new((stdout, stderr)),
            logger,
        })
    }

    /// Hands the stdout and stderr writers to the pumps (once; later calls get none).
    pub fn take(&self) -> (Option<Writer>, Option<Writer>) {
        std::mem::take(&mut *self.writers.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Closes what was not handed out and stops the logger (reaped when this returns).
    pub async fn close(&self) {
        drop(self.take());
        if let Some(l) = &self.logger {
            l.stop().await;
        }
    }
}

/// A running logging binary, owned by a task that reaps it.
struct Logger {
    binary: PathBuf,
    pid: u32,
    signals: mpsc::UnboundedSender<i32>,
    exit: watch::Receiver<Option<i32>>,
}

/// Puts `fds` at 3, 4, 5 in a child between fork and exec: first above every target (so no
/// dup2 overwrites a source not yet moved), close-on-exec, then dup2 to the target, which
/// clears close-on-exec.
fn place_fds(fds: &[RawFd; 3]) -> std::io::Result<()> {
    let mut high = [0; 3];
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor the parent keeps open across the
        // fork; async-signal-safe, as required between fork and exec.
        *h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10) };
        if *h < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, h) in (3..).zip(high) {
        // SAFETY: dup2 onto a descriptor number of the child's own; async-signal-safe.
        if unsafe { libc::dup2(h, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn pipe_pair(what: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io(format!("creating the {what} pipe"), e.into()))
}

fn describe(code: i32) -> String {
    if code > 128 {
        format!("was killed by signal {}", code - 128)
    } else {
        format!("exited with status {code}")
    }
}

/// Waits for a ready signal: one byte or end of file on the ready pipe.
async fn ready(mut r: impl AsyncRead + Unpin) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    r.read(&mut b).await.map(drop)
}

impl Logger {
    /// Starts `binary` and waits until it is ready; returns it and the write ends of its
    /// stdout and stderr pipes.
    async fn start(
        binary: &Path,
        args: &[OsString],
        id: &str,
        namespace: &str,
    ) -> Result<(Self, OwnedFd, OwnedFd)> {
        let (out_r, out_w) = pipe_pair("stdout")?;
        let (err_r, err_w) = pipe_pair("stderr")?;
        let (ready_r, ready_w) = pipe_pair("ready")?;
        let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("CONTAINER_ID", id)
            .env("CONTAINER_NAMESPACE", namespace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        // SAFETY: the closure calls only async-signal-safe functions (fcntl, dup2) on
        // descriptors that stay open in the parent until `spawn` returns.
        unsafe { cmd.pre_exec(move || place_fds(&fds)) };
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                ShimError::InvalidArgument(format!(
                    "the logging binary {} cannot be run: {e}",
                    binary.display()
                ))
            }
            _ => ShimError::io(
                format!("starting the logging binary {}", binary.display()),
                e,
            ),
        })?;
        // The child has its copies; ours of its ends must go, or end of file never comes.
        drop((out_r, err_r, ready_w));
        let pid = child.id().unwrap_or_default();
        let logger = Self::supervise(binary, pid, child);
        let ready_r = pipe::Receiver::from_owned_fd(ready_r)
            .map_err(|e| ShimError::io("registering the ready pipe", e))?;

        let mut exit = logger.exit.clone();
        let signalled = tokio::time::timeout(READY_TIMEOUT, async {
            tokio::select! {
                r = ready(ready_r) => r.is_ok(),
                _ = exit.wait_for(Option::is_some) => true,
            }
        })
        .await;
        let exited = tokio::time::timeout(EXIT_GRACE, exit.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|c| *c));
        let failure = match (signalled, exited) {
            (_, Some(code)) => Some(ShimError::FailedPrecondition(format!(
                "the logging binary {} {} instead of running",
                binary.display(),
                describe(code)
            ))),
            (Err(_), None) => Some(ShimError::FailedPrecondition(format!(
                "the logging binary {} did not close its ready pipe (fd 5) within {} s",
                binary.display(),
                READY_TIMEOUT.as_secs()
            ))),
            (Ok(false), None) => Some(ShimError::Internal(format!(
                "reading the ready pipe of the logging binary {}",
                binary.display()
            ))),
            (Ok(true), None) => None,
        };
        if let Some(e) = failure {
            logger.stop().await;
            return Err(e);
        }
        log::info!("logging binary {} (pid {pid}) ready", binary.display());
        Ok((logger, out_w, err_w))
    }

    /// A task owns `child`: it reaps it, recording the status, and delivers signals only
    /// while it has not reaped it (so a signal never reaches a recycled pid).
    fn supervise(binary: &Path, pid: u32, mut child: Child) -> Self {
        let (tx, exit) = watch::channel(None);
        let (signals, mut rx) = mpsc::unbounded_channel::<i32>();
        let name = binary.display().to_string();
        tokio::spawn(async move {
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    Some(sig) = rx.recv() => {
                        if let Some(pid) = child.id() {
                            // SAFETY: kill(2) on our child, which `child.id()` being Some
                            // shows unreaped (only this task waits for it).
                            unsafe { libc::kill(pid as libc::pid_t, sig) };
                        }
                    }
                }
            };
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                Err(e) => {
                    log::error!("waiting for the logging binary {name}: {e}");
                    255
                }
            };
            log::info!("logging binary {name} (pid {pid}) {}", describe(code));
            let _ = tx.send(Some(code));
        });
        Self {
            binary: binary.to_path_buf(),
            pid,
            signals,
            exit,
        }
    }

    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Lets the logger end by itself, then SIGTERM, then SIGKILL; returns once reaped.
    async fn stop(&self) {
        let mut rx = self.exit.clone();
        for (sig, wait) in STOP_STEPS {
            if self.exited() {
                return;
            }
            if sig != 0 {
                log::warn!(
                    "stopping the logging binary {} (pid {}) with signal {sig}",
                    self.binary.display(),
                    self.pid
                );
                let _ = self.signals.send(sig);
            }
            if tokio::time::timeout(wait, rx.wait_for(Option::is_some))
                .await
                .is_ok()
            {
                return;
            }
        }
        log::error!(
            "the logging binary {} (pid {}) did not die",
            self.binary.display(),
            self.pid
        );
    }
}

impl Drop for Logger {
    fn drop(&mut self) {
        // A logger whose process record goes away unstopped (a failed create) is killed; its
        // task still reaps it.
        if !self.exited() {
            let _ = self.signals.send(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn fifos_by_path_or_fifo_uri() {
        assert_eq!(
            Destination::parse("/run/a", "fifo:///run/b").unwrap(),
            Destination::Fifos {
                stdout: Some("/run/a".into()),
                stderr: Some("/run/b".into())
            }
        );
        assert_eq!(
            Destination::parse("", "").unwrap(),
            Destination::Fifos {
                stdout: None,
                stderr: None
            }
        );
    }

    #[test]
    fn file_and_binary_uris() {
        assert_eq!(
            Destination::parse("file:///var/log/a%20b.log", "file:///var/log/a%20b.log").unwrap(),
            Destination::File("/var/log/a b.log".into())
        );
        assert_eq!(
            Destination::parse("binary:///usr/bin/logger?tag=x+y&dir=%2Ftmp&tag=z&flag", "")
                .unwrap(),
            Destination::Binary {
                path: "/usr/bin/logger".into(),
                args: ["tag", "x y", "dir", "/tmp", "flag", ""]
                    .into_iter()
                    .map(OsString::from)
                    .collect(),
            }
        );
    }

    #[test]
    fn bad_uris_are_named() {
        for (uri, says) in [
            ("syslog:///x", "unknown scheme \"syslog\""),
            ("binary://logger", "absolute path"),
            ("file://host/x", "absolute path"),
            ("binary:///a%zz", "%-escape"),
            ("binary:///a?k=%4", "%-escape"),
        ] {
            let e = Destination::parse(uri, "").unwrap_err();
            assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{uri}");
            assert!(e.to_string().contains(says), "{uri}: {e}");
            assert!(e.to_string().contains(uri), "{uri}: {e}");
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("carapace-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("logger");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    }

    async fn write_both(o: &Outputs, out: &[u8], err: &[u8]) {
        let (w1, w2) = o.take();
        let (mut w1, mut w2) = (w1.unwrap(), w2.unwrap());
        w1.write_all(out).await.unwrap();
        w1.flush().await.unwrap();
        w2.write_all(err).await.unwrap();
        w2.flush().await.unwrap();
    }

    #[tokio::test]
    async fn a_file_gets_both_streams() {
        let dir = temp_dir("file");
        let path = dir.join("sub/c.log");
        let o = Outputs::open(&Destination::File(path.clone()), false, "c", "ns")
            .await
            .unwrap();
        write_both(&o, b"out\n", b"err\n").await;
        o.close().await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "out\nerr\n");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_logging_binary_gets_both_streams_its_env_and_args() {
        let dir = temp_dir("binary");
        let logger = script(
            &dir,
            &format!(
                "d={}\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE $# $1 $2 ${{HOME:-nohome}}\" > $d/env\nexec 5>&-\n/bin/cat <&3 > $d/out &\n/bin/cat <&4 > $d/err\nwait",
                dir.display()
            ),
        );
        let dest = Destination::Binary {
            path: logger,
            args: vec!["--tag".into(), "a b".into()],
        };
        let o = Outputs::open(&dest, false, "c1", "k8s.io").await.unwrap();
        let pid = o.logger.as_ref().unwrap().pid;
        write_both(&o, b"to-out\n", b"to-err\n").await;
        o.close().await;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("env"), "c1 k8s.io 2 --tag a b nohome\n");
        assert_eq!(read("out"), "to-out\n");
        assert_eq!(read("err"), "to-err\n");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_logger_ignoring_the_end_of_its_pipes_is_terminated() {
        let dir = temp_dir("stubborn");
        let logger = script(&dir, "exec 5>&-\nwhile :; do /bin/sleep 1; done");
        let dest = Destination::Binary {
            path: logger,
            args: vec![],
        };
        let o = Outputs::open(&dest, true, "c1", "ns").await.unwrap();
        let pid = o.logger.as_ref().unwrap().pid;
        o.close().await;
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn missing_or_exiting_loggers_are_refused() {
        let dest = Destination::Binary {
            path: "/nonexistent/logger".into(),
            args: vec![],
        };
        let e = Outputs::open(&dest, false, "c", "ns").await.err().unwrap();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("/nonexistent/logger"), "{e}");

        let dir = temp_dir("exits");
        let logger = script(&dir, "exit 3");
        let dest = Destination::Binary {
            path: logger,
            args: vec![],
        };
        let e = Outputs::open(&dest, false, "c", "ns").await.err().unwrap();
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
        assert!(e.to_string().contains("exited with status 3"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
