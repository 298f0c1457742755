//! Many boxes as one: three `fastedge serve` boxes in three network namespaces on one bridge, a
//! real `redis-server` in a fourth, clients in a fifth that move to another box on every
//! connection, and a real Prometheus scraping the boxes.
//!
//! - TLS 1.3 tickets resume across boxes through ticket-key rotations (the boxes derive the
//!   same keys from a shared secret), with no lookup in the store;
//! - TLS 1.2 session IDs resume across boxes through the Redis session store;
//! - Redis killed: every handshake goes on as a full one, no client sees an error; Redis back:
//!   resumption comes back by itself;
//! - Prometheus sees every box up, and its sums of handshake and resumption counters are what
//!   the clients did; `promtool` accepts our exposition and the shipped rules.
//!
//! Resumption rates and the handshake times of Redis-backed against local resumption are
//! printed (`cargo test --test fleet -- --nocapture`).

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fastedge_tests::{
    netns::{enter, Lan},
    peers::{echo_backend_from, try_read_response},
    process::Fastedge,
    require_tool, sleep_past_boundary, TempDir,
};
use fastedge_tls::boring::ssl::{
    SslConnector, SslMethod, SslOptions, SslSession, SslSessionCacheMode, SslVerifyMode, SslVersion,
};

const TLS_PORT: u16 = 8443;
const METRICS_PORT: u16 = 9100;
const REDIS_PORT: u16 = 6379;
const ROTATE: Duration = Duration::from_secs(3);

/// A `redis-server` in a namespace, with nothing kept on disk.
struct Redis {
    ns: String,
    addr: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    fn start(ns: &str, addr: Ipv4Addr, dir: &Path) -> Self {
        let mut redis = Redis {
            ns: ns.to_owned(),
            addr,
            dir: dir.to_owned(),
            child: None,
        };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "redis-server", "--bind"])
            .arg(self.addr.to_string())
            .args(["--port", &REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from((self.addr, REDIS_PORT));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ping(&self.ns, addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Redis's PING, from inside `ns`.
fn ping(ns: &str, addr: SocketAddr) -> std::io::Result<()> {
    in_ns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"PING\r\n")?;
        let mut reply = [0u8; 7];
        s.read_exact(&mut reply)?;
        if &reply == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(std::io::Error::other("not PONG"))
        }
    })
}

/// A TLS client that keeps the newest session it was given.
struct Client {
    connector: SslConnector,
    latest: Arc<Mutex<Option<SslSession>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TLS 1.3, resuming with tickets.
    Tickets,
    /// TLS 1.2 without tickets, resuming by session ID.
    SessionIds,
}

impl Client {
    fn new(kind: Kind) -> Self {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        match kind {
            Kind::Tickets => b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap(),
            Kind::SessionIds => {
                b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
                b.set_options(SslOptions::NO_TICKET);
            }
        }
        let latest = Arc::new(Mutex::new(None));
        let slot = latest.clone();
        b.set_new_session_callback(move |_, session| *slot.lock().unwrap() = Some(session));
        Client {
            connector: b.build(),
            latest,
        }
    }

    /// One connection to `addr` offering the newest session, with one request through it.
    /// Returns whether it resumed and how long the handshake took.
    fn connect(&self, addr: SocketAddr) -> Result<(bool, Duration), String> {
        // Taken: a resumed TLS 1.2 connection gives no new session, so the next connection is
        // a full handshake on the next box, and the one after resumes on a box that never saw
        // the session: every TLS 1.2 resumption here crosses boxes through the store.
        let session = self.latest.lock().unwrap().take();
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut config = self.connector.configure().unwrap();
        config.set_verify_hostname(false);
        if let Some(session) = &session {
            // SAFETY: the session came from this connector's own context.
            unsafe { config.set_session(session).unwrap() };
        }
        let started = Instant::now();
        let mut tls = config
            .connect("fleet.test", tcp)
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        let took = started.elapsed();
        let resumed = tls.ssl().session_reused();
        tls.write_all(b"GET /fleet HTTP/1.1\r\nHost: fleet.test\r\n\r\n")
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let (head, body) = try_read_response(&mut tls).map_err(|e| format!("read {addr}: {e}"))?;
        if !head.starts_with("HTTP/1.1 200") || !String::from_utf8_lossy(&body).contains("/fleet") {
            return Err(format!("{addr}: unexpected response {head:?}"));
        }
        // A full TLS 1.2 handshake gave a session (the callback has it), a resumed one keeps
        // the one offered; TLS 1.3 tickets came with the response: the newest is kept.
        let _ = tls.shutdown();
        Ok((resumed, took))
    }
}

