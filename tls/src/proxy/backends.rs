//! The backends of a frontend: backend groups (global and per SNI context), each core's
//! balancers, the lease a connection holds on its backend, connecting with retries, and the
//! active health probes.

use std::{
    cell::RefCell,
    io,
    ops::Range,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use fastedge_runtime::net::{TcpStream, UnixStream};
use fastedge_wire::balance::{Balancer, Health, HealthChange};
use futures_io::{AsyncRead, AsyncWrite};

use super::CloseReason;
use crate::{
    config::{BackendAddr, BackendSpec, BalanceSettings, FrontendSettings, SniContext},
    metrics::{CoreMetrics, SpareDropped},
    HelloChoice, ServerContext,
};

/// The shortest wait before a client picks again while every backend is being probed.
const MIN_PROBE_WAIT: Duration = Duration::from_millis(20);

/// Milliseconds on a clock of this process, in the 4 bytes a [`Lease`] has for its connect
/// time. It wraps after 49 days: only differences of moments under that apart are taken.
fn millis(at: Instant) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Truncated on purpose: the clock wraps (see above).
    at.saturating_duration_since(epoch).as_millis() as u32
}

/// What every core serves a frontend with: read-only, shared by all cores.
#[derive(Debug)]
pub struct Frontend {
    /// Counts configuration loads: a core rebuilds its balancer when this changes.
    pub generation: u64,
    /// The TLS contexts (default and SNI) built from the configuration.
    pub context: ServerContext,
    /// Listener and client-side settings.
    pub settings: FrontendSettings,
    /// Backend choice, retries and health.
    pub balance: BalanceSettings,
    /// Every backend: the global ones (at least one) first, then each SNI context's own.
    pub backends: Vec<BackendSpec>,
    /// Backend groups as ranges of `backends`; group 0 is the global one.
    pub groups: Vec<Range<usize>>,
    /// The group of each SNI context (0 for a context without backends of its own).
    pub context_groups: Vec<usize>,
}

impl Frontend {
    /// A frontend over the global `backends` (at least one) and the SNI `contexts`' own.
    pub fn new(
        generation: u64,
        context: ServerContext,
        settings: FrontendSettings,
        balance: BalanceSettings,
        mut backends: Vec<BackendSpec>,
        contexts: &[SniContext],
    ) -> Self {
        let mut groups = Vec::with_capacity(contexts.len() + 1);
        groups.push(0..backends.len());
        let mut context_groups = Vec::with_capacity(contexts.len());
        for c in contexts {
            if c.backends.is_empty() {
                context_groups.push(0);
            } else {
                let start = backends.len();
                backends.extend(c.backends.iter().cloned());
                context_groups.push(groups.len());
                groups.push(start..backends.len());
            }
        }
        Self {
            generation,
            context,
            settings,
            balance,
            backends,
            groups,
            context_groups,
        }
    }

    /// The backend group for a connection whose ClientHello chose `choice`.
    pub(super) fn group_of(&self, choice: Option<HelloChoice>) -> usize {
        choice
            .and_then(|c| c.context)
            .and_then(|i| self.context_groups.get(i).copied())
            .unwrap_or(0)
    }
}

/// One core's view of the backends: its own balancer per group and health, shared by that
/// core's connections only. Each connection holds a clone: one reference count and one
/// pointer in the connection's task, no allocation.
#[derive(Debug, Clone)]
pub struct CoreBackends(Rc<CoreView>);

#[derive(Debug)]
struct CoreView {
    balancers: Box<[Rc<RefCell<Balancer>>]>,
    /// This core's metrics.
    metrics: Arc<CoreMetrics>,
    /// Backend connections clients left unused, for this core's next clients.
    spares: RefCell<Spares>,
}

/// Connected backend connections that no byte has crossed yet, kept for a next client.
#[derive(Debug)]
struct Spares {
    /// By index in `Frontend::backends`, each list oldest first, with when it was connected
    /// ([`millis`]).
    by_backend: Box<[Vec<(TcpStream, u32)>]>,
    /// At most this many in each list (`balance.spare_connections`).
    cap: usize,
    /// Each is closed this long after its connect (`balance.spare_max_age`), in milliseconds.
    max_age: u32,
    /// Whether the task that closes expired spares is running.
    sweeping: bool,
}

/// Whether a spare made at `made` is past `max_age` at `now` (all [`millis`]).
fn expired(max_age: u32, made: u32, now: u32) -> bool {
    now.wrapping_sub(made) >= max_age
}

