//! `fastedge serve` TLS features against real clients: SNI (exact, wildcard, strict, per-context
//! backends), session resumption (tickets across two processes sharing a secret and across a
//! rotation, the session cache), and client certificates (required, optional, CRL) with what the
//! backend learns about them. Clients are `openssl s_client` and curl; certificates, CA and CRL
//! are made with the `openssl` command.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use fastedge_tests::{
    peers::{echo_backend, free_port, Recorded},
    process::Fastedge,
    require_tool, sleep_past_boundary, TempDir,
};

fn openssl(args: &[&str]) {
    require_tool("openssl", "openssl");
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `openssl s_client` against `addr` with `args`, sends `request` (if any), keeps stdin
/// open until the answer (or, without a request, the session summary) has arrived or the client
/// gave up, and returns stdout+stderr.
fn s_client(addr: SocketAddr, args: &[&str], request: &str) -> String {
    let done = if request.is_empty() {
        "Verify return code"
    } else {
        "HTTP/1.1 "
    };
    s_client_until(addr, args, request, done)
}

/// [`s_client`], keeping stdin open until stdout shows `done` (or the client exits).
fn s_client_until(addr: SocketAddr, args: &[&str], request: &str, done: &str) -> String {
    require_tool("openssl", "openssl");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(request.as_bytes());
    let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = output.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = String::from_utf8_lossy(&output.lock().unwrap()).contains(done);
        if seen || child.try_wait().unwrap().is_some() {
            break;
        }
        // Neither the answer nor an exit: the server is stuck (a stall is a failure, even if
        // closing stdin would shake the answer loose).
        assert!(
            std::time::Instant::now() < deadline,
            "s_client {args:?}: no {done:?} within 10 s; output so far:\n{}",
            String::from_utf8_lossy(&output.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A moment more for the rest of the answer and any TLS 1.3 tickets.
    std::thread::sleep(Duration::from_millis(100));
    drop(stdin);
    let status = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let stdout = output.lock().unwrap().clone();
    format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&status.stderr)
    )
}

/// The CN of the certificate the server presented, from `s_client` output.
fn presented_cn(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("subject=CN = "))
        .map(|cn| cn.trim().to_owned())
}

fn requests_seen(recorded: &Recorded) -> usize {
    recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|bytes| bytes.windows(4).any(|w| w == b"GET "))
        .count()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sni_exact_wildcard_default_and_per_context_backends() {
    let state = TempDir::new("sni");
    let (default_cert, default_key) = state.self_signed("default.test");
    let (a_cert, a_key) = state.self_signed("a.example.test");
    let (w_cert, w_key) = state.self_signed("wild.example.test");
    let (global, global_seen) = echo_backend();
    let (a_backend, a_seen) = echo_backend();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[backend]]\naddress = \"{global}\"\n\
         [[context]]\nservername = [\"a.example.test\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[context.backend]]\naddress = \"{a_backend}\"\nx_forwarded = true\n\
         [[context]]\nservername = [\"*.example.test\", \"other.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        path(&default_cert),
        path(&default_key),
        path(&a_cert),
        path(&a_key),
        path(&w_cert),
        path(&w_key),
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let request = |host: &str| format!("GET /{host} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    for (name, cn) in [
        ("a.example.test", "a.example.test"),
        ("A.Example.Test", "a.example.test"),
        ("b.example.test", "wild.example.test"),
        ("other.test", "wild.example.test"),
        ("x.y.example.test", "default.test"),
        ("unknown.test", "default.test"),
    ] {
        let out = s_client(addr, &["-servername", name], &request(name));
        assert_eq!(
            presented_cn(&out).as_deref(),
            Some(cn),
            "servername {name}: {out}"
        );
        assert!(out.contains("HTTP/1.1 200 OK"), "{name}: {out}");
    }
    let out = s_client(addr, &["-noservername"], &request("none"));
    assert_eq!(presented_cn(&out).as_deref(), Some("default.test"), "{out}");
    // a.example.test's own backend took both of its connections (with X-Forwarded-For); the
    // global backend the other five.
    assert_eq!(requests_seen(&a_seen), 2);
    assert_eq!(requests_seen(&global_seen), 5);
    let a_bytes = a_seen.lock().unwrap().concat();
    assert!(
        String::from_utf8_lossy(&a_bytes).contains("X-Forwarded-For: 127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&a_bytes)
    );
    let log = server.log_text();
    assert!(
        log.contains("sni=\"a.example.test\"") && log.contains(&format!("backend=\"{a_backend}\"")),
        "{log}"
    );
    // curl, with the name resolved to our port.
    require_tool("curl", "curl");
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "--resolve"])
        .arg(format!("a.example.test:{}:127.0.0.1", addr.port()))
        .arg(format!("https://a.example.test:{}/curl", addr.port()))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("GET /curl HTTP/1.1"),
        "{out:?}"
    );
    assert_eq!(requests_seen(&a_seen), 3);
}

#[test]
fn sni_strict_refuses_unknown_names_with_unrecognized_name() {
    let state = TempDir::new("sni-strict");
    let (default_cert, default_key) = state.self_signed("default.test");
    let (a_cert, a_key) = state.self_signed("a.example.test");
    let (backend, _seen) = echo_backend();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nsni_strict = true\n\
         [[backend]]\naddress = \"{backend}\"\n\
         [[context]]\nservername = [\"a.example.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        path(&default_cert),
        path(&default_key),
        path(&a_cert),
        path(&a_key),
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let out = s_client(addr, &["-servername", "nope.test"], "");
    assert!(out.contains("unrecognized name"), "{out}");
    assert_eq!(presented_cn(&out), None, "{out}");
    let out = s_client(addr, &["-servername", "a.example.test"], "");
    assert_eq!(presented_cn(&out).as_deref(), Some("a.example.test"));
    // No server name at all: the default context.
    let out = s_client(addr, &["-noservername"], "");
    assert_eq!(presented_cn(&out).as_deref(), Some("default.test"));
    let line = server.wait_for_line("sni=\"nope.test\"", Duration::from_secs(5));
    assert!(line.contains("sni_strict"), "{line}");
}

/// Starts a server sharing `secret` for tickets, rotating every `rotate`.
fn ticket_server(
    state: &TempDir,
    secret: &Path,
    rotate: &str,
    backend: SocketAddr,
) -> (Fastedge, SocketAddr) {
    let config = format!(
        "[tls]\nticket_secret_file = \"{}\"\nticket_rotate = \"{rotate}\"\nticket_previous = 1\n\
         [[backend]]\naddress = \"{backend}\"\n",
        path(secret)
    );
    Fastedge::serve_config(state, &config)
}

fn resumed(output: &str) -> bool {
    assert!(
        output.contains("Reused") || output.contains("New,"),
        "no session line: {output}"
    );
    output.contains("Reused")
}

