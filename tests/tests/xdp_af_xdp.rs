//! The XDP program of `fastedge-ebpf` (C, built by libbpf-cargo) attached with libbpf-rs to one
//! end of a veth pair, in native and in SKB mode, redirecting into an AF_XDP socket (xsk-rs,
//! `fastedge-rings`) bound through the program's XSKMAP. Packets sent from the peer namespace
//! must all arrive in the socket, and the per-CPU counters must match the count sent.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    net::{SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use fastedge_ebpf::{XdpMode, XskRedirect};
use fastedge_rings::xdp::{XskBindMode, XskConfig, XskReceiver};
use fastedge_tests::netns::{ip, VethPair};

const PACKETS: u64 = 500;
const PORT: u16 = 47_000;
/// Marks our datagrams; each carries this plus its sequence number.
const MAGIC: &[u8; 8] = b"FASTEDGE";

fn run(mode: XdpMode) {
    fastedge_tests::require_tool("ip", "iproute2");
    let pair = VethPair::new();

    // Everything on side A happens on a thread inside namespace A: the netlink attach, the
    // AF_XDP socket, and the receive loop.
    let (received, counters, stats, link_line) = VethPair::in_netns(&pair.ns_a, || {
        let ifindex = nix::net::if_::if_nametoindex(pair.dev_a.as_str()).expect("ifindex");
        let mut program = XskRedirect::load().expect("loading the XDP program");
        program
            .attach(ifindex, mode)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(program.attached(), Some((ifindex, mode)));
        let config = XskConfig::new(1024, 2048, 1024, XskBindMode::Copy).unwrap();
        let mut socket = XskReceiver::open(&pair.dev_a, 0, &config).expect("AF_XDP socket");
        program
            .register_socket(0, socket.fd())
            .expect("XSKMAP insert");
        let link_line = ip(&["-d", "link", "show", "dev", &pair.dev_a]);

        // Send from namespace B while this thread receives.
        let sender = {
            let (ns_b, addr_a, addr_b) = (pair.ns_b.clone(), pair.addr_a, pair.addr_b);
            thread::spawn(move || {
                fastedge_tests::netns::enter(&ns_b);
                let socket = UdpSocket::bind(SocketAddrV4::new(addr_b, 0)).expect("bind in B");
                for seq in 0..PACKETS {
                    let mut datagram = MAGIC.to_vec();
                    datagram.extend_from_slice(&seq.to_be_bytes());
                    socket
                        .send_to(&datagram, SocketAddrV4::new(addr_a, PORT))
                        .expect("send");
                    if seq % 50 == 49 {
                        // Pace a little: the veth ring is small and this is a correctness test.
                        thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        };

        let mut seen = vec![false; PACKETS as usize];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ours = 0u64;
        let mut frames = 0u64;
        while ours < PACKETS && Instant::now() < deadline {
            frames += socket
                .receive(Duration::from_millis(100), |frame| {
                    if let Some(seq) = our_sequence(frame) {
                        if let Some(slot) = seen.get_mut(seq as usize) {
                            if !*slot {
                                *slot = true;
                                ours += 1;
                            }
                        }
                    }
                })
                .expect("receive") as u64;
        }
        sender.join().expect("sender");
        // Anything else still in flight?
        frames += socket
            .receive(Duration::from_millis(200), |_| {})
            .expect("receive") as u64;
        let counters = program.counters().expect("counters");
        let stats = socket.statistics().expect("statistics");
        ((ours, frames), counters, stats, link_line)
    });

    let (ours, frames) = received;
    eprintln!("{mode}: {ours} of {PACKETS} datagrams, {frames} frames; {counters:?}; {stats:?}");
    // `ip -d link` names the attach mode on the interface's first line: `xdp` or `xdpgeneric`.
    let first_line = link_line.lines().next().unwrap_or_default();
    let expected_mode = match mode {
        XdpMode::Native => " xdp ",
        XdpMode::Skb => " xdpgeneric ",
    };
    assert!(
        first_line.contains(expected_mode),
        "attached in {mode} mode: {link_line}"
    );
    assert_eq!(
        ours, PACKETS,
        "every datagram sent from B reached the AF_XDP socket"
    );
    assert_eq!(
        frames, PACKETS,
        "no stray frames (IPv6 off, static neighbour)"
    );
    assert_eq!(
        counters.seen, PACKETS,
        "per-CPU counter matches the count sent"
    );
    assert_eq!(counters.redirected, PACKETS);
    assert_eq!(counters.passed, 0);
    assert_eq!(
        stats.rx_ring_full + stats.rx_fill_ring_empty + stats.rx_dropped,
        0
    );
    drop(pair);
}

/// The sequence number of one of our datagrams: Ethernet, IPv4, UDP to PORT, then MAGIC.
fn our_sequence(frame: &[u8]) -> Option<u64> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != PORT {
        return None;
    }
    let payload = udp.get(8..)?;
    if payload.get(..8)? != MAGIC {
        return None;
    }
    Some(u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?))
}

#[test]
fn native_xdp_redirects_into_af_xdp() {
    run(XdpMode::Native);
}

#[test]
fn skb_xdp_redirects_into_af_xdp() {
    run(XdpMode::Skb);
}

#[test]
fn namespaces_are_removed_even_when_a_test_fails() {
    let result = std::panic::catch_unwind(|| {
        let pair = VethPair::new();
        let names = (pair.ns_a.clone(), pair.ns_b.clone());
        std::panic::panic_any(names);
    });
    let payload = result.expect_err("the closure panics");
    let names = payload.downcast::<(String, String)>().expect("names");
    let listed = ip(&["netns", "list"]);
    assert!(
        !listed.contains(&names.0) && !listed.contains(&names.1),
        "{listed}"
    );
}

/// A flood into a tiny ring: in copy mode the kernel tells how far it has read the fill ring
/// only now and then, so frames come back to us while the fill ring still looks full. Receiving
/// must go on without an error and without losing a frame from circulation: after the flood, a
/// paced tail arrives whole (frames that fell out of circulation would starve it).
#[test]
fn a_flood_into_a_small_ring_keeps_every_frame_in_circulation() {
    fastedge_tests::require_tool("ip", "iproute2");
    const FLOOD: u64 = 200_000;
    const TAIL: u64 = 200;
    let pair = VethPair::new();
    let (tail_seen, flood_frames) = VethPair::in_netns(&pair.ns_a, || {
        let ifindex = nix::net::if_::if_nametoindex(pair.dev_a.as_str()).expect("ifindex");
        let mut program = XskRedirect::load().expect("loading the XDP program");
        program
            .attach(ifindex, XdpMode::Skb)
            .unwrap_or_else(|e| panic!("{e}"));
        let config = XskConfig::new(16, 2048, 16, XskBindMode::Copy).unwrap();
        let mut socket = XskReceiver::open(&pair.dev_a, 0, &config).expect("AF_XDP socket");
        program
            .register_socket(0, socket.fd())
            .expect("XSKMAP insert");
        let (flood_done_tx, flood_done) = std::sync::mpsc::channel::<()>();
        let sender = {
            let (ns_b, addr_a, addr_b) = (pair.ns_b.clone(), pair.addr_a, pair.addr_b);
            thread::spawn(move || {
                fastedge_tests::netns::enter(&ns_b);
                let socket = UdpSocket::bind(SocketAddrV4::new(addr_b, 0)).expect("bind in B");
                let to = SocketAddrV4::new(addr_a, PORT);
                let datagram = |seq: u64| {
                    let mut d = MAGIC.to_vec();
                    d.extend_from_slice(&seq.to_be_bytes());
                    d
                };
                for seq in 0..FLOOD {
                    // The veth queue may overflow: only the flood's pressure matters here.
                    let _ = socket.send_to(&datagram(u64::MAX - seq), to);
                }
                let _ = flood_done_tx.send(());
                thread::sleep(Duration::from_millis(300));
                for seq in 0..TAIL {
                    socket.send_to(&datagram(seq), to).expect("send");
                    thread::sleep(Duration::from_micros(500));
                }
            })
        };
        let mut tail = vec![false; TAIL as usize];
        let mut flood_frames = 0u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut flooding = true;
        while tail.iter().any(|s| !s) && Instant::now() < deadline {
            // While flooding, take frames without waiting (the engine's busy loop); after it,
            // wait in poll as the engine does when idle.
            let wait = if flooding {
                flooding = flood_done.try_recv().is_err();
                Duration::ZERO
            } else {
                Duration::from_millis(50)
            };
            socket
                .receive(wait, |frame| match our_sequence(frame) {
                    Some(seq) if seq < TAIL => tail[seq as usize] = true,
                    Some(_) => flood_frames += 1,
                    None => {}
                })
                .unwrap_or_else(|e| panic!("receiving under a flood: {e}"));
        }
        sender.join().expect("sender");
        (tail.iter().filter(|s| **s).count() as u64, flood_frames)
    });
    eprintln!("flood: {flood_frames} of {FLOOD} frames received; tail: {tail_seen} of {TAIL}");
    assert!(flood_frames > 0, "the flood reached the socket");
    assert_eq!(
        tail_seen, TAIL,
        "the paced tail arrived whole after the flood"
    );
    drop(pair);
}
