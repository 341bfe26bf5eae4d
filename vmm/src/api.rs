//! The control socket: a small JSON-lines API over a Unix stream socket. Each request is one
//! line `{"op": "status" | "pause" | "resume" | "shutdown"}`; each answer is one line
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
//!
//! Who may use it: the socket file is mode 0600 whatever the umask ([`bind_private`]), and a
//! client whose SO_PEERCRED uid is neither the VMM's effective uid nor root is closed
//! unanswered, with a (rate-limited) warning. Each admitted client is served on a short-lived
//! thread of its own, at most [`MAX_API_CLIENTS`] at once, with reads and writes that time out
//! after [`API_IO_TIMEOUT`]: a silent client holds neither the API nor its thread for long.
//! Accept errors (EMFILE, ENFILE, ...) are logged rate-limited and retried after
//! [`ACCEPT_BACKOFF`]; the API keeps serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::seccomp::Thread;
use crate::uds::{bind_private, check_peer, LogLimit, ACCEPT_BACKOFF};
use crate::vm::{error_chain, MachineHandle};

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// Read and write timeout of every control connection: a client that sends nothing (or
/// reads nothing) for this long is closed.
pub const API_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Control connections served at once; more are answered `too many clients` and closed.
pub const MAX_API_CLIENTS: usize = 16;

static REFUSED_PEERS: LogLimit = LogLimit::new();
static ACCEPT_FAILURES: LogLimit = LogLimit::new();

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
}

/// The control socket; the socket file is removed when this is dropped.
pub struct ApiServer {
    path: PathBuf,
    accept_errors: Arc<AtomicU64>,
}

impl ApiServer {
    /// Binds the socket at `path` (mode 0600) and serves `handle` on a thread of its own.
    pub fn start(path: &Path, handle: MachineHandle) -> std::io::Result<ApiServer> {
        Self::start_with(path, handle, API_IO_TIMEOUT)
    }

    /// [`ApiServer::start`] with another I/O timeout (tests).
    fn start_with(
        path: &Path,
        handle: MachineHandle,
        timeout: Duration,
    ) -> std::io::Result<ApiServer> {
        Self::bind(path)?.serve_with(handle, timeout)
    }

    /// Binds the socket at `path` (mode 0600) without serving it yet: the VMM binds before
    /// it enters its jail and serves from a thread started inside.
    pub fn bind(path: &Path) -> std::io::Result<ApiListener> {
        let listener = bind_private(path).map_err(|e| {
            let e = std::io::Error::from(e);
            std::io::Error::new(e.kind(), format!("control socket {e}"))
        })?;
        Ok(ApiListener {
            listener: Some(listener),
            path: path.to_path_buf(),
        })
    }

    /// Failed accepts so far (each followed by [`ACCEPT_BACKOFF`]).
    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }
}

/// A bound control socket not served yet ([`ApiServer::bind`]); dropped unserved, it
/// removes its socket file.
pub struct ApiListener {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Drop for ApiListener {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ApiListener {
    /// Serves `handle` on a thread of its own.
    pub fn serve(self, handle: MachineHandle) -> std::io::Result<ApiServer> {
        self.serve_with(handle, API_IO_TIMEOUT)
    }

