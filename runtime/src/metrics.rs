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
        out
    }
}

/// Serves `registry` as `GET /metrics` (Prometheus text) on `listener`, one request per
/// connection, on a thread of its own (off the data-path cores). Returns the thread's handle.
pub fn serve_http(
    listener: std::net::TcpListener,
    registry: Registry,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use std::io::{Read, Write};
    std::thread::Builder::new()
        .name("fastedge-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(2)));
                let mut head = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let (status, content_type, body) = if head.starts_with(b"GET /metrics ")
                    || head.starts_with(b"GET /metrics?")
                {
                    ("200 OK", "text/plain; version=0.0.4", registry.render())
                } else {
                    ("404 Not Found", "text/plain", "try GET /metrics\n".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            }
        })
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
    }
}
