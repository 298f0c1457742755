//! `fastedge serve` with a configuration file, against real peers: what backends learn about
//! clients (X-Forwarded-* on every request, PROXY v1/v2 byte for byte), failover, timeouts,
//! draining, privilege drop, and no descriptor leaks.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_tests::{
    peers::{client_hello, dead_port, echo_backend, handshake_records, read_response, tls_connect},
    process::{fastedge_bin, Fastedge},
    require_tool, TempDir,
};

/// Starts `fastedge serve` with `config` (TOML) on a free port; returns it and its address.
fn serve(state: &TempDir, config: &str) -> (Fastedge, SocketAddr) {
    Fastedge::serve_config(state, config)
}

/// The first CPU this process may use: one executor makes round robin deterministic.
fn first_cpu() -> usize {
    fastedge_runtime::CpuList::available().unwrap().cpus()[0]
}

fn curl(args: &[&str]) -> std::process::Output {
    require_tool("curl", "curl");
    Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--max-time", "20"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn x_forwarded_on_every_keep_alive_request() {
    let state = TempDir::new("xff-keepalive");
    let (backend, recorded) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"),
    );
    let url = |n: u32| format!("https://{addr}/r{n}");
    let out = curl(&["--verbose", &url(1), &url(2), &url(3)]);
    let body = String::from_utf8_lossy(&out.stdout);
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    assert!(
        verbose.contains("Re-using existing connection"),
        "one connection: {verbose}"
    );
    for n in 1..=3 {
        assert!(body.contains(&format!("GET /r{n} HTTP/1.1")), "{body}");
    }
    assert_eq!(
        body.matches("X-Forwarded-For: 127.0.0.1\r\n").count(),
        3,
        "{body}"
    );
    assert_eq!(
        body.matches("X-Forwarded-Proto: https\r\n").count(),
        3,
        "{body}"
    );
    assert_eq!(
        body.matches(&format!("X-Forwarded-Port: {}\r\n", addr.port()))
            .count(),
        3
    );
    assert_eq!(
        recorded.lock().unwrap().len(),
        1,
        "the backend saw one connection"
    );
}

#[test]
fn pipelined_requests_and_a_head_sent_byte_by_byte() {
    let state = TempDir::new("xff-split");
    let (backend, _) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\nforwarded = true\n"),
    );
    // Three requests, one with a body that looks like a request, in one write.
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    let pipelined = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\nGET /no HTTP/1.1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    tls.write_all(pipelined).unwrap();
    for path in ["/a", "/b", "/c"] {
        let (_, body) = read_response(&mut tls);
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with(&format!("GET {path} ")) || body.starts_with(&format!("POST {path} ")),
            "{body}"
        );
        assert!(body.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{body}");
        assert!(
            body.contains("Forwarded: for=127.0.0.1;proto=https\r\n"),
            "{body}"
        );
        assert!(
            !body.contains("6.6.6.6"),
            "untrusted client's XFF replaced: {body}"
        );
    }
    // One request, one byte per TLS record.
    for byte in b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" {
        tls.write_all(&[*byte]).unwrap();
        tls.flush().unwrap();
    }
    let (_, body) = read_response(&mut tls);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("GET /slow HTTP/1.1\r\nHost: x\r\n"),
        "{body}"
    );
    assert!(body.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{body}");
}

#[test]
fn trusted_proxies_keep_the_chain() {
    let state = TempDir::new("xff-trust");
    let (backend, _) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!(
            "[frontend]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"
        ),
    );
    let out = curl(&[
        "-H",
        "X-Forwarded-For: 203.0.113.9",
        &format!("https://{addr}/"),
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"),
        "{body}"
    );
}

#[test]
fn proxy_v2_header_byte_for_byte() {
    let state = TempDir::new("proxy-v2");
    let (backend, recorded) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nproxy_protocol = \"v2\"\n"),
    );
    let mut tls = tls_connect(addr, "example.test", b"\x08http/1.1");
    let client_port = tls.get_ref().local_addr().unwrap().port();
    let cipher = tls.ssl().current_cipher().unwrap().name().to_owned();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(&mut tls);

    let mut tlvs = Vec::new();
    tlvs.extend_from_slice(&[0x01, 0x00, 8]);
    tlvs.extend_from_slice(b"http/1.1");
    tlvs.extend_from_slice(&[0x02, 0x00, 12]);
    tlvs.extend_from_slice(b"example.test");
    let mut ssl = vec![0x01, 0, 0, 0, 0, 0x21, 0x00, 7];
    ssl.extend_from_slice(b"TLSv1.3");
    ssl.extend_from_slice(&[0x23, 0x00, cipher.len() as u8]);
    ssl.extend_from_slice(cipher.as_bytes());
    tlvs.extend_from_slice(&[0x20, 0x00, ssl.len() as u8]);
    tlvs.extend_from_slice(&ssl);
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    expected.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client_port.to_be_bytes());
    expected.extend_from_slice(&addr.port().to_be_bytes());
    expected.extend_from_slice(&tlvs);
    let seen = recorded.lock().unwrap()[0].clone();
    assert_eq!(&seen[..expected.len()], &expected[..], "PROXY v2 header");
    assert!(seen[expected.len()..].starts_with(b"GET / HTTP/1.1\r\n"));
}

