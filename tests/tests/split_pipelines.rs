//! `fastedge gen` on one side of a veth pair, `fastedge split` on the other: every generated
//! frame arrives exactly once, both directions of each flow on one way, over XDP (native and
//! SKB) and AF_PACKET inputs; pipelines from TOML (dup to groups balanced within each, capture
//! files as outputs, two interfaces merged); a capture file in → split → capture files out
//! keeps every packet; the live line on a terminal; bad pipelines refused with the reason.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use fastedge_rings::pcap::{CaptureFormat, PcapSink, PcapSource, ReplaySpeed, Rotation};
use fastedge_tests::{
    frames::{udp6_frame, udp_frame},
    netns::{ip, VethPair},
    process::{fastedge_bin, Fastedge},
    require_tool,
    ways::{attach, gen, gen_per_cpu, read_markers, Arrivals, WayFiles},
    TempDir,
};
use fastedge_wire::synth::{TrafficSpec, Transport, MAX_FRAME};

const LOG: &[(&str, &str)] = &[("FASTEDGE_LOG", "info")];

/// Checks that sequence numbers `seqs` each arrived exactly once, and that every flow's
/// frames (both directions) are on one way; returns the ways used.
fn check_once_by_flow(
    arrivals: &Arrivals,
    seqs: std::ops::Range<u64>,
    context: &str,
) -> HashSet<usize> {
    let mut flow_way: HashMap<u32, usize> = HashMap::new();
    let mut missing = Vec::new();
    for seq in seqs.clone() {
        match arrivals.get(&seq).map(Vec::as_slice) {
            None => missing.push(seq),
            Some([(way, flow)]) => {
                let first = *flow_way.entry(*flow).or_insert(*way);
                assert_eq!(first, *way, "flow {flow}: both directions on one way");
            }
            Some(copies) => panic!("frame {seq} delivered {} times: {copies:?}", copies.len()),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} frames missing, e.g. {:?}; {context}",
        missing.len(),
        seqs.end - seqs.start,
        &missing[..missing.len().min(10)]
    );
    flow_way.values().copied().collect()
}

fn gen_to_split(mode: &str, ways: u32, expect_mode: &str) {
    gen_to_split_sent_with(
        mode,
        ways,
        expect_mode,
        &["--tx", "af-packet", "--rate", "20000"],
    );
}

/// The same with these generator options (transmit path, rate).
fn gen_to_split_sent_with(
    mode: &str,
    ways: u32,
    expect_mode: &str,
    gen_options: &[&str],
) -> String {
    gen_to_split_with(mode, ways, expect_mode, &[], gen_options)
}

/// The same with more options for split; returns its log.
fn gen_to_split_with(
    mode: &str,
    ways: u32,
    expect_mode: &str,
    split_options: &[&str],
    gen_options: &[&str],
) -> String {
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    let ways_text = ways.to_string();
    let mut args = vec![
        "split",
        &pair.dev_a,
        "--ways",
        &ways_text,
        "--way-kib",
        "256",
        "--mode",
        mode,
    ];
    args.extend_from_slice(split_options);
    let mut split = Fastedge::start_in(Some(&pair.ns_a), &args, LOG);
    split.wait_for_logged("split running", Duration::from_secs(15));
    let mut consumers = attach(&pair.dev_a, 0..ways);
    let count: u64 = 20_000;
    let reader = std::thread::spawn(move || {
        let arrivals = read_markers(&mut consumers, count as usize, Duration::from_secs(3));
        (arrivals, consumers)
    });
    gen(
        &pair.ns_b,
        &pair.dev_b,
        &["--flows", "1000", "--count", &count.to_string()]
            .iter()
            .copied()
            .chain(gen_options.iter().copied())
            .collect::<Vec<_>>(),
    );
    let (arrivals, _consumers) = reader.join().unwrap();
    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    let used = check_once_by_flow(&arrivals, 0..count, &log);
    assert_eq!(used.len(), ways as usize, "1000 flows over all {ways} ways");
    assert!(log.contains(expect_mode), "input mode named: {log}");
    assert!(
        log.contains("split stopped") && log.contains("received 20000"),
        "{log}"
    );
    log
}

#[test]
fn gen_to_split_over_xdp_native_4_and_64_ways() {
    gen_to_split("auto", 4, "XDP native mode");
    gen_to_split("xdp-native", 64, "XDP native mode");
}

