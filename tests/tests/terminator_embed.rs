//! The terminator embedded in a program, as a library user runs it: built from a TOML string,
//! started in this process on one CPU, driven through its handle (reload, metrics, stop) with
//! real TLS clients and real backends.

#![allow(clippy::unwrap_used)] // a failed step is a failed test: panics with the error

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use fastedge_runtime::CpuList;
use fastedge_tests::{
    peers::{echo_backend, read_response, tls_connect},
    TempDir,
};
use fastedge_tls::{Terminator, TerminatorError};

/// The first CPU this process may use, as a one-CPU list.
/// Held by each test for its whole run: the tests bind listening ports (`127.0.0.1:0`), and
/// one that checks nothing listens on its address after a stop would see another test's
/// listener given the port just freed.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn one_cpu() -> CpuList {
    let cpu = CpuList::available().unwrap().cpus()[0];
    cpu.to_string().parse().unwrap()
}

/// One GET over a new TLS connection to `addr`; the response body (the echo backend answers
/// with the request head as it reached it).
fn get(addr: SocketAddr, path: &str) -> String {
    let mut tls = tls_connect(addr, "localhost", b"\x08http/1.1");
    request(&mut tls, path)
}

fn request<S: std::io::Read + Write>(stream: &mut S, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let (head, body) = read_response(stream);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    String::from_utf8(body).unwrap()
}