#[test]
fn proxy_v1_line_and_bud_json() {
    let state = TempDir::new("proxy-v1");
    let (v1, v1_seen) = echo_backend();
    let (bud, bud_seen) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!(
            "cores = \"{}\"\n[balance]\nmode = \"roundrobin\"\n\
             [[backend]]\naddress = \"{v1}\"\nproxy_protocol = \"v1\"\n\
             [[backend]]\naddress = \"{bud}\"\nproxy_protocol = \"bud-json\"\n",
            first_cpu()
        ),
    );
    let mut ports = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connect(addr, "localhost", b"");
        ports.push(tls.get_ref().local_addr().unwrap().port());
        tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        read_response(&mut tls);
    }
    let v1_bytes = v1_seen.lock().unwrap()[0].clone();
    let line = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nGET /",
        ports[0],
        addr.port()
    );
    assert!(
        v1_bytes.starts_with(line.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&v1_bytes)
    );
    let bud_bytes = String::from_utf8_lossy(&bud_seen.lock().unwrap()[0]).into_owned();
    let expected = format!(
        "BUD {{\"family\":\"TCP4\",\"bud\":{{\"host\":\"127.0.0.1\",\"port\":{}}},\"peer\":{{\"host\":\"127.0.0.1\",\"port\":{},\"cn\":false,\"dn\":false}}}}\r\nGET /",
        addr.port(),
        ports[1]
    );
    assert!(bud_bytes.starts_with(&expected), "{bud_bytes}");
}

/// On a wildcard listener the backend learns the address the client reached (the
/// connection's own), not the wildcard the socket is bound to.
#[test]
fn a_wildcard_listener_names_the_address_the_client_reached() {
    let state = TempDir::new("proxy-v1-wildcard");
    let (v1, v1_seen) = echo_backend();
    let config = state.path().join("fastedge.toml");
    std::fs::write(
        &config,
        format!("[[backend]]\naddress = \"{v1}\"\nproxy_protocol = \"v1\"\n"),
    )
    .unwrap();
    let server = Fastedge::start(
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    let port = server.wait_listening().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut tls = tls_connect(addr, "localhost", b"");
    let client_port = tls.get_ref().local_addr().unwrap().port();
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut tls);
    let v1_bytes = v1_seen.lock().unwrap()[0].clone();
    let line = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\nGET /");
    assert!(
        v1_bytes.starts_with(line.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&v1_bytes)
    );
}

#[test]
fn dead_backend_fails_over_and_all_dead_is_logged() {
    let state = TempDir::new("failover");
    let (live, _) = echo_backend();
    let dead = dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "[balance]\nmode = \"roundrobin\"\nretry_interval = \"10ms\"\ndeath_timeout = \"0s\"\nrevive_interval = \"1h\"\n\
             [[backend]]\naddress = \"{dead}\"\n[[backend]]\naddress = \"{live}\"\n"
        ),
    );
    for _ in 0..4 {
        let out = curl(&[&format!("https://{addr}/")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("GET / HTTP/1.1"));
    }
    server.wait_for_line("backend marked dead", Duration::from_secs(5));
    drop(server);

    let state = TempDir::new("all-dead");
    let (server, addr) = serve(
        &state,
        &format!("[balance]\nretry_interval = \"10ms\"\nmax_retries = 2\n[[backend]]\naddress = \"{dead}\"\n"),
    );
    let out = curl(&[&format!("https://{addr}/")]);
    assert!(!out.status.success());
    let line = server.wait_for_line("connection closed", Duration::from_secs(5));
    assert!(
        line.contains(&format!(
            "reason=backend {dead} refused the connection (after 3 connect attempts)"
        )),
        "{line}"
    );
}

#[test]
fn handshake_and_idle_timeouts() {
    let state = TempDir::new("timeouts");
    let (backend, _) = echo_backend();
    let (server, addr) = serve(
        &state,
        &format!(
            "[frontend]\nhandshake_timeout = \"300ms\"\nidle_timeout = \"400ms\"\n[[backend]]\naddress = \"{backend}\"\n"
        ),
    );
    // Slowloris: connect, say nothing.
    let mut silent = TcpStream::connect(addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let n = silent.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "server closed the silent connection");
    assert!(started.elapsed() < Duration::from_secs(3));
    let line = server.wait_for_line(
        "TLS handshake timed out after 300 ms",
        Duration::from_secs(5),
    );
    assert!(line.contains("connection closed"));

    // Idle after the handshake.
    let mut tls = tls_connect(addr, "localhost", b"");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let result = tls.read(&mut buf);
    assert!(
        matches!(result, Ok(0) | Err(_)),
        "closed by the idle timeout"
    );
    assert!(started.elapsed() >= Duration::from_millis(350));
    server.wait_for_line("reason=idle for 0.4 s", Duration::from_secs(5));
}

