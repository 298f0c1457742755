//! What a backend learns about the client: PROXY protocol v1 and v2 headers and bud's JSON
//! line, encoded at the start of the backend stream; and a parser for both PROXY versions.
//!
//! Formats: haproxy's `proxy-protocol.txt` (v1 text line; v2 binary header with TLVs), and
//! bud's `BUD {json}\r\n` line.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
};

use crate::http1::Status;

/// The 12-byte signature that starts every PROXY v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest PROXY v1 line, CRLF included (haproxy's spec).
pub const V1_MAX_LEN: usize = 107;

/// PROXY v2 TLV types used here.
pub mod tlv {
    /// The ALPN protocol negotiated with the client.
    pub const ALPN: u8 = 0x01;
    /// The authority: the server name (SNI) the client asked for.
    pub const AUTHORITY: u8 = 0x02;
    /// The SSL TLV: client bits, verify result, then sub-TLVs below.
    pub const SSL: u8 = 0x20;
    /// Sub-TLV of SSL: the TLS version (`TLSv1.3`).
    pub const SSL_VERSION: u8 = 0x21;
    /// Sub-TLV of SSL: the client certificate's subject common name.
    pub const SSL_CN: u8 = 0x22;
    /// Sub-TLV of SSL: the negotiated cipher's name.
    pub const SSL_CIPHER: u8 = 0x23;
    /// Client bits of the SSL TLV.
    pub const CLIENT_SSL: u8 = 0x01;
    /// Client bit of the SSL TLV: a certificate was presented on this connection.
    pub const CLIENT_CERT_CONN: u8 = 0x02;
    /// Client bit of the SSL TLV: a certificate was presented at least once in this TLS session.
    pub const CLIENT_CERT_SESS: u8 = 0x04;
    /// fastedge's own (in the custom range 0xE0–0xEF): the client certificate, DER.
    pub const FASTEDGE_CLIENT_CERT: u8 = 0xE0;
}

/// What the TLS layer knows about a connection, for the TLVs of PROXY v2.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// SNI server name the client sent.
    pub server_name: Option<String>,
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: Option<String>,
    /// Cipher suite name.
    pub cipher: Option<String>,
    /// Client certificate: common name, when one was presented and verified.
    pub client_cn: Option<String>,
    /// Whether a client certificate was presented on this connection.
    pub client_cert: bool,
    /// Client certificate verification result (0 = success, as X509_V_OK).
    pub verify_result: u32,
    /// The client certificate (DER), when the backend asked for it: TLV
    /// [`tlv::FASTEDGE_CLIENT_CERT`].
    pub client_cert_der: Option<Vec<u8>>,
}

/// Addresses of one connection: the client's, and ours that it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionAddrs {
    /// The client's address and port.
    pub client: SocketAddr,
    /// Our address and port the client connected to.
    pub local: SocketAddr,
}

/// Both addresses of a connection in one family.
enum SameFamily {
    V4(SocketAddrV4, SocketAddrV4),
    V6(SocketAddrV6, SocketAddrV6),
}

impl ConnectionAddrs {
    /// Both addresses in one family: an IPv4-mapped IPv6 address is turned into IPv4 when the
    /// other side is IPv4. `None` when the families still differ.
    fn same_family(&self) -> Option<SameFamily> {
        let unmap = |a: SocketAddr| match a {
            SocketAddr::V6(v6) => v6
                .ip()
                .to_ipv4_mapped()
                .map_or(a, |v4| SocketAddr::V4(SocketAddrV4::new(v4, v6.port()))),
            v4 => v4,
        };
        match (unmap(self.client), unmap(self.local)) {
            (SocketAddr::V4(c), SocketAddr::V4(l)) => Some(SameFamily::V4(c, l)),
            _ => match (self.client, self.local) {
                (SocketAddr::V6(c), SocketAddr::V6(l)) => Some(SameFamily::V6(c, l)),
                _ => None,
            },
        }
    }
}

