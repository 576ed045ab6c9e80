//! Lines for the job's captured log.
//!
//! Unlike `println!`, these never trap when the host's log bound is reached: the host drops
//! further lines and marks the log as truncated.

use crate::__private::bindings::sluice::platform::log::{Level, write};

/// A trace-level line.
pub fn trace(message: impl AsRef<str>) {
    write(Level::Trace, message.as_ref());
}

/// A debug-level line.
pub fn debug(message: impl AsRef<str>) {
    write(Level::Debug, message.as_ref());
}

/// An info-level line.
pub fn info(message: impl AsRef<str>) {
    write(Level::Info, message.as_ref());
}

/// A warning.
pub fn warn(message: impl AsRef<str>) {
    write(Level::Warn, message.as_ref());
}

/// An error line (logging does not fail the attempt; return an [`crate::Error`] for that).
pub fn error(message: impl AsRef<str>) {
    write(Level::Error, message.as_ref());
}
