//! Telling a service manager how the process is doing: systemd's `Type=notify` protocol
//! (`sd_notify(3)`), through the `sd-notify` crate.
//!
//! A long-running fastedge process says `READY=1` once it serves, `RELOADING=1` while a
//! reload runs (then `READY=1` again), `STOPPING=1` when it drains, a one-line `STATUS=` that
//! `systemctl status` shows, and `WATCHDOG=1` pings when the unit sets `WatchdogSec=`.
//! Without `$NOTIFY_SOCKET` (not started by a service manager) every call does nothing. A
//! failure to notify never stops the process: it is logged once.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use sd_notify::NotifyState;

/// Whether a failed notification was logged already.
static WARNED: AtomicBool = AtomicBool::new(false);

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(error) = sd_notify::notify(false, states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "cannot notify the service manager (logged once)");
        }
    }
}

/// Whether a service manager listens (`$NOTIFY_SOCKET` is set): worth computing a status line.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The process serves: `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The process serves in place of the one the service manager started (a binary upgrade):
/// `MAINPID=` this process, `READY=1` and a status line. The unit needs `NotifyAccess=all`
/// for a process other than its main one to be heard.
pub fn ready_as_main(status: &str) {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

/// A reload begins: `RELOADING=1` (send [`ready`] when it is done).
pub fn reloading() {
    send(&[
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ]);
}

/// The process drains and stops: `STOPPING=1` with why.
pub fn stopping(why: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(why)]);
}

/// A new one-line status for `systemctl status`.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// How often to ping the watchdog: half the unit's `WatchdogSec=` when the watchdog is on for
/// this process, else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    (sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
        .then(|| Duration::from_micros(usec / 2))
}

/// A watchdog ping: `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Pings the watchdog when `interval` (from [`watchdog_interval`]) has passed since the last
/// ping; for loops that come round about once a second. Keeps its own clock in `last`.
pub fn watchdog_due(interval: Option<Duration>, last: &mut Option<std::time::Instant>) {
    let Some(interval) = interval else {
        return;
    };
    let now = std::time::Instant::now();
    if last.is_none_or(|at| now.duration_since(at) >= interval) {
        *last = Some(now);
        watchdog();
    }
}
