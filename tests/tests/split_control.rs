//! `fastedge split` as a daemon driven by `fastedge ctl` over its control socket: every
//! command, errors for bad requests, a client that vanishes mid-request, reload (by ctl and by
//! SIGHUP) that keeps the consumers of ways that stay, a bad file refused on reload, shutdown,
//! `--daemon` with a pid file, and the interactive shell.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_tests::{
    netns::VethPair,
    process::{fastedge_bin, Fastedge},
    ways::{attach, gen, read_markers, WayFiles},
    TempDir,
};

/// Runs `fastedge ctl -s SOCKET ARGS…`; returns (success, stdout, stderr).
fn ctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(fastedge_bin())
        .arg("ctl")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ctl_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = ctl(socket, &all);
    assert!(ok, "ctl {args:?}: {out} {err}");
    serde_json::from_str(out.trim()).unwrap()
}

fn send(pair: &VethPair, count: u64, first_seq: u64) {
    gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--flows",
            "100",
            "--rate",
            "20000",
            "--count",
            &count.to_string(),
            "--first-seq",
            &first_seq.to_string(),
        ],
    );
}

fn pipeline(dir: &Path, name: &str, dev: &str, ways: u32) -> PathBuf {
    let path = dir.join("pipeline.toml");
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\nway_kib = 256\n[[input]]\ninterface = \"{dev}\"\n[output]\ntype = \"balance\"\nways = {ways}\n"
        ),
    )
    .unwrap();
    path
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctl_drives_a_running_split() {
    let pair = VethPair::new();
    let dir = TempDir::new("split-ctl");
    let name = format!("ctl{}", std::process::id());
    let _files = WayFiles(name.clone());
    let config = pipeline(dir.path(), &name, &pair.dev_a, 2);
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
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket private by default");

    // status, stats, ways, pipeline show, help.
    let status = ctl_json(&socket, &["status"]);
    assert_eq!(status["name"], name.as_str());
    assert_eq!(status["ways"], 2);
    assert_eq!(status["inputs"][0]["mode"], "AF_XDP, XDP native mode");
    let mut consumers = attach(&name, 0..2);
    send(&pair, 1000, 0);
    wait_until("stats to count 1000 frames", || {
        ctl_json(&socket, &["stats"])["stats"]["inputs"][0]["received"] == 1000
    });
    let stats = ctl_json(&socket, &["stats"]);
    let delivered: u64 = stats["stats"]["ways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, 1000, "{stats}");
    assert_eq!(stats["stats"]["inputs"][0]["xsk"]["rx_ring_full"], 0);
    let (ok, ways, _) = ctl(&socket, &["ways"]);
    assert!(
        ok && ways.contains("dropped-full") && ways.contains("pid "),
        "{ways}"
    );
    let (ok, toml, _) = ctl(&socket, &["pipeline", "show"]);
    assert!(
        ok && toml.contains("ways = 2") && toml.contains(&pair.dev_a),
        "{toml}"
    );
    let (ok, help, _) = ctl(&socket, &["help"]);
    assert!(
        ok && help.contains("reload") && help.contains("shutdown"),
        "{help}"
    );

    // Errors: unknown command (ctl exits non-zero with the reason), bad JSON on the socket,
    // a client that goes away mid-request; the daemon answers on.
    let (ok, out, err) = ctl(&socket, &["raw", r#"{"cmd":"frobnicate"}"#]);
    assert!(!ok && out.contains("unknown command"), "{out} {err}");
    let (ok, _, err) = ctl(&socket, &["frobnicate"]);
    assert!(!ok && err.contains("unknown command"), "{err}");
    let (ok, out, _) = ctl(&socket, &["rules", "list"]);
    assert!(ok && out.contains("origin"), "{out}");
    let (ok, out, _) = ctl(&socket, &["rules", "add", "block", "everything"]);
    assert!(
        !ok && out.contains("starts with drop, pass or bypass"),
        "{out}"
    );
    {
        let mut raw = UnixStream::connect(&socket).unwrap();
        raw.write_all(b"this is not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(raw.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("\"ok\":false") && line.contains("bad JSON"),
            "{line}"
        );
        raw.write_all(br#"{"cmd": "sta"#).unwrap(); // and hang up mid-request
    }
    assert_eq!(ctl_json(&socket, &["status"])["name"], name.as_str());

    // Reload with a third way: ways 0 and 1 keep their consumer, which reads on.
    pipeline(dir.path(), &name, &pair.dev_a, 3);
    let answer = ctl_json(&socket, &["reload"]);
    assert_eq!(answer["reload"], "started");
    wait_until("the reloaded pipeline", || {
        ctl(&socket, &["--json", "status"]).1.contains("\"ways\":3")
    });
    split.wait_for_logged(
        "reload: starting the pipeline again",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut third = attach(&name, 2..3);
    send(&pair, 3000, 10_000);
    let before = read_markers(&mut consumers, 3000, Duration::from_secs(2));
    let after_third = read_markers(&mut third, 3000, Duration::from_millis(500));
    let reached: usize = (10_000..13_000u64)
        .filter(|s| before.contains_key(s) || after_third.contains_key(s))
        .count();
    assert_eq!(
        reached, 3000,
        "every frame after the reload, old consumers included"
    );
    assert!(!after_third.is_empty() && !before.is_empty());

    // A bad file: refused by ctl reload with the reason; SIGHUP keeps the pipeline in use.
    std::fs::write(&config, "[[input]]\ninterface = 1\n").unwrap();
    let (ok, out, _) = ctl(&socket, &["reload"]);
    assert!(!ok && out.contains("pipeline.toml"), "{out}");
    split.signal(nix::sys::signal::Signal::SIGHUP);
    split.wait_for_logged("keeping the pipeline in use", Duration::from_secs(10));
    wait_until("the pipeline to run again", || {
        ctl(&socket, &["--json", "status"]).1.contains("\"ways\":3")
    });

    // Shutdown: exits cleanly and removes its socket.
    assert_eq!(ctl_json(&socket, &["shutdown"])["shutdown"], "started");
    assert!(split.wait_exit(Duration::from_secs(10)).success());
    assert!(!socket.exists(), "socket removed at exit");
    assert!(split.log_text().contains("split stopped"));
}

#[test]
fn daemon_with_pid_file_and_the_interactive_shell() {
    let pair = VethPair::new();
    let dir = TempDir::new("split-daemon");
    let name = format!("dmn{}", std::process::id());
    let _files = WayFiles(name.clone());
    let socket = dir.path().join("ctl.sock");
    let pid_file = dir.path().join("split.pid");
    let out = Command::new("ip")
        .args(["netns", "exec", &pair.ns_a])
        .arg(fastedge_bin())
        .args([
            "split",
            &pair.dev_a,
            "--ways",
            "2",
            "--way-kib",
            "256",
            "--name",
            &name,
        ])
        .arg("--control")
        .arg(&socket)
        .arg("--daemon")
        .arg("--pid-file")
        .arg(&pid_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the control socket", || socket.exists());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "daemon alive");
    assert_eq!(ctl_json(&socket, &["status"])["pid"], pid);

    // The shell reads commands from its input (a terminal, or here a pipe).
    let mut shell = Command::new(fastedge_bin())
        .arg("ctl")
        .arg("-s")
        .arg(&socket)
        .env("HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    shell
        .stdin
        .take()
        .unwrap()
        .write_all(b"help\nways\nbogus\nshutdown\nquit\n")
        .unwrap();
    let out = shell.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pipeline") && text.contains("dropped-full"),
        "{text}"
    );
    assert!(text.contains("error: unknown command \"bogus\""), "{text}");
    assert!(text.contains("\"shutdown\": \"started\""), "{text}");
    wait_until("the daemon to exit", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!pid_file.exists(), "pid file removed at exit");
}

/// Datagrams a fake service manager received on its notify socket, as one text per datagram.
fn notifications(socket: &std::os::unix::net::UnixDatagram, until: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = text.lines().any(|l| l == until);
            got.push(text);
            if done {
                return got;
            }
        }
    }
    panic!("no {until} within 15 s; got {got:?}");
}

#[test]
fn a_service_manager_hears_ready_status_watchdog_reloading_and_stopping() {
    // systemd's Type=notify protocol, played by this test: a datagram socket in
    // $NOTIFY_SOCKET, a watchdog of 2 s for fastedge's own pid.
    let pair = VethPair::new();
    let dir = TempDir::new("split-notify");
    let name = format!("{}n", pair.dev_a);
    let _files = WayFiles(name.clone());
    let config = pipeline(dir.path(), &name, &pair.dev_a, 2);
    let notify_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &pair.ns_a, "sh", "-c"])
        .arg(format!(
            "WATCHDOG_PID=$$ WATCHDOG_USEC=2000000 exec {} \"$@\"",
            fastedge_bin().display()
        ));
    command.arg("fastedge");
    let control = dir.path().join("control.sock");
    let mut split = Fastedge::start_command(
        command,
        &[
            "split",
            "--config",
            config.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let started = notifications(&socket, "READY=1");
    assert!(
        started.iter().any(|d| d.contains("STATUS=")),
        "a status line comes with READY: {started:?}"
    );
    let pings = notifications(&socket, "WATCHDOG=1");
    assert!(!pings.is_empty());
    split.signal(nix::sys::signal::Signal::SIGHUP);
    notifications(&socket, "RELOADING=1");
    notifications(&socket, "READY=1");
    split.signal(nix::sys::signal::Signal::SIGTERM);
    notifications(&socket, "STOPPING=1");
    split.terminate_cleanly(Duration::from_secs(10));
}