#[test]
fn tickets_resume_on_a_second_process_sharing_the_secret_and_across_a_rotation() {
    let state_a = TempDir::new("tickets-a");
    let state_b = TempDir::new("tickets-b");
    let state_c = TempDir::new("tickets-c");
    let secret = state_a.path().join("ticket.secret");
    std::fs::write(
        &secret,
        "a fleet-wide secret of more than thirty-two bytes\n",
    )
    .unwrap();
    let (backend, _seen) = echo_backend();
    // Rotation every 3 s, one previous key: a ticket lives through the next period, not two.
    let period = Duration::from_secs(3);
    let (server_a, addr_a) = ticket_server(&state_a, &secret, "3s", backend);
    let (_server_b, addr_b) = ticket_server(&state_b, &secret, "3s", backend);
    // A server with random keys (no secret) shares nothing.
    let (_server_c, addr_c) =
        Fastedge::serve_config(&state_c, &format!("[[backend]]\naddress = \"{backend}\"\n"));

    for version in ["-tls1_3", "-tls1_2"] {
        // Start right after a boundary, so the steps below land in known periods.
        sleep_past_boundary(period, Duration::from_millis(200));
        let session = state_a.path().join(format!("session{version}.pem"));
        let session = path(&session);
        let request = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
        let first = s_client(addr_a, &[version, "-sess_out", session], request);
        assert!(!resumed(&first), "{first}");
        let again = s_client(addr_a, &[version, "-sess_in", session], request);
        assert!(resumed(&again), "same process, {version}: {again}");
        let other = s_client(addr_b, &[version, "-sess_in", session], request);
        assert!(
            resumed(&other),
            "second process, same secret, {version}: {other}"
        );
        let random = s_client(addr_c, &[version, "-sess_in", session], request);
        assert!(
            !resumed(&random),
            "different keys must not resume: {random}"
        );
        // Next period: the issuing key is the previous one now, still accepted.
        sleep_past_boundary(period, Duration::from_millis(200));
        let next = s_client(addr_b, &[version, "-sess_in", session], request);
        assert!(resumed(&next), "after one rotation, {version}: {next}");
        // Two periods on: the key left the ring.
        sleep_past_boundary(period, Duration::from_millis(200));
        let late = s_client(addr_b, &[version, "-sess_in", session], request);
        assert!(!resumed(&late), "after two rotations, {version}: {late}");
    }
    assert!(server_a.log_text().contains("session ticket key rotated"));
}

#[test]
fn a_client_that_says_nothing_still_gets_a_ticket_it_can_resume_with() {
    // BoringSSL holds TLS 1.3 session tickets until the connection's first write; the proxy
    // flushes them when the client has said nothing, so an idle connection does not keep them
    // and a client that waits for the server (or for nothing) can still resume.
    require_tool("openssl", "openssl");
    let state = TempDir::new("tickets-silent");
    let (backend, seen) = echo_backend();
    let (_server, addr) =
        Fastedge::serve_config(&state, &format!("[[backend]]\naddress = \"{backend}\"\n"));
    let session = state.path().join("silent-session.pem");
    // s_client writes `-sess_out` when a ticket arrives (and again as it exits): the file
    // must appear while the client is still connected and silent (its stdin held open).
    let mut silent = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-tls1_3",
            "-sess_out",
        ])
        .arg(&session)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Whole (its last line written) and the same on two looks in a row: s_client rewrites
    // the file for each of the two tickets.
    let written = || {
        std::fs::read_to_string(&session)
            .ok()
            .filter(|pem| pem.contains("-----END SSL SESSION PARAMETERS-----"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = None;
    let arrived = loop {
        assert!(
            silent.try_wait().unwrap().is_none(),
            "s_client exited early"
        );
        let now = written();
        if now.is_some() && now == last {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(50));
    };
    silent.kill().unwrap();
    silent.wait().unwrap();
    assert!(
        arrived,
        "no ticket reached a client that sent nothing within 5 s"
    );
    let session = path(&session);
    let request = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let again = s_client(addr, &["-tls1_3", "-sess_in", session], request);
    assert!(resumed(&again), "{again}");
    assert_eq!(requests_seen(&seen), 1, "the silent client sent nothing");
}

#[test]
fn a_fleet_changes_its_secret_without_losing_resumption() {
    let state = TempDir::new("secret-change");
    let (old, new) = (
        state.path().join("old.secret"),
        state.path().join("new.secret"),
    );
    for file in [&old, &new] {
        let made = Command::new(fastedge_tests::process::fastedge_bin())
            .arg("ticket-secret")
            .arg(file)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a secret is readable by its owner only");
    }
    // An existing secret is never overwritten.
    let again = Command::new(fastedge_tests::process::fastedge_bin())
        .arg("ticket-secret")
        .arg(&old)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let (backend, _seen) = echo_backend();
    let server = |name: &str, secret: &Path, accept: Option<&Path>| {
        let dir = TempDir::new(name);
        let accept = accept
            .map(|a| format!("ticket_secret_accept_file = \"{}\"\n", path(a)))
            .unwrap_or_default();
        let config = format!(
            "[tls]\nticket_secret_file = \"{}\"\n{accept}[[backend]]\naddress = \"{backend}\"\n",
            path(secret)
        );
        let (server, addr) = Fastedge::serve_config(&dir, &config);
        (dir, server, addr)
    };
    // Step 1 of the change: boxes still encrypting with the old secret accept the new one;
    // step 2: boxes encrypting with the new one accept the old; step 3: the new one alone.
    let (_d1, _s1, step1) = server("secret-step1", &old, Some(&new));
    let (_d2, _s2, step2) = server("secret-step2", &new, Some(&old));
    let (_d3, _s3, step3) = server("secret-step3", &new, None);
    let (_d0, _s0, before) = server("secret-before", &old, None);
    let request = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    for version in ["-tls1_3", "-tls1_2"] {
        let session = state.path().join(format!("session{version}.pem"));
        let session = path(&session);
        let issued = |addr| {
            let out = s_client(addr, &[version, "-sess_out", session], request);
            assert!(!resumed(&out), "{out}");
        };
        let resumes = |addr| resumed(&s_client(addr, &[version, "-sess_in", session], request));
        // A ticket of a box not yet changed resumes on boxes of every step but the last.
        issued(before);
        assert!(
            resumes(step1) && resumes(step2),
            "{version}: old ticket refused mid-change"
        );
        assert!(
            !resumes(step3),
            "{version}: the old secret outlived the change"
        );
        // A ticket of a box at step 2 resumes on boxes still at step 1 and on finished ones.
        issued(step2);
        assert!(
            resumes(step1) && resumes(step3),
            "{version}: new ticket refused mid-change"
        );
        assert!(
            !resumes(before),
            "{version}: a box that never learnt the new secret took it"
        );
    }
}

#[test]
fn session_cache_resumes_tls12_clients_without_tickets() {
    let state = TempDir::new("session-cache");
    let (backend, _seen) = echo_backend();
    let (_server, addr) =
        Fastedge::serve_config(&state, &format!("[[backend]]\naddress = \"{backend}\"\n"));
    let session = state.path().join("session.pem");
    let args = |flag: &'static str| ["-tls1_2", "-no_ticket", flag, path(&session)];
    let first = s_client(addr, &args("-sess_out"), "");
    assert!(!resumed(&first), "{first}");
    let again = s_client(addr, &args("-sess_in"), "");
    assert!(resumed(&again), "{again}");

    // With the cache off, the same client gets full handshakes.
    let state = TempDir::new("session-cache-off");
    let (_server, addr) = Fastedge::serve_config(
        &state,
        &format!("[tls]\nsession_cache_size = 0\n[[backend]]\naddress = \"{backend}\"\n"),
    );
    let first = s_client(addr, &args("-sess_out"), "");
    assert!(!resumed(&first), "{first}");
    let again = s_client(addr, &args("-sess_in"), "");
    assert!(!resumed(&again), "{again}");
}

/// A CA, a client certificate it signed (alice), one it signed and revoked (mallory), one
/// self-signed (rogue), and a CRL naming mallory.
struct ClientPki {
    ca: PathBuf,
    crl: PathBuf,
    alice: (PathBuf, PathBuf),
    mallory: (PathBuf, PathBuf),
    rogue: (PathBuf, PathBuf),
}

/// EC P-256 key options for `openssl req`.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
];

/// A self-signed CA in `dir`: `ca.pem` and `ca.key`.
fn make_ca(dir: &Path, cn: &str) {
    let s = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let subject = format!("/CN={cn}");
    openssl(
        &[
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout",
                &s("ca.key"),
                "-out",
                &s("ca.pem"),
                "-subj",
                &subject,
            ],
            &["-days", "2"],
        ]
        .concat(),
    );
}

