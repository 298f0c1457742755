//! Shared-memory ways: one single-producer single-consumer ring per way, in a file under
//! `/dev/shm`, between the distributor and a consumer application.
//!
//! Layout of a way file (all integers little-endian, every counter a 64-bit atomic):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `FEDGWAY\0`, u32 version, u32 header size, u64 data capacity (power of two) |
//! | 64 | producer line: `head` (bytes ever written), `heartbeat` (ns, CLOCK_REALTIME), `delivered`, `dropped` (packets) |
//! | 128 | consumer line: `tail` (bytes ever read), `pid` of the attached consumer (0: none), `heartbeat` |
//! | 4096 | data: records, each `u32 length`, `u32 flags`, `u64 timestamp ns`, `u64 flow hash`, then the packet, padded to 8 bytes |
//!
//! A record never wraps: when it does not fit before the end, a padding record (flags bit 0)
//! fills the rest and the record starts at offset 0. The producer never waits: when the way is
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
pub const VERSION: u32 = 1;
const HEADER: usize = 4096;
const RECORD_HEADER: usize = 24;
const FLAG_PADDING: u32 = 1;

// Offsets of the atomics in the header.
const HEAD: usize = 64;
const PRODUCER_HEARTBEAT: usize = 72;
const DELIVERED: usize = 80;
const DROPPED: usize = 88;
const TAIL: usize = 128;
const CONSUMER_PID: usize = 136;
const CONSUMER_HEARTBEAT: usize = 144;

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

/// The mapping of one way file, with typed access to its header.
struct Region {
    map: MmapMut,
    capacity: usize,
}

impl Region {
    fn atomic(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER);
        // SAFETY: `offset` is one of the 8-aligned header offsets above, inside the mapping
        // (at least HEADER bytes, page-aligned, so 8-aligned); the memory lives as long as
        // `self.map`, which the returned reference borrows; every process touches these words
        // only through atomic operations.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn data(&self) -> &[u8] {
        &self.map[HEADER..HEADER + self.capacity]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        let capacity = self.capacity;
        &mut self.map[HEADER..HEADER + capacity]
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The writing end of a way: owned by the distributor.
pub struct Producer {
    region: Region,
    path: PathBuf,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates (or re-creates) the way file at `path` with `capacity` bytes of data.
    pub fn create(path: &Path, capacity: usize) -> Result<Self, ShmError> {
        if !capacity.is_power_of_two() || capacity < 64 * 1024 {
            return Err(ShmError::Capacity(capacity));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_error("creating", path))?;
        file.set_len((HEADER + capacity) as u64)
            .map_err(io_error("sizing", path))?;
        // SAFETY: the file was just created and sized by us; consumers only map it; the
        // mapping stays valid while `Region` holds it, and shared words are accessed atomically.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(io_error("mapping", path))?;
        map[..8].copy_from_slice(&MAGIC);
        map[8..12].copy_from_slice(&VERSION.to_le_bytes());
        map[12..16].copy_from_slice(&(HEADER as u32).to_le_bytes());
        map[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
        let producer = Self {
            region: Region { map, capacity },
            path: path.to_owned(),
        };
        producer.heartbeat();
        Ok(producer)
    }

    /// Marks the producer alive now (consumers can tell a stalled producer).
    pub fn heartbeat(&self) {
        self.region
            .atomic(PRODUCER_HEARTBEAT)
            .store(now_ns(), Ordering::Release);
    }

    /// Appends one packet; returns false (and counts a drop) when the way is full or the packet
    /// cannot fit at all. Never waits.
    pub fn push(&mut self, packet: &[u8], timestamp_ns: u64, flow_hash: u64) -> bool {
        let capacity = self.region.capacity;
        let size = (RECORD_HEADER + packet.len()).next_multiple_of(8);
        let head = self.region.atomic(HEAD).load(Ordering::Relaxed);
        let tail = self.region.atomic(TAIL).load(Ordering::Acquire);
        let used = head.wrapping_sub(tail) as usize;
        let at = (head as usize) & (capacity - 1);
        let to_end = capacity - at;
        let padding = if size > to_end { to_end } else { 0 };
        if size > capacity / 2 || used + padding + size > capacity {
            self.region.atomic(DROPPED).fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let data = self.region.data_mut();
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
        self.region
            .atomic(HEAD)
            .store(head + (padding + size) as u64, Ordering::Release);
        self.region
            .atomic(DELIVERED)
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Packets delivered into the way and dropped because it was full.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.region.atomic(DELIVERED).load(Ordering::Relaxed),
            self.region.atomic(DROPPED).load(Ordering::Relaxed),
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("opening", path))?;
        let len = file.metadata().map_err(io_error("reading", path))?.len() as usize;
        if len < HEADER + 64 * 1024 {
            return Err(ShmError::NotAWay {
                path: path.to_owned(),
            });
        }
        // SAFETY: a way file is only ever truncated by a producer re-creating it, which
        // replaces the inode's contents; we check the header before trusting sizes, and
        // shared words are accessed atomically.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_error("mapping", path))?;
        if map[..8] != MAGIC {
            return Err(ShmError::NotAWay {
                path: path.to_owned(),
            });
        }
        let version = u32::from_le_bytes([map[8], map[9], map[10], map[11]]);
        if version != VERSION {
            return Err(ShmError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        let mut capacity_bytes = [0u8; 8];
        capacity_bytes.copy_from_slice(&map[16..24]);
        let capacity = u64::from_le_bytes(capacity_bytes) as usize;
        if !capacity.is_power_of_two() || HEADER + capacity > len {
            return Err(ShmError::NotAWay {
                path: path.to_owned(),
            });
        }
        let region = Region { map, capacity };
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
        let head = region.atomic(HEAD).load(Ordering::Acquire);
        region.atomic(TAIL).store(head, Ordering::Release);
        Ok(Self {
            region,
            path: path.to_owned(),
            pid,
        })
    }

    /// Calls `on_record` for every packet available now (at most `max`), then frees their
    /// space for the producer. Returns how many were read.
    pub fn read_batch(&mut self, max: usize, mut on_record: impl FnMut(Record<'_>)) -> usize {
        let capacity = self.region.capacity;
        let head = self.region.atomic(HEAD).load(Ordering::Acquire);
        let mut tail = self.region.atomic(TAIL).load(Ordering::Relaxed);
        let mut read = 0;
        self.region
            .atomic(CONSUMER_HEARTBEAT)
            .store(now_ns(), Ordering::Relaxed);
        while tail != head && read < max {
            let at = (tail as usize) & (capacity - 1);
            let data = self.region.data();
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
        self.region.atomic(TAIL).store(tail, Ordering::Release);
        read
    }

    /// When the producer last showed it was alive (ns since the epoch).
    pub fn producer_heartbeat_ns(&self) -> u64 {
        self.region
            .atomic(PRODUCER_HEARTBEAT)
            .load(Ordering::Acquire)
    }

    /// Packets delivered to and dropped at this way, as the producer counts them.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.region.atomic(DELIVERED).load(Ordering::Relaxed),
            self.region.atomic(DROPPED).load(Ordering::Relaxed),
        )
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
        std::fs::write(&bogus, vec![0u8; HEADER + 64 * 1024]).unwrap();
        assert!(matches!(
            Consumer::open_path(&bogus),
            Err(ShmError::NotAWay { .. })
        ));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&bogus);
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
