//! The thread-per-core runtime of fastedge.
//!
//! Owns: CPU lists ([`CpuList`]), one pinned executor per CPU ([`Executors`]) on either
//! engine ([`Engine`]): fastedge's own io_uring engine ([`uring`], the default) or glommio,
//! SO_REUSEPORT listeners bound before the executors start ([`bind_reuseport`]), a cross-thread
//! stop signal ([`Shutdown`]), process signals taken by a thread of their own ([`signals`]),
//! a metrics registry that other crates register their metrics with, rendered and served as
//! Prometheus text ([`metrics`]), per-core connection caps ([`ConnectionLimit`]), process
//! set-up (open-files limit, privilege drop, pid file), passing listening sockets to a new binary
//! ([`handover`]), service-manager notifications
//! ([`notify`]), the log set-up ([`logging`]: text or JSON, stderr or syslog via
//! [`SyslogWriter`]), the JSON-lines control socket
//! ([`control`]), and the network types the other crates use ([`net`]), so that only this
//! crate names an engine.
//!
//! Never does: TLS (`fastedge-tls`), packet I/O (`fastedge-rings`), wire formats
//! (`fastedge-wire`). It knows nothing of proxies: it moves bytes and runs tasks, and `serve`
//! registers its own metrics with the registry.
//!
//! # Example
//!
//! One executor per listed CPU, each running its own future to completion; the results come
//! back in CPU-list order.
//!
//! ```
//! use std::time::Duration;
//!
//! use fastedge_runtime::{CpuList, Executors};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cpus = CpuList::available()?; // every CPU this process may use; or "0-3".parse()?
//! let executors = Executors::spawn("demo", &cpus, |core| {
//!     // Runs here, once per CPU: hand each core its own resources.
//!     move || async move {
//!         // Runs on the executor's thread, pinned to `core.cpu`.
//!         fastedge_runtime::sleep(Duration::from_millis(1)).await;
//!         fastedge_runtime::pinned_cpu()
//!     }
//! })?;
//! for (core, pinned) in executors.join()? {
//!     assert_eq!(pinned, Some(core.cpu));
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod control;
mod cpus;
mod engine;
mod executors;
pub mod handover;
mod limit;
mod listen;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod notify;
mod process;
mod shutdown;
pub mod signals;
mod syslog;
pub mod uring;

use std::{net::SocketAddr, time::Duration};

pub use cpus::{CpuList, CpuListError};
pub use engine::{
    current as current_engine, now, sleep, sleep_until, spawn, spawn_detached, timeout, Engine,
    JoinHandle, Sleep, UnknownEngine,
};
pub use executors::{pinned_cpu, Core, Executors};
pub use limit::{ConnectionLimit, ConnectionPermit};
pub use listen::{bind_reuseport, BoundListener, DEFAULT_BACKLOG};
pub use process::{
    detach, drop_privileges, raise_nofile_limit, spawn_successor, PidFile, ProcessError,
};
pub use shutdown::Shutdown;
pub use syslog::SyslogWriter;

/// A deadline passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("timed out after {} ms", .0.as_millis())]
pub struct TimedOut(pub Duration);

/// Errors of the runtime, each naming the CPU or address involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// An executor thread could not be started or pinned.
    #[error("starting the executor for CPU {cpu}: {reason}")]
    Executor {
        /// The CPU it was for.
        cpu: usize,
        /// What failed.
        reason: String,
    },
    /// Binding or listening on an address failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error of the call.
        source: std::io::Error,
    },
}
