//! Tests of who may reach the guest through the host socket: its mode, the peer-uid check,
//! and accepting again after running out of descriptors. Another user is a forked child
//! that drops to uid 65534; the descriptor shortage is a forked child's lowered rlimit.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use super::*;
use crate::uds::testutil::*;
use crate::uds::ACCEPT_BACKOFF;

/// Polls the backend's epoll fd for `ms` milliseconds: whether it became readable.
fn backend_ready(h: &Harness, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: h.dev.muxer.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd we own.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

#[test]
fn the_host_socket_is_0600_even_with_umask_0() {
    let dir = OpenTempDir::new("vsock");
    let path = dir.0.join("v.sock");
    // In a child: the umask is process-wide (fuse-backend-rs sets it to 0).
    let code = bind_mode_under_umask_0(&path, || Vsock::new(GUEST_CID, path.clone()));
    assert_eq!(code, Some(0), "not mode 0600");
}

#[test]
fn other_users_cannot_reach_the_guest_through_the_host_socket() {
    let mut h = Harness::new();
    h.kick_rx(16);
    let uds = h.uds.clone();
    let attack = |uds: PathBuf| {
        std::thread::spawn(move || {
            client_as(65534, &uds, b"CONNECT 1024\n", Duration::from_secs(3))
        })
    };
    // Mode 0600: another user cannot connect at all.
    assert_eq!(attack(uds.clone()).join().unwrap(), Some(CONNECT_FAILED));
    // Were the socket world-writable, the peer check still closes the connection before
    // its CONNECT line reaches the guest.
    std::fs::set_permissions(&uds, std::fs::Permissions::from_mode(0o777)).unwrap();
    let client = attack(uds);
    let mut to_guest = Vec::new();
    while !client.is_finished() {
        h.backend();
        to_guest.extend(h.guest.recv());
        std::thread::sleep(Duration::from_millis(5));
    }
    h.backend();
    to_guest.extend(h.guest.recv());
    assert_eq!(client.join().unwrap(), Some(CLOSED));
    assert!(
        to_guest.is_empty(),
        "another user reached the guest: {to_guest:?}"
    );
    assert_eq!(h.dev.muxer.pending_host_count(), 0);
    // The VMM's own user (root here) still gets through.
    let (_s, req) = h.host_connect(1024);
    assert_eq!(req.dst_port, 1024);
}

#[test]
fn accepting_resumes_after_running_out_of_descriptors_without_spinning() {
    // In a child: it lowers its own RLIMIT_NOFILE.
    let code = in_child(Duration::from_secs(20), || {
        let mut h = Harness::new();
        h.kick_rx(16);
        let Some(mut starved) = Starved::new() else {
            return 30;
        };
        let client = &mut starved.client;
        if connect_fd(client, &h.uds).is_err() || client.write_all(b"CONNECT 1024\n").is_err() {
            return 31;
        }
        if !backend_ready(&h, 1000) {
            return 32;
        }
        // The accept fails (EMFILE); no spin: nothing is ready until the retry timer fires.
        h.backend();
        if backend_ready(&h, 0) {
            return 33;
        }
        let t = Instant::now();
        if !backend_ready(&h, 1000) || t.elapsed() < ACCEPT_BACKOFF / 2 {
            return 34;
        }
        h.backend(); // fails again, re-arms the timer
        if !h.guest.recv().is_empty() {
            return 35;
        }
        let _client = starved.relieve();
        if !backend_ready(&h, 1000) {
            return 36;
        }
        h.backend();
        let pkts = h.guest.recv();
        if pkts.len() != 1 || pkts[0].0.op != OP_REQUEST || pkts[0].0.dst_port != 1024 {
            return 37;
        }
        0
    });
    assert_eq!(code, Some(0));
}