fn config(state: &TempDir, backend: SocketAddr, x_forwarded: bool) -> String {
    let (cert, key) = state.self_signed("localhost");
    format!(
        "engine = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
         [frontend]\nlisten = [\"127.0.0.1:0\"]\ndrain_timeout = \"300ms\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[backend]]\naddress = \"{backend}\"\nx_forwarded = {x_forwarded}\n",
        fastedge_tests::engine(),
        cert.display(),
        key.display(),
    )
}

#[test]
fn a_terminator_from_toml_serves_reloads_and_stops_through_its_handle() {
    let _serial = one_at_a_time();
    let state = TempDir::new("embed");
    let (first, first_seen) = echo_backend();
    let (second, second_seen) = echo_backend();
    let terminator = Terminator::from_toml(&config(&state, first, true))
        .unwrap()
        .on_cpus(one_cpu())
        .start()
        .unwrap();
    let addr = terminator.listen_addrs()[0];
    assert_ne!(addr.port(), 0, "the bound port is reported");
    assert_eq!(terminator.cpus(), &one_cpu());

    // A real TLS request through to the first backend, which gets forwarding headers.
    let mut open = tls_connect(addr, "localhost", b"\x08http/1.1");
    let seen = request(&mut open, "/one");
    assert!(seen.starts_with("GET /one HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
    assert_eq!(first_seen.lock().unwrap().len(), 1);
    let metrics = terminator.metrics();
    assert!(
        metrics.contains("fastedge_handshakes_completed_total 1\n"),
        "{metrics}"
    );
    assert_eq!(terminator.generation(), 0);

    // Reload: new connections go to the second backend, without forwarding headers; the
    // connection opened before keeps the configuration it started with.
    assert_eq!(
        terminator
            .reload_toml(&config(&state, second, false))
            .unwrap(),
        1
    );
    let seen = get(addr, "/two");
    assert!(seen.starts_with("GET /two HTTP/1.1\r\n"), "{seen}");
    assert!(!seen.contains("X-Forwarded-For"), "{seen}");
    assert_eq!(second_seen.lock().unwrap().len(), 1);
    let seen = request(&mut open, "/still-one");
    assert!(seen.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{seen}");
    assert_eq!(first_seen.lock().unwrap().len(), 1, "the same connection");
    drop(open);

    // A bad configuration is refused, named, and the running one stays.
    let error = terminator
        .reload_toml("[[backend]]\naddress = \"nonsense\"\n")
        .unwrap_err();
    assert!(error.is_config(), "{error}");
    assert!(error.to_string().contains("backend[0].address"), "{error}");
    assert_eq!(terminator.generation(), 1);
    get(addr, "/three");
    assert_eq!(second_seen.lock().unwrap().len(), 2);

    // The scrape endpoint serves the same counters.
    let scrape_addr = terminator.metrics_addr().unwrap();
    let mut scrape = TcpStream::connect(scrape_addr).unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut text).unwrap();
    assert!(
        text.contains("fastedge_handshakes_completed_total 3\n"),
        "{text}"
    );

    // Stop: drains (nothing open) and ends; nothing accepts on the address any more, and it
    // can be bound again.
    let started = Instant::now();
    terminator.stop().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after stop"
    );
    std::net::TcpListener::bind(addr).expect("the address is free after stop");
}

#[test]
fn without_backend_or_certificate_the_demo_backend_answers() {
    let _serial = one_at_a_time();
    let state = TempDir::new("embed-demo");
    let toml = format!(
        "engine = \"{}\"\n[frontend]\nlisten = [\"127.0.0.1:0\"]\n",
        fastedge_tests::engine()
    );
    let terminator = Terminator::from_toml(&toml)
        .unwrap()
        .on_cpus(one_cpu())
        .state_dir(state.path())
        .start()
        .unwrap();
    assert!(terminator.demo_backend().is_some());
    assert!(state.path().join("demo-cert.pem").exists());
    let seen = get(terminator.listen_addrs()[0], "/hello");
    assert!(seen.starts_with("fastedge demo backend"), "{seen}");
    assert!(seen.contains("GET /hello HTTP/1.1\r\n"), "{seen}");
    // A reload that names no backend keeps the demo backend running.
    assert_eq!(terminator.reload_toml(&toml).unwrap(), 1);
    // Dropping the handle stops it.
    drop(terminator);
}

#[test]
fn start_failures_are_named_and_classed() {
    let _serial = one_at_a_time();
    let state = TempDir::new("embed-fail");
    let (backend, _) = echo_backend();
    // Without a state directory, the demo certificate has nowhere to go.
    let toml =
        format!("[frontend]\nlisten = [\"127.0.0.1:0\"]\n[[backend]]\naddress = \"{backend}\"\n");
    let error = Terminator::from_toml(&toml).unwrap().start().unwrap_err();
    assert!(matches!(error, TerminatorError::NoStateDir), "{error}");
    assert!(error.is_config());
    // A taken port.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let toml = config(&state, backend, false).replace("127.0.0.1:0\"]", &format!("{taken}\"]"));
    let error = Terminator::from_toml(&toml).unwrap().start().unwrap_err();
    assert!(matches!(error, TerminatorError::Listen(_)), "{error}");
    assert!(error.is_config() && error.to_string().contains(&taken.to_string()));
    // A CPU this process may not use.
    let beyond = CpuList::available().unwrap().cpus().last().unwrap() + 1;
    let error = Terminator::from_toml(&config(&state, backend, false))
        .unwrap()
        .on_cpus(beyond.to_string().parse().unwrap())
        .start()
        .unwrap_err();
    assert!(matches!(error, TerminatorError::Cores { .. }), "{error}");
    assert!(error.is_config());
}

#[test]
fn a_successor_that_stops_before_releasing_its_predecessor_leaves_it_serving() {
    // The sockets are shared until the old one is released: the new one's stop must not take
    // them out of listening (as a stop of a terminator of its own sockets does).
    let _serial = one_at_a_time();
    let state = TempDir::new("embed-abandon");
    let (backend, _seen) = echo_backend();
    let socket = state.path().join("serve.upgrade");
    let old = Terminator::from_toml(&config(&state, backend, false))
        .unwrap()
        .on_cpus(one_cpu())
        .upgrade_socket(&socket)
        .start()
        .unwrap();
    let addr = old.listen_addrs()[0];
    let taking = config(&state, backend, false).replace("127.0.0.1:0\"]", &format!("{addr}\"]"));
    let new = Terminator::from_toml(&taking)
        .unwrap()
        .on_cpus(one_cpu())
        .take_over(&socket)
        .start()
        .unwrap();
    assert!(get(addr, "/both").contains("GET /both"));
    new.stop().unwrap();
    assert!(!old.is_draining());
    for i in 0..5 {
        let path = format!("/old-{i}");
        assert!(get(addr, &path).contains(&format!("GET {path}")));
    }
    old.stop().unwrap();
}

#[test]
fn a_terminator_takes_the_listening_sockets_of_another_over() {
    let _serial = one_at_a_time();
    let state = TempDir::new("embed-upgrade");
    let (backend, _seen) = echo_backend();
    let socket = state.path().join("serve.upgrade");
    let (handed_over, told) = std::sync::mpsc::channel();
    let old = Terminator::from_toml(&config(&state, backend, false))
        .unwrap()
        .on_cpus(one_cpu())
        .upgrade_socket(&socket)
        .on_handed_over(move || handed_over.send(()).unwrap())
        .start()
        .unwrap();
    let addr = old.listen_addrs()[0];
    let mut kept = tls_connect(addr, "localhost", b"\x08http/1.1");
    assert!(request(&mut kept, "/kept-1").contains("GET /kept-1"));

    let taking = config(&state, backend, false).replace("127.0.0.1:0\"]", &format!("{addr}\"]"));
    let mut new = Terminator::from_toml(&taking)
        .unwrap()
        .on_cpus(one_cpu())
        .upgrade_socket(&socket)
        .take_over(&socket)
        .start()
        .unwrap();
    assert_eq!(new.predecessor_pid(), Some(std::process::id()));
    assert_eq!(
        new.listen_addrs(),
        &[addr],
        "the same sockets, no new address"
    );
    assert!(!old.is_draining(), "the old one serves until told");
    assert_eq!(new.release_predecessor().unwrap(), Some(std::process::id()));
    told.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(old.handed_over() && old.is_draining());
    // The old one finishes what it has open; new connections go to the new one.
    assert!(request(&mut kept, "/kept-2").contains("GET /kept-2"));
    drop(kept);
    old.join().unwrap();
    assert!(get(addr, "/after").contains("GET /after"));
    assert!(socket.exists(), "the new one listens for the next upgrade");
    new.stop().unwrap();
}
