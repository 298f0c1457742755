//! Synthetic traffic for `fastedge gen`: the k-th frame of a run of many flows, both
//! directions, written into a caller's buffer with correct IPv4/IPv6 and UDP/TCP checksums.
//!
//! Every frame carries a 16-byte marker at the start of its payload — `FEGN`, the flow number
//! (u32) and the frame's sequence number (u64), big-endian — so that a receiver can tell which
//! frame of which flow arrived ([`marker`]). Pure functions: no clock, no socket, no allocation.

use std::net::IpAddr;

use crate::packet::{ethertype, proto};

/// Bytes of the payload marker.
pub const MARKER_LEN: usize = 16;
const MARKER_MAGIC: [u8; 4] = *b"FEGN";
/// Largest frame written: a jumbo MTU of 9,000 bytes plus the Ethernet header. Whether an
/// interface carries a frame this long is its MTU's business (`fastedge gen` checks).
pub const MAX_FRAME: usize = 9014;

/// A MAC address written as six hexadecimal bytes separated by colons (`02:fe:00:00:00:02`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{text:?} is not a MAC address like 02:fe:00:00:00:02");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts
            .next()
            .filter(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    match parts.next() {
        None => Ok(mac),
        Some(_) => Err(bad()),
    }
}

/// Transport of the synthetic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// Data segments (ACK|PSH) of an established-looking connection.
    Tcp,
}

/// What the generator sends: `flows` flows between `clients` (the k-th flow's client is the
/// base address plus k, its port 10000 + k mod 50000) and one server endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficSpec {
    /// Source MAC of client→server frames (the destination of the other direction).
    pub src_mac: [u8; 6],
    /// Destination MAC of client→server frames.
    pub dst_mac: [u8; 6],
    /// The first client's address; flow k uses this plus k.
    pub client_base: IpAddr,
    /// The server's address, the same for every flow.
    pub server: IpAddr,
    /// The server's port.
    pub server_port: u16,
    /// UDP or TCP.
    pub transport: Transport,
    /// Number of distinct flows, at least 1.
    pub flows: u32,
    /// Frame length without the FCS (60 is the minimum Ethernet frame, 64 bytes on the wire).
    pub frame_len: usize,
    /// Alternate client→server and server→client frames (as a mirror port sees a flow).
    pub both_directions: bool,
}

/// Why a traffic spec cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// Client and server addresses are not of one family.
    MixedFamilies,
    /// `flows` is 0.
    NoFlows,
    /// The frame cannot hold the headers and the marker.
    FrameTooSmall {
        /// The asked frame length.
        len: usize,
        /// The smallest that fits.
        min: usize,
    },
    /// Longer than [`MAX_FRAME`] (a 9,000-byte jumbo MTU).
    FrameTooLarge {
        /// The asked frame length.
        len: usize,
    },
    /// The flows would run past the end of the address space from the client base.
    TooManyFlows {
        /// Flows asked for.
        flows: u32,
        /// Addresses left after the client base.
        room: u128,
    },
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::MixedFamilies => {
                write!(
                    f,
                    "client and server addresses must both be IPv4 or both IPv6"
                )
            }
            SpecError::NoFlows => write!(f, "at least one flow is needed"),
            SpecError::FrameTooSmall { len, min } => write!(
                f,
                "frame size {len} is too small: these headers and the 16-byte marker need {min}"
            ),
            SpecError::FrameTooLarge { len } => {
                write!(
                    f,
                    "frame size {len} is above {MAX_FRAME} (a 9,000-byte jumbo MTU)"
                )
            }
            SpecError::TooManyFlows { flows, room } => write!(
                f,
                "{flows} flows do not fit after the client base address ({room} addresses left)"
            ),
        }
    }
}

impl std::error::Error for SpecError {}

impl TrafficSpec {
    /// Bytes of headers before the payload.
    pub fn header_len(&self) -> usize {
        let ip = if self.server.is_ipv4() { 20 } else { 40 };
        let l4 = match self.transport {
            Transport::Udp => 8,
            Transport::Tcp => 20,
        };
        14 + ip + l4
    }

