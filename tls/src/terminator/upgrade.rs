//! Binary upgrade without a dropped connection: a running terminator hands its listening
//! sockets (the same sockets, with whatever waits in their accept queues) to a new process over
//! its upgrade socket, then drains; the new process starts its executors on them.
//!
//! The old side ([`spawn_upgrade_listener`]) sends the sockets in batches
//! (`fastedge_wire::takeover`), waits for the new process's drain message, removes its upgrade
//! socket, acknowledges, stops accepting and drains. If the new process goes away before it
//! asks for the drain, the old one goes on serving and waits for the next one.
//!
//! The new side ([`receive`]) checks the description against the descriptors, turns each into
//! a listener (checking it listens), and after it serves tells the old one to drain
//! ([`Predecessor::release`]).

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    time::Duration,
};

use fastedge_runtime::{
    handover::{HandoverConn, HandoverError, HandoverSocket},
    BoundListener, Shutdown,
};
use fastedge_wire::takeover::{self, Batch, Inventory, SocketEntry, TakeoverError};

/// How long each side waits for the other's next message.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the upgrade listener looks whether the terminator stopped.
const ACCEPT_TICK: Duration = Duration::from_millis(200);

/// Why a binary upgrade failed, on either side.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The upgrade socket could not be used.
    #[error(transparent)]
    Socket(#[from] HandoverError),
    /// The peer's description of the sockets was refused.
    #[error("upgrade socket {path}: {error}")]
    Description {
        /// The upgrade socket.
        path: PathBuf,
        /// What was wrong with it.
        error: TakeoverError,
    },
    /// A descriptor received is not a listening TCP socket.
    #[error("upgrade socket {path}: socket for {addr}: {error}")]
    NotListening {
        /// The upgrade socket.
        path: PathBuf,
        /// The address it was described as.
        addr: SocketAddr,
        /// Why it cannot be used.
        error: std::io::Error,
    },
}

/// Called once when a successor took the sockets over and this terminator started draining.
pub(super) type HandedOver = Box<dyn FnOnce() + Send>;

/// The running process whose sockets this one took, until it is told to drain.
#[derive(Debug)]
pub(super) struct Predecessor {
    conn: HandoverConn,
    path: PathBuf,
    /// Its process id, as it said.
    pub pid: u32,
}

impl Predecessor {
    /// Tells the old process to drain and waits until it has let go of the upgrade socket.
    pub fn release(self) -> Result<u32, UpgradeError> {
        self.conn.send(takeover::DRAIN, &[])?;
        let (answer, _) = self.conn.recv(64)?;
        takeover::parse_draining(&answer).map_err(|error| UpgradeError::Description {
            path: self.path.clone(),
            error,
        })?;
        Ok(self.pid)
    }
}

/// The sockets taken over for one address: the address and one socket per old core.
pub(super) type Taken = (SocketAddr, Vec<BoundListener>);

/// Connects to the upgrade socket at `path` and receives every listening socket of the
/// process there: per address (in the old `frontend.listen` order), its address and sockets.
pub(super) fn receive(path: &Path) -> Result<(Predecessor, Vec<Taken>), UpgradeError> {
    let conn = HandoverConn::connect(path, PEER_TIMEOUT)?;
    let described = |error| UpgradeError::Description {
        path: path.to_owned(),
        error,
    };
    let mut inventory = Inventory::new();
    let mut received = Vec::new();
    while !inventory.is_complete() {
        let (message, fds) = conn.recv(takeover::MAX_MESSAGE)?;
        let batch = Batch::parse(&message).map_err(described)?;
        inventory.push(&batch, fds.len()).map_err(described)?;
        received.extend(batch.entries.into_iter().zip(fds));
    }
    let handover = inventory.finish().map_err(described)?;
    let mut slots: Vec<Option<(SocketEntry, std::os::fd::OwnedFd)>> =
        received.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(handover.addresses.len());
    for takeover::AddressSockets { addr, positions } in handover.addresses {
        let mut listeners = Vec::with_capacity(positions.len());
        for position in positions {
            // Positions come from the inventory of these very batches: each is in range and
            // taken once.
            let Some((_, fd)) = slots.get_mut(position).and_then(Option::take) else {
                continue;
            };
            let listener =
                BoundListener::from_fd(fd).map_err(|error| UpgradeError::NotListening {
                    path: path.to_owned(),
                    addr,
                    error,
                })?;
            if listener.local_addr() != addr {
                return Err(UpgradeError::NotListening {
                    path: path.to_owned(),
                    addr,
                    error: std::io::Error::other(format!(
                        "bound to {}, not the address described",
                        listener.local_addr()
                    )),
                });
            }
            listeners.push(listener);
        }
        out.push((addr, listeners));
    }
    let predecessor = Predecessor {
        conn,
        path: path.to_owned(),
        pid: handover.pid,
    };
    Ok((predecessor, out))
}