#[test]
fn bad_requests_close_with_a_reason() {
    let state = TempDir::new("bad-request");
    let (backend, recorded) = echo_backend();
    let (server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n"),
    );
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let read = tls.read(&mut buf);
    assert!(
        matches!(&read, Ok(0))
            || matches!(&read, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock),
        "the server closed the connection: {read:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let line = server.wait_for_line("connection closed", Duration::from_secs(5));
    assert!(
        line.contains("bad request from client: invalid or conflicting Content-Length"),
        "{line}"
    );
    let seen = recorded.lock().unwrap();
    assert!(
        seen.iter()
            .all(|c| !c.windows(14).any(|w| w == b"Content-Length")),
        "nothing forwarded"
    );
}

#[test]
fn drain_lets_open_transfers_finish() {
    let state = TempDir::new("drain");
    let (mut server, addr) = serve(&state, "[frontend]\ndrain_timeout = \"20s\"\n");
    // The demo backend: a 3 MB download at 2 MB/s takes about 1.5 s.
    let download = std::process::Command::new("curl")
        .args([
            "--silent",
            "--insecure",
            "--limit-rate",
            "2M",
            "--output",
            "-",
        ])
        .arg(format!("https://{addr}/bytes/3000000"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_for_line(
        "stopping: no new connections accepted",
        Duration::from_secs(5),
    );
    // New connections are no longer accepted.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener closed during drain"
    );
    let output = download.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout.len(), 3_000_000, "the open transfer finished");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit 0 after draining: {status}");
    assert!(server.log_text().contains("draining open connections"));
}

#[test]
fn check_config_and_stdin_config() {
    let bin = fastedge_bin();
    let state = TempDir::new("check-config");
    let good = state.path().join("good.toml");
    std::fs::write(&good, "\n  [frontend]\nlisten = [\"127.0.0.1:0\"]\n\n").unwrap();
    let out = Command::new(&bin)
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let bad = state.path().join("bad.toml");
    std::fs::write(&bad, "[balance]\nmode = \"random\"\n").unwrap();
    let out = Command::new(&bin)
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("balance.mode"));

    let missing_key = state.path().join("nokey.toml");
    std::fs::write(
        &missing_key,
        "[tls]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.key\"\n",
    )
    .unwrap();
    let out = Command::new(&bin)
        .args(["check-config", missing_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.pem"));

    // The printed default configuration is itself valid.
    let out = Command::new(&bin)
        .args(["serve", "--print-default-config"])
        .output()
        .unwrap();
    let mut child = Command::new(&bin)
        .args(["check-config", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let checked = child.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn encrypted_key_with_passphrase_sources() {
    require_tool("openssl", "openssl");
    let state = TempDir::new("passphrase");
    let (cert_path, plain_key) = state.self_signed("localhost");
    let key_path = state.path().join("enc.pem");
    let status = Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:s3cret",
            "-in",
        ])
        .arg(&plain_key)
        .arg("-out")
        .arg(&key_path)
        .status()
        .unwrap();
    assert!(status.success());
    let pass_file = state.path().join("pass.txt");
    std::fs::write(&pass_file, "s3cret\n").unwrap();
    let (c, k) = (cert_path.display(), key_path.display());
    for source in [
        "passphrase = \"s3cret\"".to_owned(),
        format!("passphrase_file = \"{}\"", pass_file.display()),
        "passphrase_cmd = \"echo s3cret\"".to_owned(),
        "passphrase_env = \"FASTEDGE_TEST_PASS\"".to_owned(),
    ] {
        let config = state.path().join("p.toml");
        std::fs::write(
            &config,
            format!("[tls]\ncert = \"{c}\"\nkey = \"{k}\"\n{source}\n"),
        )
        .unwrap();
        let out = Command::new(fastedge_bin())
            .args(["check-config", config.to_str().unwrap()])
            .env("FASTEDGE_TEST_PASS", "s3cret")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let config = state.path().join("wrong.toml");
    std::fs::write(
        &config,
        format!("[tls]\ncert = \"{c}\"\nkey = \"{k}\"\npassphrase = \"nope\"\n"),
    )
    .unwrap();
    let out = Command::new(fastedge_bin())
        .args(["check-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn privilege_drop_after_binding_a_low_port() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root to bind a port below 1024 and drop to nobody");
    }
    let state = TempDir::new("privdrop");
    // A port below 1024 that is free now.
    let port = (900..1000)
        .map(|p| 900 + (p + std::process::id() as u16) % 100)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free low port");
    let path = state.path().join("p.toml");
    std::fs::write(
        &path,
        format!("user = \"nobody\"\n[frontend]\nlisten = [\"127.0.0.1:{port}\"]\n"),
    )
    .unwrap();
    let server = Fastedge::start(
        &[
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--state-dir",
            state.path().to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    server.wait_for_line("dropped privileges", Duration::from_secs(10));
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_owned()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let uid = nobody.uid.as_raw().to_string();
    assert!(
        field("Uid:").split_whitespace().skip(1).all(|u| u == uid),
        "{}",
        field("Uid:")
    );
    let groups = field("Groups:");
    assert!(
        groups
            .split_whitespace()
            .skip(1)
            .all(|g| g == nobody.gid.as_raw().to_string()),
        "supplementary groups cleared: {groups}"
    );
    let out = curl(&[&format!("https://127.0.0.1:{port}/")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn no_descriptor_leak_over_many_connections() {
    /// A third full requests, a third resets right after connect, a third failed handshakes.
    const CONNECTIONS: u32 = 10_000;
    let state = TempDir::new("fd-leak");
    let (backend, _) = echo_backend();
    let dead = dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "[balance]\nretry_interval = \"0ms\"\nmax_retries = 1\n\
             [[backend]]\naddress = \"{backend}\"\n[[backend]]\naddress = \"{dead}\"\n"
        ),
    );
    let pid = server.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Warm up once (lazily opened descriptors), then measure.
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut tls);
    drop(tls);
    std::thread::sleep(Duration::from_millis(200));
    let before = fds();
    for i in 0..CONNECTIONS {
        match i % 3 {
            // A full request.
            0 => {
                let mut tls = tls_connect(addr, "localhost", b"");
                tls.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
                read_response(&mut tls);
            }
            // A reset right after connect.
            1 => {
                let stream = TcpStream::connect(addr).unwrap();
                socket2::SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            // A failed handshake.
            _ => {
                let mut stream = TcpStream::connect(addr).unwrap();
                let _ = stream.write_all(b"this is not TLS\r\n\r\n");
                let _ = stream.read(&mut [0u8; 64]);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds() > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        fds(),
        before,
        "open descriptors after {CONNECTIONS} connections"
    );
}

/// The common name of the certificate the server presented.
fn server_cn(tls: &fastedge_tls::boring::ssl::SslStream<TcpStream>) -> String {
    let cert = tls.ssl().peer_certificate().expect("server certificate");
    let cn = cert
        .subject_name()
        .entries_by_nid(fastedge_tls::boring::nid::Nid::COMMONNAME)
        .next()
        .expect("CN");
    String::from_utf8_lossy(cn.data().as_slice()).into_owned()
}

#[test]
fn reload_swaps_certificates_and_survives_a_bad_config() {
    let state = TempDir::new("reload");
    let (backend, _) = echo_backend();
    let path_text = |(c, k): (std::path::PathBuf, std::path::PathBuf)| {
        (c.display().to_string(), k.display().to_string())
    };
    let (cert_a, key_a) = path_text(state.self_signed("a.test"));
    let (cert_b, key_b) = path_text(state.self_signed("b.test"));
    let config = |cert: &str, key: &str| {
        format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n[[backend]]\naddress = \"{backend}\"\n")
    };
    let (server, addr) = serve(&state, &config(&cert_a, &key_a));
    let request = |tls: &mut fastedge_tls::boring::ssl::SslStream<TcpStream>| {
        tls.write_all(b"GET /still HTTP/1.1\r\n\r\n").unwrap();
        let (_, body) = read_response(tls);
        assert!(body.starts_with(b"GET /still "));
    };
    let mut old = tls_connect(addr, "localhost", b"");
    assert_eq!(server_cn(&old), "a.test");
    request(&mut old);

    std::fs::write(state.path().join("fastedge.toml"), config(&cert_b, &key_b)).unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    server.wait_for_line("reloaded", Duration::from_secs(5));
    assert_eq!(server_cn(&tls_connect(addr, "localhost", b"")), "b.test");
    request(&mut old);

    std::fs::write(
        state.path().join("fastedge.toml"),
        "[balance]\nmode = \"random\"\n",
    )
    .unwrap();
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let line = server.wait_for_line("reload failed", Duration::from_secs(5));
    assert!(line.contains("balance.mode"), "{line}");
    let mut new = tls_connect(addr, "localhost", b"");
    assert_eq!(server_cn(&new), "b.test");
    request(&mut new);
    request(&mut old);
}

#[test]
fn prometheus_metrics_sum_the_cores() {
    let state = TempDir::new("metrics");
    let (backend, _) = echo_backend();
    let dead = dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "metrics_listen = \"127.0.0.1:0\"\n[balance]\nmode = \"on-fail\"\nretry_interval = \"0ms\"\n\
             [[backend]]\naddress = \"{dead}\"\n[[backend]]\naddress = \"{backend}\"\n"
        ),
    );
    let metrics_addr = server.metrics_addr();
    for _ in 0..3 {
        assert!(curl(&[&format!("https://{addr}/")]).status.success());
    }
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.write_all(b"not TLS at all\r\n\r\n").unwrap();
    let _ = garbage.read(&mut [0u8; 16]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let out = Command::new("curl")
            .args(["--silent", &format!("http://{metrics_addr}/metrics")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("fastedge_connections_closed_total{reason=\"handshake_failed\"} 1\n")
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        text.contains("fastedge_connections_accepted_total 4\n"),
        "{text}"
    );
    assert!(text.contains("fastedge_connections_active 0\n"), "{text}");
    assert!(
        text.contains("fastedge_handshakes_completed_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("fastedge_connections_closed_total{reason=\"closed\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("fastedge_connections_closed_total{reason=\"handshake_failed\"} 1\n"),
        "{text}"
    );
    let failures = format!("fastedge_backend_connect_failures_total{{backend=\"{dead}\"}} ");
    let count: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&failures))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{failures} in {text}"));
    assert!(count >= 1, "{text}");
    assert!(
        text.contains(&format!(
            "fastedge_backend_connect_failures_total{{backend=\"{backend}\"}} 0\n"
        )),
        "{text}"
    );
    let out = Command::new("curl")
        .args([
            "--silent",
            "--include",
            &format!("http://{metrics_addr}/nope"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 404"));
}

#[test]
fn rsa_and_ecdsa_pairs_chosen_by_what_the_client_verifies() {
    require_tool("openssl", "openssl");
    let state = TempDir::new("multicert");
    let (ec_cert, ec_key) = state.self_signed("ecdsa.test");
    let (rsa_cert, rsa_key) = (state.path().join("rsa.pem"), state.path().join("rsa.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=rsa.test",
            "-keyout",
        ])
        .arg(&rsa_key)
        .arg("-out")
        .arg(&rsa_cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (_server, addr) = serve(
        &state,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[tls.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            ec_cert.display(),
            ec_key.display(),
            rsa_cert.display(),
            rsa_key.display()
        ),
    );
    let presented = |extra: &[&str]| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &addr.to_string(), "-brief"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let cn = text
            .lines()
            .find_map(|l| l.strip_prefix("Peer certificate: CN = "))
            .unwrap_or_else(|| panic!("no peer certificate in: {text}"))
            .trim()
            .to_owned();
        cn
    };
    assert_eq!(
        presented(&[]),
        "ecdsa.test",
        "first pair when the client takes both"
    );
    assert_eq!(
        presented(&["-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"]),
        "rsa.test"
    );
    assert_eq!(presented(&["-sigalgs", "ECDSA+SHA256"]), "ecdsa.test");
    assert_eq!(
        presented(&[
            "-tls1_2",
            "-sigalgs",
            "RSA+SHA256",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256"
        ]),
        "rsa.test"
    );
}

#[test]
fn unix_socket_backend() {
    let state = TempDir::new("unix-backend");
    let socket = state.path().join("app.sock");
    let recorded = fastedge_tests::peers::echo_backend_unix(&socket);
    let (_server, addr) = serve(
        &state,
        &format!(
            "[[backend]]\naddress = \"unix:{}\"\nproxy_protocol = \"v1\"\nx_forwarded = true\n",
            socket.display()
        ),
    );
    let out = curl(&[&format!("https://{addr}/over-unix")]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with("GET /over-unix HTTP/1.1\r\n"), "{body}");
    assert!(body.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{body}");
    assert!(recorded.lock().unwrap()[0].starts_with(b"PROXY TCP4 127.0.0.1 127.0.0.1 "));
}

#[test]
fn active_health_checks_kill_and_revive_a_backend() {
    let state = TempDir::new("health-check");
    let (fallback, _) = echo_backend();
    let preferred = dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "cores = \"{}\"\n[balance]\nmode = \"on-fail\"\ndeath_timeout = \"0s\"\nrevive_interval = \"1h\"\nhealth_check_interval = \"100ms\"\n\
             [[backend]]\naddress = \"{preferred}\"\n[[backend]]\naddress = \"{fallback}\"\n",
            first_cpu()
        ),
    );
    // No client traffic: the checker alone finds the preferred backend dead.
    let line = server.wait_for_line("backend marked dead", Duration::from_secs(5));
    assert!(line.contains(&preferred.to_string()), "{line}");
    let (_, preferred_seen) = fastedge_tests::peers::echo_backend_on(preferred);
    let line = server.wait_for_line("backend alive again", Duration::from_secs(5));
    assert!(line.contains(&preferred.to_string()), "{line}");
    assert!(curl(&[&format!("https://{addr}/")]).status.success());
    std::thread::sleep(Duration::from_millis(100));
    let seen = preferred_seen.lock().unwrap();
    assert!(
        seen.iter().any(|c| c.starts_with(b"GET / HTTP/1.1")),
        "the revived first backend served the request"
    );
}

#[test]
fn connection_cap_queues_clients_instead_of_refusing_them() {
    let state = TempDir::new("max-conns");
    let (backend, _) = echo_backend();
    let (_server, addr) = serve(
        &state,
        &format!(
            "cores = \"{}\"\n[frontend]\nmax_connections = 1\n[[backend]]\naddress = \"{backend}\"\n",
            first_cpu()
        ),
    );
    let mut first = tls_connect(addr, "localhost", b"");
    first.write_all(b"GET /first HTTP/1.1\r\n\r\n").unwrap();
    read_response(&mut first);
    // The second client is queued: its TCP connect succeeds, its handshake waits.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let second = std::thread::spawn(move || {
        let mut tls = tls_connect(addr, "localhost", b"");
        done_tx.send(()).unwrap();
        tls.write_all(b"GET /second HTTP/1.1\r\n\r\n").unwrap();
        read_response(&mut tls).1
    });
    assert!(
        done_rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "second handshake waits while the cap is reached"
    );
    drop(first);
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("served once the first closed");
    assert!(second.join().unwrap().starts_with(b"GET /second "));
}

#[test]
fn half_close_keeps_the_answer_coming() {
    let state = TempDir::new("half-close");
    let (backend, _) = echo_backend();
    let (_server, addr) = serve(&state, &format!("[[backend]]\naddress = \"{backend}\"\n"));
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET /half HTTP/1.1\r\n\r\n").unwrap();
    // Done sending: close_notify and FIN; the answer must still arrive.
    tls.shutdown().unwrap();
    tls.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let (_, body) = read_response(&mut tls);
    assert!(body.starts_with(b"GET /half "));
}

/// A listener on `addr` whose accept queue is full, so further connects to it hang (the kernel
/// drops their SYNs) until the queue is drained: a backend that is down without refusing.
/// Returns the listener and the connection that fills the queue.
fn hanging_backend(addr: SocketAddr) -> (TcpListener, TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let filler = TcpStream::connect(addr).unwrap();
    // The queue is full once a second connect no longer completes.
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    assert!(
        probe
            .connect_timeout(&addr.into(), Duration::from_millis(300))
            .is_err(),
        "the backlog of {addr} is full"
    );
    (listener, filler)
}

#[test]
fn a_probe_cancelled_by_a_failed_handshake_does_not_keep_the_backend_dead() {
    let state = TempDir::new("cancelled-probe");
    let first = dead_port();
    let second = dead_port();
    let (server, addr) = serve(
        &state,
        &format!(
            "cores = \"{}\"\n[balance]\nmode = \"on-fail\"\nretry_interval = \"10ms\"\nmax_retries = 1\n\
             death_timeout = \"0s\"\nrevive_interval = \"200ms\"\nconnect_timeout = \"3s\"\n\
             [[backend]]\naddress = \"{first}\"\n[[backend]]\naddress = \"{second}\"\n",
            first_cpu()
        ),
    );
    // Both backends refuse: both are marked dead.
    assert!(!curl(&[&format!("https://{addr}/")]).status.success());
    server.wait_for_logged("connection closed", Duration::from_secs(5));
    assert_eq!(server.log_text().matches("backend marked dead").count(), 2);
    // The first backend stops refusing but does not answer either: a probe to it hangs.
    let (listener, filler) = hanging_backend(first);
    std::thread::sleep(Duration::from_millis(300));
    // A client sends its ClientHello while the probe is due (the probe goes out), then garbage:
    // its handshake fails while the probe is still connecting.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage
        .write_all(&handshake_records(&client_hello("localhost", 0)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    garbage.write_all(&[0x17; 64]).unwrap();
    server.wait_for_line("connection closed", Duration::from_secs(5));
    drop(garbage);
    // The first backend comes back up.
    drop(filler);
    let recorded = fastedge_tests::peers::echo_backend_from(listener);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = curl(&[&format!("https://{addr}/")]);
    assert!(
        out.status.success(),
        "the core probes the backend again: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(recorded
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.starts_with(b"GET / HTTP/1.1")));
}

/// One keep-alive session: a TLS connection with three requests, each answered in full.
fn keep_alive_session(
    addr: SocketAddr,
    connector: &fastedge_tls::boring::ssl::SslConnector,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut config = connector.configure().map_err(|e| e.to_string())?;
    config.set_verify_hostname(false);
    let mut tls = config
        .connect("localhost", tcp)
        .map_err(|e| e.to_string())?;
    for i in 0..3 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        tls.write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let (head, body) =
            fastedge_tests::peers::try_read_response(&mut tls).map_err(|e| e.to_string())?;
        if !head.starts_with("HTTP/1.1 200 ")
            || !body.starts_with(request.lines().next().unwrap_or("-").as_bytes())
        {
            return Err(format!("unexpected answer {head:?}"));
        }
    }
    Ok(())
}

#[test]
fn clients_ride_out_restarts_of_the_only_backend() {
    const CLIENTS: usize = 8;
    const KILLS: usize = 3;
    let state = TempDir::new("backend-restarts");
    let mut backend = fastedge_tests::peers::RestartableBackend::start();
    // A short death_timeout, as one who wants fast failover sets it: the restarts mark the
    // backend dead on the cores.
    let (server, addr) = serve(
        &state,
        &format!(
            "[balance]\ndeath_timeout = \"200ms\"\n[[backend]]\naddress = \"{}\"\n",
            backend.addr()
        ),
    );
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslVerifyMode};
                let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
                builder.set_verify(SslVerifyMode::NONE);
                let connector = builder.build();
                let (mut sessions, mut failed) = (0u32, Vec::new());
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    sessions += 1;
                    if let Err(e) = keep_alive_session(addr, &connector) {
                        failed.push(e);
                    }
                }
                (sessions, failed)
            })
        })
        .collect();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(1500));
        backend.kill();
        std::thread::sleep(Duration::from_millis(800));
        backend.restart();
    }
    std::thread::sleep(Duration::from_millis(1500));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sessions, mut failed) = (0, Vec::new());
    for client in clients {
        let (s, f) = client.join().unwrap();
        sessions += s;
        failed.extend(f);
    }
    // Sessions open when the backend dies fail (as behind haproxy): about one per client and
    // kill. The clients that come while it is down wait for it within their connect budget.
    let unavailable = server.log_text().matches("no live backend").count();
    eprintln!(
        "{} of {sessions} sessions failed, {unavailable} refused as no live backend",
        failed.len()
    );
    assert!(
        failed.len() <= CLIENTS * (KILLS + 1) && failed.len() * 10 <= sessions as usize,
        "{} of {sessions} sessions failed ({unavailable} refused as no live backend); first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(sessions > 100, "{sessions} sessions");
}