/// A ring size whose UMEM the process may not lock stops split with the reason, in `auto`
/// mode too (where a failing AF_XDP socket would otherwise mean a quiet AF_PACKET).
#[test]
fn an_xdp_ring_too_large_to_lock_is_an_error_not_a_fallback() {
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    // No CAP_IPC_LOCK (dropped from the bounding set, so the exec'd binary lacks it) and an
    // RLIMIT_MEMLOCK of 8 MiB: rings of 16,384 need 64 MiB of UMEM.
    let command = format!(
        "exec prlimit --memlock=8388608 timeout 20 {} split {} --mode auto --xdp-ring 16384 --no-control",
        fastedge_tests::process::fastedge_bin().display(),
        pair.dev_a
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns_a,
            "capsh",
            "--drop=cap_ipc_lock",
            "--",
            "-c",
        ])
        .arg(&command)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(124),
        "still running: fell back? {stderr}"
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RLIMIT_MEMLOCK") && stderr.contains("UMEM"),
        "the reason named: {stderr}"
    );
}

/// `--xdp-ring`: the AF_XDP rings are the size asked (every frame still arrives); without
/// it, 1024, and the log says which; a size the sockets cannot take is refused before
/// anything opens.
#[test]
fn the_xdp_ring_size_is_the_one_asked_for_or_the_default() {
    // 5,000 frames/s: the 512-entry fill ring of a 256-entry ring lasts 100 ms, longer than
    // the engine waits for a CPU while the whole suite runs on two (at 20,000 frames/s, 25
    // ms, it once ran empty and the kernel dropped 13 frames).
    let log = gen_to_split_with(
        "xdp-native",
        4,
        "XDP native mode",
        &["--xdp-ring", "256"],
        &["--tx", "af-packet", "--rate", "5000"],
    );
    assert!(
        log.contains("AF_XDP rings (--xdp-ring)")
            && log.contains("ring=256")
            && log.contains("umem_mib=1"),
        "{log}"
    );
    let log = gen_to_split_sent_with(
        "xdp-native",
        4,
        "XDP native mode",
        &["--tx", "af-packet", "--rate", "20000"],
    );
    assert!(
        log.contains("AF_XDP rings (default)") && log.contains("ring=1024"),
        "{log}"
    );
    for bad in ["1000", "32", "32768", "many"] {
        let out = std::process::Command::new(fastedge_tests::process::fastedge_bin())
            .args(["split", "lo", "--xdp-ring", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--xdp-ring"), "{bad}: {stderr}");
    }
}

#[test]
fn gen_sending_with_af_xdp_to_split() {
    gen_to_split_sent_with(
        "xdp-native",
        8,
        "XDP native mode",
        &["--tx", "af-xdp", "--rate", "20000"],
    );
}

#[test]
fn gen_af_xdp_burst_puts_every_frame_on_the_wire() {
    // Unpaced, the generator fills its TX ring faster than one wake-up sends (copy mode sends
    // a bounded batch per wake-up): every frame must still leave. The receiver may not keep up
    // with a burst; what it misses it counts, so received + kernel drops = sent.
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            &pair.dev_a,
            "--ways",
            "2",
            "--way-kib",
            "1024",
            "--no-control",
            // XDP's drop accounting is what this counts (auto would take AF_PACKET on veth).
            "--mode",
            "xdp-native",
        ],
        LOG,
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let log = gen(
        &pair.ns_b,
        &pair.dev_b,
        &["--tx", "af-xdp", "--count", "5000"],
    );
    assert!(log.contains("sent 5000 frames"), "{log}");
    std::thread::sleep(Duration::from_millis(500));
    split.terminate_cleanly(Duration::from_secs(10));
    let summary = split.log_text();
    let number_after = |label: &str| -> u64 {
        summary
            .split(label)
            .nth(1)
            .and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .find(|w| !w.is_empty())
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {summary}"))
    };
    let received = number_after("received ");
    let dropped = number_after("other ");
    assert_eq!(received + dropped, 5000, "{summary}");
}

#[test]
fn auto_mode_says_which_path_it_took_and_why() {
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    // veth runs native XDP but offers no zero-copy AF_XDP: XDP with AF_XDP in copy mode, the
    // path that sustains the most here (BENCHMARKS.md), even with nothing needing XDP.
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &["split", &pair.dev_a, "--ways", "2", "--no-control"],
        LOG,
    );
    let why = split.wait_for_logged("mode auto:", Duration::from_secs(15));
    assert!(
        why.contains("XdpCopy") && why.contains("without zero-copy"),
        "{why}"
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let mut ways = attach(&pair.dev_a, 0..2);
    gen(
        &pair.ns_b,
        &pair.dev_b,
        &["--count", "200", "--rate", "10000", "--flows", "8"],
    );
    let arrivals = read_markers(&mut ways, 200, Duration::from_secs(5));
    assert_eq!(
        arrivals.len(),
        200,
        "every frame through the path auto took"
    );
    drop(ways);
    split.terminate_cleanly(Duration::from_secs(10));
    assert!(
        split.log_text().contains("XDP native"),
        "{}",
        split.log_text()
    );
}

#[test]
fn gen_to_split_over_xdp_skb_30_ways() {
    gen_to_split("xdp-skb", 30, "XDP skb mode");
}

#[test]
fn gen_to_split_over_af_packet_4_and_30_ways() {
    gen_to_split("af-packet", 4, "AF_PACKET TPACKET_V3");
    gen_to_split("af-packet", 30, "AF_PACKET TPACKET_V3");
}

#[test]
fn one_engine_thread_per_receive_queue_each_flow_on_one_way() {
    threads_per_queue("auto", "0-1");
}

/// The same read with AF_PACKET: a ring per receive queue in a PACKET_FANOUT_QM group.
#[test]
fn one_af_packet_ring_and_thread_per_receive_queue_each_flow_on_one_way() {
    threads_per_queue("af-packet", "0-1");
}

/// Two AF_XDP queues and one CPU to run them: one thread serves both sockets (it was a thread
/// per queue whatever `--cores` said, two busy threads on one CPU).
#[test]
fn one_cpu_one_engine_thread_serving_every_receive_queue() {
    threads_per_queue("auto", "0");
}

/// The same with AF_PACKET: one ring, one thread.
#[test]
fn one_cpu_one_af_packet_thread() {
    threads_per_queue("af-packet", "0");
}

fn threads_per_queue(mode: &str, cores: &str) {
    // Two receive queues; two generators on CPUs 0 and 1 send the same 500 flows, so frames of
    // one flow arrive on both queues, through both engine threads (or the one thread of a
    // single CPU), and must meet on one way.
    let threads = if cores == "0" { 1 } else { 2 };
    let pair = VethPair::with_queues(2);
    let _files = WayFiles(pair.dev_a.clone());
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &[
            "split",
            &pair.dev_a,
            "--ways",
            "8",
            "--way-kib",
            "256",
            "--cores",
            cores,
            "--mode",
            mode,
        ],
        LOG,
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let log = split.log_text();
    let running = log
        .lines()
        .find(|line| line.contains("split running"))
        .unwrap_or_default();
    assert!(
        running.contains(&format!(" threads={threads} ")),
        "one thread per queue, at most one per CPU: {log}"
    );
    let mut consumers = attach(&pair.dev_a, 0..8);
    assert!(
        consumers.iter().all(|c| c.lanes() == threads),
        "a lane per thread"
    );
    let reader = std::thread::spawn(move || {
        let arrivals = read_markers(&mut consumers, 16_000, Duration::from_secs(3));
        let mut lanes = vec![0u64; threads];
        for consumer in &consumers {
            for (lane, (delivered, _)) in consumer.lane_counters().into_iter().enumerate() {
                lanes[lane] += delivered;
            }
        }
        (arrivals, lanes)
    });
    gen_per_cpu(
        &pair.ns_b,
        &pair.dev_b,
        &[("0", "0"), ("1", "100000")],
        &["--flows", "500", "--count", "8000", "--rate", "20000"],
    );
    let (arrivals, lanes) = reader.join().unwrap();
    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    assert!(
        lanes.iter().all(|&n| n >= 16_000 / threads as u64),
        "every thread delivered its queues' frames (per lane {lanes:?}); {log}"
    );
    // Flow numbers are the same in both runs: check the union for one way per flow.
    let mut flow_way: HashMap<u32, usize> = HashMap::new();
    for range in [0..8000u64, 100_000..108_000] {
        check_once_by_flow(&arrivals, range.clone(), &log);
        for seq in range {
            let (way, flow) = arrivals[&seq][0];
            assert_eq!(
                *flow_way.entry(flow).or_insert(way),
                way,
                "flow {flow} across queues"
            );
        }
    }
    if mode == "af-packet" {
        // A ring per thread: one ring reads every queue when there is one thread.
        let rings = format!("AF_PACKET TPACKET_V3, {threads} queue(s)");
        assert!(log.contains(&rings), "{log}");
        assert_eq!(log.contains("PACKET_FANOUT_QM"), threads > 1, "{log}");
    } else {
        assert!(log.contains("2 queue(s)"), "{log}");
    }
}

/// Reads every packet of a capture file.
fn read_capture(path: &Path) -> Vec<(Vec<u8>, u64)> {
    let mut source = PcapSource::open(path, ReplaySpeed::Fast).unwrap();
    let mut packets = Vec::new();
    while !source.finished() {
        source
            .receive(1024, |f, ts| packets.push((f.to_vec(), ts)))
            .unwrap();
    }
    packets
}

fn tshark_count(path: &Path) -> usize {
    let out = Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.number",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn pcap_in_split_pcap_out_keeps_every_packet() {
    require_tool("tshark", "tshark");
    let dir = TempDir::new("pcap-split");
    // Input: 6000 generated frames of 500 flows (both directions, UDP and TCP, IPv4 and IPv6),
    // a fragmented datagram, and frames that are not IP, as pcapng with nanosecond times.
    let input = dir.path().join("in.pcapng");
    let mut sent = Vec::new();
    {
        let mut sink =
            PcapSink::create(&input, CaptureFormat::PcapNg, Rotation::default()).unwrap();
        let mut buf = [0u8; MAX_FRAME];
        for (i, (transport, v6)) in [(Transport::Udp, false), (Transport::Tcp, true)]
            .into_iter()
            .enumerate()
        {
            let spec = TrafficSpec {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
                client_base: if v6 {
                    "fd00::1:0".parse().unwrap()
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0))
                },
                server: if v6 {
                    "fd00::1".parse().unwrap()
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
                },
                server_port: 443,
                transport,
                flows: 500,
                frame_len: 200,
                both_directions: true,
            };
            for seq in 0..3000u64 {
                let n = spec.write(seq + i as u64 * 3000, &mut buf);
                sent.push((
                    buf[..n].to_vec(),
                    1_700_000_000_000_000_000 + seq * 777 + i as u64,
                ));
            }
        }
        let server = (Ipv4Addr::new(10, 77, 0, 1), 443);
        let client = (Ipv4Addr::new(10, 79, 0, 9), 5353);
        for field in [0x2000u16, 0x0003] {
            sent.push((udp_frame([2, 0, 0, 0, 0, 2], client, server, 1, field), 5));
        }
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 46]);
        sent.push((arp.clone(), 6));
        sent.push((arp, 7));
        for (frame, ts) in &sent {
            sink.write(frame, *ts);
        }
    }
    let outputs: Vec<_> = (0..4)
        .map(|k| dir.path().join(format!("out-{k}.pcap")))
        .collect();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[input]]\npcap = {:?}\n[output]\ntype = \"balance\"\nnon_ip = 3\nto = [{}]\n",
            input,
            outputs
                .iter()
                .map(|p| format!("{{ type = \"pcap\", path = {p:?} }}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let mut split = Fastedge::start(&["split", "--config", pipeline.to_str().unwrap()], LOG);
    let status = split.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", split.log_text());
    assert!(
        split.log_text().contains("non-IP 2"),
        "{}",
        split.log_text()
    );

    // Same packets, same timestamps (as multisets), each flow in one file; libpcap reads them.
    let mut got = Vec::new();
    let mut flow_file: HashMap<u32, usize> = HashMap::new();
    for (k, path) in outputs.iter().enumerate() {
        let packets = read_capture(path);
        assert_eq!(
            tshark_count(path),
            packets.len(),
            "tshark reads {}",
            path.display()
        );
        assert!(!packets.is_empty(), "{} is empty", path.display());
        for (frame, _) in &packets {
            if let Some((flow, seq)) = fastedge_wire::synth::marker(frame) {
                // Flows of the two families differ by sequence range.
                let key = flow + if seq >= 3000 { 10_000 } else { 0 };
                assert_eq!(
                    *flow_file.entry(key).or_insert(k),
                    k,
                    "flow {key} in one file"
                );
            }
        }
        got.extend(packets);
    }
    let fragments: Vec<usize> = outputs
        .iter()
        .enumerate()
        .filter(|(_, p)| read_capture(p).iter().any(|(_, ts)| *ts == 5))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        fragments.len(),
        1,
        "both fragments in one file: {fragments:?}"
    );
    assert!(
        read_capture(&outputs[3])
            .iter()
            .filter(|(_, ts)| *ts == 6 || *ts == 7)
            .count()
            == 2
    );
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "output multiset equals the input");
}

