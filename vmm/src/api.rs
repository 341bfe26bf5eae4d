//! The control socket: a small JSON-lines API over a Unix stream socket. Each request is one
//! line `{"op": "status" | "pause" | "resume" | "shutdown"}`; each answer is one line
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::vm::MachineHandle;

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
}

/// The control socket; the socket file is removed when this is dropped.
pub struct ApiServer {
    path: PathBuf,
}

impl ApiServer {
    /// Binds the socket at `path` and serves `handle` on a thread of its own.
    pub fn start(path: &Path, handle: MachineHandle) -> std::io::Result<ApiServer> {
        let listener = UnixListener::bind(path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
        })?;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(s) => serve(s, &handle),
                        Err(e) => log::warn!("control socket: accept: {e}"),
                    }
                }
            })?;
        Ok(ApiServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
            Err(e) => {
                let _ = writeln!(writer, "{}", json!({"ok": false, "error": format!("{e}")}));
                return;
            }
        }
    }
}
