//! Shared-memory ways: rings in a file under `/dev/shm`, between the distributor and one
//! consumer application per way.
//!
//! A way has one or more *lanes*, one per engine thread (receive queue) that writes to it; each
//! lane is a single-producer single-consumer ring, so no two threads ever write the same ring.
//! The consumer reads every lane. Order is kept within a lane (one receive queue); across
//! lanes only the capture timestamps relate packets, as with any multi-queue capture.
//!
//! Layout of a way file (all integers little-endian, every counter a 64-bit atomic):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `FEDGWAY\0`, u32 version (2), u32 header size (4096), u64 lane data capacity (power of two), u32 lanes, u32 lane header size (128) |
//! | 64 | consumer line: `pid` of the attached consumer (0: none), `heartbeat` (ns, CLOCK_REALTIME) |
//! | 4096 + i × (128 + capacity) | lane i: producer line `head` (bytes ever written), `heartbeat` (ns), `delivered`, `dropped` (packets); at +64 `tail` (bytes ever read); at +128 the data: records, each `u32 length`, `u32 flags`, `u64 timestamp ns`, `u64 flow hash`, then the packet, padded to 8 bytes |
//!
//! A record never wraps: when it does not fit before the end, a padding record (flags bit 0)
//! fills the rest and the record starts at offset 0. The producer never waits: when the lane is
//! full the packet is dropped and counted. A consumer that stops just stops reading; one that
//! comes back (or a new one) attaches again and reads from the newest data on.

use std::{
    fs::OpenOptions,
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use memmap2::MmapMut;

const MAGIC: [u8; 8] = *b"FEDGWAY\0";
/// Version of the layout above; bumped on any change.
pub const VERSION: u32 = 2;
const HEADER: usize = 4096;
const LANE_HEADER: usize = 128;
const RECORD_HEADER: usize = 24;
const FLAG_PADDING: u32 = 1;
/// Most lanes a way may have.
pub const MAX_LANES: u32 = 256;

// Offsets of the atomics in the file header.
const CONSUMER_PID: usize = 64;
const CONSUMER_HEARTBEAT: usize = 72;
// Offsets of the atomics in a lane header.
const HEAD: usize = 0;
const PRODUCER_HEARTBEAT: usize = 8;
const DELIVERED: usize = 16;
const DROPPED: usize = 24;
const TAIL: usize = 64;

/// Errors of shared-memory ways.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a fastedge way (bad magic or size)")]
    NotAWay { path: PathBuf },
    #[error("{path} has layout version {found}; this build reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("way {path} already has a consumer (pid {pid})")]
    Busy { path: PathBuf, pid: u64 },
    #[error("capacity {0} is not a power of two of at least 64 KiB")]
    Capacity(usize),
    #[error("{0} lanes: a way has 1 to {MAX_LANES}")]
    Lanes(u32),
}

/// Removes the way files `0..ways` of distribution `name` (at a clean exit). A consumer that
/// still maps one keeps reading what is left; it cannot attach again.
pub fn remove_ways(name: &str, ways: u32) {
    for way in 0..ways {
        let _ = std::fs::remove_file(way_path(name, way));
    }
}

