//! Port forwarding into the guest (CRI PortForward). containerd serves a PortForward by
//! dialing `127.0.0.1:<port>` inside the pod's network namespace on the host, where nothing
//! listens: the pod's processes are in the guest. So the shim listens there on a loopback
//! port of its own, an iptables REDIRECT in that namespace (and only there) sends every other
//! TCP connection to 127.0.0.1 to it, and each connection it accepts goes, with the port it
//! was meant for (`SO_ORIGINAL_DST`), over a vsock stream to the agent's forwarder
//! (`carapace_protocol::FORWARD_VSOCK_PORT`), which connects to that port in the guest.
//!
//! The boundary: the listener is reachable only from inside the pod's own namespace, the
//! shim writes the guest two bytes and then only copies what each side sends, and the guest
//! never makes the shim connect anywhere.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The comment on the REDIRECT rule, which names it to whoever lists the namespace's rules.
const RULE_COMMENT: &str = "carapace: CRI port-forward into the pod's VM";

/// Where iptables is looked for (a shim started by containerd may have a PATH without sbin).
const IPTABLES: &[&str] = &["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"];

/// The iptables arguments of the REDIRECT rule to the shim's listener on `port`.
pub fn redirect_rule(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "-w",
        "5",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1/32",
        "!",
        "--dport",
        &port,
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Binds the forwarding listener on the loopback of the calling thread's network namespace
/// and adds the REDIRECT rule there. Runs on a thread that has joined the pod's namespace;
/// the listener stays in that namespace whichever thread accepts on it.
pub fn listen_and_redirect() -> io::Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    let iptables = IPTABLES
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or("iptables");
    let out = Command::new(iptables)
        .args(redirect_rule(port))
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {iptables}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{iptables} {}: {} ({})",
            redirect_rule(port).join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(listener)
}

/// Serves the listener made by [`listen_and_redirect`]: each connection is carried to the
/// guest through the VM's hybrid vsock socket `vsock`. Aborting the task stops accepting
/// (connections already carried end when either side closes, or with the VM).
pub fn spawn(listener: TcpListener, vsock: PathBuf, pod: String) -> io::Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(carry(conn, vsock.clone(), pod.clone()));
                }
                Err(e) => {
                    log::warn!("pod {pod}: port forward: accepting: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

/// Carries one connection to the port it was meant for in the guest.
async fn carry(mut conn: TcpStream, vsock: PathBuf, pod: String) {
    let port = match rustix::net::sockopt::ip_original_dst(&conn) {
        Ok(dst) => dst.port(),
        Err(e) => {
            log::warn!("pod {pod}: port forward: the connection's original port: {e}");
            return;
        }
    };
    let guest = crate::agent::open_stream(&vsock, carapace_protocol::FORWARD_VSOCK_PORT).await;
    let mut guest = match guest {
        Ok(s) => s,
        Err(e) => {
            log::warn!("pod {pod}: port forward to {port}: reaching the agent: {e}");
            return;
        }
    };
    if let Err(e) = guest
        .write_all(&carapace_protocol::forward_request(port))
        .await
    {
        log::warn!("pod {pod}: port forward to {port}: {e}");
        return;
    }
    match tokio::io::copy_bidirectional(&mut conn, &mut guest).await {
        Ok((to_guest, to_host)) => {
            log::info!("pod {pod}: port forward to {port}: {to_guest} bytes in, {to_host} out")
        }
        Err(e) => log::info!("pod {pod}: port forward to {port} ended: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_redirects_other_loopback_tcp_to_the_listener_only() {
        let rule = redirect_rule(40123).join(" ");
        assert_eq!(
            rule,
            "-w 5 -t nat -A OUTPUT -o lo -p tcp -d 127.0.0.1/32 ! --dport 40123 -m comment \
             --comment carapace: CRI port-forward into the pod's VM -j REDIRECT --to-ports 40123"
        );
    }
}
