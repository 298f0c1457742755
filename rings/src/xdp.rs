//! AF_XDP receive sockets (xsk-rs): one UMEM and one socket per (interface, queue).
//!
//! The socket is created without libxdp's default program
//! (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): fastedge attaches its own XDP program
//! (`fastedge-ebpf`) and registers the socket's fd in that program's XSKMAP.

use std::{
    fmt,
    num::NonZeroU32,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

use xsk_rs::{
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

/// Copy or zero-copy binding of an AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XskBindMode {
    /// The kernel copies frames into the UMEM; works on every driver (veth included).
    Copy,
    /// The NIC writes into the UMEM directly; the driver must support it.
    ZeroCopy,
}

/// Sizes of an AF_XDP socket and its UMEM. Validated on construction.
#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    frames: u32,
    frame_size: u32,
    ring_size: u32,
    bind: XskBindMode,
}

impl XskConfig {
    /// `frames` UMEM frames of `frame_size` bytes (a power of two, 2048 or 4096), an RX ring
    /// of `ring_size` entries (a power of two) and a fill ring of twice as many.
    pub fn new(
        frames: u32,
        frame_size: u32,
        ring_size: u32,
        bind: XskBindMode,
    ) -> Result<Self, XskError> {
        let invalid = |what: String| Err(XskError::Config(what));
        if !ring_size.is_power_of_two() {
            return invalid(format!("ring size {ring_size} is not a power of two"));
        }
        if frame_size != 2048 && frame_size != 4096 {
            return invalid(format!("frame size {frame_size} is not 2048 or 4096"));
        }
        if frames < ring_size {
            return invalid(format!(
                "{frames} frames cannot keep a fill ring of {ring_size} entries full"
            ));
        }
        Ok(Self {
            frames,
            frame_size,
            ring_size,
            bind,
        })
    }

    /// Bytes of UMEM this configuration locks.
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.frames) * u64::from(self.frame_size)
    }

    /// Entries of the receive and fill rings.
    pub fn ring_size(&self) -> u32 {
        self.ring_size
    }

    /// A receive ring of `ring` entries (a power of two from 64 to 16,384), a fill ring and a
    /// UMEM of twice as many (2 KiB frames: `ring` 4,096 is 16 MiB of UMEM per socket). The default is
    /// [`DEFAULT_RING`] ([`XskConfig::default`]).
    pub fn with_ring(ring: u32, bind: XskBindMode) -> Result<Self, XskError> {
        if !(MIN_RING..=MAX_RING).contains(&ring) {
            return Err(XskError::Config(format!(
                "ring size {ring} is not between {MIN_RING} and {MAX_RING}"
            )));
        }
        Self::new(2 * ring, 2048, ring, bind)
    }
}

/// The ring size of [`XskConfig::default`] (4 MiB of UMEM per socket).
pub const DEFAULT_RING: u32 = 1024;
/// Smallest ring [`XskConfig::with_ring`] takes.
pub const MIN_RING: u32 = 64;
/// Largest ring [`XskConfig::with_ring`] takes.
pub const MAX_RING: u32 = 16_384;

impl Default for XskConfig {
    /// 2048 frames of 2 KiB (4 MiB of UMEM, within an 8 MiB RLIMIT_MEMLOCK), rings of 1024,
    /// copy mode.
    fn default() -> Self {
        Self {
            frames: 2 * DEFAULT_RING,
            frame_size: 2048,
            ring_size: DEFAULT_RING,
            bind: XskBindMode::Copy,
        }
    }
}

/// Errors of AF_XDP sockets.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// Ring or UMEM sizes the kernel would refuse.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// The interface name is not one an interface can have (xsk-rs refused it).
    #[error("interface name {0:?} is not valid")]
    Interface(String),
    /// The UMEM (the frames' shared memory) could not be created.
    #[error("creating UMEM of {bytes} bytes: {reason} (RLIMIT_MEMLOCK may be too small)")]
    Umem {
        /// Its size.
        bytes: u64,
        /// xsk-rs's error.
        reason: String,
    },
    /// The socket could not be created or bound to the queue.
    #[error("creating AF_XDP socket on {interface} queue {queue}: {reason}")]
    Socket {
        /// The interface.
        interface: String,
        /// The queue.
        queue: u32,
        /// xsk-rs's error, with the system's where there is one.
        reason: String,
        /// The system error number, where there is one (`EBUSY`: the queue has a socket).
        errno: Option<i32>,
    },
    /// A system call on a bound socket failed.
    #[error("AF_XDP socket on {interface} queue {queue}: {op}: {source}")]
    Io {
        /// The interface.
        interface: String,
        /// The queue.
        queue: u32,
        /// The operation (`poll`, `waking the kernel`, `XDP_STATISTICS`, …).
        op: &'static str,
        /// The error of the call.
        source: std::io::Error,
    },
}

