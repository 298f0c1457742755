//! The binary-upgrade handover: what a running `fastedge serve` tells the process taking its
//! listening sockets over, beside the descriptors themselves (which travel as SCM_RIGHTS over a
//! UNIX `SOCK_SEQPACKET` socket, one batch per message).
//!
//! Old to new, one message per batch of at most [`MAX_BATCH`] sockets:
//!
//! ```text
//! "FEUP" | version u8 (1) | flags u8 (bit 0: last batch) | pid u32 BE | count u16 BE
//! count × ( address index u16 BE | core index u16 BE | family u8 (4 or 6)
//!           | IP (4 or 16 bytes) | port u16 BE )
//! ```
//!
//! The i-th entry describes the i-th descriptor of the message. New to old, once it accepts on
//! every socket: the message [`DRAIN`]; the old process lets go of its upgrade socket, answers
//! [`DRAINING`], then stops accepting and drains.
//!
//! The peer is another process: every field is bounds-checked ([`Batch::parse`]), and the
//! batches together must describe every address with the same address on each of its sockets
//! and core indices without gaps ([`Inventory`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic at the start of every batch.
pub const MAGIC: &[u8; 4] = b"FEUP";
/// The version this module writes and reads.
pub const VERSION: u8 = 1;
/// The most sockets in one batch (the kernel passes at most 253 descriptors per message).
pub const MAX_BATCH: usize = 200;
/// The most listen addresses a handover may describe.
pub const MAX_ADDRESSES: u16 = 1024;
/// The most sockets per address (one per core of the old process).
pub const MAX_CORES: u16 = 4096;
/// What the new process sends once it serves: the old one drains.
pub const DRAIN: &[u8] = b"FEUP drain";
/// The old process's answer to [`DRAIN`]: it let go of the upgrade socket and drains.
pub const DRAINING: &[u8] = b"FEUP draining";
/// The largest batch message in bytes.
pub const MAX_MESSAGE: usize = HEADER + MAX_BATCH * (5 + 16 + 2 + 2);

const HEADER: usize = 4 + 1 + 1 + 4 + 2;
const LAST: u8 = 1;

/// One listening socket of the old process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketEntry {
    /// Its position in the old process's `frontend.listen`.
    pub address_index: u16,
    /// The old process's core (position in its CPU list) that accepted on it.
    pub core_index: u16,
    /// The address it is bound to.
    pub addr: SocketAddr,
}

/// One message of the handover: the sockets it carries, in descriptor order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The old process's id.
    pub pid: u32,
    /// Whether no batch follows.
    pub last: bool,
    /// One entry per descriptor of the message.
    pub entries: Vec<SocketEntry>,
}

/// Why a handover message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeoverError {
    /// Shorter than its header or its entries say.
    Truncated {
        /// Bytes needed so far.
        needed: usize,
        /// Bytes there are.
        got: usize,
    },
    /// Bytes after the last entry.
    Trailing(usize),
    /// Not a handover message.
    BadMagic,
    /// A version this build does not read.
    Version(u8),
    /// Flags this version does not know.
    Flags(u8),
    /// More entries than [`MAX_BATCH`].
    TooMany(usize),
    /// An address family other than 4 or 6.
    Family(u8),
    /// An address index at or above [`MAX_ADDRESSES`], or a core index at or above
    /// [`MAX_CORES`].
    IndexOutOfRange {
        /// The address index.
        address: u16,
        /// The core index.
        core: u16,
    },
    /// The message carries another number of descriptors than entries.
    DescriptorCount {
        /// Entries described.
        entries: usize,
        /// Descriptors received.
        descriptors: usize,
    },
    /// The same (address, core) twice.
    Duplicate {
        /// The address index.
        address: u16,
        /// The core index.
        core: u16,
    },
    /// Sockets of one address index bound to different addresses.
    AddressMismatch {
        /// The address index.
        address: u16,
    },
    /// An address index or a core index is missing below the highest one.
    Gap {
        /// The address index (and, for a missing core, the core index).
        address: u16,
        /// The missing core index, `None` when the whole address is missing.
        core: Option<u16>,
    },
    /// A batch after the one marked last, or the handover ended before the last batch.
    Sequence,
    /// An unknown message where [`DRAIN`] or [`DRAINING`] was expected.
    NotDrain,
}

