//! The reader side of serve's metrics ([`crate::metrics`]): fetching a metrics endpoint ([`fetch`]), what a
//! scrape of `fastedge serve` says ([`ServeSnapshot`]), and per-second rates between two
//! scrapes ([`ServeRates`]) — the data model of `fastedge top`.
//!
//! The text is parsed by [`fastedge_wire::prometheus`] within its size limits, the response
//! head by [`fastedge_wire::http1`]; this module only moves bytes and does arithmetic.
//! Snapshots carry no clock: the caller says how much time passed between two of them.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::{Duration, Instant},
};

use fastedge_wire::{
    http1::{parse_response_head, ResponseBody, Status},
    prometheus::{self, Limits, Scrape},
};

/// Bytes of a whole answer (head and body) [`fetch`] reads at most.
pub const MAX_ANSWER: usize = 8 << 20;
/// Bytes of an answer's head at most.
const MAX_HEAD: usize = 16 << 10;

/// Where a metrics endpoint is: a host and port, and the path to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` as given (a name is resolved at each fetch).
    pub authority: String,
    /// The path, `/metrics` unless the address named one.
    pub path: String,
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    /// `http://HOST:PORT/PATH`, `http://HOST:PORT` or `HOST:PORT` (path `/metrics`).
    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("https://") {
            return Err(format!(
                "{text}: the metrics endpoint speaks plain HTTP; use http://"
            ));
        }
        let rest = text.strip_prefix("http://").unwrap_or(text);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "{text:?}: give the metrics endpoint as HOST:PORT or http://HOST:PORT/metrics \
                 (serve's `metrics_listen`)"
            ));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "{text:?}: the path has spaces or control characters"
            ));
        }
        Ok(Self {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The host name did not resolve.
    #[error("resolving {authority}: {source}")]
    Resolve {
        /// The host name as given.
        authority: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Nothing accepted the connection (the server is not running, or not there).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: SocketAddr,
        /// The error of the connect.
        source: std::io::Error,
    },
    /// Sending the request or reading the answer failed or ran out of time.
    #[error("talking to {addr}: {source}")]
    Io {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The error of the read or write.
        source: std::io::Error,
    },
    /// The answer was over [`MAX_ANSWER`].
    #[error("{addr} answered more than {MAX_ANSWER} bytes")]
    TooLarge {
        /// The endpoint's address.
        addr: SocketAddr,
    },
    /// The answer was not an HTTP response with a text body.
    #[error("{addr} did not answer HTTP: {what}")]
    NotHttp {
        /// The endpoint's address.
        addr: SocketAddr,
        /// What was wrong with the answer.
        what: String,
    },
    /// A status other than 200.
    #[error("{addr} answered status {code} (is this a metrics endpoint?)")]
    Status {
        /// The endpoint's address.
        addr: SocketAddr,
        /// The HTTP status it answered.
        code: u16,
    },
    /// The body is not Prometheus text within the limits.
    #[error("{addr}: {source}")]
    Parse {
        /// The endpoint's address.
        addr: SocketAddr,
        /// Why the text was refused.
        source: prometheus::ParseError,
    },
}

/// Fetches `endpoint` once (HTTP/1.0 GET, the answer read until the close) and parses its
/// Prometheus text; the whole exchange must end within `timeout`.
pub fn fetch(endpoint: &Endpoint, timeout: Duration) -> Result<Scrape, ScrapeError> {
    let started = Instant::now();
    let resolve_error = |source| ScrapeError::Resolve {
        authority: endpoint.authority.clone(),
        source,
    };
    let addr = endpoint
        .authority
        .to_socket_addrs()
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(std::io::ErrorKind::NotFound.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| ScrapeError::Connect { addr, source })?;
    let io = |source| ScrapeError::Io { addr, source };
    let left = || {
        timeout
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io(std::io::ErrorKind::TimedOut.into()))
    };
    stream.set_write_timeout(Some(left()?)).map_err(io)?;
    write!(
        stream,
        "GET {} HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
        endpoint.path, endpoint.authority
    )
    .map_err(io)?;
    let mut answer = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(left()?)).map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > MAX_ANSWER => return Err(ScrapeError::TooLarge { addr }),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let body = response_body(&answer).map_err(|e| match e {
        BodyError::Status(code) => ScrapeError::Status { addr, code },
        BodyError::NotHttp(what) => ScrapeError::NotHttp {
            addr,
            what: what.to_owned(),
        },
    })?;
    let text = std::str::from_utf8(body).map_err(|_| ScrapeError::NotHttp {
        addr,
        what: "the body is not UTF-8 text".to_owned(),
    })?;
    prometheus::parse(text, Limits::default()).map_err(|source| ScrapeError::Parse { addr, source })
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    Status(u16),
    NotHttp(&'static str),
}

