//! The faults suite (issue 14): `fastedge serve` and `fastedge split` kept busy while the world
//! around them misbehaves, then checked for what they lost and what they kept.
//!
//! - serve: good keep-alive clients (every answer checked byte for byte, forged forwarding
//!   headers stripped) beside clients that reset mid-handshake, send garbage ClientHellos,
//!   trickle heads (slowloris) or hold idle connections, while the only backend is killed and
//!   restarted every few seconds and the metrics endpoint is scraped. After: alive, no panic,
//!   descriptors and RSS back near the baseline, failures only for sessions a kill cut,
//!   close reasons counted.
//! - serve again, with a keyless default certificate whose signer (`fastedge keyserver`) is
//!   SIGKILLed and restarted, and a dynamic SNI service that answers well, slowly or with
//!   garbage in turns: the right certificate for each, failures only while the signer is down.
//! - split: `fastedge gen` traffic while consumers of some ways are SIGKILLed and restarted in
//!   a loop; the steadily read ways lose nothing and the distributor stays up.
//!
//! The short form runs with `cargo test` (6,000 + 3,000 connections and 10 s of traffic, under
//! a minute). `make soak` runs the long form, the same tests scaled by
//! `FASTEDGE_SOAK_CONNECTIONS` (connections of the first serve soak, half of it for the second;
//! default 6,000) and `FASTEDGE_SOAK_SECONDS` (split traffic time, default 10).

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use fastedge_tests::{
    netns::VethPair,
    peers::{client_hello, handshake_records, try_read_response, RestartableBackend},
    process::{fastedge_bin, open_fds, rss_kib, Fastedge},
    ways::{attach, WayFiles},
    TempDir,
};
use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use fastedge_wire::http1::{parse_request_head, BodyFraming, Status, DEFAULT_MAX_HEAD};

/// How long and how hard: short by default, scaled by the environment for `make soak`.
struct Scale {
    connections: u64,
    seconds: u64,
}

fn scale() -> Scale {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
            })
            .unwrap_or(default)
    };
    Scale {
        connections: var("FASTEDGE_SOAK_CONNECTIONS", 6_000),
        seconds: var("FASTEDGE_SOAK_SECONDS", 10),
    }
}

/// A small deterministic generator (xorshift64), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The body the backend answers `GET /d/SEED/LEN` with.
fn body_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next() >> 24) as u8).collect()
}

