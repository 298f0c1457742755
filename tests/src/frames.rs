//! Crafted Ethernet frames and a raw AF_PACKET sender, for the split suites: any addresses,
//! both directions of a flow, fragments, sent from inside a test namespace.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

/// An Ethernet/IPv4/UDP frame to `dst_mac` whose payload carries `seq`; `fragment` gives the
/// IPv4 flags+offset field (0 for an unfragmented packet).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    fragment: u16,
) -> Vec<u8> {
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&[0x02, 0xfe, 0xee, 0, 0, 1, 0x08, 0x00]);
    let payload = seq.to_be_bytes();
    let later_fragment = fragment & 0x1fff != 0;
    let l4_len = if later_fragment {
        payload.len()
    } else {
        8 + payload.len()
    };
    let total = (20 + l4_len) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&fragment.to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let checksum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    if !later_fragment {
        frame.extend_from_slice(&src.1.to_be_bytes());
        frame.extend_from_slice(&dst.1.to_be_bytes());
        frame.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
    }
    frame.extend_from_slice(&payload);
    frame
}

/// An Ethernet/IPv6/UDP frame to `dst_mac` whose payload carries `seq`, after `extensions`
/// destination-options headers and, with `fragment` (the fragment header's offset+flags
/// field), a fragment header; a later fragment (offset not 0) carries no UDP header.
pub fn udp6_frame(
    dst_mac: [u8; 6],
    src: (Ipv6Addr, u16),
    dst: (Ipv6Addr, u16),
    seq: u32,
    extensions: usize,
    fragment: Option<u16>,
) -> Vec<u8> {
    const DEST_OPTS: u8 = 60;
    const FRAGMENT: u8 = 44;
    const UDP: u8 = 17;
    let mut headers: Vec<(u8, Vec<u8>)> = (0..extensions)
        .map(|_| (DEST_OPTS, vec![0, 1, 4, 0, 0, 0, 0]))
        .collect();
    if let Some(field) = fragment {
        let mut body = vec![0];
        body.extend_from_slice(&field.to_be_bytes());
        body.extend_from_slice(&seq.to_be_bytes());
        headers.push((FRAGMENT, body));
    }
    let later_fragment = fragment.is_some_and(|f| f & 0xfff8 != 0);
    let mut payload = Vec::new();
    for (i, (_, body)) in headers.iter().enumerate() {
        let next = headers.get(i + 1).map_or(UDP, |h| h.0);
        payload.push(next);
        payload.extend_from_slice(body);
    }
    if !later_fragment {
        payload.extend_from_slice(&src.1.to_be_bytes());
        payload.extend_from_slice(&dst.1.to_be_bytes());
        payload.extend_from_slice(&12u16.to_be_bytes());
        payload.extend_from_slice(&[0, 0]);
    }
    payload.extend_from_slice(&seq.to_be_bytes());
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&[0x02, 0xfe, 0xee, 0, 0, 1, 0x86, 0xdd]);
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.push(headers.first().map_or(UDP, |h| h.0));
    frame.push(64);
    frame.extend_from_slice(&src.0.octets());
    frame.extend_from_slice(&dst.0.octets());
    frame.extend_from_slice(&payload);
    frame
}

/// The sequence number `udp_frame` put at the end of the frame.
pub fn frame_seq(frame: &[u8]) -> Option<u32> {
    let tail = frame.get(frame.len().checked_sub(4)?..)?;
    Some(u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]))
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw AF_PACKET socket bound to one interface of the calling thread's namespace.
#[derive(Debug)]
pub struct RawSender {
    socket: socket2::Socket,
    ifindex: i32,
}

impl RawSender {
    pub fn open(interface: &str) -> io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(interface).map_err(io::Error::from)? as i32;
        let socket = socket2::Socket::new(socket2::Domain::PACKET, socket2::Type::RAW, None)?;
        Ok(Self { socket, ifindex })
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_ll = unsafe_zeroed_sockaddr_ll();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` is valid for `frame.len()` bytes and `addr` is a fully initialised
        // sockaddr_ll of the size passed; the fd is an open packet socket.
        let rc = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn unsafe_zeroed_sockaddr_ll() -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is a plain C struct of integers and byte arrays, for which all-zero
    // bytes are a valid value.
    unsafe { std::mem::zeroed() }
}
