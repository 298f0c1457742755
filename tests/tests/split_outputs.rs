//! Interfaces as outputs: `fastedge split --to veth` makes a veth pair per way and sends each
//! way's frames into it; tcpdump on each pair's far end sees its share — the flows the hash
//! gives that way, both directions — and nothing else; the pairs go away at exit. The same in
//! the kernel (XDP + DEVMAP, picked by itself) and in userspace (`--no-fast-path`): each flow
//! lands on the same output. TAP outputs likewise, and they survive a reload: the same
//! devices, with the captures started before it. Jumbo frames (a 9,000-byte MTU) leave the
//! veth outputs whole, by either path.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use fastedge_rings::pcap::{PcapSource, ReplaySpeed};
use fastedge_tests::{
    netns::{ip, VethPair},
    process::Fastedge,
    require_tool,
    ways::{gen, gen_per_cpu},
    TempDir,
};
use fastedge_wire::packet::{flow_hash, parse, way_of, HashKey, HashMode, Parsed};

/// The flow-hash key given to the split, so the test can compute each frame's output.
const HASH_KEY: &str = "00112233445566778899aabbccddeeff";

/// A running tcpdump and the thread that collects its pcap output.
struct Capture(
    std::process::Child,
    Option<std::thread::JoinHandle<Vec<u8>>>,
);

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tcpdump writing everything `dev` receives in namespace `ns` to its standard output (pcap),
/// once it listens.
fn tcpdump(ns: &str, dev: &str) -> Capture {
    let mut child = Command::new("ip")
        // Immediate mode: packets are handed over as they come, not when a ring block fills or
        // times out (a capture stopped early would lose them).
        .args([
            "netns",
            "exec",
            ns,
            "tcpdump",
            "--immediate-mode",
            "-B",
            "16384",
            "-i",
            dev,
            "-U",
            "-n",
            "-w",
            "-",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut pcap = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut pcap);
        pcap
    });
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("tcpdump ended").unwrap();
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("tcpdump {line}");
        }
    });
    Capture(child, Some(collector))
}

/// Splits 3000 generated frames to 3 veth outputs and captures each; returns each flow's
/// output. `fast`: the in-kernel path (the default); else `--no-fast-path`.
fn split_to_veths(fast: bool) -> HashMap<u32, usize> {
    split_to("veth", fast, false, 1)
}