/// The body of a whole HTTP answer read until the close.
fn response_body(answer: &[u8]) -> Result<&[u8], BodyError> {
    let head = match parse_response_head(answer, MAX_HEAD) {
        Ok(Status::Complete(head)) => head,
        Ok(Status::Partial) => return Err(BodyError::NotHttp("the answer ended inside its head")),
        Err(_) => return Err(BodyError::NotHttp("a malformed response head")),
    };
    if head.code != 200 {
        return Err(BodyError::Status(head.code));
    }
    let rest = &answer[head.head_len..];
    match head.body {
        ResponseBody::ContentLength(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            rest.get(..n).ok_or(BodyError::NotHttp(
                "the body is shorter than its Content-Length",
            ))
        }
        ResponseBody::UntilClose => Ok(rest),
        ResponseBody::Chunked => Err(BodyError::NotHttp(
            "a chunked body (the HTTP/1.0 request asked for none)",
        )),
    }
}

/// One core's counters in a scrape of `fastedge serve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// TLS handshakes completed so far.
    pub handshakes: u64,
    /// Of those, resumed ones.
    pub resumed: u64,
    /// HTTP/1 requests to backends with forwarding headers so far.
    pub requests: u64,
    /// Bytes proxied both ways so far.
    pub bytes: u64,
}

/// A backend's health and failures in a scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendCounters {
    /// How many cores consider it dead now (health is per core).
    pub dead_cores: u64,
    /// Failed connects so far.
    pub connect_failures: u64,
}

/// What one scrape of `fastedge serve`'s metrics says (see [`crate::metrics::ServeMetrics`]).
/// Missing series read as zero, so an older server still shows what it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeSnapshot {
    /// Executors running.
    pub core_count: u64,
    /// Per core, by the `core` label (index in start order).
    pub cores: Vec<CoreCounters>,
    /// Connections accepted so far, all cores.
    pub accepted: u64,
    /// Open now, all cores.
    pub active: u64,
    /// TLS handshakes completed so far, all cores.
    pub handshakes: u64,
    /// Of those, resumed ones.
    pub resumed: u64,
    /// HTTP/1 requests to backends with forwarding headers so far (the only ones parsed).
    pub requests: u64,
    /// Closed connections so far, by reason.
    pub closes: BTreeMap<String, u64>,
    /// By backend name.
    pub backends: BTreeMap<String, BackendCounters>,
    /// Bytes client → backend so far.
    pub bytes_upstream: u64,
    /// Bytes backend → client so far.
    pub bytes_downstream: u64,
}

/// A sample value as a count: negative, NaN and fractions are clamped (the text is untrusted).
fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value as u64
    } else {
        0
    }
}

/// The largest core index a scrape may name; a bigger one is ignored, not allocated for.
const MAX_CORE_INDEX: usize = 4096;

impl ServeSnapshot {
    /// Scrapes `endpoint` ([`fetch`]) and reads the figures.
    pub fn fetch(endpoint: &Endpoint, timeout: Duration) -> Result<Self, ScrapeError> {
        Ok(Self::from_scrape(&fetch(endpoint, timeout)?))
    }

