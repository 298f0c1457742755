//! `fastedge serve` against clients that try to break it: forged forwarding headers smuggled
//! behind an upgrade the backend ignored, client copies of managed headers, bursts that
//! multiply under injection, log lines forged through client-chosen names, weak TLS 1.2 suites.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    thread,
    time::Duration,
};

use fastedge_tests::{
    peers::{echo_backend, read_response, tls_connect},
    process::{rss_kib, Fastedge},
    TempDir,
};
use fastedge_tls::boring::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};

fn serve(state: &TempDir, config: &str) -> (Fastedge, SocketAddr) {
    Fastedge::serve_config(state, config)
}

const FORGED: &[u8] = b"GET /second HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.9.9.9\r\n\
X-Client-Verify: SUCCESS\r\nForwarded: for=10.9.9.9\r\n\r\n";

/// Reads from `stream` until `want` bytes came or it ends.
fn read_exactly<R: Read>(stream: &mut R, want: usize) -> Vec<u8> {
    let mut got = vec![0u8; want];
    stream.read_exact(&mut got).unwrap();
    got
}

#[test]
fn upgrade_ignored_by_the_backend_does_not_let_forged_headers_through() {
    let state = TempDir::new("upgrade-ignored");
    let (backend, recorded) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\nforwarded = true\n"),
    );
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    tls.write_all(&[&upgrade[..], FORGED].concat()).unwrap();
    let (_, first) = read_response(&mut tls);
    assert!(first.starts_with(b"GET / HTTP/1.1\r\n"));
    let (_, second) = read_response(&mut tls);
    let second = String::from_utf8_lossy(&second);
    assert!(second.starts_with("GET /second HTTP/1.1\r\n"), "{second}");
    assert!(
        second.contains("X-Forwarded-For: 127.0.0.1\r\n"),
        "{second}"
    );
    assert!(
        second.contains("Forwarded: for=127.0.0.1;proto=https\r\n"),
        "{second}"
    );
    let seen = recorded.lock().unwrap().concat();
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        !seen.contains("10.9.9.9"),
        "forged address reached the backend: {seen}"
    );
    assert!(
        !seen.contains("SUCCESS"),
        "forged verification reached the backend: {seen}"
    );
}

/// A backend that switches protocols on the first request, then echoes every byte back.
fn switching_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        while let Ok((mut stream, _)) = listener.accept() {
            thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n",
                );
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn real_upgrade_passes_bytes_through_untouched() {
    let state = TempDir::new("upgrade-real");
    let backend = switching_backend();
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"),
    );
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    // Bytes pipelined behind the upgrade request are held until the backend answers, then
    // pass as they are, like everything after them.
    let upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    tls.write_all(&[&upgrade[..], FORGED].concat()).unwrap();
    let switched =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n";
    assert_eq!(read_exactly(&mut tls, switched.len()), switched);
    assert_eq!(read_exactly(&mut tls, FORGED.len()), FORGED);
    let later = b"\x81\x05hello GET / HTTP/1.1\r\n\r\n";
    tls.write_all(later).unwrap();
    assert_eq!(read_exactly(&mut tls, later.len()), later);
    tls.get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
}

#[test]
fn client_copies_of_managed_headers_are_removed() {
    let state = TempDir::new("strip");
    let (backend, recorded) = echo_backend();
    let (server, addr) = serve(
        &state,
        &format!(
            "[frontend]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
             [[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"
        ),
    );
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    tls.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Real-IP: 10.9.9.9\r\nX-Forwarded-Host: evil.test\r\n\
Forwarded: for=10.9.9.9\r\nx-forwarded-ssl: on\r\n\
Connection: keep-alive, X-Forwarded-For, X-Forwarded-Proto\r\n\r\n",
    )
    .unwrap();
    let (_, seen) = read_response(&mut tls);
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
    assert!(seen.contains("Connection: keep-alive\r\n"), "{seen}");
    for forged in ["10.9.9.9", "evil.test", "ssl", "Forwarded: "] {
        assert!(
            !seen.contains(forged),
            "{forged:?} reached the backend: {seen}"
        );
    }
    // HTTP/2 by prior knowledge cannot be rewritten: refused, nothing passed on.
    let before = recorded.lock().unwrap().len();
    let mut h2 = tls_connect(addr, "localhost", b"\x08http/1.1");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(h2.read(&mut buf), Ok(0) | Err(_)), "closed");
    server.wait_for_line("HTTP/2 preface", Duration::from_secs(5));
    let recorded = recorded.lock().unwrap();
    assert!(recorded[before..].iter().all(|c| !c.starts_with(b"PRI")));
}

