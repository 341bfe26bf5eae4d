//! The agent's error type and its mapping to ttrpc status codes at the RPC edge.

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
    /// Anything else: a failed system call, a libcontainer failure.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The ttrpc code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::PermissionDenied(_) => Code::PERMISSION_DENIED,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::Internal(_) => Code::INTERNAL,
        }
    }

    /// Wraps an I/O failure with what was being done.
    pub fn io(what: &str, err: std::io::Error) -> Self {
        Self::Internal(format!("{what}: {err}"))
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(err: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), err.to_string()))
    }
}

impl From<libcontainer::error::LibcontainerError> for AgentError {
    fn from(err: libcontainer::error::LibcontainerError) -> Self {
        use libcontainer::error::LibcontainerError as L;
        // libcontainer's Display of wrapper variants is terse; keep the whole chain.
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        match err {
            L::Exist => Self::AlreadyExists(msg),
            L::NoDirectory => Self::NotFound(msg),
            L::IncorrectStatus(_) => Self::FailedPrecondition(msg),
            L::InvalidInput(_)
            | L::InvalidID(_)
            | L::MissingSpec(_)
            | L::InvalidSpec(_)
            | L::Spec(_)
            | L::NoUserNamespace => Self::InvalidArgument(msg),
            _ => Self::Internal(msg),
        }
    }
}

/// Result of agent operations.
pub type Result<T> = std::result::Result<T, AgentError>;
