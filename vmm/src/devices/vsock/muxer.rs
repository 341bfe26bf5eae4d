//! The hybrid Unix-socket backend (Firecracker's scheme): the listening socket host
//! processes connect to (`CONNECT <port>\n` → `OK <host port>\n`), the `<path>_<port>`
//! sockets guest connections reach, the connection table, and the queue of packets waiting
//! for guest rx buffers.
//!
//! The backend watches its sockets with an epoll set of its own, edge-triggered, whose fd is
//! the only one the device registers with the event loop: connections come and go without
//! event-loop bookkeeping, a reset drops them by closing them, and no socket the device
//! cannot serve right now (no credit, no rx buffers, inactive device) keeps the loop busy.
//!
//! Host access: the listening socket is mode 0600 whatever the umask, and a host process
//! whose SO_PEERCRED uid is neither the VMM's nor root is closed before it can send its
//! `CONNECT` line (see `crate::uds`). The VMM binds no other socket: the `<path>_<port>`
//! sockets are the host's (the shim's), which the muxer only connects to. When accept fails
//! for want of descriptors (EMFILE, ENFILE, ...), the listener is retried by a timer after
//! `ACCEPT_BACKOFF` instead of at once, so the event loop neither spins nor forgets the
//! connections waiting in the backlog (the listener is edge-triggered).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{read_connect_line, Connection, Verdict};
use super::packet::{Header, HOST_CID, OP_REQUEST, OP_RST};
use super::VsockError;
use crate::uds::{bind_private, check_peer, LogLimit, ACCEPT_BACKOFF};

/// Epoll data of the listening socket (streams use their fd number).
const LISTENER_TOKEN: u64 = u64::MAX;
/// Epoll data of the timer that retries accepting after a failure.
const RETRY_TOKEN: u64 = u64::MAX - 1;

static REFUSED_PEERS: LogLimit = LogLimit::new();
static ACCEPT_FAILURES: LogLimit = LogLimit::new();

/// First host port handed to host-initiated connections (Firecracker's choice: far from the
/// ports host services listen on).
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// RSTs answering packets for unknown connections that may wait for rx buffers; more are
/// dropped, so a guest that sends garbage and never reads cannot grow the queue.
const MAX_UNKNOWN_RSTS: usize = 1024;

/// Epoll events per wait.
const EVENT_BATCH: usize = 64;

/// A connection's key: (host port, guest port).
pub(crate) type Key = (u32, u32);

/// A packet waiting for a guest rx buffer.
enum RxItem {
    /// The RST of a connection that was just reset, ready as is.
    Control(Header),
    /// An RST answering a guest packet for no connection (counted in `unknown_rsts`).
    Reply(Header),
    /// Ask the connection for its next packet.
    Conn(Key),
}

/// A host socket that connected but has not sent its complete `CONNECT` line yet.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The backend: sockets and connections of one vsock device.
pub(crate) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    /// Armed when accept failed; when it fires, accepting is retried.
    retry: TimerFd,
    /// The listener is in the epoll set (only while the device is active).
    listening: bool,
    pending_host: HashMap<RawFd, PendingHost>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    rxq: VecDeque<RxItem>,
    unknown_rsts: usize,
    next_local_port: u32,
}