    fn serve_with(
        mut self,
        handle: MachineHandle,
        timeout: Duration,
    ) -> std::io::Result<ApiServer> {
        let listener = self.listener.take().expect("an unserved listener");
        // From here the server owns the socket file (its Drop removes it).
        let server = ApiServer {
            path: self.path.clone(),
            accept_errors: Arc::new(AtomicU64::new(0)),
        };
        let errors = server.accept_errors.clone();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                // The client threads it starts inherit its filter.
                if let Err(e) = handle.confine(Thread::Api) {
                    handle.fail(format!("control API: {}", error_chain(&e)));
                    return;
                }
                accept_loop(&listener, &handle, timeout, &errors)
            })?;
        Ok(server)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(
    listener: &UnixListener,
    handle: &MachineHandle,
    timeout: Duration,
    errors: &AtomicU64,
) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept() {
            Ok((stream, _)) => admit(stream, handle, timeout, &active),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and kin: the connection waits in the backlog; retrying at once
                // would spin. Other errors (ECONNABORTED, ...) lose nothing by the pause.
                errors.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = ACCEPT_FAILURES.hit() {
                    log::warn!(
                        "control socket: accept failed ({n} so far): {e}; retrying in {ACCEPT_BACKOFF:?}"
                    );
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Releases a client slot when the client's thread ends (or was never started).
struct ClientSlot(Arc<AtomicUsize>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Checks a new client's credentials and serves it on a thread of its own.
fn admit(stream: UnixStream, handle: &MachineHandle, timeout: Duration, active: &Arc<AtomicUsize>) {
    if let Err(e) = check_peer(&stream) {
        if let Some(n) = REFUSED_PEERS.hit() {
            log::warn!("control socket: closed a client ({n} so far): {e}");
        }
        return;
    }
    if let Err(e) = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
    {
        log::warn!("control socket: cannot set a timeout: {e}");
        return;
    }
    if active.fetch_add(1, Ordering::SeqCst) >= MAX_API_CLIENTS {
        active.fetch_sub(1, Ordering::SeqCst);
        log::warn!("control socket: {MAX_API_CLIENTS} clients already; closed another");
        let _ = writeln!(
            &stream,
            "{}",
            json!({"ok": false, "error": "too many clients"})
        );
        return;
    }
    let slot = ClientSlot(active.clone());
    let handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("api-client".into())
        .spawn(move || {
            crate::seccomp::inherited(Thread::Api);
            let _slot = slot;
            serve(stream, &handle);
        });
    if let Err(e) = spawned {
        log::warn!("control socket: cannot start a client thread: {e}");
    }
}

/// Answers one request line.
pub fn answer(line: &str, handle: &MachineHandle) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    match req.op.as_str() {
        "status" => json!({
            "ok": true,
            "state": if handle.is_paused() { "paused" } else { "running" },
            "vcpus": handle.vcpus,
            "memory_mib": handle.memory_mib,
            "uptime_ms": handle.uptime_ms() as u64,
            "overhead_rss_kib": handle.overhead_rss_kib(),
            "devices": handle.devices(),
        }),
        "pause" => {
            handle.pause();
            json!({"ok": true, "state": "paused"})
        }
        "resume" => {
            handle.resume();
            json!({"ok": true, "state": "running"})
        }
        "shutdown" => {
            handle.shutdown();
            json!({"ok": true, "state": "stopping"})
        }
        other => json!({
            "ok": false,
            "error": format!("unknown op `{other}` (status, pause, resume, shutdown)")
        }),
    }
}

fn serve(stream: UnixStream, handle: &MachineHandle) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("control socket: {e}");
            return;
        }
    };
    let mut reader = BufReader::new(stream).take(u64::MAX);
    loop {
        let mut line = String::new();
        reader.set_limit(MAX_REQUEST as u64 + 1);
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(n) if n > MAX_REQUEST => {
                let _ = writeln!(
                    writer,
                    "{}",
                    json!({"ok": false, "error": "request too long"})
                );
                return;
            }
            Ok(_) => {
                let reply = answer(line.trim(), handle);
                if writeln!(writer, "{reply}").is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                log::debug!("control socket: a client was silent past the timeout; closed");
                return;
            }
            Err(e) => {
                let _ = writeln!(writer, "{}", json!({"ok": false, "error": format!("{e}")}));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uds::testutil::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    fn status_request(s: &mut UnixStream) -> std::io::Result<String> {
        writeln!(s, r#"{{"op": "status"}}"#)?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    }

    #[test]
    fn the_socket_is_0600_even_with_umask_0() {
        let dir = OpenTempDir::new("api");
        let path = dir.0.join("api.sock");
        // In a child: the umask is process-wide (fuse-backend-rs sets it to 0).
        let mode =
            bind_mode_under_umask_0(&path, || ApiServer::start(&path, MachineHandle::detached()));
        assert_eq!(mode, Some(0), "not mode 0600");
    }

    #[test]
    fn other_users_are_closed_unanswered_and_root_is_answered() {
        let dir = OpenTempDir::new("api");
        let path = dir.0.join("api.sock");
        let handle = MachineHandle::detached();
        let _api = ApiServer::start(&path, handle.clone()).unwrap();
        let pause = b"{\"op\": \"pause\"}\n";
        let wait = Duration::from_secs(3);
        // Mode 0600 keeps other users from connecting at all.
        assert_eq!(client_as(65534, &path, pause, wait), Some(CONNECT_FAILED));
        // Were the socket world-writable (as it was under fuse-backend-rs's umask 0), the
        // peer check still closes the connection without acting on the request.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(client_as(65534, &path, pause, wait), Some(CLOSED));
        assert!(!handle.is_paused(), "another user paused the VM");
        let shutdown = b"{\"op\": \"shutdown\"}\n";
        assert_eq!(client_as(65534, &path, shutdown, wait), Some(CLOSED));
        assert_eq!(handle.exit_reason(), None, "another user stopped the VM");
        // Root (and the VMM's own user, here the same) is served.
        assert_eq!(client_as(0, &path, pause, wait), Some(ANSWERED));
        assert!(handle.is_paused());
    }

    #[test]
    fn a_silent_client_does_not_block_the_next_and_is_closed_after_the_timeout() {
        let dir = OpenTempDir::new("api");
        let path = dir.0.join("api.sock");
        let timeout = Duration::from_millis(600);
        let _api = ApiServer::start_with(&path, MachineHandle::detached(), timeout).unwrap();
        let started = Instant::now();
        let mut silent = UnixStream::connect(&path).unwrap();
        let mut next = UnixStream::connect(&path).unwrap();
        next.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let answer = status_request(&mut next).expect("the second client is answered");
        assert!(answer.contains(r#""ok":true"#), "{answer}");
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(silent.read(&mut buf).unwrap(), 0, "closed, unanswered");
        let closed_after = started.elapsed();
        assert!(
            closed_after >= timeout && closed_after < timeout * 4,
            "{closed_after:?}"
        );
    }

    #[test]
    fn clients_beyond_the_bound_are_turned_away_until_one_leaves() {
        let dir = OpenTempDir::new("api");
        let path = dir.0.join("api.sock");
        let _api = ApiServer::start(&path, MachineHandle::detached()).unwrap();
        let mut silent: Vec<UnixStream> = (0..MAX_API_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut extra = UnixStream::connect(&path).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut line = String::new();
        BufReader::new(&mut extra).read_line(&mut line).unwrap();
        assert!(line.contains("too many clients"), "{line}");
        drop(silent.pop());
        // The slot frees once the server sees the close.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut c = UnixStream::connect(&path).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            // Turned away: the close may reset the connection before our request is read.
            let answer = status_request(&mut c).unwrap_or_else(|e| e.to_string());
            if answer.contains(r#""ok":true"#) {
                break;
            }
            assert!(Instant::now() < deadline, "no slot came free: {answer}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn accept_survives_running_out_of_descriptors_without_spinning() {
        let dir = OpenTempDir::new("api");
        let path = dir.0.join("api.sock");
        // In a child: it lowers its own RLIMIT_NOFILE.
        let code = in_child(Duration::from_secs(20), || {
            let Ok(api) = ApiServer::start(&path, MachineHandle::detached()) else {
                return 30;
            };
            // The client's socket exists before the descriptors run out.
            let Some(starved) = Starved::new() else {
                return 31;
            };
            if connect_fd(&starved.client, &path).is_err() {
                return 32;
            }
            let starved_for = Duration::from_millis(800);
            std::thread::sleep(starved_for);
            let errors = api.accept_errors();
            // One try per back-off, not a spin.
            let bound = (starved_for.as_millis() / ACCEPT_BACKOFF.as_millis()) as u64 + 2;
            if errors == 0 || errors > bound {
                return 33;
            }
            // Once descriptors are back the API serves again. The client that connected while
            // they were out is not asked: in most runs on this host it was closed rather than
            // served (one accept error, then a broken pipe; the cause is not pinned down), so
            // a new client is.
            drop(starved.relieve());
            let Ok(mut client) = UnixStream::connect(&path) else {
                return 34;
            };
            let _ = client.set_read_timeout(Some(Duration::from_secs(3)));
            match status_request(&mut client) {
                Ok(a) if a.contains(r#""ok":true"#) => 0,
                _ => 35,
            }
        });
        assert_eq!(code, Some(0));
    }
}
