//! Packet headers, as far as flow distribution needs them: Ethernet, 802.1Q/802.1ad tags,
//! IPv4 (options, fragments), IPv6 (extension headers walked), TCP, UDP, ICMP/ICMPv6, and the
//! inner headers of IP-in-IP, GRE and VXLAN tunnels.
//!
//! [`parse`] reads a frame (no allocation, no copy) into a [`FlowKey`], the innermost IP flow
//! it belongs to. Untrusted input: every read is bounds-checked; a frame too short for the
//! header it announces is a [`ParseError`], never a panic.

/// Ethertypes.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
    /// The pre-standard QinQ outer tag some switches still send.
    pub const QINQ_OLD: u16 = 0x9100;
    /// GRE payload type for an Ethernet frame (transparent Ethernet bridging).
    pub const TEB: u16 = 0x6558;
}

/// IP protocol numbers.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// IPv4 encapsulated in IP (IP-in-IP).
    pub const IPIP: u8 = 4;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 encapsulated in IP.
    pub const IPV6: u8 = 41;
    /// Generic Routing Encapsulation.
    pub const GRE: u8 = 47;
    /// IPsec Encapsulating Security Payload (its payload is encrypted: no ports to read).
    pub const ESP: u8 = 50;
    /// IPsec Authentication Header (walked over like an IPv6 extension header).
    pub const AH: u8 = 51;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 "no next header".
    pub const NO_NEXT: u8 = 59;
    /// IPv6 hop-by-hop options extension header.
    pub const HOP_BY_HOP: u8 = 0;
    /// IPv6 routing extension header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment extension header.
    pub const FRAGMENT: u8 = 44;
    /// IPv6 destination options extension header.
    pub const DEST_OPTS: u8 = 60;
    /// IPv6 mobility extension header.
    pub const MOBILITY: u8 = 135;
    /// Host Identity Protocol extension header.
    pub const HIP: u8 = 139;
    /// Shim6 extension header.
    pub const SHIM6: u8 = 140;
}

/// The UDP port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// Most VLAN tags read before giving up (QinQ is 2).
const MAX_VLAN_TAGS: usize = 4;
/// Most IPv6 extension headers walked.
const MAX_EXTENSION_HEADERS: usize = 8;
/// Most tunnel layers opened.
const MAX_TUNNEL_DEPTH: usize = 2;

/// The flow a packet belongs to: its innermost IP addresses (IPv4 as IPv4-mapped IPv6, so
/// every address is 128 bits), protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 as IPv4-mapped IPv6).
    pub src: [u8; 16],
    /// Destination address (IPv4 as IPv4-mapped IPv6).
    pub dst: [u8; 16],
    /// The innermost IP protocol number (see [`proto`]).
    pub protocol: u8,
    /// 0 when the protocol has no ports or the packet is a later fragment.
    pub src_port: u16,
    /// 0 when the protocol has no ports or the packet is a later fragment.
    pub dst_port: u16,
    /// Part of a fragmented datagram (any fragment, the first included).
    pub fragment: bool,
    /// Tunnel layers opened to reach this flow.
    pub tunnel_depth: u8,
    /// The transport header was not reached (an IPv6 chain of more extension headers than
    /// are walked): `protocol` is the last header type read and the ports are 0.
    pub unwalked: bool,
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// An IP packet and its flow.
    Ip(FlowKey),
    /// A frame that is not IP (ARP, LLDP, …): its ethertype after any VLAN tags.
    NonIp {
        /// The ethertype (see [`ethertype`]).
        ethertype: u16,
    },
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends inside the named header.
    Truncated(&'static str),
    /// A header field has a value the standard does not allow.
    Malformed(&'static str),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Truncated(what) => write!(f, "frame truncated inside the {what}"),
            ParseError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn be16(buf: &[u8], at: usize, what: &'static str) -> Result<u16, ParseError> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(ParseError::Truncated(what)),
    }
}

fn byte(buf: &[u8], at: usize, what: &'static str) -> Result<u8, ParseError> {
    buf.get(at).copied().ok_or(ParseError::Truncated(what))
}

fn rest<'a>(buf: &'a [u8], at: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
    buf.get(at..).ok_or(ParseError::Truncated(what))
}

/// Parses an Ethernet frame; with `decapsulate`, tunnels are opened and the inner flow is
/// returned.
#[inline]
pub fn parse(frame: &[u8], decapsulate: bool) -> Result<Parsed, ParseError> {
    parse_ethernet(frame, decapsulate, 0)
}

