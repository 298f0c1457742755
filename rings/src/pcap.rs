//! pcap and pcapng files (`pcap-file`): a file as a pipeline input, read as fast as possible or
//! at the speed it was recorded; and the PcapWriter brick's output, in either format, with
//! nanosecond timestamps and rotation by size or age.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pcap_file::{
    pcap::{PcapHeader, PcapReader},
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        Block, PcapNgReader, PcapNgWriter,
    },
    DataLink, TsResolution,
};

/// Errors of pcap files, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// Opening, reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error of the call.
        source: std::io::Error,
    },
    /// The file's header is neither pcap nor pcapng, or a block is malformed.
    #[error("{path}: not a pcap or pcapng file ({reason})")]
    Format {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// The capture is not of Ethernet frames.
    #[error("{path}: link type {link:?} is not Ethernet")]
    LinkType {
        /// The file.
        path: PathBuf,
        /// Its link type.
        link: DataLink,
    },
}

/// File format of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic pcap (nanosecond timestamps when written here).
    Pcap,
    /// pcapng.
    PcapNg,
}

/// How fast a capture file is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaySpeed {
    /// As fast as the pipeline takes packets.
    Fast,
    /// With the gaps between packets as recorded.
    Recorded,
}

enum Reader {
    Pcap(PcapReader<BufReader<File>>),
    /// With each interface's timestamp unit (nanoseconds per tick), by interface id.
    PcapNg(PcapNgReader<BufReader<File>>, Vec<u64>),
}

