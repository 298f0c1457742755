//! What the session store's two clients share — the store thread
//! ([`crate::session_store`]) and the cores' own connections ([`crate::store_link`]): the
//! answer to a lookup, and whether the store answers (logged once per outage and recovery).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

/// How long connecting to the store may take (both clients).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A store that has not answered a command for this long is treated as gone (both clients).
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait before connecting again after the store went away; it doubles up to
/// [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest wait between attempts to connect again.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Lookups waiting at most: for the client thread (all cores of a process together), and for
/// each core's own connection; more are answered `Refused` at once.
pub const LOOKUP_QUEUE: usize = 4096;

/// What a lookup came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The store held this (sealed) value.
    Found(Vec<u8>),
    /// The store holds nothing under that ID.
    Missing,
    /// No answer within the timeout.
    TimedOut,
    /// The store could not be asked (down, or an error answer).
    Failed,
    /// Too many lookups were waiting: not asked.
    Refused,
}

/// Whether the store answers, shared by the client thread and the cores' own links: an outage
/// is logged once, and so is the recovery; error answers at most once a minute.
#[derive(Debug)]
pub(crate) struct Health {
    url: String,
    /// Which connections: the store thread's, or the cores' own.
    via: &'static str,
    up: AtomicBool,
    /// When an error answer was last logged.
    last_error_logged: Mutex<Option<Instant>>,
}

impl Health {
    pub(crate) fn new(url: &str, via: &'static str) -> Self {
        Self {
            url: url.to_owned(),
            via,
            up: AtomicBool::new(true),
            last_error_logged: Mutex::new(None),
        }
    }

    /// An exchange with the store worked.
    pub(crate) fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(store = %self.url, via = self.via, "session store reachable again: sessions are shared across boxes");
        }
    }

    /// The store cannot be reached (connection trouble, not an error answer).
    pub(crate) fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(store = %self.url, via = self.via, error = why, "session store unreachable: clients resuming by session ID from other boxes get full handshakes until it is back");
        }
    }

    /// The store answered a command with an error (a full Redis refusing writes, a key of
    /// another type): logged at most once a minute, so a store that answers reads but refuses
    /// writes does not flood the log.
    pub(crate) fn error_answer(&self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut last = self
            .last_error_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(store = %self.url, via = self.via, %error, "session store answered with an error (logged at most once a minute)");
        }
    }
}
