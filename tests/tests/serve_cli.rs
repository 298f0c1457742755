//! `fastedge serve` as a user runs it: the binary with its embedded default (self-signed
//! certificate created once, built-in demo backend), driven by the real curl over TLS 1.3.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    process::{Command, Output},
    time::Duration,
};

use fastedge_tests::{process::Fastedge, require_tool, TempDir};

/// The demo backend's `/bytes/N` pattern.
const PATTERN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789\n";

fn curl(args: &[&str]) -> Output {
    require_tool("curl", "curl");
    Command::new("curl")
        .args(["--silent", "--show-error", "--insecure", "--max-time", "30"])
        .args(args)
        .output()
        .expect("running curl")
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn start(state: &TempDir, extra: &[&str]) -> (Fastedge, String) {
    let state_dir = state.path().to_str().unwrap().to_owned();
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        &state_dir,
    ];
    args.extend_from_slice(extra);
    let server = Fastedge::start(&args, &[("FASTEDGE_LOG", "info")]);
    let addr = server.wait_listening();
    (server, format!("https://{addr}"))
}

#[test]
fn default_serve_answers_curl_through_the_demo_backend() {
    let state = TempDir::new("serve-default");
    let (mut server, base) = start(&state, &[]);

    // The demo echo: the request head as it reached the backend, over TLS 1.3.
    let out = curl(&["--verbose", "--tlsv1.3", &format!("{base}/hello?x=1")]);
    let body = String::from_utf8_lossy(&out.stdout);
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {verbose}");
    assert!(
        verbose.contains("SSL connection using TLSv1.3"),
        "{verbose}"
    );
    assert!(
        body.contains("your request as it reached the backend"),
        "{body}"
    );
    assert!(body.contains("GET /hello?x=1 HTTP/1.1"), "{body}");
    assert!(body.contains("User-Agent: curl/"), "{body}");

    // A large download: many TLS records, byte-exact.
    let count = 3_000_000;
    let out = curl(&[&format!("{base}/bytes/{count}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<u8> = PATTERN.iter().copied().cycle().take(count).collect();
    assert_eq!(out.stdout.len(), count);
    assert!(out.stdout == expected, "downloaded bytes match the pattern");

    // A large upload: the backend reports the length and hash of what reached it.
    let upload: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = state.path().join("upload.bin");
    std::fs::write(&file, &upload).unwrap();
    let out = curl(&[
        "--verbose",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/upload"),
    ]);
    let body = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "body: {} bytes, fnv1a64 {:016x}",
        upload.len(),
        fnv1a64(&upload)
    );
    assert!(body.contains(&expected), "expected {expected:?} in {body}");
    // curl asks before it sends a large body (Expect: 100-continue) and the demo backend
    // answers at once, through fastedge (else curl waits a second, then sends anyway).
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(verbose.contains("> Expect: 100-continue"), "{verbose}");
    assert!(verbose.contains("< HTTP/1.1 100 Continue"), "{verbose}");

    // Each connection logs why it closed.
    server.wait_for_line("connection closed", Duration::from_secs(5));
    let log = server.log_text();
    assert!(log.contains("reason=client closed first"), "{log}");

    let status = server.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; log:\n{}",
        server.log_text()
    );
}

#[test]
fn demo_certificate_is_created_once() {
    let state = TempDir::new("serve-cert");
    let cert = state.path().join("demo-cert.pem");
    let (mut first, _) = start(&state, &[]);
    first.terminate(Duration::from_secs(10));
    assert!(first
        .log_text()
        .contains("created a self-signed demo certificate"));
    let pem = std::fs::read(&cert).expect("certificate written");
    let key_mode = std::fs::metadata(state.path().join("demo-key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    let (mut second, base) = start(&state, &[]);
    assert!(curl(&[&format!("{base}/")]).status.success());
    second.terminate(Duration::from_secs(10));
    assert!(!second.log_text().contains("created a self-signed"));
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        pem,
        "the same certificate is reused"
    );
}

#[test]
fn explicit_backend_and_certificate() {
    let state = TempDir::new("serve-explicit");
    // A plain backend the test owns: it sends one line and closes.
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap().to_string();
    let accept = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = backend.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = stream.read(&mut request).unwrap();
        let head = String::from_utf8_lossy(&request[..n]).into_owned();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nbackend!")
            .unwrap();
        head
    });
    let (cert_path, key_path) = state.self_signed("example.test");
    let (mut server, base) = start(
        &state,
        &[
            "--backend",
            &backend_addr,
            "--cert",
            cert_path.to_str().unwrap(),
            "--key",
            key_path.to_str().unwrap(),
            "--cores",
            &fastedge_runtime::CpuList::available().unwrap().cpus()[0].to_string(),
        ],
    );
    let port = base.rsplit(':').next().unwrap();
    let out = curl(&[
        "--verbose",
        "--resolve",
        &format!("example.test:{port}:127.0.0.1"),
        &format!("https://example.test:{port}/via"),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "backend!");
    assert!(String::from_utf8_lossy(&out.stderr).contains("subject: CN=example.test"));
    assert!(accept.join().unwrap().starts_with("GET /via HTTP/1.1\r\n"));
    assert!(
        !state.path().join("demo-cert.pem").exists(),
        "no demo certificate made"
    );
    server.terminate(Duration::from_secs(10));
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    let bin = fastedge_tests::process::fastedge_bin();
    let state = TempDir::new("serve-bad");
    for (args, message) in [
        (vec!["--cores", "3-1"], "runs backwards"),
        (vec!["--cores", "0,x"], "`x` in CPU list"),
        (vec!["--cores", "100000"], "beyond the largest CPU"),
        (
            vec![
                "--cert",
                "/nonexistent/cert.pem",
                "--key",
                "/nonexistent/key.pem",
            ],
            "/nonexistent/cert.pem",
        ),
        (vec!["--backend", "nonsense"], "--backend \"nonsense\""),
    ] {
        let out = Command::new(&bin)
            .arg("serve")
            .args([
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                state.path().to_str().unwrap(),
            ])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // A port already taken.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().to_string();
    let out = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            &taken,
            "--state-dir",
            state.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&taken) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn help_lists_only_real_commands() {
    let bin = fastedge_tests::process::fastedge_bin();
    let out = Command::new(&bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("serve"), "{help}");
    for built in ["serve", "check-config", "split", "dup", "tap", "gen", "ctl"] {
        assert!(help.contains(built), "{built} missing:\n{help}");
    }
    assert!(
        !help.contains("  bench"),
        "bench listed but not built:\n{help}"
    );
    let out = Command::new(&bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--cores",
        "--listen",
        "--backend",
        "--cert",
        "--key",
        "--state-dir",
        "--alpn",
    ] {
        assert!(help.contains(option), "{option} missing from serve --help");
    }
}

#[test]
fn json_logs() {
    let state = TempDir::new("serve-json");
    let state_dir = state.path().to_str().unwrap().to_owned();
    let server = Fastedge::start(
        &[
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &state_dir,
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    let line = server.wait_for_line("\"message\":\"listening\"", Duration::from_secs(20));
    let addr = line
        .split("\"addr\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    assert!(curl(&[&format!("https://{addr}/")]).status.success());
    let closed = server.wait_for_line("\"message\":\"connection closed\"", Duration::from_secs(5));
    assert!(closed.starts_with('{') && closed.ends_with('}'), "{closed}");
    assert!(
        closed.contains("\"reason\":\"client closed first, then the other side\""),
        "{closed}"
    );
    assert!(
        server.log_text().lines().all(|l| l.starts_with('{')),
        "every line is JSON"
    );
}

#[test]
fn logs_to_syslog() {
    let state = TempDir::new("serve-syslog");
    let socket = state.path().join("log.sock");
    let daemon = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    daemon
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let mut server = Fastedge::start(
        &[
            "serve",
            "--syslog",
            socket.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &state_dir,
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    let mut buf = [0u8; 4096];
    let mut lines = Vec::new();
    let addr = loop {
        let n = daemon.recv(&mut buf).expect("a syslog datagram");
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        lines.push(line.clone());
        if let Some(rest) = line.split(" listening addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert!(curl(&[&format!("https://{addr}/")]).status.success());
    let closed = loop {
        let n = daemon.recv(&mut buf).expect("a syslog datagram");
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        if line.contains("connection closed") {
            break line;
        }
    };
    assert!(
        closed.starts_with("<30>fastedge["),
        "daemon facility, info: {closed}"
    );
    assert!(closed.contains("reason=client closed first"), "{closed}");
    assert!(lines.iter().all(|l| l.starts_with('<')), "{lines:?}");
    assert!(
        server.log_text().is_empty(),
        "nothing on stderr: {}",
        server.log_text()
    );
    server.terminate(Duration::from_secs(10));
}

#[test]
fn ipv4_and_ipv6_listeners_side_by_side() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 on the loopback interface of this machine");
        return;
    }
    let state = TempDir::new("serve-dual");
    let state_dir = state.path().to_str().unwrap().to_owned();
    let mut server = Fastedge::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--state-dir",
            &state_dir,
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    let first = server.wait_listening();
    let second = server.wait_listening();
    assert!(first.is_ipv4() && second.is_ipv6(), "{first} {second}");
    for addr in [first, second] {
        let out = curl(&["--globoff", &format!("https://{addr}/")]);
        assert!(
            out.status.success(),
            "{addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("as it reached the backend"));
    }
    server.terminate(Duration::from_secs(10));
}

#[test]
fn a_service_manager_hears_ready_reloading_and_stopping() {
    // systemd's Type=notify protocol, played by this test: a datagram socket in $NOTIFY_SOCKET.
    let state = TempDir::new("serve-notify");
    let notify = state.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let live = std::cell::RefCell::new(Vec::new());
    // The next state change; the live status lines in between are kept aside.
    let next = || loop {
        let mut buf = [0u8; 1024];
        let n = manager.recv(&mut buf).expect("a notification within 15 s");
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.starts_with("STATUS=") && message.contains("handshakes/s") {
            live.borrow_mut().push(message);
            continue;
        }
        return message;
    };
    let state_dir = state.path().to_str().unwrap().to_owned();
    let mut server = Fastedge::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &state_dir,
        ],
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
    );
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    // READY comes once it accepts: a request goes through at once.
    let addr = server.wait_listening();
    let out = curl(&[&format!("https://{addr}/ready")]);
    assert!(out.status.success());
    server.signal(nix::sys::signal::Signal::SIGHUP);
    let reloading = next();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    let again = next();
    assert!(again.lines().any(|l| l == "READY=1"), "{again}");
    // Every few seconds, a live line of what it does: the request above was a handshake.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while live.borrow().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no live status line");
        let mut buf = [0u8; 1024];
        if let Ok(n) = manager.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(
                message.starts_with("STATUS=serving on 127.0.0.1:"),
                "{message}"
            );
            live.borrow_mut().push(message);
        }
    }
    let line = live.borrow()[0].clone();
    assert!(
        line.contains(" open, ") && line.contains("handshakes/s") && line.contains("requests/s"),
        "{line}"
    );
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(stopping.contains("STATUS=draining"), "{stopping}");
    let status = server.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "{status}: {}", server.log_text());
}