fn client_pki(dir: &Path) -> ClientPki {
    let p = |name: &str| dir.join(name);
    let s = |name: &str| p(name).to_str().unwrap().to_owned();
    make_ca(dir, "Test Client CA");
    for (name, subject) in [("alice", "/O=Example/CN=alice"), ("mallory", "/CN=mallory")] {
        openssl(
            &[
                &["req"][..],
                &EC_KEY,
                &[
                    "-keyout",
                    &s(&format!("{name}.key")),
                    "-out",
                    &s(&format!("{name}.csr")),
                ],
                &["-subj", subject],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&format!("{name}.csr")),
            "-CA",
            &s("ca.pem"),
            "-CAkey",
            &s("ca.key"),
            "-CAcreateserial",
            "-out",
            &s(&format!("{name}.pem")),
            "-days",
            "2",
        ]);
    }
    openssl(
        &[
            &["req", "-x509"][..],
            &EC_KEY,
            &[
                "-keyout",
                &s("rogue.key"),
                "-out",
                &s("rogue.pem"),
                "-subj",
                "/CN=alice",
            ],
            &["-days", "2"],
        ]
        .concat(),
    );
    std::fs::write(p("index.txt"), "").unwrap();
    std::fs::write(p("crlnumber"), "01\n").unwrap();
    std::fs::write(
        p("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {}\ncrlnumber = {}\ndefault_md = sha256\n\
             default_crl_days = 2\ncertificate = {}\nprivate_key = {}\n",
            s("index.txt"),
            s("crlnumber"),
            s("ca.pem"),
            s("ca.key")
        ),
    )
    .unwrap();
    openssl(&["ca", "-config", &s("ca.cnf"), "-revoke", &s("mallory.pem")]);
    openssl(&[
        "ca",
        "-config",
        &s("ca.cnf"),
        "-gencrl",
        "-out",
        &s("crl.pem"),
    ]);
    let pair = |name: &str| (p(&format!("{name}.pem")), p(&format!("{name}.key")));
    ClientPki {
        ca: p("ca.pem"),
        crl: p("crl.pem"),
        alice: pair("alice"),
        mallory: pair("mallory"),
        rogue: pair("rogue"),
    }
}

fn with_cert(pair: &(PathBuf, PathBuf)) -> Vec<String> {
    vec![
        "-cert".into(),
        path(&pair.0).into(),
        "-key".into(),
        path(&pair.1).into(),
    ]
}

fn handshake_ok(output: &str) -> bool {
    output.contains("HTTP/1.1 200 OK")
}

