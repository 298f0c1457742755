//! The in-kernel split program computes the same flow hash and the same output as userspace
//! (`fastedge_wire::packet`) on the same frames: run by the kernel (BPF_PROG_TEST_RUN) on
//! UDP/TCP, IPv4/IPv6, both directions, VLAN-tagged, fragmented and padded frames, in 2-, 3-
//! and 5-tuple modes; tunnels and IPv6 extension headers go to userspace instead.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use fastedge_ebpf::fast::{FastMode, SplitFast};
use fastedge_wire::{
    packet::{flow_hash, parse, way_of, HashKey, HashMode, Parsed},
    synth::{TrafficSpec, Transport, MAX_FRAME},
};

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

fn frames() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; MAX_FRAME];
    for (transport, client, server) in [
        (Transport::Udp, "10.1.0.0", "10.0.0.1"),
        (Transport::Tcp, "10.1.0.0", "10.0.0.1"),
        (Transport::Udp, "fd00::1:0", "fd00::1"),
        (Transport::Tcp, "2001:db8::", "2001:db8:ffff::1"),
    ] {
        let spec = TrafficSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            client_base: client.parse().unwrap(),
            server: server.parse::<IpAddr>().unwrap(),
            server_port: 443,
            transport,
            flows: 200,
            frame_len: 100,
            both_directions: true,
        };
        for seq in 0..400 {
            let n = spec.write(seq, &mut buf);
            out.push(buf[..n].to_vec());
        }
    }
    // VLAN-tagged and QinQ copies of some, and padded short frames.
    for f in out.clone().iter().step_by(37) {
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&f[12..]);
        out.push(tagged.clone());
        let mut qinq = tagged[..12].to_vec();
        qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x02]);
        qinq.extend_from_slice(&tagged[12..]);
        out.push(qinq);
    }
    // IPv4 fragments: first (MF) and a later one.
    for f in out.clone().iter().take(20) {
        for flags in [[0x20u8, 0x00], [0x00, 0x10]] {
            let mut frag = f.clone();
            frag[20..22].copy_from_slice(&flags);
            out.push(frag);
        }
    }
    out
}

fn tunnel_and_extension_frames() -> Vec<Vec<u8>> {
    let base = &frames()[0]; // IPv4/UDP
    let mut ipip = base.clone();
    ipip[23] = 4; // IPv4 in IPv4
    let mut gre = base.clone();
    gre[23] = 47;
    let mut vxlan = base.clone();
    vxlan[36..38].copy_from_slice(&4789u16.to_be_bytes());
    let v6 = frames()[800].clone(); // IPv6/UDP
    let mut hop_by_hop = v6.clone();
    hop_by_hop[20] = 0;
    vec![ipip, gre, vxlan, hop_by_hop]
}

/// Any key: the kernel must agree with userspace under each.
const KEY: HashKey = HashKey {
    k0: 0x0123_4567_89ab_cdef,
    k1: 0xfedc_ba98_7654_3210,
};

#[test]
fn kernel_and_userspace_hash_every_frame_alike() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "BPF tests need root (CAP_BPF): run them as root, e.g. `sudo make test`"
    );
    // BPF_PROG_TEST_RUN runs on the calling CPU; the hash is read from that CPU's slot.
    let mut cpu = nix::sched::CpuSet::new();
    cpu.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu).unwrap();
    let outputs = vec![1u32; 7]; // lo, seven times: the redirect itself is not performed here
    for (tuple, mode) in [
        (5, HashMode::FiveTuple),
        (3, HashMode::ThreeTuple),
        (2, HashMode::TwoTuple),
    ] {
        let fast = SplitFast::load(
            None,
            &outputs,
            FastMode::Balance {
                hash_tuple: tuple,
                non_ip: 0,
                hash_key: KEY,
            },
        )
        .unwrap();
        let all = frames();
        for frame in &all {
            let Ok(Parsed::Ip(key)) = parse(frame, true) else {
                panic!("test frame does not parse: {frame:02x?}");
            };
            assert_eq!(fast.test_run(frame).unwrap(), XDP_REDIRECT, "{frame:02x?}");
            let expected = flow_hash(&key, mode, &KEY);
            assert_eq!(
                fast.last_hash().unwrap(),
                expected,
                "{tuple}-tuple hash of {frame:02x?}"
            );
            assert!(way_of(expected, 7) < 7);
        }
        let counters = fast.counters().unwrap();
        assert_eq!(counters.in_kernel, all.len() as u64);
        let per_output: u64 = (0..7).map(|i| fast.output_frames(i).unwrap()).sum();
        assert_eq!(per_output, all.len() as u64);
        // Frames userspace must open go there (no socket here: passed to the kernel).
        for frame in tunnel_and_extension_frames() {
            assert_eq!(fast.test_run(&frame).unwrap(), XDP_PASS, "{frame:02x?}");
        }
        assert_eq!(fast.counters().unwrap().passed, 4);
    }
}
