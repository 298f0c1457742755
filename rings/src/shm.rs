//! Shared-memory ways: rings in files under `/dev/shm/fastedge/`, between the distributor and
//! one consumer application per way.
//!
//! A way has one or more *lanes*, one per engine thread (receive queue) that writes to it; each
//! lane is a single-producer single-consumer ring, so no two threads ever write the same ring.
//! The consumer reads every lane. Order is kept within a lane (one receive queue); across
//! lanes only the capture timestamps relate packets, as with any multi-queue capture.
//!
//! A way is two files, both created by the distributor, exclusively (`O_EXCL|O_NOFOLLOW`
//! under a random temporary name, then renamed into place) in a directory it owns that nobody
//! else may write (mode 0755):
//!
//! - the **data file** `NAME-WAY` (mode 0600, 0640 with a group): the header, the producer's
//!   counters and the rings. Only the producer writes it; a consumer maps it read-only.
//! - the **position file** `NAME-WAY.pos` (mode 0600, 0660 with a group): what the consumer
//!   writes — its pid, its heartbeat and how far it has read each lane. The producer never
//!   maps it (a consumer that truncates it cannot raise SIGBUS in the distributor): it reads
//!   the positions with `pread` when a lane looks full, and trusts none of them — a position
//!   behind the last one seen or past the head is ignored (the lane stays as full as it was)
//!   and counted as a bad position.
//!
//! Layout of the data file (all integers little-endian, every counter a 64-bit atomic):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `FEDGWAY\0`, u32 version (4), u32 header size (4096), u64 lane data capacity (power of two), u32 lanes, u32 lane header size (128) |
//! | 64 | `wake`: a u32 futex word (one per way, for every lane): a sleeping consumer waits on it, a producer adds 1 and wakes it |
//! | 4096 + i × (128 + capacity) | lane i: `head` (bytes ever written), `heartbeat` (ns), `delivered`, `dropped` (packets), `bad_positions` (consumer positions ignored); at +128 the data: records, each `u32 length`, `u32 flags`, `u64 timestamp ns`, `u64 flow hash`, then the packet, padded to 8 bytes |
//!
//! Layout of the position file: at 0 the consumer's `pid` (0: none) and `heartbeat` (ns,
//! CLOCK_REALTIME); at 64 `asleep` (0: awake; else `1 << 32 | w`: asleep waiting for `wake` to
//! change from `w`), alone on its cache line; at 128 + i × 64 lane i's `tail` (bytes ever read).
//!
//! ## Sleeping consumers
//!
//! A consumer with nothing to read can sleep ([`Consumer::wait_readable`], [`wait_any`]): it
//! reads `wake`, stores `asleep`, then (after a full fence) looks at every head once more and
//! only then waits on `wake` in the kernel (a futex on the shared mapping), with a timeout so
//! that it still notices a producer that went away. A producer, after a batch of pushes
//! ([`Producer::publish`], [`publish`]), fences, then loads `asleep`: one load of a line the
//! consumer writes only when it falls asleep or wakes, so nothing when nobody sleeps. Seeing a
//! sleeper, it moves `wake` on from the value the consumer waits for (a compare-and-swap, so
//! that one sleep costs one wake-up whichever lane sees it first) and wakes it. The two fences
//! make the race safe: either the consumer sees the new head and does not sleep, or the
//! producer sees `asleep` and wakes it (or `wake` moved already and the wait returns at once).
//! One word per way, not per lane: the consumer reads every lane and waits for any of them.
//! The producer maps the position file read-only to load `asleep` (a consumer that truncates
//! it only blinds the producer to its own flag: see `sigbus`).
//!
//! ## Batches
//!
//! A producer stores its lane's `head` once per batch of pushes, not per packet: a push only
//! writes the record (and keeps the head in the producer's own memory, with the rest of what a
//! push touches, on one cache line); [`Producer::publish`] (or [`publish`] for all the ways of
//! an engine thread) stores the head with release ordering, then looks for a sleeper as above.
//! A consumer sees a batch whole, from its first packet to its last, once it is published. A
//! batch that fills a quarter of a lane is published in part as it goes, so that a consumer
//! reading meanwhile makes room for the rest.
//!
//! A record never wraps: when it does not fit before the end, a padding record (flags bit 0)
//! fills the rest and the record starts at offset 0. The producer never waits: when the lane is
//! full the packet is dropped and counted. A consumer that stops just stops reading; one that
//! comes back (or a new one) attaches again and reads from the newest data on. A consumer
//! checks that both files and their directory belong to root or to its own user and are not
//! writable by others before it reads anything.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{fence, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use memmap2::{MmapOptions, MmapRaw};

use crate::{sigbus, sys};

const MAGIC: [u8; 8] = *b"FEDGWAY\0";
/// Version of the layout above; bumped on any change.
pub const VERSION: u32 = 4;
const HEADER: usize = 4096;
const LANE_HEADER: usize = 128;
const RECORD_HEADER: usize = 24;
const FLAG_PADDING: u32 = 1;
/// Most lanes a way may have.
pub const MAX_LANES: u32 = 256;
/// The directory of way files.
pub const WAY_DIR: &str = "/dev/shm/fastedge";

// Offsets of the atomics in a lane header of the data file.
const HEAD: usize = 0;
const PRODUCER_HEARTBEAT: usize = 8;
const DELIVERED: usize = 16;
const DROPPED: usize = 24;
const BAD_POSITIONS: usize = 32;
// Offset of the futex word in the data file's header.
const WAKE: usize = 64;
// Offsets in the position file.
const CONSUMER_PID: usize = 0;
const CONSUMER_HEARTBEAT: usize = 8;
const ASLEEP: usize = 64;
const ASLEEP_MARK: u64 = 1 << 32;
const TAILS: usize = 128;
const TAIL_STRIDE: usize = 64;

/// Errors of shared-memory ways.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A file operation on a way failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation (`creating`, `checking`, …).
        op: &'static str,
        /// The way's (or its position file's) path.
        path: PathBuf,
        /// The error of the call.
        source: io::Error,
    },
    /// The file's header is not a way's (magic or size).
    #[error("{path} is not a fastedge way (bad magic or size)")]
    NotAWay {
        /// The file.
        path: PathBuf,
    },
    /// A way written by a build with another layout version.
    #[error("{path} has layout version {found}; this build reads version {VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its layout version.
        found: u32,
    },
    /// Another live process consumes this way.
    #[error("way {path} already has a consumer (pid {pid})")]
    Busy {
        /// The way.
        path: PathBuf,
        /// That consumer's pid.
        pid: u64,
    },
    /// A lane capacity (bytes) that is not a power of two of at least 64 KiB.
    #[error("capacity {0} is not a power of two of at least 64 KiB")]
    Capacity(usize),
    /// A lane count outside 1 to [`MAX_LANES`].
    #[error("{0} lanes: a way has 1 to {MAX_LANES}")]
    Lanes(u32),
    /// A file or directory neither root nor this user owns, or that others may write.
    #[error("{path} is not trusted: {why}")]
    Untrusted {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Who may open the ways besides their owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WayAccess {
    /// A group that may read the data and write the positions (data 0640, positions 0660);
    /// `None`: the owner only (0600).
    pub group: Option<u32>,
}

/// Removes the way files `0..ways` of distribution `name` (at a clean exit). A consumer that
/// still maps one keeps reading what is left; it cannot attach again.
pub fn remove_ways(name: &str, ways: u32) {
    for way in 0..ways {
        let path = way_path(name, way);
        let _ = std::fs::remove_file(position_path(&path));
        let _ = std::fs::remove_file(path);
    }
}

/// The data file of way `way` of distribution `name` (e.g. the interface):
/// `/dev/shm/fastedge/{name}-{way}`.
pub fn way_path(name: &str, way: u32) -> PathBuf {
    Path::new(WAY_DIR).join(format!("{name}-{way}"))
}

/// The position file beside the data file `path` (`….pos`).
pub fn position_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".pos");
    PathBuf::from(name)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn untrusted(path: &Path, why: &'static str) -> ShmError {
    ShmError::Untrusted {
        path: path.to_owned(),
        why,
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// The directory a way file goes in: created (0755) if missing; it must be a real directory
/// of ours that nobody else can write, so no one can plant or swap a way file in it.
fn prepare_directory(path: &Path) -> Result<(), ShmError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("creating the way directory", dir)(e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_error("checking", dir))?;
    if !meta.file_type().is_dir() {
        return Err(untrusted(dir, "the way directory is not a directory"));
    }
    if meta.uid() != euid() {
        return Err(untrusted(dir, "the way directory belongs to another user"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(dir, "others may write in the way directory"));
    }
    Ok(())
}

/// Checks, on the open file, that a consumer may trust it: a regular file of root or of this
/// user, nobody else may write it (`group_write`: the group may).
fn check_trusted(file: &File, path: &Path, group_write: bool) -> Result<(), ShmError> {
    let meta = file.metadata().map_err(io_error("checking", path))?;
    if !meta.file_type().is_file() {
        return Err(untrusted(path, "not a regular file"));
    }
    if meta.uid() != 0 && meta.uid() != euid() {
        return Err(untrusted(
            path,
            "owned by another user than root or this one",
        ));
    }
    let forbidden = if group_write { 0o002 } else { 0o022 };
    if meta.mode() & forbidden != 0 {
        return Err(untrusted(path, "writable by others"));
    }
    Ok(())
}

/// Creates a new file of `size` bytes and `mode` (group `access.group`) under a random
/// temporary name beside `path`, exclusively and without following links; returns it and the
/// temporary name (renamed over `path` once filled).
fn create_exclusive(
    path: &Path,
    size: usize,
    mode: u32,
    access: WayAccess,
) -> Result<(File, PathBuf), ShmError> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| ShmError::Io {
        op: "drawing a temporary name for",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })?;
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".new-{:016x}", u64::from_le_bytes(random)));
    let temporary = PathBuf::from(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temporary)
        .map_err(io_error("creating", &temporary))?;
    let finish = || -> Result<(), ShmError> {
        if let Some(gid) = access.group {
            nix::unistd::fchown(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                None,
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| io_error("giving the group", &temporary)(e.into()))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_error("setting the mode of", &temporary))?;
        file.set_len(size as u64)
            .map_err(io_error("sizing", &temporary))
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok((file, temporary))
}

