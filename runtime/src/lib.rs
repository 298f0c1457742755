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
//! ([`notify`]), log lines to syslog ([`SyslogWriter`]), the JSON-lines control socket
//! ([`control`]), and the network types the other crates use ([`net`]), so that only this
//! crate names an engine.
//!
//! Does not own: TLS (`fastedge-tls`), packet I/O (`fastedge-rings`), wire formats
//! (`fastedge-wire`).

pub mod control;
mod cpus;
mod engine;
mod executors;
pub mod handover;
mod limit;
mod listen;
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
    current as current_engine, now, sleep, spawn, spawn_detached, timeout, Engine, JoinHandle,
    UnknownEngine,
};
pub use executors::{pinned_cpu, Core, Executors};
pub use limit::{ConnectionLimit, ConnectionPermit};
pub use listen::{bind_reuseport, BoundListener, DEFAULT_BACKLOG};
pub use process::{drop_privileges, raise_nofile_limit, spawn_successor, PidFile, ProcessError};
pub use shutdown::Shutdown;
pub use syslog::SyslogWriter;

/// A deadline passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("timed out after {} ms", .0.as_millis())]
pub struct TimedOut(pub Duration);

/// Errors of the runtime, each naming the CPU or address involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("starting the executor for CPU {cpu}: {reason}")]
    Executor { cpu: usize, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