/// A capture file as an input: Ethernet frames with their recorded timestamps.
pub struct PcapSource {
    path: PathBuf,
    reader: Reader,
    speed: ReplaySpeed,
    /// (first packet's timestamp, when it was handed out), for recorded speed.
    clock: Option<(u64, Instant)>,
    /// A packet read but not yet due (recorded speed).
    pending: Option<(Vec<u8>, u64)>,
    finished: bool,
    /// Packets handed out so far.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

impl std::fmt::Debug for PcapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSource")
            .field("path", &self.path)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PcapError + '_ {
    move |source| PcapError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Nanoseconds per tick of a pcapng `if_tsresol` value (default 10^-6 s).
fn tick_ns(resolution: Option<u8>) -> u64 {
    match resolution {
        None => 1_000,
        Some(r) if r & 0x80 != 0 => {
            // Negative power of two: 2^-n s; below a nanosecond is rounded to 1.
            let n = u32::from(r & 0x7f);
            if n >= 30 {
                1
            } else {
                1_000_000_000 >> n
            }
        }
        Some(r) => {
            let n = u32::from(r).min(9);
            10u64.pow(9 - n)
        }
    }
}

impl PcapSource {
    /// Opens `path`, recognising pcap and pcapng by their magic numbers.
    pub fn open(path: &Path, speed: ReplaySpeed) -> Result<Self, PcapError> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic).map_err(|e| PcapError::Format {
            path: path.to_owned(),
            reason: format!("cannot read its magic number: {e}"),
        })?;
        let file = File::open(path).map_err(io_error(path))?;
        let format_error = |e: pcap_file::PcapError| PcapError::Format {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let reader = if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            Reader::PcapNg(
                PcapNgReader::new(BufReader::new(file)).map_err(format_error)?,
                Vec::new(),
            )
        } else {
            let reader = PcapReader::new(BufReader::new(file)).map_err(format_error)?;
            let link = reader.header().datalink;
            if link != DataLink::ETHERNET {
                return Err(PcapError::LinkType {
                    path: path.to_owned(),
                    link,
                });
            }
            Reader::Pcap(reader)
        };
        Ok(Self {
            path: path.to_owned(),
            reader,
            speed,
            clock: None,
            pending: None,
            finished: false,
            packets: 0,
            bytes: 0,
        })
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once every packet of the file was handed out.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next packet with its timestamp in nanoseconds, or `None` at the end of the file.
    fn next_packet(&mut self) -> Result<Option<(Vec<u8>, u64)>, PcapError> {
        let path = &self.path;
        let format_error = |e: pcap_file::PcapError| PcapError::Format {
            path: path.clone(),
            reason: e.to_string(),
        };
        match &mut self.reader {
            Reader::Pcap(reader) => match reader.next_packet() {
                None => Ok(None),
                Some(Err(e)) => Err(format_error(e)),
                Some(Ok(packet)) => Ok(Some((
                    packet.data.into_owned(),
                    packet.timestamp.as_nanos() as u64,
                ))),
            },
            Reader::PcapNg(reader, ticks) => loop {
                match reader.next_block() {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(format_error(e)),
                    Some(Ok(Block::SectionHeader(_))) => ticks.clear(),
                    Some(Ok(Block::InterfaceDescription(idb))) => {
                        if idb.linktype != DataLink::ETHERNET {
                            return Err(PcapError::LinkType {
                                path: path.clone(),
                                link: idb.linktype,
                            });
                        }
                        let resolution = idb.options.iter().find_map(|o| match o {
                            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                            _ => None,
                        });
                        ticks.push(tick_ns(resolution));
                    }
                    Some(Ok(Block::EnhancedPacket(epb))) => {
                        // pcap-file hands the raw 64-bit timestamp over as nanoseconds; scale
                        // it by the interface's unit.
                        let raw = epb.timestamp.as_nanos() as u64;
                        let tick = ticks
                            .get(epb.interface_id as usize)
                            .copied()
                            .unwrap_or(1_000);
                        return Ok(Some((epb.data.into_owned(), raw.saturating_mul(tick))));
                    }
                    Some(Ok(Block::SimplePacket(spb))) => {
                        return Ok(Some((spb.data.into_owned(), 0)));
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// Hands up to `max` due packets to `on_frame(frame, timestamp_ns)`; returns how many, and
    /// how long until the next one is due (recorded speed) when none is due now.
    pub fn receive(
        &mut self,
        max: usize,
        mut on_frame: impl FnMut(&[u8], u64),
    ) -> Result<(usize, Option<Duration>), PcapError> {
        let mut handed = 0;
        while handed < max && !self.finished {
            let (frame, ts) = match self.pending.take() {
                Some(p) => p,
                None => match self.next_packet()? {
                    Some(p) => p,
                    None => {
                        self.finished = true;
                        break;
                    }
                },
            };
            if self.speed == ReplaySpeed::Recorded {
                let (first_ts, started) = *self.clock.get_or_insert((ts, Instant::now()));
                let due = Duration::from_nanos(ts.saturating_sub(first_ts));
                let elapsed = started.elapsed();
                if due > elapsed {
                    self.pending = Some((frame, ts));
                    return Ok((handed, Some(due - elapsed)));
                }
            }
            self.packets += 1;
            self.bytes += frame.len() as u64;
            on_frame(&frame, ts);
            handed += 1;
        }
        Ok((handed, None))
    }
}

enum Writer {
    /// Classic pcap: the header through `pcap-file`, then 16-byte little-endian record headers
    /// written here (its writer cannot be flushed without being consumed).
    Pcap(BufWriter<File>),
    PcapNg(PcapNgWriter<BufWriter<File>>),
}

/// Counters of a PcapWriter brick.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PcapSinkStats {
    /// The path of the first file (rotated files get `-1`, `-2`, … before the extension).
    pub path: PathBuf,
    /// Packets written.
    pub written: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Files opened so far (1 + rotations).
    pub files: u64,
    /// Packets lost to write errors (disk full, …); the first error is logged.
    pub errors: u64,
}

/// Rotation of a capture file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rotation {
    /// Start a new file when the current one reaches this many bytes.
    pub max_bytes: Option<u64>,
    /// Start a new file when the current one is this old.
    pub max_age: Option<Duration>,
}

/// The PcapWriter brick: writes every packet it gets to a capture file. With rotation the
/// files are `PATH` (the first), then the index before the extension: `cap.pcap`, `cap-1.pcap`,
/// `cap-2.pcap`, … ([`rotated_path`]).
pub struct PcapSink {
    path: PathBuf,
    format: CaptureFormat,
    rotation: Rotation,
    writer: Option<Writer>,
    opened: Instant,
    file_bytes: u64,
    stats: PcapSinkStats,
}

impl std::fmt::Debug for PcapSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSink")
            .field("path", &self.path)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The name of the `index`-th file of a rotation.
pub fn rotated_path(path: &Path, index: u64) -> PathBuf {
    if index == 0 {
        return path.to_owned();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = match (stem, path.extension()) {
        (Some(stem), Some(ext)) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        (Some(stem), None) => format!("{stem}-{index}"),
        _ => format!("capture-{index}"),
    };
    path.with_file_name(name)
}

impl PcapSink {
    /// Creates (truncates) the first file now, so that a bad path is an error at start.
    pub fn create(
        path: &Path,
        format: CaptureFormat,
        rotation: Rotation,
    ) -> Result<Self, PcapError> {
        let mut sink = Self {
            path: path.to_owned(),
            format,
            rotation,
            writer: None,
            opened: Instant::now(),
            file_bytes: 0,
            stats: PcapSinkStats {
                path: path.to_owned(),
                ..PcapSinkStats::default()
            },
        };
        sink.open_next()?;
        Ok(sink)
    }

    fn open_next(&mut self) -> Result<(), PcapError> {
        if let Some(writer) = self.writer.take() {
            finish(writer);
        }
        let path = rotated_path(&self.path, self.stats.files);
        let file = BufWriter::with_capacity(1 << 16, File::create(&path).map_err(io_error(&path))?);
        let format_error = |e: pcap_file::PcapError| PcapError::Format {
            path: path.clone(),
            reason: e.to_string(),
        };
        let writer = match self.format {
            CaptureFormat::Pcap => {
                let header = PcapHeader {
                    ts_resolution: TsResolution::NanoSecond,
                    snaplen: 65535,
                    datalink: DataLink::ETHERNET,
                    endianness: pcap_file::Endianness::Little,
                    ..PcapHeader::default()
                };
                let mut file = file;
                header.write_to(&mut file).map_err(format_error)?;
                Writer::Pcap(file)
            }
            CaptureFormat::PcapNg => {
                let mut writer = PcapNgWriter::new(file).map_err(format_error)?;
                writer
                    .write_pcapng_block(InterfaceDescriptionBlock {
                        linktype: DataLink::ETHERNET,
                        snaplen: 65535,
                        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
                    })
                    .map_err(format_error)?;
                Writer::PcapNg(writer)
            }
        };
        self.writer = Some(writer);
        self.opened = Instant::now();
        self.file_bytes = 0;
        self.stats.files += 1;
        Ok(())
    }

    /// Writes one packet; an error is counted (and logged once) rather than stopping the
    /// pipeline.
    pub fn write(&mut self, frame: &[u8], timestamp_ns: u64) {
        // Rotate when due; with no file open (an earlier open failed), try again now.
        let rotate = self.writer.is_none()
            || self
                .rotation
                .max_bytes
                .is_some_and(|max| self.file_bytes >= max)
            || self
                .rotation
                .max_age
                .is_some_and(|max| self.opened.elapsed() >= max);
        if rotate {
            if let Err(error) = self.open_next() {
                self.fail(&error.to_string());
                return;
            }
        }
        let timestamp = Duration::from_nanos(timestamp_ns);
        let result = match &mut self.writer {
            None => return self.fail("no file open"),
            Some(Writer::Pcap(w)) => {
                let mut record = [0u8; 16];
                record[0..4].copy_from_slice(&(timestamp.as_secs() as u32).to_le_bytes());
                record[4..8].copy_from_slice(&timestamp.subsec_nanos().to_le_bytes());
                record[8..12].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                record[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
                w.write_all(&record)
                    .and_then(|()| w.write_all(frame))
                    .map_err(|e| e.to_string())
            }
            Some(Writer::PcapNg(w)) => w
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: frame.len() as u32,
                    data: std::borrow::Cow::Borrowed(frame),
                    options: Vec::new(),
                })
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => {
                self.stats.written += 1;
                self.stats.bytes += frame.len() as u64;
                self.file_bytes += frame.len() as u64 + 32;
            }
            Err(error) => self.fail(&error),
        }
    }

    fn fail(&mut self, why: &str) {
        if self.stats.errors == 0 {
            tracing::error!(path = %self.path.display(), "capture file write failed: {why}; counting lost packets");
        }
        self.stats.errors += 1;
    }

    /// Flushes buffered packets to the file.
    pub fn flush(&mut self) {
        let result = match &mut self.writer {
            Some(Writer::Pcap(w)) => w.flush(),
            Some(Writer::PcapNg(w)) => w.get_mut().flush(),
            None => Ok(()),
        };
        if let Err(error) = result {
            self.fail(&error.to_string());
        }
    }

    /// What was written so far.
    pub fn stats(&self) -> &PcapSinkStats {
        &self.stats
    }
}

fn finish(writer: Writer) {
    let _ = match writer {
        Writer::Pcap(mut w) => w.flush(),
        Writer::PcapNg(w) => w.into_inner().flush(),
    };
}

impl Drop for PcapSink {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("fastedge-pcap-{}-{name}", std::process::id()))
    }

    #[test]
    fn both_formats_round_trip_frames_and_nanosecond_timestamps() {
        for (format, name) in [
            (CaptureFormat::Pcap, "a.pcap"),
            (CaptureFormat::PcapNg, "a.pcapng"),
        ] {
            let path = temp(name);
            let frames: Vec<(Vec<u8>, u64)> = (0..100u64)
                .map(|i| {
                    (
                        vec![i as u8; 60 + i as usize],
                        1_700_000_000_123_456_789 + i * 1_001,
                    )
                })
                .collect();
            {
                let mut sink = PcapSink::create(&path, format, Rotation::default()).unwrap();
                for (f, ts) in &frames {
                    sink.write(f, *ts);
                }
                assert_eq!(sink.stats().written, 100);
            }
            let mut source = PcapSource::open(&path, ReplaySpeed::Fast).unwrap();
            let mut got = Vec::new();
            while !source.finished() {
                source
                    .receive(7, |f, ts| got.push((f.to_vec(), ts)))
                    .unwrap();
            }
            assert_eq!(got, frames, "{format:?}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn rotation_by_size_splits_into_numbered_files() {
        let path = temp("rot.pcap");
        let mut sink = PcapSink::create(
            &path,
            CaptureFormat::Pcap,
            Rotation {
                max_bytes: Some(1000),
                max_age: None,
            },
        )
        .unwrap();
        for i in 0..50u64 {
            sink.write(&[0u8; 100], i);
        }
        let files = sink.stats().files;
        drop(sink);
        assert!(files >= 5, "{files} files");
        let mut total = 0;
        for index in 0..files {
            let p = rotated_path(&path, index);
            let mut s = PcapSource::open(&p, ReplaySpeed::Fast).unwrap();
            while !s.finished() {
                total += s.receive(100, |_, _| {}).unwrap().0;
            }
            std::fs::remove_file(p).unwrap();
        }
        assert_eq!(total, 50);
        assert_eq!(
            rotated_path(Path::new("/x/cap.pcap"), 2),
            Path::new("/x/cap-2.pcap")
        );
    }

    #[test]
    fn a_file_that_is_not_a_capture_is_refused() {
        let path = temp("bad.pcap");
        std::fs::write(&path, b"hello, this is text").unwrap();
        let error = PcapSource::open(&path, ReplaySpeed::Fast).unwrap_err();
        assert!(
            error.to_string().contains("not a pcap or pcapng file"),
            "{error}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn pcapng_time_units() {
        assert_eq!(tick_ns(None), 1_000);
        assert_eq!(tick_ns(Some(9)), 1);
        assert_eq!(tick_ns(Some(3)), 1_000_000);
        assert_eq!(tick_ns(Some(0x80 | 10)), 1_000_000_000 >> 10);
    }
}