#[inline]
fn parse_ethernet(frame: &[u8], decapsulate: bool, depth: usize) -> Result<Parsed, ParseError> {
    let mut ethertype = be16(frame, 12, "Ethernet header")?;
    let mut offset = 14;
    let mut tags = 0;
    while matches!(
        ethertype,
        ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD
    ) {
        tags += 1;
        if tags > MAX_VLAN_TAGS {
            return Err(ParseError::Malformed("VLAN stack (too many tags)"));
        }
        ethertype = be16(frame, offset + 2, "VLAN tag")?;
        offset += 4;
    }
    let payload = rest(frame, offset, "Ethernet header")?;
    match ethertype {
        ethertype::IPV4 => parse_ipv4(payload, decapsulate, depth).map(Parsed::Ip),
        ethertype::IPV6 => parse_ipv6(payload, decapsulate, depth).map(Parsed::Ip),
        other => Ok(Parsed::NonIp { ethertype: other }),
    }
}

#[inline]
fn v4_mapped(octets: &[u8]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[10] = 0xff;
    addr[11] = 0xff;
    addr[12..].copy_from_slice(&octets[..4]);
    addr
}

// Always inlined: returned through memory, the key's narrow fields (ports, protocol) were
// read back by wider loads, which stalls store forwarding (~13 % of the hot path, perf).
#[inline(always)]
fn parse_ipv4(packet: &[u8], decapsulate: bool, depth: usize) -> Result<FlowKey, ParseError> {
    let first = byte(packet, 0, "IPv4 header")?;
    if first >> 4 != 4 {
        return Err(ParseError::Malformed("IPv4 version"));
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(ParseError::Malformed("IPv4 header length"));
    }
    let header = packet
        .get(..header_len)
        .ok_or(ParseError::Truncated("IPv4 header"))?;
    let total_len = usize::from(be16(header, 2, "IPv4 header")?);
    if total_len < header_len {
        return Err(ParseError::Malformed("IPv4 total length"));
    }
    let flags_offset = be16(header, 6, "IPv4 header")?;
    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment_offset = flags_offset & 0x1fff;
    let protocol = header[9];
    let key = FlowKey {
        src: v4_mapped(&header[12..16]),
        dst: v4_mapped(&header[16..20]),
        protocol,
        src_port: 0,
        dst_port: 0,
        fragment: more_fragments || fragment_offset != 0,
        tunnel_depth: depth as u8,
        unwalked: false,
    };
    // Ethernet may pad short packets: the IP length bounds the payload, not the frame.
    let end = total_len.min(packet.len());
    let payload = packet.get(header_len..end).unwrap_or_default();
    transport(key, payload, fragment_offset == 0, decapsulate, depth)
}

fn parse_ipv6(packet: &[u8], decapsulate: bool, depth: usize) -> Result<FlowKey, ParseError> {
    let header = packet
        .get(..40)
        .ok_or(ParseError::Truncated("IPv6 header"))?;
    if header[0] >> 4 != 6 {
        return Err(ParseError::Malformed("IPv6 version"));
    }
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&header[8..24]);
    dst.copy_from_slice(&header[24..40]);
    let end = (40 + payload_len).min(packet.len());
    // A zero payload length is a jumbogram (hop-by-hop option): take the frame's length.
    let end = if payload_len == 0 { packet.len() } else { end };
    let mut payload = packet.get(40..end).unwrap_or_default();
    let mut next = header[6];
    let mut fragment = false;
    let mut first_fragment = true;
    let mut walked = 0;
    loop {
        let extension = matches!(
            next,
            proto::HOP_BY_HOP
                | proto::ROUTING
                | proto::DEST_OPTS
                | proto::MOBILITY
                | proto::HIP
                | proto::SHIM6
                | proto::FRAGMENT
                | proto::AH
        );
        // After a later fragment's header comes data, not headers.
        if !extension || !first_fragment {
            break;
        }
        if walked == MAX_EXTENSION_HEADERS {
            let key = FlowKey {
                src,
                dst,
                protocol: next,
                src_port: 0,
                dst_port: 0,
                fragment,
                tunnel_depth: depth as u8,
                unwalked: true,
            };
            return Ok(key);
        }
        walked += 1;
        match next {
            proto::HOP_BY_HOP
            | proto::ROUTING
            | proto::DEST_OPTS
            | proto::MOBILITY
            | proto::HIP
            | proto::SHIM6 => {
                let len = (usize::from(byte(payload, 1, "IPv6 extension header")?) + 1) * 8;
                next = payload[0];
                payload = payload
                    .get(len..)
                    .ok_or(ParseError::Truncated("IPv6 extension header"))?;
            }
            proto::FRAGMENT => {
                let field = be16(payload, 2, "IPv6 fragment header")?;
                fragment = true;
                first_fragment = field & 0xfff8 == 0;
                next = payload[0];
                payload = payload
                    .get(8..)
                    .ok_or(ParseError::Truncated("IPv6 fragment header"))?;
            }
            proto::AH => {
                let len = (usize::from(byte(payload, 1, "IPv6 authentication header")?) + 2) * 4;
                next = payload[0];
                payload = payload
                    .get(len..)
                    .ok_or(ParseError::Truncated("IPv6 authentication header"))?;
            }
            _ => break,
        }
    }
    let key = FlowKey {
        src,
        dst,
        protocol: next,
        src_port: 0,
        dst_port: 0,
        fragment,
        tunnel_depth: depth as u8,
        unwalked: false,
    };
    transport(key, payload, first_fragment, decapsulate, depth)
}

