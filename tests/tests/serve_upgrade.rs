//! Binary upgrade under load: a second `fastedge serve --take-over` takes the listening sockets
//! of a running one over its upgrade socket while clients keep connecting, and no connection
//! fails, is refused or reset; the old one drains and exits 0, the new one keeps serving.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use fastedge_tests::{
    peers::{echo_backend, free_port, try_read_response},
    process::Fastedge,
    TempDir,
};
use fastedge_tls::boring::ssl::{SslConnector, SslMethod, SslVerifyMode};

/// What the client load saw.
#[derive(Debug, Default)]
struct Tally {
    connections: AtomicU64,
    requests: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn failed(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

type Tls = fastedge_tls::boring::ssl::SslStream<std::net::TcpStream>;

/// One TLS connection to `addr` (no certificate check), or why it failed.
fn connect(addr: SocketAddr) -> Result<Tls, String> {
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    handshake(tcp)
}

/// The TLS handshake on a connected `tcp`.
fn handshake(tcp: std::net::TcpStream) -> Result<Tls, String> {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut config = connector.configure().unwrap();
    config.set_verify_hostname(false);
    config
        .connect("localhost", tcp)
        .map_err(|e| format!("handshake: {e}"))
}

/// One request on `stream`, checked to come back whole.
fn request(stream: &mut Tls, path: &str) -> Result<(), String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let (head, body) = try_read_response(stream).map_err(|e| format!("read: {e}"))?;
    if !head.starts_with("HTTP/1.1 200") || !String::from_utf8_lossy(&body).contains(path) {
        return Err(format!("unexpected response {head:?}"));
    }
    Ok(())
}

/// The inodes of the sockets listening on 127.0.0.1:`port` (`/proc/net/tcp`, state 0A).
fn listening_inodes(port: u16) -> std::collections::BTreeSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
                .then(|| fields.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[test]
fn binary_upgrade_under_load_drops_no_connection() {
    let state = TempDir::new("upgrade");
    let (backend, _recorded) = echo_backend();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: SocketAddr = listen.parse().unwrap();
    let socket = state.path().join("serve.upgrade");
    let config = state.path().join("fastedge.toml");
    // Long enough for the keep-alive clients to finish on the old process.
    // metrics_listen is not a listener handed over: the new process binds it once the old one
    // exits.
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        &config,
        format!("metrics_listen = \"{metrics}\"\n[frontend]\ndrain_timeout = \"20s\"\n"),
    )
    .unwrap();
    let cpus = fastedge_runtime::CpuList::available().unwrap();
    let all = cpus.to_string();
    let first = cpus.cpus()[0].to_string();
    let common = |cores: &str| {
        vec![
            "serve".to_owned(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--listen".into(),
            listen.clone(),
            "--backend".into(),
            backend.to_string(),
            "--cores".into(),
            cores.into(),
            "--state-dir".into(),
            state.path().to_str().unwrap().into(),
            "--upgrade-socket".into(),
            socket.to_str().unwrap().into(),
        ]
    };
    let env = [("FASTEDGE_LOG", "info")];
    // The old process on every CPU; the new one on one CPU only: it must still take (and
    // serve) every socket of the old one.
    let old_args = common(&all);
    let old_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let mut old = Fastedge::start(&old_args, &env);
    old.wait_listening();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let sockets_before = listening_inodes(port);
    assert!(!sockets_before.is_empty());
    let mode = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    // New connections, one request each, back to back.
    for t in 0..4 {
        let (tally, stop) = (tally.clone(), stop.clone());
        load.push(thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                tally.connections.fetch_add(1, Ordering::Relaxed);
                let path = format!("/new-{t}-{n}");
                match connect(addr).and_then(|mut s| request(&mut s, &path)) {
                    Ok(()) => drop(tally.requests.fetch_add(1, Ordering::Relaxed)),
                    Err(e) => tally.failed(format!("{path}: {e}")),
                }
            }
        }));
    }
    // Keep-alive connections opened on the old process, requesting without pause until the
    // end; they close themselves when the load stops.
    for t in 0..4 {
        let (tally, stop) = (tally.clone(), stop.clone());
        load.push(thread::spawn(move || {
            tally.connections.fetch_add(1, Ordering::Relaxed);
            let mut stream = match connect(addr) {
                Ok(s) => s,
                Err(e) => return tally.failed(format!("keep-alive {t}: {e}")),
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let path = format!("/keep-{t}-{n}");
                match request(&mut stream, &path) {
                    Ok(()) => drop(tally.requests.fetch_add(1, Ordering::Relaxed)),
                    Err(e) => return tally.failed(format!("{path}: {e}")),
                }
                // Leaves CPU to the connecting clients (the machine may have two cores).
                thread::sleep(Duration::from_millis(5));
            }
        }));
    }

    thread::sleep(Duration::from_millis(1000));
    let before = tally.connections.load(Ordering::Relaxed);
    let new_args = {
        let mut a = common(&first);
        a.extend([
            "--take-over".to_owned(),
            socket.to_str().unwrap().to_owned(),
        ]);
        a
    };
    let new_args: Vec<&str> = new_args.iter().map(String::as_str).collect();
    // A burst of connections, one thread each, made while the upgrade runs: they wait in the
    // accept queues of the sockets changing hands, or were just accepted by the old process
    // (a socket closed with connections in its queue would reset them).
    let burst = {
        let (tally, stop) = (tally.clone(), stop.clone());
        thread::spawn(move || {
            let mut clients = Vec::new();
            let until = Instant::now() + Duration::from_millis(400);
            while Instant::now() < until && clients.len() < 150 && !stop.load(Ordering::Relaxed) {
                let tally = tally.clone();
                let n = clients.len();
                clients.push(thread::spawn(move || {
                    tally.connections.fetch_add(1, Ordering::Relaxed);
                    let path = format!("/burst-{n}");
                    match connect(addr).and_then(|mut s| request(&mut s, &path)) {
                        Ok(()) => drop(tally.requests.fetch_add(1, Ordering::Relaxed)),
                        Err(e) => tally.failed(format!("{path}: {e}")),
                    }
                }));
                thread::sleep(Duration::from_millis(2));
            }
            let made = clients.len();
            for client in clients {
                client.join().unwrap();
            }
            made
        })
    };
    let upgrade_started = Instant::now();
    let new = Fastedge::start(&new_args, &env);
    new.wait_for_logged("binary upgrade done", Duration::from_secs(20));
    let upgrade_took = upgrade_started.elapsed();
    old.wait_for_logged("handed over to a new process", Duration::from_secs(5));
    let burst_made = burst.join().unwrap();
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let connections = tally.connections.load(Ordering::Relaxed);
    let requests = tally.requests.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "connections: {connections} ({} during and after the upgrade, which took {} ms, \
         {burst_made} of them made in a burst across it), requests: {requests}, failures: {}",
        connections - before,
        upgrade_took.as_millis(),
        failures.len()
    );
    if !failures.is_empty() {
        eprintln!("OLD LOG\n{}\nNEW LOG\n{}", old.log_text(), new.log_text());
    }
    assert!(failures.is_empty(), "failed: {failures:#?}");
    assert!(connections - before > 50, "load ran during the upgrade");

    // The old one stops once its keep-alive clients are gone, and exits 0.
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "old process: {status}");
    // The very sockets the old process listened on, passed over, not new ones bound beside
    // them (the new one runs on no more cores than the old, so it bound none).
    assert_eq!(listening_inodes(port), sockets_before);
    // The new one served connections of its own, and keeps serving.
    let mut new = new;
    assert!(new.is_running());
    let mut stream = connect(addr).unwrap();
    request(&mut stream, "/after").unwrap();
    drop(stream);
    let served_by_new = new.log_text().matches("connection closed").count();
    assert!(served_by_new > 0, "{}", new.log_text());
    // Its metrics endpoint, once the old one let go of the address, counts what it accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(mut tcp) = std::net::TcpStream::connect(metrics) {
            tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut tcp, &mut text).unwrap();
            break text;
        }
        assert!(Instant::now() < deadline, "no metrics from the new process");
        thread::sleep(Duration::from_millis(100));
    };
    let accepted: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fastedge_connections_accepted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(accepted >= 1.0, "{text}");
    // The new one listens on the upgrade socket for the next upgrade.
    assert!(socket.exists());
    new.terminate_cleanly(Duration::from_secs(10));
}