impl CoreBackends {
    /// Fresh balancers (all backends alive) over `frontend`'s backend groups, counting into
    /// `metrics`, this core's metrics.
    pub fn new(frontend: &Frontend, metrics: Arc<CoreMetrics>) -> Self {
        for backend in &frontend.backends {
            metrics.backend_health(&backend.name, true);
        }
        let balancers = frontend
            .groups
            .iter()
            .map(|range| {
                Rc::new(RefCell::new(Balancer::new(
                    frontend.balance.mode,
                    frontend.balance.health,
                    range.len(),
                )))
            })
            .collect();
        let spares = RefCell::new(Spares {
            by_backend: frontend.backends.iter().map(|_| Vec::new()).collect(),
            cap: frontend.balance.spare_connections,
            max_age: u32::try_from(frontend.balance.spare_max_age.as_millis()).unwrap_or(u32::MAX),
            sweeping: false,
        });
        Self(Rc::new(CoreView {
            balancers,
            metrics,
            spares,
        }))
    }

    /// Keeps `stream`, a connection of `lease` that no byte has crossed either way (its client
    /// left before sending one, or its handshake failed), for this core's next client of that
    /// backend, until `balance.spare_max_age` after its connect: an abandoned handshake then
    /// costs the backend no connection of its own. Closes it instead when it is that old
    /// already, when the backend has `balance.spare_connections` kept, and for UNIX stream
    /// connections (cheap to make).
    pub(super) fn keep_spare(&self, stream: BackendStream, lease: Lease) {
        let BackendStream::Tcp(stream) = stream else {
            return;
        };
        let now = millis(fastedge_runtime::now());
        let sweep = {
            let mut spares = self.0.spares.borrow_mut();
            let (cap, old) = (spares.cap, expired(spares.max_age, lease.made, now));
            match spares.by_backend.get_mut(lease.index()) {
                Some(list) if cap > 0 && !old => {
                    if list.len() >= cap {
                        // The oldest goes: the newest are taken first and live longest.
                        list.remove(0);
                        self.0.metrics.spare_dropped(SpareDropped::Evicted);
                    }
                    list.push((stream, lease.made));
                    self.0.metrics.spare_kept();
                    !std::mem::replace(&mut spares.sweeping, true)
                }
                _ => false,
            }
        };
        if sweep {
            fastedge_runtime::spawn_detached(sweep_spares(self.clone()));
        }
    }

    /// Whether connections are kept at all (`balance.spare_connections` is not 0).
    pub(super) fn keeps_spares(&self) -> bool {
        self.0.spares.borrow().cap > 0
    }

    /// The newest kept connection to backend `index` that is not past its time and on which
    /// the backend has said nothing (no bytes, no close: [`TcpStream::is_quiet`]), with when it
    /// was connected; the others are closed on the way.
    fn take_spare(&self, index: usize) -> Option<(BackendStream, u32)> {
        let now = millis(fastedge_runtime::now());
        let mut spares = self.0.spares.borrow_mut();
        let max_age = spares.max_age;
        let list = spares.by_backend.get_mut(index)?;
        while let Some((stream, made)) = list.pop() {
            let why = if expired(max_age, made, now) {
                SpareDropped::Expired
            } else if !stream.is_quiet() {
                SpareDropped::Stale
            } else {
                self.0.metrics.spare_taken();
                return Some((BackendStream::Tcp(stream), made));
            };
            self.0.metrics.spare_dropped(why);
        }
        None
    }

    /// This core's metrics.
    pub(super) fn metrics(&self) -> &Arc<CoreMetrics> {
        &self.0.metrics
    }

    /// This core's balancer of backend group `group`.
    fn balancer(&self, group: usize) -> &Rc<RefCell<Balancer>> {
        &self.0.balancers[group]
    }
}

/// Closes the spares of `core` as they expire, waking when the first of them does; ends
/// when none is left.
async fn sweep_spares(core: CoreBackends) {
    // The first one kept expires no later than this.
    let mut next = core.0.spares.borrow().max_age;
    loop {
        fastedge_runtime::sleep(Duration::from_millis(u64::from(next.max(1)))).await;
        let now = millis(fastedge_runtime::now());
        let mut spares = core.0.spares.borrow_mut();
        let max_age = spares.max_age;
        // The least time any kept connection has left.
        let mut least = None::<u32>;
        for list in spares.by_backend.iter_mut() {
            list.retain(|(_, made)| {
                let old = expired(max_age, *made, now);
                if old {
                    core.0.metrics.spare_dropped(SpareDropped::Expired);
                }
                !old
            });
            for (_, made) in list.iter() {
                let left = max_age - now.wrapping_sub(*made);
                least = Some(least.map_or(left, |least| least.min(left)));
            }
        }
        match least {
            Some(left) => next = left,
            None => {
                spares.sweeping = false;
                return;
            }
        }
    }
}