    /// Reads the `fastedge_*` series of `scrape`; other series are ignored.
    pub fn from_scrape(scrape: &Scrape) -> Self {
        let mut snapshot = Self::default();
        for sample in &scrape.samples {
            let value = count(sample.value);
            let core = sample
                .label("core")
                .and_then(|c| c.parse::<usize>().ok())
                .filter(|&c| c < MAX_CORE_INDEX);
            let cores = &mut snapshot.cores;
            let mut core_field = |field: fn(&mut CoreCounters) -> &mut u64| {
                if let Some(i) = core {
                    if cores.len() <= i {
                        cores.resize(i + 1, CoreCounters::default());
                    }
                    *field(&mut cores[i]) = value;
                }
            };
            match sample.name.as_str() {
                "fastedge_cores" => snapshot.core_count = value,
                "fastedge_connections_accepted_total" => snapshot.accepted = value,
                "fastedge_connections_active" => snapshot.active = value,
                "fastedge_handshakes_completed_total" => snapshot.handshakes = value,
                "fastedge_handshakes_resumed_total" => snapshot.resumed = value,
                "fastedge_requests_total" => snapshot.requests = value,
                "fastedge_core_handshakes_resumed_total" => core_field(|c| &mut c.resumed),
                "fastedge_core_requests_total" => core_field(|c| &mut c.requests),
                "fastedge_core_connections_accepted_total" => core_field(|c| &mut c.accepted),
                "fastedge_core_connections_active" => core_field(|c| &mut c.active),
                "fastedge_core_handshakes_completed_total" => core_field(|c| &mut c.handshakes),
                "fastedge_core_bytes_total" => core_field(|c| &mut c.bytes),
                "fastedge_connections_closed_total" => {
                    if let Some(reason) = sample.label("reason") {
                        snapshot.closes.insert(reason.to_owned(), value);
                    }
                }
                "fastedge_bytes_total" => match sample.label("direction") {
                    Some("upstream") => snapshot.bytes_upstream = value,
                    Some("downstream") => snapshot.bytes_downstream = value,
                    _ => {}
                },
                "fastedge_backend_dead_cores" => {
                    if let Some(name) = sample.label("backend") {
                        snapshot
                            .backends
                            .entry(name.to_owned())
                            .or_default()
                            .dead_cores = value;
                    }
                }
                "fastedge_backend_connect_failures_total" => {
                    if let Some(name) = sample.label("backend") {
                        snapshot
                            .backends
                            .entry(name.to_owned())
                            .or_default()
                            .connect_failures = value;
                    }
                }
                _ => {}
            }
        }
        snapshot
    }
}

/// A counter's increase per second (see [`fastedge_wire::prometheus::per_second`]).
pub use fastedge_wire::prometheus::per_second;

/// One core's row: rates since the last scrape and its open connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreRates {
    /// Index of the core (start order).
    pub core: usize,
    /// New connections per second.
    pub connections_per_s: f64,
    /// TLS handshakes completed per second.
    pub handshakes_per_s: f64,
    /// Requests per second (backends with forwarding headers).
    pub requests_per_s: f64,
    /// Bytes proxied per second, both ways.
    pub bytes_per_s: f64,
    /// Open now.
    pub active: u64,
    /// Accepted so far.
    pub accepted: u64,
}

/// A close reason's row.
#[derive(Debug, Clone, PartialEq)]
pub struct CloseRates {
    /// The reason label (`closed`, `client_error`, …).
    pub reason: String,
    /// Closed for it so far.
    pub total: u64,
    /// Closed for it per second.
    pub per_s: f64,
}

/// A backend's row.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendHealth {
    /// The backend as configured.
    pub name: String,
    /// Cores that see it alive, of [`ServeRates::core_count`].
    pub alive_cores: u64,
    /// Failed connects so far.
    pub connect_failures: u64,
    /// Failed connects per second.
    pub connect_failures_per_s: f64,
}

impl BackendHealth {
    /// `up`, `down` or `partial` (some cores see it dead).
    pub fn state(&self, core_count: u64) -> &'static str {
        if self.alive_cores == 0 && core_count > 0 {
            "down"
        } else if self.alive_cores < core_count {
            "partial"
        } else {
            "up"
        }
    }
}

/// What changed between two scrapes of `fastedge serve`, per second.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeRates {
    /// Executors running.
    pub core_count: u64,
    /// A row per core, by index.
    pub cores: Vec<CoreRates>,
    /// New connections per second, all cores.
    pub connections_per_s: f64,
    /// TLS handshakes per second, all cores.
    pub handshakes_per_s: f64,
    /// Of the handshakes between the two scrapes, the share that resumed a session; `None`
    /// when there was none.
    pub resumed_ratio: Option<f64>,
    /// Requests per second, all cores (backends with forwarding headers).
    pub requests_per_s: f64,
    /// Open now, all cores.
    pub active: u64,
    /// Bytes client → backend per second.
    pub upstream_bytes_per_s: f64,
    /// Bytes backend → client per second.
    pub downstream_bytes_per_s: f64,
    /// Every reason the server counts, in its order.
    pub closes: Vec<CloseRates>,
    /// A row per backend, by name.
    pub backends: Vec<BackendHealth>,
}