/// The backend: `GET /d/SEED/LEN` answers [`body_bytes`], `POST /e` echoes the request body.
/// A request that does not carry fastedge's `X-Forwarded-For: 127.0.0.1` exactly once (or
/// still carries a client's forged one) gets a 500, which no good client accepts.
fn serve_deterministic(mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let answer = match parse_request_head(&buf, DEFAULT_MAX_HEAD) {
            Ok(Status::Complete(head)) => {
                let body_len = match head.body {
                    BodyFraming::ContentLength(n) => usize::try_from(n).unwrap_or(usize::MAX),
                    _ => 0,
                };
                if buf.len() - head.head_len >= body_len {
                    let text = String::from_utf8_lossy(&buf[..head.head_len]).to_lowercase();
                    let forwarded_ok = text.matches("\r\nx-forwarded-for:").count() == 1
                        && text.contains("\r\nx-forwarded-for: 127.0.0.1\r\n")
                        && !text.contains("10.6.6.6");
                    let target = head.target.to_owned();
                    let request_body = buf[head.head_len..head.head_len + body_len].to_vec();
                    buf.drain(..head.head_len + body_len);
                    let mut parts = target.split('/').skip(1);
                    let body = match (parts.next(), parts.next(), parts.next()) {
                        (Some("d"), Some(seed), Some(len)) => {
                            match (seed.parse::<u64>(), len.parse::<usize>()) {
                                (Ok(seed), Ok(len)) if len <= 1 << 20 => {
                                    Some(body_bytes(seed, len))
                                }
                                _ => None,
                            }
                        }
                        (Some("e"), None, None) => Some(request_body),
                        _ => None,
                    };
                    Some(match body {
                        Some(body) if forwarded_ok => (200, body),
                        Some(_) => (500, b"forwarding headers wrong".to_vec()),
                        None => (404, b"no such thing".to_vec()),
                    })
                } else {
                    None
                }
            }
            Ok(Status::Partial) => None,
            Err(_) => return,
        };
        if let Some((status, body)) = answer {
            let mut response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(&body);
            if stream.write_all(&response).is_err() {
                return;
            }
            continue;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Kills of the backend begun and finished: a session that overlaps a kill may fail.
#[derive(Default)]
struct Kills {
    begun: AtomicU64,
    finished: AtomicU64,
}

/// What the soak's clients saw, shared by their threads.
#[derive(Default)]
struct Tally {
    /// Connections opened by every kind of client.
    connections: AtomicU64,
    sessions_ok: AtomicU64,
    requests_ok: AtomicU64,
    /// Sessions that failed while a kill was under way or happened during them.
    failed_at_kill: AtomicU64,
    garbage: AtomicU64,
    resets: AtomicU64,
    slow_heads: AtomicU64,
    slow_hellos: AtomicU64,
    idle_held: AtomicU64,
    /// Slow heads and idle TLS connections no backend kill overlapped: the idle timers
    /// closed them (a kill closes the connections of the backend, and so theirs).
    idle_expected: AtomicU64,
    bare_held: AtomicU64,
    scrapes: AtomicU64,
    /// Anything that must not happen: a wrong answer, a failure with no kill to blame, a
    /// connection the server did not close in time, a scrape that failed.
    violations: Mutex<Vec<String>>,
    /// A few of the excused failures, for the report.
    excused_samples: Mutex<Vec<String>>,
}

impl Tally {
    fn violation(&self, what: String) {
        let mut all = self.violations.lock().unwrap();
        if all.len() < 50 {
            all.push(what);
        }
    }
}

fn connector() -> SslConnector {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_alpn_protos(b"\x08http/1.1").unwrap();
    builder.build()
}

fn tls_handshake(
    addr: SocketAddr,
    connector: &SslConnector,
) -> Result<SslStream<TcpStream>, String> {
    tls_handshake_as(addr, connector, "localhost")
}

/// The common name of the certificate the server presented ("" if none).
fn common_name(tls: &SslStream<TcpStream>) -> String {
    tls.ssl()
        .peer_certificate()
        .and_then(|cert| {
            cert.subject_name()
                .entries_by_nid(fastedge_tls::boring::nid::Nid::COMMONNAME)
                .next()
                .map(|cn| String::from_utf8_lossy(cn.data().as_slice()).into_owned())
        })
        .unwrap_or_default()
}

fn tls_handshake_as(
    addr: SocketAddr,
    connector: &SslConnector,
    name: &str,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut config = connector.configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    config
        .connect(name, tcp)
        .map_err(|e| format!("handshake: {e}"))
}

/// Why a good session did not finish: an answer that differs is never excused.
enum SessionError {
    Broken(String),
    Wrong(String),
}

/// One good keep-alive session: 1–5 requests (GET with a deterministic body of 0–64 KiB, or a
/// POST echoed back), sometimes two pipelined, sometimes with a forged `X-Forwarded-For`.
fn good_session(
    addr: SocketAddr,
    connector: &SslConnector,
    rng: &mut Rng,
) -> Result<u64, SessionError> {
    good_session_as(addr, connector, rng, "localhost").map(|(requests, _)| requests)
}

/// [`good_session`] with server name `name`; also returns the common name of the certificate
/// the server presented.
fn good_session_as(
    addr: SocketAddr,
    connector: &SslConnector,
    rng: &mut Rng,
    name: &str,
) -> Result<(u64, String), SessionError> {
    let mut tls = tls_handshake_as(addr, connector, name).map_err(SessionError::Broken)?;
    let presented = common_name(&tls);
    let requests = 1 + rng.below(5);
    let mut done = 0;
    while done < requests {
        let batch = if rng.below(4) == 0 { 2 } else { 1 };
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..batch {
            let forged = if rng.below(3) == 0 {
                "x-forwarded-for: 10.6.6.6\r\n"
            } else {
                ""
            };
            let len = match rng.below(10) {
                0 => 0,
                1..=5 => rng.below(2_000) as usize,
                6..=8 => rng.below(20_000) as usize,
                _ => 65_536,
            };
            if rng.below(3) == 0 {
                let body = body_bytes(rng.next(), len);
                wire.extend_from_slice(
                    format!(
                        "POST /e HTTP/1.1\r\nHost: soak\r\n{forged}Content-Length: {len}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                wire.extend_from_slice(&body);
                expected.push(body);
            } else {
                let seed = rng.next();
                wire.extend_from_slice(
                    format!("GET /d/{seed}/{len} HTTP/1.1\r\nHost: soak\r\n{forged}\r\n")
                        .as_bytes(),
                );
                expected.push(body_bytes(seed, len));
            }
        }
        tls.write_all(&wire)
            .map_err(|e| SessionError::Broken(format!("write: {e}")))?;
        for want in expected {
            let (head, body) = try_read_response(&mut tls)
                .map_err(|e| SessionError::Broken(format!("read after {done} answers: {e}")))?;
            if !head.starts_with("HTTP/1.1 200 ") || body != want {
                return Err(SessionError::Wrong(format!(
                    "answer {done}: {head:?}, {} bytes ({} expected), first {:?}",
                    body.len(),
                    want.len(),
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                )));
            }
            done += 1;
        }
    }
    // A good client ends with close_notify (the server counts the rest as truncated).
    tls.shutdown()
        .map_err(|e| SessionError::Broken(format!("close_notify: {e}")))?;
    Ok((done, presented))
}

/// Waits until the server closes `stream` (sends anything: an alert or close_notify before
/// its FIN, or the FIN itself) while `step` is called every `every`; returns how long it took,
/// or `None` after `within`.
fn wait_closed_by_server(
    stream: &TcpStream,
    within: Duration,
    every: Duration,
    mut step: impl FnMut() -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(every)).unwrap();
    let mut peek = [0u8; 1];
    while started.elapsed() < within {
        match stream.peek(&mut peek) {
            Ok(_) => return Some(started.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // A reset is a close too.
            Err(_) => return Some(started.elapsed()),
        }
        if !step() {
            return Some(started.elapsed());
        }
    }
    None
}

/// Resets with SO_LINGER 0: the kernel sends RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// A client that goes away abruptly: after connect, mid-ClientHello, after the server's
/// first flight, or after the handshake with half a request sent.
fn reset_client(addr: SocketAddr, connector: &SslConnector, rng: &mut Rng) {
    let hello = handshake_records(&client_hello("localhost", 0));
    match rng.below(4) {
        0 => {
            if let Ok(stream) = TcpStream::connect(addr) {
                reset(stream);
            }
        }
        1 => {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let cut = 1 + rng.below(hello.len() as u64 - 1) as usize;
                let _ = stream.write_all(&hello[..cut]);
                reset(stream);
            }
        }
        2 => {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let _ = stream.write_all(&hello);
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let _ = stream.read(&mut [0u8; 100]);
                reset(stream);
            }
        }
        _ => {
            if let Ok(mut tls) = tls_handshake(addr, connector) {
                let _ = tls.write_all(b"GET /d/1/100 HTTP/1.1\r\nHo");
                reset(tls.get_ref().try_clone().unwrap());
            }
        }
    }
}

/// A client whose ClientHello is garbage; the server must close (with an alert) promptly.
fn garbage_client(addr: SocketAddr, rng: &mut Rng, tally: &Tally) {
    let mut hello = handshake_records(&client_hello("localhost", rng.below(600) as usize));
    let bytes = match rng.below(4) {
        // Noise.
        0 => body_bytes(rng.next(), 1 + rng.below(3_000) as usize),
        // A handshake record of noise.
        1 => {
            let noise = body_bytes(rng.next(), 200);
            [&[0x16, 3, 1, 0, 200][..], &noise].concat()
        }
        // A ClientHello with a corrupted byte past the record header.
        2 => {
            let at = 5 + rng.below(hello.len() as u64 - 5) as usize;
            hello[at] ^= 1 + rng.below(255) as u8;
            hello
        }
        // A ClientHello, then a record that is not TLS.
        _ => [&hello[..], b"GET / HTTP/1.1\r\n\r\n"].concat(),
    };
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return;
    };
    let started = Instant::now();
    let _ = stream.write_all(&bytes);
    // Ends with the alert and FIN (or a reset, when the server still had our bytes unread):
    // what matters is that it ends, well within the handshake timeout.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            tally.violation(format!(
                "a garbage ClientHello was still open after {:?}",
                started.elapsed()
            ));
        }
        Err(_) => {}
    }
}

