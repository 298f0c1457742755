//! The `fastedge` binary as a child process, killed when the test ends however it ends.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// Path of the `fastedge` binary built with this test (`target/<profile>/fastedge`).
pub fn fastedge_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/fastedge
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("fastedge"))
        .expect("test executable lives under target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p fastedge`, or `make test`)",
        bin.display()
    );
    bin
}

/// A running `fastedge` whose stderr is collected line by line.
#[derive(Debug)]
pub struct Fastedge {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Fastedge {
    /// Starts `fastedge ARGS…` with logs on stderr.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_in(None, args, envs)
    }

    /// Starts `fastedge ARGS…` with its open-files limit (soft and hard) at `nofile` from the
    /// start, so that even operations armed at start-up see it.
    pub fn start_with_nofile(args: &[&str], envs: &[(&str, &str)], nofile: u64) -> Self {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(fastedge_bin());
        // SAFETY: the closure runs in the forked child before exec and only calls setrlimit,
        // which is async-signal-safe; it allocates nothing and touches no lock.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    nofile,
                    nofile,
                )
                .map_err(std::io::Error::from)
            });
        }
        Self::spawn(command, args, envs)
    }

    /// Starts `fastedge ARGS…` inside network namespace `netns` (`ip netns exec`, which execs:
    /// the child's pid is fastedge's).
    pub fn start_in(netns: Option<&str>, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(fastedge_bin());
                c
            }
            None => Command::new(fastedge_bin()),
        };
        Self::spawn(command, args, envs)
    }

    /// Starts fastedge through `command` (which must end up exec'ing [`fastedge_bin`], e.g. a
    /// shell that sets variables from its own pid first), with these arguments appended.
    pub fn start_command(command: Command, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn(command, args, envs)
    }

    fn spawn(mut command: Command, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = command
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting fastedge");
        let stdin = child.stdin.take();
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            stdin,
            lines,
            log,
        }
    }

    /// Writes `bytes` to the process's standard input.
    pub fn write_stdin(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(bytes).expect("writing to fastedge's stdin");
        stdin.flush().expect("flushing fastedge's stdin");
    }

    /// Starts `fastedge serve` with the configuration `config` (written into `state`, which
    /// also holds the demo certificate), listening on a free loopback port; returns it with its
    /// address once it listens.
    pub fn serve_config(state: &crate::TempDir, config: &str) -> (Self, std::net::SocketAddr) {
        let path = state.path().join("fastedge.toml");
        std::fs::write(&path, config).expect("writing the configuration");
        let server = Self::start(
            &[
                "serve",
                "--config",
                path.to_str().expect("UTF-8 path"),
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                state.path().to_str().expect("UTF-8 path"),
            ],
            &[("FASTEDGE_LOG", "info")],
        );
        let addr = server.wait_listening();
        (server, addr)
    }

    /// Waits for a log line containing `needle`, returning it; panics after `within`.
    pub fn wait_for_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {within:?}; log so far:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Waits until the log so far (including lines other waits went past) holds `needle`;
    /// returns the first line with it; panics after `within`. For events that may come before
    /// or after others, such as work a helper thread does at start.
    pub fn wait_for_logged(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find(|line| line.contains(needle))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}; log so far:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics endpoint's address, from its `metrics listening addr=…` line (waiting up
    /// to 10 s for it).
    pub fn metrics_addr(&self) -> String {
        let line = self.wait_for_logged("metrics listening", Duration::from_secs(10));
        line.split("addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned()
    }

    /// The address in the first `listening addr=…` line.
    pub fn wait_listening(&self) -> std::net::SocketAddr {
        let line = self.wait_for_line("listening addr=", Duration::from_secs(20));
        let addr = line
            .split("listening addr=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address after addr=");
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(within)
    }

    /// Sends SIGTERM and asserts a clean exit (status 0) within `within`;
    /// on failure the panic carries the status and the whole log.
    pub fn terminate_cleanly(&mut self, within: Duration) {
        let status = self.terminate(within);
        assert!(
            status.success(),
            "fastedge exited with {status} after SIGTERM; log:\n{}",
            self.log_text()
        );
    }

    /// Sends `signal`.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("sending a signal");
    }

    /// Waits for the exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for fastedge") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fastedge did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Fastedge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Descriptors process `pid` has open (`/proc/PID/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading /proc/PID/fd")
        .count()
}

/// Resident memory of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Copies of process `pid`'s TCP sockets whose peer is `peer` (through `pidfd_getfd`, Linux
/// 5.6, which needs the right to trace `pid`: root here), to look at their options.
pub fn sockets_connected_to(pid: u32, peer: std::net::SocketAddr) -> Vec<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the descriptor was just created for us.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("reading /proc/PID/fd") {
        let entry = entry.expect("a /proc/PID/fd entry");
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(target_fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd takes the pidfd, a descriptor number of that process and flags;
        // it returns a new descriptor of ours or -1 (the number may be closed by now).
        let fd = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                target_fd,
                0,
            )
        };
        if fd < 0 {
            let error = std::io::Error::last_os_error();
            // EBADF: closed since the directory was read.
            assert_eq!(
                error.raw_os_error(),
                Some(libc::EBADF),
                "pidfd_getfd of {pid}'s descriptor {target_fd}: {error}"
            );
            continue;
        }
        // SAFETY: as above: a new descriptor, ours alone.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let matches = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            == Some(peer);
        if matches {
            found.push(fd);
        }
    }
    found
}