#[test]
fn client_certificates_required_optional_revoked_and_what_the_backend_learns() {
    let state = TempDir::new("client-certs");
    let pki = client_pki(state.path());
    let (xff_backend, xff_seen) = echo_backend();
    let (v2_backend, v2_seen) = echo_backend();
    let (bud_backend, bud_seen) = echo_backend();
    let (open_backend, open_seen) = echo_backend();
    let (d_cert, d_key) = state.self_signed("default.test");
    let (r_cert, r_key) = state.self_signed("required.test");
    let (o_cert, o_key) = state.self_signed("optional.test");
    let (v_cert, v_key) = state.self_signed("v2.test");
    let (j_cert, j_key) = state.self_signed("bud.test");
    let config = format!(
        "[tls]\ncert = \"{d}\"\nkey = \"{dk}\"\nclient_ca = \"{ca}\"\nclient_crl = \"{crl}\"\n\
         [[backend]]\naddress = \"{open_backend}\"\nx_forwarded = true\n\
         [[context]]\nservername = [\"required.test\"]\ncert = \"{r}\"\nkey = \"{rk}\"\n\
         client_verify = \"required\"\n\
         [[context.backend]]\naddress = \"{xff_backend}\"\nx_forwarded = true\nsend_client_cert = true\n\
         [[context]]\nservername = [\"optional.test\"]\ncert = \"{o}\"\nkey = \"{ok}\"\n\
         client_verify = \"optional\"\n\
         [[context.backend]]\naddress = \"{xff_backend}\"\nx_forwarded = true\n\
         [[context]]\nservername = [\"v2.test\"]\ncert = \"{v}\"\nkey = \"{vk}\"\n\
         client_verify = \"required\"\n\
         [[context.backend]]\naddress = \"{v2_backend}\"\nproxy_protocol = \"v2\"\nsend_client_cert = true\n\
         [[context]]\nservername = [\"bud.test\"]\ncert = \"{j}\"\nkey = \"{jk}\"\n\
         client_verify = \"required\"\n\
         [[context.backend]]\naddress = \"{bud_backend}\"\nproxy_protocol = \"bud-json\"\n",
        d = path(&d_cert),
        dk = path(&d_key),
        ca = path(&pki.ca),
        crl = path(&pki.crl),
        r = path(&r_cert),
        rk = path(&r_key),
        o = path(&o_cert),
        ok = path(&o_key),
        v = path(&v_cert),
        vk = path(&v_key),
        j = path(&j_cert),
        jk = path(&j_key),
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let request = |name: &str| {
        format!("GET /{name} HTTP/1.1\r\nHost: {name}\r\nX-Client-Verify: SUCCESS\r\n\r\n")
    };
    let connect = |name: &str, cert: Option<&(PathBuf, PathBuf)>| {
        let mut args: Vec<String> = vec!["-servername".into(), name.into()];
        if let Some(pair) = cert {
            args.extend(with_cert(pair));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        s_client(addr, &args, &request(name))
    };

    // A session from a context that asks for no certificate does not resume where one is
    // required (TLS 1.2 and 1.3): the client must show a certificate there.
    for version in ["-tls1_2", "-tls1_3"] {
        let session = state.path().join(format!("open{version}.pem"));
        let out = s_client(
            addr,
            &[
                "-servername",
                "default.test",
                version,
                "-sess_out",
                path(&session),
            ],
            &request("default.test"),
        );
        assert!(handshake_ok(&out), "{out}");
        let out = s_client(
            addr,
            &[
                "-servername",
                "required.test",
                version,
                "-sess_in",
                path(&session),
            ],
            &request("required.test"),
        );
        assert!(
            !handshake_ok(&out),
            "{version}: resumed past client_verify: {out}"
        );
    }
    open_seen.lock().unwrap().clear();

    // Required: no certificate, a self-signed one, a revoked one: refused.
    assert!(!handshake_ok(&connect("required.test", None)));
    assert!(!handshake_ok(&connect("required.test", Some(&pki.rogue))));
    let revoked = connect("required.test", Some(&pki.mallory));
    assert!(!handshake_ok(&revoked), "{revoked}");
    assert_eq!(requests_seen(&xff_seen), 0);
    let out = connect("required.test", Some(&pki.alice));
    assert!(handshake_ok(&out), "{out}");
    let seen = String::from_utf8_lossy(&xff_seen.lock().unwrap().concat()).into_owned();
    assert!(seen.contains("X-Client-Verify: SUCCESS\r\n"), "{seen}");
    assert!(
        seen.contains("X-Client-Subject: CN=alice,O=Example\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("X-Client-Cert: -----BEGIN%20CERTIFICATE-----%0A"),
        "{seen}"
    );
    assert_eq!(
        seen.matches("X-Client-Verify").count(),
        1,
        "the client's copy is gone"
    );

    // Optional: without a certificate the request goes on, and says so.
    xff_seen.lock().unwrap().clear();
    let out = connect("optional.test", None);
    assert!(handshake_ok(&out), "{out}");
    let seen = String::from_utf8_lossy(&xff_seen.lock().unwrap().concat()).into_owned();
    assert!(seen.contains("X-Client-Verify: NONE\r\n"), "{seen}");
    assert!(!seen.contains("SUCCESS"), "{seen}");
    // …with a bad one it is refused.
    assert!(!handshake_ok(&connect("optional.test", Some(&pki.rogue))));
    // The default context asks for none: nothing is stated, and the client's forged header
    // is dropped.
    assert!(handshake_ok(&connect("default.test", None)));
    let seen = String::from_utf8_lossy(&open_seen.lock().unwrap().concat()).into_owned();
    assert!(seen.contains("GET /default.test"), "{seen}");
    assert!(!seen.contains("X-Client-Verify"), "{seen}");

    // PROXY v2: the SSL TLV (client certificate flags, verify result 0, CN) and the DER
    // certificate in fastedge's TLV.
    let out = connect("v2.test", Some(&pki.alice));
    assert!(handshake_ok(&out), "{out}");
    let raw = v2_seen.lock().unwrap()[0].clone();
    let header = match fastedge_wire::proxy::parse(&raw).unwrap() {
        fastedge_wire::http1::Status::Complete((header, _)) => header,
        other => panic!("no PROXY header: {other:?}"),
    };
    use fastedge_wire::proxy::tlv;
    let tlv_value = |kind: u8| {
        header
            .tlvs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no TLV {kind:#x} in {:?}", header.tlvs))
    };
    let ssl = tlv_value(tlv::SSL);
    assert_eq!(
        ssl[0],
        tlv::CLIENT_SSL | tlv::CLIENT_CERT_CONN | tlv::CLIENT_CERT_SESS
    );
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let cn = [&[tlv::SSL_CN, 0, 5][..], b"alice"].concat();
    assert!(ssl.windows(cn.len()).any(|w| w == cn), "{ssl:?}");
    let der = tlv_value(tlv::FASTEDGE_CLIENT_CERT);
    let sent = fastedge_tls::boring::x509::X509::from_der(&der).unwrap();
    let alice =
        fastedge_tls::boring::x509::X509::from_pem(&std::fs::read(&pki.alice.0).unwrap()).unwrap();
    assert_eq!(sent.to_der().unwrap(), alice.to_der().unwrap());
    // bud's JSON line carries cn and dn.
    let out = connect("bud.test", Some(&pki.alice));
    assert!(handshake_ok(&out), "{out}");
    let line = String::from_utf8_lossy(&bud_seen.lock().unwrap()[0]).into_owned();
    assert!(
        line.contains("\"cn\":\"alice\"") && line.contains("\"dn\":\"CN=alice,O=Example\""),
        "{line}"
    );
    let log = server.log_text();
    assert!(
        log.contains("sni=\"required.test\"")
            && log.contains("client sent no certificate")
            && log.contains("client certificate rejected"),
        "refusals are logged and name the certificate: {log}"
    );
}

fn start_keyserver(keys: &[&Path], socket: &Path) -> Fastedge {
    let mut args = vec!["keyserver", "--listen", path(socket)];
    for key in keys {
        args.extend(["--key", path(key)]);
    }
    let signer = Fastedge::start(&args, &[("FASTEDGE_LOG", "info")]);
    signer.wait_for_line("key server listening", Duration::from_secs(10));
    signer
}

#[test]
fn keyless_signing_through_the_reference_signer_and_its_failures() {
    let state = TempDir::new("keyless");
    let (ec_cert, ec_key) = state.self_signed("keyless-ec.test");
    let rsa_cert = state.path().join("rsa.pem");
    let rsa_key = state.path().join("rsa.key");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        path(&rsa_key),
        "-out",
        path(&rsa_cert),
        "-subj",
        "/CN=keyless-rsa.test",
        "-days",
        "2",
    ]);
    let socket = state.path().join("signer.sock");
    let (backend, seen) = echo_backend();
    let mut signer = start_keyserver(&[&ec_key, &rsa_key], &socket);
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    // The serve process never sees the private keys.
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey_server = \"unix:{}\"\n\
         [[tls.certificate]]\ncert = \"{}\"\nkey_server = \"unix:{}\"\n\
         [[backend]]\naddress = \"{backend}\"\n",
        path(&ec_cert),
        path(&socket),
        path(&rsa_cert),
        path(&socket),
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let request = "GET /keyless HTTP/1.1\r\nHost: k\r\n\r\n";
    for (args, cn) in [
        (&["-tls1_3"][..], "keyless-ec.test"),
        (
            &["-tls1_3", "-sigalgs", "RSA-PSS+SHA256"][..],
            "keyless-rsa.test",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"][..],
            "keyless-rsa.test",
        ),
        (
            &["-tls1_2", "-sigalgs", "ECDSA+SHA384"][..],
            "keyless-ec.test",
        ),
    ] {
        let out = s_client(addr, args, request);
        assert_eq!(presented_cn(&out).as_deref(), Some(cn), "{args:?}: {out}");
        assert!(handshake_ok(&out), "{args:?}: {out}");
    }
    // Many handshakes at once: each waits for its signature without holding up the others.
    let threads: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut tls = fastedge_tests::peers::tls_connect(addr, "k", b"");
                tls.write_all(b"GET /many HTTP/1.1\r\nHost: k\r\n\r\n")
                    .unwrap();
                fastedge_tests::peers::read_response(&mut tls)
            })
        })
        .collect();
    for t in threads {
        let (head, _) = t.join().unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    assert_eq!(requests_seen(&seen), 44);

    // The signer dies: handshakes fail cleanly, with the reason; the server lives on.
    signer.signal(nix::sys::signal::Signal::SIGKILL);
    signer.wait_exit(Duration::from_secs(5));
    let out = s_client(addr, &["-tls1_3"], request);
    assert!(!handshake_ok(&out), "{out}");
    let line = server.wait_for_line("keyless signing failed", Duration::from_secs(10));
    assert!(line.contains(path(&socket)), "{line}");
    // A new signer: handshakes work again, over a fresh connection.
    let _signer = start_keyserver(&[&ec_key, &rsa_key], &socket);
    let out = s_client(addr, &["-tls1_3"], request);
    assert!(handshake_ok(&out), "{out}");

    // A signer that does not hold the key: refused with that reason.
    let other = TempDir::new("keyless-other");
    let (_, stranger_key) = other.self_signed("stranger.test");
    let socket2 = state.path().join("stranger.sock");
    let _stranger = start_keyserver(&[&stranger_key], &socket2);
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey_server = \"unix:{}\"\n[[backend]]\naddress = \"{backend}\"\n",
        path(&ec_cert),
        path(&socket2),
    );
    let state2 = TempDir::new("keyless-2");
    let (server2, addr2) = Fastedge::serve_config(&state2, &config);
    let out = s_client(addr2, &["-tls1_3"], request);
    assert!(!handshake_ok(&out), "{out}");
    server2.wait_for_line("does not hold this key", Duration::from_secs(10));
}

/// A CA that signs a server certificate naming an OCSP responder on `port`, run with
/// `openssl ca` so that its index can serve `openssl ocsp`.
struct OcspPki {
    dir: PathBuf,
    /// Leaf then CA, as the serve configuration takes it.
    chain: PathBuf,
    key: PathBuf,
}