/// Slowloris: a request head one byte every 250 ms after a good handshake (cut by
/// `request_head_timeout`), or a ClientHello one byte every 250 ms (cut by
/// `handshake_timeout`).
fn slow_client(
    addr: SocketAddr,
    connector: &SslConnector,
    rng: &mut Rng,
    tally: &Tally,
    kills: &Kills,
) {
    let limit = Duration::from_secs(8);
    if rng.below(2) == 0 {
        let finished_before = kills.finished.load(Ordering::SeqCst);
        let Ok(mut tls) = tls_handshake(addr, connector) else {
            return;
        };
        let tcp = tls.get_ref().try_clone().unwrap();
        let head = b"GET /d/1/1 HTTP/1.1\r\nHost: soak\r\nX-Slow: ".to_vec();
        let mut next = 0;
        let cut = wait_closed_by_server(&tcp, limit, Duration::from_millis(250), || {
            let byte = head.get(next).copied().unwrap_or(b'z');
            next += 1;
            tls.write_all(&[byte]).is_ok()
        });
        tally.slow_heads.fetch_add(1, Ordering::Relaxed);
        if kills.begun.load(Ordering::SeqCst) <= finished_before {
            tally.idle_expected.fetch_add(1, Ordering::Relaxed);
        }
        if cut.is_none() {
            tally.violation(format!(
                "a trickled request head was still open after {limit:?}"
            ));
        }
    } else {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return;
        };
        let writer = stream.try_clone().unwrap();
        let hello = handshake_records(&client_hello("localhost", 0));
        let mut next = 0;
        let cut = wait_closed_by_server(&writer, limit, Duration::from_millis(250), || {
            next += 1;
            next < hello.len() && stream.write_all(&hello[next - 1..next]).is_ok()
        });
        tally.slow_hellos.fetch_add(1, Ordering::Relaxed);
        if cut.is_none() {
            tally.violation(format!(
                "a trickled ClientHello was still open after {limit:?}"
            ));
        }
    }
}

/// Idle holders: five TLS connections after one good request each and five bare TCP
/// connects, all silent until the server closes them (`idle_timeout`, `handshake_timeout`).
fn idle_client(
    addr: SocketAddr,
    connector: &SslConnector,
    rng: &mut Rng,
    tally: &Tally,
    kills: &Kills,
) {
    let finished_before = kills.finished.load(Ordering::SeqCst);
    let mut held = Vec::new();
    let mut tls_held = 0;
    for _ in 0..5 {
        if let Ok(mut tls) = tls_handshake(addr, connector) {
            let len = rng.below(1000) as usize;
            let seed = rng.next();
            let request = format!("GET /d/{seed}/{len} HTTP/1.1\r\nHost: soak\r\n\r\n");
            if tls.write_all(request.as_bytes()).is_ok() {
                if let Ok((_, body)) = try_read_response(&mut tls) {
                    if body != body_bytes(seed, len) {
                        tally.violation("an idle holder's answer differs".into());
                    }
                }
            }
            held.push(tls.get_ref().try_clone().unwrap());
            tally.idle_held.fetch_add(1, Ordering::Relaxed);
            tls_held += 1;
        }
        if let Ok(stream) = TcpStream::connect(addr) {
            held.push(stream);
            tally.bare_held.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally
        .connections
        .fetch_add(held.len() as u64, Ordering::Relaxed);
    let limit = Duration::from_secs(10);
    for stream in &held {
        if wait_closed_by_server(stream, limit, Duration::from_millis(200), || true).is_none() {
            tally.violation(format!("an idle connection was still open after {limit:?}"));
        }
    }
    if kills.begun.load(Ordering::SeqCst) <= finished_before {
        tally.idle_expected.fetch_add(tls_held, Ordering::Relaxed);
    }
}

/// Fetches the metrics text (HTTP/1.0, so the server closes after it).
fn scrape(metrics: SocketAddr) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&metrics, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(format!("answer: {text:?}"));
    }
    Ok(text)
}

/// The value of metric line `name` (labels included), if present.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs the client mix against `addr` until `stop`; each kind on its own threads.
fn run_clients(
    addr: SocketAddr,
    good_threads: u64,
    stop: &Arc<AtomicBool>,
    kills: &Arc<Kills>,
    tally: &Arc<Tally>,
) -> Vec<thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let kinds: [(&str, u64); 5] = [
        ("good", good_threads),
        ("reset", 2),
        ("garbage", 2),
        ("slow", 2),
        ("idle", 1),
    ];
    static SEED: AtomicU64 = AtomicU64::new(1);
    for (kind, count) in kinds {
        for _ in 0..count {
            let (stop, kills, tally) = (stop.clone(), kills.clone(), tally.clone());
            let seed = SEED.fetch_add(1, Ordering::Relaxed);
            threads.push(thread::spawn(move || {
                let connector = connector();
                let mut rng = Rng::new(seed);
                while !stop.load(Ordering::Relaxed) {
                    match kind {
                        "good" => {
                            // Read `finished` before `begun`: a kill that starts after this
                            // session did shows in `begun` at its end.
                            let finished_before = kills.finished.load(Ordering::SeqCst);
                            tally.connections.fetch_add(1, Ordering::Relaxed);
                            let outcome = good_session(addr, &connector, &mut rng);
                            let overlapped_kill =
                                kills.begun.load(Ordering::SeqCst) > finished_before;
                            match outcome {
                                Ok(requests) => {
                                    tally.sessions_ok.fetch_add(1, Ordering::Relaxed);
                                    tally.requests_ok.fetch_add(requests, Ordering::Relaxed);
                                }
                                Err(SessionError::Wrong(what)) => {
                                    tally.violation(format!("wrong answer: {what}"));
                                }
                                Err(SessionError::Broken(why)) if overlapped_kill => {
                                    tally.failed_at_kill.fetch_add(1, Ordering::Relaxed);
                                    let mut samples = tally.excused_samples.lock().unwrap();
                                    if samples.len() < 5 {
                                        samples.push(why);
                                    }
                                }
                                Err(SessionError::Broken(why)) => tally.violation(format!(
                                    "a session failed with no backend kill during it: {why}"
                                )),
                            }
                        }
                        "reset" => {
                            tally.connections.fetch_add(1, Ordering::Relaxed);
                            tally.resets.fetch_add(1, Ordering::Relaxed);
                            reset_client(addr, &connector, &mut rng);
                            // Resets and garbage are cheap: paced, they stay a part of the
                            // mix instead of most of it.
                            thread::sleep(Duration::from_millis(40));
                        }
                        "garbage" => {
                            tally.connections.fetch_add(1, Ordering::Relaxed);
                            tally.garbage.fetch_add(1, Ordering::Relaxed);
                            garbage_client(addr, &mut rng, &tally);
                            thread::sleep(Duration::from_millis(40));
                        }
                        "slow" => {
                            tally.connections.fetch_add(1, Ordering::Relaxed);
                            slow_client(addr, &connector, &mut rng, &tally, &kills);
                        }
                        _ => idle_client(addr, &connector, &mut rng, &tally, &kills),
                    }
                }
            }));
        }
    }
    threads
}