/// Reads ports (or opens a tunnel) from an IP payload. The common case (no tunnel) stays
/// here, small enough to be inlined into the IP parsers; tunnels go to [`open_tunnel`], which
/// recurses and is kept out of line. Always inlined, like `parse_ipv4`: called out of line,
/// it copied the key it was given through memory with wide loads over the narrow fields the
/// caller had just stored (a store-forwarding stall per packet: a third of the hot path's
/// samples, perf).
#[inline(always)]
fn transport(
    mut key: FlowKey,
    payload: &[u8],
    has_transport_header: bool,
    decapsulate: bool,
    depth: usize,
) -> Result<FlowKey, ParseError> {
    if !has_transport_header {
        return Ok(key);
    }
    let tunnel = decapsulate && depth < MAX_TUNNEL_DEPTH && !key.fragment;
    match key.protocol {
        proto::TCP | proto::UDP => {
            let src_port = be16(payload, 0, "transport header")?;
            let dst_port = be16(payload, 2, "transport header")?;
            if tunnel && key.protocol == proto::UDP && dst_port == VXLAN_PORT {
                if let Some(inner) = open_tunnel(key.protocol, payload, depth)? {
                    return Ok(inner);
                }
            }
            key.src_port = src_port;
            key.dst_port = dst_port;
        }
        proto::IPIP | proto::IPV6 | proto::GRE if tunnel => {
            if let Some(inner) = open_tunnel(key.protocol, payload, depth)? {
                return Ok(inner);
            }
        }
        _ => {}
    }
    Ok(key)
}

/// The inner flow of a tunnel (`protocol` UDP means VXLAN), or `None` when the payload is not
/// one that is opened.
#[cold]
#[inline(never)]
fn open_tunnel(protocol: u8, payload: &[u8], depth: usize) -> Result<Option<FlowKey>, ParseError> {
    match protocol {
        proto::UDP => {
            // VXLAN: UDP header, 8-byte VXLAN header (I flag set), inner Ethernet.
            let flags = byte(payload, 8, "VXLAN header")?;
            if flags & 0x08 != 0 {
                let inner = rest(payload, 16, "VXLAN header")?;
                if let Parsed::Ip(inner) = parse_ethernet(inner, true, depth + 1)? {
                    return Ok(Some(inner));
                }
            }
            Ok(None)
        }
        proto::IPIP => parse_ipv4(payload, true, depth + 1).map(Some),
        proto::IPV6 => parse_ipv6(payload, true, depth + 1).map(Some),
        proto::GRE => parse_gre(payload, depth),
        _ => Ok(None),
    }
}

/// GRE (RFC 2784/2890): opens IPv4, IPv6 and Ethernet payloads; `None` for anything else.
fn parse_gre(payload: &[u8], depth: usize) -> Result<Option<FlowKey>, ParseError> {
    let flags = be16(payload, 0, "GRE header")?;
    if flags & 0x0007 != 0 {
        // Version 1 is PPTP's enhanced GRE: not opened.
        return Ok(None);
    }
    let protocol = be16(payload, 2, "GRE header")?;
    let mut offset = 4;
    for bit in [0x8000, 0x2000, 0x1000] {
        // Checksum(+reserved), key, sequence number: 4 bytes each when present.
        if flags & bit != 0 {
            offset += 4;
        }
    }
    let inner = rest(payload, offset, "GRE header")?;
    match protocol {
        ethertype::IPV4 => parse_ipv4(inner, true, depth + 1).map(Some),
        ethertype::IPV6 => parse_ipv6(inner, true, depth + 1).map(Some),
        ethertype::TEB => match parse_ethernet(inner, true, depth + 1)? {
            Parsed::Ip(key) => Ok(Some(key)),
            Parsed::NonIp { .. } => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Which fields of a flow go into its hash.
///
/// Only [`HashMode::TwoTuple`] keeps *every* packet of a flow on one way: IP fragments after
/// the first carry no ports, and an IPv6 packet with a long chain of extension headers has its
/// transport header out of reach, so those packets ([`FlowKey::fragment`],
/// [`FlowKey::unwalked`]) hash on the address pair in every mode. In the 3- and 5-tuple modes
/// they can therefore land on another way than the rest of their flow: an observer behind a
/// way can be made to miss data that is sent fragmented. Those modes spread many flows
/// between two hosts better; choose them only where that matters more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HashMode {
    /// Source and destination addresses (the default).
    #[default]
    TwoTuple,
    /// Addresses and protocol.
    ThreeTuple,
    /// Addresses, protocol and ports.
    FiveTuple,
}

/// The 128-bit key of the flow hash. Who does not know it cannot choose flows that land on
/// one way (to flood it); a process picks a random one at start unless configured.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HashKey {
    /// First 64 bits of the SipHash-1-3 key.
    pub k0: u64,
    /// Second 64 bits of the SipHash-1-3 key.
    pub k1: u64,
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A key in a log line would undo it.
        f.write_str("HashKey(..)")
    }
}

