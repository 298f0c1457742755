//! What runs on each executor of the terminator: the accept loops (one per listen address), the
//! active health checks, this core's balancers (rebuilt after a reload), and the drain at stop.

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use fastedge_runtime::{BoundListener, ConnectionLimit, Core, Shutdown};

use crate::{
    metrics::{CloseClass, CoreMetrics},
    proxy::{probe_backends, serve_connection, CoreBackends, Frontend},
};

/// After a binary upgrade, how long the old process goes on taking connections once none came
/// for this long: the engine may hold or be about to deliver some (io_uring's multishot accept
/// runs ahead of the executor), and serving them beats closing them.
const HANDOVER_QUIET: Duration = Duration::from_millis(50);
/// After a binary upgrade, the longest the old process goes on taking connections.
const HANDOVER_LINGER: Duration = Duration::from_secs(1);
/// How long accepting pauses after a failure such as EMFILE.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long after its last failure an accept pause counts as over.
const ACCEPT_CALM: Duration = Duration::from_secs(1);

/// What each executor takes for itself at start: its listeners, bound before it started.
#[derive(Debug)]
pub(super) struct CoreSetup {
    /// One SO_REUSEPORT socket per listen address.
    pub frontends: Vec<FrontendSocket>,
    /// This core's socket of the demo backend, when it runs.
    pub demo: Option<BoundListener>,
}

/// A listening socket of the frontend, and where it came from.
#[derive(Debug)]
pub(super) struct FrontendSocket {
    pub listener: BoundListener,
    /// Taken from a predecessor (rather than bound by this process).
    pub taken: bool,
}

/// This core's balancers, tagged with the configuration generation they were made for.
type BackendSlot = Rc<RefCell<Option<(u64, CoreBackends)>>>;