/// A backend chosen by the balancer for one connection; tells the balancer how the pick ended,
/// on every path: dropped while connecting (the connect task was cancelled) it is abandoned, so
/// a probe it carried does not stay in flight for good.
pub(super) struct Lease {
    balancer: Rc<RefCell<Balancer>>,
    /// Index in the group's balancer.
    slot: u32,
    /// Index in `Frontend::backends`.
    index: u32,
    /// When the connection was made ([`millis`]); it may have served other clients before.
    made: u32,
    state: LeaseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Connecting,
    Connected,
    /// The balancer was told already (a failed connect).
    Settled,
}

impl Lease {
    /// Picked `slot` (index `index` in `Frontend::backends`) of `balancer`; connecting.
    fn new(balancer: &Rc<RefCell<Balancer>>, slot: usize, index: usize) -> Self {
        // Both index a configuration's backends, which config loading bounds far below.
        let narrow = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        Self {
            balancer: balancer.clone(),
            slot: narrow(slot),
            index: narrow(index),
            made: 0,
            state: LeaseState::Connecting,
        }
    }

    /// The backend's index in `Frontend::backends`.
    pub(super) fn index(&self) -> usize {
        self.index as usize
    }

    /// The connect succeeded (or a spare made at `made` stands in for it): the balancer learns
    /// it; the lease now ends with a close.
    fn connected(&mut self, made: u32) -> Option<HealthChange> {
        self.state = LeaseState::Connected;
        self.made = made;
        self.balancer.borrow_mut().connected(self.slot as usize)
    }

    /// The connect failed at `now`: the balancer learns it (instead of a close).
    fn failed(mut self, now: Instant) -> Option<HealthChange> {
        self.state = LeaseState::Settled;
        self.balancer
            .borrow_mut()
            .connect_failed(self.slot as usize, now)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut balancer = self.balancer.borrow_mut();
        match self.state {
            LeaseState::Connecting => balancer.abandoned(self.slot as usize),
            LeaseState::Connected => balancer.closed(self.slot as usize),
            LeaseState::Settled => {}
        }
    }
}

/// Logs a health change of backend `slot` of the group starting at `base`.
fn log_health(
    frontend: &Frontend,
    metrics: &CoreMetrics,
    base: usize,
    change: Option<HealthChange>,
) {
    let change = change.map(|c| match c {
        HealthChange::Died(slot) => HealthChange::Died(base + slot),
        HealthChange::Revived(slot) => HealthChange::Revived(base + slot),
    });
    match change {
        Some(HealthChange::Died(i)) => {
            metrics.backend_health(&frontend.backends[i].name, false);
            tracing::warn!(
            backend = %frontend.backends[i].name,
            revive_in_ms = frontend.balance.health.revive_interval.as_millis() as u64,
            "backend marked dead on this core"
            )
        }
        Some(HealthChange::Revived(i)) => {
            metrics.backend_health(&frontend.backends[i].name, true);
            tracing::info!(backend = %frontend.backends[i].name, "backend alive again on this core")
        }
        None => {}
    }
}

/// A connected backend: TCP or a UNIX stream socket.
#[derive(Debug)]
pub enum BackendStream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A UNIX stream connection.
    Unix(UnixStream),
}

impl BackendStream {
    /// Connects to `addr`.
    pub async fn connect(addr: &BackendAddr) -> io::Result<Self> {
        match addr {
            BackendAddr::Tcp(addr) => {
                let stream = TcpStream::connect(*addr).await?;
                let _ = stream.set_nodelay(true);
                Ok(Self::Tcp(stream))
            }
            BackendAddr::Unix(path) => Ok(Self::Unix(UnixStream::connect(path).await?)),
        }
    }
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_close(cx),
            BackendStream::Unix(s) => Pin::new(s).poll_close(cx),
        }
    }
}