/// Size of the position file of a way of `lanes` lanes (whole pages).
fn positions_size(lanes: usize) -> usize {
    (TAILS + lanes * TAIL_STRIDE).next_multiple_of(4096)
}

/// The data file's mapping, with typed access to its header and lanes. Memory other processes
/// may map: accessed through raw pointers and atomics only, never as `&[u8]`.
struct Region {
    map: MmapRaw,
    capacity: usize,
    lanes: usize,
}

impl Region {
    #[inline]
    fn lane_offset(&self, lane: usize) -> usize {
        HEADER + lane * (LANE_HEADER + self.capacity)
    }

    /// An atomic of lane `lane`'s header.
    #[inline]
    fn lane_atomic(&self, lane: usize, offset: usize) -> &AtomicU64 {
        debug_assert!(lane < self.lanes && offset < LANE_HEADER);
        atomic_at(&self.map, self.lane_offset(lane) + offset)
    }

    /// The way's futex word (see the module doc).
    #[inline]
    fn wake(&self) -> &AtomicU32 {
        assert!(WAKE + 4 <= self.map.len());
        // SAFETY: WAKE is 4-aligned inside the header of the (page-aligned) mapping, which
        // lives as long as the returned reference; every process uses atomics here.
        unsafe { &*(self.map.as_ptr().add(WAKE) as *const AtomicU32) }
    }

    /// Pointer to byte `at` of lane `lane`'s data (`at` < capacity).
    #[inline]
    fn data_ptr(&self, lane: usize, at: usize) -> *mut u8 {
        assert!(lane < self.lanes && at < self.capacity);
        // SAFETY: lane < lanes and at < capacity, and the mapping holds every lane (checked
        // when it was made), so the offset is inside it.
        unsafe {
            self.map
                .as_mut_ptr()
                .add(self.lane_offset(lane) + LANE_HEADER + at)
        }
    }
}

/// The 64-bit atomic at `offset` of `map`.
#[inline]
fn atomic_at(map: &MmapRaw, offset: usize) -> &AtomicU64 {
    assert!(offset.is_multiple_of(8) && offset + 8 <= map.len());
    // SAFETY: `offset` is 8-aligned (checked) inside the mapping (checked), which is
    // page-aligned; the memory lives as long as `map`, which the returned reference borrows;
    // AtomicU64 allows other processes' concurrent writes (every process uses atomics here).
    unsafe { &*(map.as_ptr().add(offset) as *const AtomicU64) }
}

/// Copies `packet` to `to`: frames up to 64 bytes (the common small frame) in two
/// overlapping fixed-size moves, inline, instead of a call into `memcpy`.
///
/// # Safety
///
/// `to` must be valid for writes of `packet.len()` bytes and not overlap `packet`.
#[inline(always)]
unsafe fn copy_packet(to: *mut u8, packet: &[u8]) {
    let len = packet.len();
    let from = packet.as_ptr();
    // SAFETY: in every arm, every read lies in `packet` (offsets 0 and len - n, with
    // n <= len) and every write in `to[..len]`, which the caller vouches for.
    unsafe {
        if (32..=64).contains(&len) {
            std::ptr::copy_nonoverlapping(from, to, 32);
            std::ptr::copy_nonoverlapping(from.add(len - 32), to.add(len - 32), 32);
        } else if (16..32).contains(&len) {
            std::ptr::copy_nonoverlapping(from, to, 16);
            std::ptr::copy_nonoverlapping(from.add(len - 16), to.add(len - 16), 16);
        } else {
            std::ptr::copy_nonoverlapping(from, to, len);
        }
    }
}