fn ocsp_pki(dir: &Path, port: u16) -> OcspPki {
    std::fs::create_dir_all(dir).unwrap();
    let s = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    make_ca(dir, "Test OCSP CA");
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "1000\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = {index}\nnew_certs_dir = {dir}\nserial = {serial}\n\
             default_md = sha256\ndefault_days = 2\ncertificate = {ca}\nprivate_key = {cakey}\n\
             policy = p\nunique_subject = no\n[p]\ncommonName = supplied\n\
             [srv]\nauthorityInfoAccess = OCSP;URI:http://127.0.0.1:{port}\n",
            index = s("index.txt"),
            dir = dir.display(),
            serial = s("serial"),
            ca = s("ca.pem"),
            cakey = s("ca.key"),
        ),
    )
    .unwrap();
    openssl(
        &[
            &["req"][..],
            &EC_KEY,
            &[
                "-keyout",
                &s("srv.key"),
                "-out",
                &s("srv.csr"),
                "-subj",
                "/CN=stapled.test",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "ca",
        "-batch",
        "-config",
        &s("ca.cnf"),
        "-extensions",
        "srv",
        "-in",
        &s("srv.csr"),
        "-out",
        &s("srv.pem"),
    ]);
    let leaf = std::fs::read_to_string(dir.join("srv.pem")).unwrap();
    let ca = std::fs::read_to_string(dir.join("ca.pem")).unwrap();
    // `openssl ca` writes a text dump before the PEM block; keep the PEM.
    let leaf = &leaf[leaf.find("-----BEGIN CERTIFICATE-----").unwrap()..];
    std::fs::write(dir.join("chain.pem"), format!("{leaf}{ca}")).unwrap();
    OcspPki {
        dir: dir.to_owned(),
        chain: dir.join("chain.pem"),
        key: dir.join("srv.key"),
    }
}

/// `openssl ocsp` answering for `pki`'s CA on `port`, until dropped.
struct Responder(std::process::Child);

impl Responder {
    fn start(pki: &OcspPki, port: u16) -> Self {
        let s = |name: &str| pki.dir.join(name).to_str().unwrap().to_owned();
        let mut child = Command::new("openssl")
            .args(["ocsp", "-index", &s("index.txt"), "-port"])
            .arg(port.to_string())
            .args([
                "-rsigner",
                &s("ca.pem"),
                "-rkey",
                &s("ca.key"),
                "-CA",
                &s("ca.pem"),
            ])
            .args(["-nmin", "10", "-ignore_err"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It serves one connection at a time, so no probing connection: wait for its word.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("waiting for OCSP client connections") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("openssl ocsp did not start");
        Self(child)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn staple_status(addr: SocketAddr) -> String {
    s_client(addr, &["-status", "-servername", "stapled.test"], "")
}

#[test]
fn ocsp_staples_from_the_responder_from_a_file_and_never_blocking() {
    let state = TempDir::new("ocsp");
    let port = free_port();
    let pki = ocsp_pki(state.path(), port);
    let _responder = Responder::start(&pki, port);
    let (backend, _seen) = echo_backend();

    // Auto-fetch from the responder named in the certificate.
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[[backend]]\naddress = \"{backend}\"\n",
        path(&pki.chain),
        path(&pki.key)
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    server.wait_for_logged("OCSP staple updated", Duration::from_secs(15));
    let out = staple_status(addr);
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    // A client that does not ask gets none.
    let out = s_client(addr, &["-servername", "stapled.test"], "");
    assert!(!out.contains("OCSP Response Status"), "{out}");

    // A staple file (made with `openssl ocsp` as a client), no fetching.
    let staple = pki.dir.join("staple.der");
    openssl(&[
        "ocsp",
        "-issuer",
        path(&pki.dir.join("ca.pem")),
        "-cert",
        path(&pki.chain),
        "-url",
        &format!("http://127.0.0.1:{port}"),
        "-respout",
        path(&staple),
        "-noverify",
    ]);
    let state2 = TempDir::new("ocsp-file");
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nocsp_staple = \"{}\"\nocsp_fetch = false\n\
         [[backend]]\naddress = \"{backend}\"\n",
        path(&pki.chain),
        path(&pki.key),
        path(&staple),
    );
    let (file_server, file_addr) = Fastedge::serve_config(&state2, &config);
    let out = staple_status(file_addr);
    assert!(out.contains("Cert Status: good"), "{out}");
    // Garbage written over the file: refused with a reason, the good staple stays.
    std::fs::write(&staple, b"not an OCSP response").unwrap();
    file_server.wait_for_line("OCSP staple not updated", Duration::from_secs(10));
    let out = staple_status(file_addr);
    assert!(out.contains("Cert Status: good"), "{out}");

    // The responder is down: handshakes go on without a staple.
    let state3 = TempDir::new("ocsp-down");
    let dead = free_port();
    let pki_dead = ocsp_pki(&state3.path().join("pki"), dead);
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nocsp_timeout = \"1s\"\n[[backend]]\naddress = \"{backend}\"\n",
        path(&pki_dead.chain),
        path(&pki_dead.key)
    );
    let (down_server, down_addr) = Fastedge::serve_config(&state3, &config);
    down_server.wait_for_logged("OCSP staple not updated", Duration::from_secs(15));
    let out = staple_status(down_addr);
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    assert!(out.contains("Verify return code"), "{out}");
}

/// Reads one HTTP request (head and Content-Length body) from `stream`.
fn read_http_request(stream: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if std::io::Read::read(stream, &mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(stream, &mut body).ok()?;
    Some((head, body))
}

/// The value of a JSON string field in a flat object (enough for bud's two fields).
fn json_field(json: &str, name: &str) -> Option<String> {
    let start = json.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let end = json[start..].find('"')? + start;
    Some(json[start..end].replace("\\/", "/"))
}

/// A bud-style stapling service: GET misses (404); POST asks the responder named in the body
/// and answers `{"response": base64}`. Records each request line.
fn bud_stapling_service() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use fastedge_tls::boring::base64;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let Some((head, body)) = read_http_request(&mut stream) else {
                continue;
            };
            let line = head.lines().next().unwrap_or_default().to_owned();
            sink.lock().unwrap().push(line.clone());
            let answer = if line.starts_with("GET ") {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
            } else {
                let json = String::from_utf8_lossy(&body).into_owned();
                let url = json_field(&json, "url").unwrap();
                let request = base64::decode_block(&json_field(&json, "ocsp").unwrap()).unwrap();
                let addr = url.trim_start_matches("http://").trim_end_matches('/');
                let mut upstream = std::net::TcpStream::connect(addr).unwrap();
                let mut post = format!(
                    "POST / HTTP/1.0\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
                    request.len()
                )
                .into_bytes();
                post.extend_from_slice(&request);
                upstream.write_all(&post).unwrap();
                let mut reply = Vec::new();
                let _ = std::io::Read::read_to_end(&mut upstream, &mut reply);
                let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let json = format!(
                    "{{\"response\":\"{}\"}}",
                    base64::encode_block(&reply[split..])
                );
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
                    json.len()
                )
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, log)
}

#[test]
fn ocsp_staples_through_a_bud_stapling_service() {
    let state = TempDir::new("ocsp-bud");
    let port = free_port();
    let pki = ocsp_pki(state.path(), port);
    let _responder = Responder::start(&pki, port);
    let (service, requests) = bud_stapling_service();
    let (backend, _seen) = echo_backend();
    let config = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nocsp_url = \"http://127.0.0.1:{service}/bud/stapling/%s\"\n\
         [[backend]]\naddress = \"{backend}\"\n",
        path(&pki.chain),
        path(&pki.key)
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let line = server.wait_for_logged("OCSP staple updated", Duration::from_secs(15));
    assert!(line.contains("stapling service"), "{line}");
    let out = staple_status(addr);
    assert!(out.contains("Cert Status: good"), "{out}");
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests[0].starts_with("GET /bud/stapling/"),
        "{requests:?}"
    );
    assert!(
        requests[1].starts_with("POST /bud/stapling/"),
        "{requests:?}"
    );
    // The same base64 CertID (percent-encoded) in both.
    assert_eq!(
        requests[0].split_whitespace().nth(1),
        requests[1].split_whitespace().nth(1)
    );
}