/// Split evasion (issue 14, defect 10): with the default flow hash, the fragments of a flow,
/// its IPv6 packets with more extension headers than are walked, and its whole packets (both
/// directions) all land on one output, so the observer behind it sees the whole flow.
#[test]
fn fragments_land_with_the_rest_of_their_flow_by_default() {
    let dir = TempDir::new("pcap-fragments");
    let input = dir.path().join("in.pcap");
    let mac = [2, 0, 0, 0, 0, 2];
    let mut frames = Vec::new();
    for i in 0..48u16 {
        let client = (
            Ipv4Addr::new(10, 50, (i >> 8) as u8, i as u8),
            20_000 + i * 7,
        );
        let server = (Ipv4Addr::new(10, 60, 0, 1), 53);
        let seq = u32::from(i);
        frames.push(udp_frame(mac, client, server, seq, 0));
        frames.push(udp_frame(mac, server, client, seq, 0));
        frames.push(udp_frame(mac, client, server, seq, 0x2000));
        frames.push(udp_frame(mac, client, server, seq, 0x0003));
        let client6 = (
            std::net::Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, i),
            30_000 + i * 3,
        );
        let server6 = (std::net::Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 1), 53);
        frames.push(udp6_frame(mac, client6, server6, seq, 0, None));
        frames.push(udp6_frame(mac, server6, client6, seq, 0, None));
        frames.push(udp6_frame(mac, client6, server6, seq, 12, None));
        frames.push(udp6_frame(mac, client6, server6, seq, 0, Some(0x0001)));
        frames.push(udp6_frame(mac, client6, server6, seq, 0, Some(0x0008)));
    }
    {
        let mut sink = PcapSink::create(&input, CaptureFormat::Pcap, Rotation::default()).unwrap();
        for (ts, frame) in (1u64..).zip(&frames) {
            sink.write(frame, ts);
        }
    }
    let outputs: Vec<_> = (0..4)
        .map(|k| dir.path().join(format!("out-{k}.pcap")))
        .collect();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[[input]]\npcap = {:?}\n[output]\ntype = \"balance\"\nto = [{}]\n",
            input,
            outputs
                .iter()
                .map(|p| format!("{{ type = \"pcap\", path = {p:?} }}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let mut split = Fastedge::start(&["split", "--config", pipeline.to_str().unwrap()], LOG);
    let status = split.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", split.log_text());
    // The client address of each frame → the output it went to.
    let mut flow_output: HashMap<[u8; 16], usize> = HashMap::new();
    let mut count = 0;
    let mut used = HashSet::new();
    for (k, path) in outputs.iter().enumerate() {
        for (frame, _) in read_capture(path) {
            let Ok(fastedge_wire::packet::Parsed::Ip(key)) =
                fastedge_wire::packet::parse(&frame, true)
            else {
                panic!("output {k} has a frame that is not IP: {frame:02x?}");
            };
            let client = key.src.min(key.dst);
            let first = *flow_output.entry(client).or_insert(k);
            assert_eq!(first, k, "flow of {client:02x?} on outputs {first} and {k}");
            used.insert(k);
            count += 1;
        }
    }
    assert_eq!(count, frames.len());
    assert_eq!(flow_output.len(), 96);
    assert!(used.len() > 1, "flows spread over the outputs: {used:?}");
}

#[test]
fn pipeline_dup_to_groups_balanced_within_each_plus_a_capture_file() {
    require_tool("tshark", "tshark");
    let pair = VethPair::new();
    let dir = TempDir::new("pipeline-dup");
    let name = format!("dupgrp{}", std::process::id());
    let _files = WayFiles(name.clone());
    let capture = dir.path().join("all.pcapng");
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
name = "{name}"
way_kib = 512
[[input]]
interface = "{dev}"
[output]
type = "dup"
[[output.to]]
type = "balance"
ways = 3
[[output.to]]
type = "balance"
hash = "2-tuple"
ways = 2
[[output.to]]
type = "pcap"
path = {capture:?}
"#,
            dev = pair.dev_a
        ),
    )
    .unwrap();
    let mut split = Fastedge::start_in(
        Some(&pair.ns_a),
        &["split", "--config", pipeline.to_str().unwrap()],
        LOG,
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let consumers = attach(&name, 0..5);
    let count: u64 = 6000;
    let reader = std::thread::spawn(move || {
        let mut consumers = consumers;
        let (first, second) = consumers.split_at_mut(3);
        let a = read_markers(first, count as usize, Duration::from_secs(3));
        let b = read_markers(second, count as usize, Duration::from_secs(3));
        (a, b)
    });
    gen(
        &pair.ns_b,
        &pair.dev_b,
        &[
            "--flows",
            "300",
            "--count",
            &count.to_string(),
            "--rate",
            "30000",
        ],
    );
    let (group_a, group_b) = reader.join().unwrap();
    let status = split.terminate(Duration::from_secs(10));
    let log = split.log_text();
    assert!(status.success(), "{status:?}: {log}");
    assert_eq!(check_once_by_flow(&group_a, 0..count, &log).len(), 3);
    assert_eq!(check_once_by_flow(&group_b, 0..count, &log).len(), 2);
    assert_eq!(
        tshark_count(&capture),
        count as usize,
        "the capture file has every frame"
    );
    let captured = read_capture(&capture);
    let seqs: HashSet<u64> = captured
        .iter()
        .filter_map(|(f, _)| fastedge_wire::synth::marker(f).map(|(_, s)| s))
        .collect();
    assert_eq!(seqs.len(), count as usize);
}