/// `openssl s_client` with `args` against `addr`, stdin closed; its output.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    fastedge_tests::require_tool("openssl", "openssl");
    let out = std::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn h2_is_not_offered_for_injecting_backends() {
    let state = TempDir::new("no-h2");
    let (backend, _) = echo_backend();
    let config = |inject: bool| {
        format!(
            "[tls]\nalpn = [\"h2\", \"http/1.1\"]\n\
             [[backend]]\naddress = \"{backend}\"\nx_forwarded = {inject}\n"
        )
    };
    let (_plain, plain_addr) = serve(&state, &config(false));
    let out = s_client(plain_addr, &["-alpn", "h2"]);
    assert!(out.contains("ALPN protocol: h2"), "control: {out}");
    let (_injecting, addr) = serve(&state, &config(true));
    let out = s_client(addr, &["-alpn", "h2"]);
    assert!(out.contains("No ALPN negotiated"), "{out}");
    let out = s_client(addr, &["-alpn", "h2,http/1.1"]);
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
}

#[test]
fn pipelined_burst_to_a_stalled_backend_stays_bounded() {
    const CONNECTIONS: usize = 16;
    let state = TempDir::new("burst");
    // A backend that accepts and never reads: what fastedge writes piles up before it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
    });
    // The client certificate goes into every request (percent-encoded PEM): each tiny
    // pipelined request grows about fiftyfold.
    let (client_cert, client_key) = state.self_signed("client.test");
    let cpu = fastedge_runtime::CpuList::available().unwrap().cpus()[0];
    let (server, addr) = serve(
        &state,
        &format!(
            "cores = \"{cpu}\"\n[tls]\nclient_verify = \"required\"\nclient_ca = \"{ca}\"\n\
             [[backend]]\naddress = \"{backend}\"\nx_forwarded = true\nforwarded = true\n\
             send_client_cert = true\n",
            ca = client_cert.display()
        ),
    );
    let connect = || {
        let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
        builder.set_verify(SslVerifyMode::NONE);
        builder
            .set_certificate_file(&client_cert, SslFiletype::PEM)
            .unwrap();
        builder
            .set_private_key_file(&client_key, SslFiletype::PEM)
            .unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut config = builder.build().configure().unwrap();
        config.set_verify_hostname(false);
        config.connect("localhost", tcp).unwrap()
    };
    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| connect()).collect();
    // Each connection works, and its backend connection is open.
    for tls in &mut clients {
        tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    thread::sleep(Duration::from_millis(500));
    let baseline = rss_kib(server.pid());
    let burst = b"GET / HTTP/1.1\r\n\r\n".repeat(4 * 1024 * 1024 / 18);
    let writers: Vec<_> = clients
        .into_iter()
        .map(|mut tls| {
            let burst = burst.clone();
            thread::spawn(move || {
                let mut sent = 0;
                for chunk in burst.chunks(16 * 1024) {
                    if tls.write_all(chunk).is_err() {
                        break;
                    }
                    sent += chunk.len();
                }
                (tls, sent)
            })
        })
        .collect();
    let held: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    thread::sleep(Duration::from_millis(1000));
    let grown = rss_kib(server.pid()).saturating_sub(baseline);
    let sent: usize = held.iter().map(|(_, n)| n).sum();
    // Bounded: a pump buffer and one high-water mark of output per connection (the kernel's
    // socket buffers are outside the process). Unbounded, each holds ~50x a TLS record.
    assert!(
        grown < (CONNECTIONS * 200) as u64,
        "RSS grew by {grown} KiB over {CONNECTIONS} connections ({sent} bytes sent)"
    );
    drop(held);
}