/// [`XskError::Socket`] for a socket xsk-rs could not create: its reason and the system's.
fn socket_failure(
    interface: &str,
    queue: u32,
    error: &xsk_rs::socket::SocketCreateError,
) -> XskError {
    let system =
        std::error::Error::source(error).and_then(|source| source.downcast_ref::<std::io::Error>());
    XskError::Socket {
        interface: interface.to_owned(),
        queue,
        reason: match system {
            Some(system) => format!("{error}: {system}"),
            None => error.to_string(),
        },
        errno: system.and_then(std::io::Error::raw_os_error),
    }
}

/// Opens a socket with `open(true)` (multi-buffer mode); where binding failed for want of that
/// mode (an older kernel, or a zero-copy driver without it) rather than for another reason (a
/// busy queue, say), opens it with `open(false)` and logs `refused` with the first error.
fn multi_buffer_else_plain<T>(
    open: impl Fn(bool) -> Result<T, XskError>,
    refused: &str,
) -> Result<T, XskError> {
    match open(true) {
        Err(
            error @ XskError::Socket {
                errno: Some(libc::EINVAL | libc::EOPNOTSUPP),
                ..
            },
        ) => {
            let plain = open(false)?;
            tracing::info!(%error, "{refused}");
            Ok(plain)
        }
        other => other,
    }
}

/// Kernel-side drop counters of an AF_XDP socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct XskStatistics {
    /// Dropped by the socket: in copy mode this includes frames dropped because the fill ring
    /// was empty (those are also counted in `rx_fill_ring_empty`, which counts empty-ring
    /// events, so do not add the two).
    pub rx_dropped: u64,
    /// Dropped because the RX ring was full (the application is too slow).
    pub rx_ring_full: u64,
    /// Times the fill ring had no frame to receive into (the kernel's `queue_empty_descs`).
    pub rx_fill_ring_empty: u64,
    /// Invalid descriptors on the RX side.
    pub rx_invalid: u64,
    /// Multi-buffer frames longer than [`MAX_CHAINED_FRAME`] bytes, dropped by fastedge (not a
    /// kernel counter; no frame an Ethernet MTU allows is that long).
    pub rx_too_long: u64,
}

/// The longest frame an [`XskReceiver`] puts together from a multi-buffer chain; the parts of
/// a longer one are dropped and counted in [`XskStatistics::rx_too_long`].
pub const MAX_CHAINED_FRAME: usize = 65_536;

/// An AF_XDP socket receiving from one queue of one interface.
pub struct XskReceiver {
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    _tx: TxQueue,
    _completion: CompQueue,
    batch: Vec<FrameDesc>,
    /// Received frames the fill ring had no room for yet; given back before the next receive.
    refill: Vec<FrameDesc>,
    /// The buffers received so far of a multi-buffer frame (it may span two receives).
    chain: Vec<u8>,
    /// The chain being received is too long: its remaining buffers are skipped.
    chain_too_long: bool,
    /// Chains dropped for their length.
    too_long: u64,
    /// Bound with `XDP_USE_SG`.
    multi_buffer: bool,
    interface: String,
    queue: u32,
}

