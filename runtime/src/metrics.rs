//! A metrics registry and its Prometheus text exposition, served over HTTP off the data-path
//! cores.
//!
//! The registry knows no metric of its own: each subsystem registers a [`Source`] that writes
//! its families (the terminator registers serve's connection and backend counters). Sources
//! keep their counters as they like (per core, relaxed atomics) and sum them when rendered.

use std::{
    fmt::Write as _,
    sync::{atomic::Ordering, Arc, Mutex, PoisonError},
};

/// Something that writes metric families in Prometheus text format, on each scrape.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Appends this source's families to `out` (see [`write_family`]).
    fn render(&self, out: &mut String);
}

/// Every registered [`Source`]; cheap to clone (clones share the sources).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    sources: Arc<Mutex<Vec<Arc<dyn Source>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `source`; it is rendered after those registered before it.
    pub fn register(&self, source: Arc<dyn Source>) {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// Every source in Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::with_capacity(2048);
        for source in sources {
            source.render(&mut out);
        }
        out
    }
}

/// Appends one metric family: its `# HELP` and `# TYPE` lines (`kind`: `counter`, `gauge`),
/// then one sample per `(labels, value)`, where `labels` is empty or `{name="value",…}` (see
/// [`label`]).
pub fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: &[(String, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A one-label set, `{name="value"}`, with the value escaped as the format asks.
pub fn label(name: &str, value: &str) -> String {
    format!(
        "{{{name}=\"{}\"}}",
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
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
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A source with one counter.
    #[derive(Debug, Default)]
    struct Counter(AtomicU64);

    impl Source for Counter {
        fn render(&self, out: &mut String) {
            write_family(
                out,
                "test_things_total",
                "counter",
                "Things counted.",
                &[(String::new(), self.0.load(Ordering::Relaxed))],
            );
        }
    }

    #[test]
    fn renders_every_source_in_order_and_escapes_labels() {
        let registry = Registry::new();
        assert_eq!(registry.render(), "");
        let counter = Arc::new(Counter::default());
        registry.register(counter.clone());
        counter.0.fetch_add(3, Ordering::Relaxed);
        #[derive(Debug)]
        struct Labelled;
        impl Source for Labelled {
            fn render(&self, out: &mut String) {
                write_family(
                    out,
                    "test_up",
                    "gauge",
                    "Up.",
                    &[(label("who", "a\"b\\c\n"), 1)],
                );
            }
        }
        registry.clone().register(Arc::new(Labelled));
        assert_eq!(
            registry.render(),
            "# HELP test_things_total Things counted.\n# TYPE test_things_total counter\n\
             test_things_total 3\n\
             # HELP test_up Up.\n# TYPE test_up gauge\ntest_up{who=\"a\\\"b\\\\c\\n\"} 1\n"
        );
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
        let counter = Arc::new(Counter::default());
        counter.0.fetch_add(1, Ordering::Relaxed);
        registry.register(counter);
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
        assert!(answer.contains("test_things_total 1\n"));
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