/// What the upgrade listener hands over: a second descriptor of every listening socket, per
/// address in `frontend.listen` order, one per core.
pub(super) type Sockets = Vec<Vec<BoundListener>>;

/// Listens on `socket` for a successor, on a thread of its own, until the terminator stops or
/// a successor took the sockets over (then `shutdown` is triggered and `handed_over` called).
pub(super) fn spawn_upgrade_listener(
    socket: HandoverSocket,
    sockets: Sockets,
    shutdown: Shutdown,
    handed_over: Option<HandedOver>,
    released: Arc<AtomicBool>,
    sent: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("fastedge-upgrade".into())
        .spawn(move || {
            let mut handed_over = handed_over;
            loop {
                if shutdown.is_triggered() {
                    return;
                }
                let conn = match socket.accept(ACCEPT_TICK, PEER_TIMEOUT) {
                    Ok(Some(conn)) => conn,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, "upgrade socket");
                        std::thread::sleep(ACCEPT_TICK);
                        continue;
                    }
                };
                // Shared from here on, before a socket is sent: a stop must not take them out
                // of listening under the successor. A stop that came first did not see this,
                // and may do so: then nothing is handed over (SeqCst on both sides).
                sent.store(true, Ordering::SeqCst);
                if shutdown.is_triggered() {
                    tracing::warn!("binary upgrade refused: this process is stopping");
                    return;
                }
                tracing::info!(socket = %socket.path().display(), "a new process takes the listening sockets over");
                match hand_over(&conn, &sockets, socket.path()) {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!(%error, "binary upgrade abandoned: still serving");
                        continue;
                    }
                }
                // The successor accepts on every socket: let go of the upgrade socket so it
                // can listen there, say so, and drain.
                released.store(true, Ordering::SeqCst);
                drop(socket);
                if let Err(error) = conn.send(takeover::DRAINING, &[]) {
                    tracing::warn!(%error, "upgrade socket: acknowledging the drain");
                }
                tracing::info!("the new process serves: draining");
                shutdown.trigger();
                if let Some(hook) = handed_over.take() {
                    hook();
                }
                return;
            }
        })
        .map(drop)
}

/// Sends every socket, then waits for the drain message.
fn hand_over(conn: &HandoverConn, sockets: &Sockets, path: &Path) -> Result<(), UpgradeError> {
    let pid = std::process::id();
    let mut all: Vec<(SocketEntry, BorrowedFd<'_>)> = Vec::new();
    for (a, per_core) in sockets.iter().enumerate() {
        for (c, listener) in per_core.iter().enumerate() {
            // Addresses and cores of one process are far below u16::MAX.
            let entry = SocketEntry {
                address_index: a as u16,
                core_index: c as u16,
                addr: listener.local_addr(),
            };
            all.push((entry, listener.as_fd()));
        }
    }
    let mut chunks = all.chunks(takeover::MAX_BATCH).peekable();
    if chunks.peek().is_none() {
        let batch = Batch {
            pid,
            last: true,
            entries: Vec::new(),
        };
        send_batch(conn, &batch, &[], path)?;
    }
    while let Some(chunk) = chunks.next() {
        let batch = Batch {
            pid,
            last: chunks.peek().is_none(),
            entries: chunk.iter().map(|(e, _)| *e).collect(),
        };
        let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|(_, fd)| *fd).collect();
        send_batch(conn, &batch, &fds, path)?;
    }
    let (message, _) = conn.recv(64)?;
    takeover::parse_drain(&message).map_err(|error| UpgradeError::Description {
        path: path.to_owned(),
        error,
    })
}

fn send_batch(
    conn: &HandoverConn,
    batch: &Batch,
    fds: &[BorrowedFd<'_>],
    path: &Path,
) -> Result<(), UpgradeError> {
    let bytes = batch.encode().map_err(|error| UpgradeError::Description {
        path: path.to_owned(),
        error,
    })?;
    conn.send(&bytes, fds)?;
    Ok(())
}

/// How long a successor waits for its predecessor to free `metrics_listen`.
const METRICS_WAIT: Duration = Duration::from_secs(3600);

/// Serves metrics on `addr` once the predecessor (which serves its own there until it exits)
/// let go of it, trying every 100 ms on a thread of its own.
pub(super) fn serve_metrics_when_free(
    addr: SocketAddr,
    registry: fastedge_runtime::metrics::Registry,
) -> std::io::Result<()> {
    tracing::info!(%addr, "metrics_listen still held by the old process: served here once it exits");
    std::thread::Builder::new()
        .name("fastedge-metrics-wait".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + METRICS_WAIT;
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(listener) => {
                        match fastedge_runtime::metrics::serve_http(listener, registry) {
                            Ok(_) => tracing::info!(%addr, "metrics listening (GET /metrics)"),
                            Err(error) => tracing::error!(%error, "starting the metrics thread"),
                        }
                        return;
                    }
                    Err(error) if std::time::Instant::now() >= deadline => {
                        tracing::error!(%addr, %error, "metrics_listen: giving up");
                        return;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map(drop)
}