/// The file of way `way` of distribution `name` (e.g. the interface): `/dev/shm/fastedge-{name}-{way}`.
pub fn way_path(name: &str, way: u32) -> PathBuf {
    PathBuf::from(format!("/dev/shm/fastedge-{name}-{way}"))
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The mapping of one way file, with typed access to its header and lanes.
struct Region {
    map: MmapMut,
    capacity: usize,
    lanes: usize,
}

impl Region {
    #[inline]
    fn lane_offset(&self, lane: usize) -> usize {
        HEADER + lane * (LANE_HEADER + self.capacity)
    }

    #[inline]
    fn atomic_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: `offset` is 8-aligned (checked) inside the mapping (checked), which is
        // page-aligned; the memory lives as long as `self.map`, which the returned reference
        // borrows; every process touches these words only through atomic operations.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// An atomic of the file header.
    #[inline]
    fn atomic(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset < HEADER);
        self.atomic_at(offset)
    }

    /// An atomic of lane `lane`'s header.
    #[inline]
    fn lane_atomic(&self, lane: usize, offset: usize) -> &AtomicU64 {
        debug_assert!(lane < self.lanes && offset < LANE_HEADER);
        self.atomic_at(self.lane_offset(lane) + offset)
    }

    #[inline]
    fn data(&self, lane: usize) -> &[u8] {
        let start = self.lane_offset(lane) + LANE_HEADER;
        &self.map[start..start + self.capacity]
    }

    #[inline]
    fn data_mut(&mut self, lane: usize) -> &mut [u8] {
        let start = self.lane_offset(lane) + LANE_HEADER;
        let capacity = self.capacity;
        &mut self.map[start..start + capacity]
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The writing end of one lane of a way: owned by one engine thread.
pub struct Producer {
    region: Region,
    lane: usize,
    path: PathBuf,
    /// The lane's head: only this producer moves it, so it is kept here and only stored.
    head: u64,
    /// The consumer's tail as last read: it only moves forward, so free space computed from
    /// it is a lower bound; the shared word is read again only when that bound says full.
    tail_seen: u64,
    /// The lane's delivered counter (only this producer writes it).
    delivered: u64,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("path", &self.path)
            .field("lane", &self.lane)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates (or re-creates) a one-lane way file at `path` with `capacity` bytes of data.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, ShmError> {
        let mut lanes = Self::create_lanes(path, capacity, 1)?;
        lanes.pop().ok_or(ShmError::Lanes(0))
    }

    /// Creates (or re-creates) the way file at `path` with `lanes` lanes of `capacity` bytes
    /// each; returns one producer per lane (each maps the file on its own, so each can move to
    /// its own thread).
    pub fn create_lanes(path: &Path, capacity: usize, lanes: u32) -> Result<Vec<Self>, ShmError> {
        Self::make_lanes(path, capacity, lanes, false)
    }

    /// Like [`Producer::create_lanes`], but when `path` already is a way of this layout,
    /// capacity and lane count (left by an earlier pipeline of this process, before a reload),
    /// it is kept as it is: its consumer stays attached and reads on, its counters go on.
    pub fn reuse_lanes(path: &Path, capacity: usize, lanes: u32) -> Result<Vec<Self>, ShmError> {
        Self::make_lanes(path, capacity, lanes, true)
    }

    fn same_geometry(path: &Path, capacity: usize, lanes: u32) -> bool {
        let Ok(bytes) = std::fs::File::open(path).and_then(|mut f| {
            let mut header = [0u8; 32];
            std::io::Read::read_exact(&mut f, &mut header).map(|()| header)
        }) else {
            return false;
        };
        let size = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
        bytes[..8] == MAGIC
            && bytes[8..12] == VERSION.to_le_bytes()
            && bytes[16..24] == (capacity as u64).to_le_bytes()
            && bytes[24..28] == lanes.to_le_bytes()
            && size == HEADER + lanes as usize * (LANE_HEADER + capacity)
    }

    fn make_lanes(
        path: &Path,
        capacity: usize,
        lanes: u32,
        reuse: bool,
    ) -> Result<Vec<Self>, ShmError> {
        if !capacity.is_power_of_two() || capacity < 64 * 1024 {
            return Err(ShmError::Capacity(capacity));
        }
        if lanes == 0 || lanes > MAX_LANES {
            return Err(ShmError::Lanes(lanes));
        }
        let keep = reuse && Self::same_geometry(path, capacity, lanes);
        // A new way is made under a temporary name and renamed over the old one: a consumer
        // still mapping the old file keeps a valid (stale) mapping, never one truncated under
        // it, and attaches again to the new file.
        let temporary = path.with_extension(format!("new-{}", std::process::id()));
        let file = if keep {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io_error("opening", path))?
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temporary)
                .map_err(io_error("creating", &temporary))?;
            let size = HEADER + lanes as usize * (LANE_HEADER + capacity);
            file.set_len(size as u64)
                .map_err(io_error("sizing", &temporary))?;
            file
        };
        let mut producers = Vec::with_capacity(lanes as usize);
        for lane in 0..lanes as usize {
            // SAFETY: the file was just created and sized by us; consumers only map it; the
            // mapping stays valid while `Region` holds it, and shared words are accessed
            // atomically; each lane's data is written through one producer only.
            let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io_error("mapping", path))?;
            if lane == 0 && !keep {
                map[..8].copy_from_slice(&MAGIC);
                map[8..12].copy_from_slice(&VERSION.to_le_bytes());
                map[12..16].copy_from_slice(&(HEADER as u32).to_le_bytes());
                map[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
                map[24..28].copy_from_slice(&lanes.to_le_bytes());
                map[28..32].copy_from_slice(&(LANE_HEADER as u32).to_le_bytes());
            }
            let region = Region {
                map,
                capacity,
                lanes: lanes as usize,
            };
            let producer = Self {
                head: region.lane_atomic(lane, HEAD).load(Ordering::Acquire),
                tail_seen: region.lane_atomic(lane, TAIL).load(Ordering::Acquire),
                delivered: region.lane_atomic(lane, DELIVERED).load(Ordering::Relaxed),
                region,
                lane,
                path: path.to_owned(),
            };
            producer.heartbeat();
            producers.push(producer);
        }
        if !keep {
            std::fs::rename(&temporary, path).map_err(io_error("renaming into place", path))?;
        }
        Ok(producers)
    }

    /// Marks the producer alive now (consumers can tell a stalled producer).
    pub fn heartbeat(&self) {
        self.region
            .lane_atomic(self.lane, PRODUCER_HEARTBEAT)
            .store(now_ns(), Ordering::Release);
    }

    /// Appends one packet; returns false (and counts a drop) when the lane is full or the
    /// packet cannot fit at all. Never waits.
    #[inline]
    pub fn push(&mut self, packet: &[u8], timestamp_ns: u64, flow_hash: u64) -> bool {
        let lane = self.lane;
        let capacity = self.region.capacity;
        let size = (RECORD_HEADER + packet.len()).next_multiple_of(8);
        let head = self.head;
        let at = (head as usize) & (capacity - 1);
        let to_end = capacity - at;
        let padding = if size > to_end { to_end } else { 0 };
        let fits = |tail: u64| head.wrapping_sub(tail) as usize + padding + size <= capacity;
        if !fits(self.tail_seen) {
            self.tail_seen = self.region.lane_atomic(lane, TAIL).load(Ordering::Acquire);
        }
        if size > capacity / 2 || !fits(self.tail_seen) {
            self.region
                .lane_atomic(lane, DROPPED)
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let data = self.region.data_mut(lane);
        if padding > 0 {
            // A padding record: length 0, flag set; the reader skips to offset 0. Always room
            // for its 8-byte head: records are 8-aligned and at least 24 bytes.
            data[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            data[at + 4..at + 8].copy_from_slice(&FLAG_PADDING.to_le_bytes());
        }
        let start = (at + padding) & (capacity - 1);
        let record = &mut data[start..start + size];
        record[..4].copy_from_slice(&(packet.len() as u32).to_le_bytes());
        record[4..8].copy_from_slice(&0u32.to_le_bytes());
        record[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
        record[16..24].copy_from_slice(&flow_hash.to_le_bytes());
        record[24..24 + packet.len()].copy_from_slice(packet);
        self.head = head + (padding + size) as u64;
        self.region
            .lane_atomic(lane, HEAD)
            .store(self.head, Ordering::Release);
        // Only this producer writes the counter: a plain store, not a locked add.
        self.delivered += 1;
        self.region
            .lane_atomic(lane, DELIVERED)
            .store(self.delivered, Ordering::Relaxed);
        true
    }

    /// Packets delivered into this lane and dropped because it was full.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.region
                .lane_atomic(self.lane, DELIVERED)
                .load(Ordering::Relaxed),
            self.region
                .lane_atomic(self.lane, DROPPED)
                .load(Ordering::Relaxed),
        )
    }

    /// The pid of the attached consumer, if one is attached and its process exists.
    pub fn consumer(&self) -> Option<u64> {
        let pid = self.region.atomic(CONSUMER_PID).load(Ordering::Acquire);
        (pid != 0 && process_exists(pid)).then_some(pid)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lane(&self) -> usize {
        self.lane
    }
}

fn process_exists(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// One packet read from a way, borrowed from the shared memory until the next read.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub timestamp_ns: u64,
    pub flow_hash: u64,
    pub data: &'a [u8],
}

/// The reading end of a way: a consumer application.
pub struct Consumer {
    region: Region,
    path: PathBuf,
    pid: u64,
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

impl Consumer {
    /// Attaches to way `way` of distribution `name` (see [`way_path`]).
    pub fn open(name: &str, way: u32) -> Result<Self, ShmError> {
        Self::open_path(&way_path(name, way))
    }

    /// Attaches to the way file at `path`, reading from the newest data on. Fails if another
    /// live process is attached; takes over from a consumer that died.
    pub fn open_path(path: &Path) -> Result<Self, ShmError> {
        let not_a_way = || ShmError::NotAWay {
            path: path.to_owned(),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("opening", path))?;
        let len = file.metadata().map_err(io_error("reading", path))?.len() as usize;
        if len < HEADER + LANE_HEADER + 64 * 1024 {
            return Err(not_a_way());
        }
        // SAFETY: a way file is only ever truncated by a producer re-creating it, which
        // replaces the inode's contents; we check the header before trusting sizes, and
        // shared words are accessed atomically.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_error("mapping", path))?;
        if map[..8] != MAGIC {
            return Err(not_a_way());
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([map[at], map[at + 1], map[at + 2], map[at + 3]]);
        let version = u32_at(8);
        if version != VERSION {
            return Err(ShmError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let mut capacity_bytes = [0u8; 8];
        capacity_bytes.copy_from_slice(&map[16..24]);
        let capacity = u64::from_le_bytes(capacity_bytes) as usize;
        let lanes = u32_at(24) as usize;
        if u32_at(12) as usize != HEADER
            || u32_at(28) as usize != LANE_HEADER
            || !capacity.is_power_of_two()
            || lanes == 0
            || lanes > MAX_LANES as usize
            || HEADER + lanes * (LANE_HEADER + capacity) > len
        {
            return Err(not_a_way());
        }
        let region = Region {
            map,
            capacity,
            lanes,
        };
        let pid = u64::from(std::process::id());
        let slot = region.atomic(CONSUMER_PID);
        let mut current = slot.load(Ordering::Acquire);
        loop {
            if current != 0 && current != pid && process_exists(current) {
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
        // Start from the newest data: what piled up while nobody read is stale.
        for lane in 0..lanes {
            let head = region.lane_atomic(lane, HEAD).load(Ordering::Acquire);
            region
                .lane_atomic(lane, TAIL)
                .store(head, Ordering::Release);
        }
        Ok(Self {
            region,
            path: path.to_owned(),
            pid,
            next_lane: 0,
        })
    }

    /// Lanes of this way (engine threads that write to it).
    pub fn lanes(&self) -> usize {
        self.region.lanes
    }

    /// Calls `on_record` for every packet available now (at most `max`), lane after lane,
    /// then frees their space for the producers. Returns how many were read.
    pub fn read_batch(&mut self, max: usize, mut on_record: impl FnMut(Record<'_>)) -> usize {
        self.region
            .atomic(CONSUMER_HEARTBEAT)
            .store(now_ns(), Ordering::Relaxed);
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
        let mut tail = self.region.lane_atomic(lane, TAIL).load(Ordering::Relaxed);
        let mut read = 0;
        while tail != head && read < max {
            let at = (tail as usize) & (capacity - 1);
            let data = self.region.data(lane);
            let Some(head_bytes) = data.get(at..at + 8) else {
                break;
            };
            let len =
                u32::from_le_bytes([head_bytes[0], head_bytes[1], head_bytes[2], head_bytes[3]])
                    as usize;
            let flags =
                u32::from_le_bytes([head_bytes[4], head_bytes[5], head_bytes[6], head_bytes[7]]);
            if flags & FLAG_PADDING != 0 {
                tail += (capacity - at) as u64;
                continue;
            }
            let size = (RECORD_HEADER + len).next_multiple_of(8);
            let Some(record) = data.get(at..at + size) else {
                break;
            };
            let word = |range: std::ops::Range<usize>| {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&record[range]);
                u64::from_le_bytes(bytes)
            };
            on_record(Record {
                timestamp_ns: word(8..16),
                flow_hash: word(16..24),
                data: &record[RECORD_HEADER..RECORD_HEADER + len],
            });
            tail += size as u64;
            read += 1;
        }
        self.region
            .lane_atomic(lane, TAIL)
            .store(tail, Ordering::Release);
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

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.region.atomic(CONSUMER_PID).compare_exchange(
            self.pid,
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("fastedge-way-{tag}-{}", std::process::id()))
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
        first
            .region
            .atomic(CONSUMER_PID)
            .store(1, Ordering::Release); // pid 1 always exists
        assert!(matches!(
            Consumer::open_path(&path),
            Err(ShmError::Busy { pid: 1, .. })
        ));
        // A dead consumer's slot is taken over.
        first
            .region
            .atomic(CONSUMER_PID)
            .store(u64::from(u32::MAX), Ordering::Release);
        assert!(Consumer::open_path(&path).is_ok());
        assert!(matches!(
            Producer::create(&path, 1000),
            Err(ShmError::Capacity(1000))
        ));
        let bogus = temp_path("bogus");
        std::fs::write(&bogus, vec![0u8; HEADER + LANE_HEADER + 64 * 1024]).unwrap();
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
        let producers = Producer::create_lanes(&path, 64 * 1024, 3).unwrap();
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
                    }
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
        let mut again = Producer::reuse_lanes(&path, 64 * 1024, 1)
            .unwrap()
            .pop()
            .unwrap();
        assert_eq!(again.consumer(), Some(u64::from(std::process::id())));
        assert!(again.push(b"after", 2, 0));
        let mut seen = Vec::new();
        consumer.read_batch(usize::MAX, |r| seen.push(r.data.to_vec()));
        assert_eq!(seen, [b"before".to_vec(), b"after".to_vec()]);
        assert_eq!(again.counters(), (2, 0));
        // Another geometry: re-created.
        let other = Producer::reuse_lanes(&path, 128 * 1024, 1)
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
        }
        finished.store(true, std::sync::atomic::Ordering::Release);
        let gaps = reader.join().unwrap();
        let (delivered, dropped) = producer.counters();
        assert_eq!(delivered + dropped, N);
        assert_eq!(gaps, dropped, "every missing packet is a counted drop");
        let _ = std::fs::remove_file(&path);
    }
}
