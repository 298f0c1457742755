//! The terminator's metrics: connections, handshakes, bytes, close reasons and backend health,
//! counted per core and registered with the runtime's [`Registry`] as one [`Source`].
//!
//! Each core owns one [`CoreMetrics`] and is the only writer of it (relaxed atomics, no sharing
//! of cache lines between cores on the data path); a scrape sums all cores. Counters never go
//! down; gauges are sums of per-core gauges.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use fastedge_runtime::metrics::{label, write_family, Registry, Source};

/// Why a connection closed, in the few classes the metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseClass {
    /// Both sides closed in order.
    Closed,
    /// The client's side failed (reset, truncated, unreadable).
    ClientError,
    /// The backend's side failed.
    BackendError,
    /// No bytes moved for the idle timeout, or a request head came too slowly.
    Idle,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// The TLS handshake did not complete in time.
    HandshakeTimeout,
    /// No backend could be connected to.
    BackendUnavailable,
    /// A request could not be parsed for header injection.
    BadRequest,
}

impl CloseClass {
    /// Every class, in the order the metrics list them.
    pub const ALL: [CloseClass; 8] = [
        CloseClass::Closed,
        CloseClass::ClientError,
        CloseClass::BackendError,
        CloseClass::Idle,
        CloseClass::HandshakeFailed,
        CloseClass::HandshakeTimeout,
        CloseClass::BackendUnavailable,
        CloseClass::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            CloseClass::Closed => "closed",
            CloseClass::ClientError => "client_error",
            CloseClass::BackendError => "backend_error",
            CloseClass::Idle => "idle",
            CloseClass::HandshakeFailed => "handshake_failed",
            CloseClass::HandshakeTimeout => "handshake_timeout",
            CloseClass::BackendUnavailable => "backend_unavailable",
            CloseClass::BadRequest => "bad_request",
        }
    }
}

/// Why a kept backend connection (`balance.spare_connections`) was closed unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareDropped {
    /// The backend had closed it or said something on it when a client came for it.
    Stale,
    /// `balance.spare_max_age` had passed since its connect.
    Expired,
    /// The list of its backend was full: the oldest made room.
    Evicted,
}

impl SpareDropped {
    const ALL: [Self; 3] = [Self::Stale, Self::Expired, Self::Evicted];

    fn label(self) -> &'static str {
        match self {
            Self::Stale => "stale",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
        }
    }
}

/// The counters of one core.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    accepted: AtomicU64,
    active: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_resumed: AtomicU64,
    requests: AtomicU64,
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    spares_kept: AtomicU64,
    spares_taken: AtomicU64,
    spares_dropped: [AtomicU64; 3],
    closes: [AtomicU64; 8],
    /// Per backend name: connect failures, and whether this core sees it alive.
    backends: Mutex<BTreeMap<String, BackendCounters>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct BackendCounters {
    connect_failures: u64,
    dead: bool,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl CoreMetrics {
    /// A client connection was accepted (and is open).
    pub fn connection_opened(&self) {
        add(&self.accepted, 1);
        add(&self.active, 1);
    }

    /// A client connection closed, of `class`, having moved these bytes (client to backend,
    /// backend to client).
    pub fn connection_closed(&self, class: CloseClass, upstream: u64, downstream: u64) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        add(&self.closes[class as usize], 1);
        add(&self.bytes_upstream, upstream);
        add(&self.bytes_downstream, downstream);
    }

    /// A TLS handshake completed; `resumed`: it resumed a session (a ticket, or a session ID
    /// from the local cache or the fleet's store) rather than doing a full handshake.
    pub fn handshake_ok(&self, resumed: bool) {
        add(&self.handshakes_ok, 1);
        if resumed {
            add(&self.handshakes_resumed, 1);
        }
    }

    /// `n` more HTTP/1 requests went to a backend that gets forwarding headers (only those
    /// are parsed; other connections are bytes to the proxy).
    pub fn requests(&self, n: u64) {
        add(&self.requests, n);
    }

    /// Requests counted by [`requests`](Self::requests) so far.
    pub fn requests_seen(&self) -> u64 {
        load(&self.requests)
    }

    /// A backend connection no byte had crossed was kept for a next client
    /// (`balance.spare_connections`).
    pub fn spare_kept(&self) {
        add(&self.spares_kept, 1);
    }

    /// A client took a kept backend connection instead of connecting.
    pub fn spare_taken(&self) {
        add(&self.spares_taken, 1);
    }

    /// A kept backend connection was closed unused, and why.
    pub fn spare_dropped(&self, why: SpareDropped) {
        add(&self.spares_dropped[why as usize], 1);
    }

    /// A connect to `backend` failed.
    pub fn backend_connect_failed(&self, backend: &str) {
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        backends
            .entry(backend.to_owned())
            .or_default()
            .connect_failures += 1;
    }

    /// This core now sees `backend` alive, or dead.
    pub fn backend_health(&self, backend: &str, alive: bool) {
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        backends.entry(backend.to_owned()).or_default().dead = !alive;
    }
}