#[test]
fn two_interfaces_merged_into_one_split() {
    let first = VethPair::new();
    let second = VethPair::new();
    // Move the second pair's receiving end next to the first's, so one engine reads both.
    ip(&[
        "-n",
        &second.ns_a,
        "link",
        "set",
        &second.dev_a,
        "netns",
        &first.ns_a,
    ]);
    ip(&["-n", &first.ns_a, "link", "set", &second.dev_a, "up"]);
    let name = format!("merge{}", std::process::id());
    let _files = WayFiles(name.clone());
    let mut split = Fastedge::start_in(
        Some(&first.ns_a),
        &[
            "split",
            &first.dev_a,
            &second.dev_a,
            "--ways",
            "4",
            "--way-kib",
            "512",
            "--name",
            &name,
        ],
        LOG,
    );
    split.wait_for_logged("split running", Duration::from_secs(15));
    let mut consumers = attach(&name, 0..4);
    let reader =
        std::thread::spawn(move || read_markers(&mut consumers, 8000, Duration::from_secs(3)));
    std::thread::scope(|s| {
        s.spawn(|| {
            gen(
                &first.ns_b,
                &first.dev_b,
                &["--flows", "200", "--count", "4000", "--rate", "20000"],
            )
        });
        s.spawn(|| {
            gen(
                &second.ns_b,
                &second.dev_b,
                &[
                    "--flows",
                    "200",
                    "--count",
                    "4000",
                    "--rate",
                    "20000",
                    "--first-seq",
                    "100000",
                    "--client",
                    "10.2.0.0",
                ],
            )
        });
    });
    let arrivals = reader.join().unwrap();
    split.terminate_cleanly(Duration::from_secs(10));
    let log = split.log_text();
    check_once_by_flow(&arrivals, 0..4000, &log);
    check_once_by_flow(&arrivals, 100_000..104_000, &log);
    assert!(
        log.contains(&first.dev_a) && log.contains(&second.dev_a),
        "{log}"
    );
}

