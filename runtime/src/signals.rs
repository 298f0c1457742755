//! Process signals taken synchronously: blocked in the calling thread (and so in every thread it
//! starts later), then waited for with `sigwait` by one thread, so that no handler runs in the
//! middle of an engine's work. Call these before starting other threads.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

pub use nix::sys::signal::{SigSet, Signal};

/// A signal set could not be blocked, or its thread not started.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `pthread_sigmask` refused.
    #[error("blocking {signals:?}: {source}")]
    Block {
        /// The signals asked for.
        signals: Vec<Signal>,
        /// The system's answer.
        source: nix::Error,
    },
    /// The thread that waits for the signals could not start.
    #[error("starting the thread that waits for {signals:?}: {source}")]
    Thread {
        /// The signals it would have waited for.
        signals: Vec<Signal>,
        /// The system's answer.
        source: std::io::Error,
    },
}

/// Blocks `signals` in the calling thread (and the threads it starts later), so that only a
/// thread waiting on the returned set receives them.
pub fn block(signals: &[Signal]) -> Result<SigSet, SignalError> {
    let mut set = SigSet::empty();
    for signal in signals {
        set.add(*signal);
    }
    set.thread_block().map_err(|source| SignalError::Block {
        signals: signals.to_vec(),
        source,
    })?;
    Ok(set)
}

/// Blocks `signals` here and calls `on_signal` with each one that arrives, on a thread of its
/// own, until `on_signal` returns false.
pub fn handle(
    signals: &[Signal],
    mut on_signal: impl FnMut(Signal) -> bool + Send + 'static,
) -> Result<(), SignalError> {
    let set = block(signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if !on_signal(signal) {
                    return;
                }
            }
        })
        .map_err(|source| SignalError::Thread {
            signals: signals.to_vec(),
            source,
        })?;
    Ok(())
}

/// Blocks SIGINT and SIGTERM here; the returned flag is set when one of them arrives.
pub fn stop_flag() -> Result<Arc<AtomicBool>, SignalError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    handle(&[Signal::SIGINT, Signal::SIGTERM], move |_| {
        flag.store(true, Ordering::Relaxed);
        false
    })?;
    Ok(stop)
}