fn count(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// One phase of the serve soak: the client mix until `connections` were opened (or
/// `time_cap`), the backend killed every 2.5 s (down 0.5–1 s), the metrics scraped twice a
/// second. Returns what the clients saw and how many kills finished.
fn soak_phase(
    addr: SocketAddr,
    metrics: SocketAddr,
    backend: &mut RestartableBackend,
    connections: u64,
    time_cap: Duration,
) -> (Arc<Tally>, u64) {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(Kills::default());
    let tally = Arc::new(Tally::default());
    let clients = run_clients(addr, GOOD_THREADS, &stop, &kills, &tally);
    let scraper = {
        let (stop, tally) = (stop.clone(), tally.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match scrape(metrics) {
                    Ok(_) => {
                        tally.scrapes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tally.violation(format!("a metrics scrape failed: {e}")),
                }
                thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let mut rng = Rng::new(0x50a4 + connections);
    let mut next_kill = Instant::now() + Duration::from_secs(2);
    while count(&tally.connections) < connections && started.elapsed() < time_cap {
        if Instant::now() >= next_kill {
            kills.begun.fetch_add(1, Ordering::SeqCst);
            backend.kill();
            thread::sleep(Duration::from_millis(500 + rng.below(500)));
            backend.restart();
            kills.finished.fetch_add(1, Ordering::SeqCst);
            next_kill = Instant::now() + Duration::from_millis(2500);
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    scraper.join().unwrap();
    let kills_done = count(&kills.finished);
    let t = &tally;
    eprintln!(
        "soak phase: {} connections in {:?}: {} good sessions ({} requests) answered byte for \
         byte, {} cut by {kills_done} backend kills (e.g. {:?}); {} garbage hellos, {} resets, \
         {} slow heads, {} slow hellos, {} idle TLS and {} bare connects held; {} scrapes",
        count(&t.connections),
        started.elapsed(),
        count(&t.sessions_ok),
        count(&t.requests_ok),
        count(&t.failed_at_kill),
        t.excused_samples.lock().unwrap(),
        count(&t.garbage),
        count(&t.resets),
        count(&t.slow_heads),
        count(&t.slow_hellos),
        count(&t.idle_held),
        count(&t.bare_held),
        count(&t.scrapes),
    );
    (tally, kills_done)
}

/// Good client threads in the serve soak.
const GOOD_THREADS: u64 = 8;

/// The serve soak (priority 1 of the faults suite): a warm-up without faults, then two phases
/// of faults of `FASTEDGE_SOAK_CONNECTIONS / 2` connections each. Descriptors must come back to
/// the warm-up's count after each; memory is compared between the phases (the first one
/// reaches the allocator's high-water mark, so a leak shows as growth in the second).
#[test]
fn serve_soak_under_backend_restarts_and_hostile_clients() {
    let scale = scale();
    let state = TempDir::new("soak-serve");
    let mut backend = RestartableBackend::start_with(Arc::new(serve_deterministic));
    let cpus = fastedge_runtime::CpuList::available()
        .unwrap()
        .cpus()
        .to_vec();
    let cores: Vec<String> = cpus.iter().take(2).map(ToString::to_string).collect();
    let (mut server, addr) = Fastedge::serve_config(
        &state,
        &format!(
            "cores = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [frontend]\nhandshake_timeout = \"3s\"\nidle_timeout = \"2s\"\n\
             request_head_timeout = \"1s\"\n\
             [balance]\ndeath_timeout = \"200ms\"\n\
             [[backend]]\naddress = \"{}\"\nx_forwarded = true\n",
            cores.join(","),
            backend.addr()
        ),
    );
    let metrics: SocketAddr = server.metrics_addr().parse().unwrap();
    let pid = server.pid();
    let quiet = |what: &str| {
        // Every connection closed (lingering closes included) and counted.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = scrape(metrics).unwrap();
            if metric(&text, "fastedge_connections_active") == Some(0) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: connections still open after 30 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    };
    let fds_back_to = |baseline: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while open_fds(pid) > baseline && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(200));
        }
        let now = open_fds(pid);
        assert!(
            now <= baseline,
            "descriptors {what}: {now}, {baseline} after the warm-up"
        );
    };

    // Warm-up: the same mix without faults, so lazily made state (buffer pools, the
    // allocator's arenas, per-core caches) exists before the baseline.
    let stop = Arc::new(AtomicBool::new(false));
    let warm_tally = Arc::new(Tally::default());
    let clients = run_clients(
        addr,
        GOOD_THREADS,
        &stop,
        &Arc::new(Kills::default()),
        &warm_tally,
    );
    thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let warm_violations = warm_tally.violations.lock().unwrap().clone();
    assert!(warm_violations.is_empty(), "warm-up: {warm_violations:#?}");
    quiet("after warm-up");
    thread::sleep(Duration::from_millis(500));
    let (fds_before, rss_before) = (open_fds(pid), rss_kib(pid));

    let per_phase = scale.connections.div_ceil(2);
    // At least 100 connections a second however loaded the machine, else the phase is cut
    // short (the checks below still need a minimum of work done).
    let time_cap = Duration::from_secs(20 + per_phase / 100);
    let mut rss = vec![rss_before];
    let mut totals = (0, 0, 0);
    let counted = Tally::default();
    for phase in 1..=2 {
        let (tally, kills) = soak_phase(addr, metrics, &mut backend, per_phase, time_cap);
        let violations = tally.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "phase {phase}: {violations:#?}");
        quiet("after a soak phase");
        assert!(
            server.is_running(),
            "fastedge exited:\n{}",
            server.log_text()
        );
        // Enough happened to mean something, and the kills cost only sessions open at them:
        // at most one per good client thread and kill.
        let (sessions_ok, failed) = (count(&tally.sessions_ok), count(&tally.failed_at_kill));
        assert!(kills >= 2, "phase {phase}: {kills} backend kills");
        assert!(
            sessions_ok >= 200,
            "phase {phase}: {sessions_ok} good sessions"
        );
        assert!(
            failed <= GOOD_THREADS * kills,
            "phase {phase}: {failed} sessions failed over {kills} kills"
        );
        totals = (totals.0 + sessions_ok, totals.1 + failed, totals.2 + kills);
        for (sum, part) in [
            (&counted.idle_expected, &tally.idle_expected),
            (&counted.slow_hellos, &tally.slow_hellos),
            (&counted.bare_held, &tally.bare_held),
            (&counted.garbage, &tally.garbage),
        ] {
            sum.fetch_add(count(part), Ordering::Relaxed);
        }
        fds_back_to(fds_before, &format!("after phase {phase}"));
        rss.push(rss_kib(pid));
    }
    eprintln!(
        "soak: descriptors {fds_before} after the warm-up and after each phase; RSS (KiB) \
         after warm-up, phase 1, phase 2: {rss:?}; {} good sessions, {} cut by {} kills",
        totals.0, totals.1, totals.2
    );
    let log = server.log_text();
    assert!(
        !log.contains("panicked"),
        "a panic in the log:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        rss[2] <= rss[1] + rss[1] / 20,
        "RSS grew over 5 % in the second phase: {rss:?} KiB (after warm-up, phase 1, phase 2)"
    );

    // The backend is up: no core keeps it marked dead once clients come (the first connect
    // that succeeds revives it).
    let dead_cores = format!(
        "fastedge_backend_dead_cores{{backend=\"{}\"}}",
        backend.addr()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let connector = connector();
    let mut rng = Rng::new(11);
    loop {
        let text = scrape(metrics).unwrap();
        let dead = metric(&text, &dead_cores).unwrap_or_else(|| panic!("{dead_cores} in\n{text}"));
        if dead == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backend is up, but {dead} core(s) still mark it dead:\n{text}"
        );
        for _ in 0..4 {
            if let Err(SessionError::Broken(e) | SessionError::Wrong(e)) =
                good_session(addr, &connector, &mut rng)
            {
                panic!("a session after the soak failed: {e}");
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let text = quiet("after the last sessions");

    // Every connection is counted under one close reason, and each kind of trouble under its
    // own.
    let accepted = metric(&text, "fastedge_connections_accepted_total").unwrap();
    let reasons = [
        "closed",
        "client_error",
        "backend_error",
        "idle",
        "handshake_failed",
        "handshake_timeout",
        "backend_unavailable",
        "bad_request",
    ];
    let closed: HashMap<&str, u64> = reasons
        .iter()
        .map(|r| {
            let name = format!("fastedge_connections_closed_total{{reason=\"{r}\"}}");
            (*r, metric(&text, &name).unwrap_or(0))
        })
        .collect();
    eprintln!("soak: accepted {accepted}, closed {closed:?}");
    assert_eq!(
        closed.values().sum::<u64>(),
        accepted,
        "every accepted connection closed under one reason:\n{text}"
    );
    let expect_at_least = |reason: &str, n: u64| {
        assert!(
            closed[reason] >= n,
            "{reason}: {} counted, at least {n} expected:\n{text}",
            closed[reason]
        );
    };
    expect_at_least("closed", totals.0);
    // A garbage hello fails the handshake (or, if it looks like the start of a longer
    // record, times out waiting for the rest).
    expect_at_least(
        "handshake_failed",
        count(&counted.garbage).saturating_sub(closed["handshake_timeout"]),
    );
    expect_at_least("idle", count(&counted.idle_expected));
    expect_at_least(
        "handshake_timeout",
        count(&counted.slow_hellos) + count(&counted.bare_held),
    );
    server.terminate_cleanly(Duration::from_secs(40));
}

/// The split soak (priority 2): `fastedge gen` traffic into `fastedge split` over 4 ways; ways
/// 0 and 1 are read all along, the consumers of ways 2 and 3 (`fastedge tap` processes) are
/// SIGKILLed after 50–600 ms and started again (now and then after a pause long enough for
/// their ways to fill), in a loop. The steady ways lose nothing, the
/// distributor stays up, and the battered ways still deliver to a consumer at the end.
#[test]
fn split_under_consumers_killed_in_a_loop() {
    const WAYS: u32 = 4;
    const FLOWS: u64 = 256;
    const RATE: u64 = 10_000;
    let scale = scale();
    let frames = RATE * scale.seconds;
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            &pair.dev_a,
            "--ways",
            &WAYS.to_string(),
            "--way-kib",
            "256",
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    split.wait_for_logged("split running", Duration::from_secs(15));

    // The steady consumers, on a thread of their own.
    let mut steady = attach(&pair.dev_a, 0..2);
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        thread::spawn(move || {
            let mut arrivals: HashMap<u64, Vec<(usize, u32)>> = HashMap::new();
            loop {
                let stopping = !reading.load(Ordering::Relaxed);
                let mut got = 0;
                for (way, consumer) in steady.iter_mut().enumerate() {
                    got += consumer.read_batch(usize::MAX, |record| {
                        if let Some((flow, seq)) = fastedge_wire::synth::marker(record.data) {
                            arrivals.entry(seq).or_default().push((way, flow));
                        }
                    });
                }
                if got == 0 {
                    if stopping {
                        break;
                    }
                    fastedge_rings::shm::wait_any(&steady, Duration::from_millis(50));
                }
            }
            let counters: Vec<(u64, u64)> = steady.iter().map(|c| c.counters()).collect();
            (arrivals, counters)
        })
    };

    // The consumers that die: `fastedge tap` on ways 2 and 3, killed and started again.
    let tap = |way: u32, out: &std::path::Path, count: Option<&str>| {
        let mut command = std::process::Command::new(fastedge_bin());
        command
            .args(["tap", &format!("{}:{way}", pair.dev_a), "-w"])
            .arg(out)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(count) = count {
            command.args(["--count", count]);
        }
        command.spawn().unwrap()
    };
    let state = TempDir::new("soak-split");
    let killing = Arc::new(AtomicBool::new(true));
    let killer = {
        let killing = killing.clone();
        let out = state.path().join("killed.pcap");
        let tap = &tap;
        move || {
            let mut rng = Rng::new(0x5b17);
            let (mut kills, mut refused) = (0u64, Vec::new());
            while killing.load(Ordering::Relaxed) {
                let mut taps: Vec<_> = (2..WAYS).map(|way| tap(way, &out, None)).collect();
                thread::sleep(Duration::from_millis(50 + rng.below(550)));
                // Now and then nobody reads for a while: the dead consumer's way fills.
                let dead_for = Duration::from_millis(if rng.below(4) == 0 { 2_500 } else { 0 });
                for child in &mut taps {
                    match child.try_wait().unwrap() {
                        // A consumer that could not attach said why on stderr.
                        Some(status) => {
                            let mut why = String::new();
                            let _ = child.stderr.take().unwrap().read_to_string(&mut why);
                            refused.push(format!("{status}: {why}"));
                        }
                        None => {
                            child.kill().unwrap();
                            child.wait().unwrap();
                            kills += 1;
                        }
                    }
                }
                thread::sleep(dead_for);
            }
            (kills, refused)
        }
    };
    let (sent_log, (kills, refused)) = thread::scope(|s| {
        let killer = s.spawn(killer);
        let log = fastedge_tests::ways::gen(
            &pair.ns_b,
            &pair.dev_b,
            &[
                "--flows",
                &FLOWS.to_string(),
                "--rate",
                &RATE.to_string(),
                "--count",
                &frames.to_string(),
            ],
        );
        killing.store(false, Ordering::Relaxed);
        (log, killer.join().unwrap())
    });
    thread::sleep(Duration::from_millis(300));
    reading.store(false, Ordering::Relaxed);
    let (arrivals, counters) = reader.join().unwrap();

    // The battered ways still work: a fresh consumer of each gets new frames.
    let mut finals = Vec::new();
    for way in 2..WAYS {
        let out = state.path().join(format!("final-{way}.pcap"));
        finals.push((tap(way, &out, Some("5")), out));
    }
    thread::sleep(Duration::from_millis(300));
    fastedge_tests::ways::gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--flows",
            "64",
            "--count",
            "2000",
            "--rate",
            "10000",
            "--first-seq",
            "1000000000",
        ],
    );
    for (child, out) in finals {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let size = std::fs::metadata(&out).unwrap().len();
        assert!(size > 24 + 5 * 16, "{}: {size} bytes", out.display());
    }

    assert!(
        split.is_running(),
        "split died:\n{}\n{sent_log}",
        split.log_text()
    );
    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    eprintln!(
        "split soak: {frames} frames in {} s, {kills} consumer kills, {} failed attaches; \
         steady ways {counters:?} (delivered, dropped); {}",
        scale.seconds,
        refused.len(),
        log.lines()
            .filter(|l| l.contains("split stopped"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(refused.is_empty(), "consumers refused: {refused:#?}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(kills >= scale.seconds, "{kills} consumer kills");
    // The ways left unread for a while overflowed, and the distributor counted it.
    let dropped_on = |way: u32| -> u64 {
        log.split(&format!(" {way}:"))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '/').next())
            .and_then(|pair| pair.split('/').nth(1))
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("way {way} counters in: {log}"))
    };
    assert!(
        (2..WAYS).map(dropped_on).sum::<u64>() > 0,
        "drops counted on the ways whose consumers died: {log}"
    );
    assert_eq!(dropped_on(0) + dropped_on(1), 0, "{log}");

    // Every frame of every flow on a steady way arrived there, once.
    assert!(
        counters.iter().all(|&(_, dropped)| dropped == 0),
        "steady ways dropped: {counters:?}\n{log}"
    );
    let mut flow_way: HashMap<u32, usize> = HashMap::new();
    for (seq, copies) in &arrivals {
        assert_eq!(copies.len(), 1, "frame {seq} arrived {copies:?}");
        let (way, flow) = copies[0];
        let first = *flow_way.entry(flow).or_insert(way);
        assert_eq!(first, way, "flow {flow} on one way");
    }
    assert!(
        !flow_way.is_empty() && flow_way.len() < FLOWS as usize,
        "{} of {FLOWS} flows on the steady ways",
        flow_way.len()
    );
    let missing: Vec<u64> = (0..frames)
        .filter(|seq| flow_way.contains_key(&(((seq / 2) % FLOWS) as u32)))
        .filter(|seq| !arrivals.contains_key(seq))
        .collect();
    assert!(
        missing.is_empty(),
        "{} frames of the steady ways' flows missing (first {:?}):\n{log}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// What the dynamic SNI service of the soak does now.
const SNI_GOOD: u8 = 0;
const SNI_SLOW: u8 = 1;
const SNI_GARBAGE: u8 = 2;

/// A dynamic SNI service (bud's protocol) that answers every name with the context `json`
/// while its mode is [`SNI_GOOD`], answers it only after 3 s while [`SNI_SLOW`], and answers
/// garbage while [`SNI_GARBAGE`]. Returns its port and the count of requests.
fn changing_sni_service(
    json: String,
    mode: Arc<std::sync::atomic::AtomicU8>,
) -> (u16, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = Arc::new(AtomicU64::new(0));
    let json = Arc::new(json);
    let counter = asked.clone();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let (json, mode, counter) = (json.clone(), mode.clone(), counter.clone());
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
                let body: Vec<u8> = match mode.load(Ordering::SeqCst) {
                    SNI_GOOD => json.as_bytes().to_vec(),
                    SNI_SLOW => {
                        thread::sleep(Duration::from_millis(3000));
                        json.as_bytes().to_vec()
                    }
                    SNI_GARBAGE => body_bytes(head.len() as u64, 300),
                    _ => b"{}".to_vec(),
                };
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                out.extend_from_slice(&body);
                let _ = stream.write_all(&out);
            });
        }
    });
    (port, asked)
}