#[test]
fn bare_connects_open_no_backend_connection() {
    let state = TempDir::new("bare-connects");
    let (backend, accepted) = echo_backend();
    let (server, addr) = serve(
        &state,
        &format!("[frontend]\nhandshake_timeout = \"2s\"\n[[backend]]\naddress = \"{backend}\"\n"),
    );
    let bare: Vec<_> = (0..50).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A client that sends only part of its ClientHello has not said hello yet either.
    let mut partial = TcpStream::connect(addr).unwrap();
    let hello = handshake_records(&client_hello("localhost", 0));
    partial.write_all(&hello[..20]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        accepted.lock().unwrap().len(),
        0,
        "backend connections opened for clients that sent no ClientHello"
    );
    // A ClientHello does start one, while the handshake still waits for the client.
    partial.write_all(&hello[20..]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while accepted.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(accepted.lock().unwrap().len(), 1);
    drop(bare);
    drop(partial);
    server.wait_for_line("connection closed", Duration::from_secs(5));
}

#[test]
fn an_oversized_client_hello_gets_the_alert_not_a_reset() {
    let state = TempDir::new("oversized-hello");
    let (backend, _) = echo_backend();
    let (server, addr) = serve(&state, &format!("[[backend]]\naddress = \"{backend}\"\n"));
    // A ClientHello over BoringSSL's 16 KiB limit, in two records.
    let hello = handshake_records(&client_hello("localhost", 24 * 1024));
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The first record and part of the second at once: more than the server reads before it
    // gives up on the hello ...
    client.write_all(&hello[..20 * 1024]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // ... and the rest a little later, as a client on a slow link sends it.
    let rest = client.write_all(&hello[20 * 1024..]);
    let mut received = Vec::new();
    let end = client.read_to_end(&mut received);
    assert!(
        rest.is_ok() && end.is_ok(),
        "the client's write ({rest:?}) and read ({end:?}) end without a reset; received {received:?}"
    );
    // One fatal alert record, then the orderly end of the stream.
    assert_eq!(received.len(), 7, "{received:?}");
    assert_eq!(
        &received[..2],
        &[0x15, 0x03],
        "an alert record: {received:?}"
    );
    assert_eq!(
        &received[3..],
        &[0, 2, 2, 47],
        "a fatal illegal_parameter alert: {received:?}"
    );
    server.wait_for_line("connection closed", Duration::from_secs(5));
    // A real client whose ClientHello is too large (a 20 KiB ALPN list) learns why too.
    require_tool("openssl", "openssl");
    let alpn: Vec<String> = (0..100)
        .map(|i| format!("p{i:03}{}", "x".repeat(200)))
        .collect();
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-alpn",
            &alpn.join(","),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("SSL alert number 47"), "{said}");
}

/// A TLS client that leaves right after its handshake without sending a byte and without
/// close_notify, as probes, health checks and unused preconnects do.
fn handshake_and_leave(addr: SocketAddr) {
    drop(tls_connect(addr, "localhost", b""));
}

/// A client that sends its ClientHello, reads the server's first flight and goes away: the
/// handshake fails after the hello chose a backend (the connect started meanwhile).
fn hello_and_leave(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(&handshake_records(&client_hello("localhost", 0)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read(&mut [0u8; 4096]);
}

/// The next connection to `listener`, or a failed test after 5 s.
fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no backend connection within 5 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    listener.set_nonblocking(false).unwrap();
    stream.set_nonblocking(false).unwrap();
    stream
}

/// Nagle's algorithm is off on both of a proxied connection's sockets: the client's (which
/// inherits it from the listening socket) and the backend's.
#[test]
fn both_sockets_of_a_proxied_connection_send_without_delay() {
    let state = TempDir::new("nodelay");
    let (backend, recorded) = echo_backend();
    let (server, addr) = serve(&state, &one_core_config(backend, ""));
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: n\r\n\r\n").unwrap();
    let (head, _) = read_response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    wait_for_connections(&recorded, 1);
    let client_side = tls.get_ref().local_addr().unwrap();
    let fronts = fastedge_tests::process::sockets_connected_to(server.pid(), client_side);
    let backs = fastedge_tests::process::sockets_connected_to(server.pid(), backend);
    assert_eq!((fronts.len(), backs.len()), (1, 1), "the server's sockets");
    for (side, fd) in [("client", &fronts[0]), ("backend", &backs[0])] {
        assert!(
            socket2::SockRef::from(fd).nodelay().unwrap(),
            "{side} socket"
        );
    }
}

/// Waits up to 5 s until the recording backend has had `n` connections.
fn wait_for_connections(recorded: &fastedge_tests::peers::Recorded, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorded.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "backend connections: {} of {n}",
            recorded.lock().unwrap().len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One core, so that every client meets the spares of the same core.
fn one_core_config(backend: SocketAddr, balance: &str) -> String {
    format!(
        "cores = \"{}\"\n[balance]\n{balance}\n[[backend]]\naddress = \"{backend}\"\n",
        first_cpu()
    )
}

/// The server's `fastedge_backend_spare_connections_total` by outcome, scraped now.
fn spare_counts(server: &Fastedge) -> impl Fn(&str) -> u64 {
    let out = Command::new("curl")
        .args([
            "--silent",
            &format!("http://{}/metrics", server.metrics_addr()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    move |outcome: &str| -> u64 {
        let key = format!("fastedge_backend_spare_connections_total{{outcome=\"{outcome}\"}} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&key))
            .unwrap_or_else(|| panic!("no {key}in {text}"));
        line[key.len()..].parse().unwrap()
    }
}

/// [`one_core_config`] with the metrics endpoint on a free port.
fn one_core_metrics_config(backend: SocketAddr, balance: &str) -> String {
    format!(
        "metrics_listen = \"127.0.0.1:0\"\n{}",
        one_core_config(backend, balance)
    )
}

/// Established TCP connections to `backend` on this machine (`ss`).
fn established_to(backend: SocketAddr) -> usize {
    let filter = format!("dport = :{}", backend.port());
    let out = Command::new("ss")
        .args(["-Htn", "state", "established", &filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits for the log line of a client that left, and checks it says so.
fn logged_leaving(server: &Fastedge) {
    let line = server.wait_for_line("connection closed", Duration::from_secs(5));
    // A reset when the client closed on the session tickets flushed to it meanwhile.
    assert!(
        line.contains("client left before sending anything (closed without close_notify)")
            || line.contains("client reset the connection"),
        "{line}"
    );
}

#[test]
fn clients_that_leave_after_the_handshake_leave_their_backend_connection_to_the_next() {
    let state = TempDir::new("spare-reuse");
    let (backend, recorded) = echo_backend();
    let config = one_core_metrics_config(backend, "spare_max_age = \"60s\"");
    let (server, addr) = serve(&state, &config);
    for _ in 0..3 {
        handshake_and_leave(addr);
        logged_leaving(&server);
    }
    for _ in 0..2 {
        hello_and_leave(addr);
        let line = server.wait_for_line("connection closed", Duration::from_secs(5));
        assert!(line.contains("reason=TLS handshake failed"), "{line}");
    }
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(String::from_utf8_lossy(&body).starts_with("GET /after HTTP/1.1"));
    // Five clients came and went, one was served, on one backend connection made for the
    // first client and carrying only the last one's request. On glommio only a connection
    // whose client left before the pump started is kept (see `forward`): one of the first
    // three may have left later, costing one more connection each; the last two (failed
    // handshakes) always pass theirs on.
    let recorded = recorded.lock().unwrap();
    let bound = match fastedge_tests::engine() {
        fastedge_runtime::Engine::Glommio => 4,
        _ => 1,
    };
    assert!(recorded.len() <= bound, "backend connections: {recorded:?}");
    assert!(recorded.last().unwrap().starts_with(b"GET /after HTTP/1.1"));
    assert!(recorded[..recorded.len() - 1].iter().all(Vec::is_empty));
    // The metrics count what was kept and taken: on io_uring each of the five that left kept
    // the connection and each client after the first took it.
    let count = spare_counts(&server);
    let (kept, taken) = (count("kept"), count("taken"));
    match fastedge_tests::engine() {
        fastedge_runtime::Engine::Glommio => assert!(kept >= 2 && taken >= 2, "{kept} {taken}"),
        _ => assert_eq!((kept, taken), (5, 5)),
    }
}

#[test]
fn a_client_that_closes_in_tls_still_hears_a_backend_that_speaks_first() {
    let state = TempDir::new("spare-half-close");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(b"220 ready\r\n");
            // Until the client's end reaches us (as a FIN).
            let _ = stream.read_to_end(&mut Vec::new());
        }
    });
    let (server, addr) = serve(&state, &one_core_config(backend, ""));
    let mut tls = tls_connect(addr, "localhost", b"");
    // close_notify at once: TLS's half-close, not a cut; the backend's greeting still comes.
    tls.shutdown().unwrap();
    let mut heard = Vec::new();
    let _ = tls.read_to_end(&mut heard);
    assert_eq!(heard, b"220 ready\r\n");
    let line = server.wait_for_line("connection closed", Duration::from_secs(5));
    assert!(line.contains("client closed first"), "{line}");
}

#[test]
fn a_kept_connection_the_backend_closed_or_spoke_on_is_not_used_and_kept_ones_expire() {
    let state = TempDir::new("spare-closed");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let config = one_core_metrics_config(backend, "spare_max_age = \"2s\"");
    let (server, addr) = serve(&state, &config);
    // The backend closes the connection made for one client that left (a failed handshake,
    // whose connection is kept on either engine), and answers on the connection of another
    // one (as a backend's request timeout does) before any request came: the next client
    // must get a fresh connection, not either of those.
    hello_and_leave(addr);
    server.wait_for_line("connection closed", Duration::from_secs(5));
    let closed = accept_within(&listener);
    drop(closed);
    hello_and_leave(addr);
    server.wait_for_line("connection closed", Duration::from_secs(5));
    let mut spoke = accept_within(&listener);
    spoke
        .write_all(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let recorded = fastedge_tests::peers::echo_backend_from(listener.try_clone().unwrap());
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(tls);
    server.wait_for_line("connection closed", Duration::from_secs(5));
    assert_eq!(recorded.lock().unwrap().len(), 1);
    drop(spoke);
    // A connection kept and not taken is closed within twice spare_max_age of its connect.
    hello_and_leave(addr);
    server.wait_for_line("connection closed", Duration::from_secs(5));
    wait_for_connections(&recorded, 2);
    let kept_since = Instant::now();
    let pid = server.pid();
    let backend_sockets = || established_to(backend);
    assert_eq!(backend_sockets(), 1, "the kept connection is open at first");
    while backend_sockets() > 0 {
        assert!(
            kept_since.elapsed() < Duration::from_secs(6),
            "a kept backend connection still open after 6 s (server {pid})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Counted by why each went unused: the two the backend closed or answered on (stale,
    // unless a stalled machine let one of them pass its 2 s first), and the one that expired.
    let count = spare_counts(&server);
    let counts = ["kept", "taken", "stale", "expired", "evicted"].map(&count);
    let [kept, taken, stale, expired, evicted] = counts;
    assert!(
        (kept, taken, stale + expired, evicted) == (3, 0, 3, 0) && stale >= 1,
        "kept, taken, stale, expired, evicted: {counts:?}"
    );
}

/// At most `spare_connections` are kept per backend and core: the oldest make room, counted.
#[test]
fn a_full_list_of_kept_connections_drops_its_oldest() {
    let state = TempDir::new("spare-cap");
    let (backend, recorded) = echo_backend();
    let config = one_core_metrics_config(backend, "spare_connections = 2\nspare_max_age = \"60s\"");
    let (server, addr) = serve(&state, &config);
    // Four clients at once, each with a backend connection of its own, then all gone.
    let clients: Vec<_> = (0..4)
        .map(|_| tls_connect(addr, "localhost", b""))
        .collect();
    wait_for_connections(&recorded, 4);
    drop(clients);
    for _ in 0..4 {
        server.wait_for_line("connection closed", Duration::from_secs(5));
    }
    let count = spare_counts(&server);
    let (kept, evicted) = (count("kept"), count("evicted"));
    // On glommio only clients that left before the pump started keep theirs.
    match fastedge_tests::engine() {
        fastedge_runtime::Engine::Glommio => assert_eq!(evicted, kept.saturating_sub(2)),
        _ => assert_eq!((kept, evicted), (4, 2)),
    }
    let open = established_to(backend) as u64;
    assert_eq!(open, kept - evicted, "backend connections still open");
}

#[test]
fn no_spare_connections_when_configured_so() {
    let state = TempDir::new("spare-off");
    let (backend, recorded) = echo_backend();
    let (server, addr) = serve(&state, &one_core_config(backend, "spare_connections = 0"));
    // Each one's connect completes before its client is let go, and is not kept.
    for _ in 0..3 {
        handshake_and_leave(addr);
        server.wait_for_line("connection closed", Duration::from_secs(5));
    }
    wait_for_connections(&recorded, 3);
}
