//! AF_PACKET sockets: a TPACKET_V3 receive ring (the input when XDP is unavailable or not
//! wanted, optionally in a PACKET_FANOUT group), and a batched sender (`sendmmsg`) for the
//! traffic generator.
//!
//! The receive ring is a set of blocks the kernel fills and hands over whole
//! (`TP_STATUS_USER`); the reader walks a block's packets and gives it back
//! (`TP_STATUS_KERNEL`). Outgoing frames are ignored (`PACKET_IGNORE_OUTGOING`): a split sees
//! what arrives on the interface, as a mirror port gives it. A VLAN tag the kernel took off
//! into metadata is put back into the frame, so parsing and captures see the wire's bytes.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        atomic::{fence, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use crate::sys::{self, set_option};

/// Errors of AF_PACKET sockets, each naming the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// No interface has this name.
    #[error("interface {0:?} not found")]
    NoInterface(String),
    /// A step of setting up the socket or ring failed.
    #[error("AF_PACKET on {interface}: {step}: {source}")]
    Setup {
        /// The interface.
        interface: String,
        /// The step (`socket`, `PACKET_RX_RING`, `mmap`, `bind`, …).
        step: &'static str,
        /// The error of the call.
        source: io::Error,
    },
    /// Ring sizes the kernel would refuse (not a power of two, not page-aligned, too large).
    #[error("ring settings: {0}")]
    Config(String),
}

/// Kernel counters of a receive ring (PACKET_STATISTICS, accumulated: the kernel resets them
/// on every read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PacketStatistics {
    /// Frames the socket received (delivered plus dropped).
    pub packets: u64,
    /// Frames dropped because the ring was full.
    pub drops: u64,
    /// Times the ring was frozen (all blocks in user hands).
    pub freezes: u64,
}

/// `PACKET_FANOUT_FLAG_UNIQUEID` (linux/if_packet.h) in [`Fanout::mode`]: the kernel picks an
/// unused group id (the group given must be 0).
const FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// A PACKET_FANOUT group: sockets in one group share an interface's traffic.
#[derive(Debug, Clone, Copy)]
pub struct Fanout {
    /// The fanout group id: sockets that join the same id share the interface's traffic.
    pub group: u16,
    /// `libc::PACKET_FANOUT_HASH` and friends.
    pub mode: u32,
}

fn ifindex(interface: &str) -> Result<i32, PacketError> {
    nix::net::if_::if_nametoindex(interface)
        .map(|i| i as i32)
        .map_err(|_| PacketError::NoInterface(interface.to_owned()))
}

fn setup<'a>(interface: &'a str, step: &'static str) -> impl FnOnce(io::Error) -> PacketError + 'a {
    move |source| PacketError::Setup {
        interface: interface.to_owned(),
        step,
        source,
    }
}

/// An AF_PACKET socket that receives nothing until bound with a protocol (0 here: a socket
/// opened with ETH_P_ALL would queue every interface's frames until `bind`, and a sender's
/// would queue frames nobody reads).
fn packet_socket() -> io::Result<OwnedFd> {
    sys::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)
}

/// Binds to interface `ifindex`; with `receive`, for every protocol (ETH_P_ALL), else for none
/// (a sender).
fn bind_to(fd: BorrowedFd<'_>, ifindex: i32, receive: bool) -> io::Result<()> {
    let protocol = if receive {
        (libc::ETH_P_ALL as u16).to_be()
    } else {
        0
    };
    sys::bind_packet(fd, ifindex, protocol)
}

/// Sizes of a TPACKET_V3 receive ring.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Bytes per block (a multiple of the page size, a power of two).
    pub block_size: u32,
    /// Number of blocks in the ring.
    pub blocks: u32,
    /// A block is handed over at the latest after this long, even if not full.
    pub block_timeout_ms: u32,
}

impl Default for RingConfig {
    /// 64 blocks of 256 KiB (16 MiB of ring), handed over after at most 10 ms.
    fn default() -> Self {
        Self {
            block_size: 1 << 18,
            blocks: 64,
            block_timeout_ms: 10,
        }
    }
}

/// A TPACKET_V3 receive ring on one interface.
#[derive(Debug)]
pub struct PacketReceiver {
    fd: OwnedFd,
    ring: memmap2::MmapRaw,
    config: RingConfig,
    /// The block to read next.
    block: u32,
    totals: PacketStatistics,
    /// Frame with its VLAN tag put back (only used for frames whose tag was taken off).
    scratch: Vec<u8>,
}