/// What a run of connections saw.
#[derive(Default)]
struct Tally {
    connections: u64,
    /// Connections that offered a session.
    offered: u64,
    resumed: u64,
    failures: Vec<String>,
    resumed_times: Vec<Duration>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("connections", &self.connections)
            .field("offered", &self.offered)
            .field("resumed", &self.resumed)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Tally {
    fn rate(&self) -> f64 {
        self.resumed as f64 / self.offered.max(1) as f64
    }
}

/// `clients` clients, each connecting to the next box on every connection, for `duration`
/// (or `count` connections each, whichever ends first).
fn run_clients(
    ns: &str,
    boxes: &[SocketAddr],
    kind: Kind,
    clients: usize,
    duration: Duration,
    count: u64,
) -> Tally {
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for c in 0..clients {
            let tally = &tally;
            s.spawn(move || {
                enter(ns);
                let client = Client::new(kind);
                let deadline = Instant::now() + duration;
                let mut n = 0u64;
                while Instant::now() < deadline && n < count {
                    let addr = boxes[(c + n as usize) % boxes.len()];
                    let offered = client.latest.lock().unwrap().is_some();
                    let outcome = client.connect(addr);
                    let resumed = matches!(outcome, Ok((true, _)));
                    if kind == Kind::SessionIds && !resumed {
                        // A full handshake made a session, which the box writes to Redis as the
                        // handshake ends, without waiting; a client back within a few
                        // milliseconds may beat the write (docs/fleet.md). Real clients come back
                        // later than this.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let mut t = tally.lock().unwrap();
                    t.connections += 1;
                    match outcome {
                        Ok((resumed, took)) => {
                            if offered {
                                t.offered += 1;
                                if resumed {
                                    t.resumed += 1;
                                    t.resumed_times.push(took);
                                }
                            }
                        }
                        Err(e) => t.failures.push(e),
                    }
                    n += 1;
                }
            });
        }
    });
    tally.into_inner().unwrap()
}

/// GET `path` from `addr` (plain HTTP/1.0), from inside `ns`: the body.
fn http_get(ns: &str, addr: SocketAddr, path: &str) -> Result<String, String> {
    in_ns(ns, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP head from {addr}{path}: {text:?}"))?;
        if !head.starts_with("HTTP/1.") || !head.contains(" 200") {
            return Err(format!("{addr}{path}: {head}"));
        }
        Ok(body.to_owned())
    })
}

/// The value of the sample `name` (with exactly these labels, `""` for none) in `text`.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().ok().map(|v| v as u64))?
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

/// Sums `name` over every box's metrics endpoint.
fn fleet_sum(ns: &str, boxes: &[SocketAddr], name: &str) -> u64 {
    boxes
        .iter()
        .map(|b| {
            let metrics = SocketAddr::new(b.ip(), METRICS_PORT);
            sample(&http_get(ns, metrics, "/metrics").unwrap(), name)
        })
        .sum()
}

fn percentile(times: &mut [Duration], p: f64) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    times.sort();
    times[((times.len() - 1) as f64 * p).round() as usize]
}

