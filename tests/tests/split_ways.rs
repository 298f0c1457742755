//! `fastedge split` on a veth end inside a namespace, fed crafted frames from the peer
//! namespace: every frame arrives exactly once across the ways, both directions of a flow and
//! all fragments of a datagram land on one way; jumbo frames arrive whole; `fastedge tap`
//! streams a way to tcpdump, and sleeps while there is nothing to read.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_rings::shm::{wait_any, way_path, Consumer};
use fastedge_tests::{
    frames::{frame_seq, udp_frame, RawSender},
    netns::{ip, VethPair},
    process::fastedge_bin,
    require_tool,
    ways::{gen, WayFiles},
};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the test sent: sequence number → (flow id, direction or fragment tag).
struct Sent {
    flow_of: HashMap<u32, u32>,
    fragments: Vec<u32>,
}

fn send_traffic(pair: &VethPair, flows: u32) -> Sent {
    let mac: Vec<u8> = pair
        .mac_a
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let mac: [u8; 6] = mac.try_into().unwrap();
    let ns_b = pair.ns_b.clone();
    let dev_b = pair.dev_b.clone();
    VethPair::in_netns(&ns_b, move || {
        let sender = RawSender::open(&dev_b).expect("raw socket in namespace B");
        let mut flow_of = HashMap::new();
        let mut seq = 0u32;
        let server = (Ipv4Addr::new(10, 77, 0, 1), 443);
        for flow in 0..flows {
            let client = (
                Ipv4Addr::new(10, 78, (flow >> 8) as u8, flow as u8),
                20_000 + flow as u16,
            );
            // Both directions of the flow, as a mirror port would see them.
            for (src, dst) in [(client, server), (server, client), (client, server)] {
                sender.send(&udp_frame(mac, src, dst, seq, 0)).unwrap();
                flow_of.insert(seq, flow);
                seq += 1;
            }
            if flow % 16 == 15 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // A fragmented datagram: first fragment (ports, MF) and a later one (no ports).
        let client = (Ipv4Addr::new(10, 79, 0, 9), 5353);
        let mut fragments = Vec::new();
        for field in [0x2000u16, 0x0003] {
            sender
                .send(&udp_frame(mac, client, server, seq, field))
                .unwrap();
            fragments.push(seq);
            seq += 1;
        }
        Sent { flow_of, fragments }
    })
}

/// Starts `fastedge COMMAND DEV --ways N …` inside namespace A.
fn start_engine(pair: &VethPair, command: &str, ways: u32, way_kib: u32) -> Child {
    start_engine_with(pair, command, ways, way_kib, &[])
}

/// The same with more arguments.
fn start_engine_with(
    pair: &VethPair,
    command: &str,
    ways: u32,
    way_kib: u32,
    more: &[&str],
) -> Child {
    Child(
        Command::new("ip")
            .args(["netns", "exec", &pair.ns_a])
            .arg(fastedge_bin())
            .args([
                command,
                &pair.dev_a,
                "--ways",
                &ways.to_string(),
                "--way-kib",
                &way_kib.to_string(),
            ])
            .args(more)
            .env("FASTEDGE_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Attaches a consumer to each of `ways` ways once they exist.
fn attach(pair: &VethPair, ways: std::ops::Range<u32>) -> Vec<Consumer> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut consumers = Vec::new();
    for way in ways {
        loop {
            match Consumer::open(&pair.dev_a, way) {
                Ok(c) => break consumers.push(c),
                Err(e) => {
                    assert!(Instant::now() < deadline, "way {way} never appeared: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    consumers
}

/// Reads the ways until `expected` of our frames were seen (or 10 s); returns, per sequence
/// number, the ways it arrived on.
fn collect(
    consumers: &mut [Consumer],
    is_ours: impl Fn(u32) -> bool,
    expected: usize,
) -> HashMap<u32, Vec<u32>> {
    let mut seen: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while count < expected && Instant::now() < deadline {
        for (way, consumer) in consumers.iter_mut().enumerate() {
            consumer.read_batch(usize::MAX, |record| {
                if let Some(seq) = frame_seq(record.data).filter(|s| is_ours(*s)) {
                    seen.entry(seq).or_default().push(way as u32);
                    count += 1;
                }
            });
        }
        wait_any(
            consumers,
            deadline.saturating_duration_since(Instant::now()),
        );
    }
    seen
}

/// Stops an engine with SIGTERM and returns its exit status and log.
fn stop_engine(engine: Child) -> (std::process::ExitStatus, String) {
    let mut engine = engine;
    let pid = nix::unistd::Pid::from_raw(engine.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = std::mem::replace(&mut engine.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn split_by_flow(ways: u32, flows: u32, way_kib: u32) {
    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let split = start_engine(&pair, "split", ways, way_kib);
    let mut consumers = attach(&pair, 0..ways);
    let sent = send_traffic(&pair, flows);
    let total = sent.flow_of.len() + sent.fragments.len();
    let is_ours = |s: u32| sent.flow_of.contains_key(&s) || sent.fragments.contains(&s);
    let seen = collect(&mut consumers, is_ours, total);
    let duplicates = seen.values().filter(|w| w.len() > 1).count();
    let way_of_seq: HashMap<u32, u32> = seen.iter().map(|(s, w)| (*s, w[0])).collect();
    assert_eq!(duplicates, 0, "no frame delivered twice");
    assert_eq!(way_of_seq.len(), total, "every frame sent arrived");
    let mut flow_way: HashMap<u32, u32> = HashMap::new();
    for (seq, flow) in &sent.flow_of {
        let way = way_of_seq[seq];
        let first = *flow_way.entry(*flow).or_insert(way);
        assert_eq!(first, way, "both directions of flow {flow} on one way");
    }
    let used: std::collections::HashSet<_> = flow_way.values().collect();
    assert!(
        used.len() == ways as usize,
        "{flows} flows spread over all {ways} ways: {used:?}"
    );
    let fragment_ways: Vec<_> = sent.fragments.iter().map(|s| way_of_seq[s]).collect();
    assert!(
        fragment_ways.windows(2).all(|w| w[0] == w[1]),
        "fragments together: {fragment_ways:?}"
    );

    // Summary at exit names the counters.
    let (status, log) = stop_engine(split);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("split stopped") && log.contains("ways delivered/dropped-full"),
        "{log}"
    );
}

#[test]
fn split_delivers_every_frame_once_by_flow() {
    split_by_flow(4, 200, 1024);
}

#[test]
fn split_over_30_and_64_ways() {
    split_by_flow(30, 600, 64);
    split_by_flow(64, 900, 64);
}

#[test]
fn split_over_256_ways() {
    split_by_flow(256, 4000, 64);
}

/// Jumbo frames on a 9,000-byte MTU: `fastedge gen` sends 9,014-byte frames through AF_XDP
/// in multi-buffer mode, split takes them in with a frags XDP program and a multi-buffer
/// AF_XDP socket (1,792 bytes per buffer), and every frame reaches its way once, whole.
#[test]
fn jumbo_frames_reach_the_ways_whole() {
    jumbo_frames_to_ways("auto", "XDP native mode");
}

/// The same read with AF_PACKET.
#[test]
fn jumbo_frames_reach_the_ways_whole_through_af_packet() {
    jumbo_frames_to_ways("af-packet", "AF_PACKET TPACKET_V3");
}

/// 400 frames of 9,014 bytes into `split --mode MODE` over 2 ways; `logged`: the input kind
/// its log must name.
fn jumbo_frames_to_ways(mode: &str, logged: &str) {
    let pair = VethPair::new();
    // Above the interface's MTU, gen refuses and says how to raise it.
    let refused = Command::new("ip")
        .args(["netns", "exec", &pair.ns_b])
        .arg(fastedge_bin())
        .args(["gen", &pair.dev_b, "--size", "9018", "--count", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("has an MTU of 1500 bytes") && stderr.contains("mtu 9000"),
        "{stderr}"
    );
    ip(&["-n", &pair.ns_a, "link", "set", &pair.dev_a, "mtu", "9000"]);
    ip(&["-n", &pair.ns_b, "link", "set", &pair.dev_b, "mtu", "9000"]);
    let _files = WayFiles(pair.dev_a.clone());
    let engine = start_engine_with(&pair, "split", 2, 8192, &["--mode", mode]);
    let mut consumers = attach(&pair, 0..2);
    let sent = 400;
    let gen_log = gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--size", "9018", "--flows", "40", "--count", "400", "--rate", "4000", "--tx", "af-xdp",
        ],
    );
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut flows_on = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < sent && Instant::now() < deadline {
        for (way, consumer) in consumers.iter_mut().enumerate() {
            consumer.read_batch(usize::MAX, |record| {
                let Some((flow, seq)) = fastedge_wire::synth::marker(record.data) else {
                    return;
                };
                assert_eq!(record.data.len(), 9014, "frame {seq}: its length");
                assert!(
                    fastedge_wire::synth::payload_intact(record.data),
                    "frame {seq} arrived changed"
                );
                *seen.entry(seq).or_default() += 1;
                flows_on[way].insert(flow);
            });
        }
        wait_any(&consumers, Duration::from_millis(100));
    }
    let (status, log) = stop_engine(engine);
    assert!(status.success(), "{log}");
    assert_eq!(
        seen.len(),
        sent,
        "every jumbo frame reached a way; gen: {gen_log}\nsplit: {log}"
    );
    assert!(seen.values().all(|&n| n == 1), "each frame once");
    assert!(
        flows_on[0].is_disjoint(&flows_on[1]),
        "a flow's frames on one way"
    );
    assert!(log.contains(logged), "{log}");
    if mode == "auto" {
        assert!(log.contains("multi_buffer=true"), "{log}");
    }
}

#[test]
fn dup_delivers_every_frame_to_every_way() {
    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let ways = 3;
    let dup = start_engine(&pair, "dup", ways, 1024);
    let mut consumers = attach(&pair, 0..ways);
    let sent = send_traffic(&pair, 50);
    let total = sent.flow_of.len() + sent.fragments.len();
    let seen = collect(
        &mut consumers,
        |s| sent.flow_of.contains_key(&s) || sent.fragments.contains(&s),
        total * ways as usize,
    );
    assert_eq!(seen.len(), total, "every frame arrived");
    for (seq, got) in &seen {
        let mut got = got.clone();
        got.sort_unstable();
        assert_eq!(
            got,
            (0..ways).collect::<Vec<_>>(),
            "frame {seq} on every way once"
        );
    }
    let (status, log) = stop_engine(dup);
    assert!(status.success(), "{log}");
}

#[test]
fn a_killed_consumer_costs_only_its_own_way() {
    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let split = start_engine(&pair, "split", 2, 64);
    // Way 0's consumer keeps reading all along, on its own thread.
    let mut way0 = attach(&pair, 0..1).pop().unwrap();
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let way0_reader = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            let mut frames = 0u64;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                way0.read_batch(usize::MAX, |r| {
                    if frame_seq(r.data).is_some() {
                        frames += 1;
                    }
                });
                way0.wait_readable(Duration::from_millis(50));
            }
            way0.read_batch(usize::MAX, |_| frames += 1);
            (frames, way0.counters())
        })
    };
    let tap = |count: &str| {
        Child(
            Command::new(fastedge_bin())
                .args(["tap", &format!("{}:1", pair.dev_a), "--count", count])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let first = tap("1000000");
    std::thread::sleep(Duration::from_millis(300));
    let burst = |flows| send_traffic(&pair, flows);
    let before = burst(100);
    // SIGKILL the way-1 consumer mid-stream; way 1 fills while nobody reads it.
    let mut first = first;
    first.0.kill().unwrap();
    let _ = first.0.wait();
    let during = burst(1500);
    // A new consumer attaches to way 1 (taking over the dead one's slot) and gets new traffic.
    let second = tap("5");
    std::thread::sleep(Duration::from_millis(300));
    let after = burst(20);
    let mut second = second;
    let pcap = std::mem::replace(&mut second.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    assert!(pcap.status.success());
    assert!(
        pcap.stdout.len() > 24,
        "the new consumer of way 1 received frames"
    );
    // Way 0 lost nothing at any time: every frame that hashed to it arrived.
    std::thread::sleep(Duration::from_millis(200));
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let (way0_frames, (delivered0, dropped0)) = way0_reader.join().unwrap();
    assert_eq!(
        dropped0, 0,
        "no drops on the way whose consumer kept reading"
    );
    assert!(way0_frames > 0 && delivered0 >= way0_frames);
    let sent = before.flow_of.len() + during.flow_of.len() + after.flow_of.len();
    let (status, log) = stop_engine(split);
    assert!(status.success(), "split kept running until stopped: {log}");
    let dropped1: u64 = log
        .split(" 1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '/').next())
        .and_then(|pair| pair.split('/').nth(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("way 1 counters in: {log}"));
    assert!(
        dropped1 > 0,
        "the dead consumer's way counted drops ({sent} frames sent): {log}"
    );
}

/// Issue 14, defect 9: a consumer of way 1 writes garbage read positions, then truncates its
/// position file. The distributor neither overwrites unread data nor dies (no SIGBUS), counts
/// the bad positions, and way 0's consumer loses nothing.
#[test]
fn a_hostile_consumer_harms_only_its_own_way() {
    use std::os::unix::fs::FileExt;

    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let split = start_engine(&pair, "split", 2, 64);
    let mut consumers = attach(&pair, 0..2);
    let mut way0 = consumers.remove(0);
    // The hostile consumer: way 1's position file, written behind the consumer API's back.
    let positions = std::fs::OpenOptions::new()
        .write(true)
        .open(fastedge_rings::shm::position_path(&way_path(
            &pair.dev_a,
            1,
        )))
        .unwrap();
    // The data file is the distributor's alone: a consumer cannot write (or truncate) it.
    let data = way_path(&pair.dev_a, 1);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", data.display());
    let mut way0_frames = 0u64;
    let mut read_way0 = |way0: &mut Consumer| {
        way0.read_batch(usize::MAX, |r| {
            if frame_seq(r.data).is_some() {
                way0_frames += 1;
            }
        });
    };
    let mut sent = 0;
    for (round, garbage) in [u64::MAX, 1 << 62, 12345].into_iter().enumerate() {
        positions.write_all_at(&garbage.to_le_bytes(), 128).unwrap();
        let traffic = send_traffic(&pair, 300);
        sent += traffic.flow_of.len() as u64;
        std::thread::sleep(Duration::from_millis(100 * (round as u64 + 1)));
        read_way0(&mut way0);
    }
    // Truncated: the distributor must not fault on it.
    positions.set_len(0).unwrap();
    let traffic = send_traffic(&pair, 300);
    sent += traffic.flow_of.len() as u64;
    std::thread::sleep(Duration::from_millis(300));
    read_way0(&mut way0);
    let (delivered0, dropped0) = way0.counters();
    assert_eq!(dropped0, 0, "way 0 dropped nothing");
    assert!(
        delivered0 >= way0_frames,
        "{delivered0} delivered, {way0_frames} read"
    );
    assert!(
        way0_frames > 0 && way0_frames < sent,
        "{way0_frames} of {sent}"
    );
    // Way 1's API consumer shares the truncated file: touching its mapping would fault in
    // this (the consumer's) process, so it is not dropped.
    std::mem::forget(consumers);
    let (status, log) = stop_engine(split);
    assert!(status.success(), "split kept running until stopped: {log}");
    assert!(
        log.contains("(bad consumer positions"),
        "bad positions counted: {log}"
    );
}

#[test]
fn tap_streams_a_way_to_tcpdump_and_tshark() {
    require_tool("tcpdump", "tcpdump");
    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let _split = Child(
        Command::new("ip")
            .args(["netns", "exec", &pair.ns_a])
            .arg(fastedge_bin())
            .args(["split", &pair.dev_a, "--ways", "1", "--way-kib", "1024"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !way_path(&pair.dev_a, 0).exists() {
        assert!(Instant::now() < deadline, "the way never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let tap = Child(
        Command::new(fastedge_bin())
            .args(["tap", &format!("{}:0", pair.dev_a), "--count", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    send_traffic(&pair, 4);
    let mut tap = tap;
    let pcap = std::mem::replace(&mut tap.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    assert!(pcap.status.success());
    let mut tcpdump = Command::new("tcpdump")
        .args(["-nn", "-r", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    tcpdump
        .stdin
        .take()
        .unwrap()
        .write_all(&pcap.stdout)
        .unwrap();
    let out = tcpdump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().count(), 10, "{text}");
    assert!(
        text.contains("IP 10.78.0.0.20000 > 10.77.0.1.443: UDP"),
        "{text}"
    );
    assert!(
        text.contains("IP 10.77.0.1.443 > 10.78.0.0.20000: UDP"),
        "{text}"
    );

    // tshark reads the same stream from a pipe, with the addresses and ports sent.
    require_tool("tshark", "tshark");
    let mut tshark = Command::new("tshark")
        .args([
            "-r",
            "-",
            "-T",
            "fields",
            "-e",
            "ip.src",
            "-e",
            "udp.dstport",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tshark
        .stdin
        .take()
        .unwrap()
        .write_all(&pcap.stdout)
        .unwrap();
    let out = tshark.wait_with_output().unwrap();
    let fields = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fields.lines().count(), 10, "{fields}");
    assert!(fields.lines().any(|l| l == "10.78.0.0\t443"), "{fields}");
    assert!(fields.lines().any(|l| l == "10.77.0.1\t20000"), "{fields}");
}

/// CPU time (ns, from schedstat) and voluntary context switches of process `pid` so far.
fn cpu_and_switches(pid: u32) -> (u64, u64) {
    let schedstat = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    let cpu = schedstat
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let switches = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (cpu, switches)
}

/// Issue 17, item 5: a consumer with nothing to read sleeps (no polling): an idle `fastedge
/// tap` uses next to no CPU and hardly wakes up, and each frame, when it comes, reaches the
/// tap's output at once (the distributor wakes it), not at the tap's next timeout.
#[test]
fn an_idle_tap_sleeps_and_each_frame_wakes_it() {
    const FRAMES: u32 = 20;
    let pair = VethPair::new();
    let _ways = WayFiles(pair.dev_a.clone());
    let split = start_engine(&pair, "split", 1, 256);
    drop(attach(&pair, 0..1));
    let mut tap = Child(
        Command::new(fastedge_bin())
            .args([
                "tap",
                &format!("{}:0", pair.dev_a),
                "--count",
                &FRAMES.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut stdout = tap.0.stdout.take().unwrap();
    let mut header = [0u8; 24];
    std::io::Read::read_exact(&mut stdout, &mut header).unwrap();
    // Idle: nothing arrives for 2 s.
    std::thread::sleep(Duration::from_millis(300));
    let (cpu_before, switches_before) = cpu_and_switches(tap.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu_after, switches_after) = cpu_and_switches(tap.0.id());
    let idle_cpu = Duration::from_nanos(cpu_after - cpu_before);
    let idle_wakes = switches_after - switches_before;
    // Then one frame at a time, 150 ms apart (longer than a tap's wait), each timed from its
    // sending to its record on the tap's output.
    let mac: [u8; 6] = pair
        .mac_a
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    let ns_b = pair.ns_b.clone();
    let dev_b = pair.dev_b.clone();
    let sender = std::thread::spawn(move || {
        VethPair::in_netns(&ns_b, move || {
            let sender = RawSender::open(&dev_b).unwrap();
            let client = (Ipv4Addr::new(10, 78, 0, 1), 20_000);
            let server = (Ipv4Addr::new(10, 77, 0, 1), 443);
            (0..FRAMES)
                .map(|seq| {
                    std::thread::sleep(Duration::from_millis(150));
                    let sent = Instant::now();
                    sender
                        .send(&udp_frame(mac, client, server, seq, 0))
                        .unwrap();
                    sent
                })
                .collect::<Vec<Instant>>()
        })
    });
    let mut arrivals = HashMap::new();
    let mut from_receive = Vec::new();
    for _ in 0..FRAMES {
        let mut record = [0u8; 16];
        std::io::Read::read_exact(&mut stdout, &mut record).unwrap();
        let len = u32::from_le_bytes(record[8..12].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        std::io::Read::read_exact(&mut stdout, &mut data).unwrap();
        let (at, wall) = (Instant::now(), std::time::SystemTime::now());
        let received =
            Duration::from_secs(u32::from_le_bytes(record[..4].try_into().unwrap()).into())
                + Duration::from_nanos(u32::from_le_bytes(record[4..8].try_into().unwrap()).into());
        let wall = wall.duration_since(std::time::UNIX_EPOCH).unwrap();
        from_receive.push(wall.saturating_sub(received));
        arrivals.insert(frame_seq(&data).unwrap(), at);
    }
    let sent = sender.join().unwrap();
    let mut latencies: Vec<Duration> = (0..FRAMES)
        .map(|seq| arrivals[&seq].saturating_duration_since(sent[seq as usize]))
        .collect();
    latencies.sort_unstable();
    from_receive.sort_unstable();
    println!(
        "idle tap over 2 s: {idle_cpu:?} CPU, {idle_wakes} wake-ups; send → tap output: median {:?}, max {:?}; split's receive → tap output: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        from_receive[from_receive.len() / 2],
        from_receive[from_receive.len() - 1],
    );
    assert!(tap.0.wait().unwrap().success());
    assert!(
        idle_cpu < Duration::from_millis(20),
        "an idle tap sleeps: {idle_cpu:?} of CPU in 2 s"
    );
    assert!(
        idle_wakes < 40,
        "an idle tap wakes only at its timeouts: {idle_wakes} wake-ups in 2 s"
    );
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(50),
        "frames wake the tap, not its timeout: {latencies:?}"
    );
    let (status, log) = stop_engine(split);
    assert!(status.success(), "{log}");
}
