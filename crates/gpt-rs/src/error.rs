//! The engine's one error type. Each variant maps to the Python exception a user expects.

/// Errors raised by the engine. Messages name the operation and the shapes or values involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Wrong shape or rank (Python `ValueError`).
    #[error("{0}")]
    Shape(String),
    /// A bad value: out-of-range index, bad argument (Python `ValueError`).
    #[error("{0}")]
    Value(String),
    /// Wrong dtype or type (Python `TypeError`).
    #[error("{0}")]
    DType(String),
    /// A number that does not fit the target type (Python `OverflowError`).
    #[error("{0}")]
    Overflow(String),
    /// A file that cannot be read (Python `OSError`).
    #[error("{0}")]
    Io(String),
    /// A file that does not exist (Python `FileNotFoundError`).
    #[error("{0}")]
    NotFound(String),
    /// An allocation the OS refused, or a size that cannot exist (Python `MemoryError`).
    /// The message names what was being allocated and the bytes asked for.
    #[error("{0}")]
    Memory(String),
    /// The user interrupted a long operation (Python `KeyboardInterrupt`).
    #[error("interrupted")]
    Interrupted,
    /// A full queue, or a server shutting down: try again later (Python `RuntimeError`;
    /// HTTP 503 with Retry-After).
    #[error("{0}")]
    Busy(String),
    /// A backend that is not available (Python `RuntimeError`).
    #[error("{0}")]
    Backend(String),
    /// An internal failure that is not the caller's fault (Python `RuntimeError`).
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// `Err(Error::Shape(format!(...)))`, for brevity in validation code.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Shape(format!($($arg)*))) };
}

/// `Err(Error::Value(format!(...)))`.
#[macro_export]
macro_rules! value_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Value(format!($($arg)*))) };
}
