//! Pre-filter rules as text: `ACTION [src PREFIX] [dst PREFIX] [proto P] [sport A[-B]]
//! [dport A[-B]] [for SECONDS]`, e.g. `drop src 203.0.113.0/24 proto udp dport 53` or
//! `bypass dst 2001:db8::/32 for 60`. ACTION is `drop` (never reaches userspace), `pass` (to the
//! pipeline) or `bypass` (to the kernel, not to the ways). Prefixes are IPv4 or IPv6 (an
//! address alone is a host prefix); IPv4 is kept as IPv4-mapped IPv6 (`/n` → `/96+n`), so one
//! table holds both. `proto` is `tcp`, `udp`, `icmp`, `icmpv6` or a number; ports need `tcp`
//! or `udp`. Parsing and printing only: no sockets, no clocks.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// What a matching rule does with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleAction {
    /// Let the frame on to the pipeline.
    Pass,
    /// Drop the frame in XDP: it never reaches a way.
    Drop,
    /// Hand the frame to the kernel's own network stack instead of the ways.
    Bypass,
}

impl RuleAction {
    /// The action as a rule writes it: `pass`, `drop`, `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Pass => "pass",
            RuleAction::Drop => "drop",
            RuleAction::Bypass => "bypass",
        }
    }
}

/// An address prefix in IPv6 space (IPv4 as IPv4-mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    /// The address with the bits beyond `len` cleared.
    pub addr: [u8; 16],
    /// Prefix length in IPv6 space, 0..=128.
    pub len: u8,
}

impl Prefix {
    /// The prefix `addr/len` (`len` in the address's own family), host bits cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, RuleError> {
        let (octets, len) = match addr {
            IpAddr::V4(a) if len <= 32 => (a.to_ipv6_mapped().octets(), 96 + len),
            IpAddr::V6(a) if len <= 128 => (a.octets(), len),
            _ => {
                return Err(RuleError(format!(
                    "prefix length /{len} is too long for {addr}"
                )))
            }
        };
        let mut masked = [0u8; 16];
        for (i, (out, byte)) in masked.iter_mut().zip(octets).enumerate() {
            let bits = usize::from(len).saturating_sub(i * 8).min(8);
            let mask = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
            *out = byte & mask;
        }
        Ok(Self { addr: masked, len })
    }

    /// Every address, IPv4 and IPv6.
    pub const ANY: Prefix = Prefix {
        addr: [0; 16],
        len: 0,
    };

    /// Whether `addr` (IPv6, IPv4 as IPv4-mapped) lies in this prefix.
    pub fn contains(&self, addr: &[u8; 16]) -> bool {
        let len = usize::from(self.len.min(128));
        let (whole, bits) = (len / 8, len % 8);
        addr[..whole] == self.addr[..whole]
            && (bits == 0 || (addr[whole] ^ self.addr[whole]) & (0xffu8 << (8 - bits)) == 0)
    }

    fn is_v4(&self) -> bool {
        self.len >= 96 && self.addr[..10] == [0; 10] && self.addr[10..12] == [0xff, 0xff]
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_v4() {
            let a = Ipv4Addr::new(self.addr[12], self.addr[13], self.addr[14], self.addr[15]);
            write!(f, "{a}/{}", self.len - 96)
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.addr), self.len)
        }
    }
}

impl std::str::FromStr for Prefix {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, RuleError> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (
                a,
                Some(
                    l.parse::<u8>()
                        .map_err(|_| RuleError(format!("{text:?}: bad prefix length")))?,
                ),
            ),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| RuleError(format!("{text:?} is not an address or prefix")))?;
        let len = len.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
        Prefix::new(addr, len)
    }
}

/// A rule as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    /// What a match does.
    pub action: RuleAction,
    /// Source prefix; `None`: any source.
    pub src: Option<Prefix>,
    /// Destination prefix; `None`: any destination.
    pub dst: Option<Prefix>,
    /// IP protocol number; 0: any.
    pub protocol: u8,
    /// Source port range, inclusive (`(0, 65535)`: any).
    pub sport: (u16, u16),
    /// Destination port range, inclusive (`(0, 65535)`: any).
    pub dport: (u16, u16),
    /// Lifetime in seconds; `None`: until removed.
    pub seconds: Option<u64>,
}