/// The main future of one executor: serves until `shutdown`, then drains for the configured
/// `drain_timeout` and returns.
pub(super) async fn run_core(
    core: Core,
    setup: CoreSetup,
    current: Arc<ArcSwap<Frontend>>,
    metrics: Arc<CoreMetrics>,
    max_connections: u32,
    shutdown: Shutdown,
    sockets: SocketFate,
) {
    let demo_open = ConnectionLimit::new(u32::MAX);
    if let Some(demo) = setup.demo {
        match demo.into_listener() {
            Ok(demo) => {
                let (stop, open) = (shutdown.clone(), demo_open.clone());
                fastedge_runtime::spawn_detached(super::demo::run(demo, core, stop, open));
            }
            Err(error) => tracing::error!(%error, "demo backend listener"),
        }
    }
    let limit = ConnectionLimit::new(max_connections);
    let backends: BackendSlot = Rc::new(RefCell::new(None));
    fastedge_runtime::spawn_detached(health_check_loop(
        current.clone(),
        backends.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let mut accepting = Vec::new();
    for socket in setup.frontends {
        accepting.push(fastedge_runtime::spawn(accept_loop(
            socket,
            current.clone(),
            backends.clone(),
            metrics.clone(),
            limit.clone(),
            shutdown.clone(),
            sockets.clone(),
        )));
    }
    for task in accepting {
        task.await;
    }
    let drain_timeout = current.load().settings.drain_timeout;
    let deadline = Instant::now() + drain_timeout;
    let open = limit.open();
    if open > 0 {
        tracing::info!(cpu = core.cpu, open, "draining open connections");
        let left = limit.drain(drain_timeout).await;
        if left > 0 {
            tracing::warn!(cpu = core.cpu, left, "drain timeout: closing connections");
        }
    }
    // Demo backend connections of this core may serve other cores' clients: they go last,
    // within the same deadline.
    let remaining = deadline.saturating_duration_since(Instant::now());
    demo_open.drain(remaining).await;
}

async fn accept_loop(
    FrontendSocket { listener, taken }: FrontendSocket,
    current: Arc<ArcSwap<Frontend>>,
    core_backends: BackendSlot,
    metrics: Arc<CoreMetrics>,
    limit: ConnectionLimit,
    shutdown: Shutdown,
    sockets: SocketFate,
) {
    // Accepted connections inherit TCP_NODELAY from their listener, which has it from before
    // it listened (`bind_reuseport`): no system call per connection. A socket taken from a
    // predecessor that did not set it gets it per connection (what waited in its queue
    // arrived without it).
    let nodelay_inherited = listener.nodelay().unwrap_or(false);
    if !nodelay_inherited {
        let _ = listener.set_nodelay(true);
    }
    let listener = match listener.into_listener() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "listener could not join this core's executor");
            return;
        }
    };
    let local_default = listener.local_addr().ok();
    // A socket bound to one address accepts connections to that address only: their local
    // address needs no system call of its own (a wildcard's does).
    let local_fixed = local_default.filter(|addr| !addr.ip().is_unspecified());
    let mut paused: Option<(Instant, u32)> = None;
    let serve = |stream: fastedge_runtime::net::TcpStream, permit| {
        let local = local_fixed.or_else(|| stream.local_addr().ok().or(local_default));
        let (Ok(peer), Some(local)) = (stream.peer_addr(), local) else {
            // Reset before we looked (getpeername says ENOTCONN): still a connection accepted
            // and closed by a client error, as the metrics must say.
            tracing::debug!("connection gone before it could be served");
            metrics.connection_opened();
            metrics.connection_closed(CloseClass::ClientError, 0, 0);
            return;
        };
        if !nodelay_inherited {
            let _ = stream.set_nodelay(true);
        }
        // The configuration of the moment; a reload builds this core a new balancer.
        let frontend = current.load_full();
        let backends = backends_for(&core_backends, &frontend, &metrics);
        fastedge_runtime::spawn_detached(Holding {
            future: serve_connection(stream, peer, local, frontend, backends),
            permit: Some(permit),
        });
    };
    loop {
        // Take a slot first: at the cap, clients wait in the accept queue.
        let Some(permit) = shutdown.until(limit.acquire()).await else {
            stop_accepting(listener, taken, &limit, &sockets, &serve).await;
            return;
        };
        let accepted = shutdown.until(listener.accept()).await;
        let stream = match accepted {
            None => {
                drop(permit);
                stop_accepting(listener, taken, &limit, &sockets, &serve).await;
                return;
            }
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                // EMFILE and friends: pause accepting (one log line), retry after a pause;
                // connections wait in the kernel's accept queue meanwhile.
                match &mut paused {
                    None => {
                        tracing::warn!(%error, "accept failed: pausing accepts until it succeeds");
                        paused = Some((Instant::now(), 1));
                    }
                    Some((last, failures)) => {
                        *last = Instant::now();
                        *failures += 1;
                    }
                }
                drop(permit);
                fastedge_runtime::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        // One pause is over once accepts have gone on failing for ACCEPT_CALM: a backlog that
        // refills the descriptor table in bursts is one episode, not a log line per burst.
        if let Some((last, failures)) = paused {
            if last.elapsed() >= ACCEPT_CALM {
                tracing::info!(failures, "accepting again");
                paused = None;
            }
        }
        serve(stream, permit);
    }
}

/// What became of the listening sockets, as the accept loops see it at a stop.
#[derive(Debug, Clone)]
pub(super) struct SocketFate {
    /// A successor took them over (this process drains).
    pub(super) handed_over: Arc<AtomicBool>,
    /// The predecessor (if any) may still accept on the sockets taken from it. Stays set
    /// when its release failed: it may serve on.
    pub(super) predecessor_accepts: Arc<AtomicBool>,
    /// The sockets were sent to a successor (or began to be). Stays set when that upgrade is
    /// abandoned: the successor may hold them still.
    pub(super) sent: Arc<AtomicBool>,
}

impl SocketFate {
    /// Whether another process may accept on a socket too; `taken`: it came from the
    /// predecessor (rather than bound by this process).
    fn shared(&self, taken: bool) -> bool {
        self.sent.load(Ordering::SeqCst)
            || (taken && self.predecessor_accepts.load(Ordering::SeqCst))
    }
}

/// Ends accepting on `listener` at a stop: serves what was accepted already, then, unless
/// another process may accept on the socket too, stops it listening before the executor
/// ends, so the address is free once the terminator has stopped. A shared socket is only
/// closed here: taking it out of listening would take it from the other process.
async fn stop_accepting<F>(
    listener: fastedge_runtime::net::TcpListener,
    taken: bool,
    limit: &ConnectionLimit,
    sockets: &SocketFate,
    serve: &F,
) where
    F: Fn(fastedge_runtime::net::TcpStream, fastedge_runtime::ConnectionPermit),
{
    let handed_over = sockets.handed_over.load(Ordering::SeqCst);
    serve_already_accepted(&listener, limit, handed_over, serve).await;
    if !sockets.shared(taken) {
        if let Err(error) = listener.close() {
            tracing::warn!(%error, "listener could not be closed");
        }
    }
}