    /// Checks the spec; the smallest frame is the headers plus the marker, and never less than
    /// 60 bytes.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.client_base.is_ipv4() != self.server.is_ipv4() {
            return Err(SpecError::MixedFamilies);
        }
        if self.flows == 0 {
            return Err(SpecError::NoFlows);
        }
        let min = (self.header_len() + MARKER_LEN).max(60);
        if self.frame_len < min {
            return Err(SpecError::FrameTooSmall {
                len: self.frame_len,
                min,
            });
        }
        if self.frame_len > MAX_FRAME {
            return Err(SpecError::FrameTooLarge {
                len: self.frame_len,
            });
        }
        let room = match self.client_base {
            IpAddr::V4(a) => u128::from(u32::MAX - u32::from(a)) + 1,
            IpAddr::V6(a) => u128::MAX - u128::from(a) + 1,
        };
        if u128::from(self.flows) > room {
            return Err(SpecError::TooManyFlows {
                flows: self.flows,
                room,
            });
        }
        Ok(())
    }

    /// The flow and direction of frame `seq` (true: server → client).
    pub fn flow_of(&self, seq: u64) -> (u32, bool) {
        if self.both_directions {
            (((seq / 2) % u64::from(self.flows)) as u32, seq % 2 == 1)
        } else {
            ((seq % u64::from(self.flows)) as u32, false)
        }
    }

    /// The client endpoint of flow `flow`.
    pub fn client(&self, flow: u32) -> (IpAddr, u16) {
        let address = match self.client_base {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(flow)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(u128::from(flow))).into()),
        };
        (address, 10_000 + (flow % 50_000) as u16)
    }

    /// Writes frame `seq` into `buf` (at least `frame_len` bytes) and returns its length. The
    /// spec must have passed [`TrafficSpec::validate`].
    pub fn write(&self, seq: u64, buf: &mut [u8]) -> usize {
        let len = self.frame_len;
        let frame = &mut buf[..len];
        frame.fill(0);
        let (flow, reply) = self.flow_of(seq);
        let client = self.client(flow);
        let server = (self.server, self.server_port);
        let (src, dst) = if reply {
            (server, client)
        } else {
            (client, server)
        };
        frame[0..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        let ip_len = len - 14;
        let (l4_at, protocol) = (
            14 + if self.server.is_ipv4() { 20 } else { 40 },
            match self.transport {
                Transport::Udp => proto::UDP,
                Transport::Tcp => proto::TCP,
            },
        );
        let l4_len = len - l4_at;
        match (src.0, dst.0) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
                let ip = &mut frame[14..34];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
                ip[6] = 0x40; // don't fragment
                ip[8] = 64;
                ip[9] = protocol;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let sum = !fold(sum_words(ip, 0));
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
                let ip = &mut frame[14..54];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                ip[6] = protocol;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
            }
            // validate() refuses mixed families; write nothing rather than a wrong frame.
            _ => return 0,
        }
        let l4 = &mut frame[l4_at..];
        l4[0..2].copy_from_slice(&src.1.to_be_bytes());
        l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
        let marker_at = match self.transport {
            Transport::Udp => {
                l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                8
            }
            Transport::Tcp => {
                // Sequence numbers advance by the payload per frame of the flow and direction.
                let payload = (l4_len - 20) as u64;
                let tcp_seq = (seq / if self.both_directions { 2 } else { 1 })
                    / u64::from(self.flows)
                    * payload;
                l4[4..8].copy_from_slice(&(tcp_seq as u32).to_be_bytes());
                l4[8..12].copy_from_slice(&1u32.to_be_bytes());
                l4[12] = 5 << 4;
                l4[13] = 0x18; // ACK | PSH
                l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
                20
            }
        };
        l4[marker_at..marker_at + 4].copy_from_slice(&MARKER_MAGIC);
        l4[marker_at + 4..marker_at + 8].copy_from_slice(&flow.to_be_bytes());
        l4[marker_at + 8..marker_at + 16].copy_from_slice(&seq.to_be_bytes());
        // The payload pattern, copied a period at a time (no division per byte).
        let mut at = l4_at + marker_at + MARKER_LEN;
        while at < len {
            let phase = at % PATTERN_PERIOD;
            let n = (PATTERN_PERIOD - phase).min(len - at);
            frame[at..at + n].copy_from_slice(&PATTERN[phase..phase + n]);
            at += n;
        }
        let l4 = &mut frame[l4_at..];
        let pseudo = pseudo_header_sum(src.0, dst.0, protocol, l4_len);
        let sum = !fold(sum_words(l4, pseudo));
        let sum = if sum == 0 && protocol == proto::UDP {
            0xffff
        } else {
            sum
        };
        let at = if protocol == proto::UDP { 6 } else { 16 };
        l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        len
    }
}

/// The period of the payload pattern: a prime, so no buffer size is a multiple of it.
const PATTERN_PERIOD: usize = 251;

/// One period of the payload pattern: byte k is k.
const PATTERN: [u8; PATTERN_PERIOD] = {
    let mut table = [0u8; PATTERN_PERIOD];
    let mut k = 0;
    while k < PATTERN_PERIOD {
        table[k] = k as u8;
        k += 1;
    }
    table
};