/// Asks the CPU to bring the cache line at `at` into its caches before a coming write
/// (`prefetcht0`: a write prefetch, `prefetchw`, is not in the x86-64 baseline this builds
/// for). Only a hint: any address is fine (it is never dereferenced, and a bad one is ignored
/// by the CPU).
#[inline(always)]
fn prefetch_for_write(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE, the instruction's only requirement, is part of every x86_64 CPU; a
    // prefetch reads and writes nothing.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Ends a batch of pushes on many lanes (e.g. every way of an engine thread) with one fence:
/// [`Producer::publish`] for each of them.
#[inline]
pub fn publish(producers: &mut [Producer]) {
    let mut pushed = false;
    for producer in producers.iter_mut() {
        if producer.cursor.head != producer.cursor.published {
            producer.store_head();
            pushed = true;
        }
    }
    if pushed {
        fence(Ordering::SeqCst);
        for producer in producers {
            if producer.cursor.head != producer.cursor.published {
                producer.wake_if_asleep();
            }
        }
    }
}

/// What a push reads and writes of its producer, together on one cache line: with many ways,
/// each way's lane costs the engine this line and the lines its records go to, nothing more.
#[derive(Debug)]
#[repr(C, align(64))]
struct Cursor {
    /// This lane's data in the mapping (`mask + 1` bytes).
    data: *mut u8,
    /// The lane's capacity minus one (a power of two minus one).
    mask: usize,
    /// The lane's head: only this producer moves it, so it is kept here; consumers see it
    /// when it is stored ([`Producer::publish`]), once per batch.
    head: u64,
    /// The head as last stored in the lane's header.
    stored: u64,
    /// The consumer's tail as last accepted: it only moves forward, so free space computed
    /// from it is a lower bound; the position file is read again only when that bound says
    /// full.
    tail_seen: u64,
    /// The lane's delivered counter (only this producer writes it; stored with the head).
    delivered: u64,
    /// The lane's dropped counter (only this producer writes it; stored at each drop).
    dropped: u64,
    /// The head when the consumer was last woken if asleep (see [`Producer::publish`]):
    /// here, so that ending a batch looks at this line only for the ways it did not touch.
    published: u64,
}

/// The writing end of one lane of a way: owned by one engine thread.
pub struct Producer {
    /// The per-push state (first: the struct is cache-line aligned).
    cursor: Cursor,
    region: Region,
    /// The position file, read with `pread` (see the module doc) but for `asleep`.
    positions: File,
    /// Protects `asleep_map` from a truncated file; dropped before it (field order).
    _asleep_guard: Option<sigbus::Guard>,
    /// The position file's first page, mapped read-only to load `asleep` after each batch;
    /// `None` when it cannot be protected (then `asleep` is read with `pread`).
    asleep_map: Option<MmapRaw>,
    lane: usize,
    path: PathBuf,
    /// The last position rejected, so that one bad value is counted once.
    last_bad: Option<u64>,
}

// SAFETY: the only field that is not Send by itself is `cursor.data`, a pointer into this
// producer's own mapping (`region`, which moves with it and outlives every use); only this
// producer writes through it (its lane's data, which no other producer of this process
// touches), so the producer may move to another thread.
unsafe impl Send for Producer {}

// SAFETY: through a shared reference a producer only reads its own fields and uses atomics
// in the mapping (heartbeat, counters, the consumer's pid); `cursor.data` is written through
// only by `push`, which takes `&mut self`.
unsafe impl Sync for Producer {}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("path", &self.path)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates (or re-creates) a one-lane private way file at `path` with `capacity` bytes of
    /// data.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, ShmError> {
        let mut lanes = Self::create_lanes(path, capacity, 1, WayAccess::default())?;
        lanes.pop().ok_or(ShmError::Lanes(0))
    }

    /// Creates (or re-creates) the way at `path` with `lanes` lanes of `capacity` bytes each;
    /// returns one producer per lane (each maps the file on its own, so each can move to its
    /// own thread).
    pub fn create_lanes(
        path: &Path,
        capacity: usize,
        lanes: u32,
        access: WayAccess,
    ) -> Result<Vec<Self>, ShmError> {
        Self::make_lanes(path, capacity, lanes, false, access)
    }

    /// Like [`Producer::create_lanes`], but when `path` already is a way of this layout,
    /// capacity and lane count (left by an earlier pipeline of this process, before a reload),
    /// it is kept as it is: its consumer stays attached and reads on, its counters go on.
    pub fn reuse_lanes(
        path: &Path,
        capacity: usize,
        lanes: u32,
        access: WayAccess,
    ) -> Result<Vec<Self>, ShmError> {
        Self::make_lanes(path, capacity, lanes, true, access)
    }

    /// The existing way at `path` and its position file, when they are ours and of this
    /// geometry.
    fn open_same_geometry(path: &Path, capacity: usize, lanes: u32) -> Option<(File, File)> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .ok()
                .filter(|f| {
                    f.metadata()
                        .is_ok_and(|m| m.file_type().is_file() && m.uid() == euid())
                })
        };
        let data = open(path)?;
        let positions = open(&position_path(path))?;
        let mut header = [0u8; 32];
        data.read_exact_at(&mut header, 0).ok()?;
        let size = data.metadata().ok()?.len() as usize;
        let same = header[..8] == MAGIC
            && header[8..12] == VERSION.to_le_bytes()
            && header[16..24] == (capacity as u64).to_le_bytes()
            && header[24..28] == lanes.to_le_bytes()
            && size == HEADER + lanes as usize * (LANE_HEADER + capacity);
        same.then_some((data, positions))
    }

    fn make_lanes(
        path: &Path,
        capacity: usize,
        lanes: u32,
        reuse: bool,
        access: WayAccess,
    ) -> Result<Vec<Self>, ShmError> {
        if !capacity.is_power_of_two() || capacity < 64 * 1024 {
            return Err(ShmError::Capacity(capacity));
        }
        if lanes == 0 || lanes > MAX_LANES {
            return Err(ShmError::Lanes(lanes));
        }
        prepare_directory(path)?;
        let kept = if reuse {
            Self::open_same_geometry(path, capacity, lanes)
        } else {
            None
        };
        let keep = kept.is_some();
        let group_bits = if access.group.is_some() { 0o040 } else { 0 };
        // A new way is made under temporary names and renamed over the old one: a consumer
        // still mapping the old file keeps a valid (stale) mapping, never one truncated under
        // it, and attaches again to the new file.
        let (file, positions, temporaries) = match kept {
            Some((file, positions)) => (file, positions, None),
            None => {
                let size = HEADER + lanes as usize * (LANE_HEADER + capacity);
                let (file, data_temp) = create_exclusive(path, size, 0o600 | group_bits, access)?;
                let (positions, pos_temp) = match create_exclusive(
                    &position_path(path),
                    positions_size(lanes as usize),
                    0o600 | group_bits | (group_bits >> 1),
                    access,
                ) {
                    Ok(made) => made,
                    Err(e) => {
                        let _ = std::fs::remove_file(&data_temp);
                        return Err(e);
                    }
                };
                (file, positions, Some((data_temp, pos_temp)))
            }
        };
        let mut producers = Vec::with_capacity(lanes as usize);
        for lane in 0..lanes as usize {
            let map = MmapOptions::new()
                .map_raw(&file)
                .map_err(io_error("mapping", path))?;
            if map.len() < HEADER + lanes as usize * (LANE_HEADER + capacity) {
                return Err(ShmError::NotAWay {
                    path: path.to_owned(),
                });
            }
            if lane == 0 && !keep {
                let mut header = [0u8; 32];
                header[..8].copy_from_slice(&MAGIC);
                header[8..12].copy_from_slice(&VERSION.to_le_bytes());
                header[12..16].copy_from_slice(&(HEADER as u32).to_le_bytes());
                header[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
                header[24..28].copy_from_slice(&lanes.to_le_bytes());
                header[28..32].copy_from_slice(&(LANE_HEADER as u32).to_le_bytes());
                // SAFETY: the mapping is at least HEADER bytes (checked above); the file is
                // new and not yet renamed into place, so no other process maps it.
                unsafe {
                    std::ptr::copy_nonoverlapping(header.as_ptr(), map.as_mut_ptr(), header.len())
                };
            }
            let region = Region {
                map,
                capacity,
                lanes: lanes as usize,
            };
            let head = region.lane_atomic(lane, HEAD).load(Ordering::Acquire);
            let cursor = Cursor {
                data: region.data_ptr(lane, 0),
                mask: capacity - 1,
                head,
                stored: head,
                tail_seen: head,
                delivered: region.lane_atomic(lane, DELIVERED).load(Ordering::Relaxed),
                dropped: region.lane_atomic(lane, DROPPED).load(Ordering::Relaxed),
                published: head,
            };
            let asleep_map = MmapOptions::new()
                .len(4096)
                .map_raw_read_only(&positions)
                .map_err(io_error("mapping", &position_path(path)))?;
            let asleep_guard = sigbus::Guard::register(asleep_map.as_ptr(), asleep_map.len());
            let mut producer = Self {
                cursor,
                asleep_map: asleep_guard.is_some().then_some(asleep_map),
                _asleep_guard: asleep_guard,
                region,
                positions: positions
                    .try_clone()
                    .map_err(io_error("duplicating", path))?,
                lane,
                path: path.to_owned(),
                last_bad: None,
            };
            // A kept way: start from the consumer's position if it is a sane one.
            let tail = producer.read_tail();
            if head.wrapping_sub(tail) <= capacity as u64 {
                producer.cursor.tail_seen = tail;
            }
            producer.heartbeat();
            producers.push(producer);
        }
        if let Some((data_temp, pos_temp)) = temporaries {
            std::fs::rename(&pos_temp, position_path(path))
                .map_err(io_error("renaming into place", path))?;
            std::fs::rename(&data_temp, path).map_err(io_error("renaming into place", path))?;
        }
        Ok(producers)
    }

    /// Marks the producer alive now (consumers can tell a stalled producer).
    pub fn heartbeat(&self) {
        self.region
            .lane_atomic(self.lane, PRODUCER_HEARTBEAT)
            .store(now_ns(), Ordering::Release);
    }

    /// The consumer's tail of this lane as written in the position file (0 when unreadable).
    fn read_tail(&self) -> u64 {
        let mut bytes = [0u8; 8];
        let at = (TAILS + self.lane * TAIL_STRIDE) as u64;
        match self.positions.read_exact_at(&mut bytes, at) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => 0,
        }
    }

    /// Reads the consumer's tail again and accepts it only between the last accepted one and
    /// the head; anything else is counted (once per value) and changes nothing.
    #[cold]
    fn refresh_tail(&mut self) {
        let tail = self.read_tail();
        let head = self.cursor.head;
        if head.wrapping_sub(tail) <= head.wrapping_sub(self.cursor.tail_seen) {
            self.cursor.tail_seen = tail;
        } else if self.last_bad != Some(tail) {
            self.last_bad = Some(tail);
            self.region
                .lane_atomic(self.lane, BAD_POSITIONS)
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends one packet; returns false (and counts a drop) when the lane is full or the
    /// packet cannot fit at all. Never waits. Consumers see the packet once the batch ends
    /// with [`Producer::publish`] (or [`publish`]): one store of the head per batch, not per
    /// packet (and one within a batch that fills a quarter of the lane).
    #[inline]
    pub fn push(&mut self, packet: &[u8], timestamp_ns: u64, flow_hash: u64) -> bool {
        let cursor = &mut self.cursor;
        let capacity = cursor.mask + 1;
        let size = (RECORD_HEADER + packet.len()).next_multiple_of(8);
        let head = cursor.head;
        let at = (head as usize) & cursor.mask;
        let to_end = capacity - at;
        let padding = if size > to_end { to_end } else { 0 };
        let needed = (padding + size) as u64;
        let fits = |tail: u64| head.wrapping_sub(tail) + needed <= capacity as u64;
        if !fits(cursor.tail_seen) {
            self.refresh_tail();
        }
        let cursor = &mut self.cursor;
        if size > capacity / 2 || !fits(cursor.tail_seen) {
            return self.count_drop();
        }
        let data = cursor.data;
        if padding > 0 {
            // A padding record: length 0, flag set; the reader skips to offset 0. Always room
            // for its 8-byte head: records are 8-aligned and at least 24 bytes.
            // SAFETY: at + 8 <= capacity (records are 8-aligned, so at least 8 bytes remain
            // before the end; `at` is masked); this lane's data is written by this producer
            // only and the consumer reads it only after the head moves past it.
            unsafe {
                (data.add(at) as *mut u64).write_unaligned((u64::from(FLAG_PADDING) << 32).to_le())
            };
        }
        let start = (at + padding) & cursor.mask;
        // SAFETY: `data` is the lane's `capacity` bytes (set up with the mapping, whose size
        // was checked); start + size <= capacity (a record never wraps: padding moved it to 0
        // when it did not fit before the end, and size <= capacity / 2), and the header plus
        // the packet are at most `size` bytes, so every write stays in this lane's data; nobody
        // else writes it, and the consumer reads it only after the head is stored past it.
        unsafe {
            let record = data.add(start);
            (record as *mut u64).write_unaligned((packet.len() as u64).to_le());
            (record.add(8) as *mut u64).write_unaligned(timestamp_ns.to_le());
            (record.add(16) as *mut u64).write_unaligned(flow_hash.to_le());
            copy_packet(record.add(RECORD_HEADER), packet);
        }
        cursor.head = head + needed;
        cursor.delivered += 1;
        // The next record of this lane goes here: its lines were last touched a lap of the
        // ring ago, so fetch them while other lanes' packets are handled (with many ways, the
        // write miss was half of the hot path).
        let next = data.wrapping_add((cursor.head as usize) & cursor.mask);
        prefetch_for_write(next);
        prefetch_for_write(next.wrapping_add(64));
        // A batch that fills a quarter of the lane shows before it ends, so that a consumer
        // reading meanwhile makes room for the rest of it.
        if cursor.head - cursor.stored > (cursor.mask as u64) >> 2 {
            self.store_head();
        }
        true
    }

    /// Counts a dropped packet (only this producer writes the counter: a plain store).
    #[cold]
    fn count_drop(&mut self) -> bool {
        self.cursor.dropped += 1;
        self.region
            .lane_atomic(self.lane, DROPPED)
            .store(self.cursor.dropped, Ordering::Relaxed);
        false
    }

    /// Makes the packets pushed so far visible to the consumer: stores the head (release:
    /// after the records) and the delivered counter.
    #[inline]
    fn store_head(&mut self) {
        let cursor = &mut self.cursor;
        if cursor.head != cursor.stored {
            cursor.stored = cursor.head;
            let header = self.region.lane_offset(self.lane);
            atomic_at(&self.region.map, header + HEAD).store(cursor.head, Ordering::Release);
            atomic_at(&self.region.map, header + DELIVERED)
                .store(cursor.delivered, Ordering::Relaxed);
        }
    }

    /// Ends a batch of pushes: stores the head once for the whole batch (the consumer sees
    /// its packets from now on) and, if the consumer sleeps waiting for data, wakes it (see
    /// the module doc). Call it once per batch, not per packet: it costs two stores, a fence
    /// and one load when the consumer is awake, a syscall when it sleeps; nothing when nothing
    /// was pushed since the last call. Until it is called, the consumer may not see the new
    /// packets.
    #[inline]
    pub fn publish(&mut self) {
        if self.cursor.head != self.cursor.published {
            self.store_head();
            fence(Ordering::SeqCst);
            self.wake_if_asleep();
        }
    }

    /// The part of [`Producer::publish`] after the fence.
    #[inline]
    fn wake_if_asleep(&mut self) {
        self.cursor.published = self.cursor.head;
        let asleep = match &self.asleep_map {
            Some(map) => atomic_at(map, ASLEEP).load(Ordering::Relaxed),
            None => self.read_asleep(),
        };
        if asleep != 0 {
            self.wake(asleep as u32);
        }
    }

    /// Wakes a consumer asleep waiting for `wake` to leave `waited`, unless another lane's
    /// producer did already (or the word is garbage a consumer wrote: no wake-up then).
    #[cold]
    fn wake(&self, waited: u32) {
        let wake = self.region.wake();
        if wake.load(Ordering::Relaxed) == waited
            && wake
                .compare_exchange(
                    waited,
                    waited.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            sys::futex_wake(wake);
        }
    }

    /// `asleep` read with `pread` (when the mapping is not protected); 0 when unreadable.
    #[cold]
    fn read_asleep(&self) -> u64 {
        let mut bytes = [0u8; 8];
        match self.positions.read_exact_at(&mut bytes, ASLEEP as u64) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => 0,
        }
    }

    /// Packets delivered into this lane (published or not yet) and dropped because it was
    /// full.
    pub fn counters(&self) -> (u64, u64) {
        (self.cursor.delivered, self.cursor.dropped)
    }

    /// Consumer positions of this lane that were ignored (behind the last one or past the
    /// head: a broken or hostile consumer).
    pub fn bad_positions(&self) -> u64 {
        self.region
            .lane_atomic(self.lane, BAD_POSITIONS)
            .load(Ordering::Relaxed)
    }

    /// The pid of the attached consumer, if one is attached and its process exists.
    pub fn consumer(&self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        self.positions
            .read_exact_at(&mut bytes, CONSUMER_PID as u64)
            .ok()?;
        let pid = u64::from_le_bytes(bytes);
        (pid != 0 && pid <= i32::MAX as u64 && process_exists(pid)).then_some(pid)
    }

    /// The way file this producer writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lane of the way this producer writes (its engine thread's index).
    pub fn lane(&self) -> usize {
        self.lane
    }
}