/// Kills a process that is not our child (the successor a SIGUSR2 started) when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn sigusr2_starts_the_new_binary_which_takes_over() {
    let state = TempDir::new("upgrade-usr2");
    let (backend, _recorded) = echo_backend();
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = listen.parse().unwrap();
    let socket = state.path().join("serve.upgrade");
    let mut old = Fastedge::start(
        &[
            "serve",
            "--listen",
            &listen,
            "--backend",
            &backend.to_string(),
            "--state-dir",
            state.path().to_str().unwrap(),
            "--upgrade-socket",
            socket.to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    old.wait_listening();
    // A keep-alive connection on the old process, open across the upgrade.
    let mut kept = connect(addr).unwrap();
    request(&mut kept, "/before").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    old.signal(nix::sys::signal::Signal::SIGUSR2);
    let started = old.wait_for_logged("started the new binary", Duration::from_secs(10));
    let pid: i32 = started
        .split("pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{started}"));
    let _successor = KillOnDrop(pid);
    // The successor logs to the same standard error.
    old.wait_for_logged("binary upgrade done", Duration::from_secs(20));
    old.wait_for_logged("handed over to a new process", Duration::from_secs(5));
    // The old process still serves its open connection, then exits 0 once it closes.
    request(&mut kept, "/during-drain").unwrap();
    drop(kept);
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "old process: {status}");
    // The successor serves.
    for n in 0..5 {
        let mut stream = connect(addr).unwrap();
        request(&mut stream, &format!("/after-{n}")).unwrap();
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn connections_waiting_at_the_cap_are_served_across_the_upgrade() {
    let state = TempDir::new("upgrade-cap");
    let (backend, _recorded) = echo_backend();
    let listen = format!("127.0.0.1:{}", free_port());
    let addr: SocketAddr = listen.parse().unwrap();
    let socket = state.path().join("serve.upgrade");
    let config = state.path().join("fastedge.toml");
    // One core of two connections: the third client waits, accepted by the kernel (and by the
    // io_uring engine's accept, ahead of the executor) until a slot frees.
    std::fs::write(
        &config,
        "[frontend]\nmax_connections = 2\ndrain_timeout = \"20s\"\n",
    )
    .unwrap();
    let first = fastedge_runtime::CpuList::available().unwrap().cpus()[0].to_string();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &listen,
            "--backend",
            &backend.to_string(),
            "--cores",
            &first,
            "--state-dir",
            state.path().to_str().unwrap(),
            "--upgrade-socket",
            socket.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let env = [("FASTEDGE_LOG", "info")];
    let old_args = args(&[]);
    let mut old = Fastedge::start(
        &old_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    old.wait_listening();
    let mut kept: Vec<Tls> = (0..2).map(|_| connect(addr).unwrap()).collect();
    for (n, stream) in kept.iter_mut().enumerate() {
        request(stream, &format!("/kept-{n}")).unwrap();
    }
    // Clients beyond the cap: connected, their ClientHello sent, waiting.
    let waiting: Vec<_> = (0..100)
        .map(|n| {
            thread::spawn(move || {
                connect(addr).and_then(|mut s| request(&mut s, &format!("/waiting-{n}")))
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let new_args = args(&["--take-over", socket.to_str().unwrap()]);
    let mut new = Fastedge::start(
        &new_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    new.wait_for_logged("binary upgrade done", Duration::from_secs(20));
    let results: Vec<_> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{failed:#?}\nOLD\n{}\nNEW\n{}",
        old.log_text(),
        new.log_text()
    );
    for (n, stream) in kept.iter_mut().enumerate() {
        request(stream, &format!("/kept-again-{n}")).unwrap();
    }
    drop(kept);
    let status = old.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "old process: {status}");
    let mut stream = connect(addr).unwrap();
    request(&mut stream, "/after").unwrap();
    drop(stream);
    new.terminate_cleanly(Duration::from_secs(10));
}
