//! The shim's error types and their mapping to ttrpc codes at the Task API's edge (the kinds,
//! their codes and the status built from an error are `carapace_protocol::status`'s, shared
//! with the agent); errors the agent returned keep the agent's code. [`NetworkError`], the pod
//! network's, lives here beside [`ShimError`]: each wraps the other (a network failure is a Task
//! failure; the agent refusing the guest's network is a network failure), and the mapping of
//! the network's failures, from rtnetlink and to codes, is made here once.

use std::path::PathBuf;

use carapace_net::KernelError;
use carapace_protocol::status::{self, ErrorKind, RpcError};
use ttrpc::Code;

/// Why a Task request failed.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The named container or process does not exist (or has already exited).
    #[error("{0} not found")]
    NotFound(String),
    /// A container or exec with that id already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The target is in the wrong state for the request.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The shim does not do this.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// The agent answered with an error status.
    #[error("the agent refused {what}: {message}")]
    Agent {
        /// The RPC.
        what: &'static str,
        /// The agent's code.
        code: Code,
        /// The agent's message.
        message: String,
    },
    /// The agent could not be reached or the connection broke.
    #[error("talking to the agent ({what}): {message}")]
    AgentTransport {
        /// The RPC.
        what: &'static str,
        /// The ttrpc error.
        message: String,
    },
    /// A host-side operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The pod's network could not be set up or torn down.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// Anything else that went wrong inside the shim.
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    /// Wraps an I/O failure with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Classifies a failed agent RPC.
    pub fn agent(what: &'static str, err: ttrpc::Error) -> Self {
        match err {
            ttrpc::Error::RpcStatus(s) => Self::Agent {
                what,
                code: s.code(),
                message: s.message().to_string(),
            },
            other => Self::AgentTransport {
                what,
                message: other.to_string(),
            },
        }
    }

    /// The ttrpc code containerd sees.
    pub fn code(&self) -> Code {
        let kind = match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::Unimplemented(_) => ErrorKind::Unimplemented,
            Self::Agent { code, .. } => return *code,
            Self::AgentTransport { .. } => ErrorKind::Unavailable,
            Self::Network(e) => match e {
                NetworkError::Agent(inner) => return inner.code(),
                e if e.is_invalid_argument() => ErrorKind::InvalidArgument,
                _ => ErrorKind::Internal,
            },
            Self::Io { .. } | Self::Internal(_) => ErrorKind::Internal,
        };
        kind.code()
    }
}

impl RpcError for ShimError {
    fn code(&self) -> Code {
        ShimError::code(self)
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(err: ShimError) -> Self {
        // The whole chain: `Io` keeps its cause in `source`.
        status::status(&err)
    }
}

/// Why the pod's network could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The spec names a network namespace that cannot be opened or joined.
    #[error("the pod's network namespace {path} cannot be used")]
    Namespace {
        /// The namespace path from the spec.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pod's own network namespace (a new one the shim makes) could not be made or opened.
    #[error("making the pod's own network namespace")]
    OwnNamespace(#[source] std::io::Error),
    /// The namespace is the host's own (the shim's): taps and redirects there would join the
    /// host's interfaces to the guest.
    #[error("the pod's network namespace {0} is the host's own network namespace")]
    HostNamespace(PathBuf),
    /// The namespace holds nothing to give the guest.
    #[error("the pod's network namespace {0} has no interface other than lo (is the CNI set-up missing?)")]
    NoInterface(PathBuf),
    /// A tap could not be made.
    #[error("creating tap {name}")]
    Tap {
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request was refused.
    #[error("{what}: {message}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's (or rtnetlink's) words.
        message: String,
    },
    /// Port forwarding could not be set up in the namespace.
    #[error("setting up port forwarding in {path}")]
    Forward {
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused the guest's configuration.
    #[error("configuring the guest's network")]
    Agent(#[source] Box<ShimError>),
}

impl NetworkError {
    /// A failed rtnetlink request of what `what` says, in the kernel's words (its errno's
    /// text) or rtnetlink's.
    pub fn netlink(what: impl Into<String>, err: KernelError) -> Self {
        Self::Netlink {
            what: what.into(),
            message: match err {
                KernelError::Errno(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
                KernelError::Netlink(e) => e.to_string(),
            },
        }
    }

    /// Whether the request itself is at fault (a bad namespace), not the host.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            Self::Namespace { .. } | Self::NoInterface(_) | Self::HostNamespace(_)
        )
    }
}

/// Result of shim operations.
pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (
                ShimError::NotFound("container \"c\"".into()),
                Code::NOT_FOUND,
            ),
            (
                ShimError::AlreadyExists("exec \"e\"".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                ShimError::InvalidArgument("id".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                ShimError::FailedPrecondition("paused".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                ShimError::Unimplemented("checkpoint".into()),
                Code::UNIMPLEMENTED,
            ),
            (
                ShimError::io("mounting", std::io::Error::from_raw_os_error(libc::EPERM)),
                Code::INTERNAL,
            ),
            (ShimError::Internal("state".into()), Code::INTERNAL),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
            match ttrpc::Error::from(e) {
                ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), code),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn agent_codes_pass_through() {
        let e = ShimError::agent(
            "CreateContainer",
            ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, "bad spec")),
        );
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        let e = ShimError::agent("Check", ttrpc::Error::RemoteClosed);
        assert_eq!(e.code(), Code::UNAVAILABLE);
    }

    #[test]
    fn network_errors_have_their_codes_and_the_kernels_words() {
        let refused = NetworkError::netlink("listing routes", KernelError::Errno(libc::EPERM));
        assert_eq!(
            refused.to_string(),
            format!(
                "listing routes: {}",
                std::io::Error::from_raw_os_error(libc::EPERM)
            )
        );
        let broken = NetworkError::netlink(
            "listing links",
            KernelError::Netlink(rtnetlink::Error::RequestFailed),
        );
        assert_eq!(
            broken.to_string(),
            "listing links: A netlink request failed"
        );
        let agent = NetworkError::Agent(Box::new(ShimError::agent(
            "UpdateRoutes",
            ttrpc::Error::RpcStatus(ttrpc::get_status(Code::NOT_FOUND, "no eth9")),
        )));
        let cases = [
            (ShimError::from(refused), Code::INTERNAL),
            (
                NetworkError::NoInterface(PathBuf::from("/ns")).into(),
                Code::INVALID_ARGUMENT,
            ),
            (
                NetworkError::HostNamespace(PathBuf::from("/proc/1/ns/net")).into(),
                Code::INVALID_ARGUMENT,
            ),
            (agent.into(), Code::NOT_FOUND),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
    }

    #[test]
    fn io_errors_keep_their_cause() {
        let e = ShimError::io("mounting", std::io::Error::from_raw_os_error(libc::EPERM));
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert!(s.message().contains("mounting: "), "{}", s.message());
            }
            other => panic!("{other:?}"),
        }
    }
}