impl RuleSpec {
    /// Whether a packet of flow `key` matches: its addresses in the prefixes, its protocol
    /// (0: any) and its ports in the ranges (a rule with ports matches only packets whose
    /// ports were read, so not later fragments). The action and the lifetime play no part.
    pub fn matches(&self, key: &crate::packet::FlowKey) -> bool {
        let ports_given = self.sport != ANY_PORT || self.dport != ANY_PORT;
        let ports_read = !key.fragment && !key.unwalked;
        self.src.is_none_or(|p| p.contains(&key.src))
            && self.dst.is_none_or(|p| p.contains(&key.dst))
            && (self.protocol == 0 || self.protocol == key.protocol)
            && (!ports_given
                || (ports_read
                    && (self.sport.0..=self.sport.1).contains(&key.src_port)
                    && (self.dport.0..=self.dport.1).contains(&key.dst_port)))
    }
}

/// Why a rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError(pub String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleError {}

const ANY_PORT: (u16, u16) = (0, u16::MAX);
/// Longest rule lifetime: ten years.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

fn protocol(text: &str) -> Result<u8, RuleError> {
    Ok(match text {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        n => n
            .parse::<u8>()
            .map_err(|_| RuleError(format!("proto {n:?}: tcp, udp, icmp, icmpv6 or 0-255")))?,
    })
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn ports(text: &str) -> Result<(u16, u16), RuleError> {
    let bad = || RuleError(format!("ports {text:?}: PORT or LOW-HIGH"));
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        None => {
            let p = text.parse().map_err(|_| bad())?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl std::str::FromStr for RuleSpec {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, RuleError> {
        let mut words = text.split_whitespace();
        let action = match words.next() {
            Some("drop") => RuleAction::Drop,
            Some("pass") => RuleAction::Pass,
            Some("bypass") => RuleAction::Bypass,
            Some(other) => {
                return Err(RuleError(format!(
                    "{other:?}: a rule starts with drop, pass or bypass"
                )))
            }
            None => return Err(RuleError("empty rule".into())),
        };
        let mut rule = RuleSpec {
            action,
            src: None,
            dst: None,
            protocol: 0,
            sport: ANY_PORT,
            dport: ANY_PORT,
            seconds: None,
        };
        let mut seen = Vec::new();
        while let Some(word) = words.next() {
            let value = words
                .next()
                .ok_or_else(|| RuleError(format!("{word:?} needs a value")))?;
            if seen.contains(&word) {
                return Err(RuleError(format!("{word:?} given twice")));
            }
            seen.push(word);
            match word {
                "src" => rule.src = Some(value.parse()?),
                "dst" => rule.dst = Some(value.parse()?),
                "proto" => rule.protocol = protocol(value)?,
                "sport" => rule.sport = ports(value)?,
                "dport" => rule.dport = ports(value)?,
                "for" => {
                    let s = value.trim_end_matches('s');
                    rule.seconds = Some(
                        s.parse()
                            .ok()
                            .filter(|s| *s > 0 && *s <= MAX_SECONDS)
                            .ok_or_else(|| {
                                RuleError(format!(
                                    "for {value:?}: a number of seconds from 1 to {MAX_SECONDS}"
                                ))
                            })?,
                    )
                }
                other => {
                    return Err(RuleError(format!(
                        "{other:?}: expected src, dst, proto, sport, dport or for"
                    )))
                }
            }
        }
        if (rule.sport != ANY_PORT || rule.dport != ANY_PORT) && !matches!(rule.protocol, 6 | 17) {
            return Err(RuleError("ports need proto tcp or proto udp".into()));
        }
        if let (Some(s), Some(d)) = (rule.src, rule.dst) {
            if s.is_v4() != d.is_v4() && s.len != 0 && d.len != 0 {
                return Err(RuleError(
                    "src and dst of different address families".into(),
                ));
            }
        }
        Ok(rule)
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action.as_str())?;
        if let Some(src) = &self.src {
            write!(f, " src {src}")?;
        }
        if let Some(dst) = &self.dst {
            write!(f, " dst {dst}")?;
        }
        if self.protocol != 0 {
            write!(f, " proto {}", protocol_name(self.protocol))?;
        }
        for (name, (lo, hi)) in [("sport", self.sport), ("dport", self.dport)] {
            if (lo, hi) != ANY_PORT {
                if lo == hi {
                    write!(f, " {name} {lo}")?;
                } else {
                    write!(f, " {name} {lo}-{hi}")?;
                }
            }
        }
        if let Some(s) = self.seconds {
            write!(f, " for {s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for text in [
            "drop src 203.0.113.0/24 proto udp dport 53",
            "bypass dst 2001:db8::/32 for 60",
            "pass src 10.0.0.1/32 dst 10.0.0.2/32 proto tcp sport 1024-65535 dport 443",
            "drop",
            "drop proto icmp",
        ] {
            let rule: RuleSpec = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(rule.to_string(), text);
        }
        let host: RuleSpec = "drop src 192.0.2.7"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.src.map(|p| p.len), Some(128));
        assert_eq!(host.to_string(), "drop src 192.0.2.7/32");
        let masked: Prefix = "10.1.2.3/8".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(masked.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_rules_name_the_problem() {
        for (text, expected) in [
            ("", "empty rule"),
            ("block src 1.2.3.4", "starts with drop"),
            ("drop src", "needs a value"),
            ("drop src 1.2.3.4/33", "too long"),
            ("drop src nope", "not an address"),
            ("drop dport 53", "ports need proto"),
            ("drop proto udp dport 9-3", "LOW-HIGH"),
            ("drop proto tcpx", "proto"),
            ("drop for 0", "from 1 to"),
            ("drop for 99999999999", "from 1 to"),
            ("drop src 1.2.3.4 src 1.2.3.5", "given twice"),
            ("drop via eth0", "expected src"),
            ("drop src 10.0.0.0/8 dst 2001:db8::/32", "families"),
        ] {
            let error = text.parse::<RuleSpec>().expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_rule_matches_the_flows_it_names() {
        let key = |src: &str, dst: &str, protocol: u8, sport: u16, dport: u16| {
            let v6 = |a: &str| match a.parse::<std::net::IpAddr>().unwrap() {
                std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                std::net::IpAddr::V6(a) => a.octets(),
            };
            crate::packet::FlowKey {
                src: v6(src),
                dst: v6(dst),
                protocol,
                src_port: sport,
                dst_port: dport,
                fragment: false,
                tunnel_depth: 0,
                unwalked: false,
            }
        };
        let rule = |text: &str| text.parse::<RuleSpec>().unwrap();
        let udp = key("203.0.113.9", "10.0.0.1", 17, 5000, 53);
        assert!(rule("drop src 203.0.113.0/24").matches(&udp));
        assert!(rule("drop src 203.0.113.8/31 proto udp dport 53").matches(&udp));
        assert!(rule("drop dst 10.0.0.1").matches(&udp));
        assert!(rule("pass").matches(&udp));
        assert!(!rule("drop src 203.0.113.10/31").matches(&udp));
        assert!(
            !rule("drop dst 203.0.113.9").matches(&udp),
            "direction counts"
        );
        assert!(!rule("drop proto tcp").matches(&udp));
        assert!(!rule("drop proto udp dport 54-60").matches(&udp));
        let mut later_fragment = udp;
        later_fragment.fragment = true;
        assert!(!rule("drop proto udp dport 53").matches(&later_fragment));
        assert!(rule("drop src 203.0.113.9").matches(&later_fragment));
        let v6 = key("2001:db8::7", "2001:db8:1::1", 6, 1, 443);
        assert!(rule("drop src 2001:db8::/33").matches(&v6));
        assert!(!rule("drop src 2001:db8:8000::/33").matches(&v6));
        assert!(!rule("drop src 0.0.0.0/0").matches(&v6), "IPv4 space only");
        assert!(rule("drop src ::/0").matches(&udp), "every address");
    }
}
