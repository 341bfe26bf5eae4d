//! What the shim and the agent share about failed requests at their ttrpc edges: the kinds
//! of failure with the code each is reported with, and how an error becomes the status its
//! caller receives (the error's message followed by its whole chain of causes). Each side
//! keeps its own error enum and says which kind each of its variants is.

use ttrpc::Code;

/// What kind of failure a request met; each kind is reported with one ttrpc code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The named container, process or resource does not exist.
    NotFound,
    /// Something with that id already exists.
    AlreadyExists,
    /// The request is malformed.
    InvalidArgument,
    /// The target is in the wrong state for the request.
    FailedPrecondition,
    /// The kernel refused the request for lack of privilege.
    PermissionDenied,
    /// The request is not implemented.
    Unimplemented,
    /// The other side could not be reached.
    Unavailable,
    /// Anything else.
    Internal,
}

impl ErrorKind {
    /// The ttrpc code this kind of failure is reported with.
    pub fn code(self) -> Code {
        match self {
            Self::NotFound => Code::NOT_FOUND,
            Self::AlreadyExists => Code::ALREADY_EXISTS,
            Self::InvalidArgument => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition => Code::FAILED_PRECONDITION,
            Self::PermissionDenied => Code::PERMISSION_DENIED,
            Self::Unimplemented => Code::UNIMPLEMENTED,
            Self::Unavailable => Code::UNAVAILABLE,
            Self::Internal => Code::INTERNAL,
        }
    }
}

/// An error a ttrpc handler can fail with: it knows the code it is reported with.
pub trait RpcError: std::error::Error {
    /// The ttrpc code the caller sees.
    fn code(&self) -> Code;
}

/// `err`'s message followed by each of its causes, `: `-separated (errors name what failed
/// and keep the failure as their source, so the whole chain is what a caller needs).
pub fn message(err: &(dyn std::error::Error + '_)) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The ttrpc error a failed request is answered with: the error's code and its [`message`].
pub fn status<E: RpcError>(err: &E) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), message(err)))
}

/// Turns a handler's outcome into its ttrpc answer; `on_error` sees a failure first (to log
/// it the way its side logs).
pub fn respond<T, E: RpcError>(r: Result<T, E>, on_error: impl FnOnce(&E)) -> ttrpc::Result<T> {
    r.map_err(|e| {
        on_error(&e);
        status(&e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_code() {
        let cases = [
            (ErrorKind::NotFound, Code::NOT_FOUND),
            (ErrorKind::AlreadyExists, Code::ALREADY_EXISTS),
            (ErrorKind::InvalidArgument, Code::INVALID_ARGUMENT),
            (ErrorKind::FailedPrecondition, Code::FAILED_PRECONDITION),
            (ErrorKind::PermissionDenied, Code::PERMISSION_DENIED),
            (ErrorKind::Unimplemented, Code::UNIMPLEMENTED),
            (ErrorKind::Unavailable, Code::UNAVAILABLE),
            (ErrorKind::Internal, Code::INTERNAL),
        ];
        for (kind, code) in cases {
            assert_eq!(kind.code(), code, "{kind:?}");
        }
        // No two kinds share a code.
        for (i, (a, _)) in cases.iter().enumerate() {
            for (b, _) in &cases[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?}");
            }
        }
    }

    /// A test error: a message, a kind and maybe an I/O cause.
    #[derive(Debug)]
    struct Failure {
        what: &'static str,
        kind: ErrorKind,
        source: Option<std::io::Error>,
    }

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.what)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_ref().map(|e| e as _)
        }
    }

    impl RpcError for Failure {
        fn code(&self) -> Code {
            self.kind.code()
        }
    }

    fn os(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn message_is_the_whole_chain() {
        let plain = Failure {
            what: "container \"a\" not found",
            kind: ErrorKind::NotFound,
            source: None,
        };
        assert_eq!(message(&plain), "container \"a\" not found");
        let inner = std::io::Error::other(Failure {
            what: "opening the bundle",
            kind: ErrorKind::Internal,
            source: Some(os(2)),
        });
        let nested = Failure {
            what: "creating the container",
            kind: ErrorKind::Internal,
            source: Some(inner),
        };
        assert_eq!(
            message(&nested),
            format!("creating the container: opening the bundle: {}", os(2))
        );
    }

    #[test]
    fn status_carries_code_and_chain() {
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::InvalidArgument,
            ErrorKind::Unavailable,
            ErrorKind::Internal,
        ] {
            let e = Failure {
                what: "writing stdin",
                kind,
                source: Some(os(32)),
            };
            match status(&e) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), kind.code());
                    assert_eq!(s.message(), format!("writing stdin: {}", os(32)));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn respond_passes_success_and_reports_failure_once() {
        let mut seen = 0;
        let ok: Result<u32, Failure> = Ok(7);
        assert_eq!(respond(ok, |_| seen += 1).unwrap(), 7);
        assert_eq!(seen, 0);
        let err: Result<u32, Failure> = Err(Failure {
            what: "exec \"e\" already exists",
            kind: ErrorKind::AlreadyExists,
            source: None,
        });
        match respond(err, |_| seen += 1) {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::ALREADY_EXISTS);
                assert_eq!(s.message(), "exec \"e\" already exists");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen, 1);
    }
}