/// A hash key that is not 32 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKeyError;

impl std::fmt::Display for HashKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a hash key is 32 hexadecimal digits (128 bits)")
    }
}

impl std::error::Error for HashKeyError {}

impl HashKey {
    /// A key from 16 bytes (e.g. from the system's random source).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&bytes[..8]);
        k1.copy_from_slice(&bytes[8..]);
        Self {
            k0: u64::from_be_bytes(k0),
            k1: u64::from_be_bytes(k1),
        }
    }

    /// The key as 32 hexadecimal digits (the form [`str::parse`] reads).
    pub fn to_hex(&self) -> String {
        format!("{:016x}{:016x}", self.k0, self.k1)
    }
}

impl std::str::FromStr for HashKey {
    type Err = HashKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(HashKeyError);
        }
        let k0 = u64::from_str_radix(&text[..16], 16).map_err(|_| HashKeyError)?;
        let k1 = u64::from_str_radix(&text[16..], 16).map_err(|_| HashKeyError)?;
        Ok(Self { k0, k1 })
    }
}

/// A keyed symmetric flow hash: both directions of a flow give the same value (the two
/// endpoints are put in a fixed order first), then SipHash-1-3 under `hash_key` (a keyed
/// function, so the way of a flow cannot be predicted without the key). Fragments and packets
/// whose transport header was not reached hash on the address pair in every mode (see
/// [`HashMode`]). The same key gives the same value across restarts, machines and engines
/// (the XDP program computes the same function).
///
/// The message is 64-bit words, each taken little-endian (SipHash's own word order, so the
/// XDP program feeds them without byte swaps). The two endpoints (address, port) are ordered
/// first, the lower one first (addresses compared as big-endian numbers, then ports); ports
/// are 0 outside [`HashMode::FiveTuple`], and the protocol is 0 in [`HashMode::TwoTuple`]
/// (which fragments and unwalked packets always use). When both addresses are IPv4 (or
/// IPv4-mapped IPv6), two words: `lower address << 32 | higher address` (the 32-bit IPv4
/// addresses) and `protocol << 32 | lower endpoint's port << 16 | higher endpoint's port`;
/// otherwise five: the lower endpoint's address as two big-endian 64-bit halves, the higher
/// one's, then the same protocol-and-ports word. (Two words for IPv4 is 6 SipHash rounds
/// where five words are 9.)
#[inline]
pub fn flow_hash(key: &FlowKey, mode: HashMode, hash_key: &HashKey) -> u64 {
    let mode = if key.fragment || key.unwalked {
        HashMode::TwoTuple
    } else {
        mode
    };
    let (src_port, dst_port) = match mode {
        HashMode::FiveTuple => (key.src_port, key.dst_port),
        _ => (0, 0),
    };
    let protocol = u64::from(match mode {
        HashMode::TwoTuple => 0,
        _ => key.protocol,
    });
    // Big-endian 64-bit halves order like the byte arrays. Halves, not one 128-bit number:
    // the key was just stored 8 bytes at a time, and a 16-byte load over two such stores
    // cannot be forwarded from them (a stall of ~15 cycles per address, perf).
    let halves = |addr: &[u8; 16]| {
        let (high, low) = addr.split_at(8);
        let word = |half: &[u8]| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(half);
            u64::from_be_bytes(bytes)
        };
        (word(high), word(low))
    };
    let (src_high, src_low) = halves(&key.src);
    let (dst_high, dst_low) = halves(&key.dst);
    const V4_MAPPED: u64 = 0xffff;
    if src_high == 0 && dst_high == 0 && src_low >> 32 == V4_MAPPED && dst_low >> 32 == V4_MAPPED {
        let a = (src_low as u32, src_port);
        let b = (dst_low as u32, dst_port);
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        return sip13(
            hash_key,
            [
                (u64::from(low.0) << 32) | u64::from(high.0),
                (protocol << 32) | (u64::from(low.1) << 16) | u64::from(high.1),
            ],
        );
    }
    let a = (src_high, src_low, src_port);
    let b = (dst_high, dst_low, dst_port);
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    sip13(
        hash_key,
        [
            low.0,
            low.1,
            high.0,
            high.1,
            (protocol << 32) | (u64::from(low.2) << 16) | u64::from(high.2),
        ],
    )
}

