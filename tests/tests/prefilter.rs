//! The XDP pre-filter in the kernel, run with BPF_PROG_TEST_RUN on generated frames: drop,
//! pass and bypass rules by source or destination prefix (IPv4 and IPv6), protocol and port
//! ranges, the most specific prefix first, per-rule hit counters, expiry, removal; and a table
//! of 1,000,000 rules (the per-frame time before and after is printed, not asserted: speed
//! lives in benchmarks).

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use fastedge_ebpf::{
    rules::{Prefilter, RuleTable},
    XskRedirect,
};
use fastedge_wire::{
    rules::{Prefix, RuleAction, RuleSpec},
    synth::{TrafficSpec, Transport, MAX_FRAME},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One frame from `src`:`sport` to `dst`:`dport`.
fn frame(src: &str, dst: &str, transport: Transport, sport: u16, dport: u16) -> Vec<u8> {
    let spec = TrafficSpec {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        client_base: src.parse().unwrap(),
        server: dst.parse::<IpAddr>().unwrap(),
        server_port: dport,
        transport,
        flows: 1,
        frame_len: 120,
        both_directions: false,
    };
    let mut buf = [0u8; MAX_FRAME];
    let n = spec.write(0, &mut buf);
    let mut f = buf[..n].to_vec();
    // The generator numbers client ports from 10000: set the one asked for.
    let l4 = if src.contains(':') { 54 } else { 34 };
    f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    f
}

struct Filter {
    program: XskRedirect,
    table: RuleTable,
}

impl Filter {
    fn new(capacity: u32) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "BPF tests need root (CAP_BPF): run them as root, e.g. `sudo make test`"
        );
        let prefilter = Arc::new(Prefilter::create(capacity).unwrap());
        let program = XskRedirect::load_with(Some(&prefilter)).unwrap();
        Self {
            program,
            table: RuleTable::new(prefilter),
        }
    }

    fn add(&mut self, rule: &str) -> u32 {
        self.table.add(rule.parse().unwrap()).unwrap()
    }

    /// "drop", "bypass" or "pass": what the program did with `frame`, from its counters.
    fn verdict(&self, frame: &[u8]) -> &'static str {
        let before = self.program.counters().unwrap();
        let (retval, _) = self.program.test_run(frame, 1).unwrap();
        let after = self.program.counters().unwrap();
        if after.dropped > before.dropped {
            assert_eq!(retval, XDP_DROP);
            "drop"
        } else if after.bypassed > before.bypassed {
            assert_eq!(retval, XDP_PASS);
            "bypass"
        } else {
            assert_eq!(
                retval, XDP_PASS,
                "no socket on the queue: passed to the kernel"
            );
            "pass"
        }
    }
}

#[test]
fn rules_drop_pass_and_bypass_by_prefix_protocol_and_ports() {
    let mut f = Filter::new(1024);
    let dns = f.add("drop src 10.1.0.0/16 proto udp dport 53");
    let host = f.add("pass src 10.1.2.3");
    let v6 = f.add("bypass dst 2001:db8::/32");
    let conn = f.add("drop src 192.0.2.0/24 dst 198.51.100.7 proto tcp sport 1000-2000");
    let udp = Transport::Udp;
    let tcp = Transport::Tcp;

    assert_eq!(
        f.verdict(&frame("10.1.9.9", "10.0.0.1", udp, 4000, 53)),
        "drop"
    );
    assert_eq!(
        f.verdict(&frame("10.1.9.9", "10.0.0.1", udp, 4000, 54)),
        "pass",
        "other port"
    );
    assert_eq!(
        f.verdict(&frame("10.1.9.9", "10.0.0.1", tcp, 4000, 53)),
        "pass",
        "other protocol"
    );
    assert_eq!(
        f.verdict(&frame("10.1.2.3", "10.0.0.1", udp, 4000, 53)),
        "pass",
        "a host rule is more specific than the /16"
    );
    assert_eq!(
        f.verdict(&frame("fd00::1", "2001:db8::5", udp, 1, 2)),
        "bypass"
    );
    assert_eq!(
        f.verdict(&frame("fd00::1", "2001:db9::5", udp, 1, 2)),
        "pass"
    );
    assert_eq!(
        f.verdict(&frame("192.0.2.9", "198.51.100.7", tcp, 1500, 80)),
        "drop"
    );
    assert_eq!(
        f.verdict(&frame("192.0.2.9", "198.51.100.8", tcp, 1500, 80)),
        "pass",
        "dst"
    );
    assert_eq!(
        f.verdict(&frame("192.0.2.9", "198.51.100.7", tcp, 999, 80)),
        "pass",
        "sport"
    );

    // Hit counters per rule.
    assert_eq!(f.table.hits(dns).unwrap(), 1);
    assert_eq!(f.table.hits(host).unwrap(), 1);
    assert_eq!(f.table.hits(v6).unwrap(), 1);
    assert_eq!(f.table.hits(conn).unwrap(), 1);
    let listed = f.table.list().unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(
        listed[0].spec.to_string(),
        "drop src 10.1.0.0/16 proto udp dport 53"
    );

    // Removal: the frame passes at once.
    f.table.remove(dns).unwrap();
    assert_eq!(
        f.verdict(&frame("10.1.9.9", "10.0.0.1", udp, 4000, 53)),
        "pass"
    );
    assert!(f.table.remove(dns).is_err(), "removed twice");

    // Several rules on one prefix: tried in the order they were added.
    f.add("pass src 172.16.0.0/12 proto tcp");
    f.add("drop src 172.16.0.0/12");
    assert_eq!(
        f.verdict(&frame("172.16.5.5", "10.0.0.1", tcp, 1, 2)),
        "pass"
    );
    assert_eq!(
        f.verdict(&frame("172.16.5.5", "10.0.0.1", udp, 1, 2)),
        "drop"
    );
}

