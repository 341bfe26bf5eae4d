//! The agent's error type and its mapping to ttrpc status codes at the RPC edge (the kinds,
//! their codes and the status built from an error are `carapace_protocol::status`'s, shared
//! with the shim), and the one mapping of the network's failures into it: a refused network
//! request (`carapace_net::RequestError`) and a failed rtnetlink request (`KernelError`).

use carapace_net::{KernelError, RequestError};
use carapace_protocol::status::{self, ErrorKind, RpcError};
use ttrpc::Code;

/// Why an agent request failed; each variant maps to one ttrpc code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The named container or process does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A container or process with that id already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is malformed: bad id, bad spec, impossible resources.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The target is in the wrong state for the request (e.g. starting a started container).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The kernel refused the request for lack of privilege.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The agent does not implement the request.
    #[error("unimplemented: {0}")]
    Unimplemented(String),
    /// An I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}")]
    Sys {
        /// The call, or what it was for.
        what: String,
        /// The failure.
        #[source]
        source: nix::errno::Errno,
    },
    /// A system call failed and its errno says all there is to say.
    #[error(transparent)]
    Errno(nix::errno::Errno),
    /// libcontainer failed in a way no other variant names.
    #[error(transparent)]
    Container(libcontainer::error::LibcontainerError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The ttrpc code this error is reported with.
    pub fn code(&self) -> Code {
        let kind = match self {
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::Unimplemented(_) => ErrorKind::Unimplemented,
            Self::Io { .. }
            | Self::Sys { .. }
            | Self::Errno(_)
            | Self::Container(_)
            | Self::Internal(_) => ErrorKind::Internal,
        };
        kind.code()
    }

    /// Wraps an I/O failure with what was being done.
    pub fn io(what: &str, err: std::io::Error) -> Self {
        Self::Io {
            what: what.to_string(),
            source: err,
        }
    }

    /// Wraps a failed system call with what was being done.
    pub fn sys(what: &str, err: nix::errno::Errno) -> Self {
        Self::Sys {
            what: what.to_string(),
            source: err,
        }
    }

    /// Maps a kernel refusal (a positive errno) of what `what` says to the agent's error,
    /// keeping the kernel's words.
    pub fn refused(what: &str, errno: i32) -> Self {
        let desc = nix::errno::Errno::from_raw(errno).desc();
        let msg = format!("{what}: {desc}");
        match errno {
            libc::EEXIST => Self::AlreadyExists(format!("what {what} adds")),
            libc::ENODEV | libc::ENOENT | libc::ESRCH => {
                Self::NotFound(format!("what {what} needs ({desc})"))
            }
            libc::EPERM | libc::EACCES => Self::PermissionDenied(msg),
            libc::EINVAL | libc::ERANGE | libc::EAFNOSUPPORT => Self::InvalidArgument(msg),
            libc::ENETUNREACH | libc::ENETDOWN | libc::EADDRNOTAVAIL => {
                Self::FailedPrecondition(msg)
            }
            _ => Self::Internal(msg),
        }
    }

    /// Maps a failed rtnetlink request of what `what` says: a refusal as [`Self::refused`],
    /// anything else as internal.
    pub fn kernel(what: &str, err: KernelError) -> Self {
        match err {
            KernelError::Errno(errno) => Self::refused(what, errno),
            err => Self::Internal(format!("{what}: {err}")),
        }
    }

    /// The message with its whole chain of causes, as the caller of a failed RPC reads it.
    pub fn message(&self) -> String {
        status::message(self)
    }
}