impl Muxer {
    /// Binds the listening socket at `uds_path` (mode 0600), which must not exist.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> io::Result<Self> {
        if uds_path.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "the vsock socket path {} already exists (a stale socket must be removed first)",
                    uds_path.display()
                ),
            ));
        }
        let listener = bind_private(&uds_path)?;
        listener.set_nonblocking(true)?;
        let retry = TimerFd::new()?;
        // SAFETY: fcntl on the timer's own descriptor; reading it then never blocks.
        if unsafe { libc::fcntl(retry.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            retry.as_raw_fd(),
            EpollEvent::new(EventSet::IN, RETRY_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path,
            listener,
            epoll,
            retry,
            listening: false,
            pending_host: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rxq: VecDeque::new(),
            unknown_rsts: 0,
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The epoll fd to watch for readability: call [`Muxer::process_events`] when it is.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The socket path host processes connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Starts accepting host connections (the device was activated). Connections that
    /// queued up meanwhile are accepted at once: adding a ready fd raises its edge.
    pub fn start(&mut self) -> io::Result<()> {
        if !self.listening {
            self.watch(self.listener.as_raw_fd(), LISTENER_TOKEN)?;
            self.listening = true;
        }
        Ok(())
    }

    /// Closes every connection and stops accepting (the device was reset); host processes
    /// see their sockets closed.
    pub fn reset(&mut self) {
        if self.listening {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                self.listener.as_raw_fd(),
                EpollEvent::default(),
            );
            self.listening = false;
        }
        if let Err(e) = self.retry.clear() {
            log::warn!("vsock: cannot disarm the accept retry timer: {e}");
        }
        // Closing the sockets takes them out of the epoll set.
        self.pending_host.clear();
        self.conns.clear();
        self.by_fd.clear();
        self.rxq.clear();
        self.unknown_rsts = 0;
    }

    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let events =
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Number of live connections (tests).
    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Number of host sockets still to send their CONNECT line (tests).
    #[cfg(test)]
    pub fn pending_host_count(&self) -> usize {
        self.pending_host.len()
    }

    /// The connection with `key` (tests).
    #[cfg(test)]
    pub fn connection(&self, key: Key) -> Option<&Connection> {
        self.conns.get(&key)
    }

    /// Handles every ready socket. Returns without blocking.
    pub fn process_events(&mut self) {
        /// Batches per call: a socket that keeps raising edges cannot hold the event loop;
        /// what is left keeps the epoll fd readable and brings the loop back.
        const MAX_BATCHES: usize = 16;
        let mut events = [EpollEvent::default(); EVENT_BATCH];
        for _ in 0..MAX_BATCHES {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("vsock: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let set = EventSet::from_bits_truncate(ev.events());
                match ev.data() {
                    LISTENER_TOKEN => self.accept(),
                    RETRY_TOKEN => {
                        // Non-blocking: a stale event reads EAGAIN.
                        let _ = self.retry.wait();
                        if self.listening {
                            self.accept();
                        }
                    }
                    token => self.stream_event(token as RawFd, set),
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    // EMFILE and kin: the connection stays in the backlog and no new edge
                    // will come for it; try again after the back-off.
                    if let Some(n) = ACCEPT_FAILURES.hit() {
                        log::warn!(
                            "vsock: accepting a host connection failed ({n} so far): {e}; retrying in {ACCEPT_BACKOFF:?}"
                        );
                    }
                    if let Err(e) = self.retry.reset(ACCEPT_BACKOFF, None) {
                        log::error!("vsock: cannot arm the accept retry timer: {e}");
                    }
                    return;
                }
            };
            if let Err(e) = check_peer(&stream) {
                if let Some(n) = REFUSED_PEERS.hit() {
                    log::warn!("vsock: closed a host connection ({n} so far): {e}");
                }
                continue;
            }
            let fd = stream.as_raw_fd();
            if let Err(e) = stream
                .set_nonblocking(true)
                .and_then(|()| self.watch(fd, fd as u64))
            {
                log::warn!("vsock: cannot watch a host connection: {e}");
                continue;
            }
            self.pending_host.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::new(),
                },
            );
            // The CONNECT line may be there already.
            self.host_connect_line(fd);
        }
    }

    fn stream_event(&mut self, fd: RawFd, set: EventSet) {
        if self.pending_host.contains_key(&fd) {
            self.host_connect_line(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.on_host_event(set);
                self.apply(key, verdict);
            }
        }
        // Otherwise a stale event of a socket closed in this batch.
    }

    fn host_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending_host.get_mut(&fd) else {
            return;
        };
        let peer_port = match read_connect_line(&mut p.stream, &mut p.line) {
            Ok(None) => return,
            Ok(Some(port)) => port,
            Err(e) => {
                log::debug!("vsock: dropping a host connection: {e}");
                self.pending_host.remove(&fd);
                return;
            }
        };
        let Some(p) = self.pending_host.remove(&fd) else {
            return;
        };
        let local_port = self.alloc_local_port(peer_port);
        let key = (local_port, peer_port);
        self.by_fd.insert(fd, key);
        self.conns.insert(
            key,
            Connection::host_initiated(p.stream, local_port, peer_port),
        );
        self.apply(key, Verdict::Keep);
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Acts on what a connection asked for after an event.
    fn apply(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    if !conn.in_rxq && conn.has_rx_work() {
                        conn.in_rxq = true;
                        self.rxq.push_back(RxItem::Conn(key));
                    }
                }
            }
            Verdict::Remove => {
                self.remove(key);
            }
            Verdict::Reset => {
                if let Some(conn) = self.remove(key) {
                    self.rxq
                        .push_back(RxItem::Control(conn.rst(self.guest_cid)));
                }
            }
        }
    }

    fn remove(&mut self, key: Key) -> Option<Connection> {
        let conn = self.conns.remove(&key)?;
        let fd = conn.stream.as_raw_fd();
        self.by_fd.remove(&fd);
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        Some(conn)
    }

    fn rst_unknown(&mut self, hdr: &Header) {
        if hdr.op == OP_RST {
            return;
        }
        if self.unknown_rsts >= MAX_UNKNOWN_RSTS {
            log::debug!("vsock: too many RSTs waiting for rx buffers; dropping one");
            return;
        }
        self.unknown_rsts += 1;
        self.rxq.push_back(RxItem::Reply(hdr.rst_reply()));
    }

    /// A packet from the guest (its source CID, type and op already checked). `Err`: the
    /// guest misbehaved in a way to count; whatever it broke was reset.
    pub fn send_pkt<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<(), VsockError> {
        if hdr.dst_cid != HOST_CID {
            // Nothing but the host is reachable through this device.
            self.rst_unknown(hdr);
            return Ok(());
        }
        let key = (hdr.dst_port, hdr.src_port);
        if let Some(conn) = self.conns.get_mut(&key) {
            return match conn.on_guest_packet(hdr, data) {
                Ok(verdict) => {
                    self.apply(key, verdict);
                    Ok(())
                }
                Err(e) => {
                    self.apply(key, Verdict::Reset);
                    Err(e)
                }
            };
        }
        if hdr.op == OP_REQUEST {
            self.guest_connect(hdr);
        } else {
            self.rst_unknown(hdr);
        }
        Ok(())
    }

    /// The guest connects to host port P: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, req: &Header) {
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", req.dst_port));
        // A Unix connect completes at once unless the listener's backlog is full; the host
        // listeners (the shim's) are trusted to accept promptly.
        let stream = UnixStream::connect(&path).and_then(|s| {
            s.set_nonblocking(true)?;
            self.watch(s.as_raw_fd(), s.as_raw_fd() as u64)?;
            Ok(s)
        });
        match stream {
            Ok(stream) => {
                let key = (req.dst_port, req.src_port);
                self.by_fd.insert(stream.as_raw_fd(), key);
                self.conns
                    .insert(key, Connection::guest_initiated(stream, req));
                self.apply(key, Verdict::Keep);
            }
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to {}: {e}",
                    Path::new(&path).display()
                );
                self.rst_unknown(req);
            }
        }
    }

    /// Whether packets wait for guest rx buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Fills `pkt` (an rx buffer) with the next packet for the guest; returns its payload
    /// length, or None when nothing was ready after all (the buffer is unused).
    pub fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<'_, B>) -> Option<u32> {
        let data = pkt.data_slice().cloned();
        while let Some(item) = self.rxq.pop_front() {
            let hdr = match item {
                RxItem::Control(hdr) => hdr,
                RxItem::Reply(hdr) => {
                    self.unknown_rsts -= 1;
                    hdr
                }
                RxItem::Conn(key) => {
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    conn.in_rxq = false;
                    match conn.next_rx(self.guest_cid, data.as_ref()) {
                        Ok(Some(hdr)) => {
                            self.apply(key, Verdict::Keep);
                            hdr
                        }
                        Ok(None) => continue,
                        Err(()) => {
                            self.apply(key, Verdict::Reset);
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = pkt.set_header_from_raw(&hdr.to_bytes()) {
                // The header area was checked when the chain was parsed.
                log::error!("vsock: cannot write a packet header: {e}");
                return None;
            }
            return Some(hdr.len);
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            log::warn!("vsock: cannot remove {}: {e}", self.uds_path.display());
        }
    }
}