/// A dynamic SNI service (bud's protocol) whose behaviour depends on the name asked for; counts
/// the requests per name.
fn sni_service(
    good: &[(&str, (PathBuf, PathBuf))],
) -> (
    u16,
    std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let json_escape = |pem: &str| pem.replace('\n', "\\n");
    let answers: HashMap<String, String> = good
        .iter()
        .map(|(name, (cert, key))| {
            let cert = std::fs::read_to_string(cert).unwrap();
            let key = std::fs::read_to_string(key).unwrap();
            (
                (*name).to_owned(),
                format!(
                    "{{\"cert\":\"{}\",\"key\":\"{}\",\"npn\":[\"http/1.1\"]}}",
                    json_escape(&cert),
                    json_escape(&key)
                ),
            )
        })
        .collect();
    let answers = std::sync::Arc::new(answers);
    let sink = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let answers = answers.clone();
            let sink = sink.clone();
            std::thread::spawn(move || {
                let Some((head, _)) = read_http_request(&mut stream) else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let name = path.rsplit('/').next().unwrap_or("").to_owned();
                *sink.lock().unwrap().entry(name.clone()).or_insert(0) += 1;
                let respond = |status: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let reply = match name.as_str() {
                    "slow.test" => {
                        std::thread::sleep(Duration::from_secs(5));
                        respond("404 Not Found", b"")
                    }
                    "garbage.test" => respond("200 OK", b"<html>surprise</html>"),
                    "empty.test" => respond("200 OK", b"{}"),
                    "error.test" => respond("500 Internal Server Error", b"oops"),
                    "reset.test" => return,
                    "huge.test" => respond("200 OK", &vec![b' '; 2 * 1024 * 1024]),
                    other => match answers.get(other) {
                        Some(json) => respond("200 OK", json.as_bytes()),
                        None => respond("404 Not Found", b""),
                    },
                };
                let _ = stream.write_all(&reply);
            });
        }
    });
    (port, counts)
}

#[test]
fn dynamic_sni_from_an_http_service_with_cache_and_every_failure() {
    let state = TempDir::new("dyn-sni");
    let (default_cert, default_key) = state.self_signed("default.test");
    let dyn_pair = state.self_signed("dyn.test");
    let many_pair = state.self_signed("many.test");
    let (service, counts) = sni_service(&[("dyn.test", dyn_pair), ("many.test", many_pair)]);
    let (backend, _seen) = echo_backend();
    let config = |strict: bool| {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nsni_strict = {strict}\n\
             sni_url = \"http://127.0.0.1:{service}/bud/sni/%s\"\nsni_timeout = \"2s\"\n\
             [[backend]]\naddress = \"{backend}\"\n",
            path(&default_cert),
            path(&default_key),
        )
    };
    let (server, addr) = Fastedge::serve_config(&state, &config(false));
    let request = "GET / HTTP/1.1\r\nHost: d\r\n\r\n";
    let cn_for = |name: &str| {
        let out = s_client(addr, &["-servername", name], request);
        assert!(handshake_ok(&out), "{name}: {out}");
        presented_cn(&out).unwrap_or_default()
    };
    assert_eq!(cn_for("dyn.test"), "dyn.test");
    assert_eq!(cn_for("DYN.test"), "dyn.test");
    // Every way the service can fail: the default context serves, and the log says why.
    for (name, why) in [
        ("missing.test", None),
        ("slow.test", Some("no complete answer within 2000 ms")),
        ("garbage.test", Some("is not JSON")),
        // The reason is logged escaped (quoted, as every text a peer had a hand in).
        ("empty.test", Some("has no \\\"cert\\\"")),
        ("error.test", Some("answered HTTP 500")),
        ("reset.test", Some("not an HTTP response")),
        ("huge.test", Some("larger than")),
    ] {
        assert_eq!(cn_for(name), "default.test", "{name}");
        if let Some(why) = why {
            let line = server.wait_for_line("dynamic SNI lookup failed", Duration::from_secs(5));
            assert!(line.contains(name) && line.contains(why), "{name}: {line}");
        }
    }
    // 100 handshakes at once for a new name: one request per core at most, all served.
    let threads: Vec<_> = (0..100)
        .map(|_| {
            std::thread::spawn(move || {
                let tls = fastedge_tests::peers::tls_connect(addr, "many.test", b"");
                let cert = tls.ssl().peer_certificate().unwrap();
                let cn = cert
                    .subject_name()
                    .entries_by_nid(fastedge_tls::boring::nid::Nid::COMMONNAME)
                    .next()
                    .unwrap()
                    .data()
                    .as_utf8()
                    .unwrap()
                    .to_string();
                cn
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "many.test");
    }
    let cores = fastedge_runtime::CpuList::available().unwrap().len();
    let counts_now = counts.lock().unwrap().clone();
    assert!(
        counts_now["many.test"] <= cores,
        "one fetch per core: {counts_now:?}"
    );
    assert!(counts_now["dyn.test"] <= cores, "cached: {counts_now:?}");
    // 404s are cached too.
    for _ in 0..4 {
        assert_eq!(cn_for("missing.test"), "default.test");
    }
    assert!(counts.lock().unwrap()["missing.test"] <= cores);

    // The service is down (nothing listens): the default context, and the reason.
    let state_down = TempDir::new("dyn-sni-down");
    let dead = fastedge_tests::peers::dead_port();
    let (down, down_addr) = Fastedge::serve_config(
        &state_down,
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nsni_url = \"http://{dead}/bud/sni/%s\"\n\
             [[backend]]\naddress = \"{backend}\"\n",
            path(&default_cert),
            path(&default_key),
        ),
    );
    let out = s_client(down_addr, &["-servername", "dyn.test"], request);
    assert_eq!(presented_cn(&out).as_deref(), Some("default.test"), "{out}");
    let line = down.wait_for_line("dynamic SNI lookup failed", Duration::from_secs(5));
    assert!(line.contains("Connection refused"), "{line}");

    // Strict: a name the service does not know is refused; a known one is served.
    let state2 = TempDir::new("dyn-sni-strict");
    let (_strict, strict_addr) = Fastedge::serve_config(&state2, &config(true));
    let out = s_client(strict_addr, &["-servername", "missing.test"], "");
    assert!(out.contains("unrecognized name"), "{out}");
    let out = s_client(strict_addr, &["-servername", "dyn.test"], request);
    assert_eq!(presented_cn(&out).as_deref(), Some("dyn.test"), "{out}");
}

