//! Opens N TLS connections to HOST:PORT (TLS 1.3, no certificate check: benchmark peers use a
//! throwaway certificate), completes each handshake, keeps them all open and idle, prints
//! `ready N`, and holds them until its standard input closes. For measuring a terminator's
//! resident memory per idle connection.
//!
//! Usage: tls_hold HOST:PORT N

use std::{io::Read, net::TcpStream, time::Duration};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, count] = args.as_slice() else {
        return Err("usage: tls_hold HOST:PORT N".into());
    };
    let count: usize = count.parse()?;
    let connector = fastedge_benches::tls13_client("X25519")?.build();
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let stream = connector
            .configure()?
            .verify_hostname(false)
            .connect("bench.test", tcp)
            .map_err(|e| format!("connection {i}: {e}"))?;
        held.push(stream);
    }
    println!("ready {}", held.len());
    // Hold until told to stop (stdin closed).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}