impl PacketReceiver {
    /// Opens a receive ring on `interface`; with `fanout`, joins that PACKET_FANOUT group.
    pub fn open(
        interface: &str,
        config: RingConfig,
        fanout: Option<Fanout>,
    ) -> Result<Self, PacketError> {
        let page = 4096;
        if !config.block_size.is_power_of_two() || config.block_size < page || config.blocks == 0 {
            return Err(PacketError::Config(format!(
                "block size {} must be a power of two ≥ {page}, blocks {} ≥ 1",
                config.block_size, config.blocks
            )));
        }
        let index = ifindex(interface)?;
        let fd = packet_socket().map_err(setup(interface, "socket"))?;
        let version = libc::tpacket_versions::TPACKET_V3 as i32;
        set_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_VERSION, &version)
            .map_err(setup(interface, "PACKET_VERSION v3"))?;
        let one: i32 = 1;
        set_option(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
        )
        .map_err(setup(interface, "PACKET_IGNORE_OUTGOING"))?;
        let request = libc::tpacket_req3 {
            tp_block_size: config.block_size,
            tp_block_nr: config.blocks,
            tp_frame_size: 2048,
            tp_frame_nr: config.block_size / 2048 * config.blocks,
            tp_retire_blk_tov: config.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        set_option(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_RX_RING, &request)
            .map_err(setup(interface, "PACKET_RX_RING"))?;
        let length = config.block_size as usize * config.blocks as usize;
        let ring =
            sys::map_shared(fd.as_fd(), length).map_err(setup(interface, "mmap of the ring"))?;
        let receiver = Self {
            fd,
            ring,
            config,
            block: 0,
            totals: PacketStatistics::default(),
            scratch: Vec::with_capacity(65536),
        };
        bind_to(receiver.fd.as_fd(), index, true).map_err(setup(interface, "bind"))?;
        if let Some(fanout) = fanout {
            let arg: u32 = u32::from(fanout.group) | (fanout.mode << 16);
            set_option(
                receiver.fd.as_fd(),
                libc::SOL_PACKET,
                libc::PACKET_FANOUT,
                &arg,
            )
            .map_err(setup(interface, "PACKET_FANOUT"))?;
        }
        Ok(receiver)
    }

    /// Opens `count` receive rings on `interface` in a new PACKET_FANOUT group of `mode`
    /// (`libc::PACKET_FANOUT_QM`: by receive queue, …), whose id the kernel picks
    /// (`PACKET_FANOUT_FLAG_UNIQUEID`), so no other process's group on the interface is joined
    /// by mistake.
    pub fn open_group(
        interface: &str,
        config: RingConfig,
        mode: u32,
        count: u32,
    ) -> Result<Vec<Self>, PacketError> {
        let first = Self::open(
            interface,
            config,
            Some(Fanout {
                group: 0,
                mode: mode | FANOUT_FLAG_UNIQUEID,
            }),
        )?;
        let joined: u32 = sys::get_option(first.fd.as_fd(), libc::SOL_PACKET, libc::PACKET_FANOUT)
            .map_err(setup(interface, "reading the PACKET_FANOUT group id"))?;
        let fanout = Fanout {
            group: (joined & 0xffff) as u16,
            mode,
        };
        let mut receivers = vec![first];
        for _ in 1..count {
            receivers.push(Self::open(interface, config, Some(fanout))?);
        }
        Ok(receivers)
    }

    /// The socket, to wait on it with `poll`/`epoll` for a ready block.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The block's `block_status` (offset 8 of its descriptor), shared with the kernel; `None`
    /// only if the ring were not the size it was made with.
    fn block_status(&self, block: u32) -> Option<&AtomicU32> {
        let offset = block as usize * self.config.block_size as usize;
        sys::atomic_u32(&self.ring, offset + 8)
    }