/// The byte a generated frame carries at offset `at` of the frame, in its payload (after the
/// marker): a pattern with a period (251) that no buffer size divides, so that a frame put
/// together from pieces in the wrong order, or with a piece lost or repeated, does not match.
pub fn payload_byte(at: usize) -> u8 {
    PATTERN[at % PATTERN_PERIOD]
}

/// Where the marker of a generated frame starts.
fn marker_at(frame: &[u8]) -> Option<usize> {
    // After the L4 header: try the offsets the generator uses.
    [42usize, 54, 62, 74].into_iter().find(|&at| {
        frame
            .get(at..at + MARKER_LEN)
            .is_some_and(|m| m[..4] == MARKER_MAGIC)
    })
}

/// The (flow, sequence number) a generated frame carries, if `frame` is one.
pub fn marker(frame: &[u8]) -> Option<(u32, u64)> {
    let at = marker_at(frame)?;
    let m = &frame[at..at + MARKER_LEN];
    let flow = u32::from_be_bytes(m[4..8].try_into().ok()?);
    let seq = u64::from_be_bytes(m[8..16].try_into().ok()?);
    Some((flow, seq))
}

/// Whether every byte after a generated frame's marker is the one [`TrafficSpec::write`] put
/// there ([`payload_byte`]); false for a frame that is not a generated one.
pub fn payload_intact(frame: &[u8]) -> bool {
    marker_at(frame).is_some_and(|at| {
        frame
            .iter()
            .enumerate()
            .skip(at + MARKER_LEN)
            .all(|(at, &byte)| byte == payload_byte(at))
    })
}

fn sum_words(bytes: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: usize) -> u32 {
    let mut sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(&s.octets(), sum_words(&d.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(&s.octets(), sum_words(&d.octets(), 0)),
        _ => 0,
    };
    sum = sum.wrapping_add(u32::from(protocol));
    sum.wrapping_add(l4_len as u32)
}

/// Verifies the IPv4 header and UDP/TCP checksums of a frame written by [`TrafficSpec::write`]
/// (for tests and for receivers that want to check what arrived).
pub fn checksums_ok(frame: &[u8]) -> bool {
    let Some(et) = frame.get(12..14) else {
        return false;
    };
    let (src, dst, protocol, l4_at) = match u16::from_be_bytes([et[0], et[1]]) {
        ethertype::IPV4 => {
            let Some(ip) = frame.get(14..34) else {
                return false;
            };
            if fold(sum_words(ip, 0)) != 0xffff {
                return false;
            }
            let s: [u8; 4] = ip[12..16].try_into().unwrap_or_default();
            let d: [u8; 4] = ip[16..20].try_into().unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), ip[9], 34)
        }
        ethertype::IPV6 => {
            let Some(ip) = frame.get(14..54) else {
                return false;
            };
            let s: [u8; 16] = ip[8..24].try_into().unwrap_or_default();
            let d: [u8; 16] = ip[24..40].try_into().unwrap_or_default();
            (IpAddr::from(s), IpAddr::from(d), ip[6], 54)
        }
        _ => return false,
    };
    let Some(l4) = frame.get(l4_at..) else {
        return false;
    };
    fold(sum_words(
        l4,
        pseudo_header_sum(src, dst, protocol, l4.len()),
    )) == 0xffff
}

#[cfg(test)]
mod tests {
    #[test]
    fn mac_addresses_are_six_hex_bytes() {
        assert_eq!(
            super::parse_mac("02:fe:00:00:0a:FF"),
            Ok([2, 0xfe, 0, 0, 0x0a, 0xff])
        );
        for bad in [
            "",
            "02:fe:00:00:00",
            "02:fe:00:00:00:02:03",
            "02:fe:00:00:00:0g",
            "002:fe:0:0:0:2",
            "02::00:00:00:02",
            "+2:fe:00:00:00:02",
        ] {
            assert_eq!(
                super::parse_mac(bad),
                Err(format!(
                    "{bad:?} is not a MAC address like 02:fe:00:00:00:02"
                )),
                "{bad}"
            );
        }
    }