impl std::fmt::Display for TakeoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { needed, got } => {
                write!(f, "handover message truncated: {got} of {needed} bytes")
            }
            Self::Trailing(n) => write!(f, "{n} bytes after the last handover entry"),
            Self::BadMagic => write!(f, "not a handover message (bad magic)"),
            Self::Version(v) => write!(f, "handover version {v} (this build reads {VERSION})"),
            Self::Flags(x) => write!(f, "unknown handover flags {x:#04x}"),
            Self::TooMany(n) => write!(f, "{n} sockets in one batch (at most {MAX_BATCH})"),
            Self::Family(x) => write!(f, "address family {x} (expected 4 or 6)"),
            Self::IndexOutOfRange { address, core } => write!(
                f,
                "address index {address} or core index {core} out of range \
                 (at most {MAX_ADDRESSES} addresses, {MAX_CORES} cores)"
            ),
            Self::DescriptorCount {
                entries,
                descriptors,
            } => write!(
                f,
                "{entries} sockets described but {descriptors} descriptors received"
            ),
            Self::Duplicate { address, core } => {
                write!(f, "address {address} core {core} described twice")
            }
            Self::AddressMismatch { address } => {
                write!(
                    f,
                    "sockets of address {address} are bound to different addresses"
                )
            }
            Self::Gap {
                address,
                core: Some(core),
            } => write!(f, "address {address} has no socket for core {core}"),
            Self::Gap {
                address,
                core: None,
            } => write!(f, "address {address} has no socket"),
            Self::Sequence => write!(f, "handover batches out of sequence"),
            Self::NotDrain => write!(f, "expected the drain message or its answer"),
        }
    }
}

impl std::error::Error for TakeoverError {}

impl Batch {
    /// Reads one batch message (the whole message: handover messages keep their bounds).
    pub fn parse(buf: &[u8]) -> Result<Self, TakeoverError> {
        let mut r = Reader { buf, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(TakeoverError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(TakeoverError::Version(version));
        }
        let flags = r.u8()?;
        if flags & !LAST != 0 {
            return Err(TakeoverError::Flags(flags));
        }
        let last = flags & LAST != 0;
        let pid = u32::from_be_bytes(r.array()?);
        let count = usize::from(r.u16()?);
        if count > MAX_BATCH {
            return Err(TakeoverError::TooMany(count));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let address_index = r.u16()?;
            let core_index = r.u16()?;
            if address_index >= MAX_ADDRESSES || core_index >= MAX_CORES {
                return Err(TakeoverError::IndexOutOfRange {
                    address: address_index,
                    core: core_index,
                });
            }
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                other => return Err(TakeoverError::Family(other)),
            };
            let port = r.u16()?;
            entries.push(SocketEntry {
                address_index,
                core_index,
                addr: SocketAddr::new(ip, port),
            });
        }
        if r.at != buf.len() {
            return Err(TakeoverError::Trailing(buf.len() - r.at));
        }
        Ok(Self { pid, last, entries })
    }

    /// The message for this batch. Fails with [`TakeoverError::TooMany`] above [`MAX_BATCH`].
    pub fn encode(&self) -> Result<Vec<u8>, TakeoverError> {
        if self.entries.len() > MAX_BATCH {
            return Err(TakeoverError::TooMany(self.entries.len()));
        }
        let mut out = Vec::with_capacity(HEADER + self.entries.len() * 25);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(if self.last { LAST } else { 0 });
        out.extend_from_slice(&self.pid.to_be_bytes());
        // At most MAX_BATCH, checked above.
        out.extend_from_slice(&(self.entries.len() as u16).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.address_index.to_be_bytes());
            out.extend_from_slice(&e.core_index.to_be_bytes());
            match e.addr.ip() {
                IpAddr::V4(ip) => {
                    out.push(4);
                    out.extend_from_slice(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    out.push(6);
                    out.extend_from_slice(&ip.octets());
                }
            }
            out.extend_from_slice(&e.addr.port().to_be_bytes());
        }
        Ok(out)
    }
}