    /// Hands frames of ready blocks to `on_frame(frame, timestamp_ns)`, waiting up to
    /// `timeout` for the first block; returns the number of frames.
    pub fn receive(
        &mut self,
        timeout: Duration,
        mut on_frame: impl FnMut(&[u8], u64),
    ) -> io::Result<usize> {
        let mut frames = 0;
        let mut waited = false;
        // At most one lap of the ring per call, so that a busy input still lets the caller
        // check its stop flag and do its housekeeping.
        let mut blocks = 0;
        loop {
            if blocks == self.config.blocks {
                return Ok(frames);
            }
            let Some(status) = self.block_status(self.block) else {
                return Ok(frames);
            };
            let status = status.load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                if frames > 0 || waited || timeout.is_zero() {
                    return Ok(frames);
                }
                waited = true;
                match sys::poll(self.fd.as_fd(), libc::POLLIN | libc::POLLERR, timeout) {
                    Err(error) if error.kind() != io::ErrorKind::Interrupted => return Err(error),
                    _ => {}
                }
                continue;
            }
            frames += self.walk_block(&mut on_frame);
            blocks += 1;
            fence(Ordering::Release);
            if let Some(status) = self.block_status(self.block) {
                status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
            }
            self.block = (self.block + 1) % self.config.blocks;
        }
    }

    fn walk_block(&mut self, on_frame: &mut impl FnMut(&[u8], u64)) -> usize {
        let block_size = self.config.block_size as usize;
        let base = self.block as usize * block_size;
        if base + block_size > self.ring.len() {
            return 0;
        }
        // SAFETY: the block [base, base + block_size) is inside the mapping (checked above) and
        // owned by user space until its status is set back to TP_STATUS_KERNEL; the kernel
        // wrote its header and packets before setting TP_STATUS_USER (acquired by the caller).
        let block = unsafe { std::slice::from_raw_parts(self.ring.as_ptr().add(base), block_size) };
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(block.get(at..at + 4)?.try_into().ok()?))
        };
        let u16_at = |at: usize| -> Option<u16> {
            Some(u16::from_ne_bytes(block.get(at..at + 2)?.try_into().ok()?))
        };
        let count = u32_at(12).unwrap_or(0);
        let mut at = u32_at(16).unwrap_or(0) as usize;
        let mut frames = 0;
        for _ in 0..count {
            // tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status, mac(u16), net(u16),
            // rxhash, vlan_tci, vlan_tpid(u16), …
            let (Some(next), Some(sec), Some(nsec), Some(snaplen), Some(status), Some(mac)) = (
                u32_at(at),
                u32_at(at + 4),
                u32_at(at + 8),
                u32_at(at + 12),
                u32_at(at + 20),
                u16_at(at + 24),
            ) else {
                break;
            };
            let start = at + mac as usize;
            let Some(data) = block.get(start..start + snaplen as usize) else {
                break;
            };
            let ts = u64::from(sec) * 1_000_000_000 + u64::from(nsec);
            if status & libc::TP_STATUS_VLAN_VALID != 0 && data.len() >= 12 {
                let tci = u32_at(at + 32).unwrap_or(0) as u16;
                let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    u16_at(at + 36).unwrap_or(0x8100)
                } else {
                    0x8100
                };
                self.scratch.clear();
                self.scratch.extend_from_slice(&data[..12]);
                self.scratch.extend_from_slice(&tpid.to_be_bytes());
                self.scratch.extend_from_slice(&tci.to_be_bytes());
                self.scratch.extend_from_slice(&data[12..]);
                on_frame(&self.scratch, ts);
            } else {
                on_frame(data, ts);
            }
            frames += 1;
            if next == 0 {
                break;
            }
            at += next as usize;
        }
        frames
    }

    /// Kernel counters since the socket opened.
    pub fn statistics(&mut self) -> io::Result<PacketStatistics> {
        let stats: libc::tpacket_stats_v3 =
            sys::get_option(self.fd.as_fd(), libc::SOL_PACKET, libc::PACKET_STATISTICS)?;
        self.totals.packets += u64::from(stats.tp_packets);
        self.totals.drops += u64::from(stats.tp_drops);
        self.totals.freezes += u64::from(stats.tp_freeze_q_cnt);
        Ok(self.totals)
    }
}

/// Sends whole Ethernet frames on one interface in batches (`sendmmsg`), bypassing the qdisc.
#[derive(Debug)]
pub struct PacketSender {
    fd: OwnedFd,
}

impl PacketSender {
    /// An AF_PACKET socket bound to `interface` that bypasses the qdisc when the kernel lets it,
    /// with a send buffer of `send_buffer` bytes (forced past `wmem_max` when privileged).
    pub fn open(interface: &str, send_buffer: usize) -> Result<Self, PacketError> {
        let index = ifindex(interface)?;
        let fd = packet_socket().map_err(setup(interface, "socket"))?;
        let one: i32 = 1;
        // Best effort: without it frames go through the qdisc, which only costs speed.
        let _ = set_option(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one,
        );
        let size = i32::try_from(send_buffer).unwrap_or(i32::MAX);
        if set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &size).is_err() {
            set_option(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, &size)
                .map_err(setup(interface, "SO_SNDBUF"))?;
        }
        bind_to(fd.as_fd(), index, false).map_err(setup(interface, "bind"))?;
        Ok(Self { fd })
    }

    /// Sends `frames` without waiting; returns how many the kernel took (fewer when its queue
    /// is full: the caller retries the rest or counts them).
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        if frames.is_empty() {
            return Ok(0);
        }
        match sys::send_frames(self.fd.as_fd(), frames, libc::MSG_DONTWAIT) {
            Err(error) => match error.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => Ok(0),
                _ => Err(error),
            },
            sent => sent,
        }
    }
}

