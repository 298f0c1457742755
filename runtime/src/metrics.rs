//! Per-core metrics, summed on read and served as Prometheus text.
//!
//! Each core owns one [`CoreMetrics`] and is the only writer of it (relaxed atomics, no
//! sharing of cache lines between cores on the data path); a reader sums all cores when it
//! renders [`Registry::render`]. Counters never go down; gauges are sums of per-core gauges.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

/// Why a connection closed, in the few classes the metrics count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseClass {
    /// Both sides closed in order.
    Closed,
    ClientError,
    BackendError,
    Idle,
    HandshakeFailed,
    HandshakeTimeout,
    BackendUnavailable,
    BadRequest,
}

impl CloseClass {
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

/// The counters of one core.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub handshakes_ok: AtomicU64,
    pub bytes_upstream: AtomicU64,
    pub bytes_downstream: AtomicU64,
    closes: [AtomicU64; 8],
    /// Per backend name: connect failures, and whether this core sees it alive (1/0).
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

impl CoreMetrics {
    pub fn connection_opened(&self) {
        add(&self.accepted, 1);
        add(&self.active, 1);
    }

    pub fn connection_closed(&self, class: CloseClass, upstream: u64, downstream: u64) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        add(&self.closes[class as usize], 1);
        add(&self.bytes_upstream, upstream);
        add(&self.bytes_downstream, downstream);
    }

    pub fn handshake_ok(&self) {
        add(&self.handshakes_ok, 1);
    }

    pub fn backend_connect_failed(&self, backend: &str) {
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        backends
            .entry(backend.to_owned())
            .or_default()
            .connect_failures += 1;
    }

    pub fn backend_health(&self, backend: &str, alive: bool) {
        let mut backends = self.backends.lock().unwrap_or_else(PoisonError::into_inner);
        backends.entry(backend.to_owned()).or_default().dead = !alive;
    }
}

/// All cores' metrics.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    cores: Arc<Mutex<Vec<Arc<CoreMetrics>>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new core's metrics, registered for reading.
    pub fn core(&self) -> Arc<CoreMetrics> {
        let metrics = Arc::new(CoreMetrics::default());
        self.cores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(metrics.clone());
        metrics
    }

    /// Sums every core into Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let cores = self
            .cores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sum =
            |read: &dyn Fn(&CoreMetrics) -> u64| -> u64 { cores.iter().map(|c| read(c)).sum() };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "fastedge_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &[(String::new(), sum(&|c| load(&c.accepted)))],
        );
        metric(
            "fastedge_connections_active",
            "gauge",
            "Client connections open now.",
            &[(String::new(), sum(&|c| load(&c.active)))],
        );
        metric(
            "fastedge_handshakes_completed_total",
            "counter",
            "TLS handshakes completed.",
            &[(String::new(), sum(&|c| load(&c.handshakes_ok)))],
        );
        let closes: Vec<(String, u64)> = CloseClass::ALL
            .iter()
            .map(|&class| {
                (
                    format!("{{reason=\"{}\"}}", class.label()),
                    sum(&|c| load(&c.closes[class as usize])),
                )
            })
            .collect();
        metric(
            "fastedge_connections_closed_total",
            "counter",
            "Client connections closed, by reason.",
            &closes,
        );
        metric(
            "fastedge_bytes_total",
            "counter",
            "Bytes proxied: upstream is client to backend, downstream backend to client.",
            &[
                (
                    "{direction=\"upstream\"}".into(),
                    sum(&|c| load(&c.bytes_upstream)),
                ),
                (
                    "{direction=\"downstream\"}".into(),
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
        let label = |name: &str| {
            format!(
                "{{backend=\"{}\"}}",
                name.replace('\\', "\\\\").replace('"', "\\\"")
            )
        };
        metric(
            "fastedge_backend_connect_failures_total",
            "counter",
            "Failed backend connects.",
            &backends
                .iter()
                .map(|(n, v)| (label(n), v.0))
                .collect::<Vec<_>>(),
        );
        metric(
            "fastedge_backend_dead_cores",
            "gauge",
            "Cores that currently consider the backend dead (health is per core).",
            &backends
                .iter()
                .map(|(n, v)| (label(n), v.1))
                .collect::<Vec<_>>(),
        );
        metric(
            "fastedge_cores",
            "gauge",
            "Executors running.",
            &[(String::new(), cores.len() as u64)],
        );
        // The same figures for each core alone (label `core`: the executor's index in the
        // order they started), so a live view can tell a busy core from an idle one.
        let per_core = |read: &dyn Fn(&CoreMetrics) -> u64| -> Vec<(String, u64)> {
            cores
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{core=\"{i}\"}}"), read(c)))
                .collect()
        };
        metric(
            "fastedge_core_connections_accepted_total",
            "counter",
            "Client connections accepted, by core.",
            &per_core(&|c| load(&c.accepted)),
        );
        metric(
            "fastedge_core_connections_active",
            "gauge",
            "Client connections open now, by core.",
            &per_core(&|c| load(&c.active)),
        );
        metric(
            "fastedge_core_handshakes_completed_total",
            "counter",
            "TLS handshakes completed, by core.",
            &per_core(&|c| load(&c.handshakes_ok)),
        );
        metric(
            "fastedge_core_bytes_total",
            "counter",
            "Bytes proxied both ways, by core.",
            &per_core(&|c| load(&c.bytes_upstream) + load(&c.bytes_downstream)),
        );
        out
    }
}