/// Checks that `message` is [`DRAIN`].
pub fn parse_drain(message: &[u8]) -> Result<(), TakeoverError> {
    if message == DRAIN {
        Ok(())
    } else {
        Err(TakeoverError::NotDrain)
    }
}

/// Checks that `message` is [`DRAINING`].
pub fn parse_draining(message: &[u8]) -> Result<(), TakeoverError> {
    if message == DRAINING {
        Ok(())
    } else {
        Err(TakeoverError::NotDrain)
    }
}

/// What a complete handover describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// The old process's id.
    pub pid: u32,
    /// Per address index, in order.
    pub addresses: Vec<AddressSockets>,
}

/// The sockets of one listen address in a handover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSockets {
    /// The address they are bound to.
    pub addr: SocketAddr,
    /// Per core index, the position of its descriptor among all received (over all batches).
    pub positions: Vec<usize>,
}

/// The batches of one handover, checked as a whole. Push each batch with the number of
/// descriptors its message carried; [`Inventory::finish`] gives the sockets per address.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Per address index: its address and, per core index, the position of its descriptor in
    /// the handover (counting over all batches).
    addresses: Vec<Option<(SocketAddr, Vec<Option<usize>>)>>,
    received: usize,
    done: bool,
    pid: u32,
}

impl Inventory {
    /// A handover with no batch yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch whose message carried `descriptors` descriptors.
    pub fn push(&mut self, batch: &Batch, descriptors: usize) -> Result<(), TakeoverError> {
        if self.done {
            return Err(TakeoverError::Sequence);
        }
        if batch.entries.len() != descriptors {
            return Err(TakeoverError::DescriptorCount {
                entries: batch.entries.len(),
                descriptors,
            });
        }
        for e in &batch.entries {
            let a = usize::from(e.address_index);
            let c = usize::from(e.core_index);
            if self.addresses.len() <= a {
                self.addresses.resize(a + 1, None);
            }
            let (addr, cores) = self.addresses[a].get_or_insert_with(|| (e.addr, Vec::new()));
            if *addr != e.addr {
                return Err(TakeoverError::AddressMismatch {
                    address: e.address_index,
                });
            }
            if cores.len() <= c {
                cores.resize(c + 1, None);
            }
            if cores[c].is_some() {
                return Err(TakeoverError::Duplicate {
                    address: e.address_index,
                    core: e.core_index,
                });
            }
            cores[c] = Some(self.received);
            self.received += 1;
        }
        self.pid = batch.pid;
        self.done = batch.last;
        Ok(())
    }

