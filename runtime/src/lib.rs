//! The thread-per-core runtime of fastedge.
//!
//! Owns: CPU lists ([`CpuList`]), one pinned glommio executor per CPU ([`Executors`]),
//! SO_REUSEPORT listeners bound before the executors start ([`bind_reuseport`]), a cross-thread
//! stop signal ([`Shutdown`]), per-core metrics rendered as Prometheus text ([`metrics`]),
//! per-core connection caps ([`ConnectionLimit`]), process set-up
//! (open-files limit, privilege drop), log lines to syslog ([`SyslogWriter`]), the JSON-lines
//! control socket ([`control`]), and the network
//! types the other crates use ([`net`]), so that only
//! this crate names glommio.
//!
//! Does not own: TLS (`fastedge-tls`), packet I/O (`fastedge-rings`), wire formats
//! (`fastedge-wire`).

pub mod control;
mod cpus;
mod executors;
mod limit;
mod listen;
pub mod metrics;
mod process;
mod shutdown;
mod syslog;

use std::{future::Future, net::SocketAddr, time::Duration};

pub use cpus::{CpuList, CpuListError};
pub use executors::{pinned_cpu, Core, Executors};
pub use limit::{ConnectionLimit, ConnectionPermit};
pub use listen::{bind_reuseport, BoundListener, DEFAULT_BACKLOG};
pub use process::{drop_privileges, raise_nofile_limit, ProcessError};
pub use shutdown::Shutdown;
pub use syslog::SyslogWriter;

/// Network types of the executors.
pub mod net {
    pub use glommio::net::{TcpListener, TcpStream, UnixStream};
}

/// Spawns `future` as a task of the calling thread's executor; await the result to join it.
/// Dropping the result cancels the task.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> impl Future<Output = T> {
    glommio::spawn_local(future)
}

/// Spawns `future` as a task of the calling thread's executor, detached: it runs to completion
/// unless the executor stops first.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// Completes after `duration`.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` with a deadline; `Err(TimedOut)` when `after` passes first.
pub async fn timeout<T>(after: Duration, future: impl Future<Output = T>) -> Result<T, TimedOut> {
    glommio::timer::timeout(after, async { Ok(future.await) })
        .await
        .map_err(|_| TimedOut(after))
}

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
