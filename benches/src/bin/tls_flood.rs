//! A cheap full-handshake load generator: CONNS client threads, each opening a TCP connection,
//! completing a TLS 1.3 handshake (BoringSSL client, no session offered, no certificate check)
//! and closing, over and over for SECONDS. Prints
//! `handshakes N failed F in S s; cipher C, group G`.
//!
//! OpenSSL 3.0's `s_time` spends ~0.7 ms of client CPU per handshake and keeps one connection in
//! flight, so the server idles between handshakes and pays a wake-up for each. This client costs
//! a fraction of that (no certificate verification, BoringSSL's X25519) and keeps CONNS
//! handshakes in flight, so one client core can keep a server core busy.
//!
//! Usage: `tls_flood HOST:PORT SECONDS CONNS [GROUP]` (GROUP: X25519 by default)

use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (addr, seconds, conns, group) = match args.as_slice() {
        [_, addr, seconds, conns] => (addr, seconds, conns, "X25519"),
        [_, addr, seconds, conns, group] => (addr, seconds, conns, group.as_str()),
        _ => return Err("usage: tls_flood HOST:PORT SECONDS CONNS [GROUP]".into()),
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let seconds: f64 = seconds.parse().map_err(|e| format!("seconds: {e}"))?;
    let conns: usize = conns.parse().map_err(|e| format!("connections: {e}"))?;
    if conns == 0 || seconds <= 0.0 {
        return Err("SECONDS and CONNS must be positive".into());
    }
    let connector = Arc::new(fastedge_benches::tls13_client(group)?.build());

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let negotiated = Arc::new(Mutex::new(None::<String>));
    let last_error = Arc::new(Mutex::new(None::<String>));
    let started = Instant::now();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (connector, done, failed, stop) = (
                connector.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            let (negotiated, last_error) = (negotiated.clone(), last_error.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let attempt = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))
                        .and_then(|tcp| {
                            let _ = tcp.set_nodelay(true);
                            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                                .map_err(|e| e.to_string())?;
                            let config = connector.configure().map_err(|e| e.to_string())?;
                            config
                                .verify_hostname(false)
                                .connect("bench.test", tcp)
                                .map_err(|e| format!("handshake: {e}"))
                        });
                    match attempt {
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
    let (n, f) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    for worker in workers {
        let _ = worker.join();
    }
    let what = negotiated
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| "no handshake completed".into());
    println!("handshakes {n} failed {f} in {elapsed:.2} s; {what}");
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
