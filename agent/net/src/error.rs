//! The crate's two errors: [`RequestError`], why a network request from the protocol is refused
//! (each side reports it as a bad argument), and [`KernelError`], how an rtnetlink request
//! failed (the kernel's errno, or the exchange itself).

use std::net::IpAddr;

/// Why a network request (an `Interface`, `Route` or `ArpNeighbor` of the protocol) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field that must hold an IP address does not.
    #[error("{what} {value:?} is not an IP address")]
    NotAnAddress {
        /// The field.
        what: &'static str,
        /// What it holds.
        value: String,
    },
    /// A prefix length is longer than the address family allows.
    #[error("prefix length {prefix} of {addr} is out of range (0-{max})")]
    PrefixOutOfRange {
        /// The address.
        addr: IpAddr,
        /// The prefix length given.
        prefix: u32,
        /// The family's longest.
        max: u8,
    },
    /// What follows the `/` of a CIDR is not a number.
    #[error("{what} {value:?} has a malformed prefix length")]
    MalformedPrefix {
        /// The field.
        what: &'static str,
        /// What it holds.
        value: String,
    },
    /// A CIDR has bits set past its prefix.
    #[error("{what} {value:?} has host bits set (the network is {network})")]
    HostBitsSet {
        /// The field.
        what: &'static str,
        /// What it holds.
        value: String,
        /// The network it would name with those bits cleared, as a CIDR.
        network: String,
    },
    /// A field that must hold an Ethernet MAC does not.
    #[error("{what} {value:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
    NotAMac {
        /// The field.
        what: &'static str,
        /// What it holds.
        value: String,
    },
    /// A name the kernel would refuse for an interface.
    #[error(
        "{what} {value:?} is not a valid interface name (1-{max} bytes, no '/', ':' or spaces)"
    )]
    BadInterfaceName {
        /// The field.
        what: &'static str,
        /// What it holds.
        value: String,
        /// The longest name the kernel accepts.
        max: usize,
    },
    /// An interface with neither a MAC nor a name to find its link by.
    #[error("the interface needs a hw_addr or a name")]
    NoLinkSelector,
    /// An MTU below IPv4's minimum.
    #[error("MTU {0} is below the minimum of 68")]
    MtuTooSmall(u32),
    /// The same address twice on one interface.
    #[error("address {0} is given twice")]
    DuplicateAddress(IpAddr),
    /// A route scope past rtnetlink's 8 bits.
    #[error("route scope {0} is out of range (0-255)")]
    ScopeOutOfRange(u32),
    /// A route whose destination, gateway and source are not all of one family.
    #[error("route to {0:?} mixes IPv4 and IPv6 addresses")]
    MixedFamilies(String),
    /// A neighbour state that is not one NUD_* bit.
    #[error("neighbour state {0:#x} is not a NUD_* state")]
    BadNeighbourState(u32),
}

/// How an rtnetlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel refused it with this errno (positive); each side words it itself.
    #[error("the kernel refused the request (errno {0})")]
    Errno(i32),
    /// rtnetlink failed otherwise (an unexpected answer, a closed socket, ...).
    #[error(transparent)]
    Netlink(rtnetlink::Error),
}

impl KernelError {
    /// The kernel's errno, when it refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Errno(e) => Some(*e),
            Self::Netlink(_) => None,
        }
    }
}

/// The errno (positive) of a refusal by the kernel; `None` for any other failure.
pub fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            Some(m.raw_code().saturating_abs())
        }
        _ => None,
    }
}

impl From<rtnetlink::Error> for KernelError {
    fn from(e: rtnetlink::Error) -> Self {
        match errno_of(&e) {
            Some(errno) => Self::Errno(errno),
            None => Self::Netlink(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_carry_an_errno() {
        let e = KernelError::from(rtnetlink::Error::RequestFailed);
        assert_eq!(e.errno(), None);
        assert_eq!(e.to_string(), "A netlink request failed");
        assert_eq!(KernelError::Errno(17).errno(), Some(17));
        assert_eq!(errno_of(&rtnetlink::Error::RequestFailed), None);
        // The kernel's NACK carries the errno negated; an ACK carries none.
        let mut nack = rtnetlink::packet_core::ErrorMessage::default();
        nack.code = std::num::NonZeroI32::new(-17);
        let e = KernelError::from(rtnetlink::Error::NetlinkError(nack));
        assert_eq!(e.errno(), Some(17));
        let ack = rtnetlink::packet_core::ErrorMessage::default();
        assert_eq!(errno_of(&rtnetlink::Error::NetlinkError(ack)), None);
    }
}