fn start_signer(key: &std::path::Path, socket: &std::path::Path) -> Fastedge {
    let signer = Fastedge::start(
        &[
            "keyserver",
            "--listen",
            socket.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    signer.wait_for_line("key server listening", Duration::from_secs(10));
    signer
}

/// The serve soak with the other services misbehaving (priority 3): the default certificate's
/// key lives in `fastedge keyserver`, which is SIGKILLed and restarted every 2.5 s; every good
/// session asks for a new name, which the dynamic SNI service (cache bounded at 64 names)
/// answers well, slowly (past `sni_timeout`) or with garbage, in turns of 3 s; hostile clients
/// as in the first soak. Good sessions get the dynamic context's certificate while the service
/// answers well, the default (keyless) one otherwise, every answer byte for byte; they fail
/// only when a signer kill overlaps them (while it is down, handshakes that need it fail; the
/// first one after a restart works).
#[test]
fn serve_soak_while_the_signer_dies_and_the_sni_service_turns_bad() {
    const SESSIONS_THREADS: u64 = 6;
    let scale = scale();
    let state = TempDir::new("soak-keyless");
    let (default_cert, default_key) = state.self_signed("keyless.test");
    let (dyn_cert, dyn_key) = state.self_signed("dyn.test");
    let escape = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().replace('\n', "\\n");
    let json = format!(
        "{{\"cert\":\"{}\",\"key\":\"{}\"}}",
        escape(&dyn_cert),
        escape(&dyn_key)
    );
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(SNI_GOOD));
    let (sni_port, sni_asked) = changing_sni_service(json, mode.clone());
    let socket = state.path().join("signer.sock");
    let mut signer = start_signer(&default_key, &socket);
    let backend = RestartableBackend::start_with(Arc::new(serve_deterministic));
    let cpus = fastedge_runtime::CpuList::available()
        .unwrap()
        .cpus()
        .to_vec();
    let cores: Vec<String> = cpus.iter().take(2).map(ToString::to_string).collect();
    let (mut server, addr) = Fastedge::serve_config(
        &state,
        &format!(
            "cores = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             [frontend]\nhandshake_timeout = \"5s\"\nidle_timeout = \"2s\"\n\
             request_head_timeout = \"1s\"\n\
             [tls]\ncert = \"{}\"\nkey_server = \"unix:{}\"\n\
             sni_url = \"http://127.0.0.1:{sni_port}/bud/sni/%s\"\nsni_timeout = \"2s\"\n\
             sni_cache_size = 64\nsni_fetchers = 16\n\
             [[backend]]\naddress = \"{}\"\nx_forwarded = true\n",
            cores.join(","),
            default_cert.display(),
            socket.display(),
            backend.addr()
        ),
    );
    let metrics: SocketAddr = server.metrics_addr().parse().unwrap();
    let pid = server.pid();
    let quiet = || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = scrape(metrics).unwrap();
            if metric(&text, "fastedge_connections_active") == Some(0) {
                break text;
            }
            assert!(Instant::now() < deadline, "connections still open:\n{text}");
            thread::sleep(Duration::from_millis(200));
        }
    };
    // Warm-up: both contexts, and the signer's connections, made once.
    {
        let connector = connector();
        let mut rng = Rng::new(3);
        for i in 0..20 {
            let name = format!("warm{i}.dyn.test");
            mode.store(
                if i % 2 == 0 { SNI_GOOD } else { SNI_GARBAGE },
                Ordering::SeqCst,
            );
            if let Err(SessionError::Broken(e) | SessionError::Wrong(e)) =
                good_session_as(addr, &connector, &mut rng, &name)
            {
                panic!("warm-up: {name}: {e}");
            }
        }
        mode.store(SNI_GOOD, Ordering::SeqCst);
    }
    quiet();
    let fds_before = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let signer_kills = Arc::new(Kills::default());
    let mode_changes = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Tally::default());
    // Hostile clients as in the first soak (no backend kills here).
    let mut clients = run_clients(addr, 0, &stop, &Arc::new(Kills::default()), &tally);
    let presented: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    static NAME: AtomicU64 = AtomicU64::new(0);
    for seed in 0..SESSIONS_THREADS {
        let (stop, kills, changes, mode, tally, presented) = (
            stop.clone(),
            signer_kills.clone(),
            mode_changes.clone(),
            mode.clone(),
            tally.clone(),
            presented.clone(),
        );
        clients.push(thread::spawn(move || {
            let connector = connector();
            let mut rng = Rng::new(1000 + seed);
            while !stop.load(Ordering::Relaxed) {
                let name = format!("s{}.dyn.test", NAME.fetch_add(1, Ordering::Relaxed));
                let finished_before = kills.finished.load(Ordering::SeqCst);
                let changes_before = changes.load(Ordering::SeqCst);
                let mode_before = mode.load(Ordering::SeqCst);
                tally.connections.fetch_add(1, Ordering::Relaxed);
                let outcome = good_session_as(addr, &connector, &mut rng, &name);
                let overlapped_kill = kills.begun.load(Ordering::SeqCst) > finished_before;
                let mode_steady = changes.load(Ordering::SeqCst) == changes_before;
                match outcome {
                    Ok((requests, cn)) => {
                        tally.sessions_ok.fetch_add(1, Ordering::Relaxed);
                        tally.requests_ok.fetch_add(requests, Ordering::Relaxed);
                        let expected = if mode_before == SNI_GOOD {
                            "dyn.test"
                        } else {
                            "keyless.test"
                        };
                        if mode_steady && cn != expected {
                            tally.violation(format!(
                                "{name} got {cn:?} with the SNI service in mode {mode_before}"
                            ));
                        }
                        *presented.lock().unwrap().entry(cn).or_default() += 1;
                    }
                    Err(SessionError::Wrong(what)) => {
                        tally.violation(format!("wrong answer: {what}"));
                    }
                    // While the signer is down, every handshake that needs it fails (there
                    // is no other signer to ask): fast, so wait a little before the next.
                    Err(SessionError::Broken(_)) if overlapped_kill => {
                        tally.failed_at_kill.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(20));
                    }
                    Err(SessionError::Broken(why)) => tally.violation(format!(
                        "{name} failed with no signer kill during it (SNI mode {mode_before}, \
                         steady: {mode_steady}): {why}"
                    )),
                }
            }
        }));
    }

    // The faults: the signer dies every 2.5 s, the SNI service changes every 3 s.
    let started = Instant::now();
    let target = scale.connections.div_ceil(2);
    let time_cap = Duration::from_secs(20 + target / 100);
    let mut rng = Rng::new(0x6b);
    let (mut next_kill, mut next_turn) = (
        started + Duration::from_secs(1),
        started + Duration::from_secs(3),
    );
    let mut turns = 0u64;
    while count(&tally.connections) < target && started.elapsed() < time_cap {
        let now = Instant::now();
        if now >= next_kill {
            signer_kills.begun.fetch_add(1, Ordering::SeqCst);
            signer.signal(nix::sys::signal::Signal::SIGKILL);
            signer.wait_exit(Duration::from_secs(5));
            thread::sleep(Duration::from_millis(500 + rng.below(500)));
            signer = start_signer(&default_key, &socket);
            signer_kills.finished.fetch_add(1, Ordering::SeqCst);
            next_kill = Instant::now() + Duration::from_millis(2500);
        }
        if now >= next_turn {
            turns += 1;
            mode_changes.fetch_add(1, Ordering::SeqCst);
            mode.store((turns % 3) as u8, Ordering::SeqCst);
            mode_changes.fetch_add(1, Ordering::SeqCst);
            next_turn = Instant::now() + Duration::from_secs(3);
        }
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let kills = count(&signer_kills.finished);
    let presented = presented.lock().unwrap().clone();
    eprintln!(
        "soak with signer kills and a bad SNI service: {} connections in {:?}; {} good \
         sessions ({} requests), certificates {presented:?}, {} cut by {kills} signer kills; \
         {turns} SNI turns, {} SNI requests; {} garbage hellos, {} resets, {} slow heads, {} \
         slow hellos, {} idle TLS and {} bare connects held",
        count(&tally.connections),
        started.elapsed(),
        count(&tally.sessions_ok),
        count(&tally.requests_ok),
        count(&tally.failed_at_kill),
        count(&sni_asked),
        count(&tally.garbage),
        count(&tally.resets),
        count(&tally.slow_heads),
        count(&tally.slow_hellos),
        count(&tally.idle_held),
        count(&tally.bare_held),
    );
    let violations = tally.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(
        kills >= 2 && turns >= 2,
        "{kills} signer kills, {turns} SNI turns"
    );
    assert!(
        presented.get("dyn.test").copied().unwrap_or(0) > 0
            && presented.get("keyless.test").copied().unwrap_or(0) > 0,
        "both certificates served: {presented:?}"
    );

    // Afterwards, at once: the service's context while it answers well, the keyless default
    // while it answers garbage.
    let connector = connector();
    let mut rng = Rng::new(7);
    for (name, answer, cn) in [
        ("after.dyn.test", SNI_GOOD, "dyn.test"),
        ("after-garbage.dyn.test", SNI_GARBAGE, "keyless.test"),
    ] {
        mode.store(answer, Ordering::SeqCst);
        match good_session_as(addr, &connector, &mut rng, name) {
            Ok((_, got)) => assert_eq!(got, cn, "{name}"),
            Err(SessionError::Broken(e) | SessionError::Wrong(e)) => panic!("{name}: {e}"),
        }
    }
    let text = quiet();
    let accepted = metric(&text, "fastedge_connections_accepted_total").unwrap();
    let closed: u64 = text
        .lines()
        .filter(|l| l.starts_with("fastedge_connections_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(closed, accepted, "{text}");
    assert!(
        server.is_running(),
        "fastedge exited:\n{}",
        server.log_text()
    );
    let log = server.log_text();
    assert!(!log.contains("panicked"), "a panic in the log");
    let deadline = Instant::now() + Duration::from_secs(15);
    while open_fds(pid) > fds_before && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let fds_after = open_fds(pid);
    eprintln!("descriptors: {fds_before} after the warm-up, {fds_after} at the end");
    assert!(
        fds_after <= fds_before,
        "descriptors: {fds_before} → {fds_after}"
    );
    server.terminate_cleanly(Duration::from_secs(40));
}

/// Clients that reset right after connecting, before the server looked at their connection:
/// each is still an accepted connection, closed for a client error — in the metrics, not
/// only in the kernel's counters (found by the soak: accepted fell short of connections made).
#[test]
fn connections_reset_before_they_are_served_are_counted() {
    const RESETS: u64 = 300;
    let state = TempDir::new("soak-early-resets");
    let backend = RestartableBackend::start_with(Arc::new(serve_deterministic));
    let (server, addr) = Fastedge::serve_config(
        &state,
        &format!(
            "metrics_listen = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{}\"\n",
            backend.addr()
        ),
    );
    let metrics: SocketAddr = server.metrics_addr().parse().unwrap();
    for _ in 0..RESETS {
        reset(TcpStream::connect(addr).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(metrics).unwrap();
        let accepted = metric(&text, "fastedge_connections_accepted_total").unwrap_or(0);
        if (accepted >= RESETS && metric(&text, "fastedge_connections_active") == Some(0))
            || Instant::now() > deadline
        {
            break text;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metric(&text, "fastedge_connections_accepted_total"),
        Some(RESETS),
        "{text}"
    );
    let closed: u64 = text
        .lines()
        .filter(|l| l.starts_with("fastedge_connections_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(closed, RESETS, "{text}");
}