/// Appends a PROXY v1 line for `addrs` to `out`.
pub fn encode_v1(addrs: &ConnectionAddrs, out: &mut Vec<u8>) {
    use std::io::Write;
    // Writing into a Vec cannot fail; formatting straight into it spares a String per line.
    let _ = match addrs.same_family() {
        Some(SameFamily::V4(c, l)) => write!(
            out,
            "PROXY TCP4 {} {} {} {}\r\n",
            c.ip(),
            l.ip(),
            c.port(),
            l.port()
        ),
        Some(SameFamily::V6(c, l)) => write!(
            out,
            "PROXY TCP6 {} {} {} {}\r\n",
            c.ip(),
            l.ip(),
            c.port(),
            l.port()
        ),
        None => out.write_all(b"PROXY UNKNOWN\r\n"),
    };
}

/// Appends a PROXY v2 header (command PROXY, TCP over IPv4 or IPv6) for `addrs` to `out`, with
/// TLVs for ALPN, authority (SNI) and SSL (version, cipher, client certificate CN).
pub fn encode_v2(addrs: &ConnectionAddrs, tls: Option<&TlsFacts>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    let family_at = out.len();
    out.extend_from_slice(&[0, 0, 0]); // family/protocol and length, filled below
    match addrs.same_family() {
        Some(SameFamily::V4(c, l)) => {
            out[family_at] = 0x11; // AF_INET, STREAM
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        Some(SameFamily::V6(c, l)) => {
            out[family_at] = 0x21; // AF_INET6, STREAM
            out.extend_from_slice(&c.ip().octets());
            out.extend_from_slice(&l.ip().octets());
            out.extend_from_slice(&c.port().to_be_bytes());
            out.extend_from_slice(&l.port().to_be_bytes());
        }
        None => out[family_at] = 0x00, // AF_UNSPEC: the receiver keeps the real addresses
    }
    if let Some(tls) = tls {
        if let Some(alpn) = &tls.alpn {
            push_tlv(out, tlv::ALPN, alpn);
        }
        if let Some(name) = &tls.server_name {
            push_tlv(out, tlv::AUTHORITY, name.as_bytes());
        }
        let mut ssl = Vec::with_capacity(64);
        let mut client = tlv::CLIENT_SSL;
        if tls.client_cert {
            client |= tlv::CLIENT_CERT_CONN | tlv::CLIENT_CERT_SESS;
        }
        ssl.push(client);
        ssl.extend_from_slice(&tls.verify_result.to_be_bytes());
        if let Some(version) = &tls.version {
            push_tlv(&mut ssl, tlv::SSL_VERSION, version.as_bytes());
        }
        if let Some(cn) = &tls.client_cn {
            push_tlv(&mut ssl, tlv::SSL_CN, cn.as_bytes());
        }
        if let Some(cipher) = &tls.cipher {
            push_tlv(&mut ssl, tlv::SSL_CIPHER, cipher.as_bytes());
        }
        push_tlv(out, tlv::SSL, &ssl);
        if let Some(der) = &tls.client_cert_der {
            push_tlv(out, tlv::FASTEDGE_CLIENT_CERT, der);
        }
    }
    let len = out.len() - start - 16;
    // Everything we add is small (names ≤ 255 bytes by TLS); clamp anyway instead of wrapping.
    let len = u16::try_from(len).unwrap_or(u16::MAX);
    out[family_at + 1..family_at + 3].copy_from_slice(&len.to_be_bytes());
}

fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// Appends bud's JSON line: `BUD {"family":…,"bud":{host,port},"peer":{host,port,cn,dn}}\r\n`.
/// `cn`/`dn` are the client certificate's subject CN and DN, `false` when absent.
pub fn encode_bud_json(
    addrs: &ConnectionAddrs,
    cn: Option<&str>,
    dn: Option<&str>,
    out: &mut Vec<u8>,
) {
    let family = if addrs.client.is_ipv4() {
        "TCP4"
    } else {
        "TCP6"
    };
    let mut line = format!(
        "BUD {{\"family\":\"{family}\",\"bud\":{{\"host\":\"{}\",\"port\":{}}},\"peer\":{{\"host\":\"{}\",\"port\":{},\"cn\":",
        addrs.local.ip(),
        addrs.local.port(),
        addrs.client.ip(),
        addrs.client.port()
    );
    push_json_string_or_false(&mut line, cn);
    line.push_str(",\"dn\":");
    push_json_string_or_false(&mut line, dn);
    line.push_str("}}\r\n");
    out.extend_from_slice(line.as_bytes());
}

fn push_json_string_or_false(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("false");
        return;
    };
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A parsed PROXY header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// `None` for v1 `UNKNOWN`, v2 `LOCAL`, or v2 `AF_UNSPEC`/UNIX families.
    pub addrs: Option<ConnectionAddrs>,
    /// Raw v2 TLVs as (type, value); empty for v1.
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// Why a PROXY header was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes start with neither `PROXY ` nor the v2 signature.
    NotProxy,
    /// A v1 line longer than 107 bytes.
    V1TooLong,
    /// A v1 line that does not follow the grammar; the text says which part.
    V1Malformed(&'static str),
    /// A v2 header with an unknown version or command.
    V2BadVersion(u8),
    /// A v2 address block shorter than its family needs.
    V2ShortAddresses,
    /// A TLV that runs past the header's end.
    V2BadTlv,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str("not a PROXY protocol header"),
            ProxyError::V1TooLong => f.write_str("PROXY v1 line longer than 107 bytes"),
            ProxyError::V1Malformed(what) => write!(f, "malformed PROXY v1 line: {what}"),
            ProxyError::V2BadVersion(b) => write!(f, "PROXY v2 version/command byte {b:#04x}"),
            ProxyError::V2ShortAddresses => f.write_str("PROXY v2 address block too short"),
            ProxyError::V2BadTlv => f.write_str("PROXY v2 TLV runs past the header"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses a PROXY v1 or v2 header at the start of `buf`; `Complete` carries the header length.
pub fn parse(buf: &[u8]) -> Result<Status<(ProxyHeader, usize)>, ProxyError> {
    let v1_prefix = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Status::Partial)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(v1_prefix.len());
    if buf[..n] == v1_prefix[..n] {
        return if n < v1_prefix.len() {
            Ok(Status::Partial)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Status<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(Status::Partial)
        };
    };
    if lf == 0 || window[lf - 1] != b'\r' {
        return Err(ProxyError::V1Malformed("line does not end in CRLF"));
    }
    let line =
        std::str::from_utf8(&window[..lf - 1]).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let addrs = match parts.next() {
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = |what| parts.next().ok_or(ProxyError::V1Malformed(what));
            let (src, dst, sport, dport) = (
                next("missing source address")?,
                next("missing destination address")?,
                next("missing source port")?,
                next("missing destination port")?,
            );
            if parts.next().is_some() {
                return Err(ProxyError::V1Malformed("extra fields"));
            }
            let ip = |text: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = text
                    .parse()
                    .map_err(|_| ProxyError::V1Malformed("bad address"))?;
                if ip.is_ipv4() != (family == "TCP4") {
                    return Err(ProxyError::V1Malformed("address does not match the family"));
                }
                Ok(ip)
            };
            let port = |text: &str| -> Result<u16, ProxyError> {
                if text.is_empty()
                    || text.len() > 5
                    || !text.bytes().all(|b| b.is_ascii_digit())
                    || (text.len() > 1 && text.starts_with('0'))
                {
                    return Err(ProxyError::V1Malformed("bad port"));
                }
                text.parse()
                    .map_err(|_| ProxyError::V1Malformed("bad port"))
            };
            Some(ConnectionAddrs {
                client: SocketAddr::new(ip(src)?, port(sport)?),
                local: SocketAddr::new(ip(dst)?, port(dport)?),
            })
        }
        _ => return Err(ProxyError::V1Malformed("unknown family")),
    };
    Ok(Status::Complete((
        ProxyHeader {
            version: 1,
            addrs,
            tlvs: Vec::new(),
        },
        lf + 1,
    )))
}

