use crate::__private::WitError;
use std::fmt;

/// `Result` with the SDK's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds of [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The task is being cancelled.
    Cancelled,
    /// No task of this worker has the name.
    NotFound,
    /// A task of this worker already has the name.
    DuplicateName,
    /// No plugin has the name.
    UnknownPlugin,
    /// The plugin has no such factory.
    UnknownFactory,
    /// The factory refused the arguments.
    InvalidArgs,
    /// A limit of the app (`[limits]` in app.toml) was reached.
    Limit,
    /// Anything else.
    Failed,
}

/// Why a task or a host call did not succeed.
///
/// Converts from any `std::error::Error` with `?`, keeping its message and
/// causes, so plugin code can mix its own errors with host errors. Like
/// `anyhow::Error` it does not implement `std::error::Error` itself (that
/// would conflict with the blanket conversion).
pub struct Error {
    repr: WitError,
    /// Set by [`Error::permanent`]: a retry would fail the same way.
    permanent: bool,
}

impl Error {
    /// An error carrying `message`, recorded as the task's failure reason.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error {
            repr: WitError::Failed(message.to_string()),
            permanent: false,
        }
    }

    /// A failure a retry would not cure (bad input, a refused credential):
    /// returned from a factory, the task is not retried, whatever its
    /// retry policy.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Error {
            repr: WitError::Failed(message.to_string()),
            permanent: true,
        }
    }

    /// Whether this error stops a task's retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The error a host call returns while the task is being cancelled.
    /// Returning it from a factory tells the host the task honoured the
    /// cancellation.
    pub fn cancelled() -> Self {
        Error {
            repr: WitError::Cancelled,
            permanent: false,
        }
    }

    /// True when this error means "the task is being cancelled".
    pub fn is_cancelled(&self) -> bool {
        matches!(self.repr, WitError::Cancelled)
    }

    /// What kind of error this is, for code that handles some kinds.
    pub fn kind(&self) -> ErrorKind {
        match &self.repr {
            WitError::Cancelled => ErrorKind::Cancelled,
            WitError::UnknownFactory(_) => ErrorKind::UnknownFactory,
            WitError::InvalidArgs(_) => ErrorKind::InvalidArgs,
            WitError::Failed(_) => ErrorKind::Failed,
            WitError::NotFound(_) => ErrorKind::NotFound,
            WitError::DuplicateName(_) => ErrorKind::DuplicateName,
            WitError::UnknownPlugin(_) => ErrorKind::UnknownPlugin,
            WitError::Limit(_) => ErrorKind::Limit,
        }
    }

    pub(crate) fn from_wit(repr: WitError) -> Self {
        Error {
            repr,
            permanent: false,
        }
    }

    pub(crate) fn into_wit(self) -> WitError {
        self.repr
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::msg(message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            WitError::Cancelled => f.write_str("cancelled"),
            WitError::UnknownFactory(name) => write!(f, "unknown factory `{name}`"),
            WitError::InvalidArgs(message) | WitError::Failed(message) => f.write_str(message),
            WitError::NotFound(name) => write!(f, "no task named `{name}`"),
            WitError::DuplicateName(name) => write!(f, "a task named `{name}` already exists"),
            WitError::UnknownPlugin(name) => write!(f, "no plugin named `{name}`"),
            WitError::Limit(message) => f.write_str(message),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