    use super::*;
    use crate::packet::{flow_hash, parse, HashKey, HashMode, Parsed};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(transport: Transport, v6: bool, frame_len: usize) -> TrafficSpec {
        TrafficSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            client_base: if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 0))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0))
            },
            server: if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))
            },
            server_port: 443,
            transport,
            flows: 1000,
            frame_len,
            both_directions: true,
        }
    }

    #[test]
    fn frames_parse_back_with_their_flow_and_marker() {
        for transport in [Transport::Udp, Transport::Tcp] {
            for v6 in [false, true] {
                let s = spec(transport, v6, 128);
                s.validate().unwrap();
                let mut buf = [0u8; MAX_FRAME];
                for seq in [0u64, 1, 2, 1999, 2000, 123_456] {
                    let n = s.write(seq, &mut buf);
                    assert_eq!(n, 128);
                    let frame = &buf[..n];
                    assert!(checksums_ok(frame), "{transport:?} v6={v6} seq={seq}");
                    let (flow, reply) = s.flow_of(seq);
                    assert_eq!(marker(frame), Some((flow, seq)));
                    let Ok(Parsed::Ip(key)) = parse(frame, true) else {
                        panic!("not IP");
                    };
                    let (client, port) = s.client(flow);
                    let client16 = match client {
                        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                        IpAddr::V6(a) => a.octets(),
                    };
                    let got = if reply {
                        (key.dst, key.dst_port)
                    } else {
                        (key.src, key.src_port)
                    };
                    assert_eq!(got, (client16, port));
                }
            }
        }
    }

    #[test]
    fn a_jumbo_frame_carries_a_payload_that_shows_pieces_out_of_place() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let s = spec(transport, false, MAX_FRAME);
            s.validate().unwrap();
            let mut buf = vec![0u8; MAX_FRAME];
            let n = s.write(7, &mut buf);
            assert_eq!(n, MAX_FRAME);
            assert!(checksums_ok(&buf), "{transport:?}");
            assert!(payload_intact(&buf), "{transport:?}");
            // Two 1,792-byte pieces (an AF_XDP buffer's worth) swapped.
            let mut swapped = buf.clone();
            let (a, b) = swapped[1792..5376].split_at_mut(1792);
            a.swap_with_slice(b);
            assert!(!payload_intact(&swapped));
            // A piece lost (the frame shorter by one) or one byte changed.
            let mut lost = buf[..1792].to_vec();
            lost.extend_from_slice(&buf[3584..]);
            assert!(!payload_intact(&lost));
            let mut changed = buf.clone();
            changed[8000] ^= 1;
            assert!(!payload_intact(&changed));
            assert!(!payload_intact(&[0u8; 100]), "not a generated frame");
        }
    }

    #[test]
    fn both_directions_of_a_flow_hash_alike() {
        let s = spec(Transport::Udp, false, 60);
        let mut a = [0u8; MAX_FRAME];
        let mut b = [0u8; MAX_FRAME];
        for flow in 0..50u64 {
            let na = s.write(flow * 2, &mut a);
            let nb = s.write(flow * 2 + 1, &mut b);
            let (Ok(Parsed::Ip(ka)), Ok(Parsed::Ip(kb))) =
                (parse(&a[..na], true), parse(&b[..nb], true))
            else {
                panic!("not IP");
            };
            assert_ne!(ka, kb);
            assert_eq!(
                flow_hash(&ka, HashMode::FiveTuple, &HashKey { k0: 1, k1: 2 }),
                flow_hash(&kb, HashMode::FiveTuple, &HashKey { k0: 1, k1: 2 })
            );
        }
    }

    #[test]
    fn known_frame_bytes() {
        // A 60-byte UDP/IPv4 frame, checked field by field against what tcpdump would show.
        let s = spec(Transport::Udp, false, 60);
        let mut buf = [0u8; MAX_FRAME];
        let n = s.write(3, &mut buf);
        let f = &buf[..n];
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(
            &f[26..30],
            &[10, 0, 0, 1],
            "seq 3 is a reply: from the server"
        );
        assert_eq!(&f[30..34], &[10, 1, 0, 1], "to flow 1's client");
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 443);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 10_001);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 26, "UDP length");
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 46, "IP total length");
        assert_eq!(&f[42..46], b"FEGN");
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let mut s = spec(Transport::Tcp, true, 60);
        assert_eq!(
            s.validate(),
            Err(SpecError::FrameTooSmall { len: 60, min: 90 })
        );
        s.frame_len = 9015;
        assert_eq!(s.validate(), Err(SpecError::FrameTooLarge { len: 9015 }));
        s.frame_len = 9014;
        assert_eq!(s.validate(), Ok(()));
        s.frame_len = 100;
        s.flows = 0;
        assert_eq!(s.validate(), Err(SpecError::NoFlows));
        s.flows = 10;
        s.server = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(s.validate(), Err(SpecError::MixedFamilies));
        let mut s = spec(Transport::Udp, false, 60);
        s.client_base = IpAddr::V4(Ipv4Addr::new(255, 255, 255, 250));
        s.flows = 7;
        assert!(matches!(s.validate(), Err(SpecError::TooManyFlows { .. })));
    }
}