#[test]
fn early_data_is_forwarded_at_once_and_marked_for_the_backend() {
    let state = TempDir::new("early-data");
    let (backend, seen) = echo_backend();
    let config = |extra: &str| {
        format!("[tls]\n{extra}\n[[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n")
    };
    let (server, addr) = Fastedge::serve_config(&state, &config("early_data = true"));
    let session = state.path().join("session.pem");
    let early = state.path().join("early.txt");
    std::fs::write(&early, "GET /early HTTP/1.1\r\nHost: e\r\n\r\n").unwrap();
    // A full handshake that keeps a ticket, then a resumption sending a request as early data.
    let resume_with_early_data = |addr: SocketAddr, done: &str| {
        let request = "GET /first HTTP/1.1\r\nHost: e\r\n\r\n";
        let first = s_client(addr, &["-tls1_3", "-sess_out", path(&session)], request);
        assert!(first.contains("HTTP/1.1 200"), "{first}");
        let args = [
            "-tls1_3",
            "-sess_in",
            path(&session),
            "-early_data",
            path(&early),
        ];
        s_client_until(addr, &args, "", done)
    };
    let resumed = resume_with_early_data(addr, "HTTP/1.1 200");
    assert!(resumed.contains("Early data was accepted"), "{resumed}");
    assert!(resumed.contains("GET /early HTTP/1.1"), "{resumed}");
    let all = String::from_utf8_lossy(&seen.lock().unwrap().concat()).into_owned();
    assert!(
        all.contains("GET /early HTTP/1.1\r\nHost: e\r\nX-Forwarded-For: 127.0.0.1"),
        "{all}"
    );
    assert!(all.contains("Early-Data: 1\r\n"), "{all}");
    assert_eq!(
        all.matches("Early-Data").count(),
        1,
        "the first request was not early: {all}"
    );
    server.wait_for_line("TLSv1.3 0-RTT", Duration::from_secs(5));

    // A cap of 10 bytes: the request still arrives whole, after the handshake, unmarked.
    seen.lock().unwrap().clear();
    let state2 = TempDir::new("early-data-cap");
    let (_capped, capped_addr) =
        Fastedge::serve_config(&state2, &config("early_data = true\nearly_data_max = 10"));
    let resumed = resume_with_early_data(capped_addr, "HTTP/1.1 200");
    assert!(resumed.contains("Early data was accepted"), "{resumed}");
    let all = String::from_utf8_lossy(&seen.lock().unwrap().concat()).into_owned();
    assert!(all.contains("GET /early HTTP/1.1"), "{all}");
    assert!(!all.contains("Early-Data"), "{all}");

    // Off (the default): not accepted.
    seen.lock().unwrap().clear();
    let state3 = TempDir::new("early-data-off");
    let (_off, off_addr) = Fastedge::serve_config(&state3, &config(""));
    let resumed = resume_with_early_data(off_addr, "Early data was");
    assert!(!resumed.contains("Early data was accepted"), "{resumed}");
    let all = String::from_utf8_lossy(&seen.lock().unwrap().concat()).into_owned();
    assert!(!all.contains("Early-Data"), "{all}");
}

/// A backend whose answer to each connection's first request ends with its close (no
/// Content-Length): the client can only tell the whole answer from a truncated one by TLS
/// close_notify.
fn close_delimited_backend() -> SocketAddr {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it");
        }
    });
    addr
}

/// A BoringSSL client of `addr` that offers 0-RTT: it keeps the session of a first
/// connection (which sends `request` and reads the answer through), then resumes it with
/// `request` as early data and waits `pause` before it finishes its handshake. Returns what
/// it read on the second connection and how that ended.
fn early_data_exchange(addr: SocketAddr, request: &[u8], pause: Duration) -> (Vec<u8>, String) {
    use fastedge_tls::boring::ssl::{
        ErrorCode, Ssl, SslContextBuilder, SslMethod, SslSession, SslSessionCacheMode, SslStream,
        SslVerifyMode, SslVersion,
    };
    use foreign_types::ForeignTypeRef;
    use std::{
        io::Read,
        sync::{Arc, Mutex},
    };
    let mut builder = SslContextBuilder::new(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_3))
        .unwrap();
    builder.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let kept: Arc<Mutex<Option<SslSession>>> = Arc::default();
    let slot = kept.clone();
    builder.set_new_session_callback(move |_, session| *slot.lock().unwrap() = Some(session));
    // SAFETY: the builder owns a live SSL_CTX; the call only sets a flag on it.
    unsafe { boring_sys::SSL_CTX_set_early_data_enabled(builder.as_ptr(), 1) };
    let context = builder.build();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut first = SslStream::new(Ssl::new(&context).unwrap(), tcp).unwrap();
    first.connect().unwrap();
    first.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = first.read_to_end(&mut answer);
    let session = kept.lock().unwrap().take().expect("a session ticket");

    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ssl = Ssl::new(&context).unwrap();
    // SAFETY: the session comes from a connection of this same context.
    unsafe { ssl.set_session(&session) }.unwrap();
    let mut second = SslStream::new(ssl, tcp).unwrap();
    // With a session that allows it, BoringSSL's handshake returns once the ClientHello is
    // out: what is written now goes as early data.
    second.connect().unwrap();
    second.write_all(request).unwrap();
    std::thread::sleep(pause);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        match second.ssl_read(&mut chunk) {
            Ok(0) => break "end".to_owned(),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.code() == ErrorCode::ZERO_RETURN => break "close_notify".to_owned(),
            Err(e) if e.code() == ErrorCode::SYSCALL && e.io_error().is_none() => {
                break "end without close_notify".to_owned()
            }
            Err(e) => break format!("error: {e}"),
        }
    };
    // SAFETY: reads a flag of the live SSL the stream owns.
    let accepted = unsafe { boring_sys::SSL_early_data_accepted(second.ssl().as_ptr()) } == 1;
    let early = if accepted {
        "early data accepted"
    } else {
        "no early data"
    };
    (got, format!("{end} ({early})"))
}

/// A backend that closes while the client's 0-RTT handshake is unfinished: the answer still
/// ends with close_notify (BoringSSL sends none before the handshake completes, so the close
/// waits for the client's Finished), never a bare FIN the client must take for a truncation.
#[test]
fn an_answer_sent_during_early_data_still_ends_with_close_notify() {
    let state = TempDir::new("early-data-close");
    let backend = close_delimited_backend();
    let (_server, addr) = Fastedge::serve_config(
        &state,
        &format!("[tls]\nearly_data = true\n[[backend]]\naddress = \"{backend}\"\n"),
    );
    let request = b"GET / HTTP/1.1\r\nHost: e\r\n\r\n";
    let (got, end) = early_data_exchange(addr, request, Duration::from_millis(500));
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("all of it"),
        "{got}"
    );
    assert_eq!(end, "close_notify (early data accepted)");
}

/// The client-certificate headers of a 0-RTT request follow the SNI context's `client_verify`
/// (the handshake completes early there, and the connection's configuration, where BoringSSL
/// keeps the verify mode, is freed after the handshake).
#[test]
fn early_data_keeps_the_sni_contexts_client_certificate_headers() {
    let state = TempDir::new("early-data-sni-verify");
    let pki = client_pki(state.path());
    let (backend, seen) = echo_backend();
    let (o_cert, o_key) = state.self_signed("optional.test");
    let config = format!(
        "[tls]\nearly_data = true\nclient_ca = \"{ca}\"\n\
         [[backend]]\naddress = \"{backend}\"\nx_forwarded = true\n\
         [[context]]\nservername = [\"optional.test\"]\ncert = \"{o}\"\nkey = \"{ok}\"\n\
         client_verify = \"optional\"\n",
        ca = path(&pki.ca),
        o = path(&o_cert),
        ok = path(&o_key),
    );
    let (_server, addr) = Fastedge::serve_config(&state, &config);
    let session = state.path().join("session.pem");
    let early = state.path().join("early.txt");
    std::fs::write(&early, "GET /early HTTP/1.1\r\nHost: o\r\n\r\n").unwrap();
    let first = s_client(
        addr,
        &[
            "-tls1_3",
            "-servername",
            "optional.test",
            "-sess_out",
            path(&session),
        ],
        "GET /first HTTP/1.1\r\nHost: o\r\n\r\n",
    );
    assert!(first.contains("HTTP/1.1 200"), "{first}");
    let args = [
        "-tls1_3",
        "-servername",
        "optional.test",
        "-sess_in",
        path(&session),
        "-early_data",
        path(&early),
    ];
    let resumed = s_client_until(addr, &args, "", "HTTP/1.1 200");
    assert!(resumed.contains("Early data was accepted"), "{resumed}");
    let all = String::from_utf8_lossy(&seen.lock().unwrap().concat()).into_owned();
    let early_request = &all[all.find("GET /early").expect("the early request arrived")..];
    let early_head = &early_request[..early_request.find("\r\n\r\n").unwrap()];
    assert!(early_head.contains("Early-Data: 1"), "{early_head}");
    assert!(
        early_head.contains("X-Client-Verify: NONE"),
        "the optional context asks for a certificate; none came: {early_head}"
    );
}