impl ServeRates {
    /// Rates from `before` to `after`, `elapsed` apart.
    pub fn between(before: &ServeSnapshot, after: &ServeSnapshot, elapsed: Duration) -> Self {
        let s = elapsed.as_secs_f64();
        let cores = after
            .cores
            .iter()
            .enumerate()
            .map(|(i, now)| {
                let then = before.cores.get(i).copied().unwrap_or_default();
                CoreRates {
                    core: i,
                    connections_per_s: per_second(then.accepted, now.accepted, s),
                    handshakes_per_s: per_second(then.handshakes, now.handshakes, s),
                    requests_per_s: per_second(then.requests, now.requests, s),
                    bytes_per_s: per_second(then.bytes, now.bytes, s),
                    active: now.active,
                    accepted: now.accepted,
                }
            })
            .collect();
        let closes = after
            .closes
            .iter()
            .map(|(reason, &total)| CloseRates {
                reason: reason.clone(),
                total,
                per_s: per_second(before.closes.get(reason).copied().unwrap_or(0), total, s),
            })
            .collect();
        let backends = after
            .backends
            .iter()
            .map(|(name, now)| BackendHealth {
                name: name.clone(),
                alive_cores: after.core_count.saturating_sub(now.dead_cores),
                connect_failures: now.connect_failures,
                connect_failures_per_s: per_second(
                    before.backends.get(name).map_or(0, |b| b.connect_failures),
                    now.connect_failures,
                    s,
                ),
            })
            .collect();
        Self {
            core_count: after.core_count,
            cores,
            connections_per_s: per_second(before.accepted, after.accepted, s),
            handshakes_per_s: per_second(before.handshakes, after.handshakes, s),
            resumed_ratio: {
                let handshakes = after.handshakes.saturating_sub(before.handshakes);
                let resumed = after.resumed.saturating_sub(before.resumed);
                (handshakes > 0).then(|| resumed.min(handshakes) as f64 / handshakes as f64)
            },
            requests_per_s: per_second(before.requests, after.requests, s),
            active: after.active,
            upstream_bytes_per_s: per_second(before.bytes_upstream, after.bytes_upstream, s),
            downstream_bytes_per_s: per_second(before.bytes_downstream, after.bytes_downstream, s),
            closes,
            backends,
        }
    }
}

impl ServeSnapshot {
    /// A snapshot of `registry` (a serve's own metrics, read in-process).
    pub fn of_registry(registry: &fastedge_runtime::metrics::Registry) -> Self {
        // Our own rendering is within any limit the parser sets; an error leaves the defaults.
        prometheus::parse(&registry.render(), Limits::default())
            .map(|scrape| Self::from_scrape(&scrape))
            .unwrap_or_default()
    }
}

impl ServeRates {
    /// One line of what a serve does now (for `systemctl status`): open connections, handshakes
    /// per second and the share resumed, requests per second, bytes per second both ways.
    pub fn summary(&self) -> String {
        let resumed = self
            .resumed_ratio
            .map_or_else(String::new, |r| format!(" ({:.0}% resumed)", r * 100.0));
        format!(
            "{} open, {:.0} handshakes/s{resumed}, {:.0} requests/s, {} in, {} out",
            self.active,
            self.handshakes_per_s,
            self.requests_per_s,
            bytes_per_s(self.upstream_bytes_per_s),
            bytes_per_s(self.downstream_bytes_per_s),
        )
    }
}