#[test]
fn client_chosen_names_cannot_forge_log_lines() {
    let state = TempDir::new("log-forge");
    let (backend, _) = echo_backend();
    // The dynamic SNI service is down: the lookup failure is logged with the name.
    let dead = fastedge_tests::peers::dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "[tls]\nsni_url = \"http://{dead}/%s\"\n\
             [[backend]]\naddress = \"{backend}\"\n"
        ),
    );
    let forged = "x.test\n2026-01-01T00:00:00.000000Z  WARN forged entry";
    let mut tls = tls_connect(addr, forged, b"\x08http/1.1");
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut tls);
    drop(tls);
    server.wait_for_logged("connection closed", Duration::from_secs(5));
    server.wait_for_logged("dynamic SNI lookup failed", Duration::from_secs(5));
    let log = server.log_text();
    for line in log.lines() {
        // (The dynamic SNI service is asked, and the name logged, in lower case.)
        assert!(
            !line
                .to_ascii_lowercase()
                .starts_with("2026-01-01t00:00:00.000000z"),
            "forged log line: {line:?}\n{log}"
        );
    }
    let escaped = "\"x.test\\n2026-01-01T00:00:00.000000Z  WARN forged entry\"";
    assert!(
        log.lines()
            .any(|l| l.contains("connection closed") && l.contains(&format!("sni={escaped}"))),
        "{log}"
    );
    // The service is asked in lower case.
    assert!(
        log.lines().any(|l| l.contains("dynamic SNI lookup failed")
            && l.contains(&format!("server_name={}", escaped.to_lowercase()))),
        "{log}"
    );
}

#[test]
fn tls12_offers_no_cbc_suite_by_default() {
    let state = TempDir::new("ciphers");
    let (backend, _) = echo_backend();
    let config = |ciphers: &str| {
        format!("[tls]\nciphers = \"{ciphers}\"\n[[backend]]\naddress = \"{backend}\"\n")
    };
    let negotiated = |out: &str, suite: &str| out.contains(&format!("Cipher is {suite}"));
    // The demo certificate is ECDSA P-256.
    let (_defaults, addr) = serve(&state, &config(""));
    let cbc = s_client(addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]);
    assert!(!negotiated(&cbc, "ECDHE-ECDSA-AES128-SHA"), "{cbc}");
    for aead in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let out = s_client(addr, &["-tls1_2", "-cipher", aead]);
        assert!(negotiated(&out, aead), "{aead}: {out}");
    }
    // A configuration that asks for more gets it.
    let (_all, addr) = serve(&state, &config("ALL"));
    let cbc = s_client(addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"]);
    assert!(negotiated(&cbc, "ECDHE-ECDSA-AES128-SHA"), "{cbc}");
}

#[test]
fn a_head_trickled_byte_by_byte_is_cut_off() {
    let state = TempDir::new("slowloris");
    let (backend, recorded) = echo_backend();
    let (server, addr) = serve(
        &state,
        &format!(
            "[frontend]\nrequest_head_timeout = \"1s\"\n\
             [[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"
        ),
    );
    // Pauses between requests longer than the deadline are fine: it counts from a head's
    // first byte.
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    tls.write_all(b"GET /a HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut tls);
    thread::sleep(Duration::from_millis(1500));
    tls.write_all(b"GET /b HTTP/1.1\r\n\r\n").unwrap();
    let (_, body) = read_response(&mut tls);
    assert!(body.starts_with(b"GET /b "));
    // One header byte every 200 ms keeps the idle timer (5 min) happy, not the head deadline.
    let started = std::time::Instant::now();
    tls.write_all(b"GET /slow HTTP/1.1\r\n").unwrap();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(6) {
        thread::sleep(Duration::from_millis(200));
        if tls.write_all(b"X").and_then(|()| tls.flush()).is_err() {
            cut = true;
            break;
        }
    }
    let line = server.wait_for_logged("request head not complete", Duration::from_secs(1));
    assert!(
        line.contains("reason=request head not complete within 1 s of its first byte"),
        "{line}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "cut after {:?} (written to a closed connection: {cut})",
        started.elapsed()
    );
    assert!(!recorded
        .lock()
        .unwrap()
        .concat()
        .windows(5)
        .any(|w| w == b"/slow"));
}