impl RpcError for AgentError {
    fn code(&self) -> Code {
        AgentError::code(self)
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(err: AgentError) -> Self {
        status::status(&err)
    }
}

impl From<libcontainer::error::LibcontainerError> for AgentError {
    fn from(err: libcontainer::error::LibcontainerError) -> Self {
        use libcontainer::error::LibcontainerError as L;
        // libcontainer's Display of wrapper variants is terse; messages keep the whole chain.
        let wrap: fn(String) -> Self = match &err {
            L::Exist => Self::AlreadyExists,
            L::NoDirectory => Self::NotFound,
            L::IncorrectStatus(_) => Self::FailedPrecondition,
            L::InvalidInput(_)
            | L::InvalidID(_)
            | L::MissingSpec(_)
            | L::InvalidSpec(_)
            | L::Spec(_)
            | L::NoUserNamespace => Self::InvalidArgument,
            _ => return Self::Container(err),
        };
        wrap(status::message(&err))
    }
}

impl From<RequestError> for AgentError {
    fn from(err: RequestError) -> Self {
        // The refusal's words are the whole message: it has no cause.
        Self::InvalidArgument(err.to_string())
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use libcontainer::error::LibcontainerError as L;
    use nix::errno::Errno;

    use super::*;

    fn os(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    /// The code and message the caller of a failed RPC gets.
    fn answer(e: AgentError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (
                AgentError::NotFound("container \"c\"".into()),
                Code::NOT_FOUND,
            ),
            (
                AgentError::AlreadyExists("exec \"e\"".into()),
                Code::ALREADY_EXISTS,
            ),
            (
                AgentError::InvalidArgument("id".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::FailedPrecondition("started".into()),
                Code::FAILED_PRECONDITION,
            ),
            (
                AgentError::PermissionDenied("mount".into()),
                Code::PERMISSION_DENIED,
            ),
            (
                AgentError::Unimplemented("checkpoint".into()),
                Code::UNIMPLEMENTED,
            ),
            (AgentError::io("poll", os(libc::EBADF)), Code::INTERNAL),
            (AgentError::sys("kill", Errno::EPERM), Code::INTERNAL),
            (AgentError::Errno(Errno::EBADF), Code::INTERNAL),
            (AgentError::Container(L::NoExecutors), Code::INTERNAL),
            (AgentError::Internal("oom watcher".into()), Code::INTERNAL),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(answer(e).0, code);
        }
    }

    #[test]
    fn causes_are_sources_and_stay_in_the_message() {
        let e = AgentError::io("creating the bundle", os(libc::ENOENT));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            answer(e).1,
            format!("creating the bundle: {}", os(libc::ENOENT))
        );
        let e = AgentError::sys("kill", Errno::EPERM);
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.message(), format!("kill: {}", Errno::EPERM));
        assert_eq!(answer(e).1, format!("kill: {}", Errno::EPERM));
        assert_eq!(
            answer(AgentError::Errno(Errno::EBADF)).1,
            Errno::EBADF.to_string()
        );
        assert_eq!(
            answer(AgentError::NotFound("container \"c\"".into())).1,
            "container \"c\" not found"
        );
    }

    #[test]
    fn kernel_refusals_map_to_codes() {
        let errno_error = AgentError::refused;
        assert_eq!(errno_error("x", libc::EEXIST).code(), Code::ALREADY_EXISTS);
        assert_eq!(
            errno_error("x", libc::EPERM).code(),
            Code::PERMISSION_DENIED
        );
        assert_eq!(errno_error("x", libc::ENODEV).code(), Code::NOT_FOUND);
        assert_eq!(
            errno_error("x", libc::EINVAL).code(),
            Code::INVALID_ARGUMENT
        );
        assert_eq!(
            errno_error("x", libc::ENETUNREACH).code(),
            Code::FAILED_PRECONDITION
        );
        let e = errno_error("adding", libc::EBUSY);
        assert_eq!(e.code(), Code::INTERNAL);
        assert_eq!(e.to_string(), "adding: Device or resource busy");
        let e = errno_error("adding the route", libc::EEXIST);
        assert_eq!(e.to_string(), "what adding the route adds already exists");
    }

    #[test]
    fn network_failures_map_in_one_place() {
        let e = AgentError::kernel("listing links", KernelError::Errno(libc::EPERM));
        assert_eq!(e.code(), Code::PERMISSION_DENIED);
        assert_eq!(
            answer(e).1,
            "permission denied: listing links: Operation not permitted"
        );
        let e = AgentError::kernel(
            "listing links",
            KernelError::Netlink(rtnetlink::Error::RequestFailed),
        );
        assert_eq!(
            answer(e),
            (
                Code::INTERNAL,
                "listing links: A netlink request failed".to_string()
            )
        );
        let e = AgentError::from(RequestError::MtuTooSmall(10));
        assert_eq!(
            answer(e),
            (
                Code::INVALID_ARGUMENT,
                "invalid argument: MTU 10 is below the minimum of 68".to_string()
            )
        );
    }

    #[test]
    fn libcontainer_errors_keep_their_codes_and_whole_chain() {
        let (code, msg) = answer(L::Exist.into());
        assert_eq!(code, Code::ALREADY_EXISTS);
        assert_eq!(msg, "container already exists already exists");
        assert_eq!(answer(L::NoDirectory.into()).0, Code::NOT_FOUND);
        assert_eq!(
            answer(L::InvalidInput("bad".into()).into()).0,
            Code::INVALID_ARGUMENT
        );
        let e = AgentError::from(L::OtherIO(os(libc::EIO)));
        assert!(matches!(e, AgentError::Container(_)));
        let (code, msg) = answer(e);
        assert_eq!(code, Code::INTERNAL);
        assert_eq!(msg, format!("io error: {}", os(libc::EIO)));
    }
}