/// Serves the connections the engine accepted already (queued on the listener while this core
/// was at its cap, or arriving with the stop), over the cap: closing them would drop clients
/// whose connection the kernel completed. On a plain stop, takes what is ready now; after a
/// binary upgrade (`handed_over`), goes on until none came for [`HANDOVER_QUIET`] (at most
/// [`HANDOVER_LINGER`]), as the new process accepts on the same sockets meanwhile.
async fn serve_already_accepted<F>(
    listener: &fastedge_runtime::net::TcpListener,
    limit: &ConnectionLimit,
    handed_over: bool,
    serve: &F,
) where
    F: Fn(fastedge_runtime::net::TcpStream, fastedge_runtime::ConnectionPermit),
{
    let mut served = 0usize;
    let until = Instant::now() + HANDOVER_LINGER;
    loop {
        let accepted = if handed_over {
            fastedge_runtime::timeout(HANDOVER_QUIET, listener.accept())
                .await
                .ok()
        } else {
            futures_lite::future::poll_once(listener.accept()).await
        };
        match accepted {
            Some(Ok(stream)) => {
                serve(stream, limit.acquire_over_cap());
                served += 1;
            }
            Some(Err(_)) | None => break,
        }
        if handed_over && Instant::now() >= until {
            break;
        }
    }
    // What the engine's accept took while it was being stopped is ours to serve too.
    for stream in listener.stop_accepting().await {
        serve(stream, limit.acquire_over_cap());
        served += 1;
    }
    if served > 0 {
        tracing::info!(served, "served connections accepted before the stop");
    }
}

/// This core's balancer for `frontend`'s generation, made on first use after a reload.
fn backends_for(
    slot: &RefCell<Option<(u64, CoreBackends)>>,
    frontend: &Frontend,
    metrics: &Arc<CoreMetrics>,
) -> CoreBackends {
    let mut slot = slot.borrow_mut();
    match &*slot {
        Some((generation, backends)) if *generation == frontend.generation => backends.clone(),
        _ => {
            let backends = CoreBackends::new(frontend, metrics.clone());
            *slot = Some((frontend.generation, backends.clone()));
            backends
        }
    }
}

/// Active health checks of this core, at the configured interval (followed across reloads).
async fn health_check_loop(
    current: Arc<ArcSwap<Frontend>>,
    core_backends: BackendSlot,
    metrics: Arc<CoreMetrics>,
    shutdown: Shutdown,
) {
    loop {
        let interval = current
            .load()
            .balance
            .health_check_interval
            .unwrap_or(Duration::from_secs(1));
        if shutdown
            .until(fastedge_runtime::sleep(interval))
            .await
            .is_none()
        {
            return;
        }
        let frontend = current.load_full();
        if frontend.balance.health_check_interval.is_some() {
            let backends = backends_for(&core_backends, &frontend, &metrics);
            probe_backends(&frontend, &backends).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's future and its slot under the connection cap, released when it ends. A
    /// future type of its own, not an `async` block awaiting the connection (which would store
    /// the connection's arguments twice in its task, for as long as the connection lives).
    struct Holding<F, P> {
        #[pin]
        future: F,
        permit: Option<P>,
    }
}

impl<F: std::future::Future<Output = ()>, P> std::future::Future for Holding<F, P> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        std::task::ready!(this.future.poll(cx));
        this.permit.take();
        std::task::Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(taken: bool, predecessor_accepts: bool, sent: bool) -> bool {
        SocketFate {
            handed_over: Arc::new(AtomicBool::new(false)),
            predecessor_accepts: Arc::new(AtomicBool::new(predecessor_accepts)),
            sent: Arc::new(AtomicBool::new(sent)),
        }
        .shared(taken)
    }

    #[test]
    fn only_sockets_no_other_process_accepts_on_are_taken_out_of_listening() {
        // Bound by this process, never sent: ours alone.
        assert!(!shared(false, false, false));
        // A socket bound beside the predecessor's is ours alone, though the predecessor serves.
        assert!(!shared(false, true, false));
        // Taken from a predecessor that still accepts: shared until it is released.
        assert!(shared(true, true, false));
        assert!(!shared(true, false, false));
        // Sent to a successor: shared, whichever way it was bound.
        assert!(shared(false, false, true));
        assert!(shared(true, false, true));
    }
}
