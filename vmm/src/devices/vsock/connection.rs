//! One stream connection between a host Unix socket and a guest vsock port: its state
//! machine, the credit accounting of both directions (virtio 1.2 section 5.10.6.3), and the
//! guest data waiting for room in the host socket.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::packet::{
    Header, HOST_CID, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RECEIVE, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::VsockError;

/// Receive buffer each connection advertises to the guest (buf_alloc): guest data the host
/// socket has not taken yet is kept up to this much, and the guest may send no more.
pub(crate) const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Host-forwarded bytes the guest has not heard about yet after which the device tells it
/// (CREDIT_UPDATE) without being asked. The guest can only stall once it used all of
/// CONN_BUF_ALLOC, which means at least `CONN_BUF_ALLOC - THRESHOLD` bytes still wait for the
/// host: the update then comes as soon as the host takes a quarter of the buffer.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// A host process asked for a guest port; the REQUEST is (to be) sent and the guest has
    /// not answered.
    LocalInit,
    /// Both ends connected.
    Established,
    /// The guest shut both directions while its data still waits for the host socket; once
    /// written, the connection is reset.
    Closing,
}

/// What the backend must do with a connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Keep it (and queue it for rx if it has something for the guest).
    Keep,
    /// Forget it without telling the guest (the guest reset it).
    Remove,
    /// Forget it and send the guest an RST.
    Reset,
}

/// One connection. "Local" is the host end (CID 2), "peer" the guest end.
pub(crate) struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    /// Queued in the backend's rx queue (at most once).
    pub in_rxq: bool,
    /// The host socket may have bytes (or EOF) to read: set by epoll (edge-triggered),
    /// cleared when a read returns EAGAIN.
    pub host_readable: bool,
    /// The guest's receive buffer size and how much of our data it consumed, as it last told.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes written to the host socket, and the value the guest last heard.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes the host socket did not take yet (at most CONN_BUF_ALLOC).
    tx_buf: VecDeque<u8>,
    pending_request: bool,
    pending_response: bool,
    pending_credit_update: bool,
    /// SHUTDOWN flags still to send the guest.
    pending_shutdown: u32,
    /// A read of the host socket returned end-of-file.
    host_eof: bool,
    /// The host closed its socket (EPOLLHUP): it will neither send nor receive.
    host_hup: bool,
    /// The write side of the host socket was shut (the guest will send no more).
    host_write_shut: bool,
    /// SHUTDOWN flags sent to, and received from, the guest.
    sent_shutdown: u32,
    peer_shutdown: u32,
}