/// Scrapes served at once at most; a connection beyond that is closed at once.
pub const MAX_SCRAPES: usize = 16;
/// Each scrape must send its request and take its answer within this.
pub const SCRAPE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves `registry` as `GET /metrics` (Prometheus text) on `listener`, one request per
/// connection, each on a thread of its own (off the data-path cores), at most [`MAX_SCRAPES`]
/// at once, each within [`SCRAPE_DEADLINE`] from its accept to its last byte: a slow client
/// holds its own connection only. Returns the accepting thread's handle.
pub fn serve_http(
    listener: std::net::TcpListener,
    registry: Registry,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::sync::atomic::AtomicUsize;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("fastedge-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPES {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue; // dropped: closed
                }
                let registry = registry.clone();
                let slot = busy.clone();
                let spawned = std::thread::Builder::new()
                    .name("fastedge-scrape".into())
                    .spawn(move || {
                        serve_scrape(stream, &registry);
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
}

/// One scrape: reads a request head and answers it, all before the deadline.
fn serve_scrape(mut stream: std::net::TcpStream, registry: &Registry) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + SCRAPE_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
    };
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        // Each read gets what is left of the whole deadline, not a fresh timeout.
        let Some(remaining) = left() else { return };
        if stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let (status, content_type, body) =
        if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
            ("200 OK", "text/plain; version=0.0.4", registry.render())
        } else {
            (
                "404 Not Found",
                "text/plain",
                "try GET /metrics\n".to_owned(),
            )
        };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut rest = response.as_bytes();
    while !rest.is_empty() {
        let Some(remaining) = left() else { return };
        if stream.set_write_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.write(rest) {
            Ok(0) | Err(_) => return,
            Ok(n) => rest = &rest[n..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores() {
        let registry = Registry::new();
        let (a, b) = (registry.core(), registry.core());
        a.connection_opened();
        b.connection_opened();
        b.connection_opened();
        a.connection_closed(CloseClass::Idle, 10, 20);
        b.backend_connect_failed("x:1");
        b.backend_health("x:1", false);
        a.backend_health("x:1", true);
        let text = registry.render();
        assert!(
            text.contains("fastedge_connections_accepted_total 3\n"),
            "{text}"
        );
        assert!(text.contains("fastedge_connections_active 2\n"));
        assert!(text.contains("fastedge_connections_closed_total{reason=\"idle\"} 1\n"));
        assert!(text.contains("fastedge_bytes_total{direction=\"downstream\"} 20\n"));
        assert!(text.contains("fastedge_backend_connect_failures_total{backend=\"x:1\"} 1\n"));
        assert!(text.contains("fastedge_backend_dead_cores{backend=\"x:1\"} 1\n"));
        assert!(text.contains("# TYPE fastedge_cores gauge\nfastedge_cores 2\n"));
        assert!(text.contains("fastedge_core_connections_accepted_total{core=\"0\"} 1\n"));
        assert!(text.contains("fastedge_core_connections_accepted_total{core=\"1\"} 2\n"));
        assert!(text.contains("fastedge_core_bytes_total{core=\"0\"} 30\n"));
        // What is rendered is what the reader parses.
        let scrape = fastedge_wire::prometheus::parse(&text, Default::default()).unwrap();
        let view = crate::scrape::ServeSnapshot::from_scrape(&scrape);
        assert_eq!(view.cores.len(), 2);
        assert_eq!(view.cores[1].accepted, 2);
        assert_eq!(view.accepted, 3);
    }

    /// A GET /metrics on `addr`; the answer's status line and body.
    fn scrape(addr: std::net::SocketAddr) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        if let Err(e) = stream.read_to_string(&mut answer) {
            panic!("no answer to a scrape within 5 s: {e}");
        }
        answer
    }

    /// Issue 14, defect 6: a client that holds a connection (sending a byte now and then, as
    /// slowloris does) delays no other scrape, and is cut off at the deadline.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_slow_client_does_not_hold_up_other_scrapes() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        registry.core().connection_opened();
        serve_http(listener, registry).unwrap();
        let started = std::time::Instant::now();
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        let dribble = std::thread::spawn(move || {
            // One byte every 300 ms: each read would reset a per-read timeout.
            for byte in b"GET /metrics HTTP/1.1\r\n" {
                if slow.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
            let mut rest = Vec::new();
            let _ = slow.read_to_end(&mut rest);
            rest
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        let before = std::time::Instant::now();
        let answer = scrape(addr);
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("fastedge_connections_accepted_total 1\n"));
        assert!(
            before.elapsed() < std::time::Duration::from_secs(1),
            "a second scrape waited {:?} behind the slow one",
            before.elapsed()
        );
        let cut = dribble.join().unwrap();
        assert!(cut.is_empty(), "the slow client got no answer");
        let held = started.elapsed();
        assert!(
            held < SCRAPE_DEADLINE + std::time::Duration::from_secs(2),
            "the slow client held its connection {held:?}"
        );
    }
}