impl Drop for Producer {
    /// A sleeping consumer wakes at once (and can tell the producer is gone by its heartbeat
    /// or attach again to a new way) instead of at its timeout.
    fn drop(&mut self) {
        self.store_head();
        let wake = self.region.wake();
        wake.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(wake);
    }
}

fn process_exists(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// One packet read from a way, borrowed from the consumer's own copy until the next record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Capture time, nanoseconds since the Unix epoch (the recorded time for file inputs).
    pub timestamp_ns: u64,
    /// The frame's symmetric flow hash (the same in both directions).
    pub flow_hash: u64,
    /// The Ethernet frame, without the FCS.
    pub data: &'a [u8],
}

/// The reading end of a way: a consumer application.
pub struct Consumer {
    region: Region,
    /// The position file, mapped read-write (this consumer's own page).
    positions: MmapRaw,
    path: PathBuf,
    pid: u64,
    /// Our own tails (the shared copies are only written, never trusted back).
    tails: Vec<u64>,
    /// Each record is copied here before the application sees it.
    scratch: Vec<u8>,
    /// The lane to read first next time (so that a busy lane cannot starve the others).
    next_lane: usize,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A way written `NAME:WAY` (`eth1:3`, as `fastedge tap` takes it): the distribution's name
/// and the way's number. The name may itself hold colons; the number follows the last one.
pub fn parse_way(text: &str) -> Result<(&str, u32), String> {
    text.rsplit_once(':')
        .filter(|(name, _)| !name.is_empty())
        .and_then(|(name, way)| Some((name, way.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("{text:?}: expected NAME:WAY, e.g. eth1:3"))
}

impl Consumer {
    /// Attaches to way `way` of distribution `name` (see [`way_path`]).
    pub fn open(name: &str, way: u32) -> Result<Self, ShmError> {
        Self::open_path(&way_path(name, way))
    }

    /// Attaches to the way whose data file is `path`, reading from the newest data on. Fails
    /// if the files or their directory are not trusted (see the module doc) or if another
    /// live process is attached; takes over from a consumer that died.
    pub fn open_path(path: &Path) -> Result<Self, ShmError> {
        let not_a_way = || ShmError::NotAWay {
            path: path.to_owned(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let meta = std::fs::metadata(dir).map_err(io_error("checking", dir))?;
            if meta.uid() != 0 && meta.uid() != euid() {
                return Err(untrusted(dir, "the way directory belongs to another user"));
            }
            if meta.mode() & 0o022 != 0 {
                return Err(untrusted(dir, "others may write in the way directory"));
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_error("opening", path))?;
        check_trusted(&file, path, false)?;
        let pos_path = position_path(path);
        let pos_file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&pos_path)
            .map_err(io_error("opening", &pos_path))?;
        check_trusted(&pos_file, &pos_path, true)?;
        let len = file.metadata().map_err(io_error("reading", path))?.len() as usize;
        if len < HEADER + LANE_HEADER + 64 * 1024 {
            return Err(not_a_way());
        }
        let map = MmapOptions::new()
            .map_raw_read_only(&file)
            .map_err(io_error("mapping", path))?;
        let mut header = [0u8; 32];
        // SAFETY: the mapping is at least HEADER bytes (the file's length was checked); a copy
        // out of it, never a reference into it.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), header.as_mut_ptr(), 32) };
        if header[..8] != MAGIC {
            return Err(not_a_way());
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(ShmError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let mut capacity_bytes = [0u8; 8];
        capacity_bytes.copy_from_slice(&header[16..24]);
        let capacity = usize::try_from(u64::from_le_bytes(capacity_bytes)).unwrap_or(0);
        let lanes = u32_at(24) as usize;
        if u32_at(12) as usize != HEADER
            || u32_at(28) as usize != LANE_HEADER
            || !capacity.is_power_of_two()
            || capacity < 64 * 1024
            || lanes == 0
            || lanes > MAX_LANES as usize
            || capacity
                .checked_add(LANE_HEADER)
                .and_then(|l| l.checked_mul(lanes))
                .and_then(|l| l.checked_add(HEADER))
                .is_none_or(|size| size > map.len())
        {
            return Err(not_a_way());
        }
        let pos_len = pos_file
            .metadata()
            .map_err(io_error("reading", &pos_path))?
            .len() as usize;
        if pos_len < positions_size(lanes) {
            return Err(not_a_way());
        }
        let positions = MmapOptions::new()
            .len(positions_size(lanes))
            .map_raw(&pos_file)
            .map_err(io_error("mapping", &pos_path))?;
        let region = Region {
            map,
            capacity,
            lanes,
        };
        let pid = u64::from(std::process::id());
        let slot = atomic_at(&positions, CONSUMER_PID);
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0
                && current != pid
                && current <= i32::MAX as u64
                && process_exists(current)
            {
                return Err(ShmError::Busy {
                    path: path.to_owned(),
                    pid: current,
                });
            }
            match slot.compare_exchange(current, pid, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        // A consumer that died asleep left its flag up.
        atomic_at(&positions, ASLEEP).store(0, Ordering::Relaxed);
        // Start from the newest data: what piled up while nobody read is stale.
        let mut tails = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let head = region.lane_atomic(lane, HEAD).load(Ordering::Acquire);
            atomic_at(&positions, TAILS + lane * TAIL_STRIDE).store(head, Ordering::Release);
            tails.push(head);
        }
        Ok(Self {
            region,
            positions,
            path: path.to_owned(),
            pid,
            tails,
            scratch: Vec::new(),
            next_lane: 0,
        })
    }

    /// Lanes of this way (engine threads that write to it).
    pub fn lanes(&self) -> usize {
        self.region.lanes
    }

    /// Whether a lane has something to read now (a packet, or a head to skip to).
    fn readable(&self) -> bool {
        (0..self.region.lanes).any(|lane| {
            self.region.lane_atomic(lane, HEAD).load(Ordering::Acquire) != self.tails[lane]
        })
    }

    /// Announces that this consumer is about to sleep waiting for `wake` to leave its
    /// current value, which it returns (see the module doc).
    fn fall_asleep(&self) -> u32 {
        atomic_at(&self.positions, CONSUMER_HEARTBEAT).store(now_ns(), Ordering::Relaxed);
        let seen = self.region.wake().load(Ordering::Acquire);
        atomic_at(&self.positions, ASLEEP).store(ASLEEP_MARK | u64::from(seen), Ordering::Relaxed);
        seen
    }

    fn wake_up(&self) {
        atomic_at(&self.positions, ASLEEP).store(0, Ordering::Relaxed);
    }

    /// Waits until a lane has something to read, at most `timeout`, sleeping in the kernel
    /// (a futex on the way's wake word): an idle consumer costs no CPU, and the producer wakes
    /// it after the batch that brings the next packet (see the module doc). Returns whether
    /// there is something to read; false after `timeout`, or earlier when woken with nothing
    /// to read (a producer went away: [`Consumer::producer_heartbeat_ns`] tells). Use it
    /// between [`Consumer::read_batch`] calls that read nothing, with a timeout as short as
    /// the application needs to notice other things (a stop request, a dead producer).
    pub fn wait_readable(&self, timeout: Duration) -> bool {
        if self.readable() {
            return true;
        }
        let seen = self.fall_asleep();
        fence(Ordering::SeqCst);
        if !self.readable() {
            sys::futex_wait(self.region.wake(), seen, timeout);
        }
        self.wake_up();
        self.readable()
    }

    /// Calls `on_record` for every packet available now (at most `max`), lane after lane,
    /// then frees their space for the producers. Returns how many were read.
    pub fn read_batch(&mut self, max: usize, mut on_record: impl FnMut(Record<'_>)) -> usize {
        atomic_at(&self.positions, CONSUMER_HEARTBEAT).store(now_ns(), Ordering::Relaxed);
        let lanes = self.region.lanes;
        let first = self.next_lane;
        self.next_lane = (first + 1) % lanes;
        let mut read = 0;
        for i in 0..lanes {
            if read >= max {
                break;
            }
            read += self.read_lane((first + i) % lanes, max - read, &mut on_record);
        }
        read
    }

    fn read_lane(
        &mut self,
        lane: usize,
        max: usize,
        on_record: &mut impl FnMut(Record<'_>),
    ) -> usize {
        let capacity = self.region.capacity;
        let head = self.region.lane_atomic(lane, HEAD).load(Ordering::Acquire);
        let mut tail = self.tails[lane];
        if head.wrapping_sub(tail) > capacity as u64 {
            // Not a state the producer makes: start again from the newest data.
            tail = head;
        }
        let mut read = 0;
        while tail != head && read < max {
            let at = (tail as usize) & (capacity - 1);
            let mut header = [0u8; RECORD_HEADER];
            let header_len = RECORD_HEADER.min(capacity - at);
            // SAFETY: at < capacity and header_len <= capacity - at: inside this lane's data;
            // a copy out of the shared memory, which the producer does not write between
            // tail and head.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.region.data_ptr(lane, at),
                    header.as_mut_ptr(),
                    header_len,
                )
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if flags & FLAG_PADDING != 0 {
                tail += (capacity - at) as u64;
                continue;
            }
            let size = (RECORD_HEADER + len).next_multiple_of(8);
            if header_len < RECORD_HEADER
                || size > capacity - at
                || size as u64 > head.wrapping_sub(tail)
            {
                // A record the producer cannot have written: skip to the newest data.
                tail = head;
                break;
            }
            // Grown, never cleared: zero-filling it for every record cost as much as the copy.
            if self.scratch.len() < len {
                self.scratch.resize(len, 0);
            }
            // SAFETY: at + size <= capacity (checked), so the packet's bytes lie inside this
            // lane's data; `scratch` holds at least `len` bytes (above); copied out before the
            // application sees them.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.region.data_ptr(lane, at).add(RECORD_HEADER),
                    self.scratch.as_mut_ptr(),
                    len,
                )
            };
            let word = |range: std::ops::Range<usize>| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&header[range]);
                u64::from_le_bytes(bytes)
            };
            on_record(Record {
                timestamp_ns: word(8..16),
                flow_hash: word(16..24),
                data: &self.scratch[..len],
            });
            tail += size as u64;
            read += 1;
        }
        self.tails[lane] = tail;
        atomic_at(&self.positions, TAILS + lane * TAIL_STRIDE).store(tail, Ordering::Release);
        read
    }

    /// When a producer last showed it was alive (ns since the epoch; the latest over lanes).
    pub fn producer_heartbeat_ns(&self) -> u64 {
        (0..self.region.lanes)
            .map(|lane| {
                self.region
                    .lane_atomic(lane, PRODUCER_HEARTBEAT)
                    .load(Ordering::Acquire)
            })
            .max()
            .unwrap_or(0)
    }

    /// Packets delivered to and dropped at this way (all lanes), as the producers count them.
    pub fn counters(&self) -> (u64, u64) {
        self.lane_counters()
            .into_iter()
            .fold((0, 0), |(d, x), (ld, lx)| (d + ld, x + lx))
    }

    /// Per lane (engine thread): packets delivered and dropped because the lane was full.
    pub fn lane_counters(&self) -> Vec<(u64, u64)> {
        (0..self.region.lanes)
            .map(|lane| {
                (
                    self.region
                        .lane_atomic(lane, DELIVERED)
                        .load(Ordering::Relaxed),
                    self.region
                        .lane_atomic(lane, DROPPED)
                        .load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// [`Consumer::wait_readable`] over several ways at once (e.g. one thread reading many ways):
/// waits until one of `consumers` has something to read, at most `timeout`; returns whether
/// one has. Sleeps on every way's wake word at once (futex_waitv, Linux 5.16). With more than
/// 128 ways, or on an older kernel, it sleeps on the first way only, 1 ms at most at a time.
pub fn wait_any(consumers: &[Consumer], timeout: Duration) -> bool {
    wait_any_in(consumers.iter(), timeout)
}

/// [`wait_any`] over consumers the caller holds apart (behind handles, in other structures):
/// the same wait, given references.
pub fn wait_any_of(consumers: &[&Consumer], timeout: Duration) -> bool {
    wait_any_in(consumers.iter().copied(), timeout)
}

fn wait_any_in<'a>(
    consumers: impl Iterator<Item = &'a Consumer> + Clone,
    timeout: Duration,
) -> bool {
    let mut first_two = consumers.clone();
    match (first_two.next(), first_two.next()) {
        (None, _) => {
            std::thread::sleep(timeout);
            return false;
        }
        (Some(one), None) => return one.wait_readable(timeout),
        _ => {}
    }
    if consumers.clone().any(Consumer::readable) {
        return true;
    }
    let words: Vec<(&AtomicU32, u32)> = consumers
        .clone()
        .map(|c| (c.region.wake(), c.fall_asleep()))
        .collect();
    fence(Ordering::SeqCst);
    if !consumers.clone().any(Consumer::readable) && !sys::futex_waitv(&words, timeout) {
        sys::futex_wait(
            words[0].0,
            words[0].1,
            timeout.min(Duration::from_millis(1)),
        );
    }
    for consumer in consumers.clone() {
        consumer.wake_up();
    }
    consumers.clone().any(Consumer::readable)
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.wake_up();
        let _ = atomic_at(&self.positions, CONSUMER_PID).compare_exchange(
            self.pid,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_way_is_named_name_colon_number() {
        assert_eq!(super::parse_way("eth1:3"), Ok(("eth1", 3)));
        assert_eq!(super::parse_way("a:b:0"), Ok(("a:b", 0)));
        for bad in [
            "eth1",
            "eth1:",
            ":3",
            "eth1:-1",
            "eth1:x",
            "eth1:4294967296",
        ] {
            assert_eq!(
                super::parse_way(bad),
                Err(format!("{bad:?}: expected NAME:WAY, e.g. eth1:3"))
            );
        }
    }

    use super::*;

    /// A way in a private directory of this test process (like `/dev/shm/fastedge`), one per
    /// test (some remove theirs while others run).
    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir()
            .join(format!("fastedge-ways-{}-{tag}", std::process::id()))
            .join(format!("way-{tag}"))
    }

    #[test]
    fn packets_arrive_in_order_across_wraps() {
        let path = temp_path("order");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        let mut next_expected = 0u64;
        let mut sent = 0u64;
        // Many more bytes than the capacity, odd sizes so records wrap at every offset.
        for round in 0..2000u64 {
            for _ in 0..5 {
                let size = 40 + (sent % 97) as usize;
                let packet: Vec<u8> = (0..size).map(|i| (sent as usize + i) as u8).collect();
                assert!(
                    producer.push(&packet, sent, sent * 7),
                    "round {round}: room after reads"
                );
                sent += 1;
            }
            producer.publish();
            consumer.read_batch(usize::MAX, |record| {
                let n = record.timestamp_ns;
                assert_eq!(n, next_expected);
                assert_eq!(record.flow_hash, n * 7);
                assert_eq!(record.data.len(), 40 + (n % 97) as usize);
                assert!(record
                    .data
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == (n as usize + i) as u8));
                next_expected += 1;
            });
        }
        assert_eq!(next_expected, sent);
        assert_eq!(producer.counters(), (sent, 0));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_batch_is_published_with_one_head_store() {
        let path = temp_path("batch");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        let head = || consumer.region.lane_atomic(0, HEAD).load(Ordering::Acquire);
        let before = head();
        for i in 0..10u64 {
            assert!(producer.push(&[i as u8; 60], i, i));
        }
        assert_eq!(head(), before, "no head store per packet");
        assert_eq!(producer.counters(), (10, 0));
        producer.publish();
        assert_eq!(head(), before + 10 * 88, "one store for the batch");
        let mut seen = Vec::new();
        consumer.read_batch(usize::MAX, |r| seen.push(r.timestamp_ns));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(consumer.counters(), (10, 0));
        // A batch longer than a quarter of the lane shows before it ends, so that a consumer
        // reading meanwhile makes room for the rest of it.
        let packet = [7u8; 1000];
        let mut visible_at = None;
        for i in 0..40u64 {
            assert!(producer.push(&packet, i, 0));
            if visible_at.is_none() && consumer.read_batch(usize::MAX, |_| {}) > 0 {
                visible_at = Some(i);
            }
        }
        assert_eq!(visible_at, Some(15), "stored once 16 KiB were pushed");
        producer.publish();
        assert_eq!(consumer.read_batch(usize::MAX, |_| {}), 40 - 16);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_full_way_drops_and_counts_then_resumes() {
        let path = temp_path("full");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let consumer = Consumer::open_path(&path).unwrap();
        let packet = [0u8; 1000];
        let accepted = (0..200).filter(|&i| producer.push(&packet, i, 0)).count() as u64;
        let (delivered, dropped) = producer.counters();
        assert_eq!(delivered, accepted);
        assert_eq!(dropped, 200 - accepted);
        assert!(
            accepted > 50 && accepted < 70,
            "{accepted} records of 1 KiB in 64 KiB"
        );
        // The consumer "crashes" (goes away without reading); a new one starts fresh.
        drop(consumer);
        let mut again = Consumer::open_path(&path).unwrap();
        assert_eq!(
            again.read_batch(usize::MAX, |_| {}),
            0,
            "stale data skipped"
        );
        assert!(producer.push(&packet, 999, 0));
        producer.publish();
        let mut seen = Vec::new();
        again.read_batch(usize::MAX, |r| seen.push(r.timestamp_ns));
        assert_eq!(seen, [999]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn one_consumer_per_way_and_checks() {
        let path = temp_path("busy");
        let producer = Producer::create(&path, 64 * 1024).unwrap();
        let first = Consumer::open_path(&path).unwrap();
        assert_eq!(producer.consumer(), Some(u64::from(std::process::id())));
        // The same process may re-attach (a restarted reader thread); another live pid may not.
        atomic_at(&first.positions, CONSUMER_PID).store(1, Ordering::Release); // pid 1 always exists
        assert!(matches!(
            Consumer::open_path(&path),
            Err(ShmError::Busy { pid: 1, .. })
        ));
        // A dead consumer's slot is taken over.
        atomic_at(&first.positions, CONSUMER_PID).store(u64::from(u32::MAX), Ordering::Release);
        assert!(Consumer::open_path(&path).is_ok());
        assert!(matches!(
            Producer::create(&path, 1000),
            Err(ShmError::Capacity(1000))
        ));
        let bogus = path.with_file_name("way-bogus");
        std::fs::write(&bogus, vec![0u8; HEADER + LANE_HEADER + 64 * 1024]).unwrap();
        std::fs::write(position_path(&bogus), vec![0u8; 4096]).unwrap();
        for file in [bogus.clone(), position_path(&bogus)] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            Consumer::open_path(&bogus),
            Err(ShmError::NotAWay { .. })
        ));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&bogus);
    }

    #[test]
    fn lanes_written_by_threads_read_by_one_consumer() {
        let path = temp_path("lanes");
        let producers = Producer::create_lanes(&path, 64 * 1024, 3, WayAccess::default()).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        assert_eq!(consumer.lanes(), 3);
        const N: u64 = 300;
        let writers: Vec<_> = producers
            .into_iter()
            .map(|mut p| {
                std::thread::spawn(move || {
                    let lane = p.lane() as u64;
                    for i in 0..N {
                        assert!(p.push(&[lane as u8; 60], lane * 1000 + i, lane));
                        if i % 16 == 15 {
                            p.publish();
                        }
                    }
                    p.publish();
                    p
                })
            })
            .collect();
        let producers: Vec<Producer> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let mut per_lane = vec![Vec::new(); 3];
        while consumer.read_batch(7, |r| per_lane[r.flow_hash as usize].push(r.timestamp_ns)) > 0 {}
        for (lane, seen) in per_lane.iter().enumerate() {
            let want: Vec<u64> = (0..N).map(|i| lane as u64 * 1000 + i).collect();
            assert_eq!(seen, &want, "lane {lane}: every packet, in order");
            assert_eq!(producers[lane].counters(), (N, 0));
        }
        assert_eq!(consumer.counters(), (3 * N, 0));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_reused_way_keeps_its_consumer_and_data() {
        let path = temp_path("reuse");
        let mut first = Producer::create(&path, 64 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        assert!(first.push(b"before", 1, 0));
        drop(first);
        // A reload with the same geometry: the consumer reads on, nothing is lost.
        let mut again = Producer::reuse_lanes(&path, 64 * 1024, 1, WayAccess::default())
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(again.consumer(), Some(u64::from(std::process::id())));
        assert!(again.push(b"after", 2, 0));
        again.publish();
        let mut seen = Vec::new();
        consumer.read_batch(usize::MAX, |r| seen.push(r.data.to_vec()));
        assert_eq!(seen, [b"before".to_vec(), b"after".to_vec()]);
        assert_eq!(again.counters(), (2, 0));
        // Another geometry: re-created.
        let other = Producer::reuse_lanes(&path, 128 * 1024, 1, WayAccess::default())
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(other.counters(), (0, 0));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn producer_and_consumer_threads() {
        let path = temp_path("threads");
        let mut producer = Producer::create(&path, 256 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        const N: u64 = 200_000;
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer_done = finished.clone();
        let reader = std::thread::spawn(move || {
            let mut expected = 0u64;
            let mut gaps = 0u64;
            loop {
                // Read the flag first: once it is set, one more empty read means the end
                // (the last packets may have been dropped, so waiting for N could be forever).
                let done = producer_done.load(std::sync::atomic::Ordering::Acquire);
                let read = consumer.read_batch(256, |r| {
                    if r.timestamp_ns != expected {
                        gaps += r.timestamp_ns - expected;
                    }
                    assert_eq!(r.data, &r.timestamp_ns.to_le_bytes());
                    expected = r.timestamp_ns + 1;
                });
                if read == 0 && (done || expected == N) {
                    break;
                }
            }
            gaps + (N - expected)
        });
        for i in 0..N {
            producer.push(&i.to_le_bytes(), i, 0);
            if i % 64 == 63 {
                producer.publish();
            }
        }
        producer.publish();
        finished.store(true, std::sync::atomic::Ordering::Release);
        let gaps = reader.join().unwrap();
        let (delivered, dropped) = producer.counters();
        assert_eq!(delivered + dropped, N);
        assert_eq!(gaps, dropped, "every missing packet is a counted drop");
        let _ = std::fs::remove_file(&path);
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn ways_are_private_files_in_a_private_directory() {
        let path = temp_path("private");
        let producer = Producer::create(&path, 64 * 1024).unwrap();
        assert_eq!(mode_of(&path), 0o600, "data file");
        assert_eq!(mode_of(&position_path(&path)), 0o600, "position file");
        let dir = path.parent().unwrap();
        assert_eq!(mode_of(dir), 0o755);
        assert_eq!(std::fs::metadata(dir).unwrap().uid(), euid());
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("way-private"))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // With a group: the group reads the data and writes the positions.
        let shared = temp_path("group");
        let gid = nix::unistd::getegid().as_raw();
        let _group =
            Producer::create_lanes(&shared, 64 * 1024, 1, WayAccess { group: Some(gid) }).unwrap();
        assert_eq!(mode_of(&shared), 0o640);
        assert_eq!(mode_of(&position_path(&shared)), 0o660);
        assert_eq!(std::fs::metadata(&shared).unwrap().gid(), gid);
        // A consumer refuses a data file others may write, and a link in place of it.
        drop(producer);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(matches!(
            Consumer::open_path(&path),
            Err(ShmError::Untrusted { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = path.with_file_name("way-link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        std::fs::copy(position_path(&path), position_path(&link)).unwrap();
        assert!(
            Consumer::open_path(&link).is_err(),
            "a symbolic link is not followed"
        );
        // Ways are not made in a directory others may write (such as /tmp).
        let open_dir = temp_path("open").with_file_name(format!("open-{}", std::process::id()));
        std::fs::create_dir_all(&open_dir).unwrap();
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(
            Producer::create(&open_dir.join("way"), 64 * 1024),
            Err(ShmError::Untrusted { .. })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_hostile_consumer_cannot_make_the_producer_overwrite_or_stop_others() {
        let victim_path = temp_path("victim");
        let other_path = temp_path("bystander");
        let mut victim = Producer::create(&victim_path, 64 * 1024).unwrap();
        let mut other = Producer::create(&other_path, 64 * 1024).unwrap();
        let mut hostile = Consumer::open_path(&victim_path).unwrap();
        let mut honest = Consumer::open_path(&other_path).unwrap();
        let packet = [7u8; 1000];
        let fit = (0..200).filter(|&i| victim.push(&packet, i, 0)).count() as u64;
        assert!(fit > 50 && fit < 70, "{fit}");
        // The consumer writes positions past the head, behind what it had, and garbage.
        let tail = atomic_at(&hostile.positions, TAILS);
        for bad in [
            victim.cursor.head + 4096,
            u64::MAX,
            victim.cursor.head.wrapping_sub(1 << 20),
        ] {
            tail.store(bad, Ordering::Release);
            for i in 0..50 {
                assert!(
                    !victim.push(&packet, i, 0),
                    "{bad}: nothing unread is overwritten"
                );
                assert!(other.push(&packet, i, 1), "the other way is unaffected");
                other.publish();
                assert_eq!(
                    honest.read_batch(usize::MAX, |r| assert_eq!(r.flow_hash, 1)),
                    1
                );
            }
        }
        assert_eq!(victim.bad_positions(), 3, "each bad value counted once");
        let (delivered, dropped) = victim.counters();
        assert_eq!((delivered, dropped), (fit, 200 - fit + 150));
        assert_eq!(other.bad_positions(), 0);
        // Back to a sane position (everything read): the way works again.
        tail.store(victim.cursor.head, Ordering::Release);
        hostile.tails[0] = victim.cursor.head;
        assert!(victim.push(b"again", 1, 2));
        victim.publish();
        let mut seen = Vec::new();
        hostile.read_batch(usize::MAX, |r| seen.push(r.data.to_vec()));
        assert_eq!(seen, [b"again".to_vec()]);
        let _ = std::fs::remove_dir_all(victim_path.parent().unwrap());
    }

    #[test]
    fn a_truncated_position_file_does_not_kill_the_producer() {
        let path = temp_path("truncated");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let consumer = Consumer::open_path(&path).unwrap();
        // It truncates its own position file: the producer (which never maps it) goes on,
        // dropping once full, and counts the unreadable position.
        File::options()
            .write(true)
            .open(position_path(&path))
            .unwrap()
            .set_len(0)
            .unwrap();
        let packet = [1u8; 1000];
        // Each batch ends with a look at the consumer's `asleep` flag, through a mapping of
        // the truncated file: it reads 0 (no SIGBUS).
        let accepted = (0..200)
            .filter(|&i| {
                let pushed = producer.push(&packet, i, 0);
                producer.publish();
                pushed
            })
            .count() as u64;
        assert!(accepted > 50 && accepted < 70);
        assert_eq!(producer.counters(), (accepted, 200 - accepted));
        assert_eq!(producer.consumer(), None);
        // The consumer broke its own mapping: touching it would fault in *its* process (this
        // one, in a test), so it is not dropped.
        std::mem::forget(consumer);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// CPU time this thread has used.
    fn thread_cpu() -> Duration {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes the struct it is given.
        let result = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        assert_eq!(result, 0);
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
    }

    fn monotonic_ns() -> u64 {
        let now = crate::sys::clock_monotonic();
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_the_next_packet_and_uses_no_cpu_meanwhile() {
        let path = temp_path("sleep");
        let mut producer = Producer::create(&path, 64 * 1024).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        let asleep = std::sync::Arc::new(std::sync::Barrier::new(2));
        let ready = asleep.clone();
        let reader = std::thread::spawn(move || {
            assert_eq!(consumer.read_batch(usize::MAX, |_| {}), 0);
            // With nothing pushed it sleeps until its timeout.
            let start = std::time::Instant::now();
            assert!(!consumer.wait_readable(Duration::from_millis(100)));
            assert!(start.elapsed() >= Duration::from_millis(95));
            ready.wait();
            let (cpu, start) = (thread_cpu(), std::time::Instant::now());
            let readable = consumer.wait_readable(Duration::from_secs(10));
            let (cpu, waited) = (thread_cpu() - cpu, start.elapsed());
            let mut seen = Vec::new();
            consumer.read_batch(usize::MAX, |r| seen.push(r.data.to_vec()));
            (readable, cpu, waited, seen)
        });
        asleep.wait();
        std::thread::sleep(Duration::from_millis(200));
        assert!(producer.push(b"wake up", 1, 0));
        producer.publish();
        let (readable, cpu, waited, seen) = reader.join().unwrap();
        println!("waited {waited:?}, consumer CPU while waiting {cpu:?}");
        assert!(readable);
        assert_eq!(seen, [b"wake up".to_vec()]);
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
            "woken by the packet, long before the timeout: {waited:?}"
        );
        assert!(
            cpu < Duration::from_millis(20),
            "asleep, not polling: {cpu:?}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn wake_up_latency_at_a_low_rate_and_no_lost_wake_ups() {
        let path = temp_path("latency");
        let producers = Producer::create_lanes(&path, 1 << 20, 2, WayAccess::default()).unwrap();
        let mut consumer = Consumer::open_path(&path).unwrap();
        const SLOW: u64 = 300;
        const FAST: u64 = 20_000;
        let writers: Vec<_> = producers
            .into_iter()
            .map(|mut p| {
                std::thread::spawn(move || {
                    // A low rate (one packet every ~2 ms, both lanes), stamped when pushed...
                    for _ in 0..SLOW / 2 {
                        std::thread::sleep(Duration::from_millis(2));
                        assert!(p.push(&[1; 64], monotonic_ns(), 0));
                        p.publish();
                    }
                    // ...then bursts with short gaps, to catch the consumer at every point
                    // of falling asleep: a lost wake-up shows as a wait that times out.
                    for i in 0..FAST / 2 {
                        p.push(&[2; 64], 0, 0);
                        if i % 7 == 0 {
                            p.publish();
                            for _ in 0..(i % 50) * 20 {
                                std::hint::spin_loop();
                            }
                        }
                    }
                    p.publish();
                    p
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let (mut read, mut timeouts, mut slow_waits) = (0u64, 0, 0);
        while read < SLOW + FAST {
            let before = read;
            read += consumer.read_batch(usize::MAX, |r| {
                if r.data[0] == 1 {
                    latencies.push(monotonic_ns() - r.timestamp_ns);
                }
            }) as u64;
            if read == before {
                // A lost wake-up leaves the consumer asleep until the timeout; a producer
                // thread kept off the CPU by a busy machine wakes it late, not never.
                // (A wake for a batch already read returns false at once: not a timeout.)
                let start = std::time::Instant::now();
                if !consumer.wait_readable(Duration::from_secs(5))
                    && start.elapsed() >= Duration::from_secs(5)
                {
                    timeouts += 1;
                }
                if start.elapsed() > Duration::from_millis(100) {
                    slow_waits += 1;
                }
                assert!(timeouts < 3, "the producers stopped: {read} read");
            }
        }
        let producers: Vec<Producer> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        for p in &producers {
            assert_eq!(p.counters().1, 0, "nothing dropped");
        }
        assert_eq!(timeouts, 0, "every wait ended by a wake-up");
        if slow_waits > 0 {
            println!("{slow_waits} waits over 100 ms (producers descheduled)");
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        println!(
            "push to consumer, {} packets at ~1 kHz: median {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            latencies.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        assert!(at(0.5) < 5_000.0, "woken at once, not at a timeout");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn wait_any_of_waits_on_consumers_held_apart() {
        let paths = [temp_path("apart-0"), temp_path("apart-1")];
        let mut producers: Vec<Producer> = paths
            .iter()
            .map(|p| Producer::create(p, 64 * 1024).unwrap())
            .collect();
        let first = Consumer::open_path(&paths[0]).unwrap();
        let second = Consumer::open_path(&paths[1]).unwrap();
        assert!(!wait_any_of(&[&first, &second], Duration::from_millis(20)));
        assert!(!wait_any_of(&[], Duration::from_millis(1)));
        assert!(producers[1].push(b"second way", 1, 0));
        publish(&mut producers);
        assert!(wait_any_of(&[&first, &second], Duration::from_secs(10)));
        assert!(wait_any_of(&[&second], Duration::from_secs(10)));
        assert!(!wait_any_of(&[&first], Duration::from_millis(1)));
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn one_thread_sleeps_on_many_ways() {
        let paths = [temp_path("many-0"), temp_path("many-1")];
        let mut producers: Vec<Producer> = paths
            .iter()
            .map(|p| Producer::create(p, 64 * 1024).unwrap())
            .collect();
        let consumers: Vec<Consumer> = paths
            .iter()
            .map(|p| Consumer::open_path(p).unwrap())
            .collect();
        let reader = std::thread::spawn(move || {
            let (cpu, start) = (thread_cpu(), std::time::Instant::now());
            let readable = wait_any(&consumers, Duration::from_secs(10));
            (readable, thread_cpu() - cpu, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(producers[1].push(b"second way", 1, 0));
        publish(&mut producers);
        let (readable, cpu, waited) = reader.join().unwrap();
        assert!(readable);
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(cpu < Duration::from_millis(20), "{cpu:?}");
        for path in paths {
            let _ = std::fs::remove_file(path);
        }
    }
}