/// Every core's [`CoreMetrics`], rendered summed as a [`Source`].
#[derive(Debug, Default)]
pub struct ServeMetrics {
    cores: Mutex<Vec<Arc<CoreMetrics>>>,
}

impl ServeMetrics {
    /// New serve metrics, registered with `registry`.
    pub fn register(registry: &Registry) -> Arc<Self> {
        let metrics = Arc::new(Self::default());
        registry.register(metrics.clone());
        metrics
    }

    /// A new core's metrics, counted in from now on.
    pub fn core(&self) -> Arc<CoreMetrics> {
        let metrics = Arc::new(CoreMetrics::default());
        self.cores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(metrics.clone());
        metrics
    }
}

impl Source for ServeMetrics {
    fn render(&self, out: &mut String) {
        let cores = self
            .cores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sum =
            |read: &dyn Fn(&CoreMetrics) -> u64| -> u64 { cores.iter().map(|c| read(c)).sum() };
        let total = |read: &dyn Fn(&CoreMetrics) -> u64| vec![(String::new(), sum(read))];
        write_family(
            out,
            "fastedge_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &total(&|c| load(&c.accepted)),
        );
        write_family(
            out,
            "fastedge_connections_active",
            "gauge",
            "Client connections open now.",
            &total(&|c| load(&c.active)),
        );
        write_family(
            out,
            "fastedge_handshakes_completed_total",
            "counter",
            "TLS handshakes completed.",
            &total(&|c| load(&c.handshakes_ok)),
        );
        write_family(
            out,
            "fastedge_handshakes_resumed_total",
            "counter",
            "TLS handshakes completed that resumed a session (included in fastedge_handshakes_completed_total).",
            &total(&|c| load(&c.handshakes_resumed)),
        );
        write_family(
            out,
            "fastedge_requests_total",
            "counter",
            "HTTP/1 requests forwarded to backends that get forwarding headers (x_forwarded, forwarded); other backends' streams are not parsed.",
            &total(&|c| load(&c.requests)),
        );
        let closes: Vec<(String, u64)> = CloseClass::ALL
            .iter()
            .map(|&class| {
                (
                    label("reason", class.label()),
                    sum(&|c| load(&c.closes[class as usize])),
                )
            })
            .collect();
        write_family(
            out,
            "fastedge_connections_closed_total",
            "counter",
            "Client connections closed, by reason.",
            &closes,
        );
        write_family(
            out,
            "fastedge_bytes_total",
            "counter",
            "Bytes proxied: upstream is client to backend, downstream backend to client.",
            &[
                (
                    label("direction", "upstream"),
                    sum(&|c| load(&c.bytes_upstream)),
                ),
                (
                    label("direction", "downstream"),
                    sum(&|c| load(&c.bytes_downstream)),
                ),
            ],
        );
        let mut backends: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for core in &cores {
            let map = core.backends.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, counters) in map.iter() {
                let entry = backends.entry(name.clone()).or_default();
                entry.0 += counters.connect_failures;
                entry.1 += u64::from(counters.dead);
            }
        }
        let per_backend = |pick: fn(&(u64, u64)) -> u64| -> Vec<(String, u64)> {
            backends
                .iter()
                .map(|(name, v)| (label("backend", name), pick(v)))
                .collect()
        };
        write_family(
            out,
            "fastedge_backend_connect_failures_total",
            "counter",
            "Failed backend connects.",
            &per_backend(|v| v.0),
        );
        write_family(
            out,
            "fastedge_backend_dead_cores",
            "gauge",
            "Cores that currently consider the backend dead (health is per core).",
            &per_backend(|v| v.1),
        );
        write_family(
            out,
            "fastedge_backend_spare_connections_total",
            "counter",
            "Backend connections left unused by their clients and kept (outcome=kept), then \
             taken by a next client instead of a connect (taken), or closed unused because the \
             backend had closed or answered on them (stale), spare_max_age passed (expired) or \
             the backend's list was full (evicted). kept minus the others is what is held now \
             (those a stop closes are not counted).",
            &[
                ("kept", cores.iter().map(|c| load(&c.spares_kept)).sum()),
                ("taken", cores.iter().map(|c| load(&c.spares_taken)).sum()),
            ]
            .into_iter()
            .chain(SpareDropped::ALL.map(|why| {
                (
                    why.label(),
                    cores
                        .iter()
                        .map(|c| load(&c.spares_dropped[why as usize]))
                        .sum(),
                )
            }))
            .map(|(outcome, n)| (label("outcome", outcome), n))
            .collect::<Vec<_>>(),
        );
        write_family(
            out,
            "fastedge_cores",
            "gauge",
            "Executors running.",
            &[(String::new(), cores.len() as u64)],
        );
        // The same figures for each core alone (label `core`: the executor's index in the
        // order they started), so a live view (`fastedge top`) can tell a busy core from an
        // idle one.
        let per_core = |read: &dyn Fn(&CoreMetrics) -> u64| -> Vec<(String, u64)> {
            cores
                .iter()
                .enumerate()
                .map(|(i, c)| (label("core", &i.to_string()), read(c)))
                .collect()
        };
        write_family(
            out,
            "fastedge_core_connections_accepted_total",
            "counter",
            "Client connections accepted, by core.",
            &per_core(&|c| load(&c.accepted)),
        );
        write_family(
            out,
            "fastedge_core_connections_active",
            "gauge",
            "Client connections open now, by core.",
            &per_core(&|c| load(&c.active)),
        );
        write_family(
            out,
            "fastedge_core_handshakes_completed_total",
            "counter",
            "TLS handshakes completed, by core.",
            &per_core(&|c| load(&c.handshakes_ok)),
        );
        write_family(
            out,
            "fastedge_core_handshakes_resumed_total",
            "counter",
            "TLS handshakes that resumed a session, by core.",
            &per_core(&|c| load(&c.handshakes_resumed)),
        );
        write_family(
            out,
            "fastedge_core_requests_total",
            "counter",
            "HTTP/1 requests forwarded to backends with forwarding headers, by core.",
            &per_core(&|c| load(&c.requests)),
        );
        write_family(
            out,
            "fastedge_core_bytes_total",
            "counter",
            "Bytes proxied both ways, by core.",
            &per_core(&|c| load(&c.bytes_upstream) + load(&c.bytes_downstream)),
        );
        crate::session_store::render_metrics(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores() {
        let registry = Registry::new();
        let serve = ServeMetrics::register(&registry);
        let (a, b) = (serve.core(), serve.core());
        a.connection_opened();
        b.connection_opened();
        b.connection_opened();
        a.connection_closed(CloseClass::Idle, 10, 20);
        b.backend_connect_failed("x:1");
        a.spare_kept();
        b.spare_kept();
        b.spare_taken();
        a.spare_dropped(SpareDropped::Expired);
        b.spare_dropped(SpareDropped::Expired);
        b.spare_dropped(SpareDropped::Evicted);
        b.backend_health("x:1", false);
        a.backend_health("x:1", true);
        let text = registry.render();
        assert!(
            text.starts_with(
                "# HELP fastedge_connections_accepted_total Client connections accepted.\n\
                 # TYPE fastedge_connections_accepted_total counter\n\
                 fastedge_connections_accepted_total 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("fastedge_connections_active 2\n"));
        assert!(text.contains("fastedge_connections_closed_total{reason=\"idle\"} 1\n"));
        assert!(text.contains("fastedge_connections_closed_total{reason=\"closed\"} 0\n"));
        assert!(text.contains("fastedge_bytes_total{direction=\"downstream\"} 20\n"));
        assert!(text.contains("fastedge_backend_connect_failures_total{backend=\"x:1\"} 1\n"));
        assert!(text.contains("fastedge_backend_dead_cores{backend=\"x:1\"} 1\n"));
        assert!(text.contains("fastedge_backend_spare_connections_total{outcome=\"kept\"} 2\n"));
        assert!(text.contains("fastedge_backend_spare_connections_total{outcome=\"taken\"} 1\n"));
        assert!(text.contains("fastedge_backend_spare_connections_total{outcome=\"stale\"} 0\n"));
        assert!(text.contains("fastedge_backend_spare_connections_total{outcome=\"expired\"} 2\n"));
        assert!(text.contains("fastedge_backend_spare_connections_total{outcome=\"evicted\"} 1\n"));
        assert!(text.contains("# TYPE fastedge_cores gauge\nfastedge_cores 2\n"));
        assert!(text.contains("fastedge_core_connections_accepted_total{core=\"0\"} 1\n"));
        assert!(text.contains("fastedge_core_connections_accepted_total{core=\"1\"} 2\n"));
        assert!(text.contains("fastedge_core_bytes_total{core=\"0\"} 30\n"));
        // What is rendered is what `fastedge top`'s reader parses.
        let scrape = fastedge_wire::prometheus::parse(&text, Default::default()).unwrap();
        let view = crate::scrape::ServeSnapshot::from_scrape(&scrape);
        assert_eq!(view.cores.len(), 2);
        assert_eq!(view.cores[1].accepted, 2);
        assert_eq!(view.accepted, 3);
    }
}