/// `frame` with VLAN tags of the given ethertypes (outermost first) after the MAC addresses.
fn tagged(frame: &[u8], tags: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tags.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Issue 14, defect 13: tagged frames meet the rules whatever their tags (0x9100 QinQ, and as
/// many tags as userspace reads), and a global rule applies to addresses that also have more
/// specific rules.
#[test]
fn rules_apply_to_every_tag_and_every_matching_prefix() {
    let mut f = Filter::new(1024);
    f.add("drop src 203.0.113.0/24");
    let udp = Transport::Udp;
    let tcp = Transport::Tcp;
    let attack = frame("203.0.113.9", "10.0.0.1", udp, 1, 2);
    for tags in [
        &[][..],
        &[0x8100],
        &[0x9100],
        &[0x9100, 0x8100],
        &[0x88a8, 0x8100, 0x8100],
        &[0x9100, 0x9100, 0x8100, 0x8100],
    ] {
        assert_eq!(
            f.verdict(&tagged(&attack, tags)),
            "drop",
            "tags {tags:04x?}"
        );
    }
    // A global rule (no prefix: ::/0) and rules on nested prefixes of the same addresses.
    f.add("drop proto udp dport 53");
    f.add("pass src 10.0.0.0/8 proto tcp");
    f.add("bypass src 10.1.0.0/16 proto tcp dport 22");
    f.add("drop src 10.1.2.0/24 proto udp dport 5000-6000");
    f.add("drop dst 192.0.2.0/24 proto udp");
    f.add("pass dst 192.0.2.7 proto tcp");
    let cases = [
        (
            frame("10.1.2.3", "10.0.0.1", udp, 4000, 53),
            "drop",
            "global, beneath 3 prefixes",
        ),
        (
            frame("10.1.2.3", "10.0.0.1", tcp, 4000, 22),
            "bypass",
            "the /16 beneath the /24",
        ),
        (
            frame("10.1.2.3", "10.0.0.1", tcp, 4000, 80),
            "pass",
            "the /8 beneath the /16",
        ),
        (
            frame("10.1.2.3", "10.0.0.1", udp, 4000, 5353),
            "drop",
            "the /24 itself",
        ),
        (
            frame("10.1.2.3", "10.0.0.1", udp, 4000, 54),
            "pass",
            "no rule matches",
        ),
        (
            frame("fd00::1", "2001:db8::1", udp, 1, 53),
            "drop",
            "global, IPv6",
        ),
        (
            frame("172.16.0.1", "192.0.2.7", udp, 1, 9),
            "drop",
            "destination /24 beneath /32",
        ),
        (
            frame("172.16.0.1", "192.0.2.7", tcp, 1, 9),
            "pass",
            "destination /32",
        ),
    ];
    for (frame, want, why) in &cases {
        assert_eq!(f.verdict(frame), *want, "{why}");
        assert_eq!(
            f.verdict(&tagged(frame, &[0x9100, 0x8100])),
            *want,
            "{why}, QinQ"
        );
    }
}

#[test]
fn rules_expire() {
    let mut f = Filter::new(64);
    let id = f.add("drop src 10.9.0.0/16 for 1");
    let probe = frame("10.9.1.1", "10.0.0.1", Transport::Udp, 1, 2);
    assert_eq!(f.verdict(&probe), "drop");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        f.verdict(&probe),
        "pass",
        "expired in the kernel before any sweep"
    );
    assert_eq!(f.table.expire(), vec![id]);
    assert!(f.table.is_empty());
}

#[test]
fn a_million_rules() {
    const N: u32 = 1_000_000;
    let mut f = Filter::new(N + 16);
    let miss = frame("203.0.113.9", "10.0.0.1", Transport::Udp, 1, 2);
    let (_, empty_ns) = f.program.test_run(&miss, 200_000).unwrap();
    // Host rules across 10.0.0.0/8 and 11.0.0.0/8.
    let specs: Vec<_> = (0..N)
        .map(|i| {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i * 17));
            RuleSpec {
                action: RuleAction::Drop,
                src: Some(Prefix::new(addr, 32).unwrap()),
                dst: None,
                protocol: 0,
                sport: (0, u16::MAX),
                dport: (0, u16::MAX),
                seconds: None,
            }
        })
        .collect();
    let started = Instant::now();
    let ids = f.table.add_many(&specs).unwrap();
    let load = started.elapsed();
    assert_eq!(ids.len(), N as usize);
    assert_eq!(f.table.len(), N as usize);
    let (_, full_ns) = f.program.test_run(&miss, 200_000).unwrap();
    for i in [0u32, 1, 77_777, N - 1] {
        let addr = std::net::Ipv4Addr::from(0x0a00_0000u32 + i * 17).to_string();
        assert_eq!(
            f.verdict(&frame(&addr, "10.0.0.1", Transport::Udp, 1, 2)),
            "drop"
        );
    }
    let near = std::net::Ipv4Addr::from(0x0a00_0000u32 + 17 * 500 + 1).to_string();
    assert_eq!(
        f.verdict(&frame(&near, "10.0.0.1", Transport::Udp, 1, 2)),
        "pass"
    );
    println!(
        "1,000,000 rules loaded in {:.1} s; per-frame program time for a frame no rule matches: {empty_ns} ns with no rules, {full_ns} ns with 1,000,000",
        load.as_secs_f64()
    );
}