/// Counters of an interface output.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InterfaceStats {
    /// The interface's name.
    pub name: String,
    /// Frames sent from userspace.
    pub sent: u64,
    /// Frames the interface's transmit queue had no room for.
    pub dropped: u64,
    /// Frames the in-kernel path sent to it (never seen by userspace).
    pub sent_in_kernel: u64,
    /// How userspace sends to it: "AF_XDP", "AF_PACKET" or "TAP"; in counters merged over
    /// engine threads that send differently, each joined by "+" ("AF_XDP+AF_PACKET").
    pub transmit: String,
}

/// An interface as a pipeline output: frames are sent in batches through an AF_XDP socket
/// (copy mode; TX ring) or, where AF_XDP cannot bind, an AF_PACKET socket (`sendmmsg`). The
/// engine never waits on it: what the interface cannot take now is dropped and counted.
#[derive(Debug)]
pub struct InterfaceSink {
    sender: Sender,
    buffer: Vec<u8>,
    frames: Vec<(usize, usize)>,
    stats: InterfaceStats,
}

#[derive(Debug)]
enum Sender {
    Xsk(Box<crate::xdp::XskSender>),
    Packet(PacketSender),
}

/// Frames gathered before a send.
const SINK_BATCH: usize = 64;

impl InterfaceSink {
    /// An output on `interface`: AF_XDP transmit on queue 0 when the interface takes it, else
    /// AF_PACKET.
    pub fn open(interface: &str) -> Result<Self, PacketError> {
        Self::open_on_queue(interface, 0)
    }

    /// An output on `interface` for one engine thread: AF_XDP transmit on queue `queue` (each
    /// thread its own: an AF_XDP socket owns its queue) when the interface has that queue and
    /// takes it, else AF_PACKET; the log says which and why.
    pub fn open_on_queue(interface: &str, queue: u32) -> Result<Self, PacketError> {
        let sender = match crate::xdp::XskSender::open_queue(interface, queue, 1024) {
            Ok(xsk) => Sender::Xsk(Box::new(xsk)),
            Err(error) => {
                let queues = crate::sys::tx_queues(interface);
                if queue >= queues {
                    tracing::info!(%interface, queue, queues, "AF_XDP transmit needs a queue per engine thread and {interface} has {queues}; this thread sends with AF_PACKET");
                } else {
                    tracing::info!(%interface, queue, %error, "AF_XDP transmit unavailable; sending with AF_PACKET");
                }
                Sender::Packet(PacketSender::open(interface, 4 << 20)?)
            }
        };
        let transmit = match sender {
            Sender::Xsk(_) => "AF_XDP",
            Sender::Packet(_) => "AF_PACKET",
        };
        Ok(Self {
            sender,
            buffer: Vec::with_capacity(SINK_BATCH * 2048),
            frames: Vec::with_capacity(SINK_BATCH),
            stats: InterfaceStats {
                name: interface.to_owned(),
                transmit: transmit.to_owned(),
                ..InterfaceStats::default()
            },
        })
    }

    /// Queues one frame (copied); sends the batch once 64 are queued. A frame the transmit ring
    /// cannot take is dropped and counted, never waited for.
    #[inline]
    pub fn push(&mut self, frame: &[u8]) {
        match &mut self.sender {
            Sender::Xsk(xsk) => {
                if xsk.push(frame) {
                    self.frames.push((0, 0));
                } else {
                    self.stats.dropped += 1;
                }
            }
            Sender::Packet(_) => {
                let start = self.buffer.len();
                self.buffer.extend_from_slice(frame);
                self.frames.push((start, frame.len()));
            }
        }
        if self.frames.len() >= SINK_BATCH {
            self.flush();
        }
    }

    /// Sends what was gathered.
    pub fn flush(&mut self) {
        if self.frames.is_empty() {
            // AF_XDP: frames already on the TX ring may still wait for a wake-up.
            if let Sender::Xsk(xsk) = &mut self.sender {
                if let Err(error) = xsk.kick() {
                    self.warn_once(&error.to_string());
                }
            }
            return;
        }
        let queued = self.frames.len();
        let done = match &mut self.sender {
            Sender::Xsk(xsk) => match xsk.flush() {
                Ok(n) => n,
                Err(error) => {
                    self.warn_once(&error.to_string());
                    0
                }
            },
            Sender::Packet(sender) => {
                let slices: Vec<&[u8]> = self
                    .frames
                    .iter()
                    .map(|&(at, len)| &self.buffer[at..at + len])
                    .collect();
                let mut done = 0;
                let mut failure = None;
                // One retry for a momentarily full queue; then count the rest, never wait.
                for _ in 0..2 {
                    match sender.send_batch(&slices[done..]) {
                        Ok(n) => done += n,
                        Err(error) => {
                            failure = Some(error.to_string());
                            break;
                        }
                    }
                    if done == slices.len() {
                        break;
                    }
                }
                if let Some(error) = failure {
                    self.warn_once(&error);
                }
                done
            }
        };
        self.stats.sent += done as u64;
        self.stats.dropped += (queued - done) as u64;
        self.frames.clear();
        self.buffer.clear();
    }