impl fmt::Debug for XskReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskReceiver")
            .field("interface", &self.interface)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl XskReceiver {
    /// Opens an AF_XDP socket on `interface` queue `queue` and gives the kernel every frame of
    /// its UMEM to receive into. No XDP program is loaded: register [`Self::fd`] in the XSKMAP of
    /// the program attached to the interface.
    ///
    /// The socket takes frames longer than one UMEM frame (jumbo frames) in several buffers
    /// (AF_XDP multi-buffer, `XDP_USE_SG`, Linux 6.6; in zero-copy mode the driver must offer
    /// it too) and hands them to the caller whole. Where that mode is refused the socket is
    /// bound without it, and the kernel drops such frames (counted in `rx_dropped`).
    pub fn open(interface: &str, queue: u32, config: &XskConfig) -> Result<Self, XskError> {
        multi_buffer_else_plain(
            |multi_buffer| Self::open_with(interface, queue, config, multi_buffer),
            "AF_XDP multi-buffer receive refused; frames longer than one UMEM frame will be dropped by the kernel",
        )
    }

    fn open_with(
        interface: &str,
        queue: u32,
        config: &XskConfig,
        multi_buffer: bool,
    ) -> Result<Self, XskError> {
        let ifname: Interface = interface
            .parse()
            .map_err(|_| XskError::Interface(interface.to_owned()))?;
        let size = |n: u32| QueueSize::new(n).map_err(|e| XskError::Config(e.to_string()));
        let umem_config = UmemConfig::builder()
            .frame_size(
                FrameSize::new(config.frame_size).map_err(|e| XskError::Config(e.to_string()))?,
            )
            // Twice the frames we hand out: in copy mode the kernel publishes how far it has
            // read the fill ring lazily, so a ring the size of our frames can look full while
            // every frame is already back with us.
            .fill_queue_size(size(config.ring_size.saturating_mul(2))?)
            .comp_queue_size(size(config.ring_size)?)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let frames = NonZeroU32::new(config.frames)
            .ok_or_else(|| XskError::Config("zero UMEM frames".into()))?;
        let (umem, mut descs) =
            Umem::new(umem_config, frames, false).map_err(|e| XskError::Umem {
                bytes: config.umem_bytes(),
                reason: e.to_string(),
            })?;
        let mut bind = match config.bind {
            XskBindMode::Copy => BindFlags::XDP_COPY,
            XskBindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
        };
        if multi_buffer {
            bind |= BindFlags::XDP_USE_SG;
        }
        let socket_config = SocketConfig::builder()
            .rx_queue_size(size(config.ring_size)?)
            .tx_queue_size(size(config.ring_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind | BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let socket_error = |reason: String| XskError::Socket {
            interface: interface.to_owned(),
            queue,
            reason,
            errno: None,
        };
        // SAFETY: the UMEM is new and not shared with any other socket, so the sharing
        // precondition of `Socket::new` (inhibit program load on a bound pair) does not apply;
        // we set INHIBIT_PROG_LOAD anyway.
        let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &ifname, queue) }
            .map_err(|e| socket_failure(interface, queue, &e))?;
        let (mut fill, completion) =
            rings.ok_or_else(|| socket_error("kernel returned no fill/completion rings".into()))?;
        let ring = config.ring_size as usize;
        // SAFETY: the frames come from `umem`, the UMEM of this fill queue, and none of them is
        // in any other queue.
        let given = unsafe { fill.produce(&descs[..ring]) };
        if given != ring {
            return Err(socket_error(format!(
                "fill ring took {given} of {ring} frames"
            )));
        }
        descs.truncate(ring);
        Ok(Self {
            umem,
            rx,
            fill,
            _tx: tx,
            _completion: completion,
            refill: Vec::with_capacity(ring),
            batch: descs,
            chain: Vec::new(),
            chain_too_long: false,
            too_long: 0,
            multi_buffer,
            interface: interface.to_owned(),
            queue,
        })
    }

    /// Whether frames longer than one UMEM frame are received (multi-buffer mode).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The socket fd, for the XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by the socket inside `self.rx`, which lives as long as `self`.
        unsafe { BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd()) }
    }

    /// Waits up to `timeout` for frames, hands each received frame to `on_frame` (a multi-buffer
    /// frame once whole, copied together), then returns the UMEM frames to the fill ring.
    /// Returns the number of frames handed over.
    pub fn receive(
        &mut self,
        timeout: Duration,
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<usize, XskError> {
        self.give_back_refill();
        // Take what is there without a syscall; poll(2) only when nothing is and the caller
        // wants to wait (a syscall per batch costs more than the batch's frames at high rates).
        // SAFETY: `self.batch` holds descriptors of this socket's own UMEM.
        let mut received = unsafe { self.rx.consume(&mut self.batch) };
        if received == 0 && !timeout.is_zero() {
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: as above.
            received = unsafe { self.rx.poll_and_consume(&mut self.batch, millis) }
                .map_err(|source| self.io_error("poll", source))?;
        }
        let mut frames = 0;
        for desc in &self.batch[..received] {
            // SAFETY: `desc` was just consumed from the RX ring of this UMEM and is not in any
            // kernel ring until we put it back below, so nothing writes to it meanwhile.
            let data = unsafe { self.umem.data(desc) };
            let bytes = data.contents();
            let more = desc.options() & XDP_PKT_CONTD != 0;
            if !more && self.chain.is_empty() && !self.chain_too_long {
                on_frame(bytes);
                frames += 1;
                continue;
            }
            if !self.chain_too_long {
                if self.chain.len() + bytes.len() > MAX_CHAINED_FRAME {
                    self.chain_too_long = true;
                    self.chain.clear();
                } else {
                    self.chain.extend_from_slice(bytes);
                }
            }
            if !more {
                if self.chain_too_long {
                    self.too_long += 1;
                    self.chain_too_long = false;
                } else {
                    on_frame(&self.chain);
                    frames += 1;
                }
                self.chain.clear();
            }
        }
        if received > 0 {
            // Frames go back in the order they came; whatever the fill ring cannot take now
            // (it takes all of a batch or none) waits in `refill` for the next call.
            self.refill.extend_from_slice(&self.batch[..received]);
            self.give_back_refill();
        }
        if self.fill.needs_wakeup() {
            self.fill
                .wakeup(self.rx.fd_mut(), 0)
                .map_err(|source| self.io_error("waking the kernel", source))?;
        }
        Ok(frames)
    }

    /// Puts the frames waiting in `refill` on the fill ring, if it has room for all of them.
    fn give_back_refill(&mut self) {
        if self.refill.is_empty() {
            return;
        }
        // SAFETY: the frames in `refill` belong to this UMEM, came back from the RX ring and
        // are in no kernel ring; those the fill ring takes are the kernel's from now on.
        let given = unsafe { self.fill.produce(&self.refill) };
        if given == self.refill.len() {
            self.refill.clear();
        }
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> Result<XskStatistics, XskError> {
        let stats = self
            .rx
            .fd()
            .xdp_statistics()
            .map_err(|source| self.io_error("XDP_STATISTICS", source))?;
        Ok(XskStatistics {
            rx_dropped: stats.rx_dropped(),
            rx_ring_full: stats.rx_ring_full(),
            rx_fill_ring_empty: stats.rx_fill_ring_empty_descs(),
            rx_invalid: stats.rx_invalid_descs(),
            rx_too_long: self.too_long,
        })
    }

    fn io_error(&self, op: &'static str, source: std::io::Error) -> XskError {
        XskError::Io {
            interface: self.interface.clone(),
            queue: self.queue,
            op,
            source,
        }
    }
}

/// `XDP_PKT_CONTD` (linux/if_xdp.h): on a descriptor, "the frame goes on in the next one".
const XDP_PKT_CONTD: u32 = 1;

/// An AF_XDP socket that sends (copy mode) on one queue of an interface: frames are written into
/// free UMEM frames and put on the TX ring in batches; frames the kernel has sent come back
/// through the completion ring. When no UMEM frame is free (the interface is slower than the
/// traffic) a frame is refused, never waited for.
///
/// A frame longer than one UMEM frame (1,792 bytes of data in a 2 KiB frame, so any jumbo
/// frame) goes out in several, chained as the kernel's AF_XDP multi-buffer mode wants
/// (`XDP_USE_SG`, Linux 6.6). Where the kernel refuses that mode the socket is bound without
/// it and such frames are refused ([`Self::multi_buffer`] says which).
pub struct XskSender {
    umem: Umem,
    tx: TxQueue,
    completion: CompQueue,
    _rx: RxQueue,
    _fill: FillQueue,
    free: Vec<FrameDesc>,
    /// Descriptors written and not yet on the TX ring; a frame's chain is never split.
    pending: Vec<FrameDesc>,
    /// Frames (not descriptors) in `pending`.
    pending_frames: usize,
    /// Bytes of frame data one UMEM frame holds.
    chunk: usize,
    /// Bound with `XDP_USE_SG`.
    multi_buffer: bool,
    /// The transmit queue.
    queue: u32,
    /// UMEM frames in all.
    frames: usize,
    /// Space for descriptors coming back from the completion ring.
    scratch: Vec<FrameDesc>,
    interface: String,
}

impl fmt::Debug for XskSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskSender")
            .field("interface", &self.interface)
            .field("free", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl XskSender {
    /// Opens a sending socket on queue 0 of `interface` with `frames` UMEM frames of 2 KiB, in
    /// multi-buffer mode where the kernel has it.
    pub fn open(interface: &str, frames: u32) -> Result<Self, XskError> {
        Self::open_queue(interface, 0, frames)
    }

    /// The same on transmit queue `queue` (a queue takes one AF_XDP socket).
    pub fn open_queue(interface: &str, queue: u32, frames: u32) -> Result<Self, XskError> {
        multi_buffer_else_plain(
            |multi_buffer| Self::open_with(interface, queue, frames, multi_buffer),
            "AF_XDP multi-buffer send refused (XDP_USE_SG needs Linux 6.6); frames above 1,792 bytes will not be sent",
        )
    }

    fn open_with(
        interface: &str,
        queue: u32,
        frames: u32,
        multi_buffer: bool,
    ) -> Result<Self, XskError> {
        let ifname: Interface = interface
            .parse()
            .map_err(|_| XskError::Interface(interface.to_owned()))?;
        let ring = frames.next_power_of_two();
        let size = |n: u32| QueueSize::new(n).map_err(|e| XskError::Config(e.to_string()));
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(2048).map_err(|e| XskError::Config(e.to_string()))?)
            .fill_queue_size(size(64)?)
            .comp_queue_size(size(ring)?)
            .build()
            .map_err(|e| XskError::Config(e.to_string()))?;
        let count =
            NonZeroU32::new(frames).ok_or_else(|| XskError::Config("zero UMEM frames".into()))?;
        let chunk = umem_config.mtu() as usize;
        let (umem, descs) = Umem::new(umem_config, count, false).map_err(|e| XskError::Umem {
            bytes: u64::from(frames) * 2048,
            reason: e.to_string(),
        })?;
        let mut bind = BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP;
        if multi_buffer {
            bind |= BindFlags::XDP_USE_SG;
        }
        let socket_config = SocketConfig::builder()
            .rx_queue_size(size(64)?)
            .tx_queue_size(size(ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let socket_error = |reason: String| XskError::Socket {
            interface: interface.to_owned(),
            queue,
            reason,
            errno: None,
        };
        // SAFETY: the UMEM is new and used by this socket only.
        let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &ifname, queue) }
            .map_err(|e| socket_failure(interface, queue, &e))?;
        let (fill, completion) =
            rings.ok_or_else(|| socket_error("kernel returned no fill/completion rings".into()))?;
        Ok(Self {
            umem,
            tx,
            completion,
            _rx: rx,
            _fill: fill,
            scratch: descs[..descs.len().min(256)].to_vec(),
            frames: descs.len(),
            free: descs,
            pending: Vec::with_capacity(64),
            pending_frames: 0,
            chunk,
            multi_buffer,
            interface: interface.to_owned(),
            queue,
        })
    }

    /// Whether frames longer than one UMEM frame can be sent (multi-buffer mode).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The longest frame [`Self::push`] takes.
    pub fn max_frame(&self) -> usize {
        if self.multi_buffer {
            // The kernel's limit on buffers per frame is MAX_SKB_FRAGS (17) and more; 16
            // UMEM frames hold any jumbo frame with room to spare.
            self.chunk * 16
        } else {
            self.chunk
        }
    }

    /// Takes back the frames the kernel has sent.
    fn reclaim(&mut self) {
        let mut scratch = std::mem::take(&mut self.scratch);
        loop {
            // SAFETY: the completion ring only returns descriptors of this socket's UMEM that
            // we put on its TX ring; `scratch` is space for them.
            let got = unsafe { self.completion.consume(&mut scratch) };
            self.free.extend_from_slice(&scratch[..got]);
            if got < scratch.len() {
                break;
            }
        }
        self.scratch = scratch;
    }

    /// Queues one frame; false when it is empty, longer than [`Self::max_frame`], or no UMEM
    /// frame is free for it (the frame is not sent).
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty() || frame.len() > self.max_frame() {
            return false;
        }
        let needed = frame.len().div_ceil(self.chunk);
        if self.free.len() < needed {
            self.reclaim();
            if self.free.len() < needed {
                return false;
            }
        }
        let first = self.pending.len();
        let from = self.free.len() - needed;
        self.pending.extend(self.free.drain(from..));
        for (k, (desc, part)) in self.pending[first..]
            .iter_mut()
            .zip(frame.chunks(self.chunk))
            .enumerate()
        {
            // SAFETY: `desc` was a free frame of this UMEM: in no kernel ring, so nothing else
            // reads or writes it while we fill it.
            let mut data = unsafe { self.umem.data_mut(desc) };
            let mut cursor = data.cursor();
            cursor.set_pos(0);
            // `part` is at most `chunk` bytes, what a frame's data segment holds.
            let written = std::io::Write::write_all(&mut cursor, part).is_ok();
            debug_assert!(written, "a part of one chunk fits a UMEM frame");
            desc.set_options(if k + 1 < needed { XDP_PKT_CONTD } else { 0 });
        }
        self.pending_frames += 1;
        true
    }

    /// UMEM frames on the TX ring the kernel has not completed yet.
    fn in_flight(&self) -> usize {
        self.frames - self.free.len() - self.pending.len()
    }

    /// Puts the queued frames on the TX ring and has the kernel send them; returns how many
    /// frames were put on the ring (all queued ones, or none when the ring had no room: those
    /// are not sent, and counted by the caller).
    pub fn flush(&mut self) -> Result<usize, XskError> {
        if self.pending.is_empty() {
            self.kick()?;
            return Ok(0);
        }
        // SAFETY: the pending descriptors belong to this UMEM, hold written frames, and are in
        // no ring; `produce` takes all or none, and those it takes are the kernel's until they
        // come back through the completion ring.
        let taken = unsafe { self.tx.produce(&self.pending) };
        let sent = if taken == self.pending.len() {
            self.pending_frames
        } else {
            0
        };
        // Taken ones leave `pending` at once (never in the ring and the free list both).
        self.pending.drain(..taken);
        // Frames the ring had no room for go back to the free list.
        let unsent: Vec<FrameDesc> = self.pending.drain(..).collect();
        self.free.extend(unsent);
        self.pending_frames = 0;
        self.kick()?;
        Ok(sent)
    }

    /// Has the kernel send what is on the TX ring. In copy mode each wake-up sends a bounded
    /// batch (32 frames on current kernels), so this wakes it until the ring is empty or the
    /// interface stops taking frames.
    pub fn kick(&mut self) -> Result<(), XskError> {
        self.reclaim();
        for _ in 0..64 {
            if self.in_flight() == 0 {
                break;
            }
            let before = self.in_flight();
            if let Err(source) = self.tx.wakeup() {
                let busy = matches!(
                    source.raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EBUSY)
                );
                if busy {
                    break;
                }
                return Err(XskError::Io {
                    interface: self.interface.clone(),
                    queue: self.queue,
                    op: "waking the kernel to send",
                    source,
                });
            }
            self.reclaim();
            if self.in_flight() == before {
                break;
            }
        }
        Ok(())
    }

    /// Waits (up to `timeout`) until every frame put on the ring has been sent.
    pub fn drain(&mut self, timeout: std::time::Duration) -> Result<(), XskError> {
        let deadline = std::time::Instant::now() + timeout;
        while self.in_flight() > 0 && std::time::Instant::now() < deadline {
            self.kick()?;
            if self.in_flight() > 0 {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_checked() {
        let config = XskConfig::with_ring(4096, XskBindMode::Copy).expect("valid");
        assert_eq!(config.ring_size(), 4096);
        assert_eq!(config.umem_bytes(), 16 << 20);
        for bad in [0, 32, 1000, 32_768] {
            assert!(
                XskConfig::with_ring(bad, XskBindMode::Copy).is_err(),
                "{bad}"
            );
        }
    }
}
