//! Resumed TLS 1.2 handshakes by session ID, timed at the client: each round makes a full
//! handshake on box A, then resumes that session on A (BoringSSL's local cache) and a second
//! fresh session on box B, which never saw it (the fleet's shared session store). Prints the
//! median and p99 of each and the ratio of the medians.
//!
//! Usage: session_resume A_HOST:PORT B_HOST:PORT ROUNDS

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use fastedge_tls::boring::ssl::{
    SslConnector, SslMethod, SslOptions, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};

type Error = Box<dyn std::error::Error>;

/// One handshake with `addr`, offering `session`: the session it ends with, whether it
/// resumed, and how long the handshake took.
fn handshake(
    connector: &SslConnector,
    addr: SocketAddr,
    session: Option<&SslSession>,
) -> Result<(SslSession, bool, Duration), Error> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    let mut config = connector.configure()?;
    config.set_verify_hostname(false);
    if let Some(session) = session {
        // SAFETY: every session offered here came from this connector's own context.
        unsafe { config.set_session(session)? };
    }
    let started = Instant::now();
    let tls = config.connect("bench.test", tcp)?;
    let took = started.elapsed();
    let resumed = tls.ssl().session_reused();
    let session = tls
        .ssl()
        .session()
        .ok_or("no session after the handshake")?
        .to_owned();
    Ok((session, resumed, took))
}

fn stats(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, a, b, rounds] = args.as_slice() else {
        return Err("usage: session_resume A_HOST:PORT B_HOST:PORT ROUNDS".into());
    };
    let a: SocketAddr = a.parse()?;
    let b: SocketAddr = b.parse()?;
    let rounds: usize = rounds.parse()?;
    if rounds == 0 {
        return Err("ROUNDS must be positive".into());
    }
    let mut builder = SslConnector::builder(SslMethod::tls())?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_max_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_options(SslOptions::NO_TICKET);
    builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let connector = builder.build();
    let (mut local, mut store, mut full) = (Vec::new(), Vec::new(), Vec::new());
    let mut local_b = Vec::new();
    let mut missed = 0;
    for _ in 0..rounds {
        let (first, _, took) = handshake(&connector, a, None)?;
        full.push(took);
        let (_, resumed, took) = handshake(&connector, a, Some(&first))?;
        if resumed {
            local.push(took);
        } else {
            missed += 1;
        }
        let (third, _, _) = handshake(&connector, b, None)?;
        let (_, resumed, took) = handshake(&connector, b, Some(&third))?;
        if resumed {
            local_b.push(took);
        }
        let (second, _, _) = handshake(&connector, a, None)?;
        // Give the store's write a moment, as a real client's reconnection would.
        std::thread::sleep(Duration::from_millis(2));
        let (_, resumed, took) = handshake(&connector, b, Some(&second))?;
        if resumed {
            store.push(took);
        } else {
            missed += 1;
        }
    }
    if local.is_empty() || store.is_empty() {
        return Err(format!(
            "nothing resumed (local {}, store {})",
            local.len(),
            store.len()
        )
        .into());
    }
    let (full_p50, full_p99) = stats(&mut full);
    let (local_p50, local_p99) = stats(&mut local);
    let (store_p50, store_p99) = stats(&mut store);
    let (local_b_p50, _) = stats(&mut local_b);
    println!(
        "full p50 {} µs p99 {} µs; local cache p50 {} µs p99 {} µs; store p50 {} µs p99 {} µs; \
         store/local median {:.3}; not resumed {missed}; (local cache on B p50 {} µs)",
        full_p50.as_micros(),
        full_p99.as_micros(),
        local_p50.as_micros(),
        local_p99.as_micros(),
        store_p50.as_micros(),
        store_p99.as_micros(),
        store_p50.as_secs_f64() / local_p50.as_secs_f64(),
        local_b_p50.as_micros(),
    );
    Ok(())
}