    /// Whether the last batch was pushed.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// The whole handover: per address index, in order, the address and the positions (over
    /// all batches) of its descriptors, by core index.
    pub fn finish(self) -> Result<Handover, TakeoverError> {
        if !self.done {
            return Err(TakeoverError::Sequence);
        }
        let mut out = Vec::with_capacity(self.addresses.len());
        for (a, slot) in self.addresses.into_iter().enumerate() {
            // Indices are below MAX_ADDRESSES and MAX_CORES, so they fit in u16.
            let address = a as u16;
            let (addr, cores) = slot.ok_or(TakeoverError::Gap {
                address,
                core: None,
            })?;
            let mut positions = Vec::with_capacity(cores.len());
            for (c, position) in cores.into_iter().enumerate() {
                positions.push(position.ok_or(TakeoverError::Gap {
                    address,
                    core: Some(c as u16),
                })?);
            }
            out.push(AddressSockets { addr, positions });
        }
        Ok(Handover {
            pid: self.pid,
            addresses: out,
        })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TakeoverError> {
        let end = self.at + n;
        let bytes = self.buf.get(self.at..end).ok_or(TakeoverError::Truncated {
            needed: end,
            got: self.buf.len(),
        })?;
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TakeoverError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TakeoverError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, TakeoverError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(address_index: u16, core_index: u16, addr: &str) -> SocketEntry {
        SocketEntry {
            address_index,
            core_index,
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn round_trip_and_inventory() {
        let batch = Batch {
            pid: 4242,
            last: true,
            entries: vec![
                entry(0, 0, "127.0.0.1:8443"),
                entry(1, 0, "[::1]:443"),
                entry(0, 1, "127.0.0.1:8443"),
                entry(1, 1, "[::1]:443"),
            ],
        };
        let bytes = batch.encode().unwrap();
        assert_eq!(&bytes[..4], b"FEUP");
        assert_eq!(Batch::parse(&bytes).unwrap(), batch);
        let mut inventory = Inventory::new();
        inventory.push(&batch, 4).unwrap();
        let handover = inventory.finish().unwrap();
        assert_eq!(handover.pid, 4242);
        let addresses = handover.addresses;
        assert_eq!(addresses[0].addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(addresses[0].positions, vec![0, 2]);
        assert_eq!(addresses[1].positions, vec![1, 3]);
    }

    #[test]
    fn refuses_bad_messages() {
        let batch = Batch {
            pid: 1,
            last: false,
            entries: vec![entry(0, 0, "127.0.0.1:1")],
        };
        let bytes = batch.encode().unwrap();
        // Every truncation is an error, never a panic.
        for n in 0..bytes.len() {
            assert!(Batch::parse(&bytes[..n]).is_err(), "{n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Batch::parse(&long), Err(TakeoverError::Trailing(1)));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(Batch::parse(&magic), Err(TakeoverError::BadMagic));
        let mut version = bytes.clone();
        version[4] = 9;
        assert_eq!(Batch::parse(&version), Err(TakeoverError::Version(9)));
        let mut family = bytes.clone();
        family[HEADER + 4] = 5;
        assert_eq!(Batch::parse(&family), Err(TakeoverError::Family(5)));
        let mut many = bytes.clone();
        many[10..12].copy_from_slice(&60000u16.to_be_bytes());
        assert_eq!(Batch::parse(&many), Err(TakeoverError::TooMany(60000)));
        let mut index = bytes.clone();
        index[HEADER..HEADER + 2].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            Batch::parse(&index),
            Err(TakeoverError::IndexOutOfRange { .. })
        ));
        assert_eq!(parse_drain(b"FEUP drain"), Ok(()));
        assert_eq!(parse_drain(b"FEUP"), Err(TakeoverError::NotDrain));
        assert_eq!(parse_draining(DRAINING), Ok(()));
        assert_eq!(parse_draining(DRAIN), Err(TakeoverError::NotDrain));
    }

    #[test]
    fn inventory_checks_the_whole() {
        let one = |entries, last| Batch {
            pid: 1,
            last,
            entries,
        };
        let mut i = Inventory::new();
        assert!(matches!(
            i.push(&one(vec![entry(0, 0, "127.0.0.1:1")], false), 2),
            Err(TakeoverError::DescriptorCount { .. })
        ));
        let mut i = Inventory::new();
        i.push(&one(vec![entry(0, 0, "127.0.0.1:1")], false), 1)
            .unwrap();
        assert_eq!(
            i.push(&one(vec![entry(0, 0, "127.0.0.1:1")], false), 1),
            Err(TakeoverError::Duplicate {
                address: 0,
                core: 0
            })
        );
        assert_eq!(
            i.push(&one(vec![entry(0, 1, "127.0.0.1:2")], false), 1),
            Err(TakeoverError::AddressMismatch { address: 0 })
        );
        i.push(&one(vec![entry(0, 2, "127.0.0.1:1")], true), 1)
            .unwrap();
        assert_eq!(i.push(&one(vec![], true), 0), Err(TakeoverError::Sequence));
        assert_eq!(
            i.finish(),
            Err(TakeoverError::Gap {
                address: 0,
                core: Some(1)
            })
        );
        let mut i = Inventory::new();
        i.push(&one(vec![entry(1, 0, "127.0.0.1:1")], true), 1)
            .unwrap();
        assert_eq!(
            i.finish(),
            Err(TakeoverError::Gap {
                address: 0,
                core: None
            })
        );
        assert_eq!(Inventory::new().finish(), Err(TakeoverError::Sequence));
    }
}