/// The same with `--to TO` (`veth` or `tap`); `jumbo`: 9,018-byte frames on a pair with a
/// 9,000-byte MTU (else 64-byte frames); `queues`: receive queues of the input (2: two engine
/// threads, fed by two generators on CPUs 0 and 1).
fn split_to(to: &str, fast: bool, jumbo: bool, queues: u32) -> HashMap<u32, usize> {
    require_tool("tcpdump", "tcpdump");
    let pair = VethPair::with_queues(queues);
    if jumbo {
        ip(&["-n", &pair.ns_a, "link", "set", &pair.dev_a, "mtu", "9000"]);
        ip(&["-n", &pair.ns_b, "link", "set", &pair.dev_b, "mtu", "9000"]);
    }
    let dir = TempDir::new("veth-outputs");
    // Unique per call: tests run in parallel in one process.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!(
        "fo{}{n}{}",
        std::process::id() % 100_000,
        match (to, fast, jumbo) {
            ("tap", _, _) => "t",
            (_, true, false) => "k",
            (_, false, false) => "u",
            (_, true, true) => "kj",
            (_, false, true) => "uj",
        }
    );

    let mut args = vec![
        "split",
        &pair.dev_a,
        "--ways",
        "3",
        "--to",
        to,
        "--veth-prefix",
        &prefix,
        "--no-control",
        "--hash",
        "5-tuple",
        "--hash-key",
        HASH_KEY,
    ];
    if queues > 1 {
        args.extend(["--cores", "0-1"]);
    }
    if !fast {
        args.push("--no-fast-path");
    }
    let mut split = Fastedge::start_in(Some(&pair.ns_a), &args, &[("FASTEDGE_LOG", "info")]);
    split.wait_for_logged("split running", Duration::from_secs(15));
    let files: Vec<_> = (0..3)
        .map(|k| dir.path().join(format!("out{k}.pcap")))
        .collect();
    let captures: Vec<Capture> = (0..3)
        .map(|k| {
            // A veth output is captured on its far end; a TAP device on itself.
            let device = if to == "tap" {
                format!("{prefix}{k}")
            } else {
                format!("{prefix}{k}p")
            };
            tcpdump(&pair.ns_a, &device)
        })
        .collect();
    let size = if jumbo { "9018" } else { "64" };
    if queues == 1 {
        gen(
            &pair.ns_b,
            &pair.dev_b,
            &[
                "--flows", "300", "--count", "3000", "--rate", "3000", "--size", size,
            ],
        );
    } else {
        // Two generators on two CPUs: veth gives each CPU's frames to its own queue.
        gen_per_cpu(
            &pair.ns_b,
            &pair.dev_b,
            &[("0", "0"), ("1", "1500")],
            &[
                "--flows", "300", "--count", "1500", "--rate", "3000", "--size", size,
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    for c in &captures {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }
    for (mut capture, file) in captures.into_iter().zip(&files) {
        let _ = capture.0.wait();
        let pcap = capture.1.take().unwrap().join().unwrap();
        std::fs::write(file, pcap).unwrap();
    }

    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut flow_output: HashMap<u32, usize> = HashMap::new();
    for (k, file) in files.iter().enumerate() {
        let mut source = PcapSource::open(file, ReplaySpeed::Fast).unwrap();
        while !source.finished() {
            source
                .receive(1024, |frame, _| {
                    let Some((flow, seq)) = fastedge_wire::synth::marker(frame) else {
                        panic!("output {k} carried a frame that is not ours: {frame:02x?}");
                    };
                    assert!(seen.insert(seq, k).is_none(), "frame {seq} on two outputs");
                    assert_eq!(frame.len(), if jumbo { 9014 } else { 60 }, "frame {seq}");
                    assert!(
                        fastedge_wire::synth::payload_intact(frame),
                        "frame {seq} arrived changed"
                    );
                    assert_eq!(
                        *flow_output.entry(flow).or_insert(k),
                        k,
                        "flow {flow} on one output"
                    );
                    // The same way the shared-memory path would give it.
                    let Ok(Parsed::Ip(key)) = parse(frame, true) else {
                        panic!("not IP");
                    };
                    let hash_key: HashKey = HASH_KEY.parse().unwrap();
                    assert_eq!(
                        way_of(flow_hash(&key, HashMode::FiveTuple, &hash_key), 3) as usize,
                        k
                    );
                })
                .unwrap();
        }
    }
    if seen.len() != 3000 {
        split.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = split.wait_exit(Duration::from_secs(10));
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .collect();
        panic!(
            "{} of 3000 frames on the outputs (capture sizes {sizes:?}); log:\n{}",
            seen.len(),
            split.log_text()
        );
    }
    let used: HashSet<usize> = flow_output.values().copied().collect();
    assert_eq!(used.len(), 3);

    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    assert!(log.contains(&format!("threads={queues}")), "{log}");
    // Every engine thread sends on a queue of its own (else "AF_XDP+AF_PACKET").
    let transmit = if to == "tap" { "TAP" } else { "AF_XDP" };
    assert!(
        log.contains(&format!("output {prefix}0 ({transmit}): sent")),
        "{log}"
    );
    assert_eq!(
        log.contains("in-kernel fast path: XDP hashes"),
        fast && to == "veth",
        "the log says which path ran: {log}"
    );
    if fast && to == "veth" {
        assert!(
            log.contains("in-kernel fast path: 3000 frames"),
            "every frame split in the kernel: {log}"
        );
    } else {
        assert!(log.contains("(+0 in the kernel)"), "{log}");
    }
    let links = Command::new("ip")
        .args(["-n", &pair.ns_a, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains(&prefix),
        "veth pairs removed at exit: {links}"
    );
    flow_output
}

#[test]
fn each_veth_output_carries_its_ways_flows_and_nothing_else() {
    split_to_veths(false);
}

/// 9,014-byte frames: native XDP (a frags program) and an AF_XDP socket in multi-buffer mode
/// take each one in as 1,792-byte buffers, the engine puts it together, and the veth
/// output's AF_XDP sender sends it out as a chain again; tcpdump sees every frame whole.
#[test]
fn jumbo_frames_leave_userspace_veth_outputs_whole() {
    split_to("veth", false, true, 1);
}

/// Two receive queues, two engine threads: split makes its veth outputs with two queues, and
/// each thread sends through an AF_XDP socket on one of them (before, the second thread found
/// queue 0 taken and fell back to AF_PACKET).
#[test]
fn each_engine_thread_sends_to_veth_outputs_through_af_xdp() {
    split_to("veth", false, false, 2);
}

/// The same through the in-kernel path: XDP redirects the multi-buffer frames to the veth
/// outputs (DEVMAP) without userspace, whole.
#[test]
fn jumbo_frames_leave_in_kernel_veth_outputs_whole() {
    split_to("veth", true, true, 1);
}

#[test]
fn the_in_kernel_path_splits_exactly_as_userspace_does() {
    let kernel = split_to_veths(true);
    let user = split_to_veths(false);
    assert_eq!(kernel.len(), 300);
    assert_eq!(kernel, user, "each flow to the same output on both paths");
}

#[test]
fn dup_to_veths_in_the_kernel_gives_every_output_every_frame() {
    dup_to_veths(false);
}

/// The same with 9,014-byte frames: a multi-buffer frame the kernel would have to clone for
/// each output goes through userspace instead, and every output gets it whole.
#[test]
fn dup_to_veths_gives_every_output_every_jumbo_frame_whole() {
    dup_to_veths(true);
}

fn dup_to_veths(jumbo: bool) {
    require_tool("tcpdump", "tcpdump");
    let pair = VethPair::new();
    if jumbo {
        ip(&["-n", &pair.ns_a, "link", "set", &pair.dev_a, "mtu", "9000"]);
        ip(&["-n", &pair.ns_b, "link", "set", &pair.dev_b, "mtu", "9000"]);
    }
    let prefix = format!(
        "fd{}{}",
        std::process::id() % 100_000,
        if jumbo { "j" } else { "x" }
    );
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "dup",
            &pair.dev_a,
            "--ways",
            "2",
            "--to",
            "veth",
            "--veth-prefix",
            &prefix,
            "--no-control",
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let captures: Vec<Capture> = (0..2)
        .map(|k| tcpdump(&pair.ns_a, &format!("{prefix}{k}p")))
        .collect();
    let size = if jumbo { "9018" } else { "64" };
    gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--flows", "50", "--count", "1000", "--rate", "2000", "--size", size,
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    for mut capture in captures {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(capture.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let _ = capture.0.wait();
        let pcap = capture.1.take().unwrap().join().unwrap();
        let dir = TempDir::new("dup-veth");
        let file = dir.path().join("cap.pcap");
        std::fs::write(&file, pcap).unwrap();
        let mut source = PcapSource::open(&file, ReplaySpeed::Fast).unwrap();
        let mut seqs = HashSet::new();
        while !source.finished() {
            source
                .receive(1024, |frame, _| {
                    let (_, seq) = fastedge_wire::synth::marker(frame).expect("only our frames");
                    assert!(seqs.insert(seq), "frame {seq} twice");
                    assert_eq!(frame.len(), if jumbo { 9014 } else { 60 }, "frame {seq}");
                    assert!(
                        fastedge_wire::synth::payload_intact(frame),
                        "frame {seq} arrived changed"
                    );
                })
                .unwrap();
        }
        assert_eq!(seqs.len(), 1000, "every frame on every output");
    }
    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    if jumbo {
        assert!(log.contains("in-kernel fast path: 0 frames"), "{log}");
    } else {
        assert!(log.contains("in-kernel fast path: 1000 frames"), "{log}");
    }
}

#[test]
fn tap_outputs_carry_their_ways_flows_like_veths() {
    let tap = split_to("tap", true, false, 1);
    assert_eq!(tap.len(), 300);
    assert_eq!(
        tap,
        split_to_veths(false),
        "same flow → output map as the veth outputs"
    );
}

/// The sequence numbers of our frames in a pcap capture.
fn captured_seqs(pcap: &[u8], dir: &std::path::Path, name: &str) -> HashSet<u64> {
    let file = dir.join(name);
    std::fs::write(&file, pcap).unwrap();
    let mut seqs = HashSet::new();
    let mut source = PcapSource::open(&file, ReplaySpeed::Fast).unwrap();
    while !source.finished() {
        source
            .receive(1024, |frame, _| {
                if let Some((_, seq)) = fastedge_wire::synth::marker(frame) {
                    seqs.insert(seq);
                }
            })
            .unwrap();
    }
    seqs
}

/// The interface index of `dev` in namespace `ns`.
fn ifindex(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", dev])
        .output()
        .unwrap();
    assert!(out.status.success(), "{dev} exists");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .to_owned()
}

/// A reload (SIGHUP) keeps the TAP outputs: the same devices (same interface index), so a
/// capture started before the reload goes on and sees the frames sent after it.
#[test]
fn tap_outputs_survive_a_reload() {
    require_tool("tcpdump", "tcpdump");
    let pair = VethPair::new();
    let dir = TempDir::new("tap-reload");
    let prefix = format!("fr{}", std::process::id() % 100_000);
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            &pair.dev_a,
            "--ways",
            "2",
            "--to",
            "tap",
            "--veth-prefix",
            &prefix,
            "--no-control",
        ],
        &[("FASTEDGE_LOG", "info")],
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let devices: Vec<String> = (0..2).map(|k| format!("{prefix}{k}")).collect();
    let indexes: Vec<String> = devices.iter().map(|d| ifindex(&pair.ns_a, d)).collect();
    let captures: Vec<Capture> = devices.iter().map(|d| tcpdump(&pair.ns_a, d)).collect();
    let send = |first_seq: &str| {
        gen(
            &pair.ns_b,
            &pair.dev_b,
            &[
                "--flows",
                "100",
                "--count",
                "500",
                "--rate",
                "5000",
                "--first-seq",
                first_seq,
            ],
        );
    };
    send("0");
    // Let the last frames through first: what this checks is the devices, not frames in flight
    // at the moment of a reload (the input is closed and opened again).
    std::thread::sleep(Duration::from_millis(500));
    split.signal(nix::sys::signal::Signal::SIGHUP);
    split.wait_for_logged(
        "reload: starting the pipeline again",
        Duration::from_secs(10),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while split.log_text().matches("split running").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pipeline did not start again: {}",
            split.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send("10000");
    std::thread::sleep(Duration::from_millis(500));
    let mut seqs = HashSet::new();
    for (k, mut capture) in captures.into_iter().enumerate() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(capture.0.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = capture.0.wait();
        let pcap = capture.1.take().unwrap().join().unwrap();
        seqs.extend(captured_seqs(&pcap, dir.path(), &format!("out{k}.pcap")));
    }
    let before = (0..500u64).filter(|s| seqs.contains(s)).count();
    let after = (10_000..10_500u64).filter(|s| seqs.contains(s)).count();
    assert_eq!(before, 500, "every frame before the reload on a TAP device");
    assert_eq!(
        after,
        500,
        "every frame after the reload reaches the captures started before it; log:\n{}",
        split.log_text()
    );
    let now: Vec<String> = devices.iter().map(|d| ifindex(&pair.ns_a, d)).collect();
    assert_eq!(
        now, indexes,
        "the same devices, not new ones of the same name"
    );
    split.terminate_cleanly(Duration::from_secs(10));
    let links = Command::new("ip")
        .args(["-n", &pair.ns_a, "-o", "link", "show"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&prefix),
        "TAP devices removed at exit"
    );
}