    fn warn_once(&self, error: &str) {
        if self.stats.dropped == 0 {
            tracing::warn!(interface = %self.stats.name, %error, "sending to an output interface failed");
        }
    }

    /// What was sent and dropped so far.
    pub fn stats(&self) -> &InterfaceStats {
        &self.stats
    }
}

/// A TAP device as a pipeline output: fastedge creates it (it lives as long as this value),
/// brings it up, and writes frames into it, which the kernel then receives on the device, so
/// an application capturing there sees them. The engine never waits: a frame the device
/// cannot take now is dropped and counted.
#[derive(Debug)]
pub struct TapSink {
    /// Shared with [`TapDevices`] when the device is kept across pipelines.
    fd: Arc<OwnedFd>,
    stats: InterfaceStats,
}

/// TAP devices kept open from one pipeline to the next (a reload): a pipeline built with
/// them writes into the device an earlier one made, so the device keeps its interface index
/// and what captures on it goes on capturing. A device lives as long as this set or a
/// pipeline holds it. Cheap to clone (one shared set).
#[derive(Debug, Clone, Default)]
pub struct TapDevices(Arc<Mutex<HashMap<String, Arc<OwnedFd>>>>);

impl TapDevices {
    /// An output into TAP device `name`: the one this set keeps, else a new one
    /// ([`TapSink::create`]), kept from now on.
    pub fn open(&self, name: &str) -> Result<TapSink, PacketError> {
        let mut kept = self
            .0
            .lock()
            .map_err(|_| PacketError::Config("the TAP device set is poisoned".into()))?;
        if let Some(fd) = kept.get(name) {
            return Ok(TapSink::with_fd(name, fd.clone()));
        }
        let sink = TapSink::create(name)?;
        kept.insert(name.to_owned(), sink.fd.clone());
        Ok(sink)
    }

    /// Lets go of the devices not named in `names` (each goes once no pipeline holds it).
    pub fn retain(&self, names: &[String]) {
        if let Ok(mut kept) = self.0.lock() {
            kept.retain(|name, _| names.contains(name));
        }
    }
}

impl TapSink {
    /// Creates TAP device `name` and brings it up.
    pub fn create(name: &str) -> Result<Self, PacketError> {
        let fail = |step: &'static str| setup(name, step);
        sys::check_interface_name(name).map_err(PacketError::Config)?;
        let fd = sys::open_device(c"/dev/net/tun").map_err(fail("opening /dev/net/tun"))?;
        // Exclusive: never attach to an existing (persistent) device of that name.
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL;
        sys::tun_set_interface(fd.as_fd(), name, flags).map_err(fail("TUNSETIFF"))?;
        // No IPv6 chatter (router solicitations, DAD) on a capture device.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        // Up, through any socket of this namespace.
        let control = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .map_err(fail("control socket"))?;
        sys::set_interface_up(control.as_fd(), name).map_err(|(step, e)| fail(step)(e))?;
        Ok(Self::with_fd(name, Arc::new(fd)))
    }

    fn with_fd(name: &str, fd: Arc<OwnedFd>) -> Self {
        Self {
            fd,
            stats: InterfaceStats {
                name: name.to_owned(),
                transmit: "TAP".to_owned(),
                ..InterfaceStats::default()
            },
        }
    }

    /// Writes one frame into the device, or counts it dropped.
    #[inline]
    pub fn push(&mut self, frame: &[u8]) {
        let written = sys::write(self.fd.as_fd(), frame);
        if written.is_ok_and(|n| n == frame.len()) {
            self.stats.sent += 1;
        } else {
            if self.stats.dropped == 0 {
                let error = io::Error::last_os_error();
                tracing::warn!(interface = %self.stats.name, %error, "writing to an output TAP device failed");
            }
            self.stats.dropped += 1;
        }
    }

    /// What was written and dropped so far.
    pub fn stats(&self) -> &InterfaceStats {
        &self.stats
    }
}