/// SipHash-1-3 under `key` of the message made of `words`, each as its 8 little-endian
/// bytes (so `8 * N` bytes, no partial last word): one compression round per word, the
/// length word, three finalization rounds. Written for whole words so that no byte buffer
/// is filled and read back (the general hasher's byte interface cost ~2× on the hot path).
#[inline(always)]
fn sip13<const N: usize>(key: &HashKey, words: [u64; N]) -> u64 {
    let mut v0 = key.k0 ^ 0x736f_6d65_7073_6575;
    let mut v1 = key.k1 ^ 0x646f_7261_6e64_6f6d;
    let mut v2 = key.k0 ^ 0x6c79_6765_6e65_7261;
    let mut v3 = key.k1 ^ 0x7465_6462_7974_6573;
    let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    };
    // The words, then the length word apart: chained, they stayed a loop with a state flag
    // (perf), where these unroll.
    for &m in &words {
        v3 ^= m;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= m;
    }
    let length = ((8 * N) as u64) << 56;
    v3 ^= length;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^= length;
    v2 ^= 0xff;
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    round(&mut v0, &mut v1, &mut v2, &mut v3);
    v0 ^ v1 ^ v2 ^ v3
}

/// The way (0..`ways`) a hash goes to: multiply-shift, so every way gets an even share.
#[inline]
pub fn way_of(hash: u64, ways: u32) -> u32 {
    ((u128::from(hash) * u128::from(ways)) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    const KEY: HashKey = HashKey {
        k0: 0x0001_0203_0405_0607,
        k1: 0x0809_0a0b_0c0d_0e0f,
    };

    fn ethernet(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut frame = MAC.to_vec();
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        flags_offset: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0];
        let total = (20 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[6..8].copy_from_slice(&flags_offset.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    fn ipv6(src: u8, dst: u8, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        let mut s = [0u8; 16];
        s[0] = 0x20;
        s[1] = 0x01;
        s[15] = src;
        let mut d = s;
        d[15] = dst;
        p.extend_from_slice(&s);
        p.extend_from_slice(&d);
        p.extend_from_slice(payload);
        p
    }

    fn ports(src: u16, dst: u16) -> Vec<u8> {
        let mut p = src.to_be_bytes().to_vec();
        p.extend_from_slice(&dst.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0, 0]);
        p
    }

    fn key(frame: &[u8]) -> FlowKey {
        match parse(frame, true) {
            Ok(Parsed::Ip(key)) => key,
            other => panic!("expected an IP flow, got {other:?}"),
        }
    }

    #[test]
    fn ipv4_udp_with_vlan_and_qinq() {
        let packet = ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            proto::UDP,
            0,
            &ports(1000, 53),
        );
        let plain = key(&ethernet(ethertype::IPV4, &packet));
        assert_eq!(plain.src, v4_mapped(&[10, 0, 0, 1]));
        assert_eq!(
            (plain.protocol, plain.src_port, plain.dst_port),
            (proto::UDP, 1000, 53)
        );
        let mut tagged = vec![0x00, 0x64];
        tagged.extend_from_slice(&ethertype::IPV4.to_be_bytes());
        tagged.extend_from_slice(&packet);
        assert_eq!(key(&ethernet(ethertype::VLAN, &tagged)), plain);
        let mut qinq = vec![0x00, 0x0a];
        qinq.extend_from_slice(&ethertype::VLAN.to_be_bytes());
        qinq.extend_from_slice(&tagged);
        assert_eq!(key(&ethernet(ethertype::QINQ, &qinq)), plain);
    }

    #[test]
    fn ipv4_options_and_padding() {
        let mut packet = ipv4([1, 1, 1, 1], [2, 2, 2, 2], proto::TCP, 0, &ports(80, 5555));
        // Add 4 bytes of options (IHL 6): NOP NOP NOP EOL.
        packet[0] = 0x46;
        packet.splice(20..20, [1, 1, 1, 0]);
        let total = packet.len() as u16;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet.extend_from_slice(&[0; 10]); // Ethernet padding
        let k = key(&ethernet(ethertype::IPV4, &packet));
        assert_eq!((k.src_port, k.dst_port), (80, 5555));
    }

    #[test]
    fn ipv4_fragments() {
        let first = key(&ethernet(
            ethertype::IPV4,
            &ipv4([1, 0, 0, 1], [1, 0, 0, 2], proto::UDP, 0x2000, &ports(7, 9)),
        ));
        assert!(first.fragment);
        assert_eq!(first.src_port, 7);
        let later = key(&ethernet(
            ethertype::IPV4,
            &ipv4([1, 0, 0, 1], [1, 0, 0, 2], proto::UDP, 0x00b9, b"data"),
        ));
        assert!(later.fragment);
        assert_eq!((later.src_port, later.dst_port), (0, 0));
        for mode in [
            HashMode::TwoTuple,
            HashMode::ThreeTuple,
            HashMode::FiveTuple,
        ] {
            assert_eq!(flow_hash(&first, mode, &KEY), flow_hash(&later, mode, &KEY));
        }
    }

    #[test]
    fn ipv6_extension_headers_and_fragments() {
        // Hop-by-hop (8 bytes) then destination options (16 bytes) then TCP.
        let mut payload = vec![proto::DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[proto::TCP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&ports(443, 40000));
        let k = key(&ethernet(
            ethertype::IPV6,
            &ipv6(1, 2, proto::HOP_BY_HOP, &payload),
        ));
        assert_eq!(
            (k.protocol, k.src_port, k.dst_port),
            (proto::TCP, 443, 40000)
        );
        assert_eq!(k.src[15], 1);
        // A first fragment has ports; a later one has none; both hash the same.
        let mut first = vec![proto::UDP, 0, 0x00, 0x01, 0, 0, 0, 7];
        first.extend_from_slice(&ports(5, 6));
        let first = key(&ethernet(
            ethertype::IPV6,
            &ipv6(1, 2, proto::FRAGMENT, &first),
        ));
        let later = vec![proto::UDP, 0, 0x00, 0xb8, 0, 0, 0, 7, 1, 2, 3];
        let later = key(&ethernet(
            ethertype::IPV6,
            &ipv6(1, 2, proto::FRAGMENT, &later),
        ));
        assert!(first.fragment && later.fragment);
        assert_eq!(first.src_port, 5);
        assert_eq!(later.src_port, 0);
        assert_eq!(
            flow_hash(&first, HashMode::FiveTuple, &KEY),
            flow_hash(&later, HashMode::FiveTuple, &KEY)
        );
    }

    /// An IPv6 packet whose payload starts with `count` destination-options headers, then
    /// `tail` (a transport header or anything else).
    fn ipv6_with_extensions(count: usize, last_next: u8, tail: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for i in 0..count {
            let next = if i + 1 == count {
                last_next
            } else {
                proto::DEST_OPTS
            };
            payload.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
        payload.extend_from_slice(tail);
        let first = if count == 0 {
            last_next
        } else {
            proto::DEST_OPTS
        };
        ethernet(ethertype::IPV6, &ipv6(1, 2, first, &payload))
    }

    #[test]
    fn every_packet_of_a_flow_hashes_alike_by_default() {
        let mode = HashMode::default();
        let whole = key(&ethernet(
            ethertype::IPV4,
            &ipv4([1, 0, 0, 1], [1, 0, 0, 2], proto::TCP, 0, &ports(4000, 80)),
        ));
        let first = key(&ethernet(
            ethertype::IPV4,
            &ipv4(
                [1, 0, 0, 1],
                [1, 0, 0, 2],
                proto::TCP,
                0x2000,
                &ports(4000, 80),
            ),
        ));
        let later = key(&ethernet(
            ethertype::IPV4,
            &ipv4([1, 0, 0, 2], [1, 0, 0, 1], proto::TCP, 0x0003, b"evasion!"),
        ));
        let h = flow_hash(&whole, mode, &KEY);
        assert_eq!(flow_hash(&first, mode, &KEY), h);
        assert_eq!(flow_hash(&later, mode, &KEY), h);
        // IPv6: more extension headers than are walked, a fragment, and a plain segment.
        let whole = key(&ipv6_with_extensions(0, proto::TCP, &ports(4000, 80)));
        let long_chain = key(&ipv6_with_extensions(20, proto::TCP, &ports(4000, 80)));
        assert!(long_chain.unwalked);
        let h = flow_hash(&whole, mode, &KEY);
        assert_eq!(flow_hash(&long_chain, mode, &KEY), h);
        // Packets whose ports are out of reach hash on the address pair in every mode.
        for mode in [HashMode::ThreeTuple, HashMode::FiveTuple] {
            assert_eq!(
                flow_hash(&long_chain, mode, &KEY),
                flow_hash(&whole, HashMode::TwoTuple, &KEY)
            );
        }
    }

    #[test]
    fn a_later_ipv6_fragment_is_not_read_as_headers() {
        // The fragment header says "destination options next" (the first fragment carried
        // them); a later fragment's bytes are data that must not be parsed as that header.
        let mut later = vec![proto::DEST_OPTS, 0, 0x05, 0x00, 0, 0, 0, 9];
        later.extend_from_slice(&[0xff; 3]);
        let k = key(&ethernet(
            ethertype::IPV6,
            &ipv6(1, 2, proto::FRAGMENT, &later),
        ));
        assert!(k.fragment && !k.unwalked);
        assert_eq!((k.src_port, k.dst_port), (0, 0));
    }

    #[test]
    fn the_hash_depends_on_its_key() {
        let k = key(&ethernet(
            ethertype::IPV4,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, 0, &ports(1, 2)),
        ));
        let other = HashKey { k0: 1, ..KEY };
        assert_ne!(
            flow_hash(&k, HashMode::TwoTuple, &KEY),
            flow_hash(&k, HashMode::TwoTuple, &other)
        );
        let hex = KEY.to_hex();
        assert_eq!(hex, "000102030405060708090a0b0c0d0e0f");
        assert_eq!(hex.parse::<HashKey>(), Ok(KEY));
        let bytes: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(HashKey::from_bytes(bytes), KEY);
        for bad in [
            "",
            "00",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert_eq!(bad.parse::<HashKey>(), Err(HashKeyError), "{bad:?}");
        }
        assert_eq!(format!("{KEY:?}"), "HashKey(..)");
    }

    #[test]
    fn tunnels_are_opened() {
        let inner = ipv4(
            [192, 168, 0, 1],
            [192, 168, 0, 2],
            proto::TCP,
            0,
            &ports(1234, 80),
        );
        // IP-in-IP.
        let outer = ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto::IPIP, 0, &inner);
        let k = key(&ethernet(ethertype::IPV4, &outer));
        assert_eq!((k.src_port, k.tunnel_depth), (1234, 1));
        assert_eq!(k.src, v4_mapped(&[192, 168, 0, 1]));
        // GRE with a key field.
        let mut gre = vec![0x20, 0x00, 0x08, 0x00, 0, 0, 0, 42];
        gre.extend_from_slice(&inner);
        let k = key(&ethernet(
            ethertype::IPV4,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto::GRE, 0, &gre),
        ));
        assert_eq!((k.dst_port, k.tunnel_depth), (80, 1));
        // VXLAN: UDP to 4789, VXLAN header, inner Ethernet.
        let mut vxlan = ports(50000, VXLAN_PORT);
        vxlan.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 1, 0]);
        vxlan.extend_from_slice(&ethernet(ethertype::IPV4, &inner));
        let k = key(&ethernet(
            ethertype::IPV4,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, 0, &vxlan),
        ));
        assert_eq!((k.src_port, k.tunnel_depth), (1234, 1));
        // Without decapsulation, the outer flow.
        let frame = ethernet(
            ethertype::IPV4,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], proto::UDP, 0, &vxlan),
        );
        let Ok(Parsed::Ip(outer)) = parse(&frame, false) else {
            panic!()
        };
        assert_eq!(outer.dst_port, VXLAN_PORT);
    }

    #[test]
    fn non_ip_and_errors() {
        assert_eq!(
            parse(&ethernet(0x0806, &[0; 28]), true),
            Ok(Parsed::NonIp { ethertype: 0x0806 })
        );
        assert_eq!(
            parse(&[0; 10], true),
            Err(ParseError::Truncated("Ethernet header"))
        );
        assert_eq!(
            parse(&ethernet(ethertype::IPV4, &[0x45, 0, 0]), true),
            Err(ParseError::Truncated("IPv4 header"))
        );
        assert_eq!(
            parse(&ethernet(ethertype::IPV4, &[0x65; 20]), true),
            Err(ParseError::Malformed("IPv4 version"))
        );
        assert_eq!(
            parse(&ethernet(ethertype::IPV6, &[0x60; 20]), true),
            Err(ParseError::Truncated("IPv6 header"))
        );
        let mut tags = Vec::new();
        for _ in 0..5 {
            tags.extend_from_slice(&[0, 1, 0x81, 0x00]);
        }
        assert!(matches!(
            parse(&ethernet(ethertype::VLAN, &tags), true),
            Err(ParseError::Malformed(_))
        ));
        // A TCP packet too short for its ports.
        let short = ipv4([1, 1, 1, 1], [2, 2, 2, 2], proto::TCP, 0, &[0, 80]);
        assert_eq!(
            parse(&ethernet(ethertype::IPV4, &short), true),
            Err(ParseError::Truncated("transport header"))
        );
    }

    #[test]
    fn hash_is_symmetric_and_mode_aware() {
        let a = key(&ethernet(
            ethertype::IPV4,
            &ipv4(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                proto::TCP,
                0,
                &ports(1000, 80),
            ),
        ));
        let b = key(&ethernet(
            ethertype::IPV4,
            &ipv4(
                [10, 0, 0, 2],
                [10, 0, 0, 1],
                proto::TCP,
                0,
                &ports(80, 1000),
            ),
        ));
        for mode in [
            HashMode::TwoTuple,
            HashMode::ThreeTuple,
            HashMode::FiveTuple,
        ] {
            assert_eq!(
                flow_hash(&a, mode, &KEY),
                flow_hash(&b, mode, &KEY),
                "{mode:?}"
            );
        }
        let other_port = key(&ethernet(
            ethertype::IPV4,
            &ipv4(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                proto::TCP,
                0,
                &ports(1001, 80),
            ),
        ));
        assert_ne!(
            flow_hash(&a, HashMode::FiveTuple, &KEY),
            flow_hash(&other_port, HashMode::FiveTuple, &KEY)
        );
        assert_eq!(
            flow_hash(&a, HashMode::TwoTuple, &KEY),
            flow_hash(&other_port, HashMode::TwoTuple, &KEY)
        );
        let udp = FlowKey {
            protocol: proto::UDP,
            ..a
        };
        assert_ne!(
            flow_hash(&a, HashMode::ThreeTuple, &KEY),
            flow_hash(&udp, HashMode::ThreeTuple, &KEY)
        );
        assert_eq!(
            flow_hash(&a, HashMode::TwoTuple, &KEY),
            flow_hash(&udp, HashMode::TwoTuple, &KEY)
        );
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // A fixed value: changing the function moves every flow to another way in a running
        // fleet, so it must be a deliberate, noted change.
        let k = FlowKey {
            src: v4_mapped(&[10, 0, 0, 1]),
            dst: v4_mapped(&[10, 0, 0, 2]),
            protocol: proto::TCP,
            src_port: 1000,
            dst_port: 80,
            fragment: false,
            tunnel_depth: 0,
            unwalked: false,
        };
        assert_eq!(flow_hash(&k, HashMode::FiveTuple, &KEY), STABLE_5TUPLE);
        let mut v6 = k;
        v6.src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        v6.dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(flow_hash(&v6, HashMode::FiveTuple, &KEY), STABLE_5TUPLE_V6);
    }

    /// The 5-tuple hash of 10.0.0.1:1000 → 10.0.0.2:80 TCP under `KEY` (changed in
    /// December 2026, when IPv4 flows went from a five-word to a two-word message).
    const STABLE_5TUPLE: u64 = 157_587_167_707_192_173;
    /// The same flow between 2001:db8::1 and 2001:db8::2 (unchanged since the hash was keyed).
    const STABLE_5TUPLE_V6: u64 = 5_686_935_553_555_138_884;

    /// SipHash-1-3 as published (the `siphasher` crate) of `bytes` under `KEY`.
    fn reference(bytes: &[u8]) -> u64 {
        use std::hash::Hasher as _;
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(KEY.k0, KEY.k1);
        hasher.write(bytes);
        hasher.finish()
    }

    fn le_bytes(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn the_word_siphash_is_siphash_1_3() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let two = [next(), next()];
            let five = [next(), next(), next(), next(), next()];
            assert_eq!(sip13(&KEY, two), reference(&le_bytes(&two)));
            assert_eq!(sip13(&KEY, five), reference(&le_bytes(&five)));
        }
    }

    #[test]
    fn the_flow_hash_message_is_as_documented() {
        let key = |src: [u8; 16], dst: [u8; 16], sp: u16, dp: u16| FlowKey {
            src,
            dst,
            protocol: proto::UDP,
            src_port: sp,
            dst_port: dp,
            fragment: false,
            tunnel_depth: 0,
            unwalked: false,
        };
        // IPv4: the lower (address, port) first, both directions.
        let low = 0x0a00_0001u64;
        let high = 0x0a00_0002u64;
        let expected = reference(&le_bytes(&[
            (low << 32) | high,
            (u64::from(proto::UDP) << 32) | (5000 << 16) | 53,
        ]));
        // Both directions of the flow between x:5000 and y:53 hash to `expected`.
        let both_directions = |x: [u8; 16], y: [u8; 16], expected: u64| {
            assert_eq!(
                flow_hash(&key(x, y, 5000, 53), HashMode::FiveTuple, &KEY),
                expected
            );
            assert_eq!(
                flow_hash(&key(y, x, 53, 5000), HashMode::FiveTuple, &KEY),
                expected
            );
        };
        let a = v4_mapped(&[10, 0, 0, 1]);
        let b = v4_mapped(&[10, 0, 0, 2]);
        both_directions(a, b, expected);
        // One address IPv4-mapped, the other not: the five-word message.
        let mut other = [0u8; 16];
        other[0] = 0x20;
        other[15] = 1;
        let expected = reference(&le_bytes(&[
            0,
            0xffff_0a00_0001,
            0x2000_0000_0000_0000,
            1,
            (u64::from(proto::UDP) << 32) | (5000 << 16) | 53,
        ]));
        both_directions(a, other, expected);
    }

    #[test]
    fn ways_are_even() {
        let ways = 30;
        let mut counts = vec![0u32; ways as usize];
        for i in 0..30_000u32 {
            let k = FlowKey {
                src: v4_mapped(&[10, 0, (i >> 8) as u8, i as u8]),
                dst: v4_mapped(&[10, 1, 0, 1]),
                protocol: proto::UDP,
                src_port: (i % 60_000) as u16,
                dst_port: 53,
                fragment: false,
                tunnel_depth: 0,
                unwalked: false,
            };
            counts[way_of(flow_hash(&k, HashMode::FiveTuple, &KEY), ways) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "{counts:?}");
    }
}