fn parse_v2(buf: &[u8]) -> Result<Status<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(Status::Partial);
    }
    let ver_cmd = buf[12];
    let local = match ver_cmd {
        0x20 => true,
        0x21 => false,
        other => return Err(ProxyError::V2BadVersion(other)),
    };
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(Status::Partial);
    };
    let (addrs, addr_len) = match buf[13] >> 4 {
        0x1 => {
            let a = body.get(..12).ok_or(ProxyError::V2ShortAddresses)?;
            let ip = |o: usize| IpAddr::from([a[o], a[o + 1], a[o + 2], a[o + 3]]);
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                Some(ConnectionAddrs {
                    client: SocketAddr::new(ip(0), port(8)),
                    local: SocketAddr::new(ip(4), port(10)),
                }),
                12,
            )
        }
        0x2 => {
            let a = body.get(..36).ok_or(ProxyError::V2ShortAddresses)?;
            let ip = |o: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[o..o + 16]);
                IpAddr::from(octets)
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            (
                Some(ConnectionAddrs {
                    client: SocketAddr::new(ip(0), port(32)),
                    local: SocketAddr::new(ip(16), port(34)),
                }),
                36,
            )
        }
        0x3 => (None, 216.min(body.len())),
        _ => (None, 0),
    };
    let addrs = if local { None } else { addrs };
    let tlvs = parse_tlvs(&body[addr_len..])?;
    Ok(Status::Complete((
        ProxyHeader {
            version: 2,
            addrs,
            tlvs,
        },
        16 + len,
    )))
}