#[test]
fn live_line_on_a_terminal() {
    require_tool("script", "bsdutils");
    let pair = VethPair::new();
    let _files = WayFiles(pair.dev_a.clone());
    // `script` gives fastedge a pseudo-terminal as stderr, as an operator's shell would.
    let command = format!(
        "ip netns exec {} {} split {} --ways 2 --way-kib 256 & pid=$!; sleep 3; kill -TERM $pid; wait $pid",
        pair.ns_a,
        fastedge_bin().display(),
        pair.dev_a
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("FASTEDGE_LOG", "info")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pps | per way/s [") && text.contains("drops: way full 0, kernel 0"),
        "a live line per second: {text}"
    );
}

#[test]
fn bad_pipelines_and_arguments_are_refused_with_the_reason() {
    let dir = TempDir::new("bad-pipeline");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["split".into()], "give an interface"),
        (
            vec!["split".into(), "nosuchif0".into()],
            "interface \"nosuchif0\" not found",
        ),
        (
            vec!["split".into(), "--pcap".into(), "/nonexistent.pcap".into()],
            "/nonexistent.pcap",
        ),
        (
            vec![
                "split".into(),
                "lo".into(),
                "--way-kib".into(),
                "100".into(),
            ],
            "power of two",
        ),
        (
            vec!["gen".into(), "lo".into(), "--size".into(), "9019".into()],
            "between 64 and 9018",
        ),
        // This build has no netmap (the `netmap` feature is off by default): asked for, by
        // mode or by netmap's own port name, it is refused with the reason.
        (
            vec![
                "split".into(),
                "lo".into(),
                "--mode".into(),
                "netmap".into(),
            ],
            "netmap: this build has no netmap support",
        ),
        (
            vec!["split".into(), "netmap:lo".into()],
            "netmap: this build has no netmap support",
        ),
    ];
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[input]]\ninterface = \"lo\"\n[output]\ntype = \"balance\"\nways = 2\nnon_ip = 5\n",
    )
    .unwrap();
    let mut cases = cases;
    cases.push((
        vec![
            "split".into(),
            "--config".into(),
            bad.to_str().unwrap().into(),
        ],
        "non_ip = 5 is beyond its 2 outputs",
    ));
    let text = dir.path().join("text.pcap");
    std::fs::write(&text, "not a capture").unwrap();
    cases.push((
        vec![
            "split".into(),
            "--pcap".into(),
            text.to_str().unwrap().into(),
        ],
        "not a pcap or pcapng file",
    ));
    for (args, expected) in cases {
        let out = Command::new(fastedge_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // `--help` names the netmap mode and what it needs.
    let help = Command::new(fastedge_bin())
        .args(["split", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let words = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("`netmap` (only in builds with the `netmap` feature"),
        "{help}"
    );
}

#[test]
fn a_capture_replays_at_recorded_speed_or_as_fast_as_possible() {
    let dir = TempDir::new("pcap-speed");
    let input = dir.path().join("paced.pcap");
    {
        let mut sink = PcapSink::create(&input, CaptureFormat::Pcap, Rotation::default()).unwrap();
        let frame = udp_frame(
            [2, 0, 0, 0, 0, 2],
            (Ipv4Addr::new(10, 0, 0, 1), 1),
            (Ipv4Addr::new(10, 0, 0, 2), 2),
            0,
            0,
        );
        // Ten frames recorded 150 ms apart: 1.35 s from first to last.
        for i in 0..10u64 {
            sink.write(&frame, 1_700_000_000_000_000_000 + i * 150_000_000);
        }
    }
    let paced = format!("paced{}", std::process::id());
    let fast = format!("fast{}", std::process::id());
    let _files = (WayFiles(paced.clone()), WayFiles(fast.clone()));
    let run = |extra: &[&str]| {
        let started = std::time::Instant::now();
        let mut args = vec!["split", "--pcap", input.to_str().unwrap(), "--ways", "1"];
        args.extend_from_slice(extra);
        let mut split = Fastedge::start(&args, LOG);
        assert!(
            split.wait_exit(Duration::from_secs(30)).success(),
            "{}",
            split.log_text()
        );
        assert!(
            split.log_text().contains("received 10"),
            "{}",
            split.log_text()
        );
        started.elapsed()
    };
    let recorded = run(&["--recorded-speed", "--name", &paced]);
    let fast = run(&["--name", &fast]);
    assert!(
        recorded >= Duration::from_millis(1300),
        "recorded speed keeps the gaps: {recorded:?}"
    );
    assert!(
        fast < recorded,
        "as fast as possible: {fast:?} vs {recorded:?}"
    );
}