/// A byte rate in B/s, kB/s, MB/s or GB/s (powers of 1000), three significant figures at most.
fn bytes_per_s(rate: f64) -> String {
    let mut value = rate.max(0.0);
    let mut unit = "B/s";
    for next in ["kB/s", "MB/s", "GB/s"] {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = next;
    }
    if value < 10.0 && unit != "B/s" {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CloseClass, ServeMetrics};
    use fastedge_runtime::metrics::Registry;

    fn snapshot(registry: &Registry) -> ServeSnapshot {
        ServeSnapshot::from_scrape(
            &prometheus::parse(&registry.render(), Limits::default()).unwrap(),
        )
    }

    #[test]
    fn rates_between_two_scrapes_of_a_registry() {
        let registry = Registry::new();
        let serve = ServeMetrics::register(&registry);
        let (a, b) = (serve.core(), serve.core());
        a.backend_health("web:80", true);
        b.backend_health("web:80", true);
        let before = snapshot(&registry);
        for _ in 0..10 {
            b.connection_opened();
            b.handshake_ok(true);
            b.requests(3);
            b.connection_closed(CloseClass::Closed, 100, 300);
        }
        a.connection_opened();
        b.backend_health("web:80", false);
        b.backend_connect_failed("web:80");
        let after = snapshot(&registry);
        let rates = ServeRates::between(&before, &after, Duration::from_secs(2));
        assert_eq!(rates.core_count, 2);
        assert_eq!(rates.cores.len(), 2);
        assert_eq!(rates.cores[0].connections_per_s, 0.5);
        assert_eq!(rates.cores[0].active, 1);
        assert_eq!(rates.cores[1].connections_per_s, 5.0);
        assert_eq!(rates.cores[1].handshakes_per_s, 5.0);
        assert_eq!(rates.cores[1].requests_per_s, 15.0);
        assert_eq!(rates.requests_per_s, 15.0);
        assert_eq!(rates.resumed_ratio, Some(1.0));
        assert_eq!(
            rates.summary(),
            "1 open, 5 handshakes/s (100% resumed), 15 requests/s, 500 B/s in, 1.5 kB/s out"
        );
        assert_eq!(rates.cores[1].bytes_per_s, 2000.0);
        assert_eq!(rates.connections_per_s, 5.5);
        assert_eq!(rates.downstream_bytes_per_s, 1500.0);
        let closed = rates.closes.iter().find(|c| c.reason == "closed").unwrap();
        assert_eq!((closed.total, closed.per_s), (10, 5.0));
        assert_eq!(rates.closes.len(), CloseClass::ALL.len());
        let web = &rates.backends[0];
        assert_eq!((web.name.as_str(), web.alive_cores), ("web:80", 1));
        assert_eq!(web.state(rates.core_count), "partial");
        assert_eq!(web.connect_failures_per_s, 0.5);
    }

    #[test]
    fn counters_that_went_down_were_reset() {
        assert_eq!(per_second(100, 30, 1.0), 30.0);
        assert_eq!(per_second(10, 30, 0.0), 0.0);
    }

    #[test]
    fn hostile_values_do_not_allocate_or_panic() {
        let text = "fastedge_core_connections_accepted_total{core=\"99999999\"} 5\n\
                    fastedge_core_connections_active{core=\"-1\"} 5\n\
                    fastedge_connections_active -7\nfastedge_cores NaN\n\
                    fastedge_handshakes_completed_total 1e300\n";
        let snap = ServeSnapshot::from_scrape(&prometheus::parse(text, Limits::default()).unwrap());
        assert!(snap.cores.is_empty());
        assert_eq!((snap.active, snap.core_count), (0, 0));
        assert_eq!(snap.handshakes, u64::MAX);
    }

    #[test]
    fn endpoints_in_the_forms_people_write() {
        let e: Endpoint = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:9100", "/metrics")
        );
        let e: Endpoint = "http://[::1]:9100/m?x=1".parse().unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("[::1]:9100", "/m?x=1")
        );
        assert_eq!(e.to_string(), "http://[::1]:9100/m?x=1");
        for bad in [
            "https://a:1/metrics",
            "localhost",
            "http://:80",
            "a:99999",
            "a:1/x y",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_other_than_a_200_with_text_are_errors() {
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nx 1\nTRAILING"),
            Ok(&b"x 1\n"[..])
        );
        assert_eq!(
            response_body(b"HTTP/1.0 200 OK\r\n\r\nx 1\n"),
            Ok(&b"x 1\n"[..])
        );
        assert_eq!(
            response_body(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            Err(BodyError::Status(404))
        );
        assert!(matches!(
            response_body(b"SSH-2.0-OpenSSH\r\n"),
            Err(BodyError::NotHttp(_))
        ));
        assert!(matches!(
            response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nx 1\n"),
            Err(BodyError::NotHttp(_))
        ));
    }

    #[test]
    fn fetches_from_the_real_endpoint() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let registry = Registry::new();
        ServeMetrics::register(&registry).core().connection_opened();
        fastedge_runtime::metrics::serve_http(listener, registry).unwrap();
        let scrape = fetch(&addr.to_string().parse().unwrap(), Duration::from_secs(5)).unwrap();
        assert_eq!(ServeSnapshot::from_scrape(&scrape).accepted, 1);
        let missing: Endpoint = format!("{addr}/nothing").parse().unwrap();
        assert!(matches!(
            fetch(&missing, Duration::from_secs(5)),
            Err(ScrapeError::Status { code: 404, .. })
        ));
        drop(scrape);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap();
        drop(closed);
        let error = fetch(&dead.to_string().parse().unwrap(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(error, ScrapeError::Connect { .. }), "{error}");
        assert!(error.to_string().contains(&dead.to_string()), "{error}");
    }
}