/// Splits a TLV block into (type, value) pairs.
pub fn parse_tlvs(mut block: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, ProxyError> {
    let mut tlvs = Vec::new();
    while !block.is_empty() {
        let [kind, hi, lo, rest @ ..] = block else {
            return Err(ProxyError::V2BadTlv);
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let value = rest.get(..len).ok_or(ProxyError::V2BadTlv)?;
        tlvs.push((*kind, value.to_vec()));
        block = &rest[len..];
    }
    Ok(tlvs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(client: &str, local: &str) -> ConnectionAddrs {
        ConnectionAddrs {
            client: client.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines() {
        let mut out = Vec::new();
        encode_v1(&addrs("192.0.2.1:56324", "198.51.100.2:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
        out.clear();
        encode_v1(&addrs("[2001:db8::1]:1", "[2001:db8::2]:443"), &mut out);
        assert_eq!(out, b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n");
        out.clear();
        encode_v1(&addrs("[::ffff:192.0.2.1]:5", "192.0.2.9:443"), &mut out);
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 192.0.2.9 5 443\r\n");
        out.clear();
        encode_v1(&addrs("[2001:db8::1]:5", "192.0.2.9:443"), &mut out);
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
        // Longest possible line stays within the limit.
        out.clear();
        let long = addrs(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535",
        );
        encode_v1(&long, &mut out);
        assert!(out.len() <= V1_MAX_LEN);
    }

    #[test]
    fn v2_ipv4_byte_for_byte() {
        let mut out = Vec::new();
        encode_v2(
            &addrs("192.0.2.1:56324", "198.51.100.2:443"),
            None,
            &mut out,
        );
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        expected.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
        expected.extend_from_slice(&56324u16.to_be_bytes());
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn v2_tlvs_byte_for_byte() {
        let tls = TlsFacts {
            alpn: Some(b"h2".to_vec()),
            server_name: Some("example.com".into()),
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            ..TlsFacts::default()
        };
        let mut out = Vec::new();
        encode_v2(
            &addrs("[2001:db8::1]:1000", "[2001:db8::2]:443"),
            Some(&tls),
            &mut out,
        );
        let mut expected = V2_SIGNATURE.to_vec();
        let mut body = Vec::new();
        body.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        body.extend_from_slice(
            &"2001:db8::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        body.extend_from_slice(&[0x03, 0xe8, 0x01, 0xbb]);
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']);
        body.extend_from_slice(&[0x02, 0x00, 11]);
        body.extend_from_slice(b"example.com");
        let ssl_len = 1 + 4 + (3 + 7) + (3 + 22);
        body.extend_from_slice(&[0x20, 0x00, ssl_len as u8, 0x01, 0, 0, 0, 0]);
        body.extend_from_slice(&[0x21, 0x00, 7]);
        body.extend_from_slice(b"TLSv1.3");
        body.extend_from_slice(&[0x23, 0x00, 22]);
        body.extend_from_slice(b"TLS_AES_128_GCM_SHA256");
        expected.extend_from_slice(&[0x21, 0x21]);
        expected.extend_from_slice(&(body.len() as u16).to_be_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(out, expected);

        // And it parses back.
        let Ok(Status::Complete((header, used))) = parse(&out) else {
            panic!()
        };
        assert_eq!(used, out.len());
        assert_eq!(
            header.addrs,
            Some(addrs("[2001:db8::1]:1000", "[2001:db8::2]:443"))
        );
        assert_eq!(header.tlvs[0], (tlv::ALPN, b"h2".to_vec()));
        assert_eq!(header.tlvs[1], (tlv::AUTHORITY, b"example.com".to_vec()));
        let ssl = &header.tlvs[2];
        assert_eq!(ssl.0, tlv::SSL);
        let sub = parse_tlvs(&ssl.1[5..]).unwrap();
        assert_eq!(sub[0], (tlv::SSL_VERSION, b"TLSv1.3".to_vec()));
    }

    #[test]
    fn parse_round_trips_and_partials() {
        let a = addrs("192.0.2.1:56324", "198.51.100.2:443");
        let mut v1 = Vec::new();
        encode_v1(&a, &mut v1);
        let mut v2 = Vec::new();
        encode_v2(&a, None, &mut v2);
        for encoded in [&v1, &v2] {
            for end in 0..encoded.len() {
                assert_eq!(parse(&encoded[..end]), Ok(Status::Partial), "prefix {end}");
            }
            let mut with_data = encoded.clone();
            with_data.extend_from_slice(b"GET / HTTP/1.1\r\n");
            let Ok(Status::Complete((header, used))) = parse(&with_data) else {
                panic!()
            };
            assert_eq!(used, encoded.len());
            assert_eq!(header.addrs, Some(a));
        }
    }

    #[test]
    fn parse_rejects() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
            Err(ProxyError::V1Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
            Err(ProxyError::V1Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
            Err(ProxyError::V1Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"),
            Err(ProxyError::V1Malformed(_))
        ));
        assert_eq!(
            parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(20)),
            Err(ProxyError::V1TooLong)
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&bad), Err(ProxyError::V2BadVersion(0x31)));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ProxyError::V2ShortAddresses));
        let mut tlv = V2_SIGNATURE.to_vec();
        tlv.extend_from_slice(&[0x21, 0x00, 0, 3, 0x01, 0x00, 0x09]);
        assert_eq!(parse(&tlv), Err(ProxyError::V2BadTlv));
    }

    #[test]
    fn bud_json_line() {
        let mut out = Vec::new();
        encode_bud_json(
            &addrs("192.0.2.1:5000", "198.51.100.2:443"),
            None,
            None,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "BUD {\"family\":\"TCP4\",\"bud\":{\"host\":\"198.51.100.2\",\"port\":443},\"peer\":{\"host\":\"192.0.2.1\",\"port\":5000,\"cn\":false,\"dn\":false}}\r\n"
        );
        let mut out = Vec::new();
        encode_bud_json(
            &addrs("192.0.2.1:5000", "198.51.100.2:443"),
            Some("a\"b\\c\n"),
            Some("CN=x"),
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("\"cn\":\"a\\\"b\\\\c\\n\",\"dn\":\"CN=x\""),
            "{text}"
        );
    }
}
