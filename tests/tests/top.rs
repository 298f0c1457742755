//! `fastedge top` in a real terminal (tmux): against a real `fastedge serve` under TLS load it
//! shows per-core connection and handshake rates, close reasons and backend health, and its
//! per-core and per-reason totals match the metrics endpoint; against a real `fastedge split` receiving
//! generated traffic it shows each way's rate and consumer, drops by cause and rule hits; `q`
//! quits and leaves the terminal as it was; an endpoint or socket that is not there is exit 2.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use fastedge_tests::{
    netns::VethPair,
    peers::{echo_backend, tls_connect, try_read_response},
    process::{fastedge_bin, Fastedge},
    require_tool,
    ways::{attach, gen, WayFiles},
    TempDir,
};

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell line) in a detached 120×40 session.
    fn start(tag: &str, command: &str) -> Self {
        require_tool("tmux", "tmux");
        let tmux = Self {
            socket: format!("fastedge-top-{tag}-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "120",
            "-y",
            "40",
            command,
        ]);
        // The pane stays after the command ends, so the test can read what it left.
        tmux.run(&["set-option", "-t", "top", "remain-on-exit", "on"]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as text.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Whether the pane shows the alternate screen now.
    fn alternate_screen(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
            .trim()
            == "1"
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }

    /// Waits (30 s at most) for a screen that `check` accepts; returns it.
    fn wait_screen(&self, what: &str, mut check: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no screen with {what} within 30 s; last screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Presses `q` and checks the program ended with status 0 and left the alternate screen
    /// (raw mode off: the shell's own output after it reads normally).
    fn quit(&self) -> String {
        self.keys("q");
        let screen = self.wait_screen("the exit status", |s| s.contains("top exited with"));
        assert!(screen.contains("top exited with 0"), "{screen}");
        assert!(!self.alternate_screen(), "still on the alternate screen");
        assert!(
            !screen.contains("handshakes/s") && !screen.contains("delivered/s"),
            "{screen}"
        );
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The shell line that runs `fastedge top ARGS` and then says how it ended (and stays, so that
/// tmux shows the shell's line rather than a dead pane).
fn top_command(args: &str) -> String {
    format!(
        "{} top {args}; echo \"top exited with $?\"; sleep 120",
        fastedge_bin().display()
    )
}

/// The rows of the box titled `title`: the lines between its header row (the one after the
/// title) and its bottom border, as whitespace-separated cells without the borders. Boxes
/// side by side are told apart by the column where the title starts.
fn box_rows(screen: &str, title: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = screen.lines().collect();
    let Some((top, column)) = lines.iter().enumerate().find_map(|(i, l)| {
        l.find(&format!("┌{title}"))
            .map(|byte| (i, l[..byte].chars().count()))
    }) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for line in &lines[top + 2..] {
        let cells: String = line.chars().skip(column).collect();
        if cells.starts_with('└') || cells.is_empty() {
            break;
        }
        let inner: String = cells.chars().skip(1).take_while(|&c| c != '│').collect();
        let row: Vec<String> = inner.split_whitespace().map(str::to_owned).collect();
        if !row.is_empty() {
            rows.push(row);
        }
    }
    rows
}

fn number(cell: &str) -> f64 {
    cell.parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"))
}

/// Fetches the metrics text.
fn scrape(metrics: SocketAddr) -> String {
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn top_shows_a_serve_under_load() {
    require_tool("tmux", "tmux");
    let state = TempDir::new("top-serve");
    let (backend, _) = echo_backend();
    let cpus = fastedge_runtime::CpuList::available()
        .unwrap()
        .cpus()
        .to_vec();
    let cores: Vec<String> = cpus.iter().take(2).map(ToString::to_string).collect();
    let (mut server, addr) = Fastedge::serve_config(
        &state,
        &format!(
            "cores = \"{}\"\nmetrics_listen = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{backend}\"\n\
             x_forwarded = true\n",
            cores.join(",")
        ),
    );
    let metrics: SocketAddr = server.metrics_addr().parse().unwrap();

    // Load: new TLS connections, one request each, from two threads.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut tls = tls_connect(addr, "localhost", b"");
                    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    if try_read_response(&mut tls).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // An orderly close (close_notify), counted as `closed`.
                    let _ = tls.shutdown();
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    let tmux = Tmux::start(
        "serve",
        &top_command(&format!(
            "--metrics http://{metrics}/metrics --interval 500ms"
        )),
    );
    let busy = tmux.wait_screen("two core rows with handshakes per second", |s| {
        let rows = box_rows(s, "Cores");
        rows.len() == cores.len()
            && rows.iter().map(|r| number(&r[2])).sum::<f64>() > 0.0
            && rows.iter().map(|r| number(&r[1])).sum::<f64>() > 0.0
            && rows.iter().map(|r| number(&r[3])).sum::<f64>() > 0.0
    });
    assert!(
        busy.contains("requests/s") && busy.contains("(resumed 0%)"),
        "{busy}"
    );
    assert!(tmux.alternate_screen());
    println!("serve under load, as top showed it:\n{busy}");
    let rows = box_rows(&busy, "Cores");
    let core_ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    let expected: Vec<String> = (0..cores.len()).map(|i| i.to_string()).collect();
    assert_eq!(core_ids, expected, "{busy}");
    let backends = box_rows(&busy, "Backends");
    assert_eq!(backends.len(), 1, "{busy}");
    assert_eq!(backends[0][0], backend.to_string(), "{busy}");
    assert_eq!(backends[0][1], "up", "{busy}");
    assert_eq!(
        backends[0][2],
        format!("{}/{}", cores.len(), cores.len()),
        "{busy}"
    );
    let closes = box_rows(&busy, "Closed connections");
    let reasons: Vec<&str> = closes.iter().map(|r| r[0].as_str()).collect();
    assert!(
        reasons.contains(&"closed") && reasons.contains(&"handshake_failed"),
        "{busy}"
    );
    assert!(
        busy.contains(&format!("serve http://{metrics}/metrics")),
        "{busy}"
    );

    // Load off: once top has read again, its per-core totals are the endpoint's.
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.join().unwrap();
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    // Every connection closed and counted, so the figures stand still.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(metrics);
        if metric(&text, "fastedge_connections_active") == 0 {
            break text;
        }
        assert!(Instant::now() < deadline, "connections still open:\n{text}");
        thread::sleep(Duration::from_millis(100));
    };
    let accepted: Vec<u64> = (0..cores.len())
        .map(|i| {
            metric(
                &text,
                &format!("fastedge_core_connections_accepted_total{{core=\"{i}\"}}"),
            )
        })
        .collect();
    let quiet = tmux.wait_screen("the endpoint's per-core totals", |s| {
        let rows = box_rows(s, "Cores");
        rows.len() == cores.len()
            && rows
                .iter()
                .zip(&accepted)
                .all(|(r, &n)| r.last().map(String::as_str) == Some(n.to_string().as_str()))
    });
    let closes = box_rows(&quiet, "Closed connections");
    assert_eq!(closes.len(), 8, "{quiet}");
    assert!(
        closes
            .iter()
            .any(|r| r[0] == "closed" && number(&r[1]) > 0.0),
        "{quiet}"
    );
    for row in closes {
        assert_eq!(
            number(&row[1]) as u64,
            metric(
                &text,
                &format!("fastedge_connections_closed_total{{reason=\"{}\"}}", row[0])
            ),
            "{quiet}\n{text}"
        );
    }
    println!("load off, as top showed it:\n{quiet}");

    // The server goes away: top stays, says why on its status line, keeps the last figures.
    server.terminate_cleanly(Duration::from_secs(10));
    let gone = tmux.wait_screen("the failed reading", |s| {
        s.contains("last reading failed") && s.contains(&metrics.to_string())
    });
    assert_eq!(box_rows(&gone, "Cores").len(), cores.len(), "{gone}");
    println!("server gone, as top showed it:\n{gone}");

    let after = tmux.quit();
    println!("after q:\n{after}");
}

#[test]
fn top_shows_a_split_with_its_ways() {
    require_tool("tmux", "tmux");
    let pair = VethPair::new();
    let dir = TempDir::new("top-split");
    let name = format!("top{}", std::process::id());
    let _files = WayFiles(name.clone());
    let config = dir.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{name}\"\nway_kib = 64\n[[input]]\ninterface = \"{}\"\n[output]\ntype = \"balance\"\nways = 2\n",
            pair.dev_a
        ),
    )
    .unwrap();
    let socket = dir.path().join("ctl.sock");
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            "--config",
            config.to_str().unwrap(),
            "--control",
            socket.to_str().unwrap(),
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    // A consumer on way 0 only: way 1 fills and drops.
    let mut consumers = attach(&name, 0..1);
    let rule = Command::new(fastedge_bin())
        .args([
            "ctl",
            "-s",
            socket.to_str().unwrap(),
            "rules",
            "add",
            "drop",
            "src",
            "10.1.0.0/28",
        ])
        .output()
        .unwrap();
    assert!(rule.status.success(), "{rule:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut read = 0;
            while !stop.load(Ordering::Relaxed) {
                read += consumers[0].read_batch(usize::MAX, |_| {});
                thread::sleep(Duration::from_millis(5));
            }
            read
        })
    };
    let sender = {
        let (ns, dev) = (pair.ns_b.clone(), pair.dev_b.clone());
        thread::spawn(move || {
            gen(
                &ns,
                &dev,
                &["--flows", "100", "--rate", "3000", "--count", "30000"],
            );
        })
    };

    let tmux = Tmux::start(
        "split",
        &top_command(&format!("--control {} --interval 500ms", socket.display())),
    );
    let busy = tmux.wait_screen("ways delivering, way 1 dropping, rule hits", |s| {
        let ways = box_rows(s, "Ways");
        let rules = box_rows(s, "Pre-filter rules");
        ways.len() == 2
            && number(&ways[0][1]) > 0.0
            && number(&ways[1][2]) > 0.0
            && rules
                .first()
                .is_some_and(|r| r.len() == 6 && number(&r[4]) > 0.0)
    });
    println!("split under load, as top showed it:\n{busy}");
    let ways = box_rows(&busy, "Ways");
    assert_eq!(ways[0][0], "0");
    assert_eq!(
        ways[0][5..],
        ["pid".to_owned(), std::process::id().to_string()],
        "{busy}"
    );
    assert_eq!(ways[1][5], "-", "{busy}");
    assert!(busy.contains("consumers 1"), "{busy}");
    assert!(busy.contains(&format!("split {name}")), "{busy}");
    let drops: Vec<String> = box_rows(&busy, "Drops")
        .iter()
        .map(|r| r.join(" "))
        .collect();
    assert!(
        drops
            .iter()
            .any(|d| d.starts_with("ways: full (consumer slow or absent)")),
        "{busy}"
    );
    assert!(
        drops
            .iter()
            .any(|d| d.starts_with("pre-filter: drop rules")),
        "{busy}"
    );
    let rules = box_rows(&busy, "Pre-filter rules");
    assert_eq!(rules[0][1..4].join(" "), "drop src 10.1.0.0/28", "{busy}");

    let after = tmux.quit();
    println!("after q:\n{after}");
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(reader.join().unwrap() > 0);
    split.terminate_cleanly(Duration::from_secs(10));
}

#[test]
fn unreachable_sources_are_exit_2_with_the_reason() {
    let dead = fastedge_tests::peers::dead_port();
    let missing = Path::new("/nonexistent/split-none.sock");
    for (args, needle) in [
        (
            vec!["top".to_owned(), "--metrics".to_owned(), dead.to_string()],
            dead.to_string(),
        ),
        (
            vec![
                "top".to_owned(),
                "--control".to_owned(),
                missing.display().to_string(),
            ],
            missing.display().to_string(),
        ),
        (
            vec![
                "top".to_owned(),
                "--once".to_owned(),
                "--metrics".to_owned(),
                dead.to_string(),
            ],
            "cannot read it".to_owned(),
        ),
    ] {
        let out = Command::new(fastedge_bin()).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let out = Command::new(fastedge_bin())
        .args(["top", "--metrics", "not an address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
}

#[test]
fn once_prints_one_plain_frame() {
    let state = TempDir::new("top-once");
    let (backend, _) = echo_backend();
    let (server, addr) = Fastedge::serve_config(
        &state,
        &format!("metrics_listen = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{backend}\"\n"),
    );
    // One request, so a core has met the backend (health is kept per core from then on).
    let mut tls = tls_connect(addr, "localhost", b"");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    try_read_response(&mut tls).unwrap();
    let metrics = server.metrics_addr();
    let out = Command::new(fastedge_bin())
        .args([
            "top",
            "--once",
            "--interval",
            "200ms",
            "--metrics",
            &metrics,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains('\u{1b}'),
        "escape sequences in plain text: {text:?}"
    );
    let backends = box_rows(&text, "Backends");
    assert_eq!(
        backends[0][..2],
        [backend.to_string(), "up".to_owned()],
        "{text}"
    );
    assert!(!box_rows(&text, "Cores").is_empty(), "{text}");
    println!("fastedge top --once:\n{text}");
}
