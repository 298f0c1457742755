//! Why a proxied connection ended: the reason its close log line gives, and the class the
//! metrics count it under.

use std::{fmt, io, time::Duration};

use crate::{metrics::CloseClass, TlsError};

/// One side of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The TLS client.
    Client,
    /// The backend.
    Backend,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// Why a proxied connection ended: the text of the `reason` field of the close log line.
#[derive(Debug)]
pub enum CloseReason {
    /// Both directions ended with an orderly close; `first` closed first.
    Closed {
        /// The side that closed first.
        first: Side,
    },
    /// Reading from or writing to `side` failed.
    Failed {
        /// The side whose socket failed.
        side: Side,
        /// `read` or `write`.
        op: &'static str,
        /// The error of the call.
        error: io::Error,
    },
    /// A client request could not be parsed for header injection.
    BadRequest(String),
    /// No bytes moved either way for this long.
    Idle(Duration),
    /// A request head (to a backend that gets forwarding headers) did not arrive whole
    /// within this long of its first byte.
    HeadTimeout(Duration),
    /// The TLS handshake did not complete.
    Handshake(TlsError),
    /// The TLS handshake did not complete in time.
    HandshakeTimeout(Duration),
    /// Every connect attempt failed; the last failure is named.
    BackendsFailed {
        /// Connect attempts made.
        attempts: u32,
        /// The backend of the last attempt, as written in the configuration.
        backend: String,
        /// How the last attempt failed (`refused the connection`, `timed out`, …).
        failure: String,
    },
    /// Every backend is dead and none is due for a probe.
    NoLiveBackend,
    /// The client's connection ended without TLS close_notify before it sent a byte: a
    /// probe, a health check, a preconnect never used. Its backend connection, if one was
    /// made, may be kept unused for another client (`balance.spare_connections`). Counted as
    /// a client error, as any connection cut without close_notify.
    ClientLeft,
}

/// Plain words for an I/O error on `side`.
fn describe_io(side: Side, op: &str, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionReset => format!("{side} reset the connection"),
        io::ErrorKind::BrokenPipe => format!("{side} went away while we were writing to it"),
        io::ErrorKind::UnexpectedEof if side == Side::Client => {
            "client closed the connection without TLS close_notify (truncated)".to_owned()
        }
        _ => format!("{side} {op} failed: {error}"),
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed { first } => write!(f, "{first} closed first, then the other side"),
            CloseReason::Failed { side, op, error } => f.write_str(&describe_io(*side, op, error)),
            CloseReason::BadRequest(why) => write!(f, "bad request from client: {why}"),
            CloseReason::Idle(after) => write!(f, "idle for {} s", after.as_secs_f64()),
            CloseReason::HeadTimeout(after) => write!(
                f,
                "request head not complete within {} s of its first byte",
                after.as_secs_f64()
            ),
            CloseReason::Handshake(error) => write!(f, "{error}"),
            CloseReason::HandshakeTimeout(after) => {
                write!(f, "TLS handshake timed out after {} ms", after.as_millis())
            }
            CloseReason::BackendsFailed {
                attempts,
                backend,
                failure,
            } => write!(
                f,
                "backend {backend} {failure} (after {attempts} connect attempts)"
            ),
            CloseReason::NoLiveBackend => f.write_str("no live backend (all marked dead)"),
            CloseReason::ClientLeft => {
                f.write_str("client left before sending anything (closed without close_notify)")
            }
        }
    }
}

/// Bytes moved and the reason a pumped connection ended.
#[derive(Debug)]
pub struct PumpOutcome {
    /// Client → backend bytes (as read from the client).
    pub upstream: u64,
    /// Backend → client bytes.
    pub downstream: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

impl CloseReason {
    /// The metrics class of this reason.
    pub fn class(&self) -> CloseClass {
        match self {
            CloseReason::Closed { .. } => CloseClass::Closed,
            CloseReason::ClientLeft => CloseClass::ClientError,
            CloseReason::Failed {
                side: Side::Client, ..
            } => CloseClass::ClientError,
            CloseReason::Failed {
                side: Side::Backend,
                ..
            } => CloseClass::BackendError,
            CloseReason::BadRequest(_) => CloseClass::BadRequest,
            CloseReason::Idle(_) | CloseReason::HeadTimeout(_) => CloseClass::Idle,
            CloseReason::Handshake(_) => CloseClass::HandshakeFailed,
            CloseReason::HandshakeTimeout(_) => CloseClass::HandshakeTimeout,
            CloseReason::BackendsFailed { .. } | CloseReason::NoLiveBackend => {
                CloseClass::BackendUnavailable
            }
        }
    }
}