#[test]
fn a_bud_json_configuration_runs_unchanged() {
    let state = TempDir::new("bud-json");
    let (cert, key) = state.self_signed("bud.test");
    let (ctx_cert, ctx_key) = state.self_signed("ctx.bud.test");
    let (backend, seen) = echo_backend();
    let (ctx_backend, ctx_seen) = echo_backend();
    // Inline PEMs for the frontend (as bud allowed), files for the context.
    let json_string = |text: &str| text.replace('\n', "\\n");
    let config = format!(
        r#"{{
  "workers": 1,
  "log": {{ "level": "info", "stdio": true }},
  "availability": {{ "death_timeout": 1000, "revive_interval": 2500, "retry_interval": 250, "max_retries": 5 }},
  "frontend": {{
    "port": 1443, "host": "0.0.0.0", "security": "ssl23", "keepalive": 3600,
    "cert": "{}", "key": "{}", "npn": ["http/1.1"], "server_preference": true,
    "ticket_timeout": 3600, "ticket_rotate": 3600, "reneg_window": 600
  }},
  "balance": "roundrobin",
  "backend": [{{ "host": "127.0.0.1", "port": {}, "proxyline": "json", "x-forward": true }}],
  "sni": {{ "enabled": false }},
  "stapling": {{ "enabled": false }},
  "contexts": [{{ "servername": "ctx.bud.test", "cert": "{}", "key": "{}",
                 "backend": [{{ "host": "127.0.0.1", "port": {}, "proxyline": "haproxy" }}] }}]
}}"#,
        json_string(&std::fs::read_to_string(&cert).unwrap()),
        json_string(&std::fs::read_to_string(&key).unwrap()),
        backend.port(),
        path(&ctx_cert),
        path(&ctx_key),
        ctx_backend.port(),
    );
    let (server, addr) = Fastedge::serve_config(&state, &config);
    let request = "GET /bud HTTP/1.1\r\nHost: b\r\n\r\n";
    let out = s_client(addr, &["-servername", "bud.test"], request);
    assert_eq!(presented_cn(&out).as_deref(), Some("bud.test"), "{out}");
    let raw = String::from_utf8_lossy(&seen.lock().unwrap().concat()).into_owned();
    assert!(raw.starts_with("BUD {\"family\":\"TCP4\""), "{raw}");
    assert!(raw.contains("X-Forwarded-For: 127.0.0.1"), "{raw}");
    let out = s_client(addr, &["-servername", "ctx.bud.test"], request);
    assert_eq!(presented_cn(&out).as_deref(), Some("ctx.bud.test"), "{out}");
    let raw = String::from_utf8_lossy(&ctx_seen.lock().unwrap().concat()).into_owned();
    assert!(raw.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 "), "{raw}");
    let log = server.log_text();
    assert!(log.contains("read as a bud JSON configuration"), "{log}");
    assert!(log.contains("bud key not carried over: workers"), "{log}");
    assert!(log.contains("frontend.reneg_window"), "{log}");

    // check-config shows how it was understood.
    let file = state.path().join("fastedge.toml");
    let out = Command::new(fastedge_tests::process::fastedge_bin())
        .args(["check-config", path(&file)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("read as a bud JSON configuration"), "{text}");
    assert!(text.contains("proxy_protocol = \"bud-json\""), "{text}");
    assert!(text.contains("not carried over: workers"), "{text}");
}

#[test]
fn bud_ticket_ipc_on_stdin_shares_a_key_between_processes() {
    let (backend, _seen) = echo_backend();
    let config = format!("[tls]\nticket_key_stdin = true\n[[backend]]\naddress = \"{backend}\"\n");
    let state_a = TempDir::new("ticket-ipc-a");
    let state_b = TempDir::new("ticket-ipc-b");
    let (mut a, addr_a) = Fastedge::serve_config(&state_a, &config);
    let (mut b, addr_b) = Fastedge::serve_config(&state_b, &config);
    let session = state_a.path().join("session.pem");
    let request = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let issue_on_a = || {
        let out = s_client(addr_a, &["-tls1_2", "-sess_out", path(&session)], request);
        assert!(out.contains("HTTP/1.1 200"), "{out}");
    };
    let resumes_on_b = || {
        resumed(&s_client(
            addr_b,
            &["-tls1_2", "-sess_in", path(&session)],
            request,
        ))
    };
    issue_on_a();
    assert!(!resumes_on_b(), "random keys differ");
    // bud's master message, the same key to both.
    let mut message = Vec::new();
    fastedge_wire::bud_ipc::encode(
        &fastedge_wire::bud_ipc::TicketMessage {
            context: 0,
            key: [0x5a; 48],
        },
        &mut message,
    );
    a.write_stdin(&message);
    b.write_stdin(&message);
    a.wait_for_logged("session ticket key installed", Duration::from_secs(5));
    b.wait_for_logged("session ticket key installed", Duration::from_secs(5));
    issue_on_a();
    assert!(resumes_on_b(), "same installed key");
    // A malformed message stops the reading, with the reason; the server goes on.
    a.write_stdin(&[0x07]);
    a.wait_for_logged("stopped reading", Duration::from_secs(5));
    issue_on_a();
}

/// Under a service manager (systemd's Type=notify, played here by a datagram socket), the key
/// server says READY with a status line once it listens.
#[test]
fn keyserver_tells_a_service_manager_it_is_ready() {
    let state = TempDir::new("keyserver-notify");
    let (_cert, key) = state.self_signed("notify.test");
    let notify = state.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let socket = state.path().join("signer.sock");
    let _signer = Fastedge::start(
        &["keyserver", "--listen", path(&socket), "--key", path(&key)],
        &[("NOTIFY_SOCKET", path(&notify))],
    );
    let mut buf = [0u8; 1024];
    let n = manager.recv(&mut buf).expect("a notification within 10 s");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.lines().any(|l| l == "READY=1"), "{text}");
    assert!(text.contains("STATUS=signing on"), "{text}");
    assert!(text.contains("(1 key)"), "{text}");
    assert!(socket.exists(), "ready only once listening");
}

/// Issue 14, defect 8: the key server's socket is never open to others, not even between its
/// bind and its chmod. Under umask 000, strace holds the chmod back for two seconds; the
/// socket as bound must already be owner-only.
#[test]
fn keyserver_socket_is_private_from_its_bind_on() {
    require_tool("strace", "strace");
    let state = TempDir::new("keyserver-umask");
    let (_cert, key) = state.self_signed("umask.test");
    let socket = state.path().join("signer.sock");
    let trace = state.path().join("strace.log");
    let script = format!(
        "umask 000; exec strace -f -o {} -e trace=chmod,fchmodat \
         -e inject=chmod,fchmodat:delay_enter=2000000 {} keyserver --listen {} --key {}",
        path(&trace),
        fastedge_tests::process::fastedge_bin().display(),
        path(&socket),
        path(&key),
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mode = loop {
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            break std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key server never bound {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // The key server (strace's tracee, named on each line of the log) goes first: killing
    // strace alone would leave it running, detached.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&trace).unwrap_or_default();
        if log.contains("chmod") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let tracee = log
        .lines()
        .find(|l| l.contains("chmod"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|pid| pid.parse::<i32>().ok());
    if let Some(pid) = tracee {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(tracee.is_some(), "the chmod was traced: {log}");
    assert_eq!(
        mode & 0o077,
        0,
        "socket mode {mode:o} before its chmod: open to others"
    );
}