/// Active health check: connects to every backend once (with the connect timeout) and tells
/// this core's balancer how it went.
pub async fn probe_backends(frontend: &Frontend, core: &CoreBackends) {
    for (group, range) in frontend.groups.iter().enumerate() {
        let balancer = core.balancer(group);
        for (slot, spec) in frontend.backends[range.clone()].iter().enumerate() {
            let ok = matches!(
                fastedge_runtime::timeout(
                    frontend.balance.connect_timeout,
                    BackendStream::connect(&spec.addr)
                )
                .await,
                Ok(Ok(_))
            );
            let change = if ok {
                balancer.borrow_mut().probe_succeeded(slot)
            } else {
                core.metrics().backend_connect_failed(&spec.name);
                balancer.borrow_mut().probe_failed(slot, Instant::now())
            };
            log_health(frontend, core.metrics(), range.start, change);
        }
    }
}

/// Connects to a backend of `group`, retrying over its backends as the balancer picks them;
/// while every backend is dead and being probed, waits for a verdict within `connect_timeout`
/// (counted from the start) rather than failing the client at once.
pub(super) async fn connect_backend(
    frontend: Arc<Frontend>,
    core: CoreBackends,
    group: usize,
) -> Result<(BackendStream, Lease), CloseReason> {
    let settings = &frontend.balance;
    let base = frontend.groups[group].start;
    let balancer = core.balancer(group);
    let mut tried = Vec::new();
    let mut last = None;
    let attempts = settings.max_retries.saturating_add(1);
    let started = Instant::now();
    let mut attempt = 0;
    let mut after_failure = false;
    while attempt < attempts {
        if after_failure && !settings.retry_interval.is_zero() {
            fastedge_runtime::sleep(settings.retry_interval).await;
        }
        after_failure = true;
        let now = Instant::now();
        let picked = {
            let mut balancer = balancer.borrow_mut();
            balancer.pick(now, &tried).or_else(|| {
                // Every backend failed for this connection once already: go round again.
                tried.clear();
                balancer.pick(now, &[])
            })
        };
        let Some(slot) = picked else {
            // Every backend is dead and being probed: wait for a probe's verdict (a success
            // revives the backend for us too) while the connect budget lasts, instead of
            // failing the client at once.
            let wait = settings.retry_interval.max(MIN_PROBE_WAIT);
            let budget_left = settings
                .connect_timeout
                .saturating_sub(now.saturating_duration_since(started));
            if !frontend.groups[group].is_empty() && wait < budget_left {
                fastedge_runtime::sleep(wait).await;
                after_failure = false;
                continue;
            }
            return Err(match last {
                None => CloseReason::NoLiveBackend,
                Some((backend, failure)) => CloseReason::BackendsFailed {
                    attempts: attempt,
                    backend,
                    failure,
                },
            });
        };
        let mut lease = Lease::new(balancer, slot, base + slot);
        // A spare only stands in for a connect to a backend in good health: a pick that probes a
        // failing or dead one must make a connection of its own to revive it.
        let healthy = matches!(balancer.borrow().health(slot), Some(Health::Alive));
        if let Some((stream, made)) = healthy.then(|| core.take_spare(base + slot)).flatten() {
            let change = lease.connected(made);
            log_health(&frontend, core.metrics(), base, change);
            return Ok((stream, lease));
        }
        let spec = &frontend.backends[base + slot];
        let failure = match fastedge_runtime::timeout(
            settings.connect_timeout,
            BackendStream::connect(&spec.addr),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let change = lease.connected(millis(fastedge_runtime::now()));
                log_health(&frontend, core.metrics(), base, change);
                return Ok((stream, lease));
            }
            Ok(Err(error)) => describe_connect_error(error),
            Err(_) => format!(
                "did not accept the connection within {} ms",
                settings.connect_timeout.as_millis()
            ),
        };
        tracing::debug!(backend = %spec.name, attempt, %failure, "backend connect failed");
        core.metrics().backend_connect_failed(&spec.name);
        log_health(
            &frontend,
            core.metrics(),
            base,
            lease.failed(Instant::now()),
        );
        tried.push(slot);
        last = Some((spec.name.clone(), failure));
        attempt += 1;
    }
    let (backend, failure) = last.unwrap_or_else(|| ("-".into(), "no attempt made".into()));
    Err(CloseReason::BackendsFailed {
        attempts,
        backend,
        failure,
    })
}

fn describe_connect_error(error: io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "refused the connection".to_owned(),
        io::ErrorKind::TimedOut => "did not answer (connect timed out)".to_owned(),
        _ => format!("connect failed: {error}"),
    }
}