/// Prometheus's query API: the single value of `query`, if it has one.
fn prometheus_value(ns: &str, prometheus: SocketAddr, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = http_get(ns, prometheus, &format!("/api/v1/query?query={encoded}")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = json["data"]["result"].get(0)?["value"].get(1)?.as_str()?;
    value.parse().ok()
}

#[test]
fn three_boxes_resume_each_others_sessions_and_prometheus_adds_them_up() {
    require_tool("redis-server", "redis-server");
    require_tool("prometheus", "prometheus");
    require_tool("promtool", "prometheus");
    let state = TempDir::new("fleet");
    let lan = Lan::new(&["clients", "box1", "box2", "box3", "redis"]);
    let (clients_ns, clients_addr) = lan.host("clients");
    let clients_ns = clients_ns.to_owned();
    let (redis_ns, redis_addr) = lan.host("redis");
    let mut redis = Redis::start(redis_ns, redis_addr, state.path());

    let backend = in_ns(&clients_ns, || {
        std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
    });
    let backend_addr = SocketAddr::from((clients_addr, backend.local_addr().unwrap().port()));
    let _recorded = echo_backend_from(backend);

    let secret = state.path().join("fleet.secret");
    let made = Command::new(fastedge_tests::process::fastedge_bin())
        .args(["ticket-secret"])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(made.status.success(), "fastedge ticket-secret: {made:?}");
    let (cert, key) = state.self_signed("fleet.test");

    let mut boxes = Vec::new();
    let mut servers = Vec::new();
    for (i, name) in ["box1", "box2", "box3"].iter().enumerate() {
        let (ns, addr) = lan.host(name);
        let config = format!(
            "cores = \"{core}\"\nmetrics_listen = \"0.0.0.0:{METRICS_PORT}\"\n\
             [frontend]\nlisten = [\"0.0.0.0:{TLS_PORT}\"]\n\
             [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\
             ticket_secret_file = \"{secret}\"\nticket_rotate = \"{rotate}s\"\nticket_previous = 1\n\
             session_store = \"redis://{redis_addr}:{REDIS_PORT}\"\nsession_store_timeout = \"100ms\"\n\
             [[backend]]\naddress = \"{backend_addr}\"\n",
            core = i % 2,
            cert = cert.display(),
            key = key.display(),
            secret = secret.display(),
            rotate = ROTATE.as_secs(),
        );
        let path = state.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).unwrap();
        let server = Fastedge::start_in(
            Some(ns),
            &["serve", "--config", path.to_str().unwrap()],
            &[("FASTEDGE_LOG", "info")],
        );
        server.wait_for_line("listening addr=", Duration::from_secs(30));
        // The store's client thread runs on the box's cores, beside the cores that ask it. It
        // names and pins itself when it first runs, which may be a moment after the listening
        // line: wait for that, a few seconds at most.
        let pinned = format!("Cpus_allowed_list:\t{}\n", i % 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let status = std::fs::read_dir(format!("/proc/{}/task", server.pid()))
                .unwrap()
                .flatten()
                .find(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| comm.starts_with("fastedge-sessio"))
                })
                .and_then(|task| std::fs::read_to_string(task.path().join("status")).ok());
            match status {
                Some(status) if status.contains(&pinned) => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Some(status) => panic!("the session store thread is not pinned: {status}"),
                None => panic!("no session store thread"),
            }
        }
        servers.push(server);
        boxes.push(SocketAddr::from((addr, TLS_PORT)));
    }

    // 1. TLS 1.3 tickets across boxes, through at least two key rotations, with no lookup in
    //    the session store (nothing passes between the boxes).
    sleep_past_boundary(ROTATE, Duration::from_millis(100));
    let lookups_before = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_lookups_total{result=\"found\"}",
    );
    let writes_before = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_writes_total{result=\"written\"}",
    );
    let started = Instant::now();
    let tickets = run_clients(&clients_ns, &boxes, Kind::Tickets, 3, ROTATE * 3, u64::MAX);
    let lookups_after = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_lookups_total{result=\"found\"}",
    );
    assert!(started.elapsed() >= ROTATE * 2);
    assert!(tickets.failures.is_empty(), "{:?}", tickets.failures);
    println!(
        "TLS 1.3 tickets across boxes: {} of {} reconnections resumed ({:.2} %) over {:.1} s, \
         {} key rotations",
        tickets.resumed,
        tickets.offered,
        tickets.rate() * 100.0,
        started.elapsed().as_secs_f64(),
        (started.elapsed().as_secs() / ROTATE.as_secs()),
    );
    assert!(tickets.offered >= 100, "too few reconnections: {tickets:?}");
    assert!(tickets.rate() >= 0.99, "{tickets:?}");
    assert_eq!(lookups_before, lookups_after, "tickets needed the store");
    let writes_after = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_writes_total{result=\"written\"}",
    );
    assert_eq!(
        writes_before, writes_after,
        "TLS 1.3 sessions were written to the store"
    );

    // 2. TLS 1.2 session IDs across boxes, through Redis.
    let mut ids = run_clients(
        &clients_ns,
        &boxes,
        Kind::SessionIds,
        3,
        Duration::from_secs(8),
        150,
    );
    assert!(ids.failures.is_empty(), "{:?}", ids.failures);
    // The same clients staying on one box resume from its local cache: the baseline.
    let mut local = run_clients(
        &clients_ns,
        &boxes[..1],
        Kind::SessionIds,
        3,
        Duration::from_secs(8),
        150,
    );
    assert!(local.failures.is_empty(), "{:?}", local.failures);
    println!(
        "TLS 1.2 session IDs across boxes (Redis): {} of {} reconnections resumed ({:.2} %)",
        ids.resumed,
        ids.offered,
        ids.rate() * 100.0
    );
    println!(
        "resumed handshake, client side: across boxes through Redis p50 {:?} p99 {:?}; \
         same box, local cache p50 {:?} p99 {:?}",
        percentile(&mut ids.resumed_times, 0.5),
        percentile(&mut ids.resumed_times, 0.99),
        percentile(&mut local.resumed_times, 0.5),
        percentile(&mut local.resumed_times, 0.99),
    );
    assert!(ids.offered >= 200, "too few reconnections: {ids:?}");
    assert!(ids.rate() >= 0.99, "{ids:?}");
    let found = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_lookups_total{result=\"found\"}",
    );
    assert!(
        found >= ids.resumed,
        "found {found}, resumed {}",
        ids.resumed
    );
    println!(
        "session store lookups: {found} found, {} missing, {} timed out",
        fleet_sum(
            &clients_ns,
            &boxes,
            "fastedge_session_store_lookups_total{result=\"missing\"}"
        ),
        fleet_sum(
            &clients_ns,
            &boxes,
            "fastedge_session_store_lookups_total{result=\"timed_out\"}"
        ),
    );

    // 3. Redis killed: full handshakes, no client error. Back: resumption comes back.
    redis.kill();
    let outage = run_clients(
        &clients_ns,
        &boxes,
        Kind::SessionIds,
        3,
        Duration::from_secs(5),
        40,
    );
    assert!(outage.failures.is_empty(), "{:?}", outage.failures);
    assert!(outage.connections >= 100, "{outage:?}");
    let unanswered = fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_lookups_total{result=\"failed\"}",
    ) + fleet_sum(
        &clients_ns,
        &boxes,
        "fastedge_session_store_lookups_total{result=\"timed_out\"}",
    );
    assert!(unanswered > 0, "no lookup failed while Redis was down");
    println!(
        "Redis down: {} connections, {} resumed, 0 failed; lookups failed or timed out: {unanswered}",
        outage.connections, outage.resumed
    );
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut back = Tally::default();
    loop {
        let t = run_clients(
            &clients_ns,
            &boxes,
            Kind::SessionIds,
            3,
            Duration::from_secs(5),
            30,
        );
        assert!(t.failures.is_empty(), "{:?}", t.failures);
        back.connections += t.connections;
        back.resumed += t.resumed;
        if t.rate() >= 0.99 {
            println!(
                "Redis back: {} of {} reconnections resumed in the last round",
                t.resumed, t.offered
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resumption did not come back after Redis restarted: {t:?}"
        );
    }
    assert!(servers[0].log_text().contains("session store unreachable"));
    assert!(servers
        .iter()
        .any(|s| s.log_text().contains("session store reachable again")));

    // 4. Prometheus scrapes the three boxes: every target up, and its sums are the boxes'.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = repo.join("packaging/prometheus/fastedge.rules.yml");
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check rules: {check:?}");
    let example = repo.join("packaging/prometheus/prometheus.yml");
    let check = Command::new("promtool")
        .args(["check", "config", "--syntax-only"])
        .arg(&example)
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check config: {check:?}");
    let exposition = http_get(
        &clients_ns,
        SocketAddr::new(boxes[0].ip(), METRICS_PORT),
        "/metrics",
    )
    .unwrap();
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let targets: Vec<String> = boxes
        .iter()
        .map(|b| format!("'{}:{METRICS_PORT}'", b.ip()))
        .collect();
    let config = state.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: fastedge\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", "),
            rules = rules.display(),
        ),
    )
    .unwrap();
    let prometheus_addr = SocketAddr::from((clients_addr, 9090));
    let mut prometheus = Command::new("ip")
        .args(["netns", "exec", &clients_ns, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            state.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = KillOnDrop(&mut prometheus);

    // Traffic while Prometheus scrapes, so the rate rules have something to show.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus_value(&clients_ns, prometheus_addr, "sum(up{job=\"fastedge\"})") != Some(3.0) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the three boxes up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let watched = run_clients(
        &clients_ns,
        &boxes,
        Kind::Tickets,
        2,
        Duration::from_secs(4),
        u64::MAX,
    );
    assert!(watched.failures.is_empty(), "{:?}", watched.failures);
    let handshakes = fleet_sum(&clients_ns, &boxes, "fastedge_handshakes_completed_total");
    let resumed = fleet_sum(&clients_ns, &boxes, "fastedge_handshakes_resumed_total");
    let runs = [&tickets, &ids, &local, &outage, &back, &watched];
    let connections: u64 = runs.iter().map(|t| t.connections).sum();
    let all_resumed: u64 = runs.iter().map(|t| t.resumed).sum();
    assert_eq!(
        handshakes, connections,
        "every client connection is a handshake"
    );
    assert_eq!(
        resumed, all_resumed,
        "the boxes count what the clients saw resume"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prometheus_value(&clients_ns, prometheus_addr, "sum(up{job=\"fastedge\"})");
        let h = prometheus_value(
            &clients_ns,
            prometheus_addr,
            "sum(fastedge_handshakes_completed_total)",
        );
        let r = prometheus_value(
            &clients_ns,
            prometheus_addr,
            "sum(fastedge_handshakes_resumed_total)",
        );
        let ratio = prometheus_value(
            &clients_ns,
            prometheus_addr,
            "sum(fastedge:handshakes_resumed:ratio_rate1m)",
        );
        let counted = up == Some(3.0) && h == Some(handshakes as f64) && r == Some(resumed as f64);
        if let (true, Some(ratio)) = (counted, ratio.filter(|v| v.is_finite())) {
            println!(
                "Prometheus: 3 targets up, {handshakes} handshakes, {resumed} resumed, \
                 resumption ratio over the last minute (recording rule) {ratio:.3}"
            );
            // The watched traffic is tickets that all resume, after one full handshake each.
            assert!(ratio > 0.5, "resumption ratio {ratio}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus: up {up:?}, handshakes {h:?} (boxes: {handshakes}), resumed {r:?} \
             (boxes: {resumed}), ratio {ratio:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for mut server in servers {
        server.terminate_cleanly(Duration::from_secs(10));
    }
}

#[test]
fn the_store_client_speaks_to_redis_over_a_unix_socket() {
    use fastedge_tls::session_store::{Answer, StoreClient, StoreSettings};
    require_tool("redis-server", "redis-server");
    let state = TempDir::new("store-unix");
    let socket = state.path().join("redis.sock");
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&socket)
        .arg("--dir")
        .arg(state.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "redis-server made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let settings = StoreSettings::new(
        &format!("unix:{}", socket.display()),
        Duration::from_millis(500),
        state.path().join("unused.secret"),
        None,
    )
    .unwrap();
    let client = StoreClient::for_url(&settings.url).unwrap();
    let lookup = |id: &[u8]| futures_lite::future::block_on(client.lookup(id, settings.timeout));
    assert_eq!(lookup(b"never written"), Answer::Missing);
    client.write(b"an id", b"sealed bytes".to_vec(), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match lookup(b"an id") {
            Answer::Found(value) => {
                assert_eq!(value, b"sealed bytes");
                break;
            }
            Answer::Missing if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => panic!("after the write: {other:?}"),
        }
    }
    // Stored under its ID in hex, expiring with the session.
    let ttl = Command::new("redis-cli")
        .arg("-s")
        .arg(&socket)
        .args(["TTL", "fastedge:session:616e206964"])
        .output()
        .expect("redis-cli (package redis-tools)");
    let ttl: i64 = String::from_utf8_lossy(&ttl.stdout).trim().parse().unwrap();
    assert!((1..=60).contains(&ttl), "TTL {ttl}");
    // A huge value someone put in the store is read only up to one byte past the longest
    // sealed session (it then fails to parse and is not trusted for anything).
    let huge = state.path().join("huge");
    std::fs::write(&huge, vec![b'x'; 1 << 20]).unwrap();
    let set = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -s {} -x SET fastedge:session:68756765 < {}",
            socket.display(),
            huge.display()
        ))
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    match lookup(b"huge") {
        Answer::Found(value) => {
            assert_eq!(value.len(), fastedge_wire::sealed_session::MAX_SEALED + 1)
        }
        other => panic!("the huge value: {other:?}"),
    }
    let counts = client.stats().counts();
    assert_eq!(counts.written, 1);
    assert!(counts.found >= 1 && counts.missing >= 1, "{counts:?}");
    let _ = redis.kill();
    let _ = redis.wait();
}
