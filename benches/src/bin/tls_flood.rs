//! A cheap TLS 1.3 handshake load generator: CONNS client threads, each opening a TCP
//! connection, completing a handshake (BoringSSL client, no certificate check) and closing, over
//! and over for SECONDS. Prints `handshakes N failed F missed M in S s; cipher C, group G`.
//!
//! Full handshakes offer no session. With `--resume`, one full handshake first gets a session
//! (it sends `GET /` and reads until the server's ticket has arrived), and every handshake
//! after it offers that session, as `openssl s_time -reuse` does; `missed` counts
//! the handshakes the server did not resume (they are not in `handshakes`).
//!
//! OpenSSL 3.0's `s_time` spends ~0.7 ms of client CPU per handshake and keeps one connection in
//! flight, so the server idles between handshakes and pays a wake-up for each. This client costs
//! a fraction of that (no certificate verification, BoringSSL's X25519) and keeps CONNS
//! handshakes in flight, so one client core can keep a server core busy.
//!
//! Usage: `tls_flood [--resume] HOST:PORT SECONDS CONNS [GROUP]` (GROUP: X25519 by default)

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use fastedge_tls::boring::ssl::{SslConnector, SslSession, SslSessionCacheMode, SslStream};

const USAGE: &str = "usage: tls_flood [--resume] HOST:PORT SECONDS CONNS [GROUP]";

/// One handshake with `addr`, offering `session` when there is one.
fn handshake(
    connector: &SslConnector,
    addr: SocketAddr,
    session: Option<&SslSession>,
) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut config = connector.configure().map_err(|e| e.to_string())?;
    if let Some(session) = session {
        // SAFETY: the session came from a handshake of this connector's own context.
        unsafe { config.set_session(session) }.map_err(|e| e.to_string())?;
    }
    config
        .verify_hostname(false)
        .connect("bench.test", tcp)
        .map_err(|e| format!("handshake: {e}"))
}

/// A session to resume: a full handshake and one request; reads until the server's ticket
/// has arrived (it comes before the answer, or with it).
fn first_session(
    connector: &SslConnector,
    addr: SocketAddr,
    sessions: &Mutex<Option<SslSession>>,
) -> Result<SslSession, String> {
    let mut stream = handshake(connector, addr, None)?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
        .map_err(|e| format!("request: {e}"))?;
    let mut chunk = [0u8; 4096];
    let mut answered = 0;
    loop {
        if let Some(session) = sessions.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Ok(session);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answered += n,
        }
    }
    // The read that ended may have processed the ticket still.
    if let Some(session) = sessions.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Ok(session);
    }
    Err(format!(
        "the server sent no session ticket ({answered} bytes of answer)"
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let resume = match args.iter().position(|a| a == "--resume") {
        Some(at) => {
            args.remove(at);
            true
        }
        None => false,
    };
    let (addr, seconds, conns, group) = match args.as_slice() {
        [addr, seconds, conns] => (addr, seconds, conns, "X25519"),
        [addr, seconds, conns, group] => (addr, seconds, conns, group.as_str()),
        _ => return Err(USAGE.into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let seconds: f64 = seconds.parse().map_err(|e| format!("seconds: {e}"))?;
    let conns: usize = conns.parse().map_err(|e| format!("connections: {e}"))?;
    if conns == 0 || seconds <= 0.0 {
        return Err("SECONDS and CONNS must be positive".into());
    }
    let mut builder = fastedge_benches::tls13_client(group)?;
    let sessions = Arc::new(Mutex::new(None::<SslSession>));
    if resume {
        builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        let sessions = sessions.clone();
        builder.set_new_session_callback(move |_, session| {
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(session);
        });
    }
    let connector = Arc::new(builder.build());
    let offered = if resume {
        Some(Arc::new(first_session(&connector, addr, &sessions)?))
    } else {
        None
    };

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let missed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let negotiated = Arc::new(Mutex::new(None::<String>));
    let last_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (connector, offered, done, failed, missed, stop) = (
                connector.clone(),
                offered.clone(),
                done.clone(),
                failed.clone(),
                missed.clone(),
                stop.clone(),
            );
            let (negotiated, last_error) = (negotiated.clone(), last_error.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match handshake(&connector, addr, offered.as_deref()) {
                        Ok(stream) if offered.is_some() && !stream.ssl().session_reused() => {
                            missed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(stream) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            let mut first = negotiated.lock().unwrap_or_else(|e| e.into_inner());
                            if first.is_none() {
                                let ssl = stream.ssl();
                                *first = Some(format!(
                                    "cipher {}, group {}",
                                    ssl.current_cipher().map_or("?", |c| c.name()),
                                    ssl.curve_name().unwrap_or("?")
                                ));
                            }
                            // Dropped without close_notify, as s_time does: the server sees
                            // the TCP close.
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (n, f, m) = (
        done.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        missed.load(Ordering::Relaxed),
    );
    for worker in workers {
        let _ = worker.join();
    }
    let what = negotiated
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "no handshake completed".into());
    println!("handshakes {n} failed {f} missed {m} in {elapsed:.2} s; {what}");
    if let Some(error) = last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        eprintln!("last failure: {error}");
    }
    if n == 0 {
        return Err("no handshake completed".into());
    }
    Ok(())
}