impl Connection {
    fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            in_rxq: false,
            host_readable: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            pending_request: false,
            pending_response: false,
            pending_credit_update: false,
            pending_shutdown: 0,
            host_eof: false,
            host_hup: false,
            host_write_shut: false,
            sent_shutdown: 0,
            peer_shutdown: 0,
        }
    }

    /// A host process connected and asked for guest port `peer_port`: REQUEST the guest.
    pub fn host_initiated(stream: UnixStream, local_port: u32, peer_port: u32) -> Self {
        let mut c = Connection::new(stream, local_port, peer_port, State::LocalInit);
        c.pending_request = true;
        // The CONNECT line was read byte by byte: more bytes may wait behind it, and the
        // edge that announced them was consumed.
        c.host_readable = true;
        c
    }

    /// The guest's REQUEST `req` reached a host listener on `stream`: RESPONSE the guest.
    pub fn guest_initiated(stream: UnixStream, req: &Header) -> Self {
        let mut c = Connection::new(stream, req.dst_port, req.src_port, State::Established);
        c.update_peer_credit(req);
        c.pending_response = true;
        c
    }

    fn update_peer_credit(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes waiting for the host socket.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    fn wants_to_read(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RECEIVE == 0
            && self.peer_credit() > 0
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx_work(&self) -> bool {
        self.pending_request
            || self.pending_response
            || self.pending_credit_update
            || self.pending_shutdown != 0
            || self.wants_to_read()
    }

    /// A header from us to the guest, carrying our credit.
    fn header(&mut self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// The RST that ends this connection.
    pub fn rst(&self, guest_cid: u64) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }

    /// Produces the next packet for the guest, reading host data into `data` (the rx buffer's
    /// data area) when there is credit. `Ok(None)`: nothing to send after all (the host socket
    /// had no data). `Err(())`: the host socket failed; reset the connection.
    pub fn next_rx<B: BitmapSlice>(
        &mut self,
        guest_cid: u64,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<Option<Header>, ()> {
        if self.pending_request {
            self.pending_request = false;
            return Ok(Some(self.header(guest_cid, OP_REQUEST, 0, 0)));
        }
        if self.pending_response {
            self.pending_response = false;
            return Ok(Some(self.header(guest_cid, OP_RESPONSE, 0, 0)));
        }
        if let Some(data) = data.filter(|_| self.wants_to_read()) {
            let room = data.len().min(self.peer_credit() as usize);
            let room = room.min(MAX_PKT_DATA as usize);
            let mut buf = data.subslice(0, room).map_err(|_| ())?;
            loop {
                match self.stream.read_volatile(&mut buf) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.host_readable = false;
                        let mut flags = SHUTDOWN_SEND;
                        if self.host_hup {
                            flags |= SHUTDOWN_RECEIVE;
                        }
                        self.sent_shutdown |= flags;
                        self.pending_shutdown = 0;
                        return Ok(Some(self.header(guest_cid, OP_SHUTDOWN, flags, 0)));
                    }
                    Ok(n) => {
                        // n <= room <= MAX_PKT_DATA: fits a u32.
                        let n = n as u32;
                        self.rx_cnt += n;
                        return Ok(Some(self.header(guest_cid, OP_RW, 0, n)));
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock =>
                    {
                        self.host_readable = false;
                        break;
                    }
                    Err(e) => {
                        log::debug!(
                            "vsock: reading host socket of port {}: {e}",
                            self.local_port
                        );
                        return Err(());
                    }
                }
            }
        }
        if self.pending_shutdown != 0 {
            let flags = self.pending_shutdown;
            self.pending_shutdown = 0;
            self.sent_shutdown |= flags;
            return Ok(Some(self.header(guest_cid, OP_SHUTDOWN, flags, 0)));
        }
        if self.pending_credit_update {
            return Ok(Some(self.header(guest_cid, OP_CREDIT_UPDATE, 0, 0)));
        }
        Ok(None)
    }

    /// A packet from the guest for this connection. `Err`: the guest broke the protocol in a
    /// way worth counting; the connection must be reset.
    pub fn on_guest_packet<B: BitmapSlice>(
        &mut self,
        hdr: &Header,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<Verdict, VsockError> {
        self.update_peer_credit(hdr);
        match (self.state, hdr.op) {
            (_, OP_RST) => Ok(Verdict::Remove),
            (State::LocalInit, OP_RESPONSE) => {
                self.state = State::Established;
                // A fresh socket's buffer is empty: these few bytes go in one write.
                let line = format!("OK {}\n", self.local_port);
                match self.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => Ok(Verdict::Keep),
                    r => {
                        log::debug!(
                            "vsock: cannot answer the host on port {}: {r:?}",
                            self.local_port
                        );
                        Ok(Verdict::Reset)
                    }
                }
            }
            (State::LocalInit, _) | (_, OP_REQUEST) | (_, OP_RESPONSE) => {
                log::debug!(
                    "vsock: op {} unexpected in state {:?} on port {}; resetting",
                    hdr.op,
                    self.state,
                    self.local_port
                );
                Ok(Verdict::Reset)
            }
            (_, OP_RW) => self.guest_data(data),
            (_, OP_CREDIT_UPDATE) => Ok(Verdict::Keep),
            (_, OP_CREDIT_REQUEST) => {
                self.pending_credit_update = true;
                Ok(Verdict::Keep)
            }
            (_, OP_SHUTDOWN) => Ok(self.guest_shutdown(hdr.flags)),
            (_, op) => Err(VsockError::UnknownOp(op)),
        }
    }

    fn guest_data<B: BitmapSlice>(
        &mut self,
        data: Option<&VolatileSlice<'_, B>>,
    ) -> Result<Verdict, VsockError> {
        if self.state != State::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
            log::debug!(
                "vsock: data after the guest's SHUTDOWN on port {}",
                self.local_port
            );
            return Ok(Verdict::Reset);
        }
        let Some(data) = data else {
            return Ok(Verdict::Keep);
        };
        let room = CONN_BUF_ALLOC as usize - self.tx_buf.len();
        if data.len() > room {
            return Err(VsockError::CreditExceeded {
                len: data.len(),
                room,
            });
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            loop {
                match self.stream.write_volatile(data) {
                    Ok(n) => written = n,
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted =>
                    {
                        continue
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        log::debug!(
                            "vsock: writing host socket of port {}: {e}",
                            self.local_port
                        );
                        return Ok(Verdict::Reset);
                    }
                }
                break;
            }
            self.forwarded(written);
        }
        if written < data.len() {
            // The host socket is full: keep the rest until EPOLLOUT. (The checked-in
            // `room` makes it fit; `written < len` makes the copy cover exactly the rest.)
            let mut bytes = vec![0u8; data.len()];
            data.copy_to(&mut bytes[..]);
            bytes.drain(..written);
            self.tx_buf.extend(bytes);
        }
        Ok(Verdict::Keep)
    }

    fn forwarded(&mut self, n: usize) {
        // n <= CONN_BUF_ALLOC or one packet: fits a u32.
        self.fwd_cnt += n as u32;
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending_credit_update = true;
        }
    }

    fn guest_shutdown(&mut self, flags: u32) -> Verdict {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if self.peer_shutdown & SHUTDOWN_RECEIVE != 0 {
            // The host's further writes fail (EPIPE) rather than pile up unread.
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        self.after_flush()
    }

    /// What follows once guest data is written (or more of it): half-closes and closes that
    /// waited for the buffer to drain.
    fn after_flush(&mut self) -> Verdict {
        if !self.tx_buf.is_empty() {
            if self.peer_shutdown == SHUTDOWN_BOTH {
                self.state = State::Closing;
            }
            return Verdict::Keep;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            let _ = self.stream.shutdown(Shutdown::Both);
            return Verdict::Reset;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Verdict::Keep
    }

    /// Writes buffered guest data to the host socket until it is empty or full.
    fn flush(&mut self) -> io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The host socket is ready as `events` says (edge-triggered).
    pub fn on_host_event(&mut self, events: EventSet) -> Verdict {
        if events.contains(EventSet::ERROR) {
            return Verdict::Reset;
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
            self.host_readable = true;
        }
        if events.contains(EventSet::HANG_UP) {
            self.host_hup = true;
            if self.state == State::LocalInit {
                // The host gave up before the guest answered.
                return Verdict::Reset;
            }
            if (self.host_eof || self.peer_shutdown & SHUTDOWN_RECEIVE != 0)
                && self.sent_shutdown != SHUTDOWN_BOTH
            {
                self.pending_shutdown = SHUTDOWN_BOTH & !self.sent_shutdown;
            }
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP) && !self.tx_buf.is_empty() {
            if let Err(e) = self.flush() {
                log::debug!(
                    "vsock: writing host socket of port {}: {e}",
                    self.local_port
                );
                return Verdict::Reset;
            }
            return self.after_flush();
        }
        Verdict::Keep
    }
}

/// Reads the `CONNECT <port>\n` line a host process sends first, byte by byte so that no
/// byte after it is consumed. `Ok(Some(port))`: complete; `Ok(None)`: wait for more;
/// `Err`: malformed, failed or closed (drop the socket).
pub(crate) fn read_connect_line(
    stream: &mut UnixStream,
    line: &mut Vec<u8>,
) -> io::Result<Option<u32>> {
    /// "CONNECT 4294967295" plus slack for a '\r' and spaces.
    const MAX_LINE: usize = 32;
    loop {
        let mut b = [0u8; 1];
        match stream.read(&mut b) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if b[0] == b'\n' => return parse_connect(line).map(Some),
            Ok(_) => {
                line.push(b[0]);
                if line.len() > MAX_LINE {
                    return Err(invalid("the CONNECT line is too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn parse_connect(line: &[u8]) -> io::Result<u32> {
    let line = std::str::from_utf8(line).map_err(|_| invalid("the CONNECT line is not text"))?;
    let mut words = line.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("CONNECT"), Some(port), None) => port
            .parse::<u32>()
            .map_err(|_| invalid("the CONNECT line has no valid port")),
        _ => Err(invalid("expected `CONNECT <port>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52").unwrap(), 52);
        assert_eq!(parse_connect(b"CONNECT 1024\r").unwrap(), 1024);
        assert!(parse_connect(b"CONNECT").is_err());
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 4294967296").is_err());
        assert!(parse_connect(b"connect 52").is_err());
        assert!(parse_connect(b"CONNECT 52 53").is_err());
        assert!(parse_connect(b"\xff").is_err());
    }

    #[test]
    fn connect_line_arrives_in_pieces() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut line = Vec::new();
        a.write_all(b"CONN").unwrap();
        assert_eq!(read_connect_line(&mut b, &mut line).unwrap(), None);
        a.write_all(b"ECT 7\nrest").unwrap();
        assert_eq!(read_connect_line(&mut b, &mut line).unwrap(), Some(7));
        let mut rest = [0u8; 4];
        b.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[test]
    fn peer_credit_saturates() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Connection::new(a, 1, 2, State::Established);
        c.update_peer_credit(&Header {
            buf_alloc: 100,
            fwd_cnt: u32::MAX,
            ..Header::default()
        });
        assert_eq!(c.peer_credit(), 99);
        c.rx_cnt = Wrapping(500);
        assert_eq!(c.peer_credit(), 0);
    }
}
