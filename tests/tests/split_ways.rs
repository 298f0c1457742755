//! `fastedge split` on a veth end inside a namespace, fed crafted frames from the peer
//! namespace: every frame arrives exactly once across the ways, both directions of a flow and
//! all fragments of a datagram land on one way; `fastedge tap` streams a way to tcpdump.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_rings::shm::{way_path, Consumer};
use fastedge_tests::{
    frames::{frame_seq, udp_frame, RawSender},
    netns::VethPair,
    process::fastedge_bin,
    require_tool,
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

#[test]
fn split_delivers_every_frame_once_by_flow() {
    let pair = VethPair::new();
    let ways = 4u32;
    let split = Child(
        Command::new("ip")
            .args(["netns", "exec", &pair.ns_a])
            .arg(fastedge_bin())
            .args([
                "split",
                &pair.dev_a,
                "--ways",
                &ways.to_string(),
                "--way-kib",
                "1024",
            ])
            .env("FASTEDGE_LOG", "info")
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait for the ways, then attach a consumer to each.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut consumers = Vec::new();
    for way in 0..ways {
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
    let sent = send_traffic(&pair, 200);
    let total = sent.flow_of.len() + sent.fragments.len();

    let mut way_of_seq: HashMap<u32, u32> = HashMap::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while way_of_seq.len() < total && Instant::now() < deadline {
        for (way, consumer) in consumers.iter_mut().enumerate() {
            consumer.read_batch(usize::MAX, |record| {
                if let Some(seq) = frame_seq(record.data) {
                    let ours = sent.flow_of.contains_key(&seq) || sent.fragments.contains(&seq);
                    if ours && way_of_seq.insert(seq, way as u32).is_some() {
                        duplicates += 1;
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        "200 flows spread over all {ways} ways: {used:?}"
    );
    let fragment_ways: Vec<_> = sent.fragments.iter().map(|s| way_of_seq[s]).collect();
    assert!(
        fragment_ways.windows(2).all(|w| w[0] == w[1]),
        "fragments together: {fragment_ways:?}"
    );

    // Summary at exit names the counters.
    let mut split = split;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(split.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = std::mem::replace(&mut split.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(
        log.contains("split stopped") && log.contains("ways delivered/dropped-full"),
        "{log}"
    );
    for way in 0..ways {
        let _ = std::fs::remove_file(way_path(&pair.dev_a, way));
    }
}

#[test]
fn tap_streams_a_way_to_tcpdump() {
    require_tool("tcpdump", "tcpdump");
    let pair = VethPair::new();
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
    let _ = std::fs::remove_file(way_path(&pair.dev_a, 0));
}
